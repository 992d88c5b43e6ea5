"""Interactive Sankey of coalition transitions across layers (plotly), with a legend.

Only flows that pass the rule are drawn. Under the null rule (the default) these are the
significant links of each adjacent-layer pair: both lifts (α·K', β·K) at or above the pair's
thresholds τ_α, τ_β from the random-partition null (``tracking.null``); unstructured,
vanishing and emerging coalitions have no link, so they are not drawn (the lineage view and the
tables list them). Under the absolute rules (``matching``, ``code``) the matched pairs that are
not labelled vanishing are drawn. Longer horizons (l -> l+2 ...) are in the tables and the
lineage, not in the Sankey.

Nodes are the coalitions taking part in a drawn link (label: layer, coalition index in its
layer's partition, size); link width is the source coalition's size (neurons), colour its label.
Hovering a link shows the label, both sizes, α, β, the lifts with their percentiles in the null,
the thresholds, the mass and the interventional flow; hovering a node shows the coalition's
labels. The legend (one entry per label, with the number of links) sits beside the plot and a
note under it states the rule and each pair's thresholds.

plotly.js is not embedded in every page: :func:`write_sankey` writes ``plotly.min.js`` once into
a bundle folder and every Sankey refers to it by a relative path (still offline, no CDN), so a
page stays far below 1 MB. ``embed=True`` gives a single self-contained file instead.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hedonic_neurons.artifacts import atomic_write_text

__all__ = [
    "BUNDLE_NAME",
    "LABEL_COLOURS",
    "drawn_links",
    "sankey_figure",
    "write_plotly_bundle",
    "write_sankey",
]

BUNDLE_NAME = "plotly.min.js"
LABEL_COLOURS = {
    "persistence": "rgba(44, 160, 44, 0.6)",
    "split": "rgba(255, 127, 14, 0.6)",
    "merge": "rgba(148, 103, 189, 0.6)",
    "vanishing": "rgba(127, 127, 127, 0.5)",
    "emergence": "rgba(31, 119, 180, 0.6)",
    "unstructured": "rgba(200, 200, 200, 0.4)",
}


def _as_dict(result: Any) -> dict[str, Any]:
    return result.to_dict() if hasattr(result, "to_dict") else dict(result)


def _tau(value: Any) -> float:
    """A threshold from a result document (JSON writes an infinite one as null)."""
    return math.inf if value is None else float(value)


def drawn_links(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The links of one transition document that the Sankey draws (see the module docstring)."""
    if doc.get("rule", "null") == "null":
        null = doc.get("null") or {}
        tau_a, tau_b = _tau(null.get("tau_alpha")), _tau(null.get("tau_beta"))
        return [
            link
            for link in doc.get("links", [])
            if link["lift_alpha"] >= tau_a and link["lift_beta"] >= tau_b
        ]
    return [m for m in doc["matches"] if m["label"] != "vanishing"]


