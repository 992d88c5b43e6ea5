"""φ-data resampling in ``hedonic run`` (evaluate.phi_resamples): disjoint φ subsets, re-solved
partitions, their stability, and effect intervals over (resample, query)."""

from __future__ import annotations

import json
import shutil
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
import yaml
from sklearn.metrics import adjusted_rand_score

from hedonic_neurons.artifacts import load_phi
from hedonic_neurons.config import EvaluateConfig, load_config
from hedonic_neurons.errors import ConfigError, HedonicError
from hedonic_neurons.partition import Partition
from hedonic_neurons.pipeline import Pipeline, task_values
from hedonic_neurons.synergy.collect import CollectSettings, collect, phi_path
from test_evaluate_resume import drop_timing
from test_pipeline import tiny_run_config

R = 3


def _config(tmp: Path, resamples: int) -> Path:
    path = tiny_run_config(tmp)
    doc = yaml.safe_load(path.read_text())
    doc["baselines"] = ["random"]
    doc["layers"] = [2]  # one layer: nothing to track, half the passes
    doc["evaluate"].update(
        null_pairs=8, synergy_pairs=4, explorer_coalitions=0, bootstrap=200, phi_resamples=resamples
    )
    path.write_text(yaml.safe_dump(doc))
    return path


def _run(tmp: Path, resamples: int) -> Pipeline:
    run = Pipeline(load_config(_config(tmp, resamples)), tmp / "out", progress=False)
    run.run()
    return run


@pytest.fixture(scope="module")
def resampled(tmp_path_factory) -> Pipeline:
    return _run(tmp_path_factory.mktemp("r3"), R)


@pytest.fixture(scope="module")
def plain(resampled, tmp_path_factory) -> Pipeline:
    """The same run with phi_resamples 0, resumed from a copy of the resampled run's folder
    (φ and activations are reused; every stage keyed by the evaluate section reruns)."""
    tmp = tmp_path_factory.mktemp("r0")
    shutil.copytree(resampled.out, tmp / "out")
    shutil.rmtree(tmp / "out" / "resample")
    cfg = resampled.cfg.model_copy(
        update={"evaluate": resampled.cfg.evaluate.model_copy(update={"phi_resamples": 0})}
    )
    run = Pipeline(cfg, tmp / "out", progress=False)
    run.run()
    return run


def _evaluation(run: Pipeline) -> dict:
    return json.loads((run.out / "evaluation.json").read_text())


def _phi_files(run: Pipeline) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in sorted((run.out / "resample" / "phi").rglob("*.safetensors"))}


def test_resampled_phi_is_estimated_on_disjoint_subsets(resampled):
    run = resampled
    for metric in run.cfg.phi.metrics:
        pairs = run.phi_inputs(metric)
        doc = json.loads((run.phi_resample_dir(metric, 0).parent / "subsets.json").read_text())
        subsets = [np.asarray(s) for s in doc["subsets"]]
        assert len(subsets) == R and doc["n"] == len(pairs)
        joined = np.concatenate(subsets)
        assert np.array_equal(np.sort(joined), np.arange(len(pairs)))  # disjoint, and every input once
        for layer in run.cfg.layers:
            counts = [
                json.loads(phi_path(run.phi_resample_dir(metric, r), layer).with_suffix(".json").read_text())[
                    "data"
                ]["pairs"]
                for r in range(R)
            ]
            assert counts == [s.size for s in subsets] and sum(counts) == len(pairs)
        # φ of a subset is collect on that subset directly
        r, layer = 1, run.cfg.layers[-1]
        settings = CollectSettings(
            metric=metric,
            mode=run.cfg.phi.pas_mode,
            readout=run.cfg.phi.readout,
            batch_size=run.cfg.phi.batch_size,
            seed=run.cfg.seed,
            ablation="reference",
        )
        direct = run.out.parent / f"direct-{metric}"
        collect(run.nm, [pairs[int(i)] for i in subsets[r]], [layer], settings, direct, progress=False)
        want, want_se = load_phi(phi_path(direct, layer), with_se=True)
        got, got_se = run.phi_resampled(metric, r, layer, with_se=True)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(got_se, want_se, rtol=1e-6, atol=1e-9)
        assert not np.allclose(got, run.phi(metric, layer))  # a different φ from the full-data one


