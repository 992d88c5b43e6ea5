"""Models: architecture adapters (the neuron site), loading (transformers + peft), input format.

:func:`load_model` (names, paths, model objects) and :meth:`NeuronModel.from_hf` (model objects)
-> :class:`NeuronModel` (model, tokenizer, reference MLP weights, input format); the reference
kinds are :class:`LoraReference`, :class:`CheckpointReference` and :class:`ModelReference`;
:class:`InputFormat` is the one place model inputs are formatted; the adapter functions locate
each family's MLP modules (see :mod:`hedonic_neurons.models.adapters`).

Names are imported on first use, so ``import hedonic_neurons.models.cli`` (and ``hedonic --help``)
does not pull in torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "hedonic_neurons.models.adapters": (
        "ARCHITECTURES",
        "ArchSpec",
        "MLPModules",
        "MLPWeights",
        "block",
        "body",
        "check_layer",
        "effective_weight",
        "final_norm",
        "get_spec",
        "is_encoder",
        "is_peft",
        "linear_weight",
        "mlp_module_names",
        "mlp_modules",
        "mlp_weights",
        "n_layers",
        "n_neurons",
        "register_architecture",
        "supported_model_types",
        "unwrap_peft",
    ),
    "hedonic_neurons.models.inputs": ("InputFormat",),
    "hedonic_neurons.models.loading": ("BUILTINS", "HEAD_SEED", "load_model"),
    "hedonic_neurons.models.neuron_model": ("NeuronModel",),
    "hedonic_neurons.models.reference": (
        "CheckpointReference",
        "LoraReference",
        "ModelReference",
        "Reference",
    ),
    "hedonic_neurons.models.interop": ("unwrap_model",),
    "hedonic_neurons.models.plant": ("PlantResult", "PlantSpec", "load_ground_truth", "pair_deltas", "plant"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'hedonic_neurons.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
