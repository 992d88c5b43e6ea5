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
    """
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