def test_stability_is_sklearn_ari_of_the_written_partitions(resampled):
    run = resampled
    doc = _evaluation(run)["phi_resampling"]
    written = json.loads((run.out / "resample" / "stability.json").read_text())
    assert written == doc
    seed = run.cfg.evaluate.seeds[0]
    for entry in doc["layers"]:
        layer = entry["layer"]
        assert [r["method"] for r in entry["stability"]] == ["hedonic-oca", "hedonic-pas"]
        for row in entry["stability"]:
            method = row["method"]
            labels = [Partition.load(run.resample_partition_path(method, r, layer)).labels for r in range(R)]
            full = Partition.load(run.partition_path(method, seed, layer)).labels
            pairwise = [adjusted_rand_score(a, b) for a, b in combinations(labels, 2)]
            vs_full = [adjusted_rand_score(full, lab) for lab in labels]
            assert row["ari_mean"] == pytest.approx(np.mean(pairwise))
            assert row["ari_min"] == pytest.approx(min(pairwise))
            assert row["ari_max"] == pytest.approx(max(pairwise))
            assert row["ari_full_mean"] == pytest.approx(np.mean(vs_full))
            assert row["ari_full_min"] == pytest.approx(min(vs_full))
            # consensus at 80% of 3 resamples: same coalition in all three, i.e. equal label triples
            by_triple: dict[tuple, list[int]] = {}
            for i, triple in enumerate(zip(*labels)):
                by_triple.setdefault(triple, []).append(i)
            want = sorted(sorted(g) for g in by_triple.values() if len(g) >= 2)
            assert sorted(entry["consensus"][method]) == want
            assert row["consensus_groups"] == len(want)
            assert row["consensus_neurons"] == sum(len(g) for g in want)
    results = json.loads((run.out / "results.json").read_text())
    table = results["evaluation_tables"]["Partition stability under φ resampling"]
    assert table == [r for entry in doc["layers"] for r in entry["stability"]]
    assert any("under φ resampling" in s and "ARI" in s for s in results["summary"])


def _is_phi(value) -> bool:
    return isinstance(value, dict) and "n_resamples" in value


def test_every_hedonic_row_has_a_phi_interval(resampled):
    """results.json: each hedonic row of every evaluation table and of the extrinsic, ridge and
    alignment tables carries at least one interval over (φ resample, query); no other row does."""
    results = json.loads((resampled.out / "results.json").read_text())
    tables = dict(results["evaluation_tables"])
    tables.pop("Partition stability under φ resampling")  # the φ-resample spread itself (ARI)
    tables = {t: rows for t, rows in tables.items() if all("method" in r for r in rows)}  # not φ validity
    assert {"Ablation effects", "Against random size-matched sets", "Non-additivity of joint ablation"} <= set(tables)
    tables.update(extrinsic=results["table_extrinsic"], ridge=results["table_ridge"])
    tables["alignment"] = results["table_alignment"]
    for title, rows in tables.items():
        hedonic = [r for r in rows if r["method"].startswith("hedonic")]
        assert hedonic, title
        for row in hedonic:
            phi = {k: v for k, v in row.items() if _is_phi(v)}
            assert phi, (title, row["method"])
            for interval in phi.values():
                assert interval["n_resamples"] >= 1
                if interval["low"] is not None:
                    assert interval["low"] <= interval["high"]
        assert not any(_is_phi(v) for r in rows if not r["method"].startswith("hedonic") for v in r.values())
    effects = [r for r in results["evaluation_tables"]["Ablation effects"] if r["method"].startswith("hedonic")]
    assert all({"rms_phi", "dloss_phi", "rms_vs_random_phi"} <= set(r) for r in effects if r["coalitions"])
    for row in results["table_extrinsic"]:
        if row["method"].startswith("hedonic"):
            assert {"ood_drop_phi", "alignment_r2_phi"} <= set(row)
    for row in results["table_ridge"]:
        if row["method"].startswith("hedonic"):
            assert "ridge_r2_phi" in row


