"""The MFC utility: choice sets, utilities and the one preference relation.

Everything in the game stage (both solvers, the certificate and the brute-force core check)
goes through the functions here, so "i strictly prefers S to T" has exactly one definition:

* :func:`choice_sets` — Ch(i, S): the at most ``k`` partners j in S \\ {i} with the largest
  **positive** phi_ij, ties broken by the lower neuron index;
* :func:`utility` — u_i(S) = (1/k) * sum of phi_ij over Ch(i, S) (always divided by ``k``);
* :func:`prefers` — higher utility first; between equal utilities, the better choice set in
  the order that already breaks ties inside Ch (compare members best first: higher phi, then
  lower index); with the same choice set, the smaller coalition.

A neuron with no positive partner in S has Ch = {} and u = 0.

Why the middle rule: the preference is "higher u, then the smaller coalition". When phi has exact ties,
two different choice sets can have the same u, and ranking those coalitions by size alone makes
the game not top-responsive: Top Covering's output can then be blocked (e.g. i's tie between
partners 2 and 3 is broken towards 2 inside Ch, yet i would leave for a smaller coalition that
contains 3 instead). Ranking equal-u choice sets by the same tie-break that defines Ch makes
choice sets unique and strictly ordered, so the game is top-responsive and Top Covering's
partition is core stable. Without exact ties in phi (any continuous phi) the rule never
applies and the preference is exactly "higher u, then smaller".
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

#: Target number of float32 entries in one block of rows (about 8 MB): small enough that the
#: allocator reuses the memory between blocks instead of faulting in fresh pages each time.
BLOCK_ENTRIES = 1 << 21


@dataclass(frozen=True)
class Choice:
    """Choice sets of many (neuron, coalition) pairs: ``partners`` and ``chosen`` are (..., k).

    ``partners`` are neuron ids best first (``-1`` padding), ``chosen`` their phi (float64,
    ``0`` padding).
    """

    partners: np.ndarray
    chosen: np.ndarray

    @property
    def u(self) -> np.ndarray:
        """The MFC utility of each entry."""
        return utility(self.chosen)

    def take(self, idx: np.ndarray | slice) -> Choice:
        """The entries ``idx`` (indexing the leading axes)."""
        return Choice(self.partners[idx], self.chosen[idx])


def choice_sets(values: np.ndarray, k: int, *, overwrite: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` positive partners along the last axis, ties broken by the lower position.

    ``values[..., p]`` is phi between a neuron and the candidate at position ``p``; positions
    must be in increasing neuron index (so "lower position" means "lower index"), and every
    entry that is not an admissible partner (the neuron itself, non-members) must be
    ``<= 0`` (use ``-inf``). Returns ``(positions, chosen)``, both of shape ``(..., k)``, best
    first: positions (``-1`` where fewer than ``k`` positive partners exist) and their phi as
    float64 (``0`` in the padding). With ``overwrite=True`` the chosen entries of ``values``
    are set to ``-inf`` in place (saves a copy of a large block).
    """
    v = values if overwrite else np.array(values, copy=True)
    lead = v.shape[:-1]
    pos = np.full((*lead, k), -1, dtype=np.int64)
    chosen = np.zeros((*lead, k), dtype=np.float64)
    for t in range(min(k, v.shape[-1])):
        j = v.argmax(axis=-1)[..., None]  # argmax returns the first maximum: the lowest index
        best = np.take_along_axis(v, j, axis=-1)[..., 0]
        ok = best > 0
        if not ok.any():
            break
        pos[..., t] = np.where(ok, j[..., 0], -1)
        chosen[..., t] = np.where(ok, best, 0.0)
        np.put_along_axis(v, j, -np.inf, axis=-1)
    return pos, chosen


def utility(chosen: np.ndarray) -> np.ndarray:
    """u = (1/k) * sum of the chosen partners' phi; ``chosen`` is (..., k) from :func:`choice_sets`.

    Always summed in the same order (best first, float64), so equal choice values give
    bit-identical utilities wherever they are computed.
    """
    chosen = np.ascontiguousarray(chosen, dtype=np.float64)
    return chosen.sum(axis=-1) / chosen.shape[-1]


def prefers(a: Choice, size_a: np.ndarray | int, b: Choice, size_b: np.ndarray | int) -> np.ndarray:
    """True where a neuron strictly prefers coalition A to B (the module docstring's order).

    ``a`` and ``b`` are the neuron's choice sets in A and B, ``size_a``/``size_b`` the sizes
    (all broadcastable).
    """
    ua, ub = a.u, b.u
    diff = (a.chosen != b.chosen) | (a.partners != b.partners)
    differs = diff.any(axis=-1)
    at = diff.argmax(axis=-1)[..., None]
    va = np.take_along_axis(np.broadcast_to(a.chosen, diff.shape), at, axis=-1)[..., 0]
    vb = np.take_along_axis(np.broadcast_to(b.chosen, diff.shape), at, axis=-1)[..., 0]
    pa = np.take_along_axis(np.broadcast_to(a.partners, diff.shape), at, axis=-1)[..., 0]
    pb = np.take_along_axis(np.broadcast_to(b.partners, diff.shape), at, axis=-1)[..., 0]
    better_set = differs & ((va > vb) | ((va == vb) & (pa < pb)))
    return (ua > ub) | ((ua == ub) & (better_set | (~differs & (np.asarray(size_a) < np.asarray(size_b)))))


