import math

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from sklearn.metrics import adjusted_rand_score

from hedonic_neurons.artifacts import canonical_coalitions
from hedonic_neurons.baselines.partitioners import PhiCommunities
from hedonic_neurons.errors import ConfigError, DataError
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
