"""Cross-layer tracking of coalitions (method A11): interaction mass, matching, transition labels.

The numpy / torch core (:func:`interaction_mass`, :func:`track_layers`, :func:`classify_transitions`)
takes plain weight matrices; :mod:`hedonic_neurons.tracking.model` reads them (and E|a_p|) from a
model. Importing this package does not import a model library beyond torch.
"""

from hedonic_neurons.tracking.mass import effective_influence, interaction_mass
from hedonic_neurons.tracking.transitions import (
    LABELS,
    TransitionResult,
    alpha_beta,
    classify_transitions,
    markdown_table,
    track_layers,
    transition_table,
    write_transition_table,
)

__all__ = [
    "LABELS",
    "TransitionResult",
    "alpha_beta",
    "classify_transitions",
    "effective_influence",
    "interaction_mass",
    "markdown_table",
    "track_layers",
    "transition_table",
    "write_transition_table",
]
