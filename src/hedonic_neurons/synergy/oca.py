"""Orthogonal Co-Activation (method A6): φ_OCA(i, j) = (1 − |cos(W_i, W_j)|) · ρ(a_i, a_j).

W_i is column i of the down projection; ρ is the Pearson correlation of the neurons' activations
(from streaming :class:`~hedonic_neurons.neurons.Moments`); a neuron with zero variance has ρ = 0
with everyone. The public code's covariance variant is ``statistic="cov"``.

``hedonic collect`` accumulates the moments with ``accumulate="mixed"`` by default (float32
per-batch products added into float64 sums; |Δρ| ≲ u_fp32 · tokens per batch in the worst case,
not growing with the number of batches; see :mod:`hedonic_neurons.neurons.stats`). Whatever the
accumulation, ρ and φ are formed here in float64.
"""

from __future__ import annotations

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
    # np.corrcoef gives NaN for a constant neuron: A6 says ρ = 0 with everyone
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
