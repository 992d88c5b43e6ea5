"""Architecture adapters: where the neurons are in each model family.

A neuron is one unit of the input to the MLP's down projection:
``act(gate(x)) * up(x)`` for LLaMA / Mistral / Qwen2, ``act(W_in x)`` for GPT-NeoX, GPT-2 and BERT.
Its output weight vector is the matching column of the down projection.

One :class:`ArchSpec` per family, registered in :data:`ARCHITECTURES` under each
``config.model_type`` it serves. Module paths are relative to ``model.base_model`` (the transformer
body, e.g. ``LlamaModel``), which is the same object for ``*ForSequenceClassification``,
``*ForCausalLM`` and the bare model, so one spec serves all heads. Users pass layer indices, never
module paths. To support a new family, write one file that builds an ``ArchSpec`` and registers
it::

    import dataclasses

    from hedonic_neurons.models.adapters import ARCHITECTURES, register_architecture

    # OLMo's blocks have LLaMA's module names
    olmo = dataclasses.replace(ARCHITECTURES.get("llama"), family="olmo", model_types=("olmo",))
    register_architecture(olmo)

(``ARCHITECTURES.temporarily("toyllama", spec)`` registers one for a ``with`` block.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

from hedonic_neurons.errors import ModelError
from hedonic_neurons.registry import Registry


@dataclass(frozen=True)
class ArchSpec:
    """Module paths of one model family (relative to ``model.base_model`` and to one layer)."""

    family: str
    model_types: tuple[str, ...]
    layers: str  # the ModuleList of blocks, relative to base_model
    up: str  # input projection ("up" of a gated MLP, W_in otherwise), relative to a block
    down: str  # down / output projection, relative to a block; its input is the neuron site
    act: str  # the activation function module, relative to a block
    gate: str | None = None  # gate projection of gated MLPs
    conv1d: bool = False  # GPT-2 Conv1D stores weights as (in, out)
    final_norm: str | None = None  # pre-LN models: the final norm, relative to base_model
    post_norm: str | None = None  # post-LN models (BERT): the norm after the residual add in a block
    mlp_norm: str | None = None  # the norm that feeds the MLP, relative to a block (None: post-LN)
    attn_norm: str | None = None  # post-LN models: the norm after attention's residual add, in a block
    width_keys: tuple[str, ...] = ("intermediate_size",)  # config keys of the MLP width, first set wins
    width_default: tuple[str, int] | None = None  # none set: (config key, factor), width = factor * key
    encoder: bool = False  # bidirectional encoder (BERT): pair-encoded inputs, CLS readout, no causal head
    # how the down projection's output reaches the block's output: "residual" (added to the
    # residual stream unchanged: pre-LN blocks), "post_norm" (added, then ``post_norm``: BERT), or
    # None (unknown; batched ablation then runs the ablated block once per neuron set)
    mlp_output: str | None = None

    @property
    def gated(self) -> bool:
        return self.gate is not None

    @property
    def lora_targets(self) -> tuple[str, ...]:
        """Leaf module names of the MLP projections.

        As peft ``target_modules`` these also match attention modules of the same leaf name in
        BERT (``dense``) and GPT-2 (``c_proj``); use :func:`mlp_module_names` for MLP-only LoRA.
        """
        names = [self.up, self.down] + ([self.gate] if self.gate else [])
        return tuple(sorted(p.rsplit(".", 1)[-1] for p in names))


_LLAMA_LIKE = dict(
    layers="layers",
    gate="mlp.gate_proj",
    up="mlp.up_proj",
    down="mlp.down_proj",
    act="mlp.act_fn",
    final_norm="norm",
    mlp_norm="post_attention_layernorm",
    mlp_output="residual",
)

#: model_type -> :class:`ArchSpec`; a spec is registered under each of its ``model_types``.
ARCHITECTURES: Registry[ArchSpec] = Registry("architecture", base=ArchSpec)


def register_architecture(spec: ArchSpec, *, replace: bool = False) -> ArchSpec:
    """Register ``spec`` in :data:`ARCHITECTURES` under each of its ``model_types``.

    A model type that already has a different spec is a ConfigError unless ``replace``.
    """
    if not isinstance(spec, ArchSpec):
        raise ModelError(f"register_architecture expects an ArchSpec, got {type(spec).__name__}")
    if not spec.model_types:
        raise ModelError(
            f"ArchSpec {spec.family!r} has no model_types: name the config.model_type(s) it serves"
        )
    for model_type in spec.model_types:
        ARCHITECTURES.add(model_type, spec, replace=replace)
    return spec


for _spec in (
    ArchSpec(family="llama", model_types=("llama",), **_LLAMA_LIKE),
    ArchSpec(family="mistral", model_types=("mistral",), **_LLAMA_LIKE),
    ArchSpec(family="qwen2", model_types=("qwen2",), **_LLAMA_LIKE),
    ArchSpec(
        family="gpt_neox",
        model_types=("gpt_neox",),
        layers="layers",
        up="mlp.dense_h_to_4h",
        down="mlp.dense_4h_to_h",
        act="mlp.act",
        final_norm="final_layer_norm",
        mlp_norm="post_attention_layernorm",
        mlp_output="residual",
    ),
    ArchSpec(
        family="gpt2",
        model_types=("gpt2",),
        layers="h",
        up="mlp.c_fc",
        down="mlp.c_proj",
        act="mlp.act",
        conv1d=True,
        final_norm="ln_f",
        mlp_norm="ln_2",
        width_keys=("n_inner",),
        width_default=("n_embd", 4),  # n_inner=None means 4 * n_embd
        mlp_output="residual",
    ),
    ArchSpec(
        family="bert",
        model_types=("bert",),
        layers="encoder.layer",
        up="intermediate.dense",
        down="output.dense",
        act="intermediate.intermediate_act_fn",
        post_norm="output.LayerNorm",
        attn_norm="attention.output.LayerNorm",
        encoder=True,
        mlp_output="post_norm",
    ),
):
    register_architecture(_spec)
del _spec


def supported_model_types() -> list[str]:
    """The registered ``config.model_type`` values, sorted."""
    return sorted(ARCHITECTURES.names())


def unknown_architecture(model_type: Any) -> str:
    """The message for a ``config.model_type`` that has no registered :class:`ArchSpec`."""
    return (
        f"unknown architecture '{model_type}': add an ArchSpec for it to ARCHITECTURES in "
        f"hedonic_neurons/models/adapters.py (supported: {', '.join(supported_model_types())})"
    )


def get_spec(model_or_config: Any) -> ArchSpec:
    """The adapter for a model or config; a one-line :class:`ModelError` for unknown families."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    if not isinstance(model_type, str) or model_type not in ARCHITECTURES:
        raise ModelError(unknown_architecture(model_type))
    return ARCHITECTURES.get(model_type)


