"""Confidence intervals (over seeds; bootstrap over queries), size matching, statistical power."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from hedonic_neurons.errors import HedonicError


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
    """For each target size, a distinct cluster at least that large, subsampled to that size.

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


# ----------------------------------------------------------------------- intervals over queries


def bootstrap_weights(n_queries: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """(n_boot, n_queries) resampling counts: row b says how often each query was drawn in
    bootstrap sample b (n_queries draws with replacement). Sharing one matrix between quantities
    makes their intervals paired (the same queries resampled for both). With a single query
    there is nothing to resample: the matrix is NaN, so every interval built on it is NaN (not a
    spurious zero-width interval)."""
    if n_queries < 1:
        raise HedonicError("a bootstrap over queries needs at least one query")
    if n_queries < 2:
        return np.full((n_boot, n_queries), np.nan)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_queries, size=(n_boot, n_queries))
    counts = np.zeros((n_boot, n_queries), dtype=np.float64)
    np.add.at(counts, (np.repeat(np.arange(n_boot), n_queries), draws.ravel()), 1.0)
    return counts


def weighted_means(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mean of ``values`` (..., Q) under each row of ``weights`` (B, Q), NaN entries left out:
    (B, ...). A row whose drawn queries are all NaN gives NaN."""
    vals = np.asarray(values, dtype=np.float64)
    valid = np.isfinite(vals)
    num = np.tensordot(weights, np.where(valid, vals, 0.0), axes=([1], [-1]))
    den = np.tensordot(weights, valid.astype(np.float64), axes=([1], [-1]))
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / den


def query_bootstrap(
    effects: np.ndarray, *, n_boot: int = 1000, confidence: float = 0.95, seed: int = 0
) -> dict[str, float]:
    """Mean of per-query ``effects`` and its percentile bootstrap interval, resampling queries.

    ``effects``: (Q,) one value per query, or (R, Q): R resamples of the data the effects depend
    on (e.g. φ estimated on resampled inputs), each measured on the same Q queries. With R > 1
    both levels are resampled: each bootstrap draw picks one of the R rows at random, then Q
    queries with replacement, so the interval includes the variation across resamples. NaN
    entries (a query where the measure is undefined) are left out of each mean. Returns
    ``{"mean", "low", "high", "n"}`` (n: queries).
    """
    arr = np.asarray(effects, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] < 1:
        raise HedonicError(
            f"effects must be (queries,) or (resamples, queries), got shape {np.shape(effects)}"
        )
    if not 0 < confidence < 1:
        raise HedonicError(f"confidence must be in (0, 1), got {confidence}")
    rng = np.random.default_rng(seed)
    n_res, n_q = arr.shape
    weights = bootstrap_weights(n_q, n_boot, seed=int(rng.integers(2**31)))
    rows = rng.integers(0, n_res, size=n_boot) if n_res > 1 else np.zeros(n_boot, dtype=np.int64)
    per_row = weighted_means(arr, weights)  # (B, R)
    boots = per_row[np.arange(n_boot), rows]
    boots = boots[np.isfinite(boots)]
    mean = float(np.nanmean(arr))
    if boots.size == 0:
        return {"mean": mean, "low": float("nan"), "high": float("nan"), "n": int(n_q)}
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(boots, [tail, 100 - tail])
    return {"mean": mean, "low": float(low), "high": float(high), "n": int(n_q)}


def interval_of(boots: np.ndarray, point: float, confidence: float = 0.95) -> dict[str, float]:
    """``{"mean": point, "low", "high"}`` from bootstrap replicates (percentile interval)."""
    b = np.asarray(boots, dtype=np.float64)
    b = b[np.isfinite(b)]
    if b.size == 0:
        return {"mean": float(point), "low": float("nan"), "high": float("nan")}
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(b, [tail, 100 - tail])
    return {"mean": float(point), "low": float(low), "high": float(high)}


def minimal_detectable_difference(sd: float, n: int, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest true mean difference a two-sided test at level ``alpha`` detects with probability
    ``power``, for ``n`` paired observations whose differences have standard deviation ``sd``:
    (z_{1−α/2} + z_{power}) · sd / √n (normal approximation; 2.80 · sd / √n at the defaults)."""
    if n < 1:
        return float("nan")
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    return float(z * sd / np.sqrt(n))
