"""Ablation: many neuron sets of one layer ablated in one batched forward pass.

The batch is repeated once per set; hooks on the layer's down projection change, in replica r,
only the neurons of set r:

* ``"reference"``: each neuron i of the set is reverted to the reference weights (its rows of the
  up/gate projection with their biases, and its column of the down projection):
  out += Σ_{i∈S} (a_i^ref W_i^ref − a_i W_i), with a^ref the reference activations of the same MLP
  input (captured by a pre-hook on the up projection);
* ``"zero"``: out −= Σ_{i∈S} a_i W_i;
* ``"mean"``: out += Σ_{i∈S} (m_i − a_i) W_i, m = ``means``;
* ``"resample"``: out += Σ_{i∈S} (ā_i(x') − a_i) W_i on input x, with x' the donor of x and
  ā(x') its token-mean activations (``fills``, one row per input).

Resample ablation replaces what a neuron does on x by what it does on another input x'. The donors
are a fixed pool of inputs (a run uses its training pairs) whose token-mean activations are known;
each test input gets one donor drawn with a seeded generator (:func:`draw_donors`: uniform, with
replacement, reproducible from the seed), the same donor for every neuron of the set, so the set's
joint state is a real state of the model on another input. Token positions do not align across
inputs, so the fill is the donor's token-mean ā_i(x') (the mean over its non-padding tokens), put
at every position of x: the per-position broadcast of ``"mean"``, but with a fill per input, a
(B, n) tensor instead of mean's (n,). With a pool of one input whose token-means equal ``means``,
resample ablation is mean ablation.

The current terms a_i W_i are removed by setting a_i (the input of the down projection) to 0,
m_i or ā_i(x') in a pre-hook, so the module's own weights do it (exact for ``Linear``,
``Conv1D`` and an unmerged LoRA layer alike); the reference terms are added by a forward hook.

The blocks below the ablated layer do not depend on the neuron set, so by default they run once
per batch (unrepeated): their output at the last of them is cached, and in the repeated pass those
blocks are swapped for stand-ins that return the cached output (:class:`_Replay`). Each neuron set
then costs only the blocks from the ablated layer up; the embeddings still run per set (cheap).

The ablated block itself need not run per set either: ablating set S changes the down projection's
output by Δ_S = Σ_{i∈S} (f_i − a_i) W_i (+ Σ a_i^ref W_i^ref under ``"reference"``, with f_i = 0),
a sum over |S| columns, and in the registered architectures that output reaches the block's
output either unchanged through the residual add (pre-LN: block output + Δ_S) or through one norm
after the add (BERT: post_norm(pre-norm sum + Δ_S)); ``ArchSpec.mlp_output`` says which. So block
``layer`` runs once per batch too, with its MLP's input, activations and output captured
(:func:`layer_state`), each set's block output is rebuilt from them (:class:`_DeltaSets`, at most
one down projection's cost per set, for the whole-layer set), and only the blocks above ``layer``
run per set. The columns W_i are read by calling the down module's own ``forward`` on unit
vectors (so a LoRA-wrapped or Conv1D down projection is handled, and no hook fires), and Δ_S is
accumulated in float32 (float64 in a float64 model). An architecture whose ``mlp_output`` is
None, a model in training mode (dropout), a head that reads the ablated layer itself
(``readout="local"``) and a wrapper whose forward bypasses the stand-ins (nnsight's; detected by
the stand-in's call count) take the path above.

:func:`ablate` is the same ablation as a context manager: inside its ``with`` block every use of
the model (a forward, ``generate``, ``output_hidden_states``, a captum attribution, an nnsight
trace) sees the given neurons ablated, for every input row and token. It installs the hooks of
:func:`ablation_hooks`, the one place ablation is implemented, with one neuron set for all rows.
For ``"resample"`` it takes the fills of one fixed batch, and every forward inside the block must
have that batch's rows.
"""

from __future__ import annotations

