"""How much a partition depends on the inputs its φ was estimated on, and intervals that say so.

A partition is fitted to one φ matrix, and φ is an estimate from a finite set of inputs. With the
test set and the φ data fixed, every figure computed from one partition has no interval at all
(a deterministic solver such as Top Covering gives the same partition every time). This module
makes the φ data a source of variation:

- :func:`split_inputs`: R disjoint (or bootstrap) subsets of the n φ inputs, seeded; estimate one
  φ on each (the caller does: φ estimation needs the model).
- :func:`resample_partitions`: fit a fresh copy of a partitioner on each of the R φ matrices.
- :func:`stability`: pairwise adjusted Rand index between the R partitions (mean and range);
  :func:`stability_by_method` does it for several methods at once.
- :func:`consensus_coalitions`: groups of neurons that are in the same coalition in at least a
  ``threshold`` fraction of the resamples (connected components of the thresholded
  co-assignment graph), built without any n x n matrix; :func:`co_assignment` is the mean
  co-assignment rate inside given groups.

The interval of each figure over (φ resample, query) is built where the figures are, in
:mod:`hedonic_neurons.evaluate.resample` (from :func:`hedonic_neurons.evaluate.stats.mixture_interval`).

Everything returns plain Python floats, ints and lists (JSON-ready).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from itertools import combinations
from typing import Any

import numpy as np

from hedonic_neurons.artifacts import canonical_coalitions, labels_from_coalitions
from hedonic_neurons.errors import ConfigError, DataError, arg

__all__ = [
    "MIN_RESAMPLES",
    "co_assignment",
    "consensus_coalitions",
    "resample_partitions",
    "split_inputs",
    "stability",
    "stability_by_method",
]

MIN_RESAMPLES = 3
"""Fewest φ resamples :func:`resample_partitions` and :func:`stability` accept (three pairs of
partitions: the fewest for which a spread of pairwise agreement means anything)."""

_MAX_SUBSETS = 512  # above this many t-subsets of the R resamples, consensus counts pairs instead


def _int(value: Any, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ConfigError(f"{arg(name)} must be an integer >= {low}, got {value!r}")
    return int(value)


# ------------------------------------------------------------------------------ input subsets


def split_inputs(n: int, parts: int, seed: int, *, bootstrap: bool = False) -> list[np.ndarray]:
    """``parts`` subsets of the input indices 0..n-1 to estimate one φ on each.

    Disjoint (default): a permutation drawn with ``numpy.random.default_rng(seed)`` cut into
    ``parts`` pieces whose sizes differ by at most one, so no input is in two subsets.
    ``bootstrap=True``: each subset is n indices drawn with replacement (independent draws from
    the same generator). Each subset is returned sorted (int64). The same (n, parts, seed,
    bootstrap) always gives the same subsets.
    """
    n = _int(n, "n", 1)
    parts = _int(parts, "parts", 2)
    seed = _int(seed, "seed", 0)
    rng = np.random.default_rng(seed)
    if bootstrap:
        return [np.sort(rng.integers(0, n, size=n)).astype(np.int64) for _ in range(parts)]
    if parts > n:
        raise ConfigError(
            f"cannot cut {n} inputs into {parts} disjoint non-empty subsets; expected parts <= n"
        )
    return [np.sort(piece).astype(np.int64) for piece in np.array_split(rng.permutation(n), parts)]


# ------------------------------------------------------------------------------ partitions


def _as_labels(item: Any, n: int | None, where: str) -> np.ndarray:
    """One partition as a label vector: a label array, a list of coalitions, or a fitted estimator."""
    if hasattr(item, "labels_"):
        item = item.labels_
    if isinstance(item, np.ndarray) and item.ndim == 1:
        labels = item
    else:
        seq = list(item)
        if seq and all(isinstance(c, (Sequence, np.ndarray)) and not isinstance(c, str) for c in seq):
            size = sum(len(c) for c in seq) if n is None else n
            labels = labels_from_coalitions(seq, size)
        else:
            labels = np.asarray(seq)
    if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{where}: expected a non-empty 1-d integer label vector or a list of coalitions")
    if n is not None and labels.size != n:
        raise DataError(f"{where} labels {labels.size} neurons; expected {n} like the first partition")
    return labels.astype(np.int64)


def _labels_list(labels_list: Sequence[Any], least: int) -> list[np.ndarray]:
    items = list(labels_list)
    if len(items) < least:
        raise DataError(f"got {len(items)} partitions; expected at least {least} (one per φ resample)")
    first = _as_labels(items[0], None, "partition 0")
    return [first] + [_as_labels(x, first.size, f"partition {r}") for r, x in enumerate(items[1:], 1)]


def resample_partitions(phis: Sequence[Any], partitioner: Any, **fit_kwargs: Any) -> list[np.ndarray]:
    """Fit a fresh copy of ``partitioner`` on each φ matrix; the label vector of each fit.

    ``phis``: R >= 3 φ matrices (n x n, each estimated on one subset from :func:`split_inputs`),
    or anything the partitioner's ``fit`` takes first (a sparse φ graph for ``PhiCommunities``).
    ``partitioner``: an estimator with ``fit(phi, **fit_kwargs)`` that sets ``labels_`` (the
    game's solvers and the baselines); it is deep-copied before each fit, so its own state and
    any earlier fit are untouched, and with the same ``random_state`` every resample is fitted
    the same way (only the φ differs). Returns R int64 arrays of n labels.
    """
    items = list(phis)
    if len(items) < MIN_RESAMPLES:
        raise DataError(
            f"got {len(items)} φ matrices; expected at least {MIN_RESAMPLES} (one per input subset)"
        )
    if not callable(getattr(partitioner, "fit", None)):
        raise ConfigError(
            f"{arg('partitioner')} must be an estimator with fit(phi) setting labels_, got {partitioner!r}"
        )
    n = None
    out = []
    for r, phi in enumerate(items):
        shape = getattr(phi, "shape", None)
        if shape is None or len(shape) != 2 or shape[0] != shape[1]:
            raise DataError(f"φ resample {r} has shape {shape}; expected a square n x n matrix")
        if n is not None and shape[0] != n:
            raise DataError(f"φ resample {r} has {shape[0]} neurons; expected {n} like resample 0")
        n = int(shape[0])
        est = copy.deepcopy(partitioner).fit(phi, **fit_kwargs)
        out.append(_as_labels(est, n, f"fit on φ resample {r}"))
    return out


def stability(labels_list: Sequence[Any]) -> dict[str, Any]:
    """Agreement between the partitions of R φ resamples: pairwise adjusted Rand index.

    Each item is a label vector, a list of coalitions or a fitted estimator. ARI is
    ``sklearn.metrics.adjusted_rand_score`` (1 = identical partitions, about 0 = chance level).
    Returns ``ari_mean``, ``ari_min``, ``ari_max``, ``ari_sd`` (over the R(R-1)/2 pairs, ddof 0),
    ``n_resamples``, ``n_pairs``, ``n_coalitions_mean`` and ``pairwise`` (the ARI of each pair
    (r, s), r < s, in lexicographic order).
    """
    from sklearn.metrics import adjusted_rand_score

    labels = _labels_list(labels_list, MIN_RESAMPLES)
    aris = [float(adjusted_rand_score(a, b)) for a, b in combinations(labels, 2)]
    return {
        "ari_mean": float(np.mean(aris)),
        "ari_min": float(np.min(aris)),
        "ari_max": float(np.max(aris)),
        "ari_sd": float(np.std(aris)),
        "n_resamples": len(labels),
        "n_pairs": len(aris),
        "n_coalitions_mean": float(np.mean([np.unique(x).size for x in labels])),
        "pairwise": aris,
    }


def stability_by_method(labels_by_method: Mapping[str, Sequence[Any]]) -> dict[str, dict[str, Any]]:
    """:func:`stability` of each method's resampled partitions: ``{method: stability dict}``."""
    return {method: stability(items) for method, items in labels_by_method.items()}


# ------------------------------------------------------------------------------ consensus


def _needed(threshold: float, r: int) -> int:
    """Fewest co-assignments out of ``r`` that reach the fraction ``threshold``."""
    return max(1, math.ceil(threshold * r - 1e-9))


def _components(n: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    import scipy.sparse as sp
    from scipy.sparse.csgraph import connected_components

    graph = sp.coo_array((np.ones(rows.size, dtype=np.int8), (rows, cols)), shape=(n, n)).tocsr()
    return connected_components(graph, directed=False)[1]


def _by_subsets(labels: np.ndarray, t: int) -> np.ndarray:
    """Components via cliques: neurons with equal labels on some t resamples agree in >= t of them.

    Any pair co-assigned in >= t resamples has equal labels on some t-subset of the resamples,
    and any two neurons with equal labels on a t-subset are co-assigned >= t times, so the union
    of these groups (one star of edges per group) has the thresholded graph's components.
    """
    n, r = labels.shape
    rows, cols = [], []
    for subset in combinations(range(r), t):
        _, first, inverse = np.unique(labels[:, list(subset)], axis=0, return_index=True, return_inverse=True)
        leader = first[inverse.ravel()]
        moved = leader != np.arange(n)
        rows.append(np.arange(n)[moved])
        cols.append(leader[moved])
    return _components(n, np.concatenate(rows), np.concatenate(cols))


def _by_pair_counts(labels: np.ndarray, t: int) -> np.ndarray:
    """Components via sparse co-assignment counts: sum over resamples of B_r B_r^T (B_r the
    neuron x coalition membership), kept where the count reaches ``t``."""
    import scipy.sparse as sp

    n, r = labels.shape
    counts = None
    for j in range(r):
        _, lab = np.unique(labels[:, j], return_inverse=True)
        member = sp.csr_array((np.ones(n, dtype=np.int32), (np.arange(n), lab.ravel())))
        co = member @ member.T
        counts = co if counts is None else counts + co
    coo = counts.tocoo()
    keep = (coo.data >= t) & (coo.row != coo.col)
    return _components(n, coo.row[keep], coo.col[keep])


def consensus_coalitions(
    labels_list: Sequence[Any], threshold: float = 0.8, min_size: int = 2
) -> list[list[int]]:
    """Groups of neurons co-assigned in at least ``threshold`` of the R resampled partitions.

    Two neurons are linked when they share a coalition in at least ``ceil(threshold * R)`` of
    the R partitions; the groups are the connected components of that graph
    (``scipy.sparse.csgraph.connected_components``) with at least ``min_size`` neurons, in
    canonical order (largest first, ties by smallest member). Neurons in smaller components
    are left out. A group is connected, not a clique: two of its members may be linked only
    through others (:func:`co_assignment` gives the mean co-assignment inside each group).

    No n x n matrix is built. For the usual few resamples (at most 512 subsets of
    ``ceil(threshold * R)`` resamples) the links come from grouping neurons by their labels on
    each such subset (O(n) edges per subset); otherwise from sparse co-assignment counts, one
    entry per pair of neurons sharing a coalition (quadratic in the largest coalition).
    """
    labels = np.column_stack(_labels_list(labels_list, 2))
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
        raise ConfigError(f"{arg('threshold')} must be a fraction of resamples in (0, 1], got {threshold!r}")
    min_size = _int(min_size, "min_size", 1)
    r = labels.shape[1]
    t = _needed(float(threshold), r)
    comp = _by_subsets(labels, t) if math.comb(r, t) <= _MAX_SUBSETS else _by_pair_counts(labels, t)
    order = np.argsort(comp, kind="stable")
    _, starts = np.unique(comp[order], return_index=True)
    groups = [g for g in np.split(order, starts[1:]) if g.size >= min_size]
    return canonical_coalitions(groups)


def co_assignment(groups: Sequence[Sequence[int]], labels_list: Sequence[Any]) -> list[float]:
    """For each group, the fraction of (pair of its members, resample) that share a coalition.

    Computed from the group's overlap with each coalition (sum of C(overlap, 2) over
    coalitions, over C(size, 2) pairs), never pair by pair. A group of one neuron gives 1.0.
    """
    labels = _labels_list(labels_list, 1)
    n = labels[0].size
    out = []
    for k, group in enumerate(groups):
        idx = np.asarray(group, dtype=np.int64)
        if idx.size == 0 or idx.min() < 0 or idx.max() >= n:
            raise DataError(f"group {k} is empty or names a neuron outside 0..{n - 1}")
        pairs = idx.size * (idx.size - 1) / 2
        if pairs == 0:
            out.append(1.0)
            continue
        together = 0.0
        for lab in labels:
            overlap = np.unique(lab[idx], return_counts=True)[1].astype(np.float64)
            together += float((overlap * (overlap - 1) / 2).sum())
        out.append(together / (pairs * len(labels)))
    return out
