"""Baseline partitioners (method A14, Part B §9.5), with the same estimator interface as the game.

Every partitioner takes its parameters in ``__init__``; ``fit(...)`` returns ``self`` and sets
``coalitions_`` (sorted int lists covering 0..n-1 exactly once, largest first, ties by smallest
member: :func:`~hedonic_neurons.artifacts.canonical_coalitions`), ``labels_`` (``labels_[i]`` is the
index of neuron i's coalition in ``coalitions_``) and ``n_neurons_``. All randomness goes through
``random_state``; with an int the result is deterministic.

- :class:`RandomPartition`: random neurons in coalitions of the sizes of a given partition.
- :class:`SphericalKMeans`: k-means on the L2-normalised rows of the input projection.
- :class:`Hierarchical`: average-linkage agglomerative clustering, cosine distance, on activation
  profiles (neurons x pooled examples).
- :class:`PhiCommunities`: Louvain communities of the graph of positive phi (the baseline that
  sees the same information as the game).

The clustering itself is scikit-learn / networkx; this module only validates inputs and turns
cluster labels into canonical coalitions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from hedonic_neurons.artifacts import canonical_coalitions, labels_from_coalitions, validate_phi
from hedonic_neurons.errors import ConfigError, DataError

__all__ = [
    "BasePartitioner",
    "Hierarchical",
    "PhiCommunities",
    "RandomPartition",
    "SphericalKMeans",
    "coalitions_from_labels",
]


def coalitions_from_labels(labels: Sequence[int] | np.ndarray) -> list[list[int]]:
    """Group neuron indices by cluster label into canonical coalitions (empty labels vanish)."""
    labels = np.asarray(labels)
    order = np.argsort(labels, kind="stable")
    _, starts = np.unique(labels[order], return_index=True)
    return canonical_coalitions(np.split(order, starts[1:]))


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


class BasePartitioner:
    """Shared result handling: ``coalitions_``, ``labels_``, ``n_neurons_`` and ``get_params``."""

    random_state: int | None
    coalitions_: list[list[int]]
    labels_: np.ndarray
    n_neurons_: int

    def _set_result(self, coalitions: Sequence[Sequence[int]], n: int) -> None:
        self.coalitions_ = canonical_coalitions(coalitions)
        self.labels_ = labels_from_coalitions(self.coalitions_, n)
        self.n_neurons_ = n

    def get_params(self) -> dict[str, Any]:
        """The constructor parameters (JSON-safe), as written into the partition file."""
        return {k: v for k, v in vars(self).items() if not k.endswith("_") and not k.startswith("_")}


class RandomPartition(BasePartitioner):
    """Random partition with the coalition sizes of a reference partition (size-matched baseline).

    ``like`` is either the list of sizes or a partition (a list of coalitions, whose sizes are
    used). ``fit(X=None)`` shuffles 0..n-1 with ``random_state`` and cuts the permutation into
    coalitions of those sizes; ``X``, if given, only fixes n (it must have n = sum(sizes) rows).
    """

    def __init__(self, like: Sequence[int] | Sequence[Sequence[int]], *, random_state: int | None = None):
        self.sizes = self._sizes(like)
        self.random_state = random_state

    @staticmethod
    def _sizes(like: Any) -> list[int]:
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

    def fit(self, X: Any = None) -> RandomPartition:
        """Draw the partition; ``X`` (optional, n rows) only checks that n matches the sizes."""
        n = sum(self.sizes)
        if X is not None and len(X) != n:
            raise DataError(f"X has {len(X)} rows but the reference sizes cover {n} neurons")
        perm = np.random.default_rng(self.random_state).permutation(n)
        self._set_result(np.split(perm, np.cumsum(self.sizes)[:-1]), n)
        return self


class SphericalKMeans(BasePartitioner):
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

    def __init__(self, n_clusters: int | None = None, *, n_iter: int = 25, random_state: int | None = None):
        self.n_clusters = n_clusters
        self.n_iter = n_iter
        self.random_state = random_state

    def fit(self, X: Any) -> SphericalKMeans:
        """Cluster the rows of ``X`` (n neurons x d_model)."""
        from sklearn.cluster import KMeans

        arr = _check_matrix(X, "X (input-projection rows)")
        k = _n_clusters(self.n_clusters, arr.shape[0])
        if not isinstance(self.n_iter, int) or self.n_iter < 1:
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


class Hierarchical(BasePartitioner):
    """Agglomerative clustering of activation profiles (neurons x pooled examples).

    Average linkage on cosine distance (scikit-learn ``AgglomerativeClustering`` on a
    precomputed distance matrix), cut at ``n_clusters`` (None: ceil(sqrt(n)), the k-means
    default, so both clusterings have the same number of clusters). The distances come from
    ``sklearn.metrics.pairwise.cosine_distances``, which treats an all-zero profile (a dead
    neuron) as orthogonal to everything (distance 1) instead of producing NaN. Cosine distance
    does not centre the profiles, so constant non-zero profiles are fine. Deterministic;
    ``random_state`` is accepted for the common interface and not used. Memory is O(n^2).
    """

    def __init__(self, n_clusters: int | None = None, *, random_state: int | None = None):
        self.n_clusters = n_clusters
        self.linkage = "average"
        self.metric = "cosine"
        self.random_state = random_state

    def fit(self, X: Any) -> Hierarchical:
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


class PhiCommunities(BasePartitioner):
    """Louvain communities of the weighted graph of positive phi (networkx).

    Nodes are the n neurons; an edge (i, j) with weight phi_ij for every phi_ij > 0. Neurons
    without a positive partner are singleton communities. ``max_partners`` (optional) keeps for
    each neuron only its strongest positive partners (an edge stays if either end keeps it), to
    bound the graph size on wide layers; None keeps every positive edge.
    ``networkx.community.louvain_communities(weight="weight", resolution=..., seed=random_state)``.
    """

    def __init__(
        self, resolution: float = 1.0, *, max_partners: int | None = None, random_state: int | None = None
    ):
        self.resolution = resolution
        self.max_partners = max_partners
        self.random_state = random_state

    def _edges(self, phi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pos = np.where(phi > 0, phi, 0.0)
        if self.max_partners is not None:
            m = self.max_partners
            if not isinstance(m, int) or m < 1:
                raise ConfigError(f"max_partners must be a positive integer or None, got {m!r}")
            if m < pos.shape[0] - 1:
                top = np.argpartition(-pos, m - 1, axis=1)[:, :m]
                keep = np.zeros_like(pos, dtype=bool)
                np.put_along_axis(keep, top, True, axis=1)
                pos = np.where(keep | keep.T, pos, 0.0)
        i, j = np.nonzero(np.triu(pos, k=1))
        return np.stack([i, j], axis=1), pos[i, j]

    def fit(self, phi: Any) -> PhiCommunities:
        """Partition the neurons of ``phi`` (n x n, validated by ``artifacts.validate_phi``)."""
        import networkx as nx

        mat = validate_phi(phi)
        if not self.resolution > 0:
            raise ConfigError(f"resolution must be > 0, got {self.resolution!r}")
        n = mat.shape[0]
        edges, weights = self._edges(mat)
        graph = nx.Graph()
        graph.add_nodes_from(range(n))
        graph.add_weighted_edges_from(zip(edges[:, 0].tolist(), edges[:, 1].tolist(), weights.tolist()))
        self.n_edges_ = len(weights)
        communities = nx.community.louvain_communities(
            graph, weight="weight", resolution=self.resolution, seed=self.random_state
        )
        self._set_result([sorted(c) for c in communities], n)
        return self