def is_encoder(model_or_config: Any) -> bool:
    """Whether the model (or config) is a bidirectional encoder (BERT-style): its inputs are the
    tokenizer's pair encoding, its head reads the first (CLS) token, and it has no causal-LM head.
    Decoders (LLaMA, Mistral, Qwen2, GPT-NeoX, GPT-2) read the last non-pad token."""
    return get_spec(model_or_config).encoder


def is_peft(model: Any) -> bool:
    """Whether ``model`` is a peft wrapper (``PeftModel`` and its task subclasses)."""
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def unwrap_peft(model: nn.Module) -> nn.Module:
    """The Hugging Face model inside a peft wrapper (LoRA layers still in it, unmerged), else
    ``model`` itself. ``PeftModel.base_model`` is a ``LoraModel`` whose ``.model`` is that model."""
    return model.get_base_model() if is_peft(model) else model


def _get(root: nn.Module, path: str) -> Any:
    obj: Any = root
    for part in path.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj


def body(model: nn.Module) -> nn.Module:
    """The transformer body (``model.base_model``), also through a peft wrapper."""
    return unwrap_peft(model).base_model


def module_name(model: nn.Module, module: nn.Module) -> str:
    """The name of ``module`` in ``model.named_modules()`` (a one-line ModelError if absent)."""
    for name, mod in model.named_modules():
        if mod is module:
            return name
    raise ModelError(f"module {type(module).__name__} is not part of the model")


def n_layers(model: nn.Module) -> int:
    return len(block_list(model))


