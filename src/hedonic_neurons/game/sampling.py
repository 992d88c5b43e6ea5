"""Coalition samplers: the uniform distribution D (a size uniform on min..max, then a uniform
subset of that size) and the phi-aware one (grown along positive phi).

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


#: Columns per block of the two-level inverse CDF of :func:`_partners_from_rows`.
DRAW_BLOCK = 32
_UPPER_ONES = np.triu(np.ones((DRAW_BLOCK, DRAW_BLOCK)))  # x @ _UPPER_ONES = cumsum(x)


def _partners_from_rows(
    rng: np.random.Generator, weights: np.ndarray, row: np.ndarray, need: np.ndarray, width: int
) -> np.ndarray:
    """Successive sampling without replacement, probability proportional to ``weights[row]``.

    For each sample, ``need`` distinct columns (``need`` never exceeds the row's number of
    positive weights). Draws with replacement and skips repeats (which is exactly successive
    sampling); the few samples still short after a few passes finish one draw at a time.
    """
    c, n = row.size, weights.shape[1]
    # Two-level inverse CDF: the cumulative weight of blocks of DRAW_BLOCK columns (float64)
    # picks a block, the cumulative weight inside the block picks the column. The same law as
    # one cumulative sum over the whole row, at a fraction of the cost: a row is read once by a
    # vectorised block sum instead of a sequential n-term cumulative sum (6x slower here), and
    # only the drawn blocks are summed column by column.
    nb = -(-n // DRAW_BLOCK)
    if n % DRAW_BLOCK:  # zero columns pad the last block
        padded = np.zeros((weights.shape[0], nb * DRAW_BLOCK), dtype=weights.dtype)
        padded[:, :n] = weights
    else:
        padded = np.ascontiguousarray(weights)
    blocks = padded.reshape(weights.shape[0], nb, DRAW_BLOCK)
    bcdf = blocks.sum(axis=2, dtype=np.float64)
    np.cumsum(bcdf, axis=1, out=bcdf)
    total = bcdf[:, -1].copy()
    offset = np.arange(bcdf.shape[0]) * (2.0 * total.max(initial=0.0) + 1.0)
    bcdf += offset[:, None]  # one increasing array: row r lies in [offset_r, offset_r + total_r]
    flat = bcdf.ravel()

    def draw(rows: np.ndarray, count: int) -> np.ndarray:
        # the first column whose cumulative weight exceeds U * total: never a zero-weight column
        q = offset[rows][:, None] + rng.random((rows.size, count)) * total[rows][:, None]
        b = np.searchsorted(flat, q, side="right")  # global block index (row * nb + block)
        local = b - rows[:, None] * nb
        valid = local < nb  # q rounded up onto the row's end: a void draw
        local = np.where(valid, local, 0)
        below = flat[np.maximum(b - 1, 0)]
        rest = q - np.where(local > 0, below, offset[rows][:, None])
        # the cumulative sums inside the drawn blocks, as one matrix product (a BLAS call
        # instead of a sequential cumulative sum per block)
        within = blocks[rows[:, None], local].astype(np.float64) @ _UPPER_ONES
        within = (within <= rest[..., None]).sum(axis=2)
        ok = valid & (within < DRAW_BLOCK)  # rounding past the block's end: a void draw
        j = local * DRAW_BLOCK + np.minimum(within, DRAW_BLOCK - 1)
        return np.where(ok & (j < n), j, -1)

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
    """``m`` phi-aware coalitions: grown from a random neuron along positive phi.

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


# ----------------------------------------------------- coalitions grown from a given owner


def partner_weights(phi: np.ndarray, owners: np.ndarray, pool: np.ndarray, power: float = 1.0) -> np.ndarray:
    """w_ij = max(phi_ij, 0) ** power for each owner i (rows) and j in ``pool`` (columns), float64.

    The owner's own column is 0, so ``w > 0`` exactly where j is a positive partner of i in the
    pool (for ``power != 1`` each row is first divided by its largest entry, which leaves the
    law of the draws unchanged and keeps the powers from underflowing; a ratio whose power
    still underflows float64 counts as 0). Shape (len(owners), len(pool)); ``pool`` is sorted
    and holds every owner.
    """
    if pool.size == phi.shape[0]:  # the whole matrix: plain rows, no column gather
        block = np.take(phi, owners, axis=0)
    else:
        block = phi[np.ix_(owners, pool)]
    w = np.maximum(block, 0, dtype=np.float64)
    w[np.arange(owners.size), np.searchsorted(pool, owners)] = 0.0
    if power != 1.0:
        top = w.max(axis=1, keepdims=True)
        w *= 1.0 / np.where(top > 0, top, 1.0)
        _power_in_place(w, power)
    return w


