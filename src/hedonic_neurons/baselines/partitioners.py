"""Baseline partitioners, with the same estimator interface as the game's solvers.

Every partitioner is a :class:`~hedonic_neurons.partition.Partitioner` (a scikit-learn
clusterer): parameters in ``__init__`` (stored unchanged, validated by ``fit``); ``fit(X)``
returns ``self`` and sets ``coalitions_`` (sorted int lists covering 0..n-1 exactly once,
largest first, ties by smallest member: :func:`~hedonic_neurons.artifacts.canonical_coalitions`),
``labels_`` (``labels_[i]`` is the index of neuron i's coalition in ``coalitions_``),
``n_neurons_`` and ``partition_``. All randomness goes through ``random_state``; with an int the
result is deterministic. Each is registered in :data:`~hedonic_neurons.partition.PARTITIONERS`
under the name that is also its partitions' method name:

- ``random`` (:class:`RandomPartition`, requires sizes): random neurons in coalitions of given
  sizes (those of a reference partition).
- ``kmeans`` (:class:`SphericalKMeans`, requires rows): k-means on the L2-normalised rows of the
  input projection.
- ``hierarchical`` (:class:`Hierarchical`, requires profiles): average-linkage agglomerative
  clustering, cosine distance, on activation profiles (neurons x pooled examples).
- ``phi-communities`` (:class:`PhiCommunities`, requires phi): Louvain communities of the graph
  of positive phi (the baseline that sees the same information as the game).

The clustering itself is scikit-learn / scikit-network (or networkx); this module only validates
inputs, builds the sparse graph of positive phi (:func:`positive_partner_graph`) and turns cluster
labels into canonical coalitions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from hedonic_neurons.artifacts import validate_phi
from hedonic_neurons.baselines import DEFAULT_MAX_PARTNERS
from hedonic_neurons.errors import ConfigError, DataError, PhiError
from hedonic_neurons.partition import Partition, coalitions_from_labels
from hedonic_neurons.partitioner import PARTITIONERS, Partitioner

__all__ = [
    "BACKENDS",
    "DEFAULT_MAX_PARTNERS",
    "BasePartitioner",
    "Hierarchical",
    "PhiCommunities",
    "RandomPartition",
    "SphericalKMeans",
    "coalitions_from_labels",
    "positive_partner_graph",
]

#: The former name of :class:`~hedonic_neurons.partition.Partitioner`.
BasePartitioner = Partitioner


def _check_matrix(X: Any, name: str) -> np.ndarray:
    """``X`` as a finite 2-d float64 array with at least one row and one column."""
    try:
        arr = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{name} must be a numeric 2-d array (neurons x features)") from None
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DataError(f"{name} must be a non-empty 2-d array (neurons x features), got shape {arr.shape}")
    bad = ~np.isfinite(arr)
    if bad.any():
        i, j = map(int, np.argwhere(bad)[0])
        raise DataError(f"{name} has {int(bad.sum())} non-finite entries (first at [{i}, {j}])")
    return arr


def _n_clusters(n_clusters: int | None, n: int) -> int:
    """``n_clusters`` checked against 1..n; None gives ceil(sqrt(n)) (the public code's choice)."""
    k = math.ceil(math.sqrt(n)) if n_clusters is None else n_clusters
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
        raise ConfigError(f"n_clusters must be an integer in 1..{n} (the number of neurons), got {k!r}")
    return int(k)


class RandomPartition(Partitioner):
    """Random partition with given coalition sizes (the size-matched baseline).

    The sizes are ``like`` if given, else the ``X`` given to ``fit``; either is a list of sizes,
    a list of coalitions or a :class:`~hedonic_neurons.partition.Partition` (whose sizes are
    used). ``fit`` shuffles 0..n-1 with ``random_state`` and cuts the permutation into
    coalitions of those sizes (largest first). With ``like`` set, ``X`` is optional and only
    fixes n (it must have n = sum(sizes) rows).
    """

    requires = "sizes"

    def __init__(
        self, like: Sequence[int] | Sequence[Sequence[int]] | None = None, *, random_state: int | None = None
    ):
        self.like = like
        self.random_state = random_state

    @staticmethod
    def _sizes(like: Any) -> list[int]:
        if isinstance(like, Partition):
            return list(like.sizes)
        if isinstance(like, str | bytes) or not hasattr(like, "__iter__"):
            raise ConfigError(
                f"RandomPartition expects a list of sizes or a list of coalitions, got {type(like).__name__}"
            )
        items = list(like)
        if not items:
            raise ConfigError("RandomPartition needs at least one coalition size (got an empty partition)")
        if all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in items):
            sizes = [int(s) for s in items]
        elif all(isinstance(c, (Sequence, np.ndarray)) and not isinstance(c, str) for c in items):
            sizes = [len(c) for c in items]
        else:
            raise ConfigError("RandomPartition(like=...) expects a list of sizes or a list of coalitions")
        if min(sizes) < 1:
            raise ConfigError(f"coalition sizes must be >= 1, got {min(sizes)}")
        return sorted(sizes, reverse=True)

    def fit(self, X: Any = None, y: Any = None) -> RandomPartition:
        """Draw the partition: of the sizes ``like`` (``X``, optional, n rows, only checks n), or
        of the sizes ``X`` when ``like`` is None."""
        if self.like is None:
            if X is None:
                raise ConfigError("RandomPartition needs the coalition sizes: pass like=... or fit(sizes)")
            self.sizes_ = self._sizes(X)
            X = None
        else:
            self.sizes_ = self._sizes(self.like)
        n = sum(self.sizes_)
        if X is not None and len(X) != n:
            raise DataError(f"X has {len(X)} rows but the reference sizes cover {n} neurons")
        perm = np.random.default_rng(self.random_state).permutation(n)
        self._set_result(np.split(perm, np.cumsum(self.sizes_)[:-1]), n)
        return self