def n_neurons(model_or_config: Any) -> int:
    """MLP width (neurons per layer)."""
    config = getattr(model_or_config, "config", model_or_config)
    spec = get_spec(config)
    for key in spec.width_keys:
        width = getattr(config, key, None)
        if width:
            return int(width)
    if spec.width_default is not None and getattr(config, spec.width_default[0], None):
        key, factor = spec.width_default
        return factor * int(getattr(config, key))
    raise ModelError(f"config of '{spec.family}' has none of {spec.width_keys}; cannot tell the MLP width")


def check_layer(model: nn.Module, layer: int) -> int:
    """``layer`` if it exists (negative indices count from the end), else a one-line error."""
    total = n_layers(model)
    if not isinstance(layer, int) or not -total <= layer < total:
        raise ModelError(f"layer {layer} is out of range: this model has {total} layers (0..{total - 1})")
    return layer % total


def block_list(model: nn.Module) -> nn.ModuleList:
    """The model's list of transformer blocks (the ``nn.ModuleList`` its layer loop runs over)."""
    return _get(body(model), get_spec(model).layers)


def block(model: nn.Module, layer: int) -> nn.Module:
    """Transformer block ``layer``."""
    return block_list(model)[check_layer(model, layer)]


@dataclass
class MLPModules:
    """The modules that make up one layer's MLP (the neuron site is ``down``'s input)."""

    spec: ArchSpec
    block: nn.Module
    up: nn.Module
    down: nn.Module
    act: Any
    gate: nn.Module | None
    mlp_norm: nn.Module | None
    post_norm: nn.Module | None


def mlp_modules(model: nn.Module, layer: int) -> MLPModules:
    spec = get_spec(model)
    blk = block(model, layer)
    return MLPModules(
        spec=spec,
        block=blk,
        up=_get(blk, spec.up),
        down=_get(blk, spec.down),
        act=_get(blk, spec.act),
        gate=_get(blk, spec.gate) if spec.gate else None,
        mlp_norm=_get(blk, spec.mlp_norm) if spec.mlp_norm else None,
        post_norm=_get(blk, spec.post_norm) if spec.post_norm else None,
    )


def mlp_module_names(model: nn.Module, layers: Any = None) -> dict[str, tuple[int, str]]:
    """Full names (as in ``model.named_modules()``) of the MLP projections -> (layer, role).

    ``role`` is "up", "gate" or "down". ``layers``: an iterable of layer indices (default: all).
    The names are exact module paths, so ``list(mlp_module_names(model, layers))`` is a peft
    ``target_modules`` that puts LoRA on the MLP only: leaf names such as BERT's ``dense`` or
    GPT-2's ``c_proj`` would also match attention modules.
    """
    names = {id(mod): name for name, mod in model.named_modules()}
    chosen = range(n_layers(model)) if layers is None else [check_layer(model, layer) for layer in layers]
    out: dict[str, tuple[int, str]] = {}
    for layer in chosen:
        mods = mlp_modules(model, layer)
        for role in ("up", "gate", "down"):
            module = getattr(mods, role)
            if module is not None:
                out[names[id(module)]] = (layer, role)
    return out


def final_norm(model: nn.Module) -> nn.Module | None:
    spec = get_spec(model)
    return _get(body(model), spec.final_norm) if spec.final_norm else None


def linear_weight(module: nn.Module, conv1d: bool) -> torch.Tensor:
    """Weight as (out_features, in_features), whatever the module stores (Linear or GPT-2 Conv1D)."""
    weight = module.weight
    return weight.t() if conv1d else weight