def test_phi_intervals_centre_on_the_resamples_figures(resampled):
    """Brute force: the mean of rms_phi is the mean over resamples of each resample's coalitions'
    per-query normalised RMS Δlogit (ablated here one by one), and the mean of ridge_r2_phi is the
    mean over resamples of ridge on those coalitions' activations."""
    from hedonic_neurons.evaluate.measures import query_index
    from hedonic_neurons.evaluate.ood import ablated_outputs
    from hedonic_neurons.evaluate.regression import coalition_matrix, ridge_evaluation
    from hedonic_neurons.evaluate.select import select_coalitions

    run = resampled
    ev = run.cfg.evaluate
    doc = _evaluation(run)
    results = json.loads((run.out / "results.json").read_text())
    groups, names = query_index([p.qid for p in run.test])
    y_train = task_values(run.cfg.task, run.train, run.train_qrels)
    train_q = np.array([p.qid for p in run.train])
    for entry in doc["phi_resampling"]["layers"]:
        layer = entry["layer"]
        for r in range(R):  # the reference method's picks: the selection rule on that resample's φ
            part = Partition.load(run.resample_partition_path("hedonic-pas", r, layer))
            picked = select_coalitions(
                part.coalitions, run.phi_resampled("pas", r, layer), rule=ev.selection, k=ev.top_k,
                band=tuple(ev.size_band),
            )  # fmt: skip
            assert entry["chosen"][r]["hedonic-pas"] == picked
            assert sorted(len(c) for c in entry["chosen"][r]["random"]) == sorted(len(c) for c in picked)
        row = next(
            x
            for x in doc["evaluations"]["effects"]
            if (x["layer"], x["method"], x["mode"]) == (layer, "hedonic-pas", "reference")
        )
        base = None
        per_resample, ridge = [], []
        for r in range(R):
            chosen = entry["chosen"][r]["hedonic-pas"]
            if not chosen:
                continue
            base, ablated = ablated_outputs(run.nm, run.test, layer, chosen, batch_size=4)
            sd = np.std(base.astype(np.float64))
            rms = [
                [np.sqrt(np.mean((a[groups == g] - base[groups == g]) ** 2)) / sd for g in range(len(names))]
                for a in ablated.astype(np.float64)
            ]
            per_resample.append(np.mean(rms))
            x = run.acts("train", layer) @ coalition_matrix(chosen, run.nm.n_neurons)
            ridge.append(ridge_evaluation(x, y_train, train_q, seed=ev.seeds[0])["r2_cv"])
        assert per_resample, "no resample had coalitions to evaluate: the test checks nothing"
        assert row["rms_phi"]["n_resamples"] == len(per_resample)
        assert row["rms_phi"]["mean"] == pytest.approx(np.mean(per_resample), rel=2e-3)
        assert row["rms_phi"]["low"] < row["rms_phi"]["high"]
        table = next(
            x for x in results["table_ridge"] if x["method"] == "hedonic-pas" and x["position"] == "mean"
        )
        assert table["ridge_r2_phi"]["mean"] == pytest.approx(np.mean(ridge), abs=1e-9)


def _without_resampling(doc: dict) -> dict:
    doc = json.loads(json.dumps(doc))
    doc.pop("phi_resampling", None)
    for rows in doc["evaluations"].values():
        for row in rows:
            for key in [k for k, v in row.items() if _is_phi(v)]:
                row.pop(key)
    return drop_timing(doc)


def test_zero_resamples_changes_nothing(resampled, plain):
    off, on = _evaluation(plain), _evaluation(resampled)
    assert "phi_resampling" not in off
    assert not any(_is_phi(v) for rows in off["evaluations"].values() for r in rows for v in r.values())
    assert not (plain.out / "resample").exists()
    assert _without_resampling(on) == _without_resampling(off)
    assert _without_resampling(on) != on  # the resampled run did add its figures
    results = json.loads((plain.out / "results.json").read_text())
    assert "Partition stability under φ resampling" not in results["evaluation_tables"]