class SphericalKMeans(Partitioner):
    """k-means on the L2-normalised rows of the input projection (gate rows of gated MLPs).

    Approximation, stated: scikit-learn has no spherical k-means, so this is Euclidean k-means
    (``sklearn.cluster.KMeans``, Lloyd, ``init="random"`` = k distinct random rows as in the
    public code, ``n_init=1``, at most ``n_iter`` iterations) on unit vectors. For unit vectors
    ``|x - c|^2 = 1 - 2 x.c + |c|^2``, so the assignment differs from true spherical k-means
    (argmax of cosine to the normalised centre) only through the per-cluster ``|c|^2`` term.
    ``cluster_centers_`` are the centres re-normalised to unit length. Rows of zero norm stay
    zero and go to whichever centre is nearest to the origin.

    ``n_clusters=None`` gives ceil(sqrt(n)). A cluster that ends empty is not a coalition, so
    ``len(coalitions_)`` can be below ``n_clusters`` (only with duplicate rows).
    """

    requires = "rows"

    def __init__(self, n_clusters: int | None = None, *, n_iter: int = 25, random_state: int | None = None):
        self.n_clusters = n_clusters
        self.n_iter = n_iter
        self.random_state = random_state

    def fit(self, X: Any, y: Any = None) -> SphericalKMeans:
        """Cluster the rows of ``X`` (n neurons x d_model)."""
        from sklearn.cluster import KMeans

        arr = _check_matrix(X, "X (input-projection rows)")
        k = _n_clusters(self.n_clusters, arr.shape[0])
        if isinstance(self.n_iter, bool) or not isinstance(self.n_iter, int | np.integer) or self.n_iter < 1:
            raise ConfigError(f"n_iter must be a positive integer, got {self.n_iter!r}")
        norms = np.linalg.norm(arr, axis=1, keepdims=True)
        unit = arr / np.where(norms > 0, norms, 1.0)
        km = KMeans(k, init="random", n_init=1, max_iter=self.n_iter, tol=0.0, random_state=self.random_state)
        labels = km.fit_predict(unit)
        centres = km.cluster_centers_
        cnorm = np.linalg.norm(centres, axis=1, keepdims=True)
        self.cluster_centers_ = centres / np.where(cnorm > 0, cnorm, 1.0)
        self.n_iter_ = int(km.n_iter_)
        self._set_result(coalitions_from_labels(labels), arr.shape[0])
        return self


