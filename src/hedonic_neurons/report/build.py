"""The run report: ``results.json``, ``report.md``, PNG figures and an offline ``report.html``.

Input is the results document assembled by the pipeline (see :func:`hedonic_neurons.pipeline`):

- ``table_extrinsic``: rows ``{"method", "ood_drop", "alignment_r2", "synergy", "blocking_upper", ...}``
  whose metric values are :class:`~hedonic_neurons.evaluate.stats.Estimate` dicts;
- ``table_ridge``: rows ``{"method", "<task>": Estimate}``;
- ``sizes``: ``{method: {layer: size_summary}}``;
- ``transitions``: ``{method: [{"source_layer", "target_layer", "percent": {label: %}, ...}]}``;
  rows of the null rule also carry ``tau_alpha``, ``tau_beta``, ``links``, ``median_pct_alpha``,
  ``median_pct_beta``, ``flow_spearman`` and ``link_list`` (the significant links, from which the
  per-coalition lineage view is built);
- ``sankey``: optional file name of the Sankey HTML next to the report.

Matplotlib is imported lazily (it is only needed here) with the non-interactive Agg backend.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from hedonic_neurons.artifacts import atomic_write_text, write_json

METRIC_TITLES = {
    "ood_drop": "OOD drop ↑",
    "alignment_r2": "alignment R² ↑",
    "synergy": "mean pairwise φ ↑",
    "blocking_upper": "blocking-rate bound ↓",
    "blocking_upper_phi": "φ-aware blocking bound ↓",
    "k": "coalitions evaluated",
    "ridge_r2": "ridge OOD R² ↑",
}
NOT_PLOTTED = {"k"}  # counts, shown in the tables only
LABELS = ("persistence", "split", "merge", "vanishing", "emergence", "unstructured")
SOURCE_LABELS = ("persistence", "split", "merge", "vanishing", "unstructured")  # sum to 100 per row
#: extra columns of the transition table (null rule), with their titles
TRANSITION_EXTRA = {
    "tau_alpha": "τα",
    "tau_beta": "τβ",
    "links": "links",
    "median_pct_alpha": "median pct α·K'",
    "median_pct_beta": "median pct β·K",
    "flow_spearman": "flow–mass ρ",
}


def _fmt(est: Any, digits: int = 3) -> str:
    if not isinstance(est, dict) or est.get("n", 0) == 0 or est.get("mean") is None:
        return "n/a"
    mean, half = est["mean"], (est["high"] - est["low"]) / 2
    # small quantities (φ is often ~1e-4) keep significant digits instead of rounding to 0.000
    spec = f".{digits}f" if abs(mean) >= 10 ** (1 - digits) or mean == 0 else f".{digits - 1}e"
    if est["n"] < 2:
        return f"{mean:{spec}}"
    return f"{mean:{spec}} ± {half:{spec}}"


def _columns(rows: list[dict]) -> list[str]:
    cols: list[str] = []
    for row in rows:
        for key, value in row.items():
            if key != "method" and isinstance(value, dict) and "mean" in value and key not in cols:
                cols.append(key)
    return cols


def markdown_table(rows: list[dict]) -> str:
    """Rows of {method, metric: Estimate} as a Markdown table (mean ± CI half-width)."""
    cols = _columns(rows)
    head = "| method | " + " | ".join(METRIC_TITLES.get(c, c) for c in cols) + " |"
    sep = "|---|" + "---|" * len(cols)
    body = ["| " + row["method"] + " | " + " | ".join(_fmt(row.get(c)) for c in cols) + " |" for row in rows]
    return "\n".join([head, sep, *body])


def _html_table(rows: list[dict]) -> str:
    cols = _columns(rows)
    head = "".join(f"<th>{html.escape(METRIC_TITLES.get(c, c))}</th>" for c in cols)
    body = "".join(
        "<tr><td>"
        + html.escape(row["method"])
        + "</td>"
        + "".join(f"<td>{_fmt(row.get(c))}</td>" for c in cols)
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr><th>method</th>{head}</tr></thead><tbody>{body}</tbody></table>"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_methods(rows: list[dict], path: Path, title: str) -> Path:
    """One panel per metric: bars = methods, error bars = 95% CI."""
    plt = _plt()
    cols = [c for c in _columns(rows) if c not in NOT_PLOTTED]
    fig, axes = plt.subplots(1, max(len(cols), 1), figsize=(4.2 * max(len(cols), 1), 3.8), squeeze=False)
    for ax, col in zip(axes[0], cols):
        names, means, errs = [], [], []
        for row in rows:
            est = row.get(col)
            if isinstance(est, dict) and est.get("n", 0) > 0:
                names.append(row["method"])
                means.append(est["mean"])
                errs.append([[est["mean"] - est["low"]], [est["high"] - est["mean"]]])
        xs = range(len(names))
        for x, m, e in zip(xs, means, errs):
            ax.bar(x, m, yerr=e, capsize=4, color=f"C{x}")
        ax.set_xticks(list(xs), names, rotation=35, ha="right", fontsize=8)
        ax.set_title(METRIC_TITLES.get(col, col), fontsize=10)
        ax.axhline(0, color="black", lw=0.6)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_sizes(sizes: dict[str, dict[str, Any]], path: Path) -> Path:
    """Rank-size plot of coalition sizes per method (all layers pooled), log-log."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for idx, (method, per_layer) in enumerate(sizes.items()):
        all_sizes = sorted(
            (s for summary in per_layer.values() for s in summary.get("all_sizes", [])), reverse=True
        )
        if all_sizes:
            ax.loglog(range(1, len(all_sizes) + 1), all_sizes, label=method, color=f"C{idx}", lw=1.4)
    ax.set_xlabel("coalition rank")
    ax.set_ylabel("coalition size (neurons)")
    ax.set_title("Coalition size distribution (all analysed layers)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_transitions(transitions: dict[str, list[dict]], path: Path) -> Path:
    """Stacked bars of transition percentages per layer pair, one panel per method."""
    plt = _plt()
    methods = [m for m, rows in transitions.items() if rows]
    fig, axes = plt.subplots(1, max(len(methods), 1), figsize=(4 * max(len(methods), 1), 3.6), squeeze=False)
    for ax, method in zip(axes[0], methods):
        rows = transitions[method]
        names = [f"{r['source_layer']}→{r['target_layer']}" for r in rows]
        bottom = [0.0] * len(rows)
        for li, label in enumerate(SOURCE_LABELS):
            vals = [float(r["percent"].get(label, 0.0)) for r in rows]
            ax.bar(names, vals, bottom=bottom, label=label, color=f"C{li}")
            bottom = [b + v for b, v in zip(bottom, vals)]
        ax.set_ylim(0, 100)
        ax.set_title(method, fontsize=10)
        ax.set_ylabel("% of source coalitions")
    axes[0][0].legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _num(value: Any, spec: str = ".2f") -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    return format(value, spec) if isinstance(value, int | float) else str(value)


def _transition_cells(transitions: dict[str, list[dict]]) -> tuple[list[str], list[list[str]]]:
    """Header and body of the transition table (label % per row; thresholds etc. where present)."""
    rows = [(m, r) for m, rs in transitions.items() for r in rs]
    extra = [k for k in TRANSITION_EXTRA if any(r.get(k) is not None for _, r in rows)]
    head = ["method", "layers", *(f"{lbl} %" for lbl in LABELS), *(TRANSITION_EXTRA[k] for k in extra)]
    body = []
    for method, r in rows:
        cells = [method, f"{r['source_layer']}→{r['target_layer']}"]
        cells += [_num(r["percent"].get(lbl, 0.0), ".1f") for lbl in LABELS]
        cells += [_num(r.get(k), ".0f" if k.startswith("median") or k == "links" else ".2f") for k in extra]
        body.append(cells)
    return head, body


def _transition_md(transitions: dict[str, list[dict]]) -> str:
    head, body = _transition_cells(transitions)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


def _transition_html(transitions: dict[str, list[dict]]) -> str:
    head, body = _transition_cells(transitions)
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    tr = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>" for cells in body)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{tr}</tbody></table>"


def lineage_view(transitions: dict[str, list[dict]]) -> dict[str, dict[tuple[int, int], dict[str, list]]]:
    """Per method, per coalition (layer, index): the significant links it comes from and goes to,
    gathered from the rows' ``link_list`` over every layer pair (adjacent and longer horizons)."""
    view: dict[str, dict[tuple[int, int], dict[str, list]]] = {}
    for method, rows in transitions.items():
        nodes: dict[tuple[int, int], dict[str, list]] = {}
        for r in rows:
            lo, hi = r["source_layer"], r["target_layer"]
            for link in r.get("link_list") or []:
                src = nodes.setdefault(
                    (lo, link["source_coalition"]), {"size": link["source_size"], "from": [], "to": []}
                )
                tgt = nodes.setdefault(
                    (hi, link["target_coalition"]), {"size": link["target_size"], "from": [], "to": []}
                )
                src["to"].append((hi, link["target_coalition"], link))
                tgt["from"].append((lo, link["source_coalition"], link))
        if nodes:
            view[method] = dict(sorted(nodes.items()))
    return view


def _link_text(layer: int, coalition: int, link: dict[str, Any]) -> str:
    return (
        f"L{layer} C{coalition} ({link['label']}; α·K' {_num(link.get('lift_alpha'))} "
        f"p{_num(link.get('pct_alpha'), '.0f')}, β·K {_num(link.get('lift_beta'))} p{_num(link.get('pct_beta'), '.0f')})"
    )


def _lineage_md(view: dict[str, dict]) -> list[str]:
    lines: list[str] = []
    for method, nodes in view.items():
        lines += ["", f"### {method}", "", "| coalition | size | comes from | goes to |", "|---|---|---|---|"]
        for (layer, c), e in nodes.items():
            came = "; ".join(_link_text(*x) for x in e["from"]) or "–"
            goes = "; ".join(_link_text(*x) for x in e["to"]) or "–"
            lines.append(f"| L{layer} C{c} | {e['size']} | {came} | {goes} |")
    return lines


def _lineage_html(view: dict[str, dict]) -> str:
    parts = []
    for method, nodes in view.items():
        body = "".join(
            f"<tr><td>L{layer} C{c}</td><td>{e['size']}</td>"
            f"<td>{html.escape('; '.join(_link_text(*x) for x in e['from']) or '–')}</td>"
            f"<td>{html.escape('; '.join(_link_text(*x) for x in e['to']) or '–')}</td></tr>"
            for (layer, c), e in nodes.items()
        )
        parts.append(
            f"<details><summary>{html.escape(method)}: {len(nodes)} coalitions with a link above the null</summary>"
            '<table class="lineage"><thead><tr><th>coalition</th><th>size</th><th>comes from</th>'
            f"<th>goes to</th></tr></thead><tbody>{body}</tbody></table></details>"
        )
    return "".join(parts)


_TRANSITION_NOTE = (
    "Persistence, split, merge, vanishing and unstructured are % of the tracked source coalitions, "
    "emergence % of the tracked targets. Rule 'null': a link counts when both lifts (α·K', β·K) reach "
    "the thresholds τα, τβ that a size-preserving random-partition null sets for the layer pair "
    "(about 95% of a random partition's coalitions come out unstructured); 'median pct' is the "
    "matched pairs' median percentile among the null's best lifts; flow–mass ρ is the Spearman "
    "agreement of the interventional flow with the interaction mass."
)


def _sizes_md(sizes: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| method | layer | coalitions | largest | singletons | median | p90 |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, per_layer in sizes.items():
        for layer, s in per_layer.items():
            lines.append(
                f"| {method} | {layer} | {s['count']} | {s['largest']} | {s['singletons']} | {s['median']:.0f} | {s['p90']:.0f} |"
            )
    return "\n".join(lines)


def write_report(results: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write results.json, report.md, figures/*.png and report.html into ``out_dir``."""
    out = Path(out_dir)
    figs = out / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    title = results.get("title", "hedonic-neurons report")
    paths = {"results": write_json(out / "results.json", results)}
    paths["fig_methods"] = plot_methods(
        results["table_extrinsic"], figs / "methods.png", "Methods compared (mean ± 95% CI over seeds)"
    )
    if results.get("table_ridge"):
        paths["fig_ridge"] = plot_methods(
            results["table_ridge"], figs / "ridge.png", "Ridge on macro-features, OOD R²"
        )
    paths["fig_sizes"] = plot_sizes(results.get("sizes", {}), figs / "sizes.png")
    paths["fig_transitions"] = plot_transitions(results.get("transitions", {}), figs / "transitions.png")

    notes = results.get("notes", [])
    md = [
        f"# {title}",
        "",
        *(f"> {line}" for line in results.get("banner", [])),
        "",
        f"Model: `{results.get('model', '?')}` · task: `{results.get('task', '?')}` · layers: "
        f"{results.get('layers', [])} · seeds: {results.get('seeds', [])}",
        "",
        "## Extrinsic evaluation (paper Table A)",
        "",
        markdown_table(results["table_extrinsic"]),
        "",
    ]
    if results.get("table_ridge"):
        md += [
            "## Ridge regression on coalition macro-features, OOD R² (paper Table B)",
            "",
            markdown_table(results["table_ridge"]),
            "",
        ]
    md += ["## Coalition sizes", "", _sizes_md(results.get("sizes", {})), ""]
    transitions = results.get("transitions", {})
    lineage = lineage_view(transitions)
    md += [
        "## Transitions between layers",
        "",
        _TRANSITION_NOTE,
        "",
        _transition_md(transitions),
        "",
    ]
    if lineage:
        md += ["## Coalition lineage (links above the null)", *_lineage_md(lineage), ""]
    md += [
        "## Figures",
        "",
        *(f"![{p.stem}](figures/{p.name})" for k, p in paths.items() if k.startswith("fig_")),
        "",
    ]
    if results.get("sankey"):
        md += [f"Interactive Sankey of coalition flow: [{results['sankey']}]({results['sankey']})", ""]
    if notes:
        md += ["## Notes", "", *(f"- {n}" for n in notes), ""]
    paths["markdown"] = atomic_write_text(out / "report.md", "\n".join(md))

    def img(p: Path) -> str:
        data = base64.b64encode(p.read_bytes()).decode()
        return f'<figure><img alt="{p.stem}" src="data:image/png;base64,{data}"></figure>'

    sections = [
        f"<h1>{html.escape(title)}</h1>",
        *(f'<p class="banner">{html.escape(b)}</p>' for b in results.get("banner", [])),
        f"<p>Model <code>{html.escape(str(results.get('model', '?')))}</code>, task <code>{html.escape(str(results.get('task', '?')))}</code>, "
        f"layers {html.escape(str(results.get('layers', [])))}, seeds {html.escape(str(results.get('seeds', [])))}.</p>",
        "<h2>Extrinsic evaluation</h2>",
        _html_table(results["table_extrinsic"]),
        img(paths["fig_methods"]),
    ]
    if results.get("table_ridge"):
        sections += [
            "<h2>Ridge on macro-features (OOD R²)</h2>",
            _html_table(results["table_ridge"]),
            img(paths["fig_ridge"]),
        ]
    sections += [
        "<h2>Coalition sizes</h2>",
        img(paths["fig_sizes"]),
        "<h2>Transitions</h2>",
        f"<p>{html.escape(_TRANSITION_NOTE)}</p>",
        _transition_html(transitions),
        img(paths["fig_transitions"]),
    ]
    if lineage:
        sections += ["<h2>Coalition lineage</h2>", _lineage_html(lineage)]
    if results.get("sankey"):
        src = html.escape(results["sankey"])
        sections += [
            f'<h2>Coalition flow</h2><iframe src="{src}" title="Sankey"></iframe><p><a href="{src}">open full page</a></p>'
        ]
    if notes:
        sections += ["<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>"]
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}"
        "td:first-child,th:first-child{text-align:left}img{max-width:100%}iframe{width:100%;height:620px;border:1px solid #ddd}"
        ".banner{background:#fff6d5;padding:.5em 1em;border-left:4px solid #e0b000}"
    )
    page = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{style}</style></head><body>{''.join(sections)}</body></html>\n"
    )
    paths["html"] = atomic_write_text(out / "report.html", page)
    return paths
