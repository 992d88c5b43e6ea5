"""Evaluation measures against hand-computed values: listwise CE, normalised RMS Δlogit, the
mid-rank percentile, the log bins, the query bootstrap (against a brute-force bootstrap),
selection by cohesion, non-additivity (on a model where ablation is exactly additive), config."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hedonic_neurons.config import load_config
from hedonic_neurons.errors import ConfigError, HedonicError
from hedonic_neurons.evaluate.attribution import attribution_sets
from hedonic_neurons.evaluate.base import EVALUATIONS, Evaluation
from hedonic_neurons.evaluate.builtin import additivity_terms, non_additivity
from hedonic_neurons.evaluate.measures import (
    denoise,
    effect_measures,
    listwise_ce,
    query_index,
    rms_dlogit,
    task_loss,
)
from hedonic_neurons.evaluate.null import (
    bin_sizes,
    mid_rank_percentile,
    query_subsample,
    random_sets,
    size_bin,
)
from hedonic_neurons.evaluate.select import cohesion, matched_selection, select_coalitions
from hedonic_neurons.evaluate.stats import minimal_detectable_difference, query_bootstrap


def test_listwise_ce_by_hand():
    outputs = np.array([1.0, 2.0, 0.0, 0.5, 0.5])
    targets = np.array([1.0, 0.0, 1.0, 0.0, 0.0])  # query 1 has no relevant candidate
    groups = np.array([0, 0, 0, 1, 1])
    z = math.log(math.e**1 + math.e**2 + math.e**0)
    expected = -(0.5 * (1 - z) + 0.5 * (0 - z))
    ce = listwise_ce(outputs, targets, groups, 2)
    assert ce[0] == pytest.approx(expected) and math.isnan(ce[1])
    # graded targets: p = y / sum(y)
    ce2 = listwise_ce(np.array([0.0, 0.0]), np.array([0.25, 0.75]), np.array([0, 0]), 1)
    assert ce2[0] == pytest.approx(math.log(2))
    with pytest.raises(HedonicError, match="non-negative"):
        listwise_ce(outputs, -targets, groups, 2)


def test_task_loss_and_rms_dlogit_by_hand():
    base = np.array([0.0, 1.0, 2.0, 3.0])
    ablated = np.array([[1.0, 1.0, 2.0, 1.0]])
    y = np.array([0.0, 0.0, 2.0, 2.0])
    groups = np.array([0, 0, 1, 1])
    sd = float(np.std(base))
    rms = rms_dlogit(base, ablated, groups, 2, sd)
    np.testing.assert_allclose(rms, [[math.sqrt(0.5) / sd, math.sqrt(2.0) / sd]])
    # MSE per query: before (0 + 1)/2, (0 + 1)/2; after (1 + 1)/2, (0 + 1)/2
    np.testing.assert_allclose(task_loss("cqtr", base, y, groups, 2), [0.5, 0.5])
    eff = effect_measures("cqtr", base, ablated, y, groups, 2, sd)
    np.testing.assert_allclose(eff["dloss"], [[0.5, 0.0]])
    np.testing.assert_allclose(eff["rms"], rms)
    # a rounding-level change is no change at all
    assert np.array_equal(denoise(base, base + 1e-9), base)
    assert effect_measures("cqtr", base, base + 1e-9, y, groups, 2, sd)["rms"].max() == 0.0
    idx, names = query_index(["b", "a", "b"])
    assert idx.tolist() == [1, 0, 1] and names == ["a", "b"]


def test_mid_rank_percentile_and_log_bins():
    null = np.array([1.0, 2.0, 2.0, 3.0])
    assert mid_rank_percentile(2.0, null) == pytest.approx(50.0)  # (1 + ½·2) / 4
    assert mid_rank_percentile(3.5, null) == 100.0 and mid_rank_percentile(0.0, null) == 0.0
    np.testing.assert_allclose(mid_rank_percentile(np.array([1.0, 3.0]), null), [12.5, 87.5])
    # a value drawn from the null itself: expected percentile 50
    rng = np.random.default_rng(0)
    draws = rng.normal(size=2000)
    assert np.mean(mid_rank_percentile(draws[:1000], draws[1000:])) == pytest.approx(50, abs=2.5)
    # octaves from 5: 5-9, 10-19, 20-39, 40-79
    assert [size_bin(s, 5) for s in (5, 9, 10, 19, 20, 39, 40, 64)] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert [bin_sizes(k, 5) for k in range(4)] == [(5, 9), (10, 19), (20, 39), (40, 79)]
    # two bins per octave: edges 5, 7.07, 10, 14.1, 20
    assert [bin_sizes(k, 5, 2) for k in range(4)] == [(5, 7), (8, 9), (10, 14), (15, 19)]
    assert all(
        size_bin(s, 5, 2) == k
        for k in range(4)
        for s in range(bin_sizes(k, 5, 2)[0], bin_sizes(k, 5, 2)[1] + 1)
    )
    with pytest.raises(HedonicError, match="below the size band"):
        size_bin(4, 5)


def test_random_sets_are_size_matched_within_bins():
    sets, bins = random_sets({0: [5, 7], 1: [12]}, 100, 200, seed=3)
    assert len(sets) == 400 and bins.tolist() == [0] * 200 + [1] * 200
    assert sorted({len(s) for s in sets[:200]}) == [5, 7] and {len(s) for s in sets[200:]} == {12}
    assert sum(len(s) == 5 for s in sets[:200]) == 100  # cycled: the bin's size distribution
    assert all(len(set(s)) == len(s) and max(s) < 100 for s in sets)
    again, _ = random_sets({0: [5, 7], 1: [12]}, 100, 200, seed=3)
    assert again == sets


def test_query_subsample_takes_whole_queries():
    qids = ["a", "a", "b", "c", "c", "c", "d"]
    sub = query_subsample(qids, 4, seed=0)
    taken = {qids[i] for i in sub}
    assert len(sub) <= 4 and all(sum(q == t for q in qids) == sum(qids[i] == t for i in sub) for t in taken)
    assert query_subsample(qids, 100, seed=0).tolist() == list(range(7))
    # at least two whole queries even when the first one already fills the budget
    two = query_subsample(["a"] * 5 + ["b"] * 5 + ["c"] * 5, 4, seed=0, min_queries=2)
    assert len(two) == 10 and len({"abc"[i // 5] for i in two}) == 2



def test_query_subsample_per_query_spreads_the_same_pairs_over_more_queries():
    qids = [q for q in "abcdefgh" for _ in range(6)]  # 8 queries x 6 pairs
    whole = query_subsample(qids, 12, seed=0)
    spread = query_subsample(qids, 12, seed=0, per_query=2)
    assert len({qids[i] for i in whole}) == 2 and len(whole) == 12
    per = {q: sum(qids[i] == q for i in spread) for q in {qids[i] for i in spread}}
    assert len(spread) == 12 and len(per) == 6 and set(per.values()) == {2}
    # seeded and reproducible; a query with fewer pairs than per_query gives all it has
    assert query_subsample(qids, 12, seed=0, per_query=2).tolist() == spread.tolist()
    assert query_subsample(qids, 12, seed=1, per_query=2).tolist() != spread.tolist()
    short = query_subsample(["a", "b", "b", "b"], 100, seed=0, per_query=2)
    assert [["a", "b", "b", "b"][i] for i in short].count("a") == 1 and len(short) == 3
    with pytest.raises(ValueError, match="per_query"):
        query_subsample(qids, 12, seed=0, per_query=0)


def _brute_bootstrap(values, n_boot, rng):
    q = values.shape[-1]
    out = []
    for _ in range(n_boot):
        row = values[rng.integers(values.shape[0])] if values.ndim == 2 else values
        out.append(row[rng.integers(0, q, size=q)].mean())
    return np.percentile(out, [2.5, 97.5])


def test_query_bootstrap_matches_a_brute_force_bootstrap():
    rng = np.random.default_rng(5)
    values = rng.exponential(size=30)
    est = query_bootstrap(values, n_boot=4000, seed=1)
    lo, hi = _brute_bootstrap(values, 4000, np.random.default_rng(2))
    width = hi - lo
    assert est["mean"] == pytest.approx(values.mean())
    assert est["low"] == pytest.approx(lo, abs=0.08 * width) and est["high"] == pytest.approx(
        hi, abs=0.08 * width
    )
    assert est["n"] == 30
    # two levels: R resamples of the phi data x Q queries; the row-to-row spread widens the interval
    two = values[None, :] + np.array([[-1.0], [0.0], [1.0]])
    est2 = query_bootstrap(two, n_boot=4000, seed=1)
    lo2, hi2 = _brute_bootstrap(two, 4000, np.random.default_rng(3))
    assert est2["low"] == pytest.approx(lo2, abs=0.05 * (hi2 - lo2))
    assert est2["high"] == pytest.approx(hi2, abs=0.05 * (hi2 - lo2))
    assert est2["high"] - est2["low"] > 2 * width
    # NaN queries are left out
    with_nan = np.append(values, np.nan)
    assert query_bootstrap(with_nan, n_boot=500, seed=1)["mean"] == pytest.approx(values.mean())
    # one query: nothing to resample, no interval (not a zero-width one)
    single = query_bootstrap(np.array([0.3]), n_boot=100)
    assert single["mean"] == 0.3 and math.isnan(single["low"]) and math.isnan(single["high"])
    with pytest.raises(HedonicError, match="resamples, queries"):
        query_bootstrap(np.zeros((2, 2, 2)))


def test_minimal_detectable_difference():
    # (z_0.975 + z_0.8) = 1.95996 + 0.84162
    assert minimal_detectable_difference(1.0, 100) == pytest.approx((1.959964 + 0.841621) / 10, rel=1e-5)
    assert math.isnan(minimal_detectable_difference(1.0, 0))


def test_selection_by_cohesion_and_size_matching():
    n = 12
    phi = -np.ones((n, n))
    a, b = [0, 1, 2, 3, 4], [5, 6, 7, 8, 9, 10, 11]
    phi[np.ix_(a, a)] = 1.0  # a: every pair positive
    phi[np.ix_(b[:3], b[:3])] = 0.5  # b: 3 of 21 pairs positive
    assert cohesion(phi, a) == (1.0, 1.0)
    frac, mean = cohesion(phi, b)
    assert frac == pytest.approx(3 / 21) and mean == pytest.approx((3 * 0.5 - 18) / 21)
    assert select_coalitions([b, a], phi, rule="cohesion", k=1, band=(5, 64)) == [a]
    assert select_coalitions([b, a], phi, rule="largest", k=1, band=(5, 64)) == [b]
    assert select_coalitions([b, a], phi, rule="largest", k=5, band=(6, 64)) == [b]
    got, skipped = matched_selection([5, 5], [b, a], phi, "cohesion", np.random.default_rng(0))
    assert got[0] == a and set(got[1]) < set(b) and len(got[1]) == 5 and skipped == 0
    got, skipped = matched_selection([8], [b, a], phi, "cohesion", np.random.default_rng(0))
    assert got == [] and skipped == 1
    assert attribution_sets(np.array([0.1, 0.9, 0.5, 0.7, 0.2]), [1, 2]) == [[1, 3], [2]]


def test_non_additivity_by_hand():
    base = np.array([0.0, 0.0])
    joint = np.array([[2.0, -1.0]])
    singles = [np.array([[1.0, -1.0], [0.5, 1.0]])]  # δ_i sums: 1.5, 0.0
    d_joint, d_rest = additivity_terms(joint, base, singles)
    np.testing.assert_allclose(d_rest, [[0.5, -1.0]])
    na, inter = non_additivity(d_joint, d_rest)
    assert na[0] == pytest.approx(0.75 / 1.5) and inter[0] == pytest.approx(-0.25 / 1.5)
    na0, _ = non_additivity(np.zeros((1, 2)), np.zeros((1, 2)))
    assert math.isnan(na0[0])  # nothing changes: undefined


def test_non_additivity_is_zero_where_ablation_is_additive():
    """Reference ablation changes the MLP output by a sum over neurons; read out linearly right
    after the layer, joint effects are exactly the sum of single effects. The full readout is not
    linear, and the same sets are measurably non-additive there."""
    from hedonic_neurons.models.adapters import mlp_weights
    from hedonic_neurons.neurons import ablation_logits
    from tiny import tiny_model

    torch.manual_seed(0)
    # float64 throughout: in float32 the rounding of the outputs alone is ~1e-4 of these small
    # joint effects (and varies with the CPU's kernels), too close to the bound below
    model = tiny_model("llama", n=24, d=16, seed=0).double()
    reference = mlp_weights(tiny_model("llama", n=24, d=16, seed=1).double(), 1)
    batch = {"input_ids": torch.randint(1, 97, (6, 7)), "attention_mask": torch.ones(6, 7, dtype=torch.long)}
    members = [[1, 4, 7], [2, 3, 5, 8, 13]]
    for readout, norm in (("local", False), ("full", True)):
        sets = [[], *members, *[[i] for m in members for i in m]]
        out = ablation_logits(model, batch, 1, sets, reference=reference, readout=readout, norm=norm)
        out = out.double().numpy()
        base, joint, singles = out[0], out[1:3], out[3:]
        per = [singles[:3], singles[3:]]
        na, _ = non_additivity(*additivity_terms(joint, base, per))
        if readout == "local":
            assert np.all(na < 1e-4), na
        else:
            assert np.all(na > 1e-3), na


def test_evaluations_registry_and_config():
    assert {"effects", "null", "synergy"} <= set(EVALUATIONS.names())
    assert all(issubclass(EVALUATIONS.get(n), Evaluation) for n in EVALUATIONS.names())
    with pytest.raises(ConfigError, match="did you mean 'synergy'"):
        load_config(None, {"evaluate": {"evaluations": ["synergie"]}})
    with pytest.raises(ConfigError, match="size_band"):
        load_config(None, {"evaluate": {"size_band": [8, 4]}})
    with pytest.raises(ConfigError, match="null_sets"):
        load_config(None, {"evaluate": {"null_sets": 50}})
    cfg = load_config(None, {"evaluate": {"selection": "largest", "ablation_modes": ["reference", "mean"]}})
    assert cfg.evaluate.selection == "largest" and cfg.evaluate.size_band == (5, 64)

    class Constant(Evaluation):
        title = "constant"

        def evaluate(self, ctx):
            return [{"layer": ctx.layer, "value": 1.0}]

    with EVALUATIONS.temporarily("constant", Constant):
        assert load_config(None, {"evaluate": {"evaluations": ["constant"]}}).evaluate.evaluations == [
            "constant"
        ]
        assert Constant().tables([{"layer": 1, "value": 1.0}]) == {"constant": [{"layer": 1, "value": 1.0}]}
    with pytest.raises(ConfigError, match="does not implement Evaluation"):
        EVALUATIONS.add("bad", object)


def _hand_context():
    """Four pairs of two queries; two coalitions and four random sets with known outputs."""
    from types import SimpleNamespace

    from hedonic_neurons.config import EvaluateConfig
    from hedonic_neurons.evaluate.base import LayerContext
    from hedonic_neurons.evaluate.passes import LayerOutputs

    pairs = [SimpleNamespace(qid=q, pid=str(i)) for i, q in enumerate("aabb")]
    base = np.array([0.0, 1.0, 2.0, 3.0])
    shifts = np.array([0.0, 0.5, 1.5, 3.0])
    out = LayerOutputs(
        mode="reference",
        coalitions=[(0, 1), (2, 3)],
        base=base,
        ablated=base + np.array([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 2.0, 2.0]]),
        ceiling=base + 4.0,
        sub=np.arange(4),
        syn=np.arange(4),
        null_sets=[[0, 2], [1, 3], [0, 3], [1, 2]],
        null_bins=np.zeros(4, dtype=np.int64),
        null=base[None, :] + shifts[:, None],
        singles=[0, 1, 2, 3],
        single=base + np.array([[0.5, 0.5, 0, 0], [0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5], [0, 0, 0.5, 0.5]]),
    )
    groups = np.array([0, 0, 1, 1])
    return LayerContext(
        nm=None, layer=3, task="cqtr", methods=["m1", "m2"], seeds=[0],
        chosen={(0, "m1"): [[0, 1]], (0, "m2"): [[2, 3]]}, skipped={}, targets={0: [2]}, phi=None,
        pairs=pairs, y=np.array([0.0, 1.0, 0.0, 1.0]), qrels={}, outputs={"reference": out},
        config=EvaluateConfig(bootstrap=200, size_band=(2, 64)), groups=groups, n_queries=2,
        sub_groups=groups, n_sub_queries=2, bins=(2, 1),
    )  # fmt: skip


def test_builtin_evaluations_on_hand_outputs():
    ctx = _hand_context()
    sd = float(np.std([0.0, 1.0, 2.0, 3.0]))
    effects = {r["method"]: r for r in EVALUATIONS.get("effects")().evaluate(ctx)}
    # m1 moves query a by 1 and query b by 0: mean normalised RMS over queries 0.5 / sd
    assert effects["m1"]["rms"]["mean"] == pytest.approx(0.5 / sd)
    assert effects["m2"]["rms"]["mean"] == pytest.approx(1.0 / sd)
    assert effects["m1"]["rms_fraction"]["mean"] == pytest.approx(0.5 / 4.0)  # ceiling: 4 / sd
    assert effects["m1"]["rms"]["low"] >= 0 and effects["m1"]["rms"]["high"] <= 1.0 / sd + 1e-12
    # MSE: m1 raises query a's loss from 0 to 1 (both pairs off by 1), leaves query b unchanged
    assert effects["m1"]["dloss"]["mean"] == pytest.approx(0.5)
    null = {r["method"]: r for r in EVALUATIONS.get("null")().evaluate(ctx)}
    # null RMS: 0, 0.5, 1.5, 3 (/ sd); m1 = 0.5/sd ties one, beats one: (1 + ½) / 4
    assert null["m1"]["percentile_rms"]["mean"] == pytest.approx(37.5)
    assert null["m2"]["percentile_rms"]["mean"] == pytest.approx(50.0)
    assert null["m1"]["null_sets"] == 4 and null["m1"]["null_queries"] == 2
    synergy = {r["method"]: r for r in EVALUATIONS.get("synergy")().evaluate(ctx)}
    # m1's singles sum to its joint effect; m2's singles sum to half of it
    assert synergy["m1"]["nonadditivity"]["mean"] == pytest.approx(0.0)
    assert synergy["m2"]["nonadditivity"]["mean"] == pytest.approx(0.5)
    assert synergy["m2"]["interaction"]["mean"] == pytest.approx(0.5)
    sentences = EVALUATIONS.get("null")().summary(list(null.values()))
    assert sentences[0].startswith(
        "Layer 3, m1: its evaluated coalitions (n = 1) sit on average at the 38th percentile"
    )
    assert "4 random sets in 1 size bin, on 4 test pairs of 2 queries" in sentences[0]


def test_attribution_is_the_first_order_ablation_effect():
    """For a small weight change (as a LoRA makes), |gradient × revert shift| per neuron and pair
    matches the exact effect of reverting that neuron alone (by batched ablation)."""
    from types import SimpleNamespace

    from hedonic_neurons.evaluate.attribution import _batch_gradient, attribution_scores
    from hedonic_neurons.models.adapters import mlp_weights
    from hedonic_neurons.neurons import ablation_logits
    from tiny import tiny_model

    model = tiny_model("llama", n=24, d=16, seed=0)
    current = mlp_weights(model, 1)
    gen = torch.Generator().manual_seed(3)

    def nudge(t):
        return None if t is None else (t + 0.02 * t.std() * torch.randn(t.shape, generator=gen)).detach()

    reference = type(current)(
        up=nudge(current.up), down=nudge(current.down), act=current.act, gate=nudge(current.gate)
    )
    batch = {
        "input_ids": torch.randint(1, 97, (5, 6), generator=gen),
        "attention_mask": torch.ones(5, 6, dtype=torch.long),
    }
    nm = SimpleNamespace(model=model, n_neurons=24, score_token_id=None, encode=lambda q, p: batch)
    pairs = [SimpleNamespace(query="", passage="")] * 5
    grad = _batch_gradient(nm, pairs, 1, "reference", reference, None).double().numpy()  # (B, n)
    logits = ablation_logits(model, batch, 1, [[], *[[i] for i in range(24)]], reference=reference)
    exact = (logits[1:] - logits[0]).double().numpy().T  # (B, n)
    assert np.abs(exact).max() > 0
    np.testing.assert_allclose(grad, exact, atol=0.05 * np.abs(exact).max())
    assert np.corrcoef(grad.ravel(), exact.ravel())[0, 1] > 0.99
    scores = attribution_scores(nm, pairs, 1, reference=reference, batch_size=5)
    np.testing.assert_allclose(scores, np.abs(grad).mean(0), rtol=1e-6)


def test_rm_effects_use_listwise_ce_and_report_ndcg():
    ctx = _hand_context()
    ctx.task = "rm"
    ctx.y = np.array([1.0, 0.0, 0.0, 1.0])
    ctx.qrels = {"a": {"0": 1}, "b": {"3": 1}}
    rows = {r["method"]: r for r in EVALUATIONS.get("effects")().evaluate(ctx)}
    # both coalitions shift a whole query's scores by a constant: the softmax, hence the
    # listwise cross-entropy, does not change, while the outputs do
    assert rows["m1"]["dloss"]["mean"] == pytest.approx(0.0, abs=1e-12)
    assert rows["m1"]["rms"]["mean"] > 0
    # query a ranks its relevant pair (score 0) below the other (1): nDCG@10 = 1/log2(3); b: 1
    assert rows["m1"]["ndcg_before"] == pytest.approx((1 / math.log2(3) + 1) / 2)
    assert rows["m1"]["ndcg_after"] == pytest.approx(rows["m1"]["ndcg_before"])
    assert math.isnan(rows["m1"]["dloss_fraction"]["mean"])  # the whole-layer shift is uniform too


def test_non_additivity_sentence_without_a_null():
    """Where every random set changes nothing (reference ablation in a planted model: the null's
    sets hold no planted neuron), the null's non-additivity is undefined; the sentence says so
    instead of printing "nan%", and still gives the coalitions' own figure."""
    row = {
        "layer": 3,
        "method": "given",
        "nonadditivity": {"mean": 0.97, "low": 0.70, "high": 1.11},
        "null_nonadditivity": float("nan"),
        "percentile_nonadditivity": float("nan"),
        "layer_first_order_explained": 0.59,
    }
    (sentence,) = EVALUATIONS.get("synergy")().summary([row])
    assert "97% of the joint effect" in sentence and "70%–111%" in sentence
    assert "no random size-matched set changed the output" in sentence and "nan" not in sentence
    with_null = {**row, "null_nonadditivity": 0.014, "percentile_nonadditivity": 83.2}
    (sentence,) = EVALUATIONS.get("synergy")().summary([with_null])
    assert "random size-matched sets: 1%, percentile 83" in sentence
