"""One FinetuneConfig: the run config's finetune section, hedonic finetune's options and the
training loop's argument are the same class, with the YAML field names of configs/*.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer

from hedonic_neurons import config as config_mod
from hedonic_neurons.config import FinetuneConfig, load_config
from hedonic_neurons.errors import ConfigError
from hedonic_neurons.models import training

ROOT = Path(__file__).resolve().parents[1]


def test_one_definition_used_by_the_run_config_and_the_training_loop():
    assert training.FinetuneConfig is FinetuneConfig
    assert config_mod.RunConfig.model_fields["finetune"].annotation is FinetuneConfig
    sources = [p for p in (ROOT / "src").rglob("*.py") if "class FinetuneConfig" in p.read_text()]
    assert [p.name for p in sources] == ["config.py"]


def test_yaml_names_and_python_names():
    demo = load_config(ROOT / "configs" / "demo.yaml")
    assert demo.finetune.learning_rate == 0.001 and demo.finetune.epochs == 1
    cfg = load_config(None, {"finetune": {"learning_rate": 0.002, "rank": 4, "alpha": 16}})
    hyper = cfg.finetune.hyperparameters()
    assert hyper["lr"] == 0.002 and "learning_rate" not in hyper and "task" not in hyper
    again = FinetuneConfig(task="cqtr", layers=[1], **hyper)  # what run_finetune builds from it
    assert again == cfg.finetune.model_copy(update={"task": "cqtr", "layers": [1]})
    assert again.lr == again.learning_rate == 0.002 and again.rank == 4
    assert FinetuneConfig(lr=0.5).learning_rate == 0.5
    with pytest.raises(ConfigError, match="unknown key 'finetune.rnak'"):
        load_config(None, {"finetune": {"rnak": 4}})
    with pytest.raises(ConfigError, match=r"learning_rate \(lr\) must be > 0"):
        load_config(None, {"finetune": {"learning_rate": 0}})


def test_direct_construction_raises_one_config_error_line():
    for kwargs, message in [
        ({"lr": 0}, r"learning_rate \(lr\) must be > 0"),
        ({"task": "rm", "batch_size": 4, "group_size": 8}, "group_size <= batch_size"),
        ({"task": "rm", "augment": 0.5}, "only for cqtr / mean_tf_l"),
        ({"head_init": "ridge"}, "head_init"),
        ({"rank": 0}, "rank must be >= 1"),
    ]:
        with pytest.raises(ConfigError, match=message) as exc:
            FinetuneConfig(**kwargs)
        assert "\n" not in str(exc.value)


def test_finetune_command_defaults_are_the_configs():
    from hedonic_neurons.cli import app

    command = typer.main.get_command(app).commands["finetune"]
    defaults = {p.name: p.default for p in command.params}
    want = FinetuneConfig()
    assert defaults["lr"] == want.learning_rate
    for name in ("epochs", "batch_size", "group_size", "rank", "alpha", "dropout", "head_init", "seed"):
        assert defaults[name] == getattr(want, name), name


def test_a_run_configs_finetune_section_reaches_the_training_record(tmp_path):
    """hedonic run passes the whole section (hyperparameters()) to run_finetune, which records it."""
    import json

    from hedonic_neurons.models.finetune import run_finetune
    from test_loading import save_tiny

    folder = save_tiny(tmp_path / "m", "bert")
    cfg = load_config(None, {"finetune": {"learning_rate": 0.002, "max_steps": 2, "rank": 2}})
    run_finetune(
        str(folder), task="cqtr", out=tmp_path / "out", data="demo", max_train_queries=5,
        max_eval_queries=3, progress=False, **{**cfg.finetune.hyperparameters(), "seed": 0},
    )  # fmt: skip
    record = json.loads((tmp_path / "out" / "finetune.json").read_text())
    band = training.default_layer_band(3)  # the tiny model has 3 layers
    assert record["hyperparameters"] == {**cfg.finetune.model_dump(), "task": "cqtr", "layers": band}
    assert record["training"]["steps"] == 2 and record["lora"]["rank"] == 2
