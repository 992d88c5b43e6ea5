"""Matching and transition labels between the coalitions of two layers.

The rules are classes in a registry (:mod:`hedonic_neurons.tracking.rules`); the built-in ones:

Rule ``"null"`` (the default): every pair is judged against a size-preserving random-partition
null of the same two layers (:mod:`hedonic_neurons.tracking.null`, where the labels are
defined): persistence / split / merge / vanishing / unstructured per source, emergence per
target, with the thresholds set per layer pair from the null's 95th percentile. The
maximum-weight matching is still computed and reported (its pairs carry α, β, their lifts α·K',
β·K and the lifts' percentiles in the null), but the labels come from the significant links.

Rule ``"matching"`` (the first definition, absolute τ): maximum-weight bipartite matching on the
interaction mass M (``scipy.optimize.linear_sum_assignment(maximize=True)``; pairs with zero
mass are not kept). On each matched pair (C, C'):

- alpha = M(C, C') / sum_{C''} M(C, C'')  (share of the source's outgoing mass),
- beta  = M(C, C') / sum_{D} M(D, C')     (share of the target's incoming mass),

and the pair is *persistence* (alpha >= tau, beta >= tau), *split* (alpha < tau, beta >= tau),
*merge* (alpha >= tau, beta < tau) or *vanishing* (both < tau). An unmatched source vanishes; an
unmatched target emerges. Percentages: persistence / split / merge / vanishing over the tracked
sources (they sum to 100), emergence over the tracked targets.

Rule ``"code"`` (the public code's ``classify_events``, as its description reads; the code
itself was not available): relative thresholds on M. Parent i *persists* if its row-argmax j has
i as its column-argmax; otherwise it *splits* if at least two children have M[i, j] >= tau *
rowmax_i. Then a child j is a *merge* if at least two parents not already persisted or split
have M[i, j] >= tau * colmax_j (those parents are labelled merge). Remaining parents vanish,
remaining children (not a persisting partner, not above the split threshold of a split parent,
not a merge) emerge. Percentages as in that code: persistence / split / vanishing over parents, merge /
emergence over children. Its default tau is 0.30.

Coalitions smaller than ``min_size`` (default 2) are not tracked; :class:`TransitionResult` says
how many were dropped on each side. The two layers need not be adjacent (``target_layer`` =
``layer + h``): the weights passed in then link layer l's output to layer l+h's input through the
residual stream (:func:`hedonic_neurons.tracking.model.layer_pair_weights`).
"""

from __future__ import annotations

import copy
import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hedonic_neurons.errors import ConfigError, DataError
from hedonic_neurons.tracking.mass import interaction_mass
from hedonic_neurons.tracking.null import NullModel, check_null_settings, null_model
from hedonic_neurons.tracking.rules import LABELS, SOURCE_LABELS, TRACKING_RULES, alpha_beta, get_rule

__all__ = [
    "LABELS",
    "SOURCE_LABELS",
    "TRACKING_RULES",
    "TransitionResult",
    "alpha_beta",
    "classify_transitions",
    "markdown_table",
    "pair_rows",
    "track_layers",
    "transition_table",
    "write_pair_table",
    "write_transition_table",
]

_FULL_MASS_LIMIT = 100_000  # entries of M written in full into the JSON; larger: summary only


def _check_mass(mass: Any) -> np.ndarray:
    arr = np.asarray(mass, dtype=np.float64)
    if arr.ndim != 2:
        raise DataError(f"the mass matrix must be 2-d (sources x targets), got shape {arr.shape}")
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise DataError("the mass matrix must be finite and non-negative")
    return arr


