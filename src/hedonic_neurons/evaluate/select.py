"""Which coalitions are evaluated: one declared rule, applied identically to every method.

Rules (``EvaluateConfig.selection``):

* ``"cohesion"`` (default): the coalitions whose size lies in the size band (5–64 by default),
  ranked by internal cohesion — the fraction of their member pairs with φ > 0, then the mean φ
  over those pairs — best first; the top K are evaluated.
* ``"largest"``: the K largest coalitions in the band (ties: smallest first member).

The reference method's selection fixes the *target sizes*. Every method, the reference included,
is then size-matched to those targets (:func:`matched_selection`): for each target size, largest
first, the best-ranked unused coalition of the method that is at least that large, subsampled at
random to the target size when larger; a target with no such coalition is skipped and counted.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hedonic_neurons.errors import ConfigError

RULES = ("cohesion", "largest")


def cohesion(phi: np.ndarray, members: Sequence[int]) -> tuple[float, float]:
    """(fraction of member pairs with φ > 0, mean φ over member pairs); (0, 0) below 2 members."""
    idx = np.asarray(list(members), dtype=np.int64)
    if idx.size < 2:
        return 0.0, 0.0
    block = np.asarray(phi)[np.ix_(idx, idx)]
    upper = block[np.triu_indices(idx.size, 1)]
    return float((upper > 0).mean()), float(upper.mean())


def ranked(
    coalitions: Sequence[Sequence[int]],
    phi: np.ndarray | None,
    rule: str,
    *,
    min_size: int = 1,
    max_size: int | None = None,
) -> list[list[int]]:
    """The coalitions with ``min_size`` <= size <= ``max_size``, best first under ``rule``."""
    if rule not in RULES:
        raise ConfigError(f"unknown selection rule {rule!r} (expected one of: {', '.join(RULES)})")
    eligible = [
        sorted(int(i) for i in c)
        for c in coalitions
        if len(c) >= min_size and (max_size is None or len(c) <= max_size)
    ]
    if rule == "largest":
        return sorted(eligible, key=lambda c: (-len(c), c[0]))
    if phi is None:
        raise ConfigError("selection rule 'cohesion' needs φ (or choose selection 'largest')")
    scores = {tuple(c): cohesion(phi, c) for c in eligible}
    return sorted(eligible, key=lambda c: (-scores[tuple(c)][0], -scores[tuple(c)][1], -len(c), c[0]))


def select_coalitions(
    coalitions: Sequence[Sequence[int]],
    phi: np.ndarray | None,
    *,
    rule: str = "cohesion",
    k: int = 10,
    band: tuple[int, int] = (5, 64),
) -> list[list[int]]:
    """The ``k`` coalitions the rule ranks first among those with size in ``band``."""
    return ranked(coalitions, phi, rule, min_size=band[0], max_size=band[1])[:k]


def matched_selection(
    targets: Sequence[int],
    coalitions: Sequence[Sequence[int]],
    phi: np.ndarray | None,
    rule: str,
    rng: np.random.Generator,
) -> tuple[list[list[int]], int]:
    """For each target size (largest first), the best-ranked unused coalition at least that large,
    subsampled at random to the target size; returns (coalitions, number of skipped targets)."""
    pool = ranked(coalitions, phi, rule, min_size=min(targets) if targets else 1)
    used = [False] * len(pool)
    out: list[list[int]] = []
    skipped = 0
    for size in sorted(targets, reverse=True):
        pick = next((i for i, c in enumerate(pool) if not used[i] and len(c) >= size), None)
        if pick is None:
            skipped += 1
            continue
        used[pick] = True
        members = np.asarray(pool[pick])
        if len(members) > size:
            members = rng.choice(members, size=size, replace=False)
        out.append(sorted(int(i) for i in members))
    return out, skipped
