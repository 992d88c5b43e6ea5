"""Recording neuron activations at the neuron site (the input of the MLP's down projection).

Activations are captured with a forward pre-hook on the down projection, which is the same for
``Linear``, GPT-2 ``Conv1D`` and peft-wrapped (LoRA) modules. Hooks live in context managers and
are removed in ``finally``, also when the forward raises. Padding never enters a statistic: every
pooling uses ``attention_mask``.

Left padding: if a batch has no ``position_ids``, :func:`model_inputs` adds them from the
attention mask (``cumsum(mask) - 1``, as ``generate`` does), so a padded input gets the same
activations as the same input alone, whichever side the padding is on. Every function of this
package runs the model on ``model_inputs(batch)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from hedonic_neurons.errors import DataError, ModelError
from hedonic_neurons.models.adapters import check_layer, get_spec, mlp_modules, n_neurons
from hedonic_neurons.neurons.stats import Moments

POOLINGS = ("tokens", "mean", "last")


# ----------------------------------------------------------------------------------------------
# shared helpers (also used by readout.py and ablation.py)


class StopForward(Exception):
    """Raised by a hook to end a forward pass once the needed layer has run."""


class HookSet:
    """The hook handles one context registered; ``remove()`` removes exactly those."""

    def __init__(self) -> None:
        self.handles: list[Any] = []

    def pre(self, module: nn.Module, fn: Callable[..., Any]) -> None:
        self.handles.append(module.register_forward_pre_hook(fn))

    def post(self, module: nn.Module, fn: Callable[..., Any]) -> None:
        self.handles.append(module.register_forward_hook(fn))

    def remove(self) -> None:
        while self.handles:
            self.handles.pop().remove()


@contextmanager
def hooks() -> Iterator[HookSet]:
    """A :class:`HookSet` whose handles are removed on exit, also after an exception."""
    hook_set = HookSet()
    try:
        yield hook_set
    finally:
        hook_set.remove()


def hf_model(model: nn.Module) -> nn.Module:
    """The Hugging Face model, also through a peft wrapper."""
    if hasattr(model, "peft_config") and hasattr(model, "get_base_model"):
        return model.get_base_model()
    return model


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def attention_mask_of(batch: Mapping[str, Any]) -> torch.Tensor:
    mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
    if mask is None:
        raise DataError(
            "the batch has no 'attention_mask': padding could not be excluded (expected a dict "
            "with input_ids and attention_mask, as a tokenizer returns)"
        )
    if mask.dim() != 2:
        raise DataError(f"attention_mask must be (batch, tokens), got shape {tuple(mask.shape)}")
    return mask


def model_inputs(batch: Mapping[str, Any]) -> dict[str, Any]:
    """The batch as model keyword arguments, with ``position_ids`` from the attention mask if absent.

    Position ids count the non-pad tokens (``cumsum(mask) - 1``, pads clamped to 0), so left padding
    does not shift the positions of the real tokens (the default ``arange`` would).
    """
    mask = attention_mask_of(batch)
    inputs = dict(batch)
    if inputs.get("position_ids") is None:
        inputs["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0)
    return inputs


def run_forward(model: nn.Module, inputs: Mapping[str, Any]) -> Any:
    """``model(**inputs)``; None if a hook stopped the forward early with :class:`StopForward`."""
    try:
        return model(**inputs)
    except StopForward:
        return None


def readout_positions(model: nn.Module, attention_mask: torch.Tensor) -> torch.Tensor:
    """The token the head reads, per input, (B,) long.

    Decoders (LLaMA, Mistral, Qwen2, GPT-NeoX, GPT-2): the last non-pad token, under left or right
    padding. BERT: the CLS token, i.e. the first non-pad token (position 0 under right padding).
    """
    mask = attention_mask.to(torch.long)
    idx = torch.arange(mask.shape[-1], device=mask.device)
    if get_spec(hf_model(model)).post_norm is not None:  # BERT-like encoder: CLS
        return (mask * (mask.shape[-1] - idx)).argmax(-1)
    return (mask * idx).argmax(-1)


def check_layers(model: nn.Module, layers: int | Sequence[int]) -> list[int]:
    if isinstance(layers, int):
        layers = [layers]
    return sorted({check_layer(model, int(layer)) for layer in layers})


def pool(
    a: torch.Tensor, mask: torch.Tensor, pooling: str, positions: torch.Tensor | None = None
) -> torch.Tensor:
    """Pool activations ``a`` (B, T, n) over the non-pad tokens: (N_tokens, n) or (B, n)."""
    if pooling == "tokens":
        return a[mask.bool()]
    if pooling == "mean":
        m = mask.to(a.dtype)
        return (a * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1)
    if pooling == "last":
        return a[torch.arange(a.shape[0], device=a.device), positions]
    raise DataError(f"unknown pooling '{pooling}' (expected one of {', '.join(POOLINGS)})")


# ----------------------------------------------------------------------------------------------
# recording


class Recorder:
    """Runs the model on batches and feeds the captured activations of each recorded layer into
    :class:`Moments` (``moments[layer]``) and, with ``keep=True``, ``kept[layer]`` (one pooled
    tensor per batch). Made by :func:`record`; only usable inside its ``with`` block."""

    def __init__(
        self,
        model: nn.Module,
        layers: list[int],
        pooling: str,
        moments: bool,
        keep: bool,
        dtype: torch.dtype,
        stop_after: bool,
    ) -> None:
        if pooling not in POOLINGS:
            raise DataError(f"unknown pooling '{pooling}' (expected one of {', '.join(POOLINGS)})")
        self.model = model
        self.layers = layers
        self.pooling = pooling
        self.dtype = dtype
        self.stop_after = stop_after
        device = model_device(model)
        n = n_neurons(hf_model(model))
        self.moments: dict[int, Moments] = (
            {layer: Moments(n, dtype=dtype, device=device) for layer in layers} if moments else {}
        )
        self.kept: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers} if keep else {}
        self._mask: torch.Tensor | None = None
        self._positions: torch.Tensor | None = None
        self._active = False

    def _hook(self, layer: int) -> Callable[..., None]:
        last = layer == self.layers[-1]

        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            if self._mask is None:
                raise ModelError(
                    "the model was called directly inside record(); run batches with rec(batch) "
                    "so that padding can be excluded"
                )
            a = args[0].detach().to(self.dtype)
            pooled = pool(a, self._mask, self.pooling, self._positions)
            if self.moments:
                self.moments[layer].update(pooled)
            if self.kept:
                self.kept[layer].append(pooled)
            if last and self.stop_after:
                raise StopForward

        return hook

    @torch.no_grad()
    def __call__(self, batch: Mapping[str, Any]) -> Any:
        """Run the model (no gradient) on ``batch`` and record; returns the model output (None with
        ``stop_after=True``: the forward ends after the last recorded layer)."""
        if not self._active:
            raise ModelError("this Recorder is closed: use it inside its 'with record(...)' block")
        inputs = model_inputs(batch)
        self._mask = inputs["attention_mask"]
        self._positions = readout_positions(self.model, self._mask) if self.pooling == "last" else None
        try:
            return run_forward(self.model, inputs)
        finally:
            self._mask = self._positions = None


@contextmanager
def record(
    model: nn.Module,
    layers: int | Sequence[int],
    *,
    pooling: str = "tokens",
    moments: bool = True,
    keep: bool = False,
    dtype: torch.dtype = torch.float64,
    stop_after: bool = False,
) -> Iterator[Recorder]:
    """Record neuron activations (input of the down projection) at ``layers``.

    ``pooling``: ``"tokens"`` (every non-pad token is a sample), ``"mean"`` (mean over the non-pad
    tokens, one sample per input) or ``"last"`` (the token the head reads, :func:`readout_positions`).
    ``moments``: stream into ``rec.moments[layer]`` (:class:`Moments`, ``dtype`` accumulators on the
    model's device). ``keep``: also keep the pooled activations per batch in ``rec.kept[layer]``
    (in ``dtype``; for small data and tests). ``stop_after``: end each forward after the last
    recorded layer (faster; ``rec(batch)`` then returns None).

    Usage::

        with record(model, [3, 4], pooling="mean") as rec:
            for batch in batches:
                rec(batch)
        corr = rec.moments[3].corr()
    """
    layers_ = check_layers(model, layers)
    rec = Recorder(model, layers_, pooling, moments, keep, dtype, stop_after)
    with hooks() as hook_set:
        for layer in layers_:
            hook_set.pre(mlp_modules(model, layer).down, rec._hook(layer))
        rec._active = True
        try:
            yield rec
        finally:
            rec._active = False
