"""hedonic-neurons: coalitions of cooperating MLP neurons, found with hedonic games.

The working set, one import away (``import hedonic_neurons as hn``)::

    nm = hn.NeuronModel.from_hf(model, tokenizer)       # or hn.load("minilm", adapter=...)
    phi = hn.oca(nm, pairs, layer=3)                     # or hn.pas(nm, pairs, 3, mode="taylor")
    part = hn.TopCover(k=2).fit(phi).partition_         # an hn.Partition
    with hn.ablate(nm, 3, part[0]):                      # any forward inside sees the ablation
        ...

The pipeline (one subpackage per stage)::

    data -> models -> neurons -> synergy (phi) -> game / baselines -> tracking -> evaluate -> report

Names are imported on first use, so ``import hedonic_neurons`` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> (module, attribute); attribute None means the module itself
_EXPORTS: dict[str, tuple[str, str | None]] = {
    # models
    "load": ("hedonic_neurons.models.loading", "load_model"),
    "load_model": ("hedonic_neurons.models.loading", "load_model"),
    "NeuronModel": ("hedonic_neurons.models.loading", "NeuronModel"),
    "mlp_weights": ("hedonic_neurons.models.adapters", "mlp_weights"),
    # neurons
    "record": ("hedonic_neurons.neurons.recording", "record"),
    "ablate": ("hedonic_neurons.neurons.ablation", "ablate"),
    "ablation_logits": ("hedonic_neurons.neurons.ablation", "ablation_logits"),
    # synergy
    "oca": ("hedonic_neurons.synergy.api", "oca"),
    "pas": ("hedonic_neurons.synergy.api", "pas"),
    # game and baselines
    "TopCover": ("hedonic_neurons.game.solvers", "TopCover"),
    "PACTopCover": ("hedonic_neurons.game.solvers", "PACTopCover"),
    "certify": ("hedonic_neurons.game.certify", "certify"),
    "RandomPartition": ("hedonic_neurons.baselines.partitioners", "RandomPartition"),
    "SphericalKMeans": ("hedonic_neurons.baselines.partitioners", "SphericalKMeans"),
    "Hierarchical": ("hedonic_neurons.baselines.partitioners", "Hierarchical"),
    "PhiCommunities": ("hedonic_neurons.baselines.partitioners", "PhiCommunities"),
    "Partition": ("hedonic_neurons.partition", "Partition"),
    "Partitioner": ("hedonic_neurons.partitioner", "Partitioner"),
    "PARTITIONERS": ("hedonic_neurons.partitioner", "PARTITIONERS"),
    "METRICS": ("hedonic_neurons.synergy.base", "METRICS"),
    "SynergyMetric": ("hedonic_neurons.synergy.base", "SynergyMetric"),
    "TRACKING_RULES": ("hedonic_neurons.tracking.rules", "TRACKING_RULES"),
    "EVALUATIONS": ("hedonic_neurons.evaluate.base", "EVALUATIONS"),
    "ARCHITECTURES": ("hedonic_neurons.models.adapters", "ARCHITECTURES"),
    # tracking, inspection, plots
    "track": ("hedonic_neurons.tracking.run", "track"),
    "inspect_coalition": ("hedonic_neurons.explore", "inspect_coalition"),
    "coalition_summaries": ("hedonic_neurons.explore", "coalition_summaries"),
    "explorer_section": ("hedonic_neurons.explore", "explorer_section"),
    "plot": ("hedonic_neurons.plot", None),
    "plant": ("hedonic_neurons.models.plant", "plant"),
    # errors
    "HedonicError": ("hedonic_neurons.errors", "HedonicError"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    try:
        module, attr = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'hedonic_neurons' has no attribute {name!r}") from None
    value = importlib.import_module(module)
    if attr is not None:
        value = getattr(value, attr)
    globals()[name] = value  # cache: the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
