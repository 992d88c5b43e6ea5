"""Figures for notebooks and reports: φ heat map, coalition sizes, ablation comparison, Sankey,
φ calibration against the full-model Δ_ij.

Each function returns a figure that renders inline in a notebook: a matplotlib ``Figure`` (all
but one) or a plotly ``Figure`` (:func:`sankey`). Matplotlib is imported lazily; text is at
least 10 pt, so a figure saved at the default 110 dpi and shown at its natural width has text of
at least 15 px. Save with ``fig.savefig(path, dpi=110)`` / ``fig.write_html(path)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hedonic_neurons.errors import DataError

__all__ = [
    "DPI",
    "ablation_comparison",
    "partition_order",
    "phi_calibration",
    "phi_heatmap",
    "sankey",
    "size_distribution",
]

DPI = 110
"""Resolution the report saves figures at."""
FONT = 10  # points; the smallest text of every figure here


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    # not registered with pyplot: nothing to close, no backend to choose; a notebook's inline
    # display shows it like any matplotlib figure
    return Figure(figsize=(width, height), dpi=DPI)


def _coalitions(partition: Any) -> list[list[int]]:
    coalitions = getattr(partition, "coalitions", partition)
    try:
        return [sorted(int(i) for i in c) for c in coalitions]
    except TypeError:
        raise DataError(
            "expected a Partition (with .coalitions) or a list of neuron lists, got "
            f"{type(partition).__name__}"
        ) from None


def partition_order(partition: Any, n: int, *, min_size: int = 1) -> tuple[np.ndarray, list[int]]:
    """(neuron order, coalition sizes in that order): coalitions of size ≥ ``min_size`` largest first
    (ties: smaller first member), members ascending; neurons of no such coalition are left out."""
    coalitions = [c for c in _coalitions(partition) if len(c) >= min_size]
    coalitions.sort(key=lambda c: (-len(c), c[0] if c else -1))
    order = [i for c in coalitions for i in c]
    if order and (min(order) < 0 or max(order) >= n):
        raise DataError(f"the partition names neurons outside 0..{n - 1} (φ is {n} x {n})")
    if len(set(order)) != len(order):
        raise DataError("the partition places a neuron in two coalitions; expected disjoint coalitions")
    return np.asarray(order, dtype=np.int64), [len(c) for c in coalitions]


def phi_heatmap(phi: Any, partition: Any, *, min_size: int = 1, title: str | None = None):
    """φ with rows and columns ordered by ``partition`` (see :func:`partition_order`); each
    coalition of two or more neurons is outlined on the diagonal. Colours: diverging, symmetric
    around 0 (red synergy, blue redundancy). ``min_size`` drops the neurons of smaller coalitions
    (e.g. 2: singletons out)."""
    from matplotlib.patches import Rectangle

    arr = np.asarray(phi.detach().cpu().numpy() if hasattr(phi, "detach") else phi, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise DataError(f"phi must be a square matrix, got shape {arr.shape}")
    order, sizes = partition_order(partition, arr.shape[0], min_size=min_size)
    if order.size == 0:
        raise DataError(f"no coalition of size >= {min_size} to show")
    shown = arr[np.ix_(order, order)]
    limit = float(np.abs(shown).max()) or 1.0
    fig = _figure(6.4, 5.6)
    ax = fig.add_subplot()
    image = ax.imshow(shown, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
    start = 0
    for size in sizes:
        if size >= 2:
            ax.add_patch(
                Rectangle((start - 0.5, start - 0.5), size, size, fill=False, edgecolor="black", lw=0.8)
            )
        start += size
    cbar = fig.colorbar(image, ax=ax, shrink=0.85)
    cbar.ax.tick_params(labelsize=FONT)
    cbar.set_label("φ", fontsize=FONT)
    ax.set_xlabel("neurons, ordered by coalition", fontsize=FONT)
    ax.set_ylabel("neurons, ordered by coalition", fontsize=FONT)
    ax.tick_params(labelsize=FONT)
    multi = sum(1 for s in sizes if s >= 2)
    default = f"φ ordered by partition ({multi} coalitions of ≥ 2 outlined)"
    ax.set_title(title or default, fontsize=FONT + 1)
    fig.tight_layout()
    return fig


def size_distribution(partitions: Mapping[str, Any], *, title: str | None = None):
    """Rank-size plot (log-log) of the coalition sizes of each partition: one line per name."""
    if not isinstance(partitions, Mapping) or not partitions:
        raise DataError("expected a non-empty dict {name: partition}")
    fig = _figure(6.4, 4.2)
    ax = fig.add_subplot()
    for k, (name, partition) in enumerate(partitions.items()):
        sizes = sorted((len(c) for c in _coalitions(partition)), reverse=True)
        if sizes:
            ax.loglog(
                range(1, len(sizes) + 1),
                sizes,
                label=f"{name} ({len(sizes)} coalitions, largest {sizes[0]})",
                color=f"C{k}",
                lw=1.4,
            )
    from matplotlib.ticker import FuncFormatter, LogFormatter

    for axis in (ax.xaxis, ax.yaxis):  # 1, 10, 100 (and 2, 3... over few decades), not 10⁰, 2×10⁰
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.4)))
    ax.set_xlabel("coalition rank", fontsize=FONT)
    ax.set_ylabel("coalition size (neurons)", fontsize=FONT)
    ax.tick_params(which="both", labelsize=FONT)
    ax.set_title(title or "Coalition size distribution", fontsize=FONT + 1)
    ax.legend(fontsize=FONT)
    fig.tight_layout()
    return fig


def ablation_comparison(
    rows: Sequence[Mapping[str, Any]], *, title: str | None = None, ylabel: str = "ablation effect"
):
    """Bars of ``mean`` per ``method`` with error bars from ``low`` to ``high`` (e.g. a 95% CI).
    Rows without a finite mean are left out."""
    kept = [
        r for r in rows if r.get("mean") is not None and np.isfinite(r["mean"]) and r.get("low") is not None
    ]
    if not kept:
        raise DataError('expected rows of {"method", "mean", "low", "high"} with at least one finite mean')
    fig = _figure(max(4.0, min(9.6, 1.0 + 0.8 * len(kept))), 4.0)
    ax = fig.add_subplot()
    means = np.array([float(r["mean"]) for r in kept])
    lower = means - np.array([float(r["low"]) for r in kept])
    upper = np.array([float(r["high"]) for r in kept]) - means
    xs = np.arange(len(kept))
    ax.bar(xs, means, yerr=np.vstack([lower, upper]), capsize=4, color=[f"C{k}" for k in range(len(kept))])
    ax.set_xticks(xs, [str(r["method"]) for r in kept], rotation=30, ha="right", fontsize=FONT)
    ax.axhline(0, color="black", lw=0.6)
    ax.set_ylabel(ylabel, fontsize=FONT)
    ax.tick_params(labelsize=FONT)
    ax.yaxis.get_offset_text().set_fontsize(FONT)
    if title:
        ax.set_title(title, fontsize=FONT + 1)
    fig.tight_layout()
    return fig


def sankey(transitions: Sequence[Any], *, title: str | None = None):
    """The coalition-flow Sankey (plotly) of tracking results: only the links that pass the
    tracking rule are drawn, with a legend (see :func:`hedonic_neurons.report.sankey.sankey_figure`)."""
    from hedonic_neurons.report.sankey import sankey_figure

    return sankey_figure(transitions, title=title)


def phi_calibration(rows_or_arrays: Any, *, title: str | None = None):
    """φ against the full-model Δ_ij it estimates: one point per neuron pair (Δ on x, φ on y), the
    identity line (dashed) and the least-squares line of φ on Δ. ``rows_or_arrays``: the rows of
    the ``phi_validity`` evaluation (those with ``delta`` and ``phi``; one colour per layer) or
    two equal-length arrays ``(delta, phi)``."""
    from scipy import stats

    if isinstance(rows_or_arrays, (Mapping, str)):
        raise DataError("expected phi_validity rows or two arrays (delta, phi), got one mapping")
    items = list(rows_or_arrays)
    if items and all(isinstance(r, Mapping) for r in items):
        kept = [r for r in items if r.get("delta") is not None and r.get("phi") is not None]
        groups: dict[Any, list[Mapping[str, Any]]] = {}
        for r in kept:
            groups.setdefault(r.get("layer"), []).append(r)
        series = {
            key: (np.array([float(r["delta"]) for r in g]), np.array([float(r["phi"]) for r in g]))
            for key, g in groups.items()
        }
    elif len(items) == 2 and not any(isinstance(r, Mapping) for r in items):
        delta, phi = (np.asarray(v, dtype=np.float64).ravel() for v in items)
        if delta.shape != phi.shape:
            raise DataError(f"delta and phi must have equal length, got {delta.size} and {phi.size}")
        series = {None: (delta, phi)}
    else:
        raise DataError("expected phi_validity rows (dicts with delta and phi) or two arrays (delta, phi)")
    x = np.concatenate([d for d, _ in series.values()]) if series else np.zeros(0)
    y = np.concatenate([p for _, p in series.values()]) if series else np.zeros(0)
    if x.size == 0:
        raise DataError("no (delta, phi) points to plot")
    fig = _figure(5.6, 5.0)
    ax = fig.add_subplot()
    for k, (key, (d, p)) in enumerate(series.items()):
        label = None if key is None else f"layer {key} ({d.size} pairs)"
        ax.scatter(d, p, s=16, color=f"C{k}", alpha=0.8, label=label)
    lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
    ax.plot([lo, hi], [lo, hi], ls="--", color="black", lw=0.8, label="identity (φ = Δ)")
    if x.size >= 2 and np.ptp(x) > 0:
        slope, intercept = np.polyfit(x, y, 1)
        xs = np.array([float(x.min()), float(x.max())])
        ax.plot(
            xs, slope * xs + intercept, color="C3", lw=1.2, label=f"fit: φ = {slope:.3g} Δ {intercept:+.2g}"
        )
    varied = x.size >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0
    rho = float(stats.spearmanr(x, y).statistic) if varied else float("nan")
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(0, color="grey", lw=0.5)
    ax.set_xlabel("full-model Δ_ij (mean over test inputs)", fontsize=FONT)
    ax.set_ylabel("φ", fontsize=FONT)
    ax.tick_params(labelsize=FONT)
    for axis in (ax.xaxis, ax.yaxis):
        axis.get_offset_text().set_fontsize(FONT)
    ax.legend(fontsize=FONT)
    ax.set_title(
        title or f"φ against the full-model Δ_ij (Spearman {rho:.2f}, {x.size} pairs)", fontsize=FONT + 1
    )
    fig.tight_layout()
    return fig
