"""Reference weights: the MLP weights that reference ablation reverts a neuron to.

A :class:`Reference` gives, per layer, the pre-fine-tuning MLP weights of the model it belongs
to, as fp32 copies on the model's device (:class:`~hedonic_neurons.models.adapters.MLPWeights`).
Three kinds:

- :class:`LoraReference`: the model carries a merged LoRA adapter; the reference is the merged
  weight minus the LoRA update, ``W - scaling * B @ A``, rebuilt per layer from the kept low-rank
  factors (exact to the rounding of the merge: ~1e-7 relative in float32, one unit in the last
  place of the merged weight in bfloat16/float16). It costs almost no memory.
- :class:`CheckpointReference`: two full checkpoints; the reference tensors are read per layer
  from the first (pre-fine-tuning) checkpoint folder on disk (safetensors, memory-mapped).
- :class:`ModelReference`: a second in-memory model object of the same architecture.

On layers the fine-tuning did not touch the reference equals the current weights.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hedonic_neurons.errors import ModelError
from hedonic_neurons.models import adapters
from hedonic_neurons.models.adapters import MLPWeights
from hedonic_neurons.models.checkpoint import Checkpoint, shape_text

if TYPE_CHECKING:
    from hedonic_neurons.models.neuron_model import NeuronModel

ROLES = ("up", "gate", "down")


def _fp32_copy(t: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if t is None else t.detach().to(device=device, dtype=torch.float32, copy=True)


class Reference(abc.ABC):
    """The pre-fine-tuning MLP weights of a model, per layer."""

    @abc.abstractmethod
    def mlp_weights(self, nm: NeuronModel, layer: int) -> MLPWeights:
        """Layer ``layer``'s reference MLP weights for ``nm``: fp32 copies on ``nm.device``, in
        the :class:`MLPWeights` layout (``up``/``gate`` (n, d), ``down`` (d, n))."""

    def check(self, model: nn.Module, shown: str) -> None:  # noqa: B027 (optional hook)
        """Raise a one-line ModelError if this reference cannot belong to ``model``."""


class LoraReference(Reference):
    """Reference = current weights minus the LoRA update, rebuilt from the kept factors.

    ``factors[(layer, role)]``: a list of ``(A, B, scaling)`` (A (r, in), B (out, r)), summed;
    a single tuple is accepted too. ``biases[(layer, role)]``: the pre-LoRA bias where the
    adapter trained one (missing keys: the current bias). ``role`` is "up", "gate" or "down".
    :func:`hedonic_neurons.models.lora.lora_factors` reads both from a peft model.
    """

    def __init__(
        self,
        factors: Mapping[tuple[int, str], Any],
        biases: Mapping[tuple[int, str], torch.Tensor | None] | None = None,
    ) -> None:
        self.factors: dict[tuple[int, str], list[tuple[torch.Tensor, torch.Tensor, float]]] = {}
        for key, terms in factors.items():
            if key[1] not in ROLES:
                raise ModelError(f"LoRA factor key {key}: the role must be one of {', '.join(ROLES)}")
            if isinstance(terms, tuple) and len(terms) == 3 and isinstance(terms[0], torch.Tensor):
                terms = [terms]
            self.factors[key] = [(a.float(), b.float(), float(s)) for a, b, s in terms]
        self.biases = dict(biases or {})

    def mlp_weights(self, nm: NeuronModel, layer: int) -> MLPWeights:
        cur = nm.mlp_weights(layer)
        dev = nm.device
        out: dict[str, Any] = {}
        for role in ROLES:
            w = _fp32_copy(getattr(cur, role), dev)
            for a, b, scaling in self.factors.get((layer, role), ()) if w is not None else ():
                if tuple(b.shape[:1]) + tuple(a.shape[1:]) != tuple(w.shape):
                    raise ModelError(
                        f"LoRA factors of layer {layer} {role} give {shape_text((b.shape[0], a.shape[1]))}, "
                        f"but the weight is {shape_text(w.shape)}"
                    )
                w -= scaling * (b.to(dev) @ a.to(dev))
            out[role] = w
            bias = self.biases.get((layer, role), getattr(cur, f"{role}_bias"))
            out[f"{role}_bias"] = _fp32_copy(bias, dev)
        return MLPWeights(act=cur.act, **out)


class CheckpointReference(Reference):
    """Reference MLP weights read per layer from the first (pre-fine-tuning) checkpoint folder.

    ``model``: the fine-tuned model the folder is matched against (tensor names by suffix, shapes
    exactly); a one-line ModelError if the folder is not the same architecture.
    """

    def __init__(self, folder: str | Path, model: nn.Module, shown: str | None = None) -> None:
        folder = Path(folder).expanduser()
        shown = shown or str(getattr(model.config, "_name_or_path", "") or type(model).__name__)
        self.folder = folder
        self.ckpt = Checkpoint(folder)
        model = adapters.unwrap_peft(model)
        spec = adapters.get_spec(model)
        body_name = adapters.module_name(model, adapters.body(model))
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
                        f"{rel}.{kind}: it does not look like the same architecture as {shown} "
                        f"({spec.family})"
                    )
                got, want = self.ckpt.shape(hits[0]), tuple(params[full].shape)
                if got != want:
                    raise ModelError(
                        f"reference checkpoint {folder}: {rel}.{kind} has shape {shape_text(got)}, "
                        f"but in {shown} it "
                        f"is {shape_text(want)}; the two checkpoints must have the same architecture"
                    )
                self.keys[(layer, role, kind)] = hits[0]
        self._cache: tuple[int, MLPWeights] | None = None

    def mlp_weights(self, nm: NeuronModel, layer: int) -> MLPWeights:
        if self._cache is not None and self._cache[0] == layer:
            return self._cache[1]
        cur = nm.mlp_weights(layer)
        dev = nm.device
        out: dict[str, Any] = {}
        for role in ROLES:
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


class ModelReference(Reference):
    """Reference MLP weights taken from a second in-memory model of the same architecture (for
    example the base model before full fine-tuning). A peft model counts with its effective
    (LoRA-included) weights. The reference model is only read, never changed."""

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module) or not hasattr(model, "config"):
            raise ModelError(
                f"a reference model must be a transformers model object, got {type(model).__name__}"
            )
        self.model = model
        self.spec = adapters.get_spec(model)

    def check(self, model: nn.Module, shown: str) -> None:
        mine = (self.spec.family, adapters.n_layers(self.model), adapters.n_neurons(self.model))
        theirs = (adapters.get_spec(model).family, adapters.n_layers(model), adapters.n_neurons(model))
        if mine != theirs:
            raise ModelError(
                f"the reference model is {mine[0]} with {mine[1]} layers x {mine[2]} neurons, but {shown} is "
                f"{theirs[0]} with {theirs[1]} layers x {theirs[2]} neurons; they must have the same "
                "architecture"
            )
        for layer in range(theirs[1]):
            ref, cur = adapters.mlp_weights(self.model, layer), adapters.mlp_weights(model, layer)
            for role in ROLES:
                a, b = getattr(ref, role), getattr(cur, role)
                if (a is None) != (b is None) or (a is not None and a.shape != b.shape):
                    raise ModelError(
                        f"the reference model's layer {layer} {role} weight does not match {shown}'s "
                        f"({shape_text(a.shape) if a is not None else 'none'} vs "
                        f"{shape_text(b.shape) if b is not None else 'none'}); same architecture needed"
                    )

    def mlp_weights(self, nm: NeuronModel, layer: int) -> MLPWeights:
        dev = nm.device
        ref = adapters.mlp_weights(self.model, layer).map(lambda t: _fp32_copy(t, dev))
        return dataclasses.replace(ref, act=nm.mlp_weights(layer).act)


def as_reference(reference: Any, model: nn.Module, shown: str) -> Reference | None:
    """A :class:`Reference` from what a user passed: None, a Reference, a model object (also
    nnsight-wrapped) or a checkpoint folder. Checked against ``model``."""
    if reference is None or isinstance(reference, Reference):
        ref = reference
    elif isinstance(reference, (str, Path)) or hasattr(reference, "__fspath__"):
        from hedonic_neurons.models.cache import resolve

        target, _, _ = resolve(reference)
        if not Path(target).is_dir():
            raise ModelError(
                f"reference {reference}: expected a checkpoint folder (or a built-in name) with the "
                "pre-fine-tuning weights"
            )
        ref = CheckpointReference(target, model, shown)
    else:
        from hedonic_neurons.models.interop import unwrap_model

        ref = ModelReference(unwrap_model(reference))
    if ref is not None:
        ref.check(model, shown)
    return ref
