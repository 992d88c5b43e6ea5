"""Messages name what the caller passes (adapter= from Python, --adapter on the command line), and a
randomly initialised task head is announced with one HedonicNote."""

from __future__ import annotations

import warnings

import pytest
import torch

from hedonic_neurons.cli import main
from hedonic_neurons.errors import ConfigError, HedonicNote, ModelError
from hedonic_neurons.models import NeuronModel, load_model
from hedonic_neurons.models.finetune import check_finetune
from test_loading import make_adapter, save_tiny, tiny_tokenizer
from tiny import tiny_model


def cli_error(capsys, argv: list[str]) -> str:
    capsys.readouterr()  # what came before (progress bars of save_pretrained)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


def test_errors_name_python_arguments_from_python_and_flags_on_the_command_line(tmp_path, capsys):
    llama = save_tiny(tmp_path / "llama", "llama")
    bert = save_tiny(tmp_path / "bert", "bert")
    make_adapter(llama, tmp_path / "ad", "llama")
    # 1. adapter and reference together
    with pytest.raises(ConfigError, match=r"give either adapter= .* or reference= ") as exc:
        load_model(llama, adapter=tmp_path / "ad", reference=llama)
    assert "--" not in str(exc.value)
    # 2. a causal head on an encoder
    with pytest.raises(ModelError, match=r"no causal-LM head; use head='classification'"):
        load_model(bert, head="causal")
    err = cli_error(capsys, ["inspect", str(bert), "--head", "causal"])
    assert "use --head classification" in err and "head=" not in err
    # 3. no reference weights to revert to
    nm = NeuronModel(tiny_model("llama"), tiny_tokenizer("llama"))
    with pytest.raises(ModelError, match=r"load it with adapter=.* or reference=") as exc:
        nm.reference_mlp_weights(0)
    assert "--" not in str(exc.value)
    # 4. hedonic finetune's checks, called from Python
    with pytest.raises(ConfigError, match=r"task=") as exc:
        check_finetune(str(llama), task="cqtrr", out=tmp_path / "ft", data="demo", test=None)
    assert "--task" not in str(exc.value)
    err = cli_error(capsys, ["finetune", str(llama), "--task", "cqtrr", "--data", "demo", "--out",
                             str(tmp_path / "ft")])  # fmt: skip
    assert "--task" in err and "task=" not in err
    with pytest.raises(ConfigError, match=r"layers=: .*layers 0..2"):
        check_finetune(str(llama), task="cqtr", out=tmp_path / "ft", data="demo", test=None, layers="1,9")


def notes(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, HedonicNote)]


def test_random_head_is_announced_once(tmp_path, capsys):
    headless = save_tiny(tmp_path / "causal", "llama", head="causal")  # no score layer saved
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        nm = load_model(headless)
    [note] = notes(caught)
    assert "score.weight" in note and "random" in note and "adapter=" in note and "\n" not in note
    assert nm.identity["initialised"] == ["score.weight"]
    trained = save_tiny(tmp_path / "seqcls", "llama")  # the checkpoint carries its head
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_model(trained)
        load_model(headless, head="causal")  # the LM head is in the checkpoint
        make_adapter(headless, tmp_path / "ad", "llama")  # an adapter that saved its trained head
        load_model(headless, adapter=tmp_path / "ad")
    assert notes(caught) == []
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["inspect", str(headless)])
    main_code = exc.value.code
    err = capsys.readouterr().err
    assert main_code == 0 and err.count("note:") == 1 and "random" in err and "--adapter" in err


def test_minilm_without_adapter_has_a_random_head_note():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        nm = load_model("minilm")
    [note] = notes(caught)
    assert note.startswith("minilm: the head (classifier.bias, classifier.weight)")
    assert torch.count_nonzero(nm.model.classifier.bias) == 0  # the deterministic init, as announced
