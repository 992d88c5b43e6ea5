"""Tracking rules: how the coalitions of two layers are labelled from their interaction mass.

A rule is a :class:`TrackingRule` registered in :data:`TRACKING_RULES`; the configuration's
``tracking.rule``, ``hedonic track --rule`` and :func:`~hedonic_neurons.tracking.track_layers`
read their choices from the registry. Adding a rule is one class and one registration::

    from hedonic_neurons.tracking import TRACKING_RULES, TrackingRule

    @TRACKING_RULES.register("argmax")
    class Argmax(TrackingRule):
        def classify(self, mass, *, tau, null):
            ...

Built-in rules (the labels are defined in :mod:`hedonic_neurons.tracking.transitions`):

- ``"null"`` (the default): links judged against a size-preserving random-partition null of the
  layer pair (:mod:`hedonic_neurons.tracking.null`); takes no τ;
- ``"matching"``: maximum-weight matching and absolute thresholds on α and β (τ default 0.5);
- ``"code"``: the public code's relative thresholds on M (τ default 0.30).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from hedonic_neurons.errors import ConfigError
from hedonic_neurons.registry import Registry
from hedonic_neurons.tracking.null import NullModel, classify_null

__all__ = [
    "LABELS",
    "SOURCE_LABELS",
    "TRACKING_RULES",
    "CodeRule",
    "MatchingRule",
    "NullRule",
    "TrackingRule",
    "alpha_beta",
    "get_rule",
]

LABELS = ("persistence", "split", "merge", "vanishing", "emergence", "unstructured")
SOURCE_LABELS = ("persistence", "split", "merge", "vanishing", "unstructured")


class TrackingRule(ABC):
    """The protocol of a tracking rule: labels for one layer pair from its mass matrix.

    Class attributes: ``uses_null`` (True: :func:`~hedonic_neurons.tracking.track_layers` draws
    the random-partition null of the layer pair and passes it as ``null``; the rule then takes
    no τ) and ``default_tau`` (the threshold when the caller gives none; None for a rule without
    a τ, which then refuses one).
    """

    uses_null: ClassVar[bool] = False
    default_tau: ClassVar[float | None] = None

    def check_tau(self, name: str, tau: float | None) -> float | None:
        """The τ to use: ``tau`` or the default, checked in (0, 1]; None for a rule without τ
        (an explicit ``tau`` is then an error naming the rules that take one)."""
        if self.default_tau is None:
            if tau is not None:
                takes = [n for n, r in TRACKING_RULES.items() if r.default_tau is not None]
                raise ConfigError(
                    f"tau applies to the absolute rules ({', '.join(map(repr, takes))}); "
                    f"rule {name!r} sets it from the null"
                    if self.uses_null
                    else f"tau applies to the rules {', '.join(map(repr, takes))}; rule {name!r} takes none"
                )
            return None
        tau = self.default_tau if tau is None else tau
        if isinstance(tau, bool) or not isinstance(tau, int | float) or not 0 < tau <= 1:
            raise ConfigError(f"tau must be in (0, 1], got {tau!r}")
        return float(tau)

    @abstractmethod
    def classify(self, mass: np.ndarray, *, tau: float | None, null: NullModel | None) -> dict[str, Any]:
        """Labels from ``mass`` (finite, non-negative, sources x targets).

        Returns a dict with ``matches`` (list of (source, target, label)), ``source_labels``,
        ``target_labels``, ``counts`` (per label) and ``basis`` (per counted label: ``"sources"``
        or ``"targets"``, what its percentage is taken over). A rule using the null also returns
        ``links`` (the significant (source, target, label) triples), ``lift_alpha``,
        ``lift_beta`` (K x K'), ``out_mass`` and ``in_mass``.
        """


TRACKING_RULES: Registry[type[TrackingRule]] = Registry(
    "tracking rule", base=TrackingRule, defaults=("hedonic_neurons.tracking.rules",)
)


def get_rule(name: str) -> TrackingRule:
    """An instance of the rule registered as ``name`` (an unknown name: one ConfigError naming
    the registered rules)."""
    return TRACKING_RULES.get(name)()


def alpha_beta(mass: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-normalised alpha and column-normalised beta for every (source, target) pair.

    ``alpha[i]`` sums to 1 over targets and ``beta[:, j]`` to 1 over sources, except for a source
    (target) with no mass at all, whose row (column) is zero.
    """
    mass = np.asarray(mass, dtype=np.float64)
    rows = mass.sum(axis=1, keepdims=True)
    cols = mass.sum(axis=0, keepdims=True)
    alpha = np.divide(mass, rows, out=np.zeros_like(mass), where=rows > 0)
    beta = np.divide(mass, cols, out=np.zeros_like(mass), where=cols > 0)
    return alpha, beta


def _matching(mass: np.ndarray) -> list[tuple[int, int]]:
    """Maximum-weight bipartite matching on M (pairs with zero mass are not kept)."""
    from scipy.optimize import linear_sum_assignment

    if not mass.size:
        return []
    return [(int(i), int(j)) for i, j in zip(*linear_sum_assignment(mass, maximize=True)) if mass[i, j] > 0]


def _pair_label(alpha: float, beta: float, tau: float) -> str:
    if alpha >= tau:
        return "persistence" if beta >= tau else "merge"
    return "split" if beta >= tau else "vanishing"


@TRACKING_RULES.register("null")
class NullRule(TrackingRule):
    """Significant links against the random-partition null
    (:func:`~hedonic_neurons.tracking.null.classify_null`); the maximum-weight matching is still
    reported, its pairs labelled by their link (else vanishing / unstructured, as their source)."""

    uses_null = True

    def classify(self, mass: np.ndarray, *, tau: float | None, null: NullModel | None) -> dict[str, Any]:
        if null is None:
            raise ConfigError("rule 'null' needs the random-partition null of the layer pair (null=...)")
        out = classify_null(mass, null)
        sig = {(i, j): lab for i, j, lab in out["links"]}
        src_labels = out["source_labels"]
        matches = []
        for i, j in _matching(mass):
            label = sig.get((i, j), "vanishing" if src_labels[i] == "vanishing" else "unstructured")
            matches.append((i, j, label))
        counts = {lab: src_labels.count(lab) for lab in SOURCE_LABELS}
        counts["emergence"] = out["target_labels"].count("emergence")
        basis = {lab: "sources" for lab in SOURCE_LABELS} | {"emergence": "targets"}
        return {**out, "matches": matches, "counts": counts, "basis": basis}


@TRACKING_RULES.register("matching")
class MatchingRule(TrackingRule):
    """Maximum-weight matching; a matched pair is persistence (α ≥ τ, β ≥ τ), split (α < τ ≤ β),
    merge (β < τ ≤ α) or vanishing (both < τ); an unmatched source vanishes, an unmatched target
    emerges. Percentages over the sources, emergence over the targets."""

    default_tau = 0.5

    def classify(self, mass: np.ndarray, *, tau: float | None, null: NullModel | None) -> dict[str, Any]:
        alpha, beta = alpha_beta(mass)
        src_labels = ["vanishing"] * mass.shape[0]
        tgt_labels = ["emergence"] * mass.shape[1]
        matches = []
        for i, j in _matching(mass):
            label = _pair_label(alpha[i, j], beta[i, j], tau)
            src_labels[i] = tgt_labels[j] = label
            matches.append((i, j, label))
        counts = {lab: src_labels.count(lab) for lab in LABELS[:4]}
        counts["emergence"] = tgt_labels.count("emergence")
        basis = {lab: "sources" for lab in LABELS[:4]} | {"emergence": "targets"}
        return dict(
            matches=matches, source_labels=src_labels, target_labels=tgt_labels, counts=counts, basis=basis
        )


@TRACKING_RULES.register("code")
class CodeRule(TrackingRule):
    """Relative thresholds on M: parent i persists if its row-argmax j has i as column-argmax;
    else it splits if ≥ 2 children have M[i, j] ≥ τ·rowmax_i; a child with ≥ 2 parents (not
    persisted or split) at M[i, j] ≥ τ·colmax_j is a merge; remaining parents vanish, remaining
    children emerge. Percentages: persistence / split / vanishing over parents, merge / emergence
    over children."""

    default_tau = 0.3

    def classify(self, mass: np.ndarray, *, tau: float | None, null: NullModel | None) -> dict[str, Any]:
        k_src, k_tgt = mass.shape
        src_labels = ["vanishing"] * k_src
        tgt_labels = ["emergence"] * k_tgt
        matches = []
        if mass.size:
            rowmax, colmax = mass.max(axis=1), mass.max(axis=0)
            for i in range(k_src):
                if rowmax[i] <= 0:
                    continue
                j = int(mass[i].argmax())
                if int(mass[:, j].argmax()) == i:
                    src_labels[i] = tgt_labels[j] = "persistence"
                    matches.append((i, j, "persistence"))
                    continue
                children = np.flatnonzero(mass[i] >= tau * rowmax[i])
                if children.size >= 2:
                    src_labels[i] = "split"
                    for c in children:
                        if tgt_labels[c] == "emergence":
                            tgt_labels[c] = "split"
                        matches.append((i, int(c), "split"))
            for j in range(k_tgt):
                if tgt_labels[j] != "emergence" or colmax[j] <= 0:
                    continue
                parents = [
                    i for i in np.flatnonzero(mass[:, j] >= tau * colmax[j]) if src_labels[i] == "vanishing"
                ]
                if len(parents) >= 2:
                    tgt_labels[j] = "merge"
                    for i in parents:
                        src_labels[i] = "merge"
                        matches.append((int(i), j, "merge"))
        counts = {lab: src_labels.count(lab) for lab in ("persistence", "split", "vanishing")}
        counts |= {lab: tgt_labels.count(lab) for lab in ("merge", "emergence")}
        basis = {"persistence": "sources", "split": "sources", "vanishing": "sources"}
        basis |= {"merge": "targets", "emergence": "targets"}
        return dict(
            matches=matches, source_labels=src_labels, target_labels=tgt_labels, counts=counts, basis=basis
        )