def test_killed_run_reuses_the_cached_resample_phi(resampled, tmp_path, monkeypatch):
    from hedonic_neurons.synergy import collect as collect_module

    folder = tmp_path / "out"
    shutil.copytree(resampled.out, folder)
    for name in ("evaluation", "resample", "explorer"):
        shutil.rmtree(folder / name, ignore_errors=True)
    (folder / "evaluation.json").unlink()
    run = Pipeline(resampled.cfg, folder, progress=False)
    real, calls = collect_module.collect, []

    class Killed(Exception):
        pass

    def killing_collect(*args, **kwargs):
        if "resample" in Path(args[4]).parts:
            calls.append(args[4])
        if len(calls) > R:  # the first φ resample of the second metric: killed before it starts
            raise Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(collect_module, "collect", killing_collect)
    with pytest.raises(Killed):
        run.run()
    monkeypatch.undo()
    before = _phi_files(run)
    first = run.cfg.phi.metrics[0]
    assert len(before) == R * len(run.cfg.layers)
    assert all(path.is_relative_to(folder / "resample" / "phi" / first) for path in before)
    assert not (folder / "evaluation.json").exists()
    Pipeline(resampled.cfg, folder, progress=False).run()
    after = _phi_files(run)
    assert {p: after[p] for p in before} == before  # not one finished φ resample rewritten
    assert len(after) == R * len(run.cfg.phi.metrics) * len(run.cfg.layers)
    assert _without_resampling(_evaluation(run)) == _without_resampling(_evaluation(resampled))
    assert _evaluation(run)["phi_resampling"] == _evaluation(resampled)["phi_resampling"]


def test_resample_count_is_checked():
    assert EvaluateConfig().phi_resamples == 3
    assert EvaluateConfig(phi_resamples=0).phi_resamples == 0
    for bad in (1, 2, -1):
        with pytest.raises(Exception, match="phi_resamples"):
            EvaluateConfig(phi_resamples=bad)


def test_more_resamples_than_phi_inputs_is_one_error_before_any_work(resampled, tmp_path):
    evaluate = resampled.cfg.evaluate.model_copy(update={"phi_resamples": 1000})
    run = Pipeline(resampled.cfg.model_copy(update={"evaluate": evaluate}), tmp_path / "out", progress=False)
    with pytest.raises(ConfigError, match="phi_resamples = 1000 needs at least 1000") as err:
        run.run()
    assert isinstance(err.value, HedonicError)
    assert list((tmp_path / "out").iterdir()) == []  # nothing written


