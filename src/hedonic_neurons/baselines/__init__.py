"""Baseline partitioners: random, spherical k-means, hierarchical, phi communities (method A14)."""

from hedonic_neurons.baselines.partitioners import (
    BasePartitioner,
    Hierarchical,
    PhiCommunities,
    RandomPartition,
    SphericalKMeans,
    coalitions_from_labels,
    positive_partner_graph,
)

__all__ = [
    "BasePartitioner",
    "Hierarchical",
    "PhiCommunities",
    "RandomPartition",
    "SphericalKMeans",
    "coalitions_from_labels",
    "positive_partner_graph",
]
