"""What tracking reads from a model: the weights between two layers and E|a_p|.

Both take a plain Hugging Face model (``NeuronModel.model`` has its adapter merged, so its
``mlp_weights`` are the fine-tuned weights).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

import torch
from torch import nn

from hedonic_neurons.models.adapters import block, check_layer, get_spec, mlp_modules, mlp_weights

__all__ = ["LayerPairWeights", "layer_pair_weights", "mean_abs_activations", "next_norm_scale"]


def next_norm_scale(model: nn.Module, layer: int, target: int | None = None) -> torch.Tensor | None:
    """Scale of the norm(s) between layer ``layer``'s MLP output and layer ``target``'s MLP input
    (``target`` defaults to ``layer + 1``).

    Pre-LN models (LLaMA, Mistral, Qwen2, GPT-NeoX, GPT-2): the residual stream is never
    normalised in place, so whatever the distance it is the weight of layer ``target``'s MLP norm
    (``post_attention_layernorm`` / ``ln_2``). Post-LN BERT: the output passes layer l's output
    LayerNorm, both LayerNorms of every block in between, and layer ``target``'s attention-output
    LayerNorm; their weights multiply. The norms' data-dependent divisions, centring and biases
    are ignored (see ``tracking.mass``).
    """
    target = layer + 1 if target is None else target
    spec = get_spec(model)
    nxt = mlp_modules(model, target)
    if nxt.mlp_norm is not None:
        return nxt.mlp_norm.weight.detach().float()
    scale = None

    def times(weight: torch.Tensor) -> None:
        nonlocal scale
        w = weight.detach().float()
        scale = w if scale is None else scale * w

    path = spec.attn_norm  # post-LN: the LayerNorm inside a block that feeds its MLP (after attention)
    for k in range(layer, target + 1):
        if k > layer and path is not None:  # the attention-output LayerNorm of every later block
            times(attrgetter(path)(block(model, k)).weight)
        own = mlp_modules(model, k).post_norm if k < target else None  # the output LayerNorm
        if own is not None and getattr(own, "weight", None) is not None:
            times(own.weight)
    return scale


@dataclass
class LayerPairWeights:
    """The four inputs of :func:`~hedonic_neurons.tracking.mass.interaction_mass` for layers l, l+1."""

    down: torch.Tensor  # (d, n) layer l
    up_next: torch.Tensor  # (n', d) layer l+1
    gate_next: torch.Tensor | None  # (n', d) layer l+1, gated MLPs only
    norm_scale_next: torch.Tensor | None  # (d,)


def layer_pair_weights(model: nn.Module, layer: int, target: int | None = None) -> LayerPairWeights:
    """Weights linking layer ``layer``'s neurons to layer ``target``'s (default ``layer + 1``;
    detached float32 copies). Beyond the next layer this is the direct path through the residual
    stream: layer l's down projection, the norm scales in between, layer t's input projection."""
    layer = check_layer(model, layer)
    target = check_layer(model, layer + 1 if target is None else target)
    if target <= layer:
        from hedonic_neurons.errors import ModelError

        raise ModelError(f"target layer {target} must come after layer {layer}")
    here, nxt = mlp_weights(model, layer), mlp_weights(model, target)
    return LayerPairWeights(
        down=here.down.detach().float(),
        up_next=nxt.up.detach().float(),
        gate_next=None if nxt.gate is None else nxt.gate.detach().float(),
        norm_scale_next=next_norm_scale(model, layer, target),
    )


def mean_abs_activations(
    model: nn.Module, layers: Sequence[int], batches: Iterable[Mapping[str, Any]]
) -> dict[int, torch.Tensor]:
    """A_p = E|a_p| per layer: the mean absolute activation over every non-pad token (float64).

    This is the one definition of tracking's A_p (``hedonic track`` and ``hedonic run`` both call
    it, through :func:`hedonic_neurons.tracking.run.track_inputs`). The mean is over tokens (each
    non-pad token one sample, so a longer input weighs more), not of the absolute value of a
    per-input mean: a neuron whose sign varies within an input still carries mass. Uses
    ``neurons.record(pooling="tokens", keep=True)`` and takes the kept tokens after every batch
    (:meth:`~hedonic_neurons.neurons.recording.Recorder.take`), so memory stays one batch.
    """
    from hedonic_neurons.neurons import record

    layers = sorted({check_layer(model, int(layer)) for layer in layers})
    sums: dict[int, torch.Tensor] = {}
    count = 0
    with record(model, layers, pooling="tokens", moments=False, keep=True, stop_after=True) as rec:
        for batch in batches:
            rec(batch)
            for layer in layers:
                a = rec.take(layer).abs()
                sums[layer] = sums.get(layer, 0) + a.sum(0)
            count += int(a.shape[0])
    if count == 0:
        from hedonic_neurons.errors import DataError

        raise DataError("no tokens were recorded (empty data): cannot estimate E|a_p|")
    return {layer: s / count for layer, s in sums.items()}
