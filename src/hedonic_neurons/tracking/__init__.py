"""Cross-layer tracking of coalitions: interaction mass between the coalitions of two layers,
labelled by a tracking rule (by default judged against a size-preserving random-partition null).

The numpy / torch core (:func:`interaction_mass`, :func:`mass_batch`, :func:`null_model`,
:func:`track_layers`, :func:`classify_transitions`) takes plain weight matrices;
:mod:`hedonic_neurons.tracking.model` reads them (and E|a_p|) from a model,
:mod:`hedonic_neurons.tracking.flow` measures the interventional flow on a model, and
:mod:`hedonic_neurons.tracking.run` tracks a folder of partitions and writes the outputs. The
labelling rules are :class:`TrackingRule` classes in the :data:`TRACKING_RULES` registry.
Importing this package does not import a model library beyond torch.
"""

from hedonic_neurons.tracking.mass import effective_influence, interaction_mass, mass_batch
from hedonic_neurons.tracking.null import NullModel, classify_null, lifts, null_model
from hedonic_neurons.tracking.rules import TRACKING_RULES, TrackingRule
from hedonic_neurons.tracking.transitions import (
    LABELS,
    TransitionResult,
    alpha_beta,
    classify_transitions,
    markdown_table,
    pair_rows,
    track_layers,
    transition_table,
    write_pair_table,
    write_transition_table,
)

__all__ = [
    "LABELS",
    "TRACKING_RULES",
    "NullModel",
    "TrackingRule",
    "TransitionResult",
    "alpha_beta",
    "classify_null",
    "classify_transitions",
    "effective_influence",
    "interaction_mass",
    "lifts",
    "markdown_table",
    "mass_batch",
    "null_model",
    "pair_rows",
    "track_layers",
    "transition_table",
    "write_pair_table",
    "write_transition_table",
]
