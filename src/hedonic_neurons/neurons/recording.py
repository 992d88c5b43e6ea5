"""Recording neuron activations at the neuron site (the input of the MLP's down projection).

Activations are captured with a forward pre-hook on the down projection, which is the same for
``Linear``, GPT-2 ``Conv1D`` and peft-wrapped (LoRA) modules. Hooks live in context managers and
are removed in ``finally``, also when the forward raises. Padding never enters a statistic: every
pooling uses ``attention_mask``.

Per-token recording (``pooling="none"``) keeps every non-pad token's activations with its input
index, position and token id in a :class:`TokenRecord`: in memory, or streamed to a folder of
``.npy`` chunks plus an index when ``out=`` is given (then memory holds at most one chunk and one
batch, whatever the number of tokens).

Left padding: if a batch has no ``position_ids``, :func:`model_inputs` adds them from the
attention mask (``cumsum(mask) - 1``, as ``generate`` does), so a padded input gets the same
activations as the same input alone, whichever side the padding is on. Every function of this
package runs the model on ``model_inputs(batch)``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hedonic_neurons.errors import ConfigError, DataError, ModelError, arg
from hedonic_neurons.models.adapters import check_layer, is_encoder, mlp_modules, n_neurons
from hedonic_neurons.models.adapters import unwrap_peft as hf_model  # the one peft unwrapping
from hedonic_neurons.neurons.stats import Moments

POOLINGS = ("tokens", "mean", "last", "none")


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
    if is_encoder(model):  # BERT-like encoder: CLS
        return (mask * (mask.shape[-1] - idx)).argmax(-1)
    return (mask * idx).argmax(-1)


def check_layers(model: nn.Module, layers: int | Sequence[int]) -> list[int]:
    if isinstance(layers, int):
        layers = [layers]
    return sorted({check_layer(model, int(layer)) for layer in layers})


def pool(
    a: torch.Tensor, mask: torch.Tensor, pooling: str, positions: torch.Tensor | None = None
) -> torch.Tensor:
    """Pool activations ``a`` (B, T, n) over the non-pad tokens: (N_tokens, n) or (B, n).

    ``"none"`` gives the tokens, like ``"tokens"`` (the per-token record is kept by the Recorder)."""
    if pooling in ("tokens", "none"):
        return a[mask.bool()]
    if pooling == "mean":
        m = mask.to(a.dtype)
        return (a * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1)
    if pooling == "last":
        return a[torch.arange(a.shape[0], device=a.device), positions]
    raise DataError(f"unknown pooling '{pooling}' (expected one of {', '.join(POOLINGS)})")


# ----------------------------------------------------------------------------------------------
# per-token records (pooling="none")

TOKENS_FORMAT = "hedonic-neurons/tokens/v1"
TOKENS_INDEX = "index.json"
CHUNK_BYTES = 64 * 2**20
"""Default chunk size of a per-token record: about this many bytes of activations per layer."""


@dataclass(frozen=True)
class InputTokens:
    """One input's non-pad tokens: ``token_ids`` (T,) int64 (-1 where the batch had no
    ``input_ids``), ``positions`` (T,) int64 (index among the input's non-pad tokens, i.e. its
    position id under either padding side) and ``activations`` (T, neurons) float32."""

    input: int
    token_ids: np.ndarray
    positions: np.ndarray
    activations: np.ndarray

    def __iter__(self) -> Iterator[np.ndarray]:
        """``tokens, positions, activations = record[i]``."""
        return iter((self.token_ids, self.positions, self.activations))


class TokenRecord:
    """Every non-pad token's activations at the recorded layers, with input index, position and
    token id; made by ``record(..., pooling="none")`` (``rec.tokens``), readable after its block.

    Tokens are stored in input order in chunks of ``chunk_tokens`` tokens (default: 64 MiB of
    float32 activations per layer, e.g. 10,922 tokens at 1,536 neurons). With a ``folder`` each
    full chunk is written at once as ``chunk-KKKKK.meta.npy`` ((T, 3) int64: input, position,
    token id) and ``chunk-KKKKK.L<layer>.npy`` ((T, n) float32), so memory never holds more than
    one chunk plus the current batch; ``inputs.npy`` (each input's first token, and the total)
    and ``index.json`` are written when the recording ends. :meth:`open` reads a folder back
    (memory-mapped). Without a folder the chunks stay in memory.

    Reading: ``len(rec)`` inputs; ``rec.input(i, layer, neurons=None)`` or, for one recorded
    layer, ``rec[i]`` -> :class:`InputTokens`; :meth:`chunks` streams (meta, activations).
    """

    def __init__(
        self,
        layers: Sequence[int],
        n_neurons: int,
        folder: str | os.PathLike | None = None,
        chunk_tokens: int | None = None,
    ) -> None:
        if chunk_tokens is None:
            chunk_tokens = max(1, CHUNK_BYTES // (4 * int(n_neurons)))
        if isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int) or chunk_tokens < 1:
            raise ConfigError(f"{arg('chunk_tokens')} must be a positive integer, got {chunk_tokens!r}")
        self.layers = list(layers)
        self.n_neurons = int(n_neurons)
        self.chunk_tokens = chunk_tokens
        self.folder = None if folder is None else Path(folder)
        if self.folder is not None:
            if (self.folder / TOKENS_INDEX).exists():
                raise ConfigError(
                    f"{self.folder} already holds a token recording ({TOKENS_INDEX}); pass an empty or new "
                    f"folder as {arg('out')}"
                )
            if self.folder.exists() and not self.folder.is_dir():
                raise ConfigError(f"{arg('out')} {self.folder} is a file; expected a folder for the chunks")
            self.folder.mkdir(parents=True, exist_ok=True)
        self._starts: list[int] = [0]  # first token of each input, then the total
        self._chunk_sizes: list[int] = []
        self._memory: list[dict[Any, np.ndarray]] = []
        self._buffer: list[dict[Any, np.ndarray]] = []
        self._buffered = 0
        self._closed = False

    # ------------------------------------------------------------------ writing

    def append(
        self,
        token_ids: np.ndarray,
        positions: np.ndarray,
        lengths: Sequence[int],
        acts: dict[int, np.ndarray],
    ) -> None:
        """Add one batch: its inputs' tokens in order (``lengths[b]`` tokens of input b)."""
        if self._closed:
            raise ModelError("this token recording is finished; start a new record(...)")
        first = len(self._starts) - 1
        inputs = np.repeat(np.arange(first, first + len(lengths), dtype=np.int64), lengths)
        meta = np.stack([inputs, positions.astype(np.int64), token_ids.astype(np.int64)], axis=1)
        self._buffer.append({"meta": meta, **{layer: acts[layer] for layer in self.layers}})
        self._buffered += len(meta)
        for length in lengths:
            self._starts.append(self._starts[-1] + int(length))
        while self._buffered >= self.chunk_tokens:
            self._flush(self.chunk_tokens)

    def _flush(self, size: int) -> None:
        keys = ["meta", *self.layers]
        joined = {k: np.concatenate([part[k] for part in self._buffer]) for k in keys}
        chunk = {k: v[:size] for k, v in joined.items()}
        rest = {k: v[size:] for k, v in joined.items()}
        self._buffer = [rest] if len(rest["meta"]) else []
        self._buffered = len(rest["meta"])
        if self.folder is None:
            self._memory.append({k: np.ascontiguousarray(v) for k, v in chunk.items()})
        else:
            stem = f"chunk-{len(self._chunk_sizes):05d}"
            for k, v in chunk.items():
                _save_npy(self.folder / f"{stem}.{'meta' if k == 'meta' else f'L{k}'}.npy", v)
        self._chunk_sizes.append(size)

    def close(self) -> None:
        """Write the last (partial) chunk and, with a folder, the index."""
        if self._closed:
            return
        if self._buffered:
            self._flush(self._buffered)
        self._closed = True
        if self.folder is not None:
            from hedonic_neurons.artifacts import write_json

            _save_npy(self.folder / "inputs.npy", np.asarray(self._starts, dtype=np.int64))
            write_json(
                self.folder / TOKENS_INDEX,
                {
                    "format": TOKENS_FORMAT,
                    "layers": self.layers,
                    "n_neurons": self.n_neurons,
                    "n_inputs": len(self),
                    "n_tokens": self.n_tokens,
                    "chunk_tokens": self.chunk_tokens,
                    "chunks": self._chunk_sizes,
                    "activation_dtype": "float32",
                    "meta_columns": ["input", "position", "token_id"],
                },
            )

    # ------------------------------------------------------------------ reading

    @classmethod
    def open(cls, folder: str | os.PathLike) -> TokenRecord:
        """A recording written with ``record(..., pooling="none", out=folder)``."""
        from hedonic_neurons.artifacts import read_json

        folder = Path(folder)
        if not (folder / TOKENS_INDEX).is_file():
            raise DataError(f"{folder} has no {TOKENS_INDEX}; expected a folder written by record(out=...)")
        index = read_json(folder / TOKENS_INDEX)
        if index.get("format") != TOKENS_FORMAT:
            raise DataError(
                f"{folder / TOKENS_INDEX}: format {index.get('format')!r}, expected {TOKENS_FORMAT}"
            )
        rec = cls.__new__(cls)
        rec.layers = [int(x) for x in index["layers"]]
        rec.n_neurons = int(index["n_neurons"])
        rec.chunk_tokens = int(index["chunk_tokens"])
        rec.folder = folder
        rec._starts = np.load(folder / "inputs.npy", allow_pickle=False).tolist()
        rec._chunk_sizes = [int(x) for x in index["chunks"]]
        rec._memory, rec._buffer, rec._buffered, rec._closed = [], [], 0, True
        return rec

    def __len__(self) -> int:
        return len(self._starts) - 1

    @property
    def n_tokens(self) -> int:
        return int(self._starts[-1])

    def _check_layer(self, layer: int | None) -> int:
        if layer is None:
            if len(self.layers) != 1:
                raise DataError(f"this recording has layers {self.layers}: pass {arg('layer')} to choose one")
            return self.layers[0]
        if int(layer) not in self.layers:
            raise DataError(f"layer {layer} was not recorded; expected one of {self.layers}")
        return int(layer)

    def _chunk(self, k: int, key: Any) -> np.ndarray:
        if self.folder is None:
            return self._memory[k][key]
        name = "meta" if key == "meta" else f"L{key}"
        return np.load(self.folder / f"chunk-{k:05d}.{name}.npy", mmap_mode="r", allow_pickle=False)

    def chunks(self, layer: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(meta (T, 3) int64 [input, position, token id], activations (T, n) float32) per chunk."""
        if not self._closed:
            raise ModelError("the token recording is still running: read it after its 'with record' block")
        layer = self._check_layer(layer)
        for k in range(len(self._chunk_sizes)):
            yield self._chunk(k, "meta"), self._chunk(k, layer)

    def input(
        self, i: int, layer: int | None = None, neurons: Sequence[int] | None = None
    ) -> InputTokens:
        """Input ``i``'s tokens, positions and activations at ``layer`` (columns ``neurons``)."""
        if not self._closed:
            raise ModelError("the token recording is still running: read it after its 'with record' block")
        layer = self._check_layer(layer)
        if not -len(self) <= int(i) < len(self):
            raise DataError(f"input {i} is out of range; the recording has {len(self)} inputs")
        i = int(i) % len(self)
        lo, hi = self._starts[i], self._starts[i + 1]
        cols = slice(None) if neurons is None else np.asarray(list(neurons), dtype=np.int64)
        metas, acts, begin = [], [], 0
        for k, size in enumerate(self._chunk_sizes):
            end = begin + size
            if end > lo and begin < hi:
                a, b = max(lo, begin) - begin, min(hi, end) - begin
                metas.append(np.asarray(self._chunk(k, "meta")[a:b]))
                acts.append(np.asarray(self._chunk(k, layer)[a:b][:, cols], dtype=np.float32))
            if end >= hi:
                break
            begin = end
        width = self.n_neurons if neurons is None else len(cols)
        meta = np.concatenate(metas) if metas else np.zeros((0, 3), dtype=np.int64)
        act = np.concatenate(acts) if acts else np.zeros((0, width), dtype=np.float32)
        return InputTokens(i, meta[:, 2].copy(), meta[:, 1].copy(), act)

    def __getitem__(self, i: int) -> InputTokens:
        return self.input(i)

    def __iter__(self) -> Iterator[InputTokens]:
        return (self.input(i) for i in range(len(self)))


def _save_npy(path: Path, array: np.ndarray) -> None:
    """``np.save`` through a temporary file in the same folder, then rename (no partial chunk)."""
    from hedonic_neurons.artifacts import current_umask

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, np.ascontiguousarray(array), allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------------------------
# recording


class Recorder:
    """Runs the model on batches and feeds the captured activations of each recorded layer into
    :class:`Moments` (``moments[layer]``) and, with ``keep=True``, ``kept[layer]`` (one pooled
    tensor per batch); with ``pooling="none"``, ``tokens`` is the :class:`TokenRecord` of every
    token (None otherwise). Made by :func:`record`; only usable inside its ``with`` block."""

    def __init__(
        self,
        model: nn.Module,
        layers: list[int],
        pooling: str,
        moments: bool,
        keep: bool,
        dtype: torch.dtype,
        stop_after: bool,
        out: str | os.PathLike | None = None,
        chunk_tokens: int | None = None,
    ) -> None:
        if pooling not in POOLINGS:
            raise DataError(f"unknown pooling '{pooling}' (expected one of {', '.join(POOLINGS)})")
        if pooling != "none" and (out is not None or chunk_tokens is not None):
            raise ConfigError(
                f"{arg('out')} and {arg('chunk_tokens')} keep per-token activations: they need "
                f"pooling='none', got pooling='{pooling}'"
            )
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
        self.tokens: TokenRecord | None = (
            TokenRecord(layers, n, out, chunk_tokens) if pooling == "none" else None
        )
        self._pending: dict[int, np.ndarray] = {}
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
            if self.tokens is not None:
                self._pending[layer] = args[0].detach()[self._mask.bool()].float().cpu().numpy()
            if last and self.stop_after:
                raise StopForward

        return hook

    def take(self, layer: int) -> torch.Tensor:
        """The activations kept for ``layer`` since the last ``take`` (every batch's pooled
        tensor, concatenated: samples x neurons) and forget them, so memory stays what was
        recorded in between. Needs ``record(..., keep=True)``; an empty (0, n) tensor when no
        batch was recorded since."""
        if not self.kept:
            raise ConfigError("Recorder.take needs the activations kept: record(..., keep=True)")
        if layer not in self.kept:
            raise ConfigError(f"layer {layer} is not recorded (recorded layers: {self.layers})")
        kept = self.kept[layer]
        if not kept:
            n = n_neurons(hf_model(self.model))
            return torch.empty((0, n), dtype=self.dtype, device=model_device(self.model))
        out = torch.cat(kept)
        kept.clear()
        return out

    @torch.no_grad()
    def __call__(self, batch: Mapping[str, Any]) -> Any:
        """Run the model (no gradient) on ``batch`` and record; returns the model output (None with
        ``stop_after=True``: the forward ends after the last recorded layer)."""
        if not self._active:
            raise ModelError("this Recorder is closed: use it inside its 'with record(...)' block")
        inputs = model_inputs(batch)
        self._mask = inputs["attention_mask"]
        self._positions = readout_positions(self.model, self._mask) if self.pooling == "last" else None
        self._pending = {}
        try:
            output = run_forward(self.model, inputs)
            if self.tokens is not None:
                self._keep_tokens(inputs)
            return output
        finally:
            self._mask = self._positions = None
            self._pending = {}

    def _keep_tokens(self, inputs: Mapping[str, Any]) -> None:
        """Add the batch's per-token activations (captured by the hooks) to :attr:`tokens`."""
        missing = [layer for layer in self.layers if layer not in self._pending]
        if missing:
            raise ModelError(f"the forward pass did not reach layer(s) {missing}; nothing was recorded")
        mask = inputs["attention_mask"].bool()
        ids = inputs.get("input_ids")
        token_ids = ids[mask] if ids is not None else torch.full((int(mask.sum()),), -1)
        positions = (mask.long().cumsum(-1) - 1)[mask]
        lengths = mask.sum(-1).tolist()
        self.tokens.append(
            token_ids.cpu().numpy(), positions.cpu().numpy(), lengths, dict(self._pending)
        )


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
    out: str | os.PathLike | None = None,
    chunk_tokens: int | None = None,
) -> Iterator[Recorder]:
    """Record neuron activations (input of the down projection) at ``layers``.

    ``pooling``: ``"tokens"`` (every non-pad token is a sample), ``"mean"`` (mean over the non-pad
    tokens, one sample per input), ``"last"`` (the token the head reads, :func:`readout_positions`)
    or ``"none"``: every non-pad token is kept with its input index (counted over all batches
    from 0), position and token id in ``rec.tokens`` (:class:`TokenRecord`, float32; moments and
    ``keep`` see the tokens as with ``"tokens"``). ``out``: a folder to stream the per-token record
    to in ``.npy`` chunks of ``chunk_tokens`` tokens (see :class:`TokenRecord`; memory then stays at
    one chunk); without it the record is kept in memory. Read it after the block
    (``rec.tokens[i]`` -> tokens, positions, activations) or later with ``TokenRecord.open(out)``.
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
    rec = Recorder(model, layers_, pooling, moments, keep, dtype, stop_after, out, chunk_tokens)
    with hooks() as hook_set:
        for layer in layers_:
            hook_set.pre(mlp_modules(model, layer).down, rec._hook(layer))
        rec._active = True
        try:
            yield rec
        finally:
            rec._active = False
            if rec.tokens is not None:
                rec.tokens.close()
