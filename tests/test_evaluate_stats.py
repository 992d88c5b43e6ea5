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