def _power_in_place(w: np.ndarray, power: float) -> None:
    """``w **= power`` (w >= 0); an integer power by repeated squaring (np.power is slow)."""
    if power != int(power) or not 1 <= power <= 64:
        np.power(w, power, out=w)
        return
    e = int(power)
    base = None
    while e > 1:  # w holds w0 ** 2^i; ``base`` collects the set bits of the exponent
        if e & 1:
            base = w.copy() if base is None else np.multiply(base, w, out=base)
        np.multiply(w, w, out=w)
        e >>= 1
    if base is not None:
        w *= base


#: A sample whose undrawn weight is below this share of its row's total continues on a fresh
#: row (see :func:`successive_draws`).
MIN_FREE_SHARE = 2.0**-20

#: Fresh-row restarts of :func:`successive_draws` before a sample's exponential race.
MAX_RESTARTS = 4


def successive_draws(
    rng: np.random.Generator, weights: np.ndarray, row: np.ndarray, need: np.ndarray, width: int
) -> np.ndarray:
    """Successive sampling without replacement, probability proportional to ``weights[row]``.

    For sample ``c``, ``need[c]`` distinct columns of row ``row[c]`` of ``weights`` (b, r),
    each drawn with probability proportional to its weight among the columns not drawn yet
    (a zero weight is never drawn; ``need`` must not exceed the row's number of positive
    weights). Returns (c, width) columns in draw order, ``-1`` padded.

    Fast path, with no repeats to reject: a draw is a uniform point of the row's normalised
    cumulative weight (float64) with the intervals of the columns already drawn cut out (the
    point is shifted past the cut intervals below it), so every draw is one binary search plus
    O(width) work, however concentrated the weights. A sample leaves the fast path, keeping
    its draws so far, when its undrawn weight falls below :data:`MIN_FREE_SHARE` of the row's
    (the row's cumulative weights then resolve the undrawn columns too coarsely) or a draw
    fails by rounding (lands outside the row or on a drawn column). Such samples are grouped
    by (row, columns drawn): each group's row with those columns zeroed is a fresh row, with
    cumulative weights of its own, on which the draws continue (given the draws so far, the
    rest of successive sampling is successive sampling from the undrawn columns). After
    :data:`MAX_RESTARTS` such restarts a sample finishes by an exponential race on its row
    (keys E_j / w_j, E_j ~ Exp(1), over the undrawn columns, smallest first: the same law).
    Memory: the cumulative weights of ``weights`` plus O(c * width); restarts work on about
    2M entries at a time.
    """
    return _draw(rng, weights, row, need, width, 0)


