"""Interventional flow between coalitions: ablate a coalition, measure what changes downstream.

The interaction mass (:mod:`hedonic_neurons.tracking.mass`) reads influence off the weights and
ignores the norms' divisions, attention and every nonlinearity in between. The interventional
flow measures it on the model itself: for a source coalition C of layer l and a target coalition
C' of layer t > l,

    F(C, C') = E_x [ (1/|C'|) · Σ_{q ∈ C'} | a_q(x; C ablated) − a_q(x) | ],

where a_q(x) is neuron q's activation (the input of the down projection) averaged over the
non-pad tokens of input x (``mean`` pooling: one value per input), and "ablated" means every
neuron of C at layer l is reverted to the reference weights (its input rows and output column),
or zeroed, or set to given means.

All coalitions of a layer go through one batched forward per batch of inputs, as in
:func:`hedonic_neurons.neurons.ablation_logits`: the batch is repeated once per coalition (plus
one unablated copy), hooks on layer l's down projection ablate each copy's coalition, the blocks
below l run once and are replayed for every copy, and the forward stops after the last target
layer. Every target layer t (l+1 ... l+h) is read in the same pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from hedonic_neurons.errors import DataError, ModelError
from hedonic_neurons.models.adapters import MLPWeights, check_layer, mlp_modules, n_neurons
from hedonic_neurons.neurons.ablation import (
    MODES,
    prefix_output,
    repeated_forward,
    set_masks,
)
from hedonic_neurons.neurons.recording import HookSet, StopForward, hf_model, model_inputs, pool

__all__ = ["coalition_flow", "interventional_flow", "neuron_flow"]


@torch.no_grad()
def _flow_pass(
    model: nn.Module,
    inputs: dict[str, Any],
    masks: torch.Tensor,
    layer: int,
    targets: list[int],
    mode: str,
    reference: MLPWeights | None,
    means: torch.Tensor | None,
    prefix: Any,
) -> dict[int, torch.Tensor]:
    """Mean-pooled activations (sets, B, n) of every target layer, set r ablated in copy r."""
    mods = mlp_modules(model, layer)
    sets, batch_size = masks.shape[0], inputs["attention_mask"].shape[0]
    pooled: dict[int, torch.Tensor] = {}

    def capture(target: int, rep_mask: torch.Tensor) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            pooled[target] = pool(args[0].float(), rep_mask, "mean")
            if target == targets[-1]:
                raise StopForward

        return hook

    def read_targets(hook_set: HookSet, rep: dict[str, Any]) -> None:
        for target in targets:
            hook_set.pre(mlp_modules(model, target).down, capture(target, rep["attention_mask"]))

    repeated_forward(model, mods, inputs, masks, mode, reference, means, layer, prefix, read_targets)
    return {t: pooled[t].reshape(sets, batch_size, -1) for t in targets}


def neuron_flow(
    model: nn.Module,
    batches: Iterable[Mapping[str, Any]],
    layer: int,
    coalitions: Sequence[Sequence[int]],
    target_layers: Sequence[int],
    *,
    mode: str = "zero",
    reference: MLPWeights | None = None,
    means: torch.Tensor | None = None,
    max_rows: int = 256,
    reuse_prefix: bool = True,
) -> dict[int, np.ndarray]:
    """Per target layer t, the (len(coalitions), n_t) matrix E_x |Δ a_q(x)| when coalition i of
    ``layer`` is ablated (float64); see the module docstring.

    ``mode``: ``"zero"``, ``"reference"`` (needs ``reference``, the layer's reference
    :class:`MLPWeights`) or ``"mean"`` (needs ``means``). ``max_rows``: at most this many
    sequences (copies x inputs) per forward pass. ``reuse_prefix``: run the blocks below ``layer``
    once per batch (same result, faster).
    """
    if mode not in MODES:
        raise ModelError(f"unknown ablation mode '{mode}' (expected one of {', '.join(MODES)})")
    if mode == "resample":
        raise ModelError(
            "neuron_flow does not support mode='resample' (it needs per-input donor fills); "
            "use 'zero', 'mean' or 'reference'"
        )
    layer = check_layer(model, layer)
    targets = sorted({check_layer(model, int(t)) for t in target_layers})
    if not targets or targets[0] <= layer:
        raise ModelError(f"target layers {list(target_layers)} must all come after layer {layer}")
    n = n_neurons(hf_model(model))
    if mode == "reference" and (reference is None or reference.down.shape[1] != n):
        raise ModelError(f"mode='reference' needs layer {layer}'s reference MLPWeights with {n} neurons")
    if mode == "mean" and (means is None or tuple(means.shape) != (n,)):
        raise ModelError(f"mode='mean' needs means of shape ({n},)")
    sums: dict[int, torch.Tensor] = {}
    count = 0
    for batch in batches:
        inputs = model_inputs(batch)
        mask = inputs["attention_mask"]
        batch_size, device = mask.shape[0], mask.device
        masks = set_masks([[], *[list(c) for c in coalitions]], n, device)
        prefix = prefix_output(model, inputs, layer) if reuse_prefix and layer > 0 else None
        per_pass = max(1, int(max_rows) // batch_size)
        base: dict[int, torch.Tensor] = {}
        for start in range(0, masks.shape[0], per_pass):
            got = _flow_pass(
                model,
                inputs,
                masks[start : start + per_pass],
                layer,
                targets,
                mode,
                reference,
                None if means is None else means.to(device),
                prefix,
            )
            for t, acts in got.items():
                if start == 0:
                    base[t], acts = acts[0], acts[1:]
                delta = (acts - base[t]).abs().double().sum(1)  # (sets in this pass, n_t)
                sums.setdefault(t, torch.zeros(len(coalitions), delta.shape[1], dtype=torch.float64))
                first = max(start - 1, 0)
                sums[t][first : first + delta.shape[0]] += delta.cpu()
        count += batch_size
    if count == 0:
        raise DataError("no inputs were given for the interventional flow (empty data)")
    return {t: (s / count).numpy() for t, s in sums.items()}


def coalition_flow(per_neuron: np.ndarray, target_coalitions: Sequence[Sequence[int]]) -> np.ndarray:
    """(sources, targets) flow: the mean of ``per_neuron`` (sources, n_t) over each target coalition."""
    out = np.zeros((per_neuron.shape[0], len(target_coalitions)))
    for j, members in enumerate(target_coalitions):
        idx = np.asarray(list(members), dtype=np.int64)
        if idx.size == 0:
            raise DataError(f"target coalition {j} is empty")
        out[:, j] = per_neuron[:, idx].mean(1)
    return out


def interventional_flow(
    model: nn.Module,
    batches: Iterable[Mapping[str, Any]],
    layer: int,
    source_coalitions: Sequence[Sequence[int]],
    target_coalitions: Mapping[int, Sequence[Sequence[int]]],
    **kwargs: Any,
) -> dict[int, np.ndarray]:
    """F(C, C') for every source coalition of ``layer`` and every target coalition of each layer
    in ``target_coalitions`` (``{t: coalitions}``): ``{t: (sources, targets_t)}``. Keyword
    arguments as in :func:`neuron_flow`."""
    per_neuron = neuron_flow(model, batches, layer, source_coalitions, list(target_coalitions), **kwargs)
    return {t: coalition_flow(per_neuron[t], coals) for t, coals in target_coalitions.items()}
