"""The protocol of a synergy metric and the registry of metrics (``hedonic collect --metric``).

A synergy metric turns a model and a stream of tokenised batches into φ, the pairwise value of
one MLP layer's neurons (a symmetric n × n float32 matrix with a zero diagonal), and optionally
its standard errors. It is a streaming, resumable, distributed accumulator: the runner
(:func:`hedonic_neurons.synergy.collect.collect`, the one-call functions of
:mod:`hedonic_neurons.synergy.api`) makes one with :meth:`SynergyMetric.create`, enters it, feeds
it batches with :meth:`~SynergyMetric.update`, checkpoints it with
:meth:`~SynergyMetric.state_dict` / :meth:`~SynergyMetric.load_state_dict`, sums it over
processes with :meth:`~SynergyMetric.all_reduce` and reads φ with :meth:`~SynergyMetric.result`.

Adding a metric is one new file that defines a subclass and registers it::

    from hedonic_neurons.synergy.base import METRICS, SynergyMetric

    @METRICS.register("abs-corr")
    class AbsCorr(SynergyMetric):
        settings_fields = ("pooling",)
        multi_layer = True
        ...

``hedonic collect --metric abs-corr``, :class:`~hedonic_neurons.config.PhiConfig`'s ``metrics``
and :func:`hedonic_neurons.synergy.api.synergy` then accept it. The settings a metric reads are
fields of :class:`~hedonic_neurons.synergy.collect.CollectSettings`; the ones it declares in
:attr:`SynergyMetric.settings_fields` are recorded in the phi sidecar and are part of the key that
decides whether a finished layer or a checkpoint is reused.

This module imports nothing heavy: the built-in metrics (OCA and PAS, in
:mod:`hedonic_neurons.synergy.collect`, which imports torch) are registered the first time the
registry is asked for a name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from hedonic_neurons.errors import ModelError, arg
from hedonic_neurons.registry import Registry

if TYPE_CHECKING:
    from hedonic_neurons.models.neuron_model import NeuronModel


class SynergyMetric(ABC):
    """A streaming accumulator of one synergy metric over a model's layers.

    Class-level facts the runner, the configuration and the command line read:

    - :attr:`settings_fields`: the fields of ``CollectSettings`` that determine this metric's φ
      (recorded in the sidecar by :meth:`describe_settings`, hence part of the resume key);
    - :attr:`multi_layer`: one pass over the data collects every requested layer at once (OCA);
      otherwise the runner makes one accumulator, and one pass, per layer (PAS);
    - :attr:`streaming`: the metric is a streaming statistic whose cost is one forward pass per
      batch, so the pipeline's input budget (``phi.max_inputs`` of ``hedonic run``, meant for
      expensive metrics) does not apply to it: it uses every training input. (An explicit
      ``max_inputs`` of ``hedonic collect`` / ``CollectSettings`` selects the first N inputs
      for any metric.)
    - :meth:`needs_reference`: whether the settings need the pre-fine-tuning weights;
    - :meth:`check_settings`: combinations of settings the metric refuses.

    Instances: ``update(batch, index)`` adds one tokenised batch (``input_ids``,
    ``attention_mask``, ... on the model's device; ``index`` is the batch's number, for error
    messages); ``state_dict`` / ``load_state_dict`` save and restore every accumulator (tensors;
    a resumed run must give the same φ as an uninterrupted one); ``all_reduce`` sums the
    accumulators of all torch.distributed ranks (a no-op in one process); ``result(layer)``
    returns ``(phi, info)``: φ as a float32 n × n array and a JSON-safe dict for the sidecar;
    ``arrays(layer)`` the extra arrays written into the phi file beside it (``phi_se``: the
    standard errors, same shape); ``summary_mask(layer)`` the entries φ's summary covers (None:
    every off-diagonal entry).
    """

    #: The metric's name, for messages (the runner uses the name the registry holds it under,
    #: which is the same for the built-in metrics and may differ, e.g. with
    #: ``METRICS.temporarily``).
    name: ClassVar[str] = ""
    #: The ``CollectSettings`` fields that determine φ (besides batch_size, seed, max_inputs).
    settings_fields: ClassVar[tuple[str, ...]] = ()
    #: One pass collects all requested layers (else one pass per layer).
    multi_layer: ClassVar[bool] = False
    #: A streaming statistic: the pipeline's input budget does not apply (it uses every input).
    streaming: ClassVar[bool] = True
    #: The keyword options :meth:`create` passes on to the accumulator (others are ignored by
    #: the runner's calls and refused by :func:`hedonic_neurons.synergy.api.synergy`).
    options: ClassVar[tuple[str, ...]] = ()

    # ------------------------------------------------------------------- facts about settings

    @classmethod
    def check_settings(cls, settings: Any) -> None:
        """Raise a :class:`~hedonic_neurons.errors.ConfigError` for a combination of settings this
        metric cannot use (the fields' own values are checked by ``CollectSettings.check``)."""
        return None

    @classmethod
    def needs_reference(cls, settings: Any) -> bool:
        """Whether these settings need the model's reference (pre-fine-tuning) weights."""
        return False

    @classmethod
    def describe_settings(cls, settings: Any, metric: str) -> dict[str, Any]:
        """The settings that determine φ, as recorded in the sidecar (and hashed into the key)."""
        out: dict[str, Any] = {
            "metric": metric,
            "batch_size": settings.batch_size,
            "max_inputs": settings.max_inputs,
            "seed": settings.seed,
        }
        out.update({name: getattr(settings, name) for name in cls.settings_fields})
        return out

    @classmethod
    def create(cls, nm: NeuronModel, layers: Sequence[int], settings: Any, **options: Any) -> SynergyMetric:
        """An accumulator for ``layers`` (one layer unless :attr:`multi_layer`) of the NeuronModel
        ``nm``. ``options``: keyword arguments for the accumulator; the ones named in
        :attr:`options` are passed on, the others (the runner's tuning knobs for other metrics,
        e.g. ``max_elements``) are ignored. The default calls
        ``cls(nm, layers, settings, **accepted)``."""
        accepted = {k: v for k, v in options.items() if k in cls.options}
        return cls(nm, layers, settings, **accepted)  # type: ignore[call-arg]

    # ------------------------------------------------------------------------ the accumulator

    def __enter__(self) -> SynergyMetric:
        """Install what the updates need (hooks, ...); the default installs nothing."""
        return self

    def __exit__(self, *exc: Any) -> None:
        """Remove what :meth:`__enter__` installed (also after an error)."""
        return None

    @abstractmethod
    def update(self, batch: dict[str, Any], index: int) -> None:
        """Add one tokenised batch."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Every accumulator, as tensors (saved with safetensors in checkpoints)."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s accumulators; a state without one of them raises KeyError
        (the runner then starts the pass over)."""

    @abstractmethod
    def all_reduce(self) -> None:
        """Sum the accumulators over torch.distributed ranks (a no-op in one process)."""

    @abstractmethod
    def result(self, layer: int) -> tuple[Any, dict[str, Any]]:
        """(φ as a float32 n × n array, JSON-safe information for the sidecar) of ``layer``."""

    def arrays(self, layer: int) -> dict[str, Any]:
        """Extra arrays saved in the phi file beside ``phi`` (e.g. ``{"phi_se": se}``)."""
        return {}

    def summary_mask(self, layer: int) -> Any:
        """Boolean n × n mask of the entries φ's summary covers (None: all off-diagonal ones)."""
        return None


METRICS: Registry[type[SynergyMetric]] = Registry(
    "synergy metric", base=SynergyMetric, defaults=("hedonic_neurons.synergy.collect",)
)


def reference_error() -> ModelError:
    """The error for settings that need reference weights (reference ablation) on a model without
    them."""
    return ModelError(
        f"reference ablation needs the pre-fine-tuning weights: pass {arg('adapter')} or "
        f"{arg('reference')}, or use {arg('ablation')} zero"
    )
