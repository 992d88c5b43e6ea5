"""Neurons: recording at the neuron site, streaming statistics, ablation and the readout.

A neuron is one unit of the input to an MLP's down projection. See
:mod:`~hedonic_neurons.neurons.recording`, :mod:`~hedonic_neurons.neurons.stats`,
:mod:`~hedonic_neurons.neurons.readout` and :mod:`~hedonic_neurons.neurons.ablation`
(:func:`ablate`: a context manager inside which the model runs with neurons ablated).
"""

from hedonic_neurons.neurons.ablation import ablate, ablation_logits, set_masks
from hedonic_neurons.neurons.readout import LocalHead, SiteCapture, capture_site, full_logits, local_head
from hedonic_neurons.neurons.recording import (
    InputTokens,
    Recorder,
    TokenRecord,
    model_inputs,
    readout_positions,
    record,
)
from hedonic_neurons.neurons.stats import Moments

__all__ = [
    "InputTokens",
    "LocalHead",
    "Moments",
    "Recorder",
    "SiteCapture",
    "TokenRecord",
    "ablate",
    "ablation_logits",
    "capture_site",
    "full_logits",
    "local_head",
    "model_inputs",
    "readout_positions",
    "record",
    "set_masks",
]