def row_blocks(n_rows: int, n_cols: int) -> Iterator[slice]:
    """Slices of about :data:`BLOCK_ENTRIES` entries over ``n_rows`` rows of width ``n_cols``."""
    step = max(1, BLOCK_ENTRIES // max(n_cols, 1))
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))


def _window_blocks(lo: np.ndarray, hi: np.ndarray, budget: int) -> list[tuple[int, int]]:
    """Split rows (sorted so that ``lo`` and ``hi`` never decrease) into runs [a, b) whose
    column window hi[b-1] - lo[a] times b - a stays within ``budget`` (at least one row each)."""
    out, a, r = [], 0, lo.size
    while a < r:
        good, bad = a + 1, r + 1  # binary search for the longest run that fits
        while bad - good > 1:
            mid = (good + bad) // 2
            if (mid - a) * (hi[mid - 1] - lo[a]) <= budget:
                good = mid
            else:
                bad = mid
        out.append((a, good))
        a = good
    return out


def group_choice(phi: np.ndarray, rows: np.ndarray, groups: np.ndarray, k: int) -> tuple[Choice, np.ndarray]:
    """Ch(i, G(i)) for each ``i`` in ``rows``, where G(i) = {j : groups[j] == groups[i]}.

    Neurons with a negative group take part in nothing (their own G is empty). Reads only the
    columns of the rows' groups: neurons are sorted by group (by index within a group) and rows
    are processed in runs whose group columns form one window of about
    :data:`BLOCK_ENTRIES` entries. Returns ``(choice (r, k), has_more (r,))``; ``has_more`` says
    a row has more than ``k`` positive partners in its group.
    """
    rows = np.asarray(rows, dtype=np.int64)
    groups = np.asarray(groups)
    partners = np.full((rows.size, k), -1, dtype=np.int64)
    chosen = np.zeros((rows.size, k), dtype=np.float64)
    has_more = np.zeros(rows.size, dtype=bool)
    live = np.flatnonzero(groups[rows] >= 0)  # rows in a negative group have no partner
    order = np.argsort(groups, kind="stable")
    sorted_groups = groups[order]
    where = np.empty_like(order)
    where[order] = np.arange(order.size)  # position of each neuron in ``order``
    by = live[np.argsort(groups[rows[live]], kind="stable")]
    g = groups[rows[by]]
    lo = np.searchsorted(sorted_groups, g, side="left")
    hi = np.searchsorted(sorted_groups, g, side="right")
    for a, b in _window_blocks(lo, hi, BLOCK_ENTRIES):
        idx = by[a:b]
        r = rows[idx]
        w0, w1 = int(lo[a]), int(hi[b - 1])
        cols = order[w0:w1]
        if cols[0] == w0 and cols[-1] == w1 - 1 and (np.diff(cols) == 1).all():  # neurons w0..w1-1
            x = phi[r, w0:w1]
        else:
            x = phi[r[:, None], cols]
        np.copyto(x, -np.inf, where=sorted_groups[w0:w1][None, :] != g[a:b, None])
        x[np.arange(r.size), where[r] - w0] = -np.inf
        pos, val = choice_sets(x, k, overwrite=True)
        partners[idx] = np.where(pos >= 0, cols[np.maximum(pos, 0)], -1)
        chosen[idx] = val
        has_more[idx] = x.max(axis=1) > 0
    return Choice(partners, chosen), has_more


def sample_choice(phi: np.ndarray, members: np.ndarray, k: int) -> Choice:
    """Ch(i, S) for every member i of every coalition S in ``members`` (m, s): shape (m, s, k).

    Each row of ``members`` is one coalition of size ``s``, sorted ascending.
    """
    m, s = members.shape
    vals = np.full((m, s, s), -np.inf, dtype=phi.dtype)
    if s > 1:
        a, b = np.triu_indices(s, 1)
        v = phi[members[:, a], members[:, b]]  # phi is symmetric: read each pair once
        vals[:, a, b] = v
        vals[:, b, a] = v
    pos, chosen = choice_sets(vals, k, overwrite=True)
    ids = np.take_along_axis(np.broadcast_to(members[:, None, :], (m, s, s)), np.maximum(pos, 0), axis=-1)
    return Choice(np.where(pos >= 0, ids, -1), chosen)