import operator
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from hedonic_neurons.errors import ConfigError, ModelError, arg
from hedonic_neurons.models.adapters import (
    MLPModules,
    MLPWeights,
    block,
    block_list,
    check_layer,
    mlp_modules,
    n_layers,
    n_neurons,
)
from hedonic_neurons.models.interop import unwrap_model
from hedonic_neurons.neurons.readout import _block_output, local_head, site_hooks
from hedonic_neurons.neurons.recording import (
    HookSet,
    StopForward,
    hf_model,
    hooks,
    model_inputs,
    readout_positions,
    run_forward,
)

MODES = ("reference", "zero", "mean", "resample")
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


def repeat_batch(value: Any, times: int, batch_size: int) -> Any:
    """``value`` with its batch dimension repeated ``times`` (tensors, also inside tuples/lists)."""
    if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == batch_size:
        return value.repeat(times, *([1] * (value.dim() - 1)))
    if isinstance(value, (tuple, list)):
        return type(value)(repeat_batch(v, times, batch_size) for v in value)
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
        self.calls = 0

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.output


@torch.no_grad()
def prefix_output(model: nn.Module, inputs: dict[str, Any], layer: int) -> Any:
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
def replayed_prefix(model: nn.Module, layer: int, output: Any) -> Iterator[list[_Replay]]:
    """Blocks 0..layer-1 swapped for :class:`_Replay` stand-ins returning ``output``; restored on
    exit, also after an exception. Yields the stand-ins (their ``calls`` say whether the forward
    used them: a wrapper that patches the model's forward, like nnsight's, may bypass them)."""
    blocks = block_list(model)
    originals = [blocks[i] for i in range(layer)]
    try:
        stand_ins = [_Replay(original, output) for original in originals]
        for i, stand_in in enumerate(stand_ins):
            blocks[i] = stand_in
        yield stand_ins
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
    model: Any,
    batch: Mapping[str, Any],
    layer: int,
    neuron_sets: Sequence[Sequence[int]] | torch.Tensor,
    *,
    mode: str = "reference",
    reference: MLPWeights | None = None,
    means: torch.Tensor | None = None,
    fills: torch.Tensor | np.ndarray | None = None,
    readout: str = "full",
    norm: bool = True,
    score_token_id: int | None = None,
    max_batch: int | None = None,
    reuse_prefix: bool = True,
    rebuild_layer: bool = True,
    on_pass: Callable[[int], Any] | None = None,
) -> torch.Tensor:
    """Logits with each neuron set of ``layer`` ablated, (len(neuron_sets), B); no gradient.

    ``model``: a :class:`~hedonic_neurons.models.NeuronModel`, a transformers or peft model, or
    one wrapped by nnsight (``NNsight(m)``) or a TransformerLens ``TransformerBridge`` (the
    wrapped module is used).
    ``neuron_sets``: lists of neuron indices (an empty set gives the unablated logit) or a bool
    (sets, n) mask. ``mode``: ``"reference"`` (needs ``reference``, that layer's reference
    :class:`MLPWeights`; default for a NeuronModel: its reference weights), ``"zero"``,
    ``"mean"`` (needs ``means``, (n,)) or ``"resample"`` (needs ``fills``, (B, n): row b the
    token-mean activations of input b's donor, put at every position of input b; the same fill
    for every set). ``readout``: ``"full"``
    (the model's output logit) or ``"local"`` (:func:`local_head` at ``layer`` on the residual right
    after it; the forward stops there). ``norm=False`` drops the head's nonlinearity (linear
    readout). ``score_token_id``: for causal LMs (see :func:`local_head`; default for a
    NeuronModel: its own). ``max_batch``: at most this many rows (sets x inputs) per forward pass;
    default: all sets in one pass. ``reuse_prefix``: run the blocks below ``layer`` once per batch,
    not once per set (same result; see the module docstring). ``rebuild_layer`` (with
    ``reuse_prefix``): where the architecture adds the MLP's output back in a known way
    (``ArchSpec.mlp_output``) and the head reads a later layer, run block ``layer`` once per batch
    too and rebuild its output per set (same result up to float rounding); False runs it per set.
    ``on_pass``: called after each forward pass with the number of sets it finished (progress
    within one call that runs many passes).

    Inside :func:`ablate` the neurons it ablates stay ablated here too; a set may not contain one
    of them (it would be ablated twice).
    """
    model, owner = torch_model_of(model)
    _check_mode(mode)
    if readout not in READOUTS:
        raise ModelError(f"unknown readout '{readout}' (expected one of {', '.join(READOUTS)})")
    layer = check_layer(model, layer)
    n = n_neurons(hf_model(model))
    mods = mlp_modules(model, layer)
    inputs = model_inputs(batch)
    mask = inputs["attention_mask"]
    batch_size, device = mask.shape[0], mask.device
    masks = set_masks(neuron_sets, n, device)
    _check_not_ablated(mods.down, layer, masks.any(0).nonzero().squeeze(1).tolist())
    reference, means = _mode_weights(mode, owner, layer, n, reference, means, device)
    fills = check_fills(mode, fills, batch_size, n, device)
    head_layer = layer if readout == "local" else n_layers(model) - 1
    source = model if owner is None else owner  # a NeuronModel brings its score token
    head = local_head(source, head_layer, norm=norm, score_token_id=score_token_id)
    positions = readout_positions(model, mask)
    per_pass = max(1, len(masks) if not max_batch else int(max_batch) // batch_size)
    if reuse_prefix and rebuild_layer and len(masks) and _layer_is_additive(mods, layer, head_layer):
        state = layer_state(model, mods, inputs, layer, mlp_input=mode == "reference")
        delta = _DeltaSets(state, mods, masks, mode, reference, means, fills)
        out = []
        for start in range(0, len(masks), per_pass):
            got = _delta_pass(
                model, inputs, delta, start, start + per_pass, layer, head_layer, head, positions
            )
            if got is None:  # the forward bypassed the stand-ins: run every block per set below
                break
            out.append(got)
            if on_pass is not None:
                on_pass(got.shape[0])
        else:
            return torch.cat(out, 0)
    prefix = prefix_output(model, inputs, layer) if reuse_prefix and layer > 0 and len(masks) else None
    out = []
    for start in range(0, len(masks), per_pass):
        chunk = masks[start : start + per_pass]
        out.append(
            _ablated_pass(
                model, mods, inputs, chunk, mode, reference, means, layer, head_layer, head, positions,
                prefix, fills,
            )
        )  # fmt: skip
        if on_pass is not None:
            on_pass(len(chunk))
    if not out:
        return torch.zeros(0, batch_size, device=device)
    return torch.cat(out, 0)


def _layer_is_additive(mods: MLPModules, layer: int, head_layer: int) -> bool:
    """Whether a set's block ``layer`` output can be rebuilt from one unablated run of it."""
    how = mods.spec.mlp_output
    known = how == "residual" or (how == "post_norm" and mods.post_norm is not None)
    return known and head_layer > layer and not mods.block.training


@torch.no_grad()
def layer_state(
    model: nn.Module, mods: MLPModules, inputs: Mapping[str, Any], layer: int, *, mlp_input: bool
) -> dict:
    """One unrepeated forward up to block ``layer``'s output (the forward stops there).

    Returns ``out`` (the block's output, as the block returns it), ``a`` (the down projection's
    input, (B, T, n)), ``pre`` for a ``"post_norm"`` block (the post_norm's input) and ``x`` (the
    MLP's input) when ``mlp_input``. Hooks already on the model (an enclosing :func:`ablate`) act
    as usual, so what is captured includes them.
    """
    store: dict[str, Any] = {}

    def keep(key: str) -> Callable[..., None]:
        return lambda module, args: store.__setitem__(key, args[0])

    def stop(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        store["out"] = output
        raise StopForward

    with hooks() as hook_set:
        if mlp_input:
            hook_set.pre(mods.up, keep("x"))
        hook_set.pre(mods.down, keep("a"))
        if mods.spec.mlp_output == "post_norm":
            hook_set.pre(mods.post_norm, keep("pre"))
        hook_set.post(mods.block, stop)
        run_forward(model, inputs)
    return store


def _down_columns(down: nn.Module, cols: torch.Tensor, n: int, dtype: torch.dtype) -> torch.Tensor:
    """(len(cols), d): column i of the down projection's weight for each i in ``cols`` (in
    ``dtype`` or float32 if wider), read through the module's own ``forward`` (linear:
    down(e_i) − down(0)), so no hook fires."""
    weight_like = next(down.parameters(), None)
    device = weight_like.device if weight_like is not None else cols.device
    unit = torch.zeros(len(cols) + 1, n, dtype=dtype, device=device)
    unit[torch.arange(len(cols), device=device), cols.to(device)] = 1
    out = down.forward(unit).to(torch.promote_types(dtype, torch.float32))
    return out[:-1] - out[-1:]


class _DeltaSets:
    """Rebuilds block ``layer``'s output with each neuron set ablated from one :func:`layer_state`.

    Set S adds Δ_S = Σ_{i∈S} (f_i − a_i) W_i (+ a_i^ref W_i^ref under ``"reference"``) to the down
    projection's output, in float32 (or the model's dtype if wider); :meth:`outputs` returns the block outputs of a slice of sets,
    rows set-major (row r·B + b: set r, input b), as the repeated forward expects.
    """

    @torch.no_grad()
    def __init__(self, state: dict, mods: MLPModules, masks: torch.Tensor, mode: str, reference: Any,
                 means: Any, fills: Any) -> None:  # fmt: skip
        self.state, self.mods, self.masks = state, mods, masks
        a = state["a"]
        n = a.shape[-1]
        cols = masks.any(0).nonzero().squeeze(1).to(a.device)
        self.local = torch.full((n,), -1, dtype=torch.long, device=a.device)
        self.local[cols] = torch.arange(len(cols), device=a.device)
        acc = self.acc = torch.promote_types(a.dtype, torch.float32)  # float32 or better
        a_cols = a.index_select(-1, cols).to(acc)
        if mode == "mean":
            fill = means.to(a.device, acc).index_select(0, cols)
        elif mode == "resample":
            fill = fills.to(a.device, acc).index_select(1, cols).reshape(a.shape[0], *[1] * (a.dim() - 2), -1)
        else:
            fill = torch.zeros((), device=a.device)
        self.shift = fill - a_cols  # (B, T, c): f_i − a_i
        self.weight = _down_columns(mods.down, cols, n, a.dtype).to(acc)  # (c, d)
        self.ref_acts = self.ref_weight = None
        if mode == "reference":
            sub = _sub_weights(reference, cols, reference.up.dtype)
            self.ref_acts = sub.activations(state["x"].to(sub.up.dtype)).to(a.device, acc)
            self.ref_weight = sub.down.T.to(a.device, acc)  # (c, d)
        post = mods.spec.mlp_output == "post_norm"
        self.base = state["pre"] if post else _block_output(state["out"])
        self.base_acc = self.base.to(acc)  # converted once, not once per set
        self.norm = mods.post_norm if post else None

    @torch.no_grad()
    def outputs(self, start: int, stop: int) -> tuple[Any, int]:
        rows = []
        for mask in self.masks[start:stop]:
            idx = self.local[mask.to(self.local.device).nonzero().squeeze(1)]
            delta = self.shift.index_select(-1, idx) @ self.weight.index_select(0, idx)
            if self.ref_acts is not None:
                delta = delta + self.ref_acts.index_select(-1, idx) @ self.ref_weight.index_select(0, idx)
            row = (self.base_acc + delta).to(self.base.dtype)
            rows.append(row if self.norm is None else self.norm(row))
        sets, batch_size = len(rows), self.base.shape[0]
        hidden = torch.cat(rows, 0)
        out = self.state["out"]
        if isinstance(out, torch.Tensor):
            return hidden, sets
        return type(out)([hidden, *repeat_batch(tuple(out[1:]), sets, batch_size)]), sets


@torch.no_grad()
def _delta_pass(
    model: nn.Module,
    inputs: dict[str, Any],
    delta: _DeltaSets,
    start: int,
    stop: int,
    layer: int,
    head_layer: int,
    head: Any,
    positions: torch.Tensor,
) -> torch.Tensor:
    """Logits of sets ``start:stop`` with blocks 0..``layer`` replayed from :class:`_DeltaSets`;
    None if the forward did not go through the stand-ins (the result would not be ablated)."""
    output, sets = delta.outputs(start, stop)
    batch_size = positions.shape[0]
    rep = {key: repeat_batch(value, sets, batch_size) for key, value in inputs.items()}
    store: dict[str, torch.Tensor] = {}
    with hooks() as hook_set:
        site_hooks(model, head_layer, hook_set, store)
        with replayed_prefix(model, layer + 1, output) as stand_ins:
            run_forward(model, rep)
    if stand_ins[-1].calls == 0:
        return None
    resid = store["resid"]
    rows = torch.arange(resid.shape[0], device=resid.device)
    return head(resid[rows, positions.repeat(sets)]).reshape(sets, batch_size)


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ModelError(f"unknown ablation mode '{mode}' (expected one of {', '.join(MODES)})")


def _mode_weights(
    mode: str,
    owner: Any,
    layer: int,
    n: int,
    reference: MLPWeights | None,
    means: Any,
    device: Any,
) -> tuple[MLPWeights | None, torch.Tensor | None]:
    """The checked ``(reference, means)`` a mode needs (None where it needs none); ``means`` as a
    tensor on ``device``. A NeuronModel ``owner`` supplies its reference weights by default."""
    if mode == "reference":
        if reference is None and owner is not None:
            reference = owner.reference_mlp_weights(layer)
        if reference is None:
            raise ModelError(
                f"mode='reference' needs the layer's reference weights: pass {arg('reference')}"
                "<the layer's MLPWeights>, or a NeuronModel that has them (loaded with an adapter "
                "or a reference checkpoint); or use mode='zero' / mode='mean'"
            )
        if reference.n_neurons != n or reference.down.shape[1] != n:
            raise ModelError(f"reference weights have {reference.n_neurons} neurons; layer {layer} has {n}")
        return reference, None
    if mode == "mean":
        tensor = None if means is None else torch.as_tensor(means)
        if tensor is None or tuple(tensor.shape) != (n,):
            shape = None if tensor is None else tuple(tensor.shape)
            raise ModelError(
                f"mode='mean' needs means of shape ({n},), got {shape}: pass {arg('means')}"
                "the per-neuron mean activations of the layer"
            )
        if not tensor.is_floating_point():
            tensor = tensor.double()
        return None, tensor.to(device)
    return None, None


def check_fills(mode: str, fills: Any, rows: int | None, n: int, device: Any) -> torch.Tensor | None:
    """The checked per-row fills of ``"resample"`` as a floating-point (rows, n) tensor on
    ``device`` (``rows=None``: any number of rows); None for the other modes, which take none."""
    if mode != "resample":
        if fills is not None:
            raise ModelError(f"{arg('fills')} is only used by mode='resample', got mode='{mode}'")
        return None
    try:
        tensor = None if fills is None else torch.as_tensor(fills)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ModelError(f"mode='resample': fills must be a (rows, {n}) array of numbers ({exc})") from None
    expected = f"({'rows' if rows is None else rows}, {n})"
    fits = tensor is not None and tensor.dim() == 2 and tensor.shape[1] == n
    if not fits or (rows is not None and tensor.shape[0] != rows):
        shape = None if tensor is None else tuple(tensor.shape)
        raise ModelError(
            f"mode='resample' needs fills of shape {expected}, got {shape}: pass {arg('fills')}"
            "one row per input of the batch, the token-mean activations of that input's donor"
        )
    if not tensor.is_floating_point():
        tensor = tensor.double()
    if not bool(torch.isfinite(tensor).all()):
        raise ModelError("mode='resample': fills contain NaN or infinite values; expected finite activations")
    return tensor.to(device)


def draw_donors(n_pool: int, n_inputs: int, seed: Any) -> np.ndarray:
    """(n_inputs,) donor indices into a pool of ``n_pool`` inputs, one per input, drawn uniformly
    with replacement by ``numpy.random.default_rng(seed)`` (``seed``: an int, a sequence of ints
    or a Generator); the same seed gives the same donors."""
    pool, count = _as_int(n_pool), _as_int(n_inputs)
    if pool is None or pool < 1:
        raise ConfigError(f"resample ablation needs a donor pool of at least one input, got {n_pool!r}")
    if count is None or count < 0:
        raise ConfigError(
            f"the number of inputs to draw donors for must be an integer >= 0, got {n_inputs!r}"
        )
    return np.random.default_rng(seed).integers(0, pool, size=count, dtype=np.int64)


def torch_model_of(model: Any) -> tuple[nn.Module, Any]:
    """``(the torch model to hook, the NeuronModel it came from or None)``.

    A NeuronModel gives its ``.model``; anything else goes through
    :func:`~hedonic_neurons.models.interop.unwrap_model` (a transformers or peft model as it is,
    an nnsight wrapper or a TransformerLens ``TransformerBridge`` to the module it wraps).
    """
    inner = None if isinstance(model, nn.Module) else getattr(model, "model", None)
    if isinstance(inner, nn.Module) and callable(getattr(model, "reference_mlp_weights", None)):
        return inner, model
    return unwrap_model(model), None


# Neurons ablated by the ablate() contexts now open, per down-projection module: nested contexts
# must ablate disjoint neurons of a layer (a neuron reverted twice would get its reference
# output twice).
_ABLATED: weakref.WeakKeyDictionary[nn.Module, set[int]] = weakref.WeakKeyDictionary()


def _check_not_ablated(down: nn.Module, layer: int, neurons: Iterable[int]) -> None:
    taken = _ABLATED.get(down, set()) & set(neurons)
    if taken:
        shown = ", ".join(str(i) for i in sorted(taken)[:10]) + (", ..." if len(taken) > 10 else "")
        raise ModelError(
            f"neurons {shown} of layer {layer} are already ablated by an enclosing ablate(): "
            "ablate disjoint neuron sets of a layer (or all of them in one ablate call)"
        )


@contextmanager
def _claimed(down: nn.Module, layer: int, neurons: list[int]) -> Iterator[None]:
    _check_not_ablated(down, layer, neurons)
    taken = _ABLATED.setdefault(down, set())
    taken.update(neurons)
    try:
        yield
    finally:
        taken.difference_update(neurons)
        if not taken:
            _ABLATED.pop(down, None)


def _as_int(value: Any) -> int | None:
    """``value`` as an int if it is an integer (Python, numpy, 0-d tensor; not bool), else None."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (torch.Tensor, np.ndarray)) and value.ndim != 0:
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def _coalition_lists(coalitions: Any) -> list[list[int]]:
    """``coalitions`` (lists of neurons, one flat list, an array, or an object with
    ``.coalitions`` / ``.coalitions_``) as lists of ints."""
    source = coalitions
    if not isinstance(source, (list, tuple, torch.Tensor, np.ndarray)):
        for name in ("coalitions", "coalitions_"):
            if hasattr(source, name):
                source = getattr(source, name)
                break
    if isinstance(source, (torch.Tensor, np.ndarray)):
        source = source.tolist()
    if isinstance(source, (str, bytes, Mapping)) or not isinstance(source, Iterable):
        raise ModelError(
            "coalitions must be neuron ids, lists of neuron ids or a Partition, got "
            f"{type(coalitions).__name__}"
        )
    items = list(source)
    flat = [_as_int(item) for item in items]
    if all(i is not None for i in flat):
        return [[int(i) for i in flat if i is not None]]
    lists: list[list[int]] = []
    for row, item in enumerate(items):
        if isinstance(item, (torch.Tensor, np.ndarray)) and item.ndim:
            item = item.tolist()
        listed = isinstance(item, Iterable) and not isinstance(item, (str, bytes, Mapping))
        ints = [_as_int(v) for v in item] if listed else [None]
        if any(i is None for i in ints):
            raise ModelError(
                f"coalitions: item {row} ({item!r}) is not a list of integer neuron ids; give one "
                "list of neuron ids, a list of such lists, or a Partition"
            )
        lists.append([int(i) for i in ints if i is not None])
    return lists


def _ablated_neurons(coalitions: Any, n: int, layer: int) -> list[int]:
    """All neurons of ``coalitions``, sorted; one error naming every id out of 0..n-1 and every
    id given more than once."""
    lists = _coalition_lists(coalitions)
    width = getattr(coalitions, "n_neurons", None)
    if _as_int(width) is not None and int(width) != n:
        raise ModelError(f"the partition covers {width} neurons but layer {layer} has {n}")
    ids = [i for members in lists for i in members]
    bad = sorted({i for i in ids if not 0 <= i < n})
    seen: set[int] = set()
    twice = sorted({i for i in ids if i in seen or seen.add(i)})
    problems = []
    if bad:
        problems.append(f"{_shown(bad)} outside 0..{n - 1}")
    if twice:
        problems.append(f"{_shown(twice)} given more than once")
    if problems:
        raise ModelError(
            f"neuron ids for layer {layer}: {'; '.join(problems)} (expected distinct ids in 0..{n - 1})"
        )
    return sorted(seen)


def _shown(ids: list[int]) -> str:
    return ", ".join(str(i) for i in ids[:10]) + (f", ... ({len(ids)} in all)" if len(ids) > 10 else "")


@contextmanager
def ablate(
    model: Any,
    layer: int,
    coalitions: Any,
    mode: str = "reference",
    *,
    means: Any = None,
    reference: MLPWeights | None = None,
    fills: Any = None,
) -> Iterator[nn.Module]:
    """Inside the ``with`` block, the neurons of ``coalitions`` at ``layer`` are ablated in every
    use of the model: a forward, ``generate`` (every step, with or without a KV cache), hidden
    states, a captum attribution, an nnsight trace. All given coalitions are ablated at once.

    ``model``: a :class:`~hedonic_neurons.models.NeuronModel`, a transformers or peft model, or
    one wrapped by nnsight or a TransformerLens ``TransformerBridge`` (the hooks go on the wrapped
    module, so the wrapper's own traces and caches see the ablation). ``coalitions``: a list of
    neuron-id lists, one flat list of neuron ids, or an object with a ``.coalitions`` attribute (a
    Partition); ids must be distinct and in ``0..n-1``. ``mode``: ``"reference"`` (each neuron
    reverted to the reference weights: its up/gate rows with their biases and its down column;
    from the NeuronModel, or ``reference``: the layer's reference :class:`MLPWeights`),
    ``"zero"`` (the neuron's activation set to 0), ``"mean"`` (set to ``means[i]``;
    ``means``: (n,) tensor or array) or ``"resample"`` (set, in row b of the batch, to
    ``fills[b, i]``: ``fills`` (B, n), the token-mean activations of each row's donor; every
    forward inside the block must have B rows, else it raises :class:`ModelError`).

    Yields the torch model the hooks are on (``model.model`` for a NeuronModel). The hooks are
    removed on exit, also when the block raises. Contexts nest and compose: other layers, or
    other (disjoint) neurons of the same layer, equal one call with the union. The layer, the
    mode and the neuron ids are checked before anything is installed.

    Usage::

        with ablate(nm, 3, partition.top_k(2), mode="zero") as m:
            out = m.generate(**batch, max_new_tokens=5)
    """
    target, owner = torch_model_of(model)
    _check_mode(mode)
    layer_index = _as_int(layer)
    layer = check_layer(target, layer if layer_index is None else layer_index)
    n = n_neurons(hf_model(target))
    neurons = _ablated_neurons(coalitions, n, layer)
    mods = mlp_modules(target, layer)
    param = next(mods.down.parameters(), None)
    device = param.device if param is not None else None
    weights, mean_values = _mode_weights(mode, owner, layer, n, reference, means, device)
    row_fills = check_fills(mode, fills, None, n, device)
    mask = torch.zeros(1, n, dtype=torch.bool, device=device)
    mask[0, neurons] = True
    with _claimed(mods.down, layer, neurons), hooks() as hook_set:
        if neurons:
            ablation_hooks(hook_set, mods, mask, mask[:, None, :], mode, weights, mean_values, row_fills)
        yield target


def ablation_hooks(
    hook_set: Any,
    mods: Any,
    masks: torch.Tensor,
    row_masks: torch.Tensor,
    mode: str,
    reference: MLPWeights | None,
    means: torch.Tensor | None,
    fills: torch.Tensor | None = None,
) -> None:
    """Register, on ``hook_set``, the hooks that ablate the neurons of ``row_masks`` at one layer.

    ``mods``: the layer's MLP modules; ``masks`` (sets, n) the neuron sets; ``row_masks`` (rows,
    1, n) each batch row's set (a single (1, 1, n) row applies to every row of any batch).
    ``mode="zero"`` / ``"mean"`` / ``"resample"`` replace the masked activations at the down
    projection's input (``means``: the per-neuron means; ``fills`` (rows, n): each batch row's
    fill, put at every position of that row, so a forward must have exactly ``rows`` rows);
    ``"reference"`` also adds the masked neurons' output under the ``reference`` weights, computed
    from the MLP's input for the masked columns only.
    """
    if mode == "resample":
        if fills is None or fills.dim() != 2 or fills.shape[1] != row_masks.shape[-1]:
            shape = None if fills is None else tuple(fills.shape)
            raise ModelError(
                f"mode='resample' needs fills of shape (rows, {row_masks.shape[-1]}), got {shape}: "
                f"pass {arg('fills')}one row per input row, the token-mean activations of its donor"
            )
        if row_masks.shape[0] not in (1, fills.shape[0]):
            raise ModelError(
                f"mode='resample': {fills.shape[0]} fill rows for {row_masks.shape[0]} masked rows; "
                "expected one fill row per batch row"
            )

    def fill_of(a: torch.Tensor) -> torch.Tensor:
        if mode == "mean":
            return means.to(a.dtype)
        if mode != "resample":
            return a.new_zeros(())
        if a.shape[0] != fills.shape[0]:
            raise ModelError(
                f"mode='resample' has fills for {fills.shape[0]} rows but layer input has a batch of "
                f"{a.shape[0]} rows; expected one fill row per row of the batch"
            )
        return fills.to(device=a.device, dtype=a.dtype).reshape(a.shape[0], *[1] * (a.dim() - 2), -1)

    def replace(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        a = args[0]
        return (torch.where(row_masks.to(a.device), fill_of(a), a), *args[1:])

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


def repeated_forward(
    model: nn.Module,
    mods: MLPModules,
    inputs: Mapping[str, Any],
    masks: torch.Tensor,
    mode: str,
    reference: MLPWeights | None,
    means: torch.Tensor | None,
    layer: int,
    prefix: Any,
    install: Callable[[HookSet, dict[str, Any]], None],
    fills: torch.Tensor | None = None,
) -> None:
    """One forward of ``inputs`` repeated once per row of ``masks`` (sets, n): copy r (rows
    r·B .. r·B+B-1) runs with neuron set r of ``layer`` ablated (:func:`ablation_hooks`).
    ``fills`` (B, n): for ``mode="resample"``, input b's fill, used in every copy of input b.

    ``install(hook_set, repeated_inputs)`` registers the caller's reading hooks after the ablation
    hooks. ``prefix``: None, or the output of block ``layer - 1`` on the unrepeated inputs
    (:func:`prefix_output`), replayed for the blocks below ``layer`` instead of running them.
    """
    sets, batch_size = masks.shape[0], inputs["attention_mask"].shape[0]
    rep = {key: repeat_batch(value, sets, batch_size) for key, value in inputs.items()}
    row_masks = masks.repeat_interleave(batch_size, dim=0)[:, None, :]  # (sets*B, 1, n)
    row_fills = None if fills is None else fills.repeat(sets, 1)  # (sets*B, n), row r·B+b: input b
    with hooks() as hook_set:
        ablation_hooks(hook_set, mods, masks, row_masks, mode, reference, means, row_fills)
        install(hook_set, rep)
        if prefix is None:
            run_forward(model, rep)
        else:
            with replayed_prefix(model, layer, repeat_batch(prefix, sets, batch_size)):
                run_forward(model, rep)


@torch.no_grad()
def _ablated_pass(
    model: nn.Module,
    mods: MLPModules,
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
    fills: torch.Tensor | None = None,
) -> torch.Tensor:
    sets, batch_size = masks.shape[0], positions.shape[0]
    store: dict[str, torch.Tensor] = {}

    def read_residual(hook_set: HookSet, rep: dict[str, Any]) -> None:
        site_hooks(model, head_layer, hook_set, store)

    repeated_forward(
        model, mods, inputs, masks, mode, reference, means, layer, prefix, read_residual, fills=fills
    )
    resid = store["resid"]
    rows = torch.arange(resid.shape[0], device=resid.device)
    return head(resid[rows, positions.repeat(sets)]).reshape(sets, batch_size)
