"""The evaluation stage saves each finished layer: a run killed during layer L's evaluation
resumes at L, reuses the layers before it without recomputing them, and ends with the same
evaluation as an uninterrupted run."""

from __future__ import annotations

import json

import pytest

from hedonic_neurons.pipeline import run
from test_loading import tiny_run_config

# wall-clock seconds in the evaluation's design records, which differ between runs (besides
# these, each evaluation's own seconds, as ``seconds_<evaluation>``)
TIMING = ("null", "rest", "attribution", "phi_resample")


def drop_timing(doc: dict) -> dict:
    for d in doc["design"]:
        for key in [k for k in d if k in TIMING or k.startswith("seconds_")]:
            d.pop(key)
    return doc


def evaluation_without_timing(folder) -> dict:
    return drop_timing(json.loads((folder / "evaluation.json").read_text()))


def killed_during_layer2(tmp_path):
    """(config, run folder, the whole run's evaluation) of a tiny run on layers 1-2 whose
    evaluation is then put back to a kill during layer 2: layer 1's file is there, the stage is
    not finished."""
    cfg = tiny_run_config(
        tmp_path,
        [1, 2],
        {"seeds": [0, 1, 2], "phi_resamples": 0, "attribution": False, "certify_samples": 100},
    )
    out = tmp_path / "run"
    run(cfg, out, progress=False, stop_after="evaluate")
    whole = json.loads((out / "evaluation.json").read_text())
    assert {d["layer"] for d in whole["design"]} == {1, 2}
    (out / "evaluation.json").unlink()
    (out / "evaluation" / "stage.json").unlink()
    (out / "evaluation" / "layer2.json").unlink()
    assert (out / "evaluation" / "layer1.json").is_file()
    return cfg, out, whole


def test_a_killed_evaluation_resumes_at_the_unfinished_layer(tmp_path, monkeypatch):
    import hedonic_neurons.evaluate.layer as layer_mod

    cfg, out, whole = killed_during_layer2(tmp_path)
    reference = drop_timing(whole)

    real = layer_mod.evaluate_layer
    evaluated: list[int] = []

    def only_unfinished(nm, layer, *args, **kwargs):
        evaluated.append(layer)
        return real(nm, layer, *args, **kwargs)

    monkeypatch.setattr(layer_mod, "evaluate_layer", only_unfinished)
    run(cfg, out, progress=False, stop_after="evaluate")
    assert evaluated == [2]  # layer 1 came from its file
    assert evaluation_without_timing(out) == reference

    # a layer file from other settings (another key) is not reused
    doc = json.loads((out / "evaluation" / "layer1.json").read_text())
    doc["key"] = "other"
    (out / "evaluation" / "layer1.json").write_text(json.dumps(doc))
    (out / "evaluation" / "stage.json").unlink()
    evaluated.clear()
    run(cfg, out, progress=False, stop_after="evaluate")
    assert evaluated == [1]
    assert evaluation_without_timing(out) == reference


def test_an_evaluation_knob_reuses_the_partitions_and_tracking_but_not_the_evaluation(tmp_path, monkeypatch):
    """The partitions and tracking stages read only ``evaluate.seeds`` of the evaluate section:
    a changed evaluation setting re-runs the evaluation alone; changed seeds re-run partitions."""
    import hedonic_neurons.evaluate.layer as layer_mod
    import hedonic_neurons.pipeline as pipeline_mod
    import hedonic_neurons.tracking.run as track_mod

    knobs = {"seeds": [0, 1, 2], "phi_resamples": 0, "attribution": False, "certify_samples": 100}
    out = tmp_path / "run"
    run(tiny_run_config(tmp_path, [1, 2], knobs), out, progress=False, stop_after="evaluate")
    assert (out / "tracking").is_dir()

    calls: dict[str, int] = {"partition": 0, "track": 0, "evaluate": 0}

    def counted(name, real):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return real(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(pipeline_mod, "partition_layer", counted("partition", pipeline_mod.partition_layer))
    monkeypatch.setattr(track_mod, "track_model", counted("track", track_mod.track_model))
    monkeypatch.setattr(layer_mod, "evaluate_layer", counted("evaluate", layer_mod.evaluate_layer))

    run(
        tiny_run_config(tmp_path, [1, 2], {**knobs, "certify_samples": 200}),
        out,
        progress=False,
        stop_after="evaluate",
    )
    assert calls == {"partition": 0, "track": 0, "evaluate": 2}

    run(
        tiny_run_config(tmp_path, [1, 2], {**knobs, "seeds": [0, 1, 2, 3]}),
        out,
        progress=False,
        stop_after="evaluate",
    )
    assert calls["partition"] == 2 and calls["track"] > 0  # one call per layer, every method re-tracked
    assert (out / "partitions" / "random" / "seed3" / "layer1.json").is_file()


def test_report_finished_reports_the_saved_layers_of_a_stopped_run(tmp_path, monkeypatch):
    """``--report-finished`` on a run stopped during layer 2's evaluation: a report over layer 1
    alone, marked partial, from layer 1's saved file (nothing is evaluated), equal to the layer-1
    part of the whole run; a folder with no finished layer is refused before any work."""
    import hedonic_neurons.evaluate.layer as layer_mod
    from hedonic_neurons.errors import ConfigError

    cfg, out, whole = killed_during_layer2(tmp_path)

    def no_evaluation(*args, **kwargs):
        raise AssertionError("--report-finished evaluated a layer")

    monkeypatch.setattr(layer_mod, "evaluate_layer", no_evaluation)
    report = run(cfg, out, progress=False, report_finished=True)
    assert report == out / "report.html" and report.is_file()
    results = json.loads((out / "results.json").read_text())
    assert results["layers"] == [1] and results["layers_configured"] == [1, 2]
    assert any(b.startswith("PARTIAL RUN: the evaluation has finished layers [1] of [1, 2]") for b in results["banner"])
    assert "PARTIAL RUN" in (out / "report.md").read_text()
    assert set(results["sizes"]["random"]) == {"1"}
    # the tables are those of layer 1: its saved rows are what the report read
    from hedonic_neurons.evaluate.base import EVALUATIONS

    expected: dict = {}
    for name, got in whole["evaluations"].items():
        layer1 = [r for r in got if r["layer"] == 1]
        assert layer1 and len(layer1) < len(got)
        expected.update(EVALUATIONS.get(name)().tables(layer1))
    assert json.loads(json.dumps(expected)) == results["evaluation_tables"]
    assert not (out / "evaluation.json").exists()  # the stage is still unfinished: a rerun resumes

    # nothing finished: one clear error, and the stages before the evaluation are not started
    fresh = tmp_path / "fresh"
    with pytest.raises(ConfigError, match="nothing to report yet: no layer of .* has finished"):
        run(cfg, fresh, progress=False, report_finished=True)
    assert not (fresh / "phi").exists()
    with pytest.raises(ConfigError, match="cannot be combined with --stop-after"):
        run(cfg, out, progress=False, report_finished=True, stop_after="phi")
