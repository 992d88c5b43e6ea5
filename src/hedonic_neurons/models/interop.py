"""Model objects from other interpretability libraries: what the library accepts in their place.

- nnsight (``nnsight.NNsight(model)``, ``LanguageModel``): the wrapper is unwrapped to the
  Hugging Face module it traces (``._module``; older versions: ``._model``); a
  ``LanguageModel``'s tokenizer is used when none is given.
- TransformerLens ``HookedTransformer``: refused. Its weights are re-arranged (folded layer norms,
  split attention heads, its own module names), so the neuron sites of the Hugging Face model do
  not exist in it; pass the Hugging Face model instead.
- TransformerLens ``TransformerBridge``: unwrapped to the Hugging Face model it wraps
  (``original_model``) where it exposes one, else refused like ``HookedTransformer``. The bridge
  wraps that model's modules in its own (``LinearBridge``, ...), which keep the weights and the
  forward, so the neuron sites and weights are the same; module and parameter names gain
  ``._original_component`` parts, so match a reference by model object (``ModelReference``)
  rather than by checkpoint folder or adapter folder.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from hedonic_neurons.errors import ModelError


def _classes(obj: Any) -> list[tuple[str, str]]:
    return [(c.__module__ or "", c.__name__) for c in type(obj).__mro__]


def _is_nnsight(obj: Any) -> bool:
    return any(mod.split(".")[0] == "nnsight" and name == "Envoy" for mod, name in _classes(obj))


def _transformer_lens_kind(obj: Any) -> str | None:
    for mod, name in _classes(obj):
        if mod.split(".")[0] == "transformer_lens":
            if name in ("TransformerBridge", "BridgeCore"):
                return "bridge"
            if name in ("HookedTransformer", "HookedEncoder", "HookedRootModule"):
                return "hooked"
    return None


def _refuse_transformer_lens(obj: Any) -> ModelError:
    return ModelError(
        f"a TransformerLens {type(obj).__name__} is not supported (its weights are re-arranged, so the "
        "Hugging Face neuron sites do not exist in it): pass the Hugging Face model instead, e.g. "
        "transformers.AutoModelForSequenceClassification.from_pretrained(...)"
    )


def wrapper_tokenizer(obj: Any) -> Any:
    """The tokenizer an nnsight ``LanguageModel`` carries (``.tokenizer``), else None."""
    return obj.__dict__.get("tokenizer") if _is_nnsight(obj) else None


def unwrap_model(obj: Any) -> nn.Module:
    """The Hugging Face model behind ``obj`` (see the module docstring), or ``obj`` itself.

    A peft model is returned as it is (the caller decides whether to merge it). Anything that is
    not a ``torch.nn.Module`` with a ``config`` after unwrapping is a one-line ModelError.
    """
    for _ in range(4):  # a bridge inside nnsight, ...
        if _is_nnsight(obj):
            inner = obj.__dict__.get("_module", obj.__dict__.get("_model"))
            if inner is None:
                raise ModelError(
                    f"could not find the module inside the nnsight {type(obj).__name__}; pass the "
                    "Hugging Face model instead"
                )
            obj = inner
            continue
        kind = _transformer_lens_kind(obj)
        if kind == "hooked":
            raise _refuse_transformer_lens(obj)
        if kind == "bridge":
            try:
                inner = obj.original_model
            except AttributeError:  # a bridge over a non-torch driver (vLLM, ...)
                inner = None
            if not isinstance(inner, nn.Module) or not hasattr(inner, "config"):
                raise _refuse_transformer_lens(obj)
            obj = inner
            continue
        break
    if not isinstance(obj, nn.Module) or not hasattr(obj, "config"):
        raise ModelError(
            f"expected a transformers model object (or a peft / nnsight wrapper of one), got "
            f"{type(obj).__module__}.{type(obj).__name__}"
        )
    return obj
