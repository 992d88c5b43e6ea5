"""Coalition samplers: the distribution D of method A8 and the phi-aware one of A10.

Both return coalitions grouped by size, as a list of :class:`SizeGroup` (one array of sorted
member rows per size), so that every later step works on dense ``(m, s)`` arrays. Sample ids
record the order in which coalitions were drawn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hedonic_neurons.game.utility import BLOCK_ENTRIES


@dataclass
class SizeGroup:
    """Coalitions of one size: ``members`` (m, size), each row sorted; ``ids`` their sample ids."""

    size: int
    ids: np.ndarray
    members: np.ndarray


def subset_indices(rng: np.random.Generator, r: int, m: int, s: int) -> np.ndarray:
    """``m`` uniform random ``s``-subsets of ``range(r)``, each row sorted."""
    if s >= r:
        return np.broadcast_to(np.arange(r), (m, r)).copy()
    if r <= 4 * s * s:  # small pool: random keys, the s smallest (uniform subset)
        out = np.empty((m, s), dtype=np.int64)
        step = max(1, BLOCK_ENTRIES // r)
        for start in range(0, m, step):
            keys = rng.random((min(step, m - start), r))
            out[start : start + step] = np.argpartition(keys, s - 1, axis=1)[:, :s]
        out.sort(axis=1)
        return out
    # large pool: draw with replacement and redraw the rows that repeat a member (rejection
    # sampling: conditioned on distinct members, the set is a uniform s-subset)
    out = np.sort(rng.integers(0, r, size=(m, s)), axis=1)
    bad = np.flatnonzero((out[:, 1:] == out[:, :-1]).any(axis=1))
    while bad.size:
        redraw = np.sort(rng.integers(0, r, size=(bad.size, s)), axis=1)
        out[bad] = redraw
        bad = bad[(redraw[:, 1:] == redraw[:, :-1]).any(axis=1)]
    return out


def group_by_size(sizes: np.ndarray, members: np.ndarray) -> list[SizeGroup]:
    """Split padded member rows (``-1`` padding at the end, rows sorted) into size groups."""
    groups = []
    for s in np.unique(sizes):
        ids = np.flatnonzero(sizes == s)
        groups.append(SizeGroup(int(s), ids, np.ascontiguousarray(members[ids, :s])))
    return groups


def uniform_coalitions(
    rng: np.random.Generator, pool: np.ndarray, m: int, min_size: int, max_size: int
) -> list[SizeGroup]:
    """``m`` draws from D restricted to ``pool`` (sorted neuron ids).

    Size uniform on {min_size..max_size}, both capped at ``len(pool)``, then a uniform subset
    of ``pool`` of that size.
    """
    r = pool.size
    lo, hi = min(min_size, r), min(max_size, r)
    sizes = rng.integers(lo, hi + 1, size=m)
    groups = []
    for s in range(lo, hi + 1):
        ids = np.flatnonzero(sizes == s)
        if ids.size:
            groups.append(SizeGroup(s, ids, pool[subset_indices(rng, r, ids.size, s)]))
    return groups


def _first_distinct(cands: np.ndarray, need: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``need`` distinct non-negative entries of each row of ``cands``, in order.

    Returns ``(chosen (c, width) padded with -1, count (c,))``.
    """
    w = cands.shape[1]
    earlier = np.tri(w, w, -1, dtype=bool)  # earlier[p, q] = q < p
    dup = ((cands[:, :, None] == cands[:, None, :]) & earlier).any(axis=2)
    first = ~dup & (cands >= 0)
    take = first & (np.cumsum(first, axis=1) <= need[:, None])
    order = np.argsort(~take, axis=1, kind="stable")[:, :width]
    kept = np.take_along_axis(take, order, axis=1)
    chosen = np.where(kept, np.take_along_axis(cands, order, axis=1), -1)
    return chosen, kept.sum(axis=1)


