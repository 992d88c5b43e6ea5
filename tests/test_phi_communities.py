"""PhiCommunities on the sparse k-nearest-positive-partner graph (positive_partner_graph)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.metrics import adjusted_rand_score

from hedonic_neurons.baselines import PhiCommunities
from hedonic_neurons.baselines import partitioners as P
from hedonic_neurons.baselines.partitioners import DEFAULT_MAX_PARTNERS, positive_partner_graph
from hedonic_neurons.errors import ConfigError, PhiError

BACKENDS = ["sknetwork", "networkx"]


def random_phi(n: int, seed: int, dtype=np.float32, p_zero: float = 0.0) -> np.ndarray:
    """Exactly symmetric random phi, zero diagonal; a fraction ``p_zero`` of pairs set to 0."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, n)) - 0.2  # a bit more negative than positive
    a[rng.random((n, n)) < p_zero] = 0.0
    a = np.triu(a, 1)
    return (a + a.T).astype(dtype)


def brute_force(phi: np.ndarray, m: int | None) -> np.ndarray:
    """Dense reference: neuron i keeps its m largest phi_ij > 0 (j != i); edge if either end keeps it."""
    n = phi.shape[0]
    keep = np.zeros((n, n), dtype=bool)
    for i in range(n):
        partners = [j for j in np.argsort(-phi[i], kind="stable") if j != i and phi[i, j] > 0]
        keep[i, partners if m is None else partners[:m]] = True
    return np.where(keep | keep.T, phi, 0).astype(phi.dtype)


