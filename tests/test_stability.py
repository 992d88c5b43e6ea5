import math

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from sklearn.metrics import adjusted_rand_score

from hedonic_neurons.artifacts import canonical_coalitions
from hedonic_neurons.baselines.partitioners import PhiCommunities
from hedonic_neurons.errors import ConfigError, DataError, HedonicError
from hedonic_neurons.evaluate import stability as st
from hedonic_neurons.game.solvers import TopCover

# ------------------------------------------------------------------------------ split_inputs


def test_split_inputs_disjoint_cover_and_seeded():
    parts = st.split_inputs(10, 3, seed=4)
    assert [p.size for p in sorted(parts, key=len)] == [3, 3, 4]
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(10))  # disjoint and covering
    assert all(np.array_equal(p, np.sort(p)) and p.dtype == np.int64 for p in parts)
    again = st.split_inputs(10, 3, seed=4)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    other = st.split_inputs(10, 3, seed=5)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other))
    boot = st.split_inputs(10, 4, seed=0, bootstrap=True)
    assert len(boot) == 4 and all(b.size == 10 and b.min() >= 0 and b.max() < 10 for b in boot)
    assert any(np.unique(b).size < 10 for b in boot)  # drawn with replacement
    with pytest.raises(ConfigError, match="parts <= n"):
        st.split_inputs(2, 3, seed=0)
    with pytest.raises(ConfigError, match="parts= must be an integer >= 2"):
        st.split_inputs(10, 1, seed=0)


# ------------------------------------------------------------------------------ resample_partitions


def _block_phi(blocks, noise, rng):
    """Symmetric φ: +1 inside each block, -0.5 across, plus symmetric noise; zero diagonal."""
    n = sum(blocks)
    lab = np.repeat(np.arange(len(blocks)), blocks)
    phi = np.where(lab[:, None] == lab[None, :], 1.0, -0.5) + noise * rng.normal(size=(n, n))
    phi = (phi + phi.T) / 2
    np.fill_diagonal(phi, 0.0)
    return phi.astype(np.float32), lab


def test_resample_partitions_fits_a_fresh_copy_on_each_phi():
    rng = np.random.default_rng(0)
    phis = [_block_phi([4, 4, 4], 0.05, rng)[0] for _ in range(3)]
    solver = TopCover(k=3)
    labels = st.resample_partitions(phis, solver)
    assert not hasattr(solver, "labels_")  # the given estimator is never fitted
    truth = np.repeat([0, 1, 2], 4)
    assert len(labels) == 3
    for lab, phi in zip(labels, phis):
        assert adjusted_rand_score(truth, lab) == 1.0
        assert np.array_equal(lab, TopCover(k=3).fit(phi).labels_)
    res = st.stability(labels)
    assert res["ari_mean"] == 1.0 and res["n_pairs"] == 3 and res["n_coalitions_mean"] == 3.0
    with pytest.raises(DataError, match="at least 3"):
        st.resample_partitions(phis[:2], solver)
    with pytest.raises(DataError, match="expected 12 like resample 0"):
        st.resample_partitions([*phis[:2], phis[2][:6, :6]], solver)
    with pytest.raises(ConfigError, match="partitioner="):
        st.resample_partitions(phis, "top-cover")


def test_resample_partitions_keeps_random_state_and_takes_a_graph():
    rng = np.random.default_rng(1)
    phis = [_block_phi([5, 5], 0.3, rng)[0] for _ in range(3)]
    est = PhiCommunities(random_state=3)
    graphs = [est.graph(p) for p in phis]
    from_graphs = st.resample_partitions(graphs, est)
    from_dense = st.resample_partitions(phis, est)
    assert all(np.array_equal(a, b) for a, b in zip(from_graphs, from_dense))
    assert np.array_equal(from_dense[0], PhiCommunities(random_state=3).fit(phis[0]).labels_)


# ------------------------------------------------------------------------------ stability


def test_stability_is_pairwise_ari():
    a = np.array([0, 0, 1, 1, 2, 2])
    b = np.array([0, 0, 1, 1, 1, 2])
    c = np.array([0, 1, 0, 1, 0, 1])
    res = st.stability([a, [[0, 1], [2, 3, 4], [5]], c])  # the second is b as coalitions
    want = [adjusted_rand_score(a, b), adjusted_rand_score(a, c), adjusted_rand_score(b, c)]
    assert res["pairwise"] == pytest.approx(want)
    assert res["ari_mean"] == pytest.approx(np.mean(want))
    assert (res["ari_min"], res["ari_max"]) == pytest.approx((min(want), max(want)))
    assert res["n_resamples"] == 3 and res["n_coalitions_mean"] == pytest.approx(8 / 3)
    by = st.stability_by_method({"x": [a, a, a], "y": [a, b, c]})
    assert by["x"]["ari_mean"] == 1.0 and by["y"]["ari_mean"] == pytest.approx(res["ari_mean"])
    with pytest.raises(DataError, match="at least 3"):
        st.stability([a, b])
    with pytest.raises(DataError, match="expected 6 like the first"):
        st.stability([a, b, c[:5]])


# ------------------------------------------------------------------------------ consensus


def _dense_consensus(labels, threshold, min_size):
    """Brute force: the dense co-assignment count matrix, thresholded, its components."""
    labels = np.column_stack(labels)
    n, r = labels.shape
    counts = sum((labels[:, j][:, None] == labels[:, j][None, :]).astype(int) for j in range(r))
    need = math.ceil(threshold * r - 1e-9)
    adj = (counts >= need) & ~np.eye(n, dtype=bool)
    _, comp = connected_components(sp.csr_array(adj), directed=False)
    groups = [np.flatnonzero(comp == c) for c in np.unique(comp)]
    return canonical_coalitions([g for g in groups if g.size >= min_size])