def _partners_from_rows(
    rng: np.random.Generator, weights: np.ndarray, row: np.ndarray, need: np.ndarray, width: int
) -> np.ndarray:
    """Successive sampling without replacement, probability proportional to ``weights[row]``.

    For each sample, ``need`` distinct columns (``need`` never exceeds the row's number of
    positive weights). Draws with replacement and skips repeats (which is exactly successive
    sampling); the few samples still short after a few passes finish one draw at a time.
    """
    c, n = row.size, weights.shape[1]
    cdf = weights.astype(np.float64)
    np.cumsum(cdf, axis=1, out=cdf)  # in float64 (a float32 running sum drifts over 10^4 terms)
    total = cdf[:, -1].copy()
    offset = np.arange(cdf.shape[0]) * (2.0 * total.max(initial=0.0) + 1.0)
    cdf += offset[:, None]  # one increasing array: row r lies in [offset_r, offset_r + total_r]
    flat = cdf.ravel()

    def draw(rows: np.ndarray, count: int) -> np.ndarray:
        # first index whose cumulative weight exceeds U * total: never a zero-weight column
        q = offset[rows][:, None] + rng.random((rows.size, count)) * total[rows][:, None]
        j = np.searchsorted(flat, q, side="right") - rows[:, None] * n
        return np.where(j < n, j, -1)  # q rounded up onto the row's end: a void draw

    chosen = np.full((c, width), -1, dtype=np.int64)
    got = np.zeros(c, dtype=np.int64)
    todo = np.flatnonzero(need > 0)
    for _ in range(4):
        if not todo.size:
            break
        cands = np.concatenate([chosen[todo], draw(row[todo], 2 * width + 2)], axis=1)
        chosen[todo], got[todo] = _first_distinct(cands, need[todo], width)
        todo = todo[got[todo] < need[todo]]
    if todo.size:  # weight concentrated on few partners: finish exactly, one draw at a time
        w = weights[row[todo]].copy()
        rows_t = np.arange(todo.size)
        have = chosen[todo]
        w[rows_t[:, None].repeat(width, 1)[have >= 0], have[have >= 0]] = 0.0
        while True:
            short = np.flatnonzero(got[todo] < need[todo])
            if not short.size:
                break
            cw = np.cumsum(w[short], axis=1, dtype=np.float64)
            x = rng.random(short.size) * cw[:, -1]
            j = np.minimum((cw <= x[:, None]).sum(axis=1), n - 1)
            chosen[todo[short], got[todo[short]]] = j
            got[todo[short]] += 1
            w[short, j] = 0.0
    return chosen


def phi_coalitions(
    phi: np.ndarray, rng: np.random.Generator, m: int, min_size: int, max_size: int
) -> list[SizeGroup]:
    """``m`` phi-aware coalitions (method A10): grown from a random neuron along positive phi.

    A seed neuron i is drawn uniformly and a target size s uniformly on {min_size..max_size};
    then s - 1 distinct partners are drawn one after another, each with probability
    proportional to its positive phi with the seed (phi_ij <= 0 is never drawn). A seed with
    fewer positive partners takes all of them, so its coalition is smaller than s (a seed with
    none stays a singleton).
    """
    n = phi.shape[0]
    seeds = rng.integers(0, n, size=m)
    target = rng.integers(min(min_size, n), min(max_size, n) + 1, size=m)
    width = int(target.max(initial=1))
    members = np.full((m, width), -1, dtype=np.int64)
    members[:, 0] = seeds
    uniq, local = np.unique(seeds, return_inverse=True)
    by_row = np.argsort(local, kind="stable")
    bounds = np.searchsorted(local[by_row], np.arange(uniq.size + 1))
    step = max(1, BLOCK_ENTRIES // n)
    for start in range(0, uniq.size, step):
        stop = min(start + step, uniq.size)
        rows = uniq[start:stop]
        weights = np.take(phi, rows, axis=0)
        np.maximum(weights, 0, out=weights)
        weights[np.arange(rows.size), rows] = 0
        samples = by_row[bounds[start] : bounds[stop]]
        row = local[samples] - start
        need = np.minimum(target[samples] - 1, np.count_nonzero(weights, axis=1)[row])
        members[samples, 1:] = _partners_from_rows(rng, weights, row, need, width - 1)
    sizes = (members >= 0).sum(axis=1)
    members = np.sort(np.where(members >= 0, members, n), axis=1)
    return group_by_size(sizes, members)