def _adjacent(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The documents of adjacent layer pairs (all of them if none is adjacent)."""
    adjacent = [
        d
        for d in docs
        if d.get("source_layer") is None
        or d.get("target_layer") is None
        or d["target_layer"] - d["source_layer"] == 1
    ]
    return adjacent or docs


def _fmt(value: Any, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def sankey_figure(results: Sequence[Any], *, title: str | None = None):
    """A ``plotly.graph_objects.Figure``: one Sankey over the adjacent-layer transitions in
    ``results`` plus legend entries (invisible scatter traces).

    ``results``: :class:`~hedonic_neurons.tracking.TransitionResult` objects or their
    ``to_dict()`` documents (as written by ``hedonic track``), in any order.
    """
    import plotly.graph_objects as go

    docs = sorted(
        (_as_dict(r) for r in results), key=lambda d: (d.get("source_layer") is None, d.get("source_layer"))
    )
    docs = _adjacent(docs)
    index: dict[tuple, int] = {}
    labels: list[str] = []
    hover: list[list[str]] = []

    def node(layer: Any, coalition: int, size: int) -> int:
        key = (layer, coalition)
        if key not in index:
            index[key] = len(labels)
            labels.append(f"L{layer} C{coalition} ({size})")
            hover.append([])
        return index[key]

    src, tgt, val, colour, custom = [], [], [], [], []
    counts: dict[str, int] = {}
    notes = []
    for d in docs:
        lo, hi = d.get("source_layer"), d.get("target_layer")
        null = d.get("null") or {}
        tau_a, tau_b = _tau(null.get("tau_alpha")), _tau(null.get("tau_beta"))
        if d.get("rule", "null") == "null":
            notes.append(f"L{lo}→L{hi}: τα {tau_a:.2f}, τβ {tau_b:.2f}")
        for link in drawn_links(d):
            a = node(lo, link["source_coalition"], link["source_size"])
            b = node(hi, link["target_coalition"], link["target_size"])
            label = link["label"]
            counts[label] = counts.get(label, 0) + 1
            src.append(a)
            tgt.append(b)
            val.append(max(float(link["source_size"]), 1e-9))
            colour.append(LABEL_COLOURS.get(label, LABEL_COLOURS["unstructured"]))
            text = (
                f"{label}: L{lo} C{link['source_coalition']} ({link['source_size']}) → L{hi} "
                f"C{link['target_coalition']} ({link['target_size']})<br>α = {link['alpha']:.3f}, "
                f"β = {link['beta']:.3f}, M = {link['mass']:.4g}"
            )
            if link.get("lift_alpha") is not None:
                text += (
                    f"<br>α·K' = {link['lift_alpha']:.2f} (p{_fmt(link.get('pct_alpha'), '.0f')}, τα {tau_a:.2f}), "
                    f"β·K = {link['lift_beta']:.2f} (p{_fmt(link.get('pct_beta'), '.0f')}, τβ {tau_b:.2f})"
                )
            if link.get("flow") is not None:
                text += f"<br>interventional flow = {link['flow']:.4g}"
            # customdata: hover text, then the numbers the rule was applied to
            custom.append([text, link.get("lift_alpha"), link.get("lift_beta"), tau_a, tau_b])
            hover[a].append(f"→ L{hi} C{link['target_coalition']}: {label}")
            hover[b].append(f"L{lo} C{link['source_coalition']} →: {label}")
    per_layer: dict[Any, int] = {}
    for layer, _ in index:
        per_layer[layer] = per_layer.get(layer, 0) + 1
    # one column per layer (plotly would put a node without incoming links in the first column)
    columns = sorted(per_layer, key=lambda v: (v is None, v))
    node_x, node_y, seen = [0.0] * len(labels), [0.0] * len(labels), dict.fromkeys(per_layer, 0)
    for (layer, _), k in sorted(index.items(), key=lambda kv: (kv[0][0] is None, kv[0][0], kv[0][1])):
        col = columns.index(layer)
        node_x[k] = 0.001 + 0.998 * col / max(len(columns) - 1, 1)
        node_y[k] = 0.001 + 0.998 * (seen[layer] + 0.5) / per_layer[layer]
        seen[layer] += 1
    rule = docs[0].get("rule", "null") if docs else "null"
    if rule == "null":
        draws = (docs[0].get("null") or {}).get("draws") if docs else None
        level = (docs[0].get("null") or {}).get("level") if docs else None
        note = (
            f"Drawn: links with α·K' ≥ τα and β·K ≥ τβ of their layer pair (random-partition null, "
            f"{draws} draws, level {level}); " + "; ".join(notes)
        )
    else:
        note = f"Drawn: matched pairs not labelled vanishing (absolute rule '{rule}')"
    fig = go.Figure()
    if src:  # plotly.js fails on a Sankey without links: then only the note is shown
        fig.add_trace(
            go.Sankey(
                arrangement="snap",
                node=dict(
                    label=labels,
                    x=node_x,
                    y=node_y,
                    customdata=["<br>".join(h) for h in hover],
                    hovertemplate="%{label}<br>%{customdata}<extra></extra>",
                    pad=8,
                    thickness=14,
                ),
                link=dict(
                    source=src,
                    target=tgt,
                    value=val,
                    color=colour,
                    customdata=custom,
                    hovertemplate="%{customdata[0]}<extra></extra>",
                ),
                domain=dict(x=[0, 0.84], y=[0.06, 1]),
            )
        )
    for label, c in LABEL_COLOURS.items():  # legend: one entry per label that has a drawn link
        if counts.get(label):
            fig.add_trace(
                go.Scatter(
                    x=[None],
                    y=[None],
                    mode="markers",
                    marker=dict(size=12, symbol="square", color=c),
                    name=f"{label} ({counts[label]})",
                    showlegend=True,
                )
            )
    if not counts:
        note = "No link passes the rule. " + note
    fig.update_layout(
        title=title or "Coalition transitions across layers (links above the null; width: neurons)",
        font=dict(size=10),
        height=max(400, 22 * max(per_layer.values(), default=0) + 260),
        xaxis=dict(visible=False),
        yaxis=dict(visible=False),
        plot_bgcolor="white",
        legend=dict(title=dict(text="label (links)"), x=0.86, y=1),
        showlegend=True,
        annotations=[
            dict(
                text=note,
                showarrow=False,
                xref="paper",
                yref="paper",
                x=0,
                y=0,
                xanchor="left",
                yanchor="bottom",
                align="left",
                font=dict(size=9),
            )
        ],
    )
    return fig


def write_plotly_bundle(folder: str | os.PathLike) -> Path:
    """``folder/plotly.min.js`` (the installed plotly's bundle), written only when missing or
    different."""
    from plotly.offline import get_plotlyjs

    path = Path(folder) / BUNDLE_NAME
    js = get_plotlyjs()
    if not path.is_file() or path.stat().st_size != len(js.encode("utf-8")) or path.read_text("utf-8") != js:
        atomic_write_text(path, js)
    return path


def write_sankey(
    results: Sequence[Any],
    path: str | os.PathLike,
    *,
    title: str | None = None,
    bundle_dir: str | os.PathLike | None = None,
    embed: bool = False,
) -> Path:
    """Write the Sankey of ``results`` as HTML. plotly.js comes from the shared bundle in
    ``bundle_dir`` (default: the page's folder; written if needed, referenced relatively) or,
    with ``embed=True``, is embedded in the page."""
    path = Path(path)
    fig = sankey_figure(results, title=title)
    if embed:
        include: Any = True
    else:
        bundle = write_plotly_bundle(path.parent if bundle_dir is None else bundle_dir)
        include = Path(os.path.relpath(bundle.resolve(), path.parent.resolve())).as_posix()
    html = fig.to_html(include_plotlyjs=include, full_html=True, config={"displaylogo": False})
    return atomic_write_text(path, html)
