"""Confidence intervals (over seeds; bootstrap over queries), size matching, statistical power."""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

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


_KEEP_REPLICATES = contextvars.ContextVar("keep_replicates", default=False)


@contextmanager
def keep_replicates() -> Iterator[None]:
    """Inside this block :func:`interval_of` also returns its bootstrap replicates (key
    ``"replicates"``, a (B,) array in draw order, NaN kept), so that figures computed on the same
    query draws can be combined afterwards (:func:`mixture_interval`)."""
    token = _KEEP_REPLICATES.set(True)
    try:
        yield
    finally:
        _KEEP_REPLICATES.reset(token)


def interval_of(boots: np.ndarray, point: float, confidence: float = 0.95) -> dict[str, Any]:
    """``{"mean": point, "low", "high"}`` from bootstrap replicates (percentile interval); inside
    :func:`keep_replicates` also ``"replicates"``."""
    raw = np.asarray(boots, dtype=np.float64)
    b = raw[np.isfinite(raw)]
    out: dict[str, Any] = {"mean": float(point), "low": float("nan"), "high": float("nan")}
    if b.size:
        tail = (1 - confidence) / 2 * 100
        low, high = np.percentile(b, [tail, 100 - tail])
        out.update(low=float(low), high=float(high))
    if _KEEP_REPLICATES.get():
        out["replicates"] = raw
    return out


def mixture_interval(
    replicates: Sequence[np.ndarray], points: Sequence[float], *, confidence: float = 0.95, seed: int = 0
) -> dict[str, Any]:
    """An interval over both the φ data and the queries for one figure of a hedonic partition.

    ``replicates[r]``: (B,) query-bootstrap replicates of the figure for the partition fitted on
    φ resample r, every resample on the same B query draws (the same bootstrap weights);
    ``points[r]``: the figure itself on resample r. Replicate b of the mixture is replicate b of
    resample r_b, with r_b drawn uniformly from the R resamples
    (``numpy.random.default_rng(seed).integers(0, R, B)``): a draw of "a partition fitted on other
    φ data, scored on other queries", so the percentile interval holds the between-resample
    spread of the figure and its query variance. Returns ``{"mean"}`` (the mean of the finite
    ``points``), ``"low"``, ``"high"``, ``"n_resamples"``; NaN bounds when no replicate is finite.
    """
    reps = [np.asarray(r, dtype=np.float64).ravel() for r in replicates]
    if len(reps) != len(points):
        raise HedonicError(f"{len(reps)} replicate sets for {len(points)} points; expected one each")
    if not reps:
        nan = float("nan")
        return {"mean": nan, "low": nan, "high": nan, "n_resamples": 0}
    n_boot = {r.size for r in reps}
    if len(n_boot) != 1:
        raise HedonicError(f"the resamples' replicates have lengths {sorted(n_boot)}; expected one length")
    table = np.stack(reps)  # (R, B)
    pick = np.random.default_rng(seed).integers(0, table.shape[0], size=table.shape[1])
    mixed = table[pick, np.arange(table.shape[1])]
    pts = np.asarray(points, dtype=np.float64)
    out = interval_of(
        mixed, float(np.mean(pts[np.isfinite(pts)])) if np.isfinite(pts).any() else np.nan, confidence
    )
    out.pop("replicates", None)
    out["n_resamples"] = int(table.shape[0])
    return out


def weighted_r2(y: np.ndarray, pred: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """R² of ``pred`` against ``y`` (P,) under each row of ``weights`` (B, P) (pair weights, e.g.
    each pair's query's bootstrap count): 1 − Σw(y − p)² / Σw(y − ȳ_w)². (B,); with unit
    weights sklearn's ``r2_score``. NaN throughout for a target with no variance (range at most
    1e-6 of its largest magnitude, the rule of the unweighted R²) and where a row's drawn
    targets are constant."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(pred, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if y.size == 0 or np.ptp(y) <= 1e-6 * np.abs(y).max():
        return np.full(w.shape[0], np.nan)
    centre = (w @ y) / w.sum(1)
    ss_res = w @ (y - p) ** 2
    ss_tot = np.einsum("bp,bp->b", w, (y[None, :] - centre[:, None]) ** 2)
    drawn = w > 0  # the unweighted rule on each draw's own targets
    spread = np.where(drawn, y, -np.inf).max(1) - np.where(drawn, y, np.inf).min(1)
    flat = spread <= 1e-6 * np.where(drawn, np.abs(y), 0.0).max(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((ss_tot > 0) & ~flat, 1.0 - ss_res / ss_tot, np.nan)


def minimal_detectable_difference(sd: float, n: int, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest true mean difference a two-sided test at level ``alpha`` detects with probability
    ``power``, for ``n`` paired observations whose differences have standard deviation ``sd``:
    (z_{1−α/2} + z_{power}) · sd / √n (normal approximation; 2.80 · sd / √n at the defaults)."""
    if n < 1:
        return float("nan")
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    return float(z * sd / np.sqrt(n))
