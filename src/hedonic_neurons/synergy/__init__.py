"""Synergy: the pairwise value φ of one MLP layer's neurons (PAS and OCA).

- :mod:`~hedonic_neurons.synergy.oca`: OCA, (1 − |cos(W_i, W_j)|) · Pearson ρ(a_i, a_j);
- :mod:`~hedonic_neurons.synergy.pas`: PAS, φ = PAS_SIGN · E[ℓ − ℓ_{−i} − ℓ_{−j} + ℓ_{−ij}], exact
  in closed form for the local readout (:mod:`~hedonic_neurons.synergy.heads`), taylor, grad-outer;
- :mod:`~hedonic_neurons.synergy.collect`: streaming, resumable, distributed collection over a
  dataset (``hedonic collect``), with standard errors beside φ;
- :mod:`~hedonic_neurons.synergy.base`: the protocol of a metric (:class:`SynergyMetric`) and the
  registry :data:`METRICS` (a new metric is one file and one registration);
- :mod:`~hedonic_neurons.synergy.api`: one call each, ``oca(model, data, layer)`` and
  ``pas(model, data, layer, mode=..., readout=...)``, and :func:`synergy` (re-exported here) for
  any registered metric. ``oca`` and ``pas`` are imported from ``hedonic_neurons.synergy.api``:
  in this package those names are the modules :mod:`~hedonic_neurons.synergy.oca` and
  :mod:`~hedonic_neurons.synergy.pas`.
"""

import importlib
from typing import Any

# Lazy exports: ``hedonic --help`` imports this package (for its CLI) and must not pull in torch.
_EXPORTS = {
    "METRICS": "base",
    "SynergyMetric": "base",
    "synergy": "api",
    "oca_phi": "oca",
    "oca_se": "oca",
    "orthogonality": "oca",
    **{
        name: "pas"
        for name in (
            "GRAD_OUTER_SIGN",
            "PAS_SIGN",
            "PairSums",
            "exact_local_sum",
            "grad_outer_sum",
            "head_gradients",
            "head_hessians",
            "residual_shifts",
            "taylor_sum",
        )
    },
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"hedonic_neurons.synergy.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'hedonic_neurons.synergy' has no attribute {name!r}")


__all__ = [
    "GRAD_OUTER_SIGN",
    "METRICS",
    "PAS_SIGN",
    "PairSums",
    "SynergyMetric",
    "exact_local_sum",
    "grad_outer_sum",
    "head_gradients",
    "head_hessians",
    "oca_phi",
    "oca_se",
    "orthogonality",
    "residual_shifts",
    "synergy",
    "taylor_sum",
]
