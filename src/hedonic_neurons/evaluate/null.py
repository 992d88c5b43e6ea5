"""The random-set null: where a coalition's effect sits among random sets of the same size.

A coalition's effect grows with its size whatever its members are, so it is compared with random
neuron sets of the same layer and (nearly) the same size, measured on the same pairs:

* **Size bins on a log scale.** Sizes are binned by octave from the lower end ``lo`` of the size
  band: bin k holds sizes s with floor(per_octave · log2(s / lo)) = k (one bin per doubling by
  default: 5–9, 10–19, 20–39, 40–79 for lo = 5). Effects grow roughly with log size at these
  scales, so equal-width bins in log size are about equally wide in effect.
* **Size-matched within a bin.** The random sets of a bin take their sizes from the evaluated
  coalitions that fall in it (cycled in a seeded random order), so each bin's null has the same
  size distribution as the coalitions compared with it. Only bins that hold an evaluated
  coalition get random sets.
* **Percentile.** The mid-rank percentile 100 · (#{null < v} + ½ #{null = v}) / M: a set drawn
  from the null itself has expected percentile 50, ties (e.g. sets of neurons that ablation does
  not change) included.
* **Shared subsample.** The null and the coalitions compared with it are measured on one seeded
  subsample of whole test queries (:func:`query_subsample`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from hedonic_neurons.errors import ConfigError


def size_bin(size: int, lo: int, per_octave: int = 1) -> int:
    """Index of the log-scale bin of ``size`` (bin 0 starts at ``lo``)."""
    if size < lo:
        raise ConfigError(f"size {size} is below the size band's lower end {lo}")
    # a small tolerance keeps exact powers in their own bin despite rounding in log2
    return math.floor(per_octave * math.log2(size / lo) + 1e-9)


def bin_sizes(k: int, lo: int, per_octave: int = 1) -> tuple[int, int]:
    """(smallest, largest) size in bin ``k``."""
    first = math.ceil(lo * 2 ** (k / per_octave) - 1e-9)
    last = math.ceil(lo * 2 ** ((k + 1) / per_octave) - 1e-9) - 1
    return first, max(first, last)


def mid_rank_percentile(value: float | np.ndarray, null: np.ndarray) -> np.ndarray:
    """100 · (#{null < v} + ½ #{null = v}) / M for each value (vectorised over ``value``)."""
    v = np.asarray(value, dtype=np.float64)[..., None]
    z = np.asarray(null, dtype=np.float64)
    if z.size == 0:
        return np.full(v.shape[:-1], np.nan)
    below = (z < v).sum(-1)
    ties = (z == v).sum(-1)
    return 100.0 * (below + 0.5 * ties) / z.shape[-1]


def random_sets(
    sizes_by_bin: dict[int, Sequence[int]], n_neurons: int, per_bin: int, seed: int
) -> tuple[list[list[int]], np.ndarray]:
    """``per_bin`` uniformly random neuron sets per bin, sizes cycled from that bin's coalition
    sizes; returns (sets, bin of each set)."""
    rng = np.random.default_rng(seed)
    sets: list[list[int]] = []
    bins: list[int] = []
    for k in sorted(sizes_by_bin):
        sizes = np.array(sorted(sizes_by_bin[k]), dtype=np.int64)
        order = np.resize(rng.permutation(sizes), per_bin)
        for s in order:
            if s > n_neurons:
                raise ConfigError(f"a random set of {s} neurons is larger than the layer ({n_neurons})")
            sets.append(sorted(rng.choice(n_neurons, size=int(s), replace=False).tolist()))
            bins.append(k)
    return sets, np.array(bins, dtype=np.int64)


def query_subsample(
    qids: Sequence[str], max_pairs: int, seed: int, min_queries: int = 1, per_query: int | None = None
) -> np.ndarray:
    """Indices of the pairs of whole queries, drawn in a seeded random order until ``max_pairs``
    pairs (a query that would overflow is skipped), but at least ``min_queries`` queries (or all
    there are) whatever their size. ``per_query``: take at most this many pairs of each query
    (a seeded draw within the query) instead of whole queries, so the same ``max_pairs`` cover
    more queries. Sorted."""
    if per_query is not None and (isinstance(per_query, bool) or int(per_query) < 1):
        raise ValueError(f"per_query must be a positive integer or None, got {per_query!r}")
    by_q: dict[str, list[int]] = {}
    for i, q in enumerate(qids):
        by_q.setdefault(q, []).append(i)
    order = sorted(by_q)
    np.random.default_rng(seed).shuffle(order)
    if per_query is not None:
        draw = np.random.default_rng([seed, 1])
        by_q = {
            q: sorted(int(i) for i in draw.permutation(by_q[q])[: int(per_query)]) for q in order
        }
    chosen: list[int] = []
    taken = 0
    for q in order:
        if taken >= min_queries and len(chosen) + len(by_q[q]) > max_pairs:
            continue
        chosen.extend(by_q[q])
        taken += 1
    return np.array(sorted(chosen), dtype=np.int64)