def _draw(
    rng: np.random.Generator, weights: np.ndarray, row: np.ndarray, need: np.ndarray, width: int, depth: int
) -> np.ndarray:
    """:func:`successive_draws`, ``depth`` restarts deep."""
    b, r = weights.shape
    c = row.size
    out = np.full((c, width), -1, dtype=np.int64)
    steps = int(need.max(initial=0))
    if not steps:
        return out
    cdf = np.cumsum(weights, axis=1)  # float64
    total = cdf[:, -1].copy()
    cdf /= np.where(total > 0, total, 1.0)[:, None]  # each row with weight ends at exactly 1.0
    cdf += 2.0 * np.arange(b)[:, None]  # one increasing array: row q spans [2q, 2q + 1]
    flat = cdf.ravel()
    order = np.argsort(-need, kind="stable")  # most draws first: step t works on a prefix
    active = c - np.cumsum(np.bincount(need, minlength=steps + 1))  # active[t] = #(need > t)
    base = row[order] * r
    low = 2.0 * row[order]  # where each sample's row starts in ``flat``
    # per draw t (rows) and sample (columns, in ``order``): the column drawn, its interval
    # [start, start + mass) in ``flat``, and its start with the masses of the drawn intervals
    # below it taken out ("squeezed"): a point x of the undrawn weight passes exactly the
    # intervals whose squeezed start is <= x
    drawn = np.full((steps, c), -1, dtype=np.int64)
    start, mass, squeezed = (np.empty((steps, c)) for _ in range(3))
    free = np.ones(c)  # undrawn share of the row's weight
    fast = np.ones(c, dtype=bool)
    for t in range(steps):
        m = int(active[t])
        s_t, w_t, a_t = start[:t, :m], mass[:t, :m], squeezed[:t, :m]
        x = low[:m] + rng.random(m) * free[:m]
        q = x + np.where(a_t <= x, w_t, 0.0).sum(axis=0)  # skip the drawn intervals
        by = np.argsort(q)  # sorted keys make the binary searches cache friendly
        j = np.empty(m, dtype=np.int64)
        j[by] = np.searchsorted(flat, q[by], side="right")
        local = j - base[:m]
        np.minimum(j, flat.size - 1, out=j)
        s_new = np.where(local > 0, flat[j - 1], low[:m])
        ok = fast[:m] & (free[:m] >= MIN_FREE_SHARE) & (local < r)
        if t:  # a rounding slip onto a drawn column: the same interval as that column's
            ok &= ~(s_t == s_new).any(axis=0)
        w_new = np.where(ok, flat[j] - s_new, 0.0)
        fast[:m] = ok
        drawn[t, :m] = np.where(ok, local, -1)
        free[:m] -= w_new
        if t + 1 < steps:
            below = s_t < s_new
            squeezed[t, :m] = s_new - np.where(below, w_t, 0.0).sum(axis=0)
            np.subtract(a_t, w_new, out=a_t, where=~below)
            start[t, :m] = s_new
            mass[t, :m] = w_new
    drawn = drawn.T
    slow = np.flatnonzero(~fast & (need[order] > 0))
    if slow.size:
        drawn[slow] = _restart(rng, weights, row[order[slow]], drawn[slow], need[order[slow]], depth)
    out[order, :steps] = drawn
    return out


