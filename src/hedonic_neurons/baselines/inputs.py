"""What the model-based baselines cluster: input-projection rows and activation profiles."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

__all__ = ["activation_profiles", "input_rows"]


def input_rows(weights: Any) -> np.ndarray:
    """Rows of the input projection (n, d_model) as float64: gate rows for gated MLPs, else W_in / up.

    ``weights`` is an :class:`~hedonic_neurons.models.adapters.MLPWeights`.
    """
    rows = weights.gate if weights.gate is not None else weights.up
    return rows.detach().double().cpu().numpy()


def activation_profiles(model: Any, layer: int, batches: Iterable[Mapping[str, Any]]) -> np.ndarray:
    """Neurons x inputs matrix of mean activations (mean over each input's non-pad tokens).

    ``model`` is a Hugging Face model (``NeuronModel.model``); uses
    ``neurons.record(pooling="mean", keep=True)``, so padding never enters.
    """
    import torch

    from hedonic_neurons.errors import DataError
    from hedonic_neurons.neurons import record

    with record(model, [layer], pooling="mean", moments=False, keep=True, stop_after=True) as rec:
        for batch in batches:
            rec(batch)
        kept = rec.kept[rec.layers[0]]
        if not kept:
            raise DataError("no inputs were recorded (empty data): cannot build activation profiles")
        return torch.cat(kept).T.double().cpu().numpy()
