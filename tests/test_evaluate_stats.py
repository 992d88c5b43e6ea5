import numpy as np
import pytest
from scipy import stats

from hedonic_neurons.errors import HedonicError
from hedonic_neurons.evaluate.regression import alignment_r2, coalition_matrix, macro_feature_r2
from hedonic_neurons.evaluate.stats import mean_ci, size_matched, top_coalitions


def test_mean_ci_matches_t_interval():
    vals = [0.1, 0.3, 0.2, 0.25]
    est = mean_ci(vals)
    lo, hi = stats.t.interval(0.95, df=3, loc=np.mean(vals), scale=stats.sem(vals))
    assert est.mean == pytest.approx(np.mean(vals))
    assert (est.low, est.high) == pytest.approx((lo, hi))
    assert mean_ci([0.5]).low == 0.5 and mean_ci([0.5, 0.5, 0.5]).high == 0.5
    assert mean_ci([1.0, float("nan"), 3.0]).n == 2


def test_top_and_size_matched():
    coal = [[5], [0, 1], [2, 3, 4], [6, 7, 8, 9]]
    assert top_coalitions(coal, 2) == [[6, 7, 8, 9], [2, 3, 4]]
    rng = np.random.default_rng(0)
    clusters = [[0, 1, 2, 3, 4, 5], [6, 7], [8, 9, 10]]
    matched, skipped = size_matched([3, 2, 5, 7], clusters, rng)
    assert skipped == 1  # nothing left for size 7
    assert sorted(len(m) for m in matched) == [2, 3, 5]
    # the size-5 target took the 6-cluster, the size-3 the 3-cluster, the size-2 the 2-cluster
    assert set(matched[0]) <= set(clusters[0]) and set(matched[1]) == {8, 9, 10} and matched[2] == [6, 7]


def test_coalition_matrix_averages():
    pooled = np.arange(12, dtype=float).reshape(3, 4)
    mat = coalition_matrix([[0, 2], [3]], 4)
    np.testing.assert_allclose(pooled @ mat, np.stack([(pooled[:, 0] + pooled[:, 2]) / 2, pooled[:, 3]], 1))
    with pytest.raises(HedonicError, match="empty"):
        coalition_matrix([[]], 4)


def test_alignment_and_ridge_recover_linear_signal():
    rng = np.random.default_rng(1)
    heur_tr, heur_te = rng.normal(size=(200, 3)), rng.normal(size=(100, 3))
    w = np.array([1.0, -2.0, 0.5])
    # coalition 0 is a linear function of the heuristics, coalition 1 is noise
    coal_tr = np.stack([heur_tr @ w, rng.normal(size=200)], 1)
    coal_te = np.stack([heur_te @ w, rng.normal(size=100)], 1)
    r2 = alignment_r2(coal_tr, heur_tr, coal_te, heur_te)
    assert r2[0] == pytest.approx(1.0, abs=1e-9) and r2[1] < 0.1
    y_tr, y_te = coal_tr[:, 0] * 3 + 1, coal_te[:, 0] * 3 + 1
    r2_ridge, alpha = macro_feature_r2(coal_tr, y_tr, coal_te, y_te)
    assert r2_ridge > 0.99 and alpha > 0
    with pytest.raises(HedonicError, match="non-finite"):
        macro_feature_r2(coal_tr, y_tr * np.nan, coal_te, y_te)


# ------------------------------------------------- intervals over (φ resample, query)


def test_mixture_interval_draws_one_resample_per_replicate():
    from hedonic_neurons.evaluate.stats import mixture_interval

    reps = [np.arange(200.0), np.arange(200.0) + 1000.0]
    got = mixture_interval(reps, [1.0, 3.0], seed=7)
    pick = np.random.default_rng(7).integers(0, 2, size=200)
    mixed = np.where(pick == 0, reps[0], reps[1])  # replicate b of the resample drawn for b
    low, high = np.percentile(mixed, [2.5, 97.5])
    assert got == {"mean": 2.0, "low": pytest.approx(low), "high": pytest.approx(high), "n_resamples": 2}
    # identical resamples: the query interval alone; spread between resamples widens it
    same = mixture_interval([reps[0], reps[0]], [1.0, 1.0])
    assert (same["low"], same["high"]) == pytest.approx(tuple(np.percentile(reps[0], [2.5, 97.5])))
    assert got["high"] - got["low"] > same["high"] - same["low"]
    with pytest.raises(HedonicError, match="lengths"):
        mixture_interval([np.zeros(3), np.zeros(4)], [0.0, 0.0])
    assert np.isnan(mixture_interval([], [])["mean"])


def test_interval_of_keeps_replicates_only_when_asked():
    from hedonic_neurons.evaluate.stats import interval_of, keep_replicates

    boots = np.array([1.0, np.nan, 3.0])
    assert "replicates" not in interval_of(boots, 2.0)
    with keep_replicates():
        kept = interval_of(boots, 2.0)["replicates"]
    np.testing.assert_array_equal(kept, boots)  # draw order and NaN kept, so draws stay paired
    assert "replicates" not in interval_of(boots, 2.0)


def test_weighted_r2_is_r2_on_the_expanded_bootstrap_sample():
    from sklearn.metrics import r2_score

    from hedonic_neurons.evaluate.stats import bootstrap_weights, weighted_r2

    rng = np.random.default_rng(3)
    codes = np.repeat(np.arange(8), 6)
    y = rng.normal(size=codes.size) + codes
    pred = y + rng.normal(size=codes.size)
    w = bootstrap_weights(8, 5, seed=2)
    got = weighted_r2(y, pred, w[:, codes])
    for b in range(5):
        rows = np.concatenate([np.flatnonzero(codes == q) for q in range(8) for _ in range(int(w[b, q]))])
        assert got[b] == pytest.approx(r2_score(y[rows], pred[rows]))
    assert np.isnan(weighted_r2(np.full(6, 0.3), np.zeros(6), np.ones((2, 6)))).all()


def test_ood_drop_replicates_match_ood_drops_on_resampled_queries():
    from hedonic_neurons.data.loaders import Pair
    from hedonic_neurons.evaluate.ood import ood_drop_replicates, ood_drops
    from hedonic_neurons.evaluate.stats import bootstrap_weights

    rng = np.random.default_rng(5)
    pairs = [Pair(qid=f"q{q}", pid=f"p{q}-{i}", query="x", passage="y") for q in range(6) for i in range(5)]
    codes = np.repeat(np.arange(6), 5)
    y = rng.normal(size=30)
    base = y + 0.3 * rng.normal(size=30)
    ablated = base[None] + rng.normal(size=(2, 30))
    qrels = {f"q{q}": {f"p{q}-{i}": int(i < 2) for i in range(5)} for q in range(6)}
    ones = np.ones((1, 6))
    for task in ("cqtr", "rm"):
        whole = ood_drops(task, pairs, y, base, ablated, qrels)
        np.testing.assert_allclose(ood_drop_replicates(task, pairs, y, base, ablated, ones, qrels)[:, 0], whole)
    w = bootstrap_weights(6, 4, seed=1)
    got = ood_drop_replicates("cqtr", pairs, y, base, ablated, w)
    for b in range(4):  # the drop on the bootstrap sample itself (queries repeated as drawn)
        rows = np.concatenate([np.flatnonzero(codes == q) for q in range(6) for _ in range(int(w[b, q]))])
        want = ood_drops("cqtr", [pairs[i] for i in rows], y[rows], base[rows], ablated[:, rows])
        np.testing.assert_allclose(got[:, b], want)