def _restart(
    rng: np.random.Generator,
    weights: np.ndarray,
    row: np.ndarray,
    drawn: np.ndarray,
    need: np.ndarray,
    depth: int,
) -> np.ndarray:
    """Continue each sample's draws (a valid prefix of ``drawn``) up to ``need`` on fresh rows.

    One fresh row per distinct (row, columns drawn): the row with those columns zeroed.
    """
    if depth >= MAX_RESTARTS:
        return _finish_exact(rng, weights, row, drawn, need)
    r = weights.shape[1]
    drawn = drawn.copy()
    got = (drawn >= 0).sum(axis=1)
    key = np.concatenate([row[:, None], np.sort(drawn, axis=1)], axis=1)
    groups, group = np.unique(key, axis=0, return_inverse=True)
    group = group.ravel()
    step = max(1, BLOCK_ENTRIES // max(r, 1))
    for a in range(0, groups.shape[0], step):
        g = groups[a : a + step]
        w = weights[g[:, 0]]
        hit, col = np.nonzero(g[:, 1:] >= 0)
        w[hit, g[hit, 1 + col]] = 0.0
        ids = np.flatnonzero((group >= a) & (group < a + step))
        more = _draw(rng, w, group[ids] - a, need[ids] - got[ids], drawn.shape[1], depth + 1)
        take = np.arange(more.shape[1]) < (need[ids] - got[ids])[:, None]
        rows_t = np.broadcast_to(ids[:, None], take.shape)[take]
        drawn[rows_t, (got[ids][:, None] + np.arange(more.shape[1]))[take]] = more[take]
    return drawn


def _finish_exact(
    rng: np.random.Generator, weights: np.ndarray, row: np.ndarray, drawn: np.ndarray, need: np.ndarray
) -> np.ndarray:
    """Complete each sample's draws (a valid prefix of ``drawn``) up to ``need``: the last resort.

    The undrawn columns race: keys E_j / w_j with E_j ~ Exp(1); the smallest keys, in order,
    are successive sampling proportional to w (given the prefix, by memorylessness).
    """
    r = weights.shape[1]
    drawn = drawn.copy()
    step = max(1, BLOCK_ENTRIES // max(r, 1))
    for a in range(0, row.size, step):
        have = drawn[a : a + step]
        w = weights[row[a : a + step]]
        got = (have >= 0).sum(axis=1)
        more = need[a : a + step] - got
        keys = np.full(w.shape, np.inf)
        np.divide(rng.standard_exponential(w.shape), w, out=keys, where=w > 0)
        hit, col = np.nonzero(have >= 0)
        keys[hit, have[hit, col]] = np.inf
        d = int(more.max())
        idx = np.argpartition(keys, d - 1, axis=1)[:, :d]
        idx = np.take_along_axis(idx, np.argsort(np.take_along_axis(keys, idx, axis=1), axis=1), axis=1)
        take = np.arange(d) < more[:, None]
        rows_t = np.broadcast_to(np.arange(have.shape[0])[:, None], take.shape)[take]
        have[rows_t, (got[:, None] + np.arange(d))[take]] = idx[take]
    return drawn


def grown_coalitions(
    phi: np.ndarray,
    rng: np.random.Generator,
    pool: np.ndarray,
    owners: np.ndarray,
    per_owner: int,
    min_size: int,
    max_size: int,
    *,
    power: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """``per_owner`` phi-aware coalitions grown from each of ``owners`` inside ``pool``.

    The law D_i of one coalition grown from owner i in pool R (sorted neuron ids holding i) is
    that of :func:`phi_coalitions` with its seed fixed to i and restricted to R: a target size
    s uniform on {min_size..max_size} (both capped at |R|), then s - 1 distinct partners from
    R \\ {i} drawn one after another, each with probability proportional to
    w_ij = max(phi_ij, 0) ** power among the partners not drawn yet (successive sampling, see
    :func:`successive_draws`; ``power=1`` is the certificate's sampler). A neuron with
    phi_ij <= 0 is never drawn; an owner with fewer than s - 1 positive partners left in R
    takes all of them (a smaller coalition; none: the singleton {i}).

    Returns ``(owner, members)``: ``owner`` (m,) indexes ``owners`` (sample t of owner o is row
    o * per_owner + t), ``members`` (m, width) neuron ids, the owner first and then its partners
    in draw order, ``-1`` padded. phi is read one block of owner rows (about 2M entries) at a
    time.
    """
    r = pool.size
    lo, hi = min(min_size, r), min(max_size, r)
    m = owners.size * per_owner
    owner = np.repeat(np.arange(owners.size), per_owner)
    target = rng.integers(lo, hi + 1, size=m)
    width = int(target.max(initial=1))
    members = np.full((m, width), -1, dtype=np.int64)
    members[:, 0] = owners[owner]
    step = max(1, BLOCK_ENTRIES // r)
    for start in range(0, owners.size, step):
        stop = min(start + step, owners.size)
        w = partner_weights(phi, owners[start:stop], pool, power)
        n_pos = np.count_nonzero(w, axis=1)
        rows = slice(start * per_owner, stop * per_owner)
        row = owner[rows] - start
        need = np.minimum(target[rows] - 1, n_pos[row])
        part = np.full((row.size, width - 1), -1, dtype=np.int64)
        take_all = need == n_pos[row]  # the set is fixed: all positive partners
        small = np.flatnonzero(n_pos <= width - 1)
        if small.size:
            hit, col = np.nonzero(w[small] > 0)
            lists = np.full((small.size, width - 1), -1, dtype=np.int64)
            lists[hit, np.arange(hit.size) - np.searchsorted(hit, hit)] = col
            where = np.full(w.shape[0], -1, dtype=np.int64)
            where[small] = np.arange(small.size)
            ids = np.flatnonzero(take_all)
            part[ids] = lists[where[row[ids]]]
        ids = np.flatnonzero(~take_all)
        part[ids] = successive_draws(rng, w, row[ids], need[ids], width - 1)
        members[rows, 1:] = np.where(part >= 0, pool[np.maximum(part, 0)], -1)
    return owner, members
