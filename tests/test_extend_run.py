"""One toy extension of each kind, registered inside the test, runs through ``hedonic run`` (issue 12).

A synergy metric (φ = |ρ|), a partitioner (every neuron alone), an evaluation (it counts the
coalitions it is given) and an architecture (LLaMA's adapter under a new ``config.model_type``)
are registered for one ``with`` block, and the whole pipeline runs on a tiny model of that type,
with nothing else edited or patched, to the report.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import transformers as tf
import yaml

from hedonic_neurons.artifacts import load_partition, load_phi
from hedonic_neurons.cli import main
from hedonic_neurons.config import load_config
from hedonic_neurons.evaluate.base import EVALUATIONS, Evaluation, LayerContext
from hedonic_neurons.models import load_model
from hedonic_neurons.models.adapters import ARCHITECTURES
from hedonic_neurons.models.inputs import InputFormat
from hedonic_neurons.neurons import record
from hedonic_neurons.partitioner import PARTITIONERS, Partitioner
from hedonic_neurons.pipeline import Pipeline, load_split
from hedonic_neurons.synergy import METRICS
from hedonic_neurons.synergy.collect import phi_path
from synergy_helpers import one_thread
from test_loading import make_adapter, tiny_tokenizer
from test_phi_registry import AbsCorr  # the toy metric phi = |rho|
from tiny import tiny_config

# transformers has no public way to unregister a config or model class: the type name is unique to
# this file, so the registration it leaves behind cannot clash with anything
MODEL_TYPE = "hd_extend_toyllama"
LAYERS = [0, 1, 2]
N = 24  # neurons per layer


class ToyLlamaConfig(tf.LlamaConfig):
    model_type = MODEL_TYPE


class ToyLlamaModel(tf.LlamaModel):
    config_class = ToyLlamaConfig


class ToyLlamaForSequenceClassification(tf.LlamaForSequenceClassification):
    config_class = ToyLlamaConfig


# the loader's classes (the sequence-classification head builds its body with AutoModel)
tf.AutoConfig.register(MODEL_TYPE, ToyLlamaConfig, exist_ok=True)
tf.AutoModel.register(ToyLlamaConfig, ToyLlamaModel, exist_ok=True)
tf.AutoModelForSequenceClassification.register(
    ToyLlamaConfig, ToyLlamaForSequenceClassification, exist_ok=True
)


# --------------------------------------------------------------------------- the four extensions


class Singletons(Partitioner):
    """Every neuron alone (needs nothing but the number of neurons)."""

    requires = None
    deterministic = True

    def fit(self, X, y=None):
        self._set_result([[i] for i in range(len(X))], len(X))
        return self


class CountCoalitions(Evaluation):
    """Per layer and method: how many coalitions were evaluated and how many targets were skipped,
    summed over the seeds."""

    title = "Coalitions counted"

    def evaluate(self, ctx: LayerContext):
        return [
            {
                "layer": ctx.layer,
                "method": method,
                "coalitions": sum(len(ctx.chosen.get((s, method), [])) for s in ctx.seeds),
                "skipped": sum(ctx.skipped.get((s, method), 0) for s in ctx.seeds),
            }
            for method in ctx.methods
        ]

    def summary(self, rows):
        return [f"Counted {sum(r['coalitions'] for r in rows)} evaluated coalitions."]


# --------------------------------------------------------------------------------------- the run


def save_toy_llama(folder):
    """A tiny random LLaMA saved under the new model type (with an offline tokenizer)."""
    cfg = ToyLlamaConfig.from_dict(tiny_config("llama", layers=4, n=N).to_dict())
    torch.manual_seed(0)
    ToyLlamaForSequenceClassification(cfg).eval().save_pretrained(folder)
    tiny_tokenizer("llama").save_pretrained(folder)
    assert json.loads((folder / "config.json").read_text())["model_type"] == MODEL_TYPE
    return folder


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


def test_four_extensions_registered_in_a_test_run_through_hedonic_run(tmp_path, capsys):
    spec = dataclasses.replace(ARCHITECTURES.get("llama"), family="toyllama", model_types=(MODEL_TYPE,))
    out = tmp_path / "run"
    with (
        METRICS.temporarily("abs-corr", AbsCorr),
        PARTITIONERS.temporarily("singletons", Singletons),
        EVALUATIONS.temporarily("count-coalitions", CountCoalitions),
        ARCHITECTURES.temporarily(MODEL_TYPE, spec),
    ):
        base = save_toy_llama(tmp_path / "base")
        make_adapter(base, tmp_path / "adapter", "llama", layers=(1, 2))
        # the pairs as files: the run and the brute force below read the same pairs
        files = {}
        for split, n_pairs in (("train", 40), ("test", 20)):
            pairs, _, _ = load_split("demo", split, n_pairs, 0, "cqtr")
            files[split] = tmp_path / f"{split}.tsv"
            files[split].write_text("".join(f"{p.qid}\t{p.pid}\t{p.query}\t{p.passage}\n" for p in pairs))
        config = tmp_path / "extend.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "name": "extend",
                    "model": str(base),
                    "adapter": str(tmp_path / "adapter"),
                    "layers": LAYERS,
                    "max_length": 32,
                    "baselines": ["singletons", "random"],
                    "data": {
                        "train": {"rerank": str(files["train"])},
                        "test": {"rerank": str(files["test"])},
                        "max_train_pairs": 40,
                        "max_test_pairs": 20,
                    },
                    "phi": {"metrics": ["abs-corr"], "batch_size": 4},
                    "evaluate": {
                        "evaluations": ["effects", "count-coalitions"],
                        "seeds": [0, 1, 2],
                        "top_k": 6,
                        "selection": "largest",
                        "size_band": [2, N],
                        "certify_samples": 200,
                        "bootstrap": 100,
                        "null_pairs": 8,
                        "synergy_pairs": 4,
                        "explorer_coalitions": 1,
                        "explorer_inputs": 4,
                    },
                    "tracking": {"flow_pairs": 4, "max_pairs": 20},
                }
            )
        )
        try:
            main(["run", str(config), "--out", str(out), "--quiet"])
        except SystemExit as exc:
            assert exc.code in (0, None), capsys.readouterr().err
        assert f"report: {out / 'report.html'}" in capsys.readouterr().out
        cfg = load_config(config)
        report = out / "report.html"
        pipe = Pipeline(cfg, out, progress=False)  # only for the run's file layout (nothing is run)
        # brute force: every non-pad token's activations on the run's train pairs, in one batch
        nm = load_model(str(base), adapter=str(tmp_path / "adapter"), input_format=InputFormat(max_length=32))
        assert nm.spec is spec
        train, _, _ = load_split(cfg.data.train, "train", cfg.data.max_train_pairs, cfg.seed, cfg.task)
        assert len(train) == 40
        batch = nm.encode([p.query for p in train], [p.passage for p in train])
        with record(nm.model, LAYERS, pooling="tokens", moments=False, keep=True) as rec:
            rec(batch)

    # the registrations were temporary
    for registry, name in [
        (METRICS, "abs-corr"),
        (PARTITIONERS, "singletons"),
        (EVALUATIONS, "count-coalitions"),
        (ARCHITECTURES, MODEL_TYPE),
    ]:
        assert name not in registry

    # φ of the toy metric = |corrcoef| of every non-pad token's activations on the run's train pairs
    phi_dir = out / "phi" / "abs-corr"
    (key_dir,) = phi_dir.iterdir()
    for layer in LAYERS:
        acts = torch.cat(rec.kept[layer]).double().numpy()
        assert acts.shape == (int(batch["attention_mask"].sum()), N)
        want = np.abs(np.corrcoef(acts, rowvar=False))
        np.fill_diagonal(want, 0.0)
        assert want.max() > 0.3 and want.min() < 0.05  # not a degenerate case
        np.testing.assert_allclose(load_phi(phi_path(key_dir, layer)), want, atol=1e-6, rtol=0)

    # partitions: the toy one is all singletons; random is size-matched to hedonic-abs-corr
    hedonic = "hedonic-abs-corr"
    assert pipe.methods == [hedonic, "singletons", "random"]
    assert pipe.reference_method == hedonic
    parts = {}
    for method in pipe.methods:
        for seed in cfg.evaluate.seeds:
            for layer in LAYERS:
                doc = load_partition(pipe.partition_path(method, seed, layer))
                assert doc["n_neurons"] == N and doc["layer"] == layer
                parts[method, seed, layer] = doc["coalitions"]
    for seed in cfg.evaluate.seeds:
        for layer in LAYERS:
            assert parts["singletons", seed, layer] == [[i] for i in range(N)]
            assert sorted(map(len, parts["random", seed, layer])) == sorted(
                map(len, parts[hedonic, seed, layer])
            )

    # the toy evaluation's rows, by hand from the partitions: the reference (hedonic) method's
    # top_k largest coalitions of size >= 2 set the targets; random (same sizes) matches every
    # target; singletons (size 1) match none; the attribution baseline gets one set per target
    evaluation = json.loads((out / "evaluation.json").read_text())
    rows = evaluation["evaluations"]["count-coalitions"]
    top_k = cfg.evaluate.top_k
    got = {(r["layer"], r["method"]): (r["coalitions"], r["skipped"]) for r in rows}
    want_rows = {}
    for layer in LAYERS:
        targets = sum(
            min(top_k, sum(len(c) >= 2 for c in parts[hedonic, s, layer])) for s in cfg.evaluate.seeds
        )
        want_rows.update(
            {
                (layer, hedonic): (targets, 0),
                (layer, "singletons"): (0, targets),
                (layer, "random"): (targets, 0),
                (layer, "attribution"): (targets, 0),
            }
        )
    assert got == want_rows
    assert all(want_rows[layer, hedonic][0] > 0 for layer in LAYERS)  # something was evaluated
    effects = {(r["layer"], r["method"]): r["coalitions"] for r in evaluation["evaluations"]["effects"]}
    assert {key: effects[key] for key in want_rows} == {key: n for key, (n, _) in want_rows.items()}

    # the report: its files, its tables and method lists name the toy extensions
    results = json.loads((out / "results.json").read_text())
    assert results["evaluation_tables"]["Coalitions counted"] == rows
    total = sum(r["coalitions"] for r in rows)
    assert f"Counted {total} evaluated coalitions." in results["summary"]
    assert [r["method"] for r in results["table_extrinsic"]] == pipe.methods
    assert set(results["sizes"]) == set(pipe.methods)
    assert results["sizes"]["singletons"]["0"]["all_sizes"] == [1] * N
    assert report.is_file()
    md = (out / "report.md").read_text()
    html = report.read_text()
    for name in ("abs-corr", "singletons", "Coalitions counted"):
        assert name in md and name in html, name