@dataclass
class MLPWeights:
    """One layer's MLP weights in a fixed layout, and the neuron activations they produce.

    ``up`` / ``gate``: (n, d) input rows, one per neuron; ``down``: (d, n), column i is neuron
    i's output vector W_i. Biases are (n,) / (d,) or None.
    """

    up: torch.Tensor
    down: torch.Tensor
    act: Any
    gate: torch.Tensor | None = None
    up_bias: torch.Tensor | None = None
    gate_bias: torch.Tensor | None = None
    down_bias: torch.Tensor | None = None

    @property
    def n_neurons(self) -> int:
        return int(self.up.shape[0])

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> MLPWeights:
        """A new MLPWeights with ``fn`` applied to each weight and bias that is set (None stays
        None); ``act`` is shared. E.g. ``w.map(lambda t: t.detach().to(torch.float32))``."""
        tensors = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "act"}
        return MLPWeights(act=self.act, **{k: None if t is None else fn(t) for k, t in tensors.items()})

    def activations(self, x: torch.Tensor) -> torch.Tensor:
        """Neuron activations for MLP inputs ``x`` (..., d) -> (..., n): the hand computation."""
        up = torch.nn.functional.linear(x, self.up, self.up_bias)
        if self.gate is None:
            return self.act(up)
        return self.act(torch.nn.functional.linear(x, self.gate, self.gate_bias)) * up

    def output(self, a: torch.Tensor) -> torch.Tensor:
        """MLP output for neuron activations ``a`` (..., n) -> (..., d)."""
        return torch.nn.functional.linear(a, self.down, self.down_bias)


def _lora_state(module: nn.Module) -> tuple[list[str], list[str]] | None:
    """For a peft LoRA layer: (adapters to add to the stored weight, merged adapters to take out of
    it) so that the weight equals what its forward computes; None for any other module."""
    if not hasattr(module, "lora_A"):  # not peft: no need to import it
        return None
    from peft.tuners.lora import LoraLayer

    if not isinstance(module, LoraLayer):
        return None
    merged = [a for a in module.merged_adapters if a in module.lora_A]
    active = [] if module.disable_adapters else [a for a in module.active_adapters if a in module.lora_A]
    return [a for a in active if a not in merged], [a for a in merged if a not in active]


def effective_weight(module: nn.Module, conv1d: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight as (out, in), bias) of a projection as its forward applies them.

    A plain ``Linear`` / ``Conv1D``: views of its parameters. A peft LoRA layer whose adapter is
    not merged: new tensors ``W + scaling * B @ A`` (summed over the active adapters, in the
    weight's dtype, the same arithmetic as peft's merge) and ``b + scaling * b_B`` for adapters
    with a trained bias; a LoRA variant that is not a low-rank sum (DoRA, ...) is a ModelError.
    """
    state = _lora_state(module)
    if state is None:
        return linear_weight(module, conv1d), module.bias
    add, remove = state
    base = module.get_base_layer()
    weight, bias = base.weight, base.bias
    if not add and not remove:
        return linear_weight(base, conv1d), bias
    variants = [a for a in add + remove if a in getattr(module, "lora_variant", {})]
    if variants:
        raise ModelError(
            f"{type(module).__name__} carries LoRA variant adapter(s) {', '.join(variants)} (e.g. DoRA): "
            "only plain low-rank LoRA weights can be read unmerged; merge the adapter first "
            "(peft merge_and_unload) or load the model through load_model / NeuronModel.from_hf"
        )
    with torch.no_grad():
        weight = weight.detach().clone()
        bias = None if bias is None else bias.detach().clone()
        for sign, names in ((1.0, add), (-1.0, remove)):
            for name in names:
                delta = module.get_delta_weight(name)
                weight += sign * delta.to(weight.dtype)
                if module.lora_bias.get(name) and bias is not None:
                    bias += sign * (module.lora_B[name].bias * module.scaling[name]).to(bias.dtype)
    return (weight.t() if conv1d else weight), bias


def mlp_weights(model: nn.Module, layer: int) -> MLPWeights:
    """The layer's current MLP weights, as the model's forward applies them.

    For plain ``Linear`` / ``Conv1D`` projections these are views of the model's parameters (no
    copy). For peft LoRA layers that are not merged (a ``PeftModel`` as trained), the effective
    weights ``W + scaling * B @ A`` are computed (new tensors), never the base weights alone; see
    :func:`effective_weight`.
    """
    mods = mlp_modules(model, layer)
    conv = mods.spec.conv1d
    up, up_bias = effective_weight(mods.up, conv)
    down, down_bias = effective_weight(mods.down, conv)
    gate, gate_bias = effective_weight(mods.gate, conv) if mods.gate is not None else (None, None)
    return MLPWeights(
        up=up, down=down, act=mods.act, gate=gate, up_bias=up_bias, gate_bias=gate_bias, down_bias=down_bias
    )
