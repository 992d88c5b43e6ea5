"""Ablation (method A2): many neuron sets of one layer ablated in one batched forward pass.

The batch is repeated once per set; hooks on the layer's down projection change, in replica r,
only the neurons of set r:

* ``"reference"``: each neuron i of the set is reverted to the reference weights (its rows of the
  up/gate projection with their biases, and its column of the down projection):
  out += Σ_{i∈S} (a_i^ref W_i^ref − a_i W_i), with a^ref the reference activations of the same MLP
  input (captured by a pre-hook on the up projection);
* ``"zero"``: out −= Σ_{i∈S} a_i W_i;
* ``"mean"``: out += Σ_{i∈S} (m_i − a_i) W_i, m = ``means``.

The current terms a_i W_i are removed by setting a_i (the input of the down projection) to 0 or
m_i in a pre-hook, so the module's own weights do it (exact for ``Linear``, ``Conv1D`` and an
unmerged LoRA layer alike); the reference terms are added by a forward hook.

The blocks below the ablated layer do not depend on the neuron set, so by default they run once
per batch (unrepeated): their output at the last of them is cached, and in the repeated pass those
blocks are swapped for stand-ins that return the cached output (:class:`_Replay`). Each neuron set
then costs only the blocks from the ablated layer up; the embeddings still run per set (cheap).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from hedonic_neurons.errors import ModelError
from hedonic_neurons.models.adapters import (
    MLPWeights,
    block,
    block_list,
    check_layer,
    mlp_modules,
    n_layers,
    n_neurons,
)
from hedonic_neurons.neurons.readout import local_head, site_hooks
from hedonic_neurons.neurons.recording import (
    StopForward,
    hf_model,
    hooks,
    model_inputs,
    readout_positions,
    run_forward,
)

MODES = ("reference", "zero", "mean")
READOUTS = ("full", "local")


def set_masks(
    neuron_sets: Sequence[Sequence[int]] | torch.Tensor, n: int, device: Any = None
) -> torch.Tensor:
    """Neuron sets as a boolean (len(sets), n) mask; a bool tensor of that shape passes through."""
    if isinstance(neuron_sets, torch.Tensor) and neuron_sets.dtype == torch.bool:
        if neuron_sets.dim() != 2 or neuron_sets.shape[1] != n:
            raise ModelError(f"neuron-set masks must be (sets, {n}), got shape {tuple(neuron_sets.shape)}")
        return neuron_sets.to(device)
    masks = torch.zeros(len(neuron_sets), n, dtype=torch.bool)
    for row, members in enumerate(neuron_sets):
        idx = torch.as_tensor(list(members), dtype=torch.long)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
            raise ModelError(f"neuron set {row} has index {list(members)} outside 0..{n - 1}")
        masks[row, idx] = True
    return masks.to(device)


def _repeat(value: Any, times: int, batch_size: int) -> Any:
    """``value`` with its batch dimension repeated ``times`` (tensors, also inside tuples/lists)."""
    if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == batch_size:
        return value.repeat(times, *([1] * (value.dim() - 1)))
    if isinstance(value, (tuple, list)):
        return type(value)(_repeat(v, times, batch_size) for v in value)
    return value


class _Replay(nn.Module):
    """Stands in for a block below the ablated layer: returns a cached output, computes nothing.

    The block's plain attributes (``attention_type``, ``layer_idx``...) are copied, because some
    models read them in their layer loop.
    """

    def __init__(self, original: nn.Module, output: Any) -> None:
        super().__init__()
        for key, value in vars(original).items():
            if not key.startswith("_") and key != "training":
                object.__setattr__(self, key, value)
        self.output = output

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.output


@torch.no_grad()
def _prefix_output(model: nn.Module, inputs: dict[str, Any], layer: int) -> Any:
    """Output of block ``layer - 1`` on the unrepeated batch (the forward stops there)."""
    store: dict[str, Any] = {}

    def save(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        store["out"] = output
        raise StopForward

    with hooks() as hook_set:
        hook_set.post(block(model, layer - 1), save)
        run_forward(model, inputs)
    return store["out"]


@contextmanager
def _replayed_prefix(model: nn.Module, layer: int, output: Any) -> Iterator[None]:
    """Blocks 0..layer-1 swapped for :class:`_Replay` stand-ins returning ``output``; restored on
    exit, also after an exception."""
    blocks = block_list(model)
    originals = [blocks[i] for i in range(layer)]
    try:
        for i, original in enumerate(originals):
            blocks[i] = _Replay(original, output)
        yield
    finally:
        for i, original in enumerate(originals):
            blocks[i] = original


def _sub_weights(reference: MLPWeights, cols: torch.Tensor, dtype: torch.dtype) -> MLPWeights:
    def rows(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.detach().index_select(0, cols.to(t.device)).to(dtype)

    return MLPWeights(
        up=rows(reference.up),
        down=reference.down.detach().index_select(1, cols.to(reference.down.device)).to(dtype),
        act=reference.act,
        gate=rows(reference.gate),
        up_bias=rows(reference.up_bias),
        gate_bias=rows(reference.gate_bias),
    )


def ablation_logits(
    model: nn.Module,
    batch: Mapping[str, Any],
    layer: int,
    neuron_sets: Sequence[Sequence[int]] | torch.Tensor,
    *,
    mode: str = "reference",
    reference: MLPWeights | None = None,
    means: torch.Tensor | None = None,
    readout: str = "full",
    norm: bool = True,
    score_token_id: int | None = None,
    max_batch: int | None = None,
    reuse_prefix: bool = True,
) -> torch.Tensor:
    """Logits with each neuron set of ``layer`` ablated, (len(neuron_sets), B); no gradient.

    ``neuron_sets``: lists of neuron indices (an empty set gives the unablated logit) or a bool
    (sets, n) mask. ``mode``: ``"reference"`` (needs ``reference``, that layer's reference
    :class:`MLPWeights`), ``"zero"`` or ``"mean"`` (needs ``means``, (n,)). ``readout``: ``"full"``
    (the model's output logit) or ``"local"`` (:func:`local_head` at ``layer`` on the residual right
    after it; the forward stops there). ``norm=False`` drops the head's nonlinearity (linear
    readout). ``score_token_id``: for causal LMs (see :func:`local_head`). ``max_batch``: at most
    this many rows (sets x inputs) per forward pass; default: all sets in one pass.
    ``reuse_prefix``: run the blocks below ``layer`` once per batch, not once per set (same
    result; see the module docstring).
    """
    if mode not in MODES:
        raise ModelError(f"unknown ablation mode '{mode}' (expected one of {', '.join(MODES)})")
    if readout not in READOUTS:
        raise ModelError(f"unknown readout '{readout}' (expected one of {', '.join(READOUTS)})")
    layer = check_layer(model, layer)
    n = n_neurons(hf_model(model))
    mods = mlp_modules(model, layer)
    inputs = model_inputs(batch)
    mask = inputs["attention_mask"]
    batch_size, device = mask.shape[0], mask.device
    masks = set_masks(neuron_sets, n, device)
    if mode == "reference":
        if reference is None:
            raise ModelError("mode='reference' needs the layer's reference MLPWeights (reference=...)")
        if reference.n_neurons != n or reference.down.shape[1] != n:
            raise ModelError(f"reference weights have {reference.n_neurons} neurons; layer {layer} has {n}")
    if mode == "mean":
        if means is None or tuple(means.shape) != (n,):
            shape = None if means is None else tuple(means.shape)
            raise ModelError(f"mode='mean' needs means of shape ({n},), got {shape}")
        means = means.to(device)
    head_layer = layer if readout == "local" else n_layers(model) - 1
    head = local_head(model, head_layer, norm=norm, score_token_id=score_token_id)
    positions = readout_positions(model, mask)
    per_pass = max(1, len(masks) if not max_batch else int(max_batch) // batch_size)
    prefix = _prefix_output(model, inputs, layer) if reuse_prefix and layer > 0 and len(masks) else None
    out = [
        _ablated_pass(
            model,
            mods,
            inputs,
            masks[start : start + per_pass],
            mode,
            reference,
            means,
            layer,
            head_layer,
            head,
            positions,
            prefix,
        )
        for start in range(0, len(masks), per_pass)
    ]
    if not out:
        return torch.zeros(0, batch_size, device=device)
    return torch.cat(out, 0)


def ablation_hooks(
    hook_set: Any,
    mods: Any,
    masks: torch.Tensor,
    row_masks: torch.Tensor,
    mode: str,
    reference: MLPWeights | None,
    means: torch.Tensor | None,
) -> None:
    """Register, on ``hook_set``, the hooks that ablate the neurons of ``row_masks`` at one layer.

    ``mods``: the layer's MLP modules; ``masks`` (sets, n) the neuron sets; ``row_masks`` (rows,
    1, n) each batch row's set. ``mode="zero"`` / ``"mean"`` replace the masked activations at
    the down projection's input (``means``: the per-neuron means); ``"reference"`` also adds
    the masked neurons' output under the ``reference`` weights, computed from the MLP's input
    for the masked columns only.
    """

    def replace(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        a = args[0]
        fill = means.to(a.dtype) if mode == "mean" else a.new_zeros(())
        return (torch.where(row_masks.to(a.device), fill, a), *args[1:])

    if mode != "reference":
        hook_set.pre(mods.down, replace)
        return
    store: dict[str, torch.Tensor] = {}
    cols = masks.any(0).nonzero().squeeze(1)
    sub = _sub_weights(reference, cols, reference.up.dtype)
    col_masks = row_masks[..., cols].to(sub.up.dtype)

    def reference_acts(module: nn.Module, args: tuple[Any, ...]) -> None:
        store["a_ref"] = sub.activations(args[0].to(sub.up.dtype)) * col_masks

    def add_reference(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        return output + torch.nn.functional.linear(store.pop("a_ref"), sub.down).to(output.dtype)

    hook_set.pre(mods.up, reference_acts)
    hook_set.pre(mods.down, replace)
    hook_set.post(mods.down, add_reference)


@torch.no_grad()
def _ablated_pass(
    model: nn.Module,
    mods: Any,
    inputs: dict[str, Any],
    masks: torch.Tensor,
    mode: str,
    reference: MLPWeights | None,
    means: torch.Tensor | None,
    layer: int,
    head_layer: int,
    head: Any,
    positions: torch.Tensor,
    prefix: Any = None,
) -> torch.Tensor:
    sets, batch_size = masks.shape[0], positions.shape[0]
    rep = {key: _repeat(value, sets, batch_size) for key, value in inputs.items()}
    row_masks = masks.repeat_interleave(batch_size, dim=0)[:, None, :]  # (sets*B, 1, n)
    store: dict[str, torch.Tensor] = {}
    with hooks() as hook_set:
        ablation_hooks(hook_set, mods, masks, row_masks, mode, reference, means)
        site_hooks(model, head_layer, hook_set, store)
        if prefix is None:
            run_forward(model, rep)
        else:
            with _replayed_prefix(model, layer, _repeat(prefix, sets, batch_size)):
                run_forward(model, rep)
    resid = store["resid"]
    rows = torch.arange(resid.shape[0], device=resid.device)
    return head(resid[rows, positions.repeat(sets)]).reshape(sets, batch_size)
