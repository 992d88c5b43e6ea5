"""Orthogonal Co-Activation: φ_OCA(i, j) = (1 − |cos(W_i, W_j)|) · ρ(a_i, a_j).

W_i is column i of the down projection; ρ is the Pearson correlation of the neurons' activations
(from streaming :class:`~hedonic_neurons.neurons.Moments`); a neuron with zero variance has ρ = 0
with everyone. The public code's covariance variant is ``statistic="cov"``.

``hedonic collect`` accumulates the moments with ``accumulate="mixed"`` by default (float32
per-batch products added into float64 sums; |Δρ| ≲ u_fp32 · tokens per batch in the worst case,
not growing with the number of batches; see :mod:`hedonic_neurons.neurons.stats`). Whatever the
accumulation, ρ and φ are formed here in float64.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch

from hedonic_neurons.errors import PhiError

Statistic = Literal["corr", "cov"]


def orthogonality(down: torch.Tensor | np.ndarray) -> torch.Tensor:
    """1 − |cos(W_i, W_j)| for the columns of ``down`` (d, n) -> (n, n), fp64.

    A zero column has cosine 0 with everything (orthogonality 1).
    """
    w = torch.as_tensor(down).detach().to(torch.float64)
    norms = w.norm(dim=0)
    unit = w / torch.where(norms > 0, norms, torch.ones_like(norms))
    return 1.0 - (unit.T @ unit).abs()


def _statistic(stats: Any, statistic: Statistic) -> torch.Tensor:
    if statistic not in ("corr", "cov"):
        raise PhiError(f"unknown OCA statistic '{statistic}' (expected 'corr' or 'cov')")
    if hasattr(stats, "corr") and hasattr(stats, "cov") and callable(stats.corr):
        mat = stats.corr() if statistic == "corr" else stats.cov()
    else:
        mat = stats
    mat = torch.as_tensor(mat).detach().to(torch.float64)
    # np.corrcoef gives NaN for a constant neuron: a zero-variance neuron has ρ = 0 with everyone
    return torch.nan_to_num(mat, nan=0.0)


def oca_phi(stats: Any, down: torch.Tensor | np.ndarray, *, statistic: Statistic = "corr") -> np.ndarray:
    """φ_OCA as a float32 symmetric n × n array with a zero diagonal.

    ``stats``: a Moments-like object (``corr()`` / ``cov()``) or an (n, n) correlation (or
    covariance) matrix; ``down``: the layer's down projection (d, n), columns W_i.

    From :class:`~hedonic_neurons.neurons.Moments`, φ is formed in blocks of rows
    (:meth:`~hedonic_neurons.neurons.Moments.corr_rows`, the cosines of those rows' unit columns
    with all others) straight into the float32 result, in float64, so the memory is the result
    plus the moments and one block: at n = 14,336 forming ρ and the orthogonality as whole
    n × n float64 matrices took 10 GB.
    """
    if statistic not in ("corr", "cov"):
        raise PhiError(f"unknown OCA statistic '{statistic}' (expected 'corr' or 'cov')")
    if not hasattr(stats, "corr_rows"):
        return _oca_phi_dense(stats, down, statistic)
    w = torch.as_tensor(down).detach()
    n = int(stats.n)
    if w.ndim != 2 or w.shape[1] != n:
        raise PhiError(
            f"OCA statistics are ({n}, {n}) but the down projection has shape {tuple(w.shape)}; "
            "expected the same number of neurons (columns)"
        )
    device = stats.sum.device
    w = w.to(device=device, dtype=torch.float64)
    norms = w.norm(dim=0)
    unit = w / torch.where(norms > 0, norms, torch.ones_like(norms))
    phi = torch.empty(n, n, dtype=torch.float32, device=device)
    step = max(1, BLOCK_ELEMENTS // max(n, 1))
    for start in range(0, n, step):
        rows = slice(start, min(start + step, n))
        mat = stats.corr_rows(rows) if statistic == "corr" else stats.cov_rows(rows)
        mat = torch.nan_to_num(mat, nan=0.0)
        mat.mul_(1.0 - (unit[:, rows].T @ unit).abs_())
        phi[rows] = mat
    phi = _symmetrise(phi)
    return phi.cpu().numpy()


def oca_se(
    stats: Any, down: torch.Tensor | np.ndarray, n_samples: int, *, statistic: Statistic = "corr"
) -> np.ndarray:
    """Standard errors of :func:`oca_phi`'s entries, float32 n × n, symmetric, zero diagonal.

    φ = o_ij · s_ij with o_ij = 1 − |cos(W_i, W_j)| fixed, so se(φ_ij) = o_ij · se(s_ij), the
    sampling error of the statistic from ``n_samples`` independent samples, by normal theory:

    - ``corr``: the delta method on Fisher's z = atanh ρ, whose variance is 1/(N − 3):
      se(ρ) = (1 − ρ²)/√(N − 3) (needs N ≥ 4);
    - ``cov``: Var(s_ij) = (σ_i² σ_j² + σ_ij²)/(N − 1) (needs N ≥ 2).

    The caller chooses N. ``hedonic collect`` passes the number of inputs, not of tokens: the
    inputs are the independent samples, the tokens of one input are not. Measured against a
    bootstrap over inputs (300 resamples; MiniLM layer 3, 64 neurons, 200 demo inputs, 7,474
    tokens), the ratio se / bootstrap sd over the pairs is, as 5 / 50 / 95 % quantiles:

    - one sample per input (``pooling="mean"``): 0.77 / 1.05 / 1.37, i.e. right;
    - ``pooling="tokens"`` with N = inputs: 2.4 / 4.6 / 8.2, i.e. conservative (the tokens carry
      more information than one sample per input);
    - for comparison, N = tokens would give 0.38 / 0.74 / 1.33 and N = tokens over a Kish design
      effect 1 + (m − 1)·ICC_i·ICC_j from per-neuron intraclass correlations 0.44 / 0.83 / 1.42:
      too small for many pairs (within-input dependence and heavy-tailed token activations,
      which normal theory ignores), so neither is used. Batch means (the spread of ρ over
      groups of 4 inputs, 50 groups) gave 0.76 / 1.2 / 1.76, but forming each group's ρ costs
      about 12 n × n passes per layer and group, +50% on MiniLM's OCA at 16 inputs per group,
      so it is not done here.

    So with token pooling these standard errors are upper bounds of roughly 2-8x: a threshold
    of z standard errors on them is stricter than it says. Memory: the result plus one block,
    as in :func:`oca_phi`.
    """
    if statistic not in ("corr", "cov"):
        raise PhiError(f"unknown OCA statistic '{statistic}' (expected 'corr' or 'cov')")
    least = 4 if statistic == "corr" else 2
    if n_samples < least:
        raise PhiError(
            f"a standard error of OCA ({statistic}) needs at least {least} independent samples, "
            f"got {n_samples}"
        )
    w = torch.as_tensor(down).detach()
    if not hasattr(stats, "corr_rows"):  # a given (n, n) matrix; no variances for cov
        if statistic != "corr":
            raise PhiError("the standard error of the cov statistic needs Moments, not a matrix")
        rho = _statistic(stats, statistic)
        orth = orthogonality(w).to(rho.device)
        se = orth * (1.0 - rho * rho) / math.sqrt(n_samples - 3)
        se = 0.5 * (se + se.T)
        se.fill_diagonal_(0.0)
        return se.to(torch.float32).cpu().numpy()
    n = int(stats.n)
    device = stats.sum.device
    w = w.to(device=device, dtype=torch.float64)
    norms = w.norm(dim=0)
    unit = w / torch.where(norms > 0, norms, torch.ones_like(norms))
    var = None
    if statistic == "cov":  # the diagonal of cov_rows, without an n × n matrix
        count = int(stats.count)
        mean = stats.sum / count
        var = (stats.outer.diagonal() - count * mean * mean).clamp_(min=0.0) / (count - 1)
    se = torch.empty(n, n, dtype=torch.float32, device=device)
    step = max(1, BLOCK_ELEMENTS // max(n, 1))
    for start in range(0, n, step):
        rows = slice(start, min(start + step, n))
        if statistic == "corr":
            mat = torch.nan_to_num(stats.corr_rows(rows), nan=0.0)
            mat = mat.mul_(mat).neg_().add_(1.0).div_(math.sqrt(n_samples - 3))
        else:
            cov = stats.cov_rows(rows, ddof=1)
            mat = (cov * cov + var[rows, None] * var[None, :]).clamp_(min=0.0).div_(n_samples - 1).sqrt_()
        mat.mul_(1.0 - (unit[:, rows].T @ unit).abs_())
        se[rows] = mat
    se = _symmetrise(se)
    return se.cpu().numpy()


#: Entries of one float64 block of :func:`oca_phi` (32 MiB).
BLOCK_ELEMENTS = 1 << 22


def _symmetrise(phi: torch.Tensor, tile: int = 1024) -> torch.Tensor:
    """(φ + φᵀ) / 2 in place, tile by tile, with a zero diagonal."""
    n = phi.shape[0]
    for bi in range(0, n, tile):
        for bj in range(bi, n, tile):
            upper = phi[bi : bi + tile, bj : bj + tile]
            lower = phi[bj : bj + tile, bi : bi + tile]
            avg = 0.5 * (upper + lower.T)
            upper.copy_(avg)
            lower.copy_(avg.T)
    phi.fill_diagonal_(0.0)
    return phi


def _oca_phi_dense(stats: Any, down: torch.Tensor | np.ndarray, statistic: Statistic) -> np.ndarray:
    """:func:`oca_phi` from a given (n, n) correlation or covariance matrix."""
    mat = _statistic(stats, statistic)
    orth = orthogonality(down).to(mat.device)
    if mat.shape != orth.shape:
        raise PhiError(
            f"OCA statistics are {tuple(mat.shape)} but the down projection has {orth.shape[0]} columns; "
            "expected the same number of neurons"
        )
    phi = orth * mat
    phi = 0.5 * (phi + phi.T)
    phi.fill_diagonal_(0.0)
    return phi.to(torch.float32).cpu().numpy()