def test_results_tables_script_prints_the_phi_intervals(resampled):
    """scripts/results_tables.py (the results docs' tables): one effects row per layer and
    method, the hedonic rows with their over-(φ resample, query) cells from results.json."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "results_tables.py"
    spec = importlib.util.spec_from_file_location("results_tables", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = json.loads((resampled.out / "results.json").read_text())
    text = module.tables({"tiny": results})
    effects = results["evaluation_tables"]["Ablation effects"]
    lines = [line for line in text.splitlines() if line.startswith("| tiny | 2 |")]
    assert len(lines) >= len(effects)
    pas = next(r for r in effects if r["method"] == "hedonic-pas")
    row = next(line for line in lines if "| hedonic-pas |" in line)
    phi = pas["rms_phi"]
    assert f"{phi['mean']:.4f} ({phi['low']:.4f}–{phi['high']:.4f})" in row
    rnd = next(line for line in lines if "| random |" in line)
    assert rnd.split(" | ")[4] == "–"  # no φ interval for a baseline
    assert module.main([str(resampled.out.parent / "missing")]) == 2


def test_phi_validity_runs_once_per_layer_not_per_resample(resampled, tmp_path, monkeypatch):
    """φ validity measures φ, not a method's coalitions: the φ resampling does not repeat its
    full-model ablations (per_method = False), and the re-run evaluation is unchanged."""
    from hedonic_neurons.evaluate.validity import PhiValidity

    folder = tmp_path / "out"
    shutil.copytree(resampled.out, folder)
    shutil.rmtree(folder / "evaluation")
    (folder / "evaluation.json").unlink()
    real, calls = PhiValidity.evaluate, []

    def counting(self, ctx):
        calls.append(ctx.layer)
        return real(self, ctx)

    monkeypatch.setattr(PhiValidity, "evaluate", counting)
    run = Pipeline(resampled.cfg, folder, progress=False)
    run.run()
    assert calls == list(resampled.cfg.layers)
    assert _without_resampling(_evaluation(run)) == _without_resampling(_evaluation(resampled))
    assert _evaluation(run)["phi_resampling"] == _evaluation(resampled)["phi_resampling"]


def test_run_killed_during_the_phi_resampling_keeps_the_layers_main_evaluation(resampled, tmp_path, monkeypatch):
    """The main evaluation of a layer is kept until its φ resampling is saved: a run killed in
    the resampling does not redo it, and the resumed run's evaluation is the uninterrupted one."""
    from hedonic_neurons.evaluate import layer as layer_module

    folder = tmp_path / "out"
    shutil.copytree(resampled.out, folder)
    for name in ("evaluation", "explorer"):
        shutil.rmtree(folder / name, ignore_errors=True)
    (folder / "evaluation.json").unlink()

    class Killed(Exception):
        pass

    def killed(*args, **kwargs):
        raise Killed

    monkeypatch.setattr(Pipeline, "resample_layer", killed)
    with pytest.raises(Killed):
        Pipeline(resampled.cfg, folder, progress=False).run()
    monkeypatch.undo()
    (layer,) = resampled.cfg.layers
    kept = folder / "evaluation" / f"layer{layer}.main.pkl"
    assert kept.is_file() and not (folder / "evaluation" / f"layer{layer}.json").exists()
    real, calls = layer_module.evaluate_layer, []

    def counting(*args, **kwargs):
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(layer_module, "evaluate_layer", counting)
    run = Pipeline(resampled.cfg, folder, progress=False)
    run.run()
    assert calls == []  # the kept main evaluation was reused
    assert not kept.exists()  # and dropped once the layer was saved
    assert _without_resampling(_evaluation(run)) == _without_resampling(_evaluation(resampled))
    assert _evaluation(run)["phi_resampling"] == _evaluation(resampled)["phi_resampling"]
    assert json.loads((run.out / "results.json").read_text())["evaluation_tables"] == json.loads(
        (resampled.out / "results.json").read_text()
    )["evaluation_tables"]


def test_resampling_ablates_every_resamples_coalitions_in_one_pass(resampled, tmp_path, monkeypatch):
    """The φ resampling of a layer runs one batched pass per ablation mode for the coalitions of
    all its resamples (and the null's missing bins), not one per resample; the figures are those
    of the resampled run."""
    import inspect

    from hedonic_neurons.evaluate import passes

    folder = tmp_path / "out"
    shutil.copytree(resampled.out, folder)
    shutil.rmtree(folder / "evaluation")
    (folder / "evaluation.json").unlink()
    real, calls, bars = passes.layer_outputs, [], []

    def counting(*args, **kwargs):
        if any(f.function == "resample_layer" for f in inspect.stack()):
            calls.append(len(args[3]))
            bars.append(kwargs.get("progress"))
        return real(*args, **kwargs)

    monkeypatch.setattr(passes, "layer_outputs", counting)
    run = Pipeline(resampled.cfg, folder, progress=False)
    run.run()
    modes = _evaluation(run)["ablation_modes"]
    assert len(calls) <= len(modes) * len(run.cfg.layers)
    # the pass shows its own progress bar, counted in test pairs (per mode)
    assert bars and all(b is not None and b.total == len(run.test) * len(modes) for b in bars)
    picked = {
        tuple(c) for entry in _evaluation(run)["phi_resampling"]["layers"] for r in entry["chosen"]
        for cs in r.values() for c in cs
    }  # fmt: skip
    assert sum(calls) <= len(picked) * len(modes)
    assert _evaluation(run)["phi_resampling"] == _evaluation(resampled)["phi_resampling"]