class Hierarchical(Partitioner):
    """Agglomerative clustering of activation profiles (neurons x pooled examples).

    Average linkage on cosine distance (scikit-learn ``AgglomerativeClustering`` on a
    precomputed distance matrix), cut at ``n_clusters`` (None: ceil(sqrt(n)), the k-means
    default, so both clusterings have the same number of clusters). The distances come from
    ``sklearn.metrics.pairwise.cosine_distances``, which treats an all-zero profile (a dead
    neuron) as orthogonal to everything (distance 1) instead of producing NaN. Cosine distance
    does not centre the profiles, so constant non-zero profiles are fine. Deterministic;
    ``random_state`` is accepted for the common interface and not used. Memory is O(n^2).
    """

    requires = "profiles"
    deterministic = True
    linkage = "average"
    metric = "cosine"

    def __init__(self, n_clusters: int | None = None, *, random_state: int | None = None):
        self.n_clusters = n_clusters
        self.random_state = random_state

    def diagnostics(self) -> dict[str, Any]:
        """``{"linkage": "average", "metric": "cosine"}`` for the partition file."""
        return {"linkage": self.linkage, "metric": self.metric}

    def fit(self, X: Any, y: Any = None) -> Hierarchical:
        """Cluster the rows of ``X`` (n neurons x m pooled examples)."""
        from sklearn.cluster import AgglomerativeClustering
        from sklearn.metrics.pairwise import cosine_distances

        arr = _check_matrix(X, "X (activation profiles)")
        n = arr.shape[0]
        k = _n_clusters(self.n_clusters, n)
        if n == 1:
            self._set_result([[0]], 1)
            return self
        dist = np.clip(cosine_distances(arr), 0.0, 2.0)
        np.fill_diagonal(dist, 0.0)
        dist = 0.5 * (dist + dist.T)
        labels = AgglomerativeClustering(k, metric="precomputed", linkage=self.linkage).fit_predict(dist)
        self._set_result(coalitions_from_labels(labels), n)
        return self


_BLOCK_BYTES = 1 << 25  # ~32 MiB of argpartition indices per row block


def _check_max_partners(max_partners: Any) -> int | None:
    """``max_partners`` as a positive int, or None (keep every positive edge)."""
    m = max_partners
    if m is None:
        return None
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1:
        raise ConfigError(
            f"max_partners must be a positive integer (strongest positive partners kept per neuron) "
            f"or None (every positive edge), got {m!r}"
        )
    return int(m)