def planted(sizes: list[int], seed: int, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Blocks of phi ~ N(1, 0.3^2) inside a group and N(0, 0.3^2) between groups (half of those > 0)."""
    rng = np.random.default_rng(seed)
    truth = rng.permutation(np.repeat(np.arange(len(sizes)), sizes))
    n = truth.size
    a = np.triu((truth[:, None] == truth[None, :]) + 0.3 * rng.normal(size=(n, n)), 1)
    return (scale * (a + a.T)).astype(np.float32), truth


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("n", "p_zero"), [(1, 0.0), (2, 0.0), (3, 0.0), (9, 0.3), (40, 0.0), (61, 0.5)])
def test_graph_equals_brute_force(monkeypatch, n, p_zero, dtype):
    # tiny row blocks (2 rows), so that every block boundary and the last partial block are exercised
    monkeypatch.setattr(P, "_BLOCK_BYTES", 8 * n * 2)
    phi = random_phi(n, seed=n, dtype=dtype, p_zero=p_zero)
    if n > 4:
        phi[3, :] = phi[:, 3] = -1.0  # a neuron without any positive partner
        phi[3, 3] = 0.0
    for m in [1, 2, 3, 5, n - 2, n - 1, n + 4, None]:
        if m is not None and m < 1:
            continue
        graph = positive_partner_graph(phi, m)
        ref = brute_force(phi, m)
        assert isinstance(graph, sp.csr_array) and graph.shape == (n, n)
        assert graph.dtype == phi.dtype and graph.has_sorted_indices
        np.testing.assert_array_equal(graph.toarray(), ref)  # same edges, same weights phi_ij
        assert (graph.data > 0).all() and not graph.diagonal().any()
        degree = np.count_nonzero(graph.toarray(), axis=1)
        n_positive = np.count_nonzero(phi > 0, axis=1)
        assert (degree >= np.minimum(n_positive, n if m is None else m)).all()  # union: may exceed m
        if n > 4:
            assert degree[3] == 0


def test_graph_of_wide_phi_keeps_m_strongest_and_is_symmetric():
    phi = random_phi(300, seed=1)
    graph = positive_partner_graph(phi, 7)
    assert (graph != graph.T).nnz == 0
    dense = graph.toarray()
    for i in range(0, 300, 37):  # row i holds its 7 strongest positive partners, maybe more via others
        top7 = np.argsort(-phi[i])[:7]
        assert (dense[i, top7] == phi[i, top7]).all()
        assert np.count_nonzero(dense[i]) >= 7
    np.testing.assert_array_equal(positive_partner_graph(phi, None).toarray(), np.where(phi > 0, phi, 0))
    np.testing.assert_array_equal(positive_partner_graph(phi, 299).toarray(), np.where(phi > 0, phi, 0))


@pytest.mark.parametrize("m", [8, None])
def test_graph_builds_no_dense_temporary(monkeypatch, m):
    n = 1500
    phi = random_phi(n, seed=2, dtype=np.float64)  # 18 MB; a dense bool n x n temporary would be 2.25 MB
    monkeypatch.setattr(P, "_BLOCK_BYTES", 1 << 18)  # 256 KiB blocks (21 rows)
    positive_partner_graph(phi, m)  # warm-up (imports)
    tracemalloc.start()
    graph = positive_partner_graph(phi, m)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    out = graph.data.nbytes + graph.indices.nbytes + graph.indptr.nbytes
    assert peak - out < phi.nbytes / 16, (peak, out)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("m", [DEFAULT_MAX_PARTNERS, 4, None])
def test_fit_on_graph_equals_fit_on_phi(backend, m):
    phi = random_phi(120, seed=3)  # no structure: Louvain's partition depends on the seed
    est = PhiCommunities(max_partners=m, backend=backend)
    graph = est.graph(phi)
    np.testing.assert_array_equal(graph.toarray(), positive_partner_graph(phi, m).toarray())
    partitions = set()
    for seed in range(4):
        a = PhiCommunities(max_partners=m, backend=backend, random_state=seed).fit(phi)
        b = PhiCommunities(max_partners=m, backend=backend, random_state=seed).fit(graph)
        assert a.coalitions_ == b.coalitions_
        assert a.labels_.tolist() == b.labels_.tolist()
        assert a.n_edges_ == b.n_edges_ == graph.nnz // 2
        partitions.add(str(a.coalitions_))
    assert len(partitions) > 1  # so the seed really reaches Louvain on both paths
    # a prebuilt graph is used as it is, whatever max_partners the estimator has
    other = PhiCommunities(max_partners=2, backend=backend, random_state=0).fit(graph)
    assert other.n_edges_ == graph.nnz // 2
    assert (
        other.coalitions_
        == PhiCommunities(max_partners=m, backend=backend, random_state=0).fit(phi).coalitions_
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_planted_blocks_recovered_from_knn_graph(backend):
    sizes = [40, 32, 27, 21, 16, 12, 8]
    for seed, scale in [(5, 1.0), (6, 1e-6)]:  # tiny weights (like PAS phi) must work as well
        phi, truth = planted(sizes, seed=seed, scale=scale)
        full = positive_partner_graph(phi, None)
        graph = positive_partner_graph(phi, 5)
        assert graph.nnz < full.nnz / 5  # much sparser than every positive edge (half the noise is > 0)
        for rs in range(3):
            est = PhiCommunities(max_partners=5, backend=backend, random_state=rs).fit(graph)
            assert adjusted_rand_score(truth, est.labels_) == 1.0
            assert sorted(len(c) for c in est.coalitions_) == sorted(sizes)
    # a neuron without any positive partner stays alone
    phi[0, :] = phi[:, 0] = -1.0
    phi[0, 0] = 0.0
    assert [0] in PhiCommunities(max_partners=5, backend=backend, random_state=0).fit(phi).coalitions_


@pytest.mark.parametrize("backend", BACKENDS)
def test_tiny_and_empty_graphs(backend):
    assert PhiCommunities(backend=backend).fit(np.zeros((1, 1))).coalitions_ == [[0]]
    est = PhiCommunities(backend=backend).fit(-np.ones((4, 4)) + np.eye(4))  # no positive edge
    assert est.coalitions_ == [[0], [1], [2], [3]] and est.n_edges_ == 0


@pytest.mark.parametrize("bad", [0, -1, -8, 2.5, 3.0, "8", True, np.float64(4)])
def test_bad_max_partners_is_config_error(bad):
    phi = random_phi(10, seed=7)
    graph = positive_partner_graph(phi, 3)
    with pytest.raises(ConfigError, match="max_partners"):
        positive_partner_graph(phi, bad)
    with pytest.raises(ConfigError, match="max_partners"):
        PhiCommunities(max_partners=bad).fit(phi)
    with pytest.raises(ConfigError, match="max_partners"):
        PhiCommunities(max_partners=bad).fit(graph)  # checked even when the graph is prebuilt
    with pytest.raises(ConfigError, match="max_partners"):
        PhiCommunities(max_partners=bad).graph(phi)


def test_other_bad_inputs():
    phi = random_phi(10, seed=8)
    graph = positive_partner_graph(phi, 3)
    assert positive_partner_graph(phi, np.int64(3)).nnz == graph.nnz  # numpy integers are fine
    with pytest.raises(ConfigError, match="backend"):
        PhiCommunities(backend="igraph").fit(graph)
    with pytest.raises(ConfigError, match="resolution"):
        PhiCommunities(resolution=-1.0).fit(graph)
    with pytest.raises(PhiError, match="symmetric"):
        positive_partner_graph(np.triu(phi), 3)
    asym = graph.tolil()
    asym[0, 9] = 5.0
    with pytest.raises(PhiError, match="symmetric"):
        PhiCommunities().fit(asym.tocsr())
    with pytest.raises(PhiError, match="non-positive"):
        PhiCommunities().fit(-graph)
    with pytest.raises(PhiError, match="self-loops"):
        PhiCommunities().fit(graph + sp.eye_array(10, format="csr"))
    with pytest.raises(PhiError, match="square"):
        PhiCommunities().fit(sp.csr_array(np.ones((3, 4))))


def test_default_and_params():
    est = PhiCommunities(random_state=1)
    assert est.max_partners == DEFAULT_MAX_PARTNERS == 512
    assert est.get_params() == {
        "resolution": 1.0,
        "max_partners": 512,
        "backend": "sknetwork",
        "random_state": 1,
    }
