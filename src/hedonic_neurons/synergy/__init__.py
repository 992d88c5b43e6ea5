"""Synergy: the pairwise value φ of one MLP layer's neurons (method A4–A6).

- :mod:`~hedonic_neurons.synergy.oca`: OCA, (1 − |cos(W_i, W_j)|) · Pearson ρ(a_i, a_j);
- :mod:`~hedonic_neurons.synergy.pas`: PAS, φ = PAS_SIGN · E[ℓ − ℓ_{−i} − ℓ_{−j} + ℓ_{−ij}], exact
  in closed form for the local readout (:mod:`~hedonic_neurons.synergy.heads`), taylor, grad-outer;
- :mod:`~hedonic_neurons.synergy.collect`: streaming, resumable, distributed collection over a
  dataset (``hedonic collect``).
"""

from hedonic_neurons.synergy.oca import oca_phi, orthogonality
from hedonic_neurons.synergy.pas import (
    GRAD_OUTER_SIGN,
    PAS_SIGN,
    PairSums,
    exact_local_sum,
    grad_outer_sum,
    head_gradients,
    head_hessians,
    residual_shifts,
    taylor_sum,
)

__all__ = [
    "GRAD_OUTER_SIGN",
    "PAS_SIGN",
    "PairSums",
    "exact_local_sum",
    "grad_outer_sum",
    "head_gradients",
    "head_hessians",
    "oca_phi",
    "orthogonality",
    "residual_shifts",
    "taylor_sum",
]
