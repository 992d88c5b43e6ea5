"""Interactive Sankey of coalition transitions across layers (plotly, one offline HTML file).

Nodes are the tracked coalitions of every layer (label: layer, coalition index in that layer's
partition, size). Links are the matched pairs of each adjacent-layer transition, coloured by
their label; an unmatched source flows into a per-transition "vanished" node and an unmatched
target comes from an "emerged" node, so every coalition is drawn. Link width is the source
coalition's size (neurons; for emergence the target's). Hovering a link shows the label, both
sizes, alpha, beta and the interaction mass; hovering a node shows its size and labels.

The HTML embeds plotly.js (``include_plotlyjs=True``): it opens offline, with no CDN.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hedonic_neurons.artifacts import atomic_write_text

__all__ = ["LABEL_COLOURS", "sankey_figure", "write_sankey"]

LABEL_COLOURS = {
    "persistence": "rgba(44, 160, 44, 0.6)",
    "split": "rgba(255, 127, 14, 0.6)",
    "merge": "rgba(148, 103, 189, 0.6)",
    "vanishing": "rgba(127, 127, 127, 0.5)",
    "emergence": "rgba(31, 119, 180, 0.6)",
}


def _as_dict(result: Any) -> dict[str, Any]:
    return result.to_dict() if hasattr(result, "to_dict") else dict(result)


class _Nodes:
    """Node registry: one node per (layer, coalition) key, plus pseudo nodes."""

    def __init__(self) -> None:
        self.index: dict[tuple, int] = {}
        self.labels: list[str] = []
        self.hover: list[list[str]] = []

    def get(self, key: tuple, label: str) -> int:
        if key not in self.index:
            self.index[key] = len(self.labels)
            self.labels.append(label)
            self.hover.append([])
        return self.index[key]

    def coalition(self, layer: Any, coalition: int, size: int) -> int:
        return self.get(("c", layer, coalition), f"L{layer} C{coalition} ({size})")


def sankey_figure(results: Sequence[Any], *, title: str | None = None):
    """A ``plotly.graph_objects.Figure`` with one Sankey over all transitions in ``results``.

    ``results``: :class:`~hedonic_neurons.tracking.TransitionResult` objects or their
    ``to_dict()`` documents (as written by ``hedonic track``), in any order.
    """
    import plotly.graph_objects as go

    docs = sorted(
        (_as_dict(r) for r in results), key=lambda d: (d.get("source_layer") is None, d.get("source_layer"))
    )
    nodes = _Nodes()
    src, tgt, val, colour, hover = [], [], [], [], []

    def link(a: int, b: int, value: float, label: str, text: str) -> None:
        src.append(a)
        tgt.append(b)
        val.append(max(float(value), 1e-9))
        colour.append(LABEL_COLOURS[label])
        hover.append(text)

    for d in docs:
        lo, hi = d.get("source_layer"), d.get("target_layer")
        s_nodes = [
            nodes.coalition(lo, c, s) for c, s in zip(d["source_index"], d["source_sizes"], strict=True)
        ]
        t_nodes = [
            nodes.coalition(hi, c, s) for c, s in zip(d["target_index"], d["target_sizes"], strict=True)
        ]
        matched_src, matched_tgt = set(), set()
        for m in d["matches"]:
            i, j, label = m["source"], m["target"], m["label"]
            matched_src.add(i)
            matched_tgt.add(j)
            link(
                s_nodes[i],
                t_nodes[j],
                m["source_size"],
                label,
                f"{label}: L{lo} C{m['source_coalition']} ({m['source_size']}) → L{hi} C{m['target_coalition']} "
                f"({m['target_size']})<br>α = {m['alpha']:.3f}, β = {m['beta']:.3f}, M = {m['mass']:.4g}",
            )
            nodes.hover[s_nodes[i]].append(f"→ L{hi}: {label}")
            nodes.hover[t_nodes[j]].append(f"L{lo} →: {label}")
        for i, node in enumerate(s_nodes):
            if i not in matched_src:
                sink = nodes.get(("vanished", lo, hi), f"vanished after L{lo}")
                link(
                    node,
                    sink,
                    d["source_sizes"][i],
                    "vanishing",
                    f"vanishing: L{lo} C{d['source_index'][i]} unmatched",
                )
                nodes.hover[node].append(f"→ L{hi}: vanishing (unmatched)")
        for j, node in enumerate(t_nodes):
            if j not in matched_tgt:
                origin = nodes.get(("emerged", lo, hi), f"emerged in L{hi}")
                link(
                    origin,
                    node,
                    d["target_sizes"][j],
                    "emergence",
                    f"emergence: L{hi} C{d['target_index'][j]}",
                )
                nodes.hover[node].append(f"L{lo} →: emergence")
    node_text = ["<br>".join(h) if h else "" for h in nodes.hover]
    fig = go.Figure(
        go.Sankey(
            arrangement="snap",
            node=dict(
                label=nodes.labels,
                customdata=node_text,
                hovertemplate="%{label}<br>%{customdata}<extra></extra>",
                pad=8,
                thickness=14,
            ),
            link=dict(
                source=src,
                target=tgt,
                value=val,
                color=colour,
                customdata=hover,
                hovertemplate="%{customdata}<extra></extra>",
            ),
        )
    )
    fig.update_layout(
        title=title or "Coalition transitions across layers (link width: neurons)",
        font=dict(size=10),
        height=max(400, 22 * max((len(d["source_index"]) for d in docs), default=0) + 200),
    )
    return fig


def write_sankey(results: Sequence[Any], path: str | os.PathLike, *, title: str | None = None) -> Path:
    """Write the Sankey of ``results`` as a self-contained HTML file (plotly.js embedded)."""
    fig = sankey_figure(results, title=title)
    html = fig.to_html(include_plotlyjs=True, full_html=True, config={"displaylogo": False})
    return atomic_write_text(path, html)
