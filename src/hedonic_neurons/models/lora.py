"""LoRA adapters: checking a saved adapter against a model, applying and merging it, and the
low-rank factors that rebuild the pre-LoRA (reference) weights.

A saved adapter (peft ``save_pretrained`` folder) is validated before it is applied: every LoRA
factor must target a module the model has, with matching in/out sizes, and every saved module
(``modules_to_save``, e.g. the trained head) must exist with the same shape; an adapter whose
recorded base model differs from the given one is refused with one line naming both.
Only plain LoRA is supported (not DoRA or other peft methods).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hedonic_neurons.errors import ModelError
from hedonic_neurons.models import adapters
from hedonic_neurons.models.builtins import BUILTINS, summary_text
from hedonic_neurons.models.cache import quiet_transformers
from hedonic_neurons.models.checkpoint import shape_text

Factors = dict[tuple[int, str], list[tuple[torch.Tensor, torch.Tensor, float]]]
"""(layer, role) -> [(A (r, in), B (out, r), scaling), ...] of the active LoRA adapters, fp32 on the CPU."""


def config_summary(config: Any, name: str) -> tuple[tuple[Any, ...], str]:
    """(comparable facts, text) of a config: model type, layers, d_model, neurons."""
    try:
        layers = int(config.get_text_config().num_hidden_layers)
        d = int(config.get_text_config().hidden_size)
        n = adapters.n_neurons(config)
    except (AttributeError, ModelError, TypeError):
        return (config.model_type,), f"{name} ({config.model_type})"
    return (config.model_type, layers, d, n), summary_text(name, config.model_type, layers, d, n)


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


def check_adapter(
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
                facts = config_summary(tf.AutoConfig.from_pretrained(Path(recorded).expanduser()), recorded)
        if facts is not None:
            made_for = facts[1]
            if facts[0] != given[0][: len(facts[0])]:
                raise ModelError(f"adapter {folder} was made for {facts[1]}, but was given {given[1]}")

    spec = adapters.get_spec(model)
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    layers_prefix = ".".join(p for p in (adapters.module_name(model, adapters.body(model)), spec.layers) if p)
    mlp_names = adapters.mlp_module_names(model)
    body_name = adapters.module_name(model, adapters.body(model))
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
                    f"adapter {folder} (made for {made_for}): {name} is {shape_text(tensor.shape)}, "
                    f"but in {given[1]} it is "
                    f"{shape_text(params[name].shape)}"
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
                    f"adapter {folder} (made for {made_for}): {mod_name}.{part} is "
                    f"{shape_text(tensor.shape)}, which does "
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


def apply_adapter(model: nn.Module, path: str | os.PathLike, shown: str, head_missing: list[str]):
    """Load a peft LoRA adapter, keep the MLP factors, merge. Returns (model, lora, reference, file)."""
    folder = Path(path).expanduser()
    if not (folder / "adapter_config.json").is_file():
        raise ModelError(
            f"adapter {path}: no adapter_config.json there (expected a peft LoRA adapter folder written "
            "by save_pretrained)"
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
    given = config_summary(model.config, shown)
    mlp_layers, all_layers, lora_modules, head_params = check_adapter(folder, cfg, weights, model, given)

    from peft import PeftModel

    base_biases = {  # before the adapter loads: it may train the biases (peft bias="lora_only" / "all")
        (layer, role): mod.bias.detach().to("cpu", torch.float32, copy=True)
        for name, (layer, role) in adapters.mlp_module_names(model).items()
        if getattr(mod := model.get_submodule(name), "bias", None) is not None
    }
    try:
        with quiet_transformers():
            peft_model = PeftModel.from_pretrained(model, str(folder), is_trainable=False)
    except (ValueError, RuntimeError, KeyError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"adapter {folder} does not fit {given[1]}: {first}") from None
    merged, reference = merge_lora(peft_model, biases=base_biases)
    target = cfg.get("target_modules")
    lora = {
        "target_modules": sorted(target) if isinstance(target, list) else target,
        "modules": lora_modules,
        "rank": cfg.get("r"),
        "ranks": sorted({int(a.shape[0]) for terms in reference.factors.values() for a, _, _ in terms}),
        "alpha": cfg.get("lora_alpha"),
        "layers": mlp_layers,
        "all_layers": all_layers,
        "modules_to_save": cfg.get("modules_to_save"),
        "head_from_adapter": bool(head_params),
        "base_model": cfg.get("base_model_name_or_path"),
    }
    if head_missing and not set(head_missing) <= set(head_params):
        from hedonic_neurons.errors import HedonicNote

        missing = ", ".join(sorted(set(head_missing) - set(head_params)))
        warnings.warn(
            f"adapter {folder} carries no trained head ({missing}); the head is the deterministic "
            "initialisation, so the model's scores are not the fine-tuned ones",
            HedonicNote,
            stacklevel=3,
        )
    return merged, lora, reference, file


# ------------------------------------------------------------------------- peft model objects


def lora_factors(model: nn.Module) -> tuple[Factors, dict[tuple[int, str], torch.Tensor | None]]:
    """The low-rank factors of the active LoRA adapters on the MLP of ``model`` (a peft model, or
    a model with peft LoRA layers in it), and each MLP projection's bias without its LoRA bias.

    Returns ``(factors, biases)``: ``factors[(layer, role)]`` lists ``(A, B, scaling)`` (fp32 CPU
    copies; ``A`` is (r, in), ``B`` (out, r), whatever the module stores, GPT-2 ``Conv1D`` too), and
    ``biases[(layer, role)]`` is the pre-LoRA bias (fp32 CPU, or None). Plain LoRA only: a module with
    a LoRA variant (DoRA, ...) is a one-line ModelError.
    """
    inner = adapters.unwrap_peft(model)
    spec = adapters.get_spec(inner)
    factors: Factors = {}
    biases: dict[tuple[int, str], torch.Tensor | None] = {}
    for name, (layer, role) in adapters.mlp_module_names(inner).items():
        mod = inner.get_submodule(name)
        _, bias = adapters.effective_weight(mod, spec.conv1d)  # raises for LoRA variants
        bias = None if bias is None else bias.detach().to("cpu", torch.float32, copy=True)
        if not hasattr(mod, "lora_A") or mod.disable_adapters:
            biases[(layer, role)] = bias
            continue
        terms = []
        for adapter_name in mod.active_adapters:
            if adapter_name not in mod.lora_A:
                continue
            a = mod.lora_A[adapter_name].weight.detach().to("cpu", torch.float32, copy=True)
            b = mod.lora_B[adapter_name].weight.detach().to("cpu", torch.float32, copy=True)
            scaling = float(mod.scaling[adapter_name])
            terms.append((a, b, scaling))
            if bias is not None and mod.lora_bias.get(adapter_name):
                bias -= scaling * mod.lora_B[adapter_name].bias.detach().to("cpu", torch.float32)
        if terms:
            factors[(layer, role)] = terms
        biases[(layer, role)] = bias
    return factors, biases


def merge_lora(
    peft_model: nn.Module, biases: dict[tuple[int, str], torch.Tensor | None] | None = None
) -> tuple[nn.Module, Any]:
    """Merge a peft LoRA model *in place* (``merge_and_unload``) and return ``(merged HF model,
    LoraReference)``: the reference rebuilds the pre-LoRA MLP weights from the kept factors.
    Callers that must leave the user's object untouched merge a deep copy.

    ``biases``: the MLP biases before the adapter was applied, where known (an adapter trained
    with peft ``bias="lora_only"``/``"all"`` overwrites them); default: the current biases minus
    any LoRA bias (:func:`lora_factors`)."""
    from hedonic_neurons.models.reference import LoraReference

    check_lora(peft_model)
    factors, own = lora_factors(peft_model)
    biases = {**own, **(biases or {})}
    with quiet_transformers():
        merged = peft_model.merge_and_unload()
    return merged, LoraReference(factors, biases)


def check_lora(peft_model: nn.Module) -> None:
    """A one-line ModelError unless every active adapter of ``peft_model`` is a plain LoRA adapter."""
    for name, cfg in getattr(peft_model, "peft_config", {}).items():
        kind = str(getattr(cfg, "peft_type", "")).rsplit(".", 1)[-1]
        if kind != "LORA":
            raise ModelError(f"peft adapter '{name}' is a {kind} adapter; only LoRA adapters are supported")
        if getattr(cfg, "use_dora", False):
            raise ModelError(
                f"peft adapter '{name}' is a DoRA adapter; only plain LoRA adapters are supported"
            )


def peft_summary(peft_model: nn.Module, factors: Factors) -> dict[str, Any]:
    """The ``lora`` description (as for a saved adapter) of an in-memory peft LoRA model."""
    active = getattr(peft_model, "active_adapter", "default")
    active = active[0] if isinstance(active, list) else active
    cfg = peft_model.peft_config[active]
    target = cfg.target_modules
    inner = adapters.unwrap_peft(peft_model)
    modules = sorted(n for n, m in inner.named_modules() if hasattr(m, "lora_A") and active in m.lora_A)
    body_name = adapters.module_name(inner, adapters.body(inner))
    prefix = ".".join(p for p in (body_name, adapters.get_spec(inner).layers) if p)
    return {
        "target_modules": sorted(target) if isinstance(target, (list, set, tuple)) else target,
        "modules": modules,
        "rank": cfg.r,
        "ranks": sorted({int(a.shape[0]) for terms in factors.values() for a, _, _ in terms}),
        "alpha": cfg.lora_alpha,
        "layers": sorted({layer for layer, _ in factors}),
        "all_layers": sorted({x for m in modules if (x := _layer_of(m, prefix)) is not None}),
        "modules_to_save": sorted(cfg.modules_to_save) if cfg.modules_to_save else None,
        "head_from_adapter": bool(cfg.modules_to_save),
        "base_model": cfg.base_model_name_or_path,
    }
