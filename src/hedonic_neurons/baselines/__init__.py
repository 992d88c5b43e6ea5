"""Baseline partitioners: random (size-matched), spherical k-means, hierarchical, phi communities.

Every baseline is a :class:`~hedonic_neurons.partition.Partitioner` registered in
:data:`~hedonic_neurons.partition.PARTITIONERS`. The names below are imported on first use, so
importing this package (``hedonic --help``) loads neither scikit-learn nor scipy.
"""

from __future__ import annotations

import importlib
from typing import Any

DEFAULT_MAX_PARTNERS = 512
"""Default ``max_partners`` of :class:`PhiCommunities` (chosen by measurement, see its docstring)."""

_LAZY = {
    "BACKENDS": "hedonic_neurons.baselines.partitioners",
    "BasePartitioner": "hedonic_neurons.baselines.partitioners",
    "Hierarchical": "hedonic_neurons.baselines.partitioners",
    "PhiCommunities": "hedonic_neurons.baselines.partitioners",
    "RandomPartition": "hedonic_neurons.baselines.partitioners",
    "SphericalKMeans": "hedonic_neurons.baselines.partitioners",
    "positive_partner_graph": "hedonic_neurons.baselines.partitioners",
    "coalitions_from_labels": "hedonic_neurons.partition",
    "PARTITIONERS": "hedonic_neurons.partitioner",
    "Partitioner": "hedonic_neurons.partitioner",
    "partition_layer": "hedonic_neurons.partition",
}

__all__ = ["DEFAULT_MAX_PARTNERS", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