def positive_partner_graph(phi: Any, max_partners: int | None = DEFAULT_MAX_PARTNERS) -> Any:
    """The sparse graph of positive phi that :class:`PhiCommunities` partitions.

    Each neuron keeps its ``max_partners`` strongest positive partners (largest phi_ij > 0; a
    neuron with fewer positive partners keeps all of them, one with none is isolated); an edge
    (i, j) is in the graph if i keeps j or j keeps i (a k-nearest-positive-partner graph, the
    union of both directions), weighted phi_ij. ``max_partners=None`` (or >= n - 1) keeps every
    positive edge. Ties at the cut are broken arbitrarily (``numpy.argpartition``).

    ``phi`` is a dense n x n matrix (validated by :func:`~hedonic_neurons.artifacts.validate_phi`);
    it is read in blocks of rows with ``argpartition``, so apart from phi itself nothing of size
    n x n is allocated (about 32 MiB of work space, plus O(n * max_partners) for the graph).
    Returns a symmetric ``scipy.sparse.csr_array`` (n x n, phi's float dtype, sorted indices,
    no diagonal, only positive stored values). Build it once per phi and pass it to
    ``PhiCommunities.fit`` for each seed: :meth:`PhiCommunities.graph` does this with the
    estimator's own ``max_partners``.
    """
    import scipy.sparse as sp

    m = _check_max_partners(max_partners)
    mat = validate_phi(phi)
    n = mat.shape[0]
    step = max(1, _BLOCK_BYTES // (8 * n))
    if m is None or m >= n - 1:
        return _all_positive_edges(mat, step)
    rows, cols, vals = [], [], []
    for r0 in range(0, n, step):
        blk = mat[r0 : r0 + step]
        top = np.argpartition(blk, n - m, axis=1)[:, n - m :]  # the m largest of each row
        v = np.take_along_axis(blk, top, axis=1)
        keep = v > 0  # the zero diagonal and non-positive phi never make an edge
        rows.append((np.nonzero(keep)[0] + r0).astype(np.int32))
        cols.append(top[keep].astype(np.int32))
        vals.append(v[keep])
    kept = sp.csr_array(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n), dtype=mat.dtype
    )
    graph = sp.csr_array(kept.maximum(kept.T))  # symmetric phi: the union keeps the weight phi_ij
    graph.sort_indices()
    return graph


def _all_positive_edges(mat: np.ndarray, step: int) -> Any:
    """Every phi_ij > 0 as a csr_array, in two passes over row blocks (count, then fill)."""
    import scipy.sparse as sp

    n = mat.shape[0]
    counts = np.concatenate([np.count_nonzero(mat[r0 : r0 + step] > 0, axis=1) for r0 in range(0, n, step)])
    nnz = int(counts.sum())
    idx = np.int32 if nnz < np.iinfo(np.int32).max else np.int64
    indptr = np.zeros(n + 1, dtype=idx)
    np.cumsum(counts, out=indptr[1:])
    indices = np.empty(nnz, dtype=idx)
    data = np.empty(nnz, dtype=mat.dtype)
    for r0 in range(0, n, step):
        blk = mat[r0 : r0 + step]
        r, c = np.nonzero(blk > 0)  # row-major: each row's columns come out sorted
        lo, hi = indptr[r0], indptr[min(r0 + step, n)]
        indices[lo:hi] = c
        data[lo:hi] = blk[r, c]
    return sp.csr_array((data, indices, indptr), shape=(n, n))


def _check_graph(graph: Any) -> Any:
    """A prebuilt sparse graph, checked: square, symmetric, finite, positive, no self-loops."""
    g = graph.tocsr(copy=True)
    g.sum_duplicates()
    g.eliminate_zeros()
    if g.ndim != 2 or g.shape[0] != g.shape[1] or g.shape[0] == 0:
        raise PhiError(f"the phi graph must be a non-empty square n x n sparse matrix, got shape {g.shape}")
    if g.nnz:
        if not np.isfinite(g.data).all():
            raise PhiError("the phi graph has non-finite weights")
        if g.data.min() <= 0:
            raise PhiError(
                f"the phi graph has a non-positive weight ({g.data.min():g}); it must hold only phi_ij > 0 "
                "(build it with positive_partner_graph)"
            )
        if g.diagonal().any():
            raise PhiError("the phi graph has self-loops (non-zero diagonal)")
        if (g != g.T).nnz:
            raise PhiError("the phi graph is not symmetric (build it with positive_partner_graph)")
    return g


_TOL = 1e-7  # scikit-network's modularity tolerances (its default 1e-3 stops early); networkx uses 1e-7
BACKENDS = ("sknetwork", "networkx")
"""Louvain implementations :class:`PhiCommunities` can use (``backend=``)."""