def _noisy_partitions(n, r, rng, flip=0.2):
    base = rng.integers(0, 6, size=n)
    out = []
    for _ in range(r):
        lab = base.copy()
        moved = rng.random(n) < flip
        lab[moved] = rng.integers(0, 9, size=moved.sum())
        out.append(lab)
    return out


@pytest.mark.parametrize(("r", "threshold"), [(3, 0.8), (5, 0.8), (5, 0.6), (6, 1.0), (10, 0.7)])
def test_consensus_matches_dense_brute_force(r, threshold, monkeypatch):
    rng = np.random.default_rng(r)
    labels = _noisy_partitions(60, r, rng)
    want = _dense_consensus(labels, threshold, 2)
    assert st.consensus_coalitions(labels, threshold=threshold) == want
    monkeypatch.setattr(st, "_MAX_SUBSETS", 0)  # force the sparse pair-count route
    assert st.consensus_coalitions(labels, threshold=threshold) == want


def test_consensus_by_hand():
    # R = 5, threshold 0.8: a pair must share a coalition in 4 of the 5 partitions
    p = [
        [0, 0, 0, 1, 1, 2],
        [0, 0, 1, 1, 1, 2],
        [0, 0, 0, 1, 1, 2],
        [0, 0, 0, 1, 2, 2],
        [0, 0, 1, 1, 1, 2],
    ]
    labels = [np.array(x) for x in p]
    # 0-1: 5/5; 0-2, 1-2: 3/5; 3-4: 4/5; 4-5: 1/5; 2-3, 2-4: 2/5 -> groups {0,1}, {3,4}; 2 and 5 alone
    assert st.consensus_coalitions(labels) == [[0, 1], [3, 4]]
    assert st.consensus_coalitions(labels, min_size=1) == [[0, 1], [3, 4], [2], [5]]
    assert st.consensus_coalitions(labels, threshold=0.6) == [[0, 1, 2], [3, 4]]  # 3/5 links 2; 2/5 not
    assert st.co_assignment([[0, 1], [3, 4], [0, 1, 2]], labels) == pytest.approx(
        [1.0, 0.8, (5 + 3 + 3) / 15]
    )
    with pytest.raises(ConfigError, match="threshold="):
        st.consensus_coalitions(labels, threshold=1.5)


# ------------------------------------------------------------------------------ two_level_interval


def test_two_level_interval_matches_a_brute_force_loop():
    rng = np.random.default_rng(2)
    effects = rng.normal(size=(4, 15)) + rng.normal(size=(4, 1))
    res = st.two_level_interval(effects, n_boot=300, confidence=0.9, seed=7)
    # the same draws, one replicate at a time
    draw = np.random.default_rng(7)
    rows, cols = draw.integers(0, 4, size=(300, 4)), draw.integers(0, 15, size=(300, 15))
    reps = np.array([effects[np.ix_(rows[b], cols[b])].mean() for b in range(300)])
    assert res["mean"] == pytest.approx(effects.mean())
    assert (res["low"], res["high"]) == pytest.approx(tuple(np.quantile(reps, [0.05, 0.95])))
    assert res["boot_sd"] == pytest.approx(reps.std(ddof=1))
    assert res["sd_between_resamples"] == pytest.approx(effects.mean(axis=1).std(ddof=1))
    assert (res["n_resamples"], res["n_queries"], res["n_boot"]) == (4, 15, 300)


def test_two_level_bootstrap_variance_is_the_exact_one():
    # exact variance of the two-way bootstrap mean: row counts a ~ Mult(R, 1/R), column counts
    # b ~ Mult(Q, 1/Q), E[a a^T] = I - J/R + J, so E[(a^T E b)^2] = tr(M_a E M_b E^T)
    rng = np.random.default_rng(3)
    e = rng.normal(size=(5, 12)) * 0.5 + 2 * rng.normal(size=(5, 1)) + rng.normal(size=(1, 12))
    r, q = e.shape
    m_a = np.eye(r) - np.ones((r, r)) / r + np.ones((r, r))
    m_b = np.eye(q) - np.ones((q, q)) / q + np.ones((q, q))
    exact = np.trace(m_a @ e @ m_b @ e.T) / (r * q) ** 2 - e.mean() ** 2
    res = st.two_level_interval(e, n_boot=40000, seed=1)
    assert res["boot_sd"] ** 2 == pytest.approx(exact, rel=0.03)


def test_two_level_interval_widens_with_between_resample_variance():
    rng = np.random.default_rng(4)
    queries = rng.normal(size=(1, 40))
    offsets = rng.normal(size=(5, 1))
    offsets -= offsets.mean()
    widths = []
    for scale in (0.0, 0.5, 2.0):
        res = st.two_level_interval(queries + scale * offsets, seed=0)
        assert res["mean"] == pytest.approx(queries.mean())
        widths.append(res["high"] - res["low"])
    assert widths[0] < widths[1] < widths[2]
    # with no between-resample variance it is the one-level query bootstrap
    one = st.two_level_interval(queries, seed=0)
    assert widths[0] == pytest.approx(one["high"] - one["low"], rel=0.15)
    # a fixed φ (all resamples equal) plus a fixed test set is still an interval over queries
    assert st.two_level_interval(np.repeat(queries, 3, axis=0), seed=0)["high"] > queries.mean()


def test_two_level_interval_rejects_bad_input():
    with pytest.raises(DataError, match="at least 2 queries"):
        st.two_level_interval(np.ones((3, 1)))
    with pytest.raises(DataError, match="non-finite"):
        st.two_level_interval(np.array([[1.0, np.nan], [0.0, 1.0]]))
    with pytest.raises(HedonicError, match="confidence="):
        st.two_level_interval(np.ones((2, 3)), confidence=1.0)
