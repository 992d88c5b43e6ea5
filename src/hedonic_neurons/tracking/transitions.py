"""Matching and transition labels between the coalitions of adjacent layers (method A11).

Rule ``"matching"`` (A11, the default): maximum-weight bipartite matching on the interaction mass
M (``scipy.optimize.linear_sum_assignment(maximize=True)``; pairs with zero mass are not kept).
On each matched pair (C, C'):

- alpha = M(C, C') / sum_{C''} M(C, C'')  (share of the source's outgoing mass),
- beta  = M(C, C') / sum_{D} M(D, C')     (share of the target's incoming mass),

and the pair is *persistence* (alpha >= tau, beta >= tau), *split* (alpha < tau, beta >= tau),
*merge* (alpha >= tau, beta < tau) or *vanishing* (both < tau). An unmatched source vanishes; an
unmatched target emerges. Percentages: persistence / split / merge / vanishing over the tracked
sources (they sum to 100), emergence over the tracked targets.

Rule ``"code"`` (Part B §7 [C], ``classify_events``; our reading of its description, the code
itself was not available): relative thresholds on M. Parent i *persists* if its row-argmax j has
i as its column-argmax; otherwise it *splits* if at least two children have M[i, j] >= tau *
rowmax_i. Then a child j is a *merge* if at least two parents not already persisted or split
have M[i, j] >= tau * colmax_j (those parents are labelled merge). Remaining parents vanish,
remaining children (not a persisting partner, not above the split threshold of a split parent,
not a merge) emerge. Percentages as in [C]: persistence / split / vanishing over parents, merge /
emergence over children. Its default tau is 0.30.

Coalitions smaller than ``min_size`` (default 2) are not tracked; :class:`TransitionResult` says
how many were dropped on each side.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hedonic_neurons.errors import ConfigError, DataError
from hedonic_neurons.tracking.mass import interaction_mass

__all__ = [
    "LABELS",
    "TransitionResult",
    "alpha_beta",
    "classify_transitions",
    "markdown_table",
    "track_layers",
    "transition_table",
    "write_transition_table",
]

LABELS = ("persistence", "split", "merge", "vanishing", "emergence")
RULES = ("matching", "code")
_FULL_MASS_LIMIT = 100_000  # entries of M written in full into the JSON; larger: summary only


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


def _check_mass(mass: Any) -> np.ndarray:
    arr = np.asarray(mass, dtype=np.float64)
    if arr.ndim != 2:
        raise DataError(f"the mass matrix must be 2-d (sources x targets), got shape {arr.shape}")
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise DataError("the mass matrix must be finite and non-negative")
    return arr


def _check_tau(tau: float) -> float:
    if not 0 < tau <= 1:
        raise ConfigError(f"tau must be in (0, 1], got {tau!r}")
    return float(tau)


def _pair_label(alpha: float, beta: float, tau: float) -> str:
    if alpha >= tau:
        return "persistence" if beta >= tau else "merge"
    return "split" if beta >= tau else "vanishing"


def _classify_matching(mass: np.ndarray, tau: float) -> dict[str, Any]:
    from scipy.optimize import linear_sum_assignment

    alpha, beta = alpha_beta(mass)
    src_labels = ["vanishing"] * mass.shape[0]
    tgt_labels = ["emergence"] * mass.shape[1]
    matches = []
    if mass.size:
        for i, j in zip(*linear_sum_assignment(mass, maximize=True)):
            if mass[i, j] <= 0:
                continue
            label = _pair_label(alpha[i, j], beta[i, j], tau)
            src_labels[i] = tgt_labels[j] = label
            matches.append((int(i), int(j), label))
    counts = {lab: src_labels.count(lab) for lab in LABELS[:4]}
    counts["emergence"] = tgt_labels.count("emergence")
    basis = {lab: "sources" for lab in LABELS[:4]} | {"emergence": "targets"}
    return dict(
        matches=matches, source_labels=src_labels, target_labels=tgt_labels, counts=counts, basis=basis
    )


def _classify_code(mass: np.ndarray, tau: float) -> dict[str, Any]:
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


def classify_transitions(mass: Any, tau: float = 0.5, *, rule: str = "matching") -> dict[str, Any]:
    """Matches and labels from a mass matrix (sources x targets); see the module docstring.

    Returns a dict with ``matches`` (list of (source, target, label)), ``source_labels``,
    ``target_labels``, ``counts`` (per label), ``percentages`` and ``basis`` (for each label,
    whether its percentage is over the sources or the targets).
    """
    arr = _check_mass(mass)
    tau = _check_tau(tau)
    if rule not in RULES:
        raise ConfigError(f"tracking rule must be one of {', '.join(RULES)}, got {rule!r}")
    out = _classify_matching(arr, tau) if rule == "matching" else _classify_code(arr, tau)
    denom = {"sources": arr.shape[0], "targets": arr.shape[1]}
    out["percentages"] = {
        lab: (100.0 * out["counts"][lab] / denom[out["basis"][lab]] if denom[out["basis"][lab]] else 0.0)
        for lab in LABELS
    }
    return out


@dataclass
class TransitionResult:
    """Tracking result for one pair of adjacent layers (indices into the *tracked* coalitions).

    ``source_index[i]`` / ``target_index[j]`` is the position of tracked coalition i / j in the
    partition it came from; ``matches`` holds (i, j, label), with ``alpha`` / ``beta`` per match.
    """

    source_layer: int | None
    target_layer: int | None
    tau: float
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

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary (the full M only when it has at most 100,000 entries)."""
        full = self.mass.size <= _FULL_MASS_LIMIT
        return {
            "source_layer": self.source_layer,
            "target_layer": self.target_layer,
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
                    "label": lab,
                }
                for (i, j, lab), a, b in zip(self.matches, self.alpha, self.beta)
            ],
            "source_labels": self.source_labels,
            "target_labels": self.target_labels,
            "counts": self.counts,
            "percent": self.percentages,
            "percent_basis": self.basis,
        }


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
    rule: str = "matching",
    layer: int | None = None,
    block_size: int = 512,
    device: Any = None,
) -> TransitionResult:
    """Track the coalitions of layer ``layer`` into layer ``layer + 1``.

    Arguments as in :func:`~hedonic_neurons.tracking.mass.interaction_mass`; coalitions with
    fewer than ``min_size`` neurons are dropped first (and counted). ``tau`` defaults to 0.5 for
    the matching rule and 0.30 for the code rule.
    """
    if not isinstance(min_size, int) or min_size < 1:
        raise ConfigError(f"min_size must be a positive integer, got {min_size!r}")
    tau = (0.5 if rule == "matching" else 0.3) if tau is None else tau
    src_keep = [i for i, c in enumerate(coalitions_l) if len(c) >= min_size]
    tgt_keep = [j for j, c in enumerate(coalitions_next) if len(c) >= min_size]
    src = [list(coalitions_l[i]) for i in src_keep]
    tgt = [list(coalitions_next[j]) for j in tgt_keep]
    mass = interaction_mass(
        W_down_l, W_up_next, W_gate_next, norm_scale_next, A, src, tgt, block_size=block_size, device=device
    )
    out = classify_transitions(mass, tau, rule=rule)
    alpha, beta = alpha_beta(mass)
    return TransitionResult(
        source_layer=layer,
        target_layer=None if layer is None else layer + 1,
        tau=float(tau),
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
)


def transition_table(
    results: Sequence[TransitionResult], *, method: str | None = None
) -> list[dict[str, Any]]:
    """One row per layer pair: tracked / dropped counts and the percentage of each label."""
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
        row |= {f"{lab}_pct": round(r.percentages[lab], 2) for lab in LABELS}
        rows.append(row)
    return rows


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows of :func:`transition_table` as a Markdown table."""
    cols = [c for c in _COLUMNS if c != "method" or any(r.get("method") for r in rows)]
    head = [c.replace("_pct", " %").replace("_", " ") for c in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [f"{r[c]:.1f}" if c.endswith("_pct") else str(r[c]) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_transition_table(rows: Sequence[dict[str, Any]], md_path: Any = None, csv_path: Any = None) -> None:
    """Write the table as Markdown and / or CSV (atomically)."""
    from hedonic_neurons.artifacts import atomic_write_text

    if md_path is not None:
        note = (
            "Percentages: persistence, split, merge and vanishing over the tracked source coalitions; "
            "emergence over the tracked target coalitions (rule 'code': merge and emergence over targets).\n\n"
        )
        atomic_write_text(md_path, note + markdown_table(rows))
    if csv_path is not None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(_COLUMNS), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(csv_path, buf.getvalue())
