"""The run report: ``results.json``, ``report.md``, PNG figures and an offline ``report.html``.

Input is the results document assembled by the pipeline (see :func:`hedonic_neurons.pipeline`):

- ``table_extrinsic``: rows ``{"method", "ood_drop", "alignment_r2", "synergy", "blocking_upper", ...}``
  whose metric values are :class:`~hedonic_neurons.evaluate.stats.Estimate` dicts;
- ``table_ridge``: rows ``{"method", "<task>": Estimate}``;
- ``sizes``: ``{method: {layer: size_summary}}``;
- ``transitions``: ``{method: [{"source_layer", "target_layer", "percent": {label: %}}]}``;
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
LABELS = ("persistence", "split", "merge", "vanishing", "emergence")


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
        for li, label in enumerate(LABELS[:4]):
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


def _transition_md(transitions: dict[str, list[dict]]) -> str:
    lines = ["| method | layers | " + " | ".join(LABELS) + " |", "|---|---|" + "---|" * len(LABELS)]
    for method, rows in transitions.items():
        for r in rows:
            pct = " | ".join(f"{float(r['percent'].get(lbl, 0.0)):.1f}" for lbl in LABELS)
            lines.append(f"| {method} | {r['source_layer']}→{r['target_layer']} | {pct} |")
    return "\n".join(lines)


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
    md += [
        "## Transitions between adjacent layers (% of source coalitions)",
        "",
        _transition_md(results.get("transitions", {})),
        "",
    ]
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
        img(paths["fig_transitions"]),
    ]
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
