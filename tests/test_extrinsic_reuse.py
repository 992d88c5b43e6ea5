"""The extrinsic table inside ``hedonic run`` reads the evaluation's selection and ablated outputs:
same coalitions as the effects tables, no second ablation pass, and the OOD drop it reports equals
one computed by hand from a fresh ablation of those coalitions."""

from __future__ import annotations

import numpy as np
import pytest

from hedonic_neurons.config import EvaluateConfig
from hedonic_neurons.evaluate import extrinsic
from hedonic_neurons.neurons import ablation_logits, record
from synergy_helpers import one_thread

LAYER, N = 1, 24


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from synergy_helpers import tiny_neuron_model

    return tiny_neuron_model(tmp_path_factory.mktemp("reuse"), N, rows=24, n_test=12)  # 8 queries of 3 pairs


def test_extrinsic_rows_reuse_the_evaluations_passes(setup, monkeypatch):
    from hedonic_neurons.evaluate.layer import evaluate_layer
    from hedonic_neurons.evaluate.ood import task_metric
    from hedonic_neurons.models.neuron_model import encode_pairs

    nm, test, train = setup
    rng = np.random.default_rng(0)
    y_test, y_train = rng.normal(size=len(test)), rng.normal(size=len(train))
    blocks = [list(range(s, s + 6)) for s in range(0, N, 6)]
    shuffled = rng.permutation(N).tolist()
    partitions = {s: {"a": blocks, "b": [sorted(shuffled[i : i + 6]) for i in range(0, N, 6)]} for s in (0, 1, 2)}
    cfg = EvaluateConfig(
        evaluations=["effects"], ablation_modes=["zero"], selection="largest", size_band=(2, 12), top_k=2,
        null_pairs=8, synergy_pairs=4, bootstrap=100, attribution=False,
    )  # fmt: skip
    with one_thread():
        _, ctx = evaluate_layer(
            nm, LAYER, partitions, reference_method="a", config=cfg, task="cqtr", test=test, y_test=y_test,
            batch_size=2,
        )  # fmt: skip
        acts = {}
        for name, pairs in (("train", train), ("test", test)):
            with record(nm.model, LAYER, pooling="mean", moments=False, keep=True) as rec:
                rec(encode_pairs(nm, pairs))
            acts[name] = rec.kept[LAYER][0].double().numpy()
        data = extrinsic.ExtrinsicData.build("cqtr", train, test, y_train, y_test, {})

        def no_second_pass(*args, **kwargs):
            raise AssertionError("extrinsic_rows ablated again although the evaluation's outputs hold every coalition")

        monkeypatch.setattr("hedonic_neurons.evaluate.ood.ablated_outputs", no_second_pass)
        phi = np.zeros((N, N))
        rows = extrinsic.extrinsic_rows(
            nm, LAYER, partitions, data, reference_method="a", phis={"pas": phi}, phi_metric="pas",
            acts_train=acts["train"], acts_test=acts["test"], k=2, top_k=2, min_size=2, certify_samples=100,
            batch_size=2, selected=ctx.chosen, selected_skipped=ctx.skipped, outputs=ctx.outputs["zero"],
        )  # fmt: skip
        batch = encode_pairs(nm, test)
        assert {(r["seed"], r["method"]) for r in rows} == {(s, m) for s in (0, 1, 2) for m in ("a", "b")}
        for row in rows:
            chosen = ctx.chosen[(row["seed"], row["method"])]
            assert row["k"] == len(chosen) == 2
            logits = ablation_logits(nm, batch, LAYER, [[], *chosen], mode="zero").double().numpy()
            base = task_metric("cqtr", test, logits[0], y_test)
            want = np.mean([base - task_metric("cqtr", test, out, y_test) for out in logits[1:]])
            assert row["ood_drop"] == pytest.approx(want, rel=1e-4, abs=1e-9)
