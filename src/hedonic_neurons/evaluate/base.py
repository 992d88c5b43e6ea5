"""The evaluation extension point: an :class:`Evaluation` turns one layer's context into rows.

An evaluation is a class registered in :data:`EVALUATIONS`::

    from hedonic_neurons.evaluate.base import EVALUATIONS, Evaluation

    @EVALUATIONS.register("my-measure")
    class MyMeasure(Evaluation):
        title = "My measure"

        def evaluate(self, ctx):
            return [{"layer": ctx.layer, "method": m, "value": ...} for m in ctx.methods]

``hedonic run`` calls :meth:`Evaluation.evaluate` once per layer with a :class:`LayerContext`
(the model, the layer, the coalitions chosen for every method and seed, φ, the test pairs, their
targets and qrels, the shared ablation passes with the random-set null, the config) and puts the
rows into the report's tables (:meth:`Evaluation.tables`) and its summary sentences
(:meth:`Evaluation.summary`). Row values are numbers, strings, or ``{"mean", "low", "high"}``
intervals.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from hedonic_neurons.registry import Registry

if TYPE_CHECKING:
    from hedonic_neurons.models.neuron_model import NeuronModel


class Evaluation(ABC):
    """One evaluation: rows per layer from a :class:`LayerContext`; tables and sentences from
    the rows of every layer."""

    #: the title of its table in the report
    title: ClassVar[str] = ""
    #: whether its rows describe each method's coalitions (``hedonic run``'s φ resampling re-runs
    #: such evaluations on every resample's coalitions; one that measures something else, like φ
    #: itself, sets False and runs once)
    per_method: ClassVar[bool] = True

    @abstractmethod
    def evaluate(self, ctx: LayerContext) -> list[dict[str, Any]]:
        """Flat row dicts for one layer."""

    def tables(self, rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
        """Table title → rows (default: one table of all rows under :attr:`title`)."""
        return {self.title or type(self).__name__: rows} if rows else {}

    def summary(self, rows: list[dict[str, Any]]) -> list[str]:
        """Plain sentences: what the rows conclude (default: none)."""
        return []


EVALUATIONS: Registry[type[Evaluation]] = Registry(
    "evaluation",
    base=Evaluation,
    defaults=("hedonic_neurons.evaluate.builtin", "hedonic_neurons.evaluate.validity"),
)


@dataclass
class EffectArrays:
    """Per-query effect measures of one mode (``{"dloss", "rms"}`` → array).

    ``coal``: (C, Q) on all test queries, rows as in the outputs' ``coalitions``; ``ceiling``:
    (Q,) whole-layer ablation; ``coal_sub`` (C, Qs) and ``null`` (M, Qs) on the subsample's
    queries.
    """

    coal: dict[str, np.ndarray]
    ceiling: dict[str, np.ndarray]
    coal_sub: dict[str, np.ndarray]
    null: dict[str, np.ndarray]


@dataclass
class LayerContext:
    """Everything an evaluation of one layer sees.

    ``chosen[(seed, method)]``: the coalitions evaluated for that method and seed (size-matched
    to ``targets[seed]``), ``skipped[(seed, method)]`` targets it could not match. ``outputs``:
    mode → :class:`~hedonic_neurons.evaluate.passes.LayerOutputs`. ``groups`` (P,) each pair's
    query index, ``n_queries``; ``sub_groups`` likewise for the subsample. ``sd``: the
    standard deviation of the unablated outputs on the test pairs (the unit of Δlogit).
    ``bins``: the null's size bins (lower end, bins per octave).
    """

    nm: NeuronModel
    layer: int
    task: str
    methods: list[str]
    seeds: list[int]
    chosen: dict[tuple[int, str], list[list[int]]]
    skipped: dict[tuple[int, str], int]
    targets: dict[int, list[int]]
    phi: np.ndarray | None
    pairs: list[Any]
    y: np.ndarray
    qrels: dict
    outputs: dict[str, Any]
    config: Any
    groups: np.ndarray
    n_queries: int
    sub_groups: np.ndarray
    n_sub_queries: int
    bins: tuple[int, int]
    notes: list[str] = field(default_factory=list)
    #: seconds (``null``, ``rest``, ``attribution``) and sequences forwarded (``null_rows``, ``rest_rows``)
    timing: dict[str, float] = field(default_factory=dict)
    #: the layer's reference MLP weights and the neurons' mean activations as the evaluation was
    #: given them (None: the model's own reference weights / no means); ``phi_source``: what φ is,
    #: in words (e.g. "local-readout PAS"; "" when unknown)
    reference: Any = None
    means: Any = None
    phi_source: str = ""

    @property
    def modes(self) -> list[str]:
        return list(self.outputs)

    @cached_property
    def sd(self) -> float:
        from hedonic_neurons.evaluate.measures import output_sd

        return output_sd(next(iter(self.outputs.values())).base)

    def effects(self, mode: str) -> EffectArrays:
        """Per-query measures of ``mode`` (computed once)."""
        cache = self.__dict__.setdefault("_effects", {})
        if mode not in cache:
            from hedonic_neurons.evaluate.measures import effect_measures

            out = self.outputs[mode]
            y, g, q = self.y, self.groups, self.n_queries
            ys, gs, qs = self.y[out.sub], self.sub_groups, self.n_sub_queries
            coal = effect_measures(self.task, out.base, out.ablated, y, g, q, self.sd)
            ceil = effect_measures(self.task, out.base, out.ceiling[None], y, g, q, self.sd)
            base_s = out.base[out.sub]
            coal_s = effect_measures(self.task, base_s, out.ablated[:, out.sub], ys, gs, qs, self.sd)
            null = effect_measures(self.task, base_s, out.null, ys, gs, qs, self.sd)
            cache[mode] = EffectArrays(coal, {k: v[0] for k, v in ceil.items()}, coal_s, null)
        return cache[mode]

    def rows_of(self, mode: str, seed: int, method: str) -> list[int]:
        """Rows (in the outputs of ``mode``) of the coalitions of (seed, method)."""
        out = self.outputs[mode]
        return [out.row_of(c) for c in self.chosen.get((seed, method), [])]

    def bin_of(self, size: int) -> int:
        from hedonic_neurons.evaluate.null import size_bin

        return size_bin(size, *self.bins)
