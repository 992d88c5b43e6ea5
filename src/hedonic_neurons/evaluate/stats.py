"""Confidence intervals over seeds, and the size-matching used to compare methods fairly."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Estimate:
    """Mean over seeds with a two-sided Student-t confidence interval."""

    mean: float
    low: float
    high: float
    n: int
    values: tuple[float, ...]

    def to_dict(self) -> dict:
        return {**asdict(self), "values": list(self.values)}

    def fmt(self, digits: int = 3) -> str:
        if self.n < 2:
            return f"{self.mean:.{digits}f}"
        half = (self.high - self.low) / 2
        return f"{self.mean:.{digits}f} ± {half:.{digits}f}"


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> Estimate:
    """Mean and ``confidence`` interval of ``values`` (Student t with n-1 degrees of freedom).

    With one value the interval collapses to the value; with identical values it has width zero.
    NaN values are dropped (an evaluation that could not be computed for one seed).
    """
    arr = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if arr.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0, ())
    mean = float(arr.mean())
    if arr.size < 2:
        return Estimate(mean, mean, mean, 1, tuple(arr.tolist()))
    sem = float(arr.std(ddof=1) / np.sqrt(arr.size))
    half = float(stats.t.ppf(0.5 + confidence / 2, df=arr.size - 1)) * sem
    return Estimate(mean, mean - half, mean + half, int(arr.size), tuple(arr.tolist()))


def top_coalitions(coalitions: Sequence[Sequence[int]], k: int, min_size: int = 2) -> list[list[int]]:
    """The ``k`` largest coalitions of size >= ``min_size`` (ties by smallest member)."""
    eligible = [sorted(int(i) for i in c) for c in coalitions if len(c) >= min_size]
    eligible.sort(key=lambda c: (-len(c), c[0]))
    return eligible[:k]


def size_matched(
    targets: Sequence[int], clusters: Sequence[Sequence[int]], rng: np.random.Generator
) -> tuple[list[list[int]], int]:
    """For each target size, a distinct cluster at least that large, subsampled to that size (A13).

    Clusters are consumed largest-first; a target with no cluster left that is large enough is
    skipped. Returns (matched coalitions, number of skipped targets).
    """
    pool = sorted((list(c) for c in clusters), key=len, reverse=True)
    used = [False] * len(pool)
    out: list[list[int]] = []
    skipped = 0
    for size in sorted(targets, reverse=True):
        # the smallest unused cluster that is large enough keeps big clusters for big targets
        best = None
        for idx, cluster in enumerate(pool):
            if not used[idx] and len(cluster) >= size and (best is None or len(cluster) < len(pool[best])):
                best = idx
        if best is None:
            skipped += 1
            continue
        used[best] = True
        members = np.asarray(pool[best])
        out.append(sorted(rng.choice(members, size=size, replace=False).tolist()))
    return out, skipped
