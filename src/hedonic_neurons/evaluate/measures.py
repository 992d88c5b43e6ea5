"""Effect measures of an ablation that rise with the importance of what is ablated.

Every measure is computed *per query* (the pairs of one query id form a group), so intervals can
resample queries and comparisons between coalitions are paired on the same queries:

* **Δ task loss**: for the regression tasks the change in the query's mean squared error,
  mean_j (o'_j − y_j)² − mean_j (o_j − y_j)²; for reranking (RM) the change in the listwise
  cross-entropy of the query's candidates, CE(o) = −Σ_j p_j log softmax(o)_j with the target
  distribution p_j = y_j / Σ_k y_k (graded relevance; a query without a relevant candidate has no
  target distribution, and its Δ loss is NaN and left out of means).
* **Normalised RMS Δlogit**: sqrt(mean_j (o'_j − o_j)²) / sd(o), the root mean square change of
  the query's outputs, in units of the standard deviation of the unablated outputs over all
  evaluated pairs. It is 0 when nothing changes and grows with any change, whatever its sign.

Here o are the unablated outputs, o' the outputs with a set ablated and y the task targets.
A change |o'_j − o_j| of at most :data:`NOISE_FLOOR` times the RMS of the unablated outputs is
float rounding (two batched passes over the same inputs differ at ~1e-7 relative in float32), not
an effect: it is set to 0 before any measure, so sets that change nothing tie exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.special import log_softmax

from hedonic_neurons.errors import DataError, ModelError

NOISE_FLOOR = 1e-5
"""Output changes up to this fraction of the outputs' RMS are rounding, counted as no change."""


def denoise(base: np.ndarray, ablated: np.ndarray) -> np.ndarray:
    """``ablated`` with every change of at most :data:`NOISE_FLOOR` × RMS(base) set back to base."""
    base = np.asarray(base, dtype=np.float64)
    ablated = np.asarray(ablated, dtype=np.float64)
    tol = NOISE_FLOOR * float(np.sqrt(np.mean(base**2)))
    return np.where(np.abs(ablated - base) <= tol, base, ablated)


def query_index(qids: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """(P,) index of each pair's query in the sorted list of distinct query ids, and that list."""
    names = sorted(set(qids))
    pos = {q: i for i, q in enumerate(names)}
    return np.array([pos[q] for q in qids], dtype=np.int64), names


def _group_mean(values: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """Mean of ``values`` (..., P) within each group: (..., G)."""
    counts = np.bincount(groups, minlength=n_groups).astype(np.float64)
    flat = values.reshape(-1, values.shape[-1])
    sums = np.zeros((flat.shape[0], n_groups))
    for g in range(n_groups):
        sums[:, g] = flat[:, groups == g].sum(1)
    return (sums / np.maximum(counts, 1)).reshape(*values.shape[:-1], n_groups)


def listwise_ce(outputs: np.ndarray, targets: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """Listwise cross-entropy per query (..., G) of ``outputs`` (..., P) against the target
    distribution y / Σy of each query (NaN for a query whose targets sum to 0)."""
    out = np.asarray(outputs, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)
    if (y < 0).any():
        raise DataError("listwise cross-entropy needs non-negative relevance targets")
    lead = out.shape[:-1]
    flat = out.reshape(-1, out.shape[-1])
    ce = np.full((flat.shape[0], n_groups), np.nan)
    for g in range(n_groups):
        sel = groups == g
        total = y[sel].sum()
        if total <= 0:
            continue
        p = y[sel] / total
        ce[:, g] = -(log_softmax(flat[:, sel], axis=1) * p).sum(1)
    return ce.reshape(*lead, n_groups)


def task_loss(
    task: str, outputs: np.ndarray, targets: np.ndarray, groups: np.ndarray, n_groups: int
) -> np.ndarray:
    """Per-query task loss (..., G): listwise cross-entropy for ``rm``, mean squared error else."""
    if task == "rm":
        return listwise_ce(outputs, targets, groups, n_groups)
    return _group_mean((np.asarray(outputs, dtype=np.float64) - targets) ** 2, groups, n_groups)


def output_sd(base: np.ndarray) -> float:
    """Standard deviation of the unablated outputs: the unit of the normalised Δlogit."""
    sd = float(np.std(np.asarray(base, dtype=np.float64)))
    if not sd > 0:
        raise ModelError(
            "the model's output is the same on every evaluated pair; a normalised output change "
            "is undefined (expected outputs that vary across pairs)"
        )
    return sd


def rms_dlogit(
    base: np.ndarray, ablated: np.ndarray, groups: np.ndarray, n_groups: int, sd: float
) -> np.ndarray:
    """Normalised RMS Δlogit per query (..., G): sqrt(mean_j (o'_j − o_j)²) / ``sd``."""
    diff = np.asarray(ablated, dtype=np.float64) - np.asarray(base, dtype=np.float64)
    return np.sqrt(_group_mean(diff**2, groups, n_groups)) / sd


def effect_measures(
    task: str,
    base: np.ndarray,
    ablated: np.ndarray,
    targets: np.ndarray,
    groups: np.ndarray,
    n_groups: int,
    sd: float,
) -> dict[str, np.ndarray]:
    """``{"dloss", "rms"}``: per-query Δ task loss and normalised RMS Δlogit, (K, G) for ablated
    outputs (K, P) against the unablated ``base`` (P,)."""
    ablated = denoise(base, np.atleast_2d(np.asarray(ablated, dtype=np.float64)))
    before = task_loss(task, np.asarray(base, dtype=np.float64), targets, groups, n_groups)
    after = task_loss(task, ablated, targets, groups, n_groups)
    return {"dloss": after - before[None, :], "rms": rms_dlogit(base, ablated, groups, n_groups, sd)}


def correlations(outputs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """Pearson and Spearman correlation of outputs with targets over all pairs (NaN if constant)."""
    from hedonic_neurons.data.metrics import regression_metrics

    m = regression_metrics(targets, outputs)
    return {"pearson": m["pearson"], "spearman": m["spearman"]}
