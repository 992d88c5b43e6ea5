"""`hedonic track` and `hedonic run`'s tracking stage: one rule, one set of defaults, same files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import typer

from hedonic_neurons.artifacts import load_partition, save_partition
from hedonic_neurons.config import TrackingConfig, load_config
from hedonic_neurons.errors import ConfigError
from hedonic_neurons.tracking.run import TrackSettings, track_and_write
from test_loading import make_adapter, save_tiny
from tiny import tiny_model

SHARED = ("rule", "tau", "min_size", "null_draws", "null_level", "horizon", "flow_pairs")


def test_defaults_agree_between_config_cli_and_settings():
    from hedonic_neurons.cli import app

    cfg, settings = TrackingConfig(), TrackSettings()
    cli = {p.name: p.default for p in typer.main.get_command(app).commands["track"].params}
    for name in SHARED:
        assert getattr(cfg, name) == getattr(settings, name) == cli[name], name
    assert settings.rule == "null" and settings.horizon == 3 and settings.null_draws >= 100


def test_config_validates_tracking_fields():
    assert TrackingConfig(rule="matching", tau=0.4).tau == 0.4
    for bad, message in (
        ({"tracking": {"tau": 0.5}}, "tau applies"),
        ({"tracking": {"null_draws": 20}}, "null_draws"),
        ({"tracking": {"rule": "nope"}}, "rule"),
        ({"tracking": {"horizon": 0}}, "horizon"),
    ):
        with pytest.raises(ConfigError, match=message):
            load_config(None, bad)
    with pytest.raises(ConfigError, match="sets it from the null"):
        TrackSettings(tau=0.5)


def files_without_run_metadata(folder) -> dict[str, object]:
    """Every output file except the Sankey page (its plotly div id is random and its bundle path
    depends on the folder), with provenance and the caller's metadata removed from the JSONs."""
    out: dict[str, object] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix == ".json" and path.name != "stage.json":
            doc = json.loads(path.read_text())
            for key in ("provenance", "model", "partitions", "activations", "seed"):
                doc.pop(key, None)
            out[path.name] = doc
        elif path.suffix in (".md", ".csv"):
            out[path.name] = path.read_text()
    return out


def test_track_and_write_is_deterministic(tmp_path):
    model = tiny_model("llama", layers=3, d=16, n=24)
    rng = np.random.default_rng(0)
    parts = {layer: rng.permutation(24).reshape(6, 4).tolist() for layer in range(3)}
    A = {layer: rng.uniform(0.1, 1, 24) for layer in range(3)}
    settings = TrackSettings(flow_pairs=0)
    a, _ = track_and_write(model, parts, A, settings, tmp_path / "a", method="m")
    track_and_write(model, parts, A, settings, tmp_path / "b", method="m")
    assert [(r.source_layer, r.target_layer) for r in a] == [(0, 1), (0, 2), (1, 2)]  # horizon 3
    assert files_without_run_metadata(tmp_path / "a") == files_without_run_metadata(tmp_path / "b")
    # another seed draws another null
    c, _ = track_and_write(model, parts, A, TrackSettings(flow_pairs=0, seed=1), tmp_path / "c", method="m")
    assert c[0].null["tau_alpha"] != a[0].null["tau_alpha"]


def test_hedonic_track_and_hedonic_run_write_the_same_files(tmp_path, monkeypatch):
    """Same partitions, same E|a_p| and the same inputs through both paths: identical outputs
    (mass, null, labels, interventional flow with reference ablation, tables, lineage)."""
    from hedonic_neurons.cli import main
    from hedonic_neurons.data import load_pairs, read_rerank_input
    from hedonic_neurons.models import load_model
    from hedonic_neurons.pipeline import Pipeline
    from hedonic_neurons.tracking import model as tracking_model

    base = save_tiny(tmp_path / "base", "llama", layers=4, n=24)
    make_adapter(base, tmp_path / "adapter", "llama", layers=(1, 2))
    rng = np.random.default_rng(3)
    layers = [0, 1, 2]
    parts = {layer: rng.permutation(24).reshape(8, 3).tolist() for layer in layers}
    acts = {layer: rng.normal(size=(16, 24)) for layer in layers}  # stands in for pooled activations
    # the inputs, as a pairs file both paths read (E|a_p| and the flow's 16 inputs)
    pairs_tsv = tmp_path / "pairs.tsv"
    clean = [
        [" ".join(str(x).split()) for x in (p.qid, p.pid, p.query, p.passage)]
        for p in load_pairs("demo")[:16]
    ]
    pairs_tsv.write_text("".join("\t".join(row) + "\n" for row in clean))
    for layer in layers:
        save_partition(
            tmp_path / "parts" / f"L{layer}.json", parts[layer], method="hedonic-oca", params={}, layer=layer
        )

    # hedonic track, with E|a_p| replaced by the pipeline's statistic of the same activations
    def same_mean_abs(model, sources, batches):
        return {layer: torch.from_numpy(np.abs(acts[layer]).mean(0)) for layer in sources}

    monkeypatch.setattr(tracking_model, "mean_abs_activations", same_mean_abs)
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "track",
                str(base),
                "--adapter",
                str(tmp_path / "adapter"),
                "--partitions",
                str(tmp_path / "parts"),
                "--out",
                str(tmp_path / "track"),
                "--data",
                str(pairs_tsv),
                "--max-pairs",
                "16",
                "--batch-size",
                "4",
                "--device",
                "cpu",
            ]
        )
    assert exc.value.code in (0, None)

    # hedonic run's tracking stage on the same partitions, pairs and activations
    cfg = load_config(
        None,
        {
            "model": str(base),
            "adapter": str(tmp_path / "adapter"),
            "layers": layers,
            "baselines": [],
            "phi": {"metrics": ["oca"], "batch_size": 4},
            "tracking": {"max_pairs": 16},  # as --max-pairs 16
        },
    )
    pipe = Pipeline(cfg, tmp_path / "run", progress=False)
    pipe.nm = load_model(str(base), adapter=str(tmp_path / "adapter"), device="cpu")
    pipe.train = read_rerank_input(pairs_tsv)
    pipe.train_desc = str(pairs_tsv)
    pipe.acts = lambda split, layer: acts[layer]
    # as the pipeline reads its partitions: from the (canonicalised) partition files
    pipe.coalitions = lambda method, seed, layer: load_partition(tmp_path / "parts" / f"L{layer}.json")[
        "coalitions"
    ]
    pipe.stage_tracking()

    ours = files_without_run_metadata(tmp_path / "run" / "tracking" / "hedonic-oca")
    theirs = files_without_run_metadata(tmp_path / "track")
    assert sorted(ours) == sorted(theirs)
    assert "transition_L0_L3.json" not in ours and "transition_L0_L2.json" in ours  # horizon 3 in 0..2
    assert ours == theirs
    doc = ours["transition_L1_L2.json"]
    assert (
        doc["rule"] == "null" and doc["flow_info"]["mode"] == "reference" and doc["flow_info"]["inputs"] == 16
    )
    # the run's Sankey shares one plotly bundle for every method; track's sits in its folder
    assert (tmp_path / "run" / "tracking" / "plotly.min.js").is_file()
    assert (
        'src="../plotly.min.js"'
        in (tmp_path / "run" / "tracking" / "hedonic-oca" / "sankey.html").read_text()
    )
    assert (tmp_path / "track" / "plotly.min.js").is_file()
    # the report gets the rows, with the links for the lineage view
    rows = pipe.transitions["hedonic-oca"]
    assert [r["layers"] for r in rows] == ["0->1", "0->2", "1->2"] and all("link_list" in r for r in rows)
