"""Positive and negative control of the evaluation on a model with a known answer.

A tiny random LLaMA (2,048 neurons per layer) gets an AND coalition planted at layer 1 by weight
surgery (:func:`hedonic_neurons.models.plant.plant`); the unplanted model is the reference, so
ablating any other neuron changes nothing. The evaluation must rank the planted set above the
99th percentile of random size-matched sets (it can see a real effect) and put the coalitions of
random partitions at a median percentile within 40–60 (it does not invent one).

Why one small group in a wide layer: in an AND group every member alone switches the reader off,
so a random set that contains one member of the group is about as important as the group. The
planted set's percentile is therefore bounded by 100 · (1 − P(a random set of that size hits a
planted member)) ≈ 100 · (1 − 16/2048) here; with several groups or a narrower layer the bound
itself falls below 99.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from hedonic_neurons.config import EvaluateConfig
from hedonic_neurons.data import load_pairs
from hedonic_neurons.evaluate.base import EVALUATIONS
from hedonic_neurons.evaluate.builtin import coalition_percentiles
from hedonic_neurons.evaluate.layer import evaluate_layer
from hedonic_neurons.evaluate.resample import (
    attach_phi_intervals,
    resample_context,
    resample_outputs,
    strip_replicates,
)
from hedonic_neurons.evaluate.stats import keep_replicates
from hedonic_neurons.models import load_model
from hedonic_neurons.models.plant import plant
from hedonic_neurons.neurons.readout import full_logits
from synergy_helpers import one_thread
from test_loading import save_tiny

N, LAYER, SIZE, PARTITIONS = 2048, 1, 4, 40


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalplant")
    with one_thread():
        original = save_tiny(root / "original", "llama", layers=3, d=64, n=N)
        result = plant(
            original, root / "out", layer=LAYER, and_sizes=[SIZE], or_groups=0, calibration=256, verify=16
        )
        nm = load_model(result.model_dir, reference=str(original), device="cpu")
        pairs = load_pairs("demo")
        random.Random(0).shuffle(pairs)  # planting used the first 272 after this shuffle
        test = sorted(pairs[400:2400], key=lambda p: len(p.query) + len(p.passage))[:48]
        train = pairs[2400:2464]
        planted = [g["members"] for g in result.groups]
        rng = np.random.default_rng(0)
        partitions = {}
        for seed in range(PARTITIONS):  # a random partition of the layer per seed
            perm = rng.permutation(N)
            blocks = [sorted(perm[s : s + SIZE].tolist()) for s in range(0, N - SIZE + 1, SIZE)]
            partitions[seed] = {"planted": planted, "random": blocks}
        cfg = EvaluateConfig(
            evaluations=["effects", "null", "synergy"],
            selection="largest",
            size_band=(3, 64),
            null_pairs=24,
            synergy_pairs=16,
            attribution_pairs=32,
            bootstrap=200,
        )
        # targets: the planted model's own outputs plus a little noise (a model that fits its
        # task), so that a larger output change is a larger Δ loss
        batch = nm.encode([p.query for p in test], [p.passage for p in test])
        out = full_logits(nm.model, batch).double().numpy()
        base = out + 0.1 * out.std() * np.random.default_rng(1).normal(size=len(test))
        rows, ctx = evaluate_layer(
            nm,
            LAYER,
            partitions,
            reference_method="planted",
            config=cfg,
            task="cqtr",
            test=test,
            y_test=base,
            train=train,
            reference=nm.reference_mlp_weights(LAYER),
        )
    return rows, ctx, planted, {"nm": nm, "test": test}


def test_planted_set_is_above_the_99th_percentile_of_random_sets(evaluated):
    rows, ctx, _, _ = evaluated
    points, _ = coalition_percentiles(ctx, "reference", "rms")
    for seed in ctx.seeds:
        assert points[(seed, "planted")].tolist() == [pytest.approx(points[(0, "planted")][0])]
    assert points[(0, "planted")][0] > 99
    null_row = next(r for r in rows["null"] if r["method"] == "planted")
    assert null_row["percentile_rms"]["mean"] > 99 and null_row["null_sets"] >= 200
    assert null_row["percentile_rms"]["low"] <= null_row["percentile_rms"]["mean"]


def test_random_partition_sits_at_the_median_of_the_null(evaluated):
    rows, ctx, _, _ = evaluated
    points, _ = coalition_percentiles(ctx, "reference", "rms")
    pooled = np.concatenate([points[(s, "random")] for s in ctx.seeds])
    assert pooled.size == PARTITIONS
    assert 40 <= np.median(pooled) <= 60
    null_row = next(r for r in rows["null"] if r["method"] == "random")
    assert 40 <= null_row["median_percentile_rms"] <= 60


def test_effects_rise_with_importance_and_the_attribution_baseline_finds_the_group(evaluated):
    rows, ctx, planted, _ = evaluated
    by = {r["method"]: r for r in rows["effects"]}
    assert set(by) == {"planted", "random", "attribution"}
    # the planted set moves the outputs far more than random sets; the difference is paired
    assert by["planted"]["rms_vs_random"]["low"] > 0
    assert by["planted"]["dloss_vs_random"]["low"] > 0
    assert 0 < by["planted"]["rms_fraction"]["mean"] <= 1.5
    assert by["planted"]["rms"]["low"] <= by["planted"]["rms"]["mean"] <= by["planted"]["rms"]["high"]
    # first-order attribution on the train pairs picks the planted members
    (attr,) = ctx.chosen[(0, "attribution")]
    assert len(set(attr) & set(planted[0])) >= SIZE - 1
    # the null costs at most twice the rest of the passes (sequences forwarded)
    assert 0 < ctx.timing["null_rows"] <= 2 * ctx.timing["rest_rows"]
    # each evaluation's own seconds are recorded (the design in evaluation.json reports them)
    assert all(ctx.timing[f"seconds_{name}"] >= 0 for name in ("effects", "null", "synergy"))


def test_the_planted_and_group_is_non_additive_and_complementary(evaluated):
    rows, _, _, _ = evaluated
    by = {r["method"]: r for r in rows["synergy"]}
    planted = by["planted"]
    # AND: each member alone switches the reader off, so the singles' sum overshoots the joint
    # effect; δ_S − Σδ_i has the sign of complements (as PAS's Δ_ij > 0 for AND pairs). Random
    # sets that change anything are additive (their members are unrelated neurons).
    assert planted["interaction"]["mean"] > 0 and planted["nonadditivity"]["low"] > 0
    assert planted["percentile_nonadditivity"] > 95
    assert planted["nonadditivity"]["mean"] > 100 * planted["null_nonadditivity"]
    assert by["random"]["coalitions"] == PARTITIONS


def _percentile_phi(evaluated, per_resample):
    """The planted row's ``percentile_rms_phi`` when φ resample r's partition yields the
    coalitions ``per_resample[r]`` (the pipeline's path: outputs extended to the resample's sets,
    the null evaluation re-run on them with its query-bootstrap replicates, the mixture)."""
    rows, ctx, _, run = evaluated
    nm = run["nm"]
    resampled = []
    for sets in per_resample:
        out = resample_outputs(
            nm, LAYER, run["test"], ctx.outputs["reference"], sets, bins=ctx.bins,
            null_sets=ctx.config.null_sets, seed=0, mode="reference",
            reference=nm.reference_mlp_weights(LAYER),
        )  # fmt: skip
        ctx_r = resample_context(ctx, {"planted": sets}, {"reference": out}, ctx.phi, "planted")
        with keep_replicates():
            resampled.append(strip_replicates(EVALUATIONS.get("null")().evaluate(ctx_r)))
    row = dict(next(r for r in rows["null"] if r["method"] == "planted"))
    attach_phi_intervals([row], resampled, ["planted"], seed=1)
    return row["percentile_rms_phi"]


def test_phi_interval_keeps_a_stable_real_effect_and_widens_when_the_partition_is_unstable(evaluated):
    # positive control of the φ-data interval: a partition that finds the planted group on every
    # φ resample keeps it above the 99th percentile; one that loses it on one resample of three
    # (a random set of the same size there) gets an interval reaching far below
    _, _, planted, _ = evaluated
    stable = _percentile_phi(evaluated, [planted] * 3)
    assert stable["n_resamples"] == 3 and stable["low"] > 99
    others = [i for i in range(N) if i not in set(planted[0])]
    lost = sorted(np.random.default_rng(3).choice(others, size=SIZE, replace=False).tolist())
    unstable = _percentile_phi(evaluated, [planted, planted, [lost]])
    assert unstable["n_resamples"] == 3
    assert unstable["low"] < 90 < stable["low"]
    assert unstable["mean"] < stable["mean"] - 5