def classify_transitions(
    mass: Any, tau: float | None = None, *, rule: str = "null", null: NullModel | None = None
) -> dict[str, Any]:
    """Matches and labels from a mass matrix (sources x targets) by the tracking rule registered
    as ``rule`` (:data:`~hedonic_neurons.tracking.rules.TRACKING_RULES`; see the module docstring).

    ``rule="null"`` needs ``null`` (:func:`~hedonic_neurons.tracking.null.null_model` of the same
    layer pair and coalition sizes) and takes no ``tau``; the absolute rules take ``tau``
    (default 0.5 for ``"matching"``, 0.30 for ``"code"``).

    Returns a dict with ``matches`` (list of (source, target, label)), ``source_labels``,
    ``target_labels``, ``counts`` (per label), ``percentages`` and ``basis`` (for each label,
    whether its percentage is over the sources or the targets); rule ``"null"`` adds ``links``
    (the significant (source, target, label) pairs), the lifts and the in / out masses.
    Percentages come in the order of :data:`LABELS`, then any other label a rule counts.
    """
    arr = _check_mass(mass)
    chosen = get_rule(rule)
    tau = chosen.check_tau(rule, tau)
    if chosen.uses_null and null is None:
        raise ConfigError(f"rule {rule!r} needs the random-partition null of the layer pair (null=...)")
    out = chosen.classify(arr, tau=tau, null=null if chosen.uses_null else None)
    denom = {"sources": arr.shape[0], "targets": arr.shape[1]}
    order = [lab for lab in LABELS if lab in out["counts"]]
    order += [lab for lab in out["counts"] if lab not in LABELS]
    out["percentages"] = {
        lab: (100.0 * out["counts"][lab] / denom[out["basis"][lab]] if denom[out["basis"][lab]] else 0.0)
        for lab in order
    }
    return out


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation of two equally shaped arrays (nan when undefined)."""
    from scipy.stats import spearmanr

    x, y = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


@dataclass
class TransitionResult:
    """Tracking result for one pair of layers (indices into the *tracked* coalitions).

    ``source_index[i]`` / ``target_index[j]`` is the position of tracked coalition i / j in the
    partition it came from; ``matches`` holds (i, j, label), with ``alpha`` / ``beta`` per match.
    Rule ``"null"`` adds, per match, the lifts (α·K', β·K) and their percentiles in the null
    (``lift_alpha`` ... ``pct_beta``), the significant ``links``, per-coalition percentiles of the
    outgoing / incoming mass, and the ``null`` summary (thresholds, draws, level).
    :meth:`set_flow` attaches the interventional flow (K x K') and its agreement with the mass.
    """

    source_layer: int | None
    target_layer: int | None
    tau: float | None
    min_size: int
    rule: str
    source_index: list[int]
    target_index: list[int]
    source_sizes: list[int]
    target_sizes: list[int]
    dropped_sources: int
    dropped_targets: int
    mass: np.ndarray
    matches: list[tuple[int, int, str]]
    alpha: list[float]
    beta: list[float]
    source_labels: list[str]
    target_labels: list[str]
    counts: dict[str, int]
    percentages: dict[str, float]
    basis: dict[str, str] = field(default_factory=dict)
    lift_alpha: list[float] = field(default_factory=list)
    lift_beta: list[float] = field(default_factory=list)
    pct_alpha: list[float] = field(default_factory=list)
    pct_beta: list[float] = field(default_factory=list)
    links: list[dict[str, Any]] = field(default_factory=list)
    source_pct_out: list[float] = field(default_factory=list)
    target_pct_in: list[float] = field(default_factory=list)
    null: dict[str, Any] | None = None
    flow: np.ndarray | None = None
    flow_info: dict[str, Any] | None = None

    @property
    def horizon(self) -> int | None:
        if self.source_layer is None or self.target_layer is None:
            return None
        return self.target_layer - self.source_layer

    def set_flow(self, flow: np.ndarray, **info: Any) -> None:
        """Attach the interventional flow F (K x K', same order as ``mass``) and compare it with M:
        Spearman over all pairs, the median per-source Spearman, and how often a source's
        largest-flow target is its largest-mass target."""
        flow = np.asarray(flow, dtype=np.float64)
        if flow.shape != self.mass.shape:
            raise DataError(f"flow has shape {flow.shape}, the mass {self.mass.shape}")
        self.flow = flow
        rows = [_spearman(self.mass[i], flow[i]) for i in range(flow.shape[0])] if flow.shape[1] >= 3 else []
        rows = [r for r in rows if np.isfinite(r)]
        top = (
            float(np.mean(self.mass.argmax(1) == flow.argmax(1)))
            if flow.size and flow.shape[1] > 1
            else float("nan")
        )
        self.flow_info = {
            **info,
            "spearman": _spearman(self.mass, flow),
            "spearman_per_source_median": float(np.median(rows)) if rows else float("nan"),
            "top_target_agreement": top,
        }

    def mass_summary(self) -> dict[str, Any]:
        """Shape, total, extremes, sparsity and the row / column sums of M."""
        m = self.mass
        return {
            "shape": list(m.shape),
            "total": float(m.sum()),
            "max": float(m.max()) if m.size else 0.0,
            "mean": float(m.mean()) if m.size else 0.0,
            "nonzero_fraction": float((m > 0).mean()) if m.size else 0.0,
            "row_sums": m.sum(axis=1).tolist(),
            "col_sums": m.sum(axis=0).tolist(),
        }

    def _per_match(self, values: list[float], k: int) -> float | None:
        return values[k] if k < len(values) else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary (the full M, and F, only when they have at most 100,000 entries)."""
        full = self.mass.size <= _FULL_MASS_LIMIT
        flow = self.flow
        return {
            "source_layer": self.source_layer,
            "target_layer": self.target_layer,
            "horizon": self.horizon,
            "rule": self.rule,
            "tau": self.tau,
            "min_size": self.min_size,
            "tracked": {"sources": len(self.source_index), "targets": len(self.target_index)},
            "dropped": {
                "sources": self.dropped_sources,
                "targets": self.dropped_targets,
                "note": f"coalitions with fewer than {self.min_size} neurons are not tracked",
            },
            "source_index": self.source_index,
            "target_index": self.target_index,
            "source_sizes": self.source_sizes,
            "target_sizes": self.target_sizes,
            "mass_summary": self.mass_summary(),
            "mass": self.mass.tolist() if full else None,
            "null": copy.deepcopy(self.null),
            "matches": [
                {
                    "source": i,
                    "target": j,
                    "source_coalition": self.source_index[i],
                    "target_coalition": self.target_index[j],
                    "source_size": self.source_sizes[i],
                    "target_size": self.target_sizes[j],
                    "mass": float(self.mass[i, j]),
                    "alpha": a,
                    "beta": b,
                    "lift_alpha": self._per_match(self.lift_alpha, k),
                    "lift_beta": self._per_match(self.lift_beta, k),
                    "pct_alpha": self._per_match(self.pct_alpha, k),
                    "pct_beta": self._per_match(self.pct_beta, k),
                    "flow": None if flow is None else float(flow[i, j]),
                    "label": lab,
                }
                for k, ((i, j, lab), a, b) in enumerate(zip(self.matches, self.alpha, self.beta))
            ],
            "links": [
                {
                    **link,
                    "source_coalition": self.source_index[link["source"]],
                    "target_coalition": self.target_index[link["target"]],
                    "source_size": self.source_sizes[link["source"]],
                    "target_size": self.target_sizes[link["target"]],
                    "flow": None if flow is None else float(flow[link["source"], link["target"]]),
                }
                for link in self.links
            ],
            "source_labels": self.source_labels,
            "target_labels": self.target_labels,
            "source_pct_out": self.source_pct_out,
            "target_pct_in": self.target_pct_in,
            "counts": self.counts,
            "percent": self.percentages,
            "percent_basis": self.basis,
            "flow": None if flow is None else (flow.tolist() if full else None),
            "flow_info": copy.deepcopy(self.flow_info),
        }


def _check_horizon(layer: int | None, target_layer: int | None) -> int | None:
    if target_layer is None:
        return None if layer is None else layer + 1
    if layer is not None and target_layer <= layer:
        raise ConfigError(f"target layer {target_layer} must come after layer {layer}")
    return target_layer


def track_layers(
    W_down_l: Any,
    W_up_next: Any,
    W_gate_next: Any,
    norm_scale_next: Any,
    A: Any,
    coalitions_l: Sequence[Sequence[int]],
    coalitions_next: Sequence[Sequence[int]],
    *,
    tau: float | None = None,
    min_size: int = 2,
    rule: str = "null",
    layer: int | None = None,
    target_layer: int | None = None,
    null_draws: int = 100,
    null_level: float = 0.95,
    seed: Any = 0,
    block_size: int = 512,
    device: Any = None,
) -> TransitionResult:
    """Track the coalitions of layer ``layer`` into layer ``target_layer`` (default ``layer + 1``).

    Arguments as in :func:`~hedonic_neurons.tracking.mass.interaction_mass`; coalitions with
    fewer than ``min_size`` neurons are dropped first (and counted). ``rule`` names a registered
    :class:`~hedonic_neurons.tracking.rules.TrackingRule`. Rule ``"null"`` (default) draws
    ``null_draws`` size-preserving random partitions of both layers (seeded by ``seed``) and
    calibrates its thresholds at ``null_level`` (as does any rule with ``uses_null``); ``tau`` is
    for the absolute rules only (default 0.5 for ``"matching"``, 0.30 for ``"code"``).
    """
    if not isinstance(min_size, int) or min_size < 1:
        raise ConfigError(f"min_size must be a positive integer, got {min_size!r}")
    chosen = get_rule(rule)
    target_layer = _check_horizon(layer, target_layer)
    tau = chosen.check_tau(rule, tau)
    if chosen.uses_null:
        check_null_settings(null_draws, null_level)
    src_keep = [i for i, c in enumerate(coalitions_l) if len(c) >= min_size]
    tgt_keep = [j for j, c in enumerate(coalitions_next) if len(c) >= min_size]
    src = [list(coalitions_l[i]) for i in src_keep]
    tgt = [list(coalitions_next[j]) for j in tgt_keep]
    mass = interaction_mass(
        W_down_l, W_up_next, W_gate_next, norm_scale_next, A, src, tgt, block_size=block_size, device=device
    )
    null = None
    if chosen.uses_null:
        null = null_model(
            W_down_l,
            W_up_next,
            W_gate_next,
            norm_scale_next,
            A,
            [len(c) for c in src],
            [len(c) for c in tgt],
            draws=null_draws,
            level=null_level,
            seed=seed,
            block_size=block_size,
            device=device,
        )
    out = classify_transitions(mass, tau, rule=rule, null=null)
    alpha, beta = alpha_beta(mass)
    extra: dict[str, Any] = {}
    if null is not None:
        la, lb = out["lift_alpha"], out["lift_beta"]
        pairs = [(i, j) for i, j, _ in out["matches"]]
        extra = dict(
            lift_alpha=[float(la[i, j]) for i, j in pairs],
            lift_beta=[float(lb[i, j]) for i, j in pairs],
            pct_alpha=[float(null.pct_alpha(la[i, j])) for i, j in pairs],
            pct_beta=[float(null.pct_beta(lb[i, j])) for i, j in pairs],
            links=[
                {
                    "source": i,
                    "target": j,
                    "label": lab,
                    "mass": float(mass[i, j]),
                    "alpha": float(alpha[i, j]),
                    "beta": float(beta[i, j]),
                    "lift_alpha": float(la[i, j]),
                    "lift_beta": float(lb[i, j]),
                    "pct_alpha": float(null.pct_alpha(la[i, j])),
                    "pct_beta": float(null.pct_beta(lb[i, j])),
                }
                for i, j, lab in out["links"]
            ],
            source_pct_out=[float(x) for x in null.pct_out(out["out_mass"])],
            target_pct_in=[float(x) for x in null.pct_in(out["in_mass"])],
            null=null.to_dict(),
        )
    return TransitionResult(
        source_layer=layer,
        target_layer=target_layer,
        tau=None if tau is None else float(tau),
        min_size=min_size,
        rule=rule,
        source_index=src_keep,
        target_index=tgt_keep,
        source_sizes=[len(c) for c in src],
        target_sizes=[len(c) for c in tgt],
        dropped_sources=len(coalitions_l) - len(src_keep),
        dropped_targets=len(coalitions_next) - len(tgt_keep),
        mass=mass,
        matches=out["matches"],
        alpha=[float(alpha[i, j]) for i, j, _ in out["matches"]],
        beta=[float(beta[i, j]) for i, j, _ in out["matches"]],
        source_labels=out["source_labels"],
        target_labels=out["target_labels"],
        counts=out["counts"],
        percentages=out["percentages"],
        basis=out["basis"],
        **extra,
    )


# ----------------------------------------------------------------------------------- tables

_COLUMNS = (
    "method",
    "layers",
    "sources",
    "targets",
    "dropped_sources",
    "dropped_targets",
    *(f"{lab}_pct" for lab in LABELS),
    "rule",
    "tau_alpha",
    "tau_beta",
    "links",
    "median_pct_alpha",
    "median_pct_beta",
    "max_lift_alpha",
    "max_lift_beta",
    "flow_spearman",
)


def _median(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.median(vals)) if vals else None


def transition_table(
    results: Sequence[TransitionResult], *, method: str | None = None
) -> list[dict[str, Any]]:
    """One row per layer pair: tracked / dropped counts, the percentage of each label and, for
    rule ``"null"``, its thresholds, the number of significant links, the median percentile of the
    matched pairs' lifts in the null, the largest lifts and the flow-mass Spearman."""
    rows = []
    for r in results:
        row: dict[str, Any] = {
            "method": method or "",
            "layers": f"{r.source_layer}->{r.target_layer}",
            "sources": len(r.source_index),
            "targets": len(r.target_index),
            "dropped_sources": r.dropped_sources,
            "dropped_targets": r.dropped_targets,
        }
        row |= {f"{lab}_pct": round(r.percentages[lab], 2) for lab in LABELS if lab in r.percentages}
        row["rule"] = r.rule if r.tau is None else f"{r.rule} (tau {r.tau:g})"
        if r.null is not None:
            row["tau_alpha"] = r.null["tau_alpha"]
            row["tau_beta"] = r.null["tau_beta"]
            row["links"] = len(r.links)
            row["median_pct_alpha"] = _median(r.pct_alpha)
            row["median_pct_beta"] = _median(r.pct_beta)
            row["max_lift_alpha"] = max(r.lift_alpha, default=None)
            row["max_lift_beta"] = max(r.lift_beta, default=None)
        if r.flow_info is not None:
            row["flow_spearman"] = r.flow_info["spearman"]
        rows.append(row)
    return rows


def _cell(value: Any, column: str) -> str:
    if value is None or (value == "" and column != "method"):
        return "–"
    if isinstance(value, float):
        if not np.isfinite(value):
            return "–" if np.isnan(value) else ("∞" if value > 0 else "−∞")
        return (
            f"{value:.1f}" if column.endswith("_pct") or column.startswith("median_pct") else f"{value:.3g}"
        )
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows of :func:`transition_table` as a Markdown table (columns no row fills are left out,
    except the label percentages)."""
    cols = [
        c
        for c in _COLUMNS
        if c.endswith("_pct")
        or c in ("layers", "sources", "targets")
        or any(r.get(c) not in (None, "") for r in rows)
    ]
    head = [c.replace("_pct", " %").replace("_", " ") for c in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r.get(c), c) for c in cols) + " |")
    return "\n".join(lines) + "\n"


_NOTE = (
    "Percentages: persistence, split, merge, vanishing and unstructured over the tracked source "
    "coalitions; emergence over the tracked target coalitions (rule 'code': merge and emergence over "
    "targets). Rule 'null': a link is drawn from a random-partition null of the same coalition sizes; "
    "tau alpha / tau beta are the lift thresholds (alpha·K', beta·K) of the layer pair, 'median pct' the "
    "median percentile of the matched pairs' lifts among the null's best lifts, 'flow spearman' the rank "
    "agreement of the interventional flow with the interaction mass over all pairs.\n\n"
)


def write_transition_table(rows: Sequence[dict[str, Any]], md_path: Any = None, csv_path: Any = None) -> None:
    """Write the table as Markdown and / or CSV (atomically)."""
    from hedonic_neurons.artifacts import atomic_write_text

    if md_path is not None:
        atomic_write_text(md_path, _NOTE + markdown_table(rows))
    if csv_path is not None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(_COLUMNS), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(csv_path, buf.getvalue())


_PAIR_COLUMNS = (
    "method",
    "source_layer",
    "target_layer",
    "source_coalition",
    "target_coalition",
    "source_size",
    "target_size",
    "kind",
    "label",
    "mass",
    "alpha",
    "beta",
    "lift_alpha",
    "lift_beta",
    "pct_alpha",
    "pct_beta",
    "flow",
)


def pair_rows(results: Sequence[TransitionResult], *, method: str | None = None) -> list[dict[str, Any]]:
    """One row per matched pair and per significant link (``kind``: matched, link or both), with
    mass, α, β, their lifts and percentiles in the null, and the interventional flow."""
    rows = []
    for r in results:
        doc = r.to_dict()
        by_pair: dict[tuple[int, int], dict[str, Any]] = {}
        for kind, items in (("matched", doc["matches"]), ("link", doc["links"])):
            for m in items:
                key = (m["source"], m["target"])
                if key in by_pair:
                    by_pair[key]["kind"] = "matched+link"
                    by_pair[key]["label"] = m["label"]
                    continue
                by_pair[key] = {
                    "method": method or "",
                    "source_layer": r.source_layer,
                    "target_layer": r.target_layer,
                    "kind": kind,
                    **{c: m.get(c) for c in _PAIR_COLUMNS if c in m},
                }
        rows.extend(by_pair[k] for k in sorted(by_pair))
    return rows


def write_pair_table(rows: Sequence[dict[str, Any]], csv_path: Any) -> None:
    """Write :func:`pair_rows` as CSV (atomically)."""
    from hedonic_neurons.artifacts import atomic_write_text

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(_PAIR_COLUMNS), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(csv_path, buf.getvalue())