class PhiCommunities(Partitioner):
    """Louvain communities of the weighted graph of positive phi.

    Nodes are the n neurons; edges come from :func:`positive_partner_graph`: each neuron keeps
    its ``max_partners`` strongest positive partners (an edge stays if either end keeps it),
    weight phi_ij; None keeps every positive edge. Neurons without a positive partner are
    singleton communities. Louvain maximises weighted modularity at ``resolution``, visiting the
    nodes in an order shuffled by ``random_state``:

    - ``backend="sknetwork"`` (default): ``sknetwork.clustering.Louvain(modularity="newman",
      shuffle_nodes=True)`` (scikit-network, compiled, works on the sparse matrix directly);
    - ``backend="networkx"``: ``networkx.community.louvain_communities(weight="weight",
      seed=random_state)``, pure Python, 12-17 x slower; it reproduces the partitions of earlier
      versions (which always used networkx) exactly, for the same graph and seed.

    ``fit`` takes either the dense phi (n x n) or the sparse graph built from it
    (``est.graph(phi)``, i.e. ``positive_partner_graph(phi, est.max_partners)``): with several
    seeds, build the graph once and fit it for each seed. A prebuilt graph is used as it is
    (``max_partners`` only applies when ``fit`` gets a dense phi); for the same graph and seed
    both give the same partition. ``n_edges_`` is the number of undirected edges used.

    Default ``max_partners`` = 512 (``DEFAULT_MAX_PARTNERS``), by measurement
    (``python benchmarks/bench_baselines.py --ari PHI...``) on real MiniLM layer-3 phi (n = 1,536,
    256 MS MARCO dev pairs; OCA, and PAS taylor with zero ablation). Reference: networkx Louvain on
    every positive edge, seeds 0-4; its own seed-to-seed ARI is the yardstick of "unchanged".
    Rows: this class (scikit-network), seeds 0-9; ARI to ref is the mean over all (seed, ref seed)
    pairs; Q is the modularity on the full positive graph::

        phi  max_partners  edges    communities  ARI to ref  seed-to-seed  Q on full
        OCA  all (ref)     581,060  4.6          -           0.771         0.2425
        OCA  all           581,060  4.7          0.808       0.792         0.2421
        OCA  16             19,882  8.3          0.354       0.667         0.1865
        OCA  64             72,616  5.3          0.571       0.831         0.2285
        OCA  256           251,855  5.0          0.733       0.979         0.2395
        OCA  512           451,916  4.9          0.814       0.844         0.2412
        PAS  all (ref)     578,336  17.0         -           1.000         0.0356
        PAS  all           578,336  17           1.000       1.000         0.0356
        PAS  16             23,276  17.0         0.698       0.995         0.0314
        PAS  64             86,253  17.0         0.771       0.992         0.0343
        PAS  256           286,619  17.0         0.935       0.995         0.0355
        PAS  512           477,449  17.0         0.995       0.999         0.0356

    (PAS: 2 communities plus 15 neurons without any positive partner.) So a few partners
    (4-64; m = 4 and 8 are worse still) do change the communities of a real phi: finer ones on
    OCA, a moved boundary on PAS, and lower full-graph modularity; only from m ~ 384-512 is the
    partition as close to the full-graph one as two full-graph seeds are to each other.
    networkx with the same kNN graphs gives the same picture (ARI 0.58 / 0.77 at m = 64 and
    0.74 / 0.93 at m = 256, OCA / PAS, 5 seeds). At n = 14,336 (synthetic phi with
    planted groups, ``python benchmarks/bench_baselines.py``) m = 512 gives 3.8 M edges: graph
    3-7 s, Louvain 7-12 s with scikit-network on a busy 2-core machine, peak RSS 1.45 GiB with
    phi (784 MiB) included, whereas every positive edge (51.7 M edges) takes 52-90 s and 8 GiB; there,
    every m from 16 to 1024 agrees with the full graph (ARI 0.60-0.66) as well as full-graph
    seeds agree with each other (0.60). scikit-network is the default backend because networkx
    needs 179 s and 3.6 GiB for that graph (and 5-17 s for the full MiniLM graph, against
    0.3-1.0 s).
    """

    requires = "phi"

    def __init__(
        self,
        resolution: float = 1.0,
        *,
        max_partners: int | None = DEFAULT_MAX_PARTNERS,
        backend: str = "sknetwork",
        random_state: int | None = None,
    ):
        self.resolution = resolution
        self.max_partners = max_partners
        self.backend = backend
        self.random_state = random_state

    def graph(self, phi: Any) -> Any:
        """``positive_partner_graph(phi, self.max_partners)``: build it once, ``fit`` it per seed."""
        return positive_partner_graph(phi, self.max_partners)

    def prepare(self, X: Any) -> Any:
        """The sparse graph of a dense phi (built once, then clustered for each seed)."""
        import scipy.sparse as sp

        return X if sp.issparse(X) else self.graph(X)

    def diagnostics(self) -> dict[str, Any]:
        """``{"edges": n_edges_}`` for the partition file."""
        return {"edges": self.n_edges_}

    def fit(self, phi: Any, y: Any = None) -> PhiCommunities:
        """Partition the neurons of ``phi``: a dense n x n phi or its sparse graph (see the class)."""
        import scipy.sparse as sp

        _check_max_partners(self.max_partners)
        if not self.resolution > 0:
            raise ConfigError(f"resolution must be > 0, got {self.resolution!r}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        graph = _check_graph(phi) if sp.issparse(phi) else self.graph(phi)
        n = graph.shape[0]
        self.n_edges_ = int(graph.nnz // 2)
        if graph.nnz == 0:
            labels = np.arange(n)
        elif self.backend == "sknetwork":
            labels = self._sknetwork(graph)
        else:
            labels = self._networkx(graph)
        self._set_result(coalitions_from_labels(labels), n)
        return self

    def _sknetwork(self, graph: Any) -> np.ndarray:
        import scipy.sparse as sp
        from sknetwork.clustering import Louvain

        louvain = Louvain(
            resolution=self.resolution,
            modularity="newman",
            shuffle_nodes=True,
            tol_optimization=_TOL,
            tol_aggregation=_TOL,
            random_state=self.random_state,
            return_probs=False,
            return_aggregate=False,
        )
        # float64 on purpose: scikit-network turns a graph of any other dtype into integer weights
        return np.asarray(louvain.fit_predict(sp.csr_matrix(graph, dtype=np.float64)))

    def _networkx(self, graph: Any) -> np.ndarray:
        import networkx as nx

        n = graph.shape[0]
        coo = graph.tocoo()  # sorted csr, so row-major: the edge order of np.nonzero(np.triu(phi > 0))
        upper = coo.col > coo.row
        nxg = nx.Graph()
        nxg.add_nodes_from(range(n))
        nxg.add_weighted_edges_from(
            zip(coo.row[upper].tolist(), coo.col[upper].tolist(), coo.data[upper].tolist())
        )
        communities = nx.community.louvain_communities(
            nxg, weight="weight", resolution=self.resolution, seed=self.random_state
        )
        labels = np.empty(n, dtype=np.int64)
        for k, members in enumerate(communities):
            labels[list(members)] = k
        return labels


PARTITIONERS.add("random", RandomPartition)
PARTITIONERS.add("kmeans", SphericalKMeans)
PARTITIONERS.add("hierarchical", Hierarchical)
PARTITIONERS.add("phi-communities", PhiCommunities)

# a fixed partition read from a file (a partition JSON or a plant ground truth): baselines/given.py
from hedonic_neurons.baselines.given import GivenPartition  # noqa: E402

PARTITIONERS.add("given", GivenPartition)
