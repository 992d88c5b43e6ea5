"""The run report: ``results.json``, ``report.md``, PNG figures and an offline ``report.html``.

Input is the results document assembled by the pipeline (see :func:`hedonic_neurons.pipeline`):

- ``title``, ``banner`` (lines shown first), ``model``, ``task``, ``layers``, ``seeds``, ``notes``;
- ``finetune``: the fine-tuning metrics (``{"task", "val": {...}, "test": {...}}``, each split with
  its dataset and Pearson/Spearman/R² or nDCG@10), or None when the model was used as given;
- ``summary``: plain sentences the evaluation writes (what it concludes against the null);
- ``explorer``: ``{method: [coalition summary dicts]}`` (:func:`hedonic_neurons.explore.coalition_summaries`;
  a plain list is shown under one heading);
- ``table_extrinsic``: rows ``{"method", "ood_drop", "alignment_r2", "synergy", "blocking_upper", ...}``
  whose metric values are :class:`~hedonic_neurons.evaluate.stats.Estimate` dicts;
- ``table_ridge``: rows ``{"method", "<task>": Estimate}``, with ``"position"`` (where the
  activations were read: ``mean``, ``readout``, ``query``) when the run recorded positions; rows
  whose method starts with ``ceiling`` are the ridge on every neuron / on the top principal
  components beside the methods' macro-features;
- ``table_alignment``: rows ``{"method", "position", "alignment_r2", ...: Estimate}``;
- ``evaluation_tables``: ``{title: [flat row dicts]}``, values numbers, strings or
  ``{"mean", "low", "high"}`` dicts (shown as ``mean [low, high]``);
- ``sizes``: ``{method: {layer: size_summary}}``;
- ``transitions``: ``{method: [{"source_layer", "target_layer", "percent": {label: %}, ...}]}``;
  rows of the null rule also carry ``tau_alpha``, ``tau_beta``, ``links``, ``median_pct_alpha``,
  ``median_pct_beta``, ``flow_spearman`` and ``link_list`` (the significant links, from which the
  per-coalition lineage view is built);
- ``sankey``: optional file name of the Sankey HTML next to the report.

The report opens with a summary (what was run, how well the model does its task, the
evaluation's sentences), then the coalition explorer, then the tables and figures. report.md and
report.html hold the same sections and tables. Numbers: each table column that holds floats is
printed with three decimals, scaled by one power of ten named in its header (``(×10⁻⁹)``) when its
largest value is below 0.01 or at least 10⁴; counts print as integers. Figures are saved at
:data:`hedonic_neurons.plot.DPI` with text of at least 10 pt and at most 1,056 px wide, so the page
(1,068 px of content) never scales them down: text is at least 15 px on screen.

Matplotlib is imported lazily (figures are built without pyplot, so nothing needs closing).
"""

from __future__ import annotations

import base64
import html
import math
import re
from pathlib import Path
from typing import Any

from hedonic_neurons.artifacts import atomic_write_text, write_json

METRIC_TITLES = {
    "ood_drop": "OOD drop ↑",
    "alignment_r2": "alignment R² ↑",
    "alignment_r2_ood": "alignment R², OOD ↑",
    "alignment_r2_ood_refit": "alignment R², OOD refitted ↑",
    "synergy": "mean pairwise φ ↑",
    "blocking_upper": "blocking-rate bound ↓",
    "blocking_upper_phi": "φ-aware blocking bound ↓",
    "k": "coalitions evaluated",
    "ridge_r2": "ridge R², in-domain CV ↑",
    "ridge_r2_ood": "ridge R², OOD ↑",
    "ridge_r2_ood_refit": "ridge R², OOD refitted ↑",
    "ridge_r2_ood_constant": "constant predictor, OOD",
    "ridge_null_percentile": "percentile among random sets ↑",
    "ridge_ndcg10": "nDCG@10 of ridge, OOD ↑",
    "ood_drop_phi": "OOD drop over φ resamples and queries",
    "alignment_r2_phi": "alignment R² over φ resamples and queries",
    "ridge_r2_phi": "ridge R², in-domain CV, over φ resamples and queries",
}
METRIC_NOTES = {
    "ood_drop": "task metric unablated minus ablated on the out-of-domain test set (higher: the "
    "coalitions matter more)",
    "alignment_r2": "query-grouped cross-validated R² of each coalition's activation regressed on the IR "
    "heuristics that vary within a query (BM25, coverage, matched IDF)",
    "ridge_r2": "query-grouped cross-validated R² of the task target on the coalitions' activations "
    "(relevance labels standardised per query)",
    "ridge_r2_ood": "the same model fitted on all train pairs, scored on the out-of-domain test pairs",
    "ridge_r2_ood_refit": "OOD R² after refitting intercept and scale on a held-out half of the test queries",
    "ridge_r2_ood_constant": "what the training mean scores OOD: label shift alone",
    "alignment_r2_ood": "the same regressions fitted on all train pairs, scored on the out-of-domain "
    "test pairs",
    "alignment_r2_ood_refit": "OOD alignment R² after refitting intercept and scale on a held-out half of "
    "the test queries",
    "ridge_null_percentile": "percentile of the in-domain R² among random size-matched coalitions",
    "synergy": "mean φ over pairs of members",
    "blocking_upper": "95% upper bound on the rate at which random small coalitions block the partition",
    "blocking_upper_phi": "the same for coalitions grown along positive φ (a harder test)",
    "ood_drop_phi": "hedonic rows with φ resampling: the figure for coalitions of partitions re-solved on "
    "disjoint subsets of the φ data, mean [2.5th, 97.5th percentile] over (resample, query bootstrap), "
    "so the interval holds φ-data and query variance",
    "alignment_r2_phi": "as the OOD drop's column: over φ resamples and bootstrap samples of the training queries",
    "ridge_r2_phi": "as the OOD drop's column: over φ resamples and bootstrap samples of the training queries",
    "k": "how many coalitions (the top K of size ≥ the minimum) entered each figure, per layer and seed; "
    "fewer than K when a method has fewer eligible coalitions or a baseline had no cluster large "
    "enough to size-match",
}
#: what the position column and the ceiling rows of the ridge and alignment tables mean
POSITION_NOTE = (
    "position: where each pair's activations were read — mean: the mean over all its tokens; readout: "
    "the token the model's head reads (the last non-pad token of a decoder, [CLS] of an encoder); "
    "query: the mean over its query tokens (in a decoder whose template puts the query before the "
    "passage, the default, the query tokens cannot attend to the passage: their features are the same "
    "for every passage of a query and can only tell queries apart)"
)
CEILING_NOTE = (
    "ceiling rows: the same ridge (target, per-query label standardisation, query-grouped folds, α grid) "
    "on every neuron of the layer, and on the top K principal components of the same activations, K = "
    "evaluate.top_k, the most coalitions a method's ridge gets (as many features, chosen by variance); "
    "α is chosen once on all training pairs, which can only flatter the ceiling; mean over layers"
)
COUNT_METRICS = {"k"}  # counts: printed as integers, not plotted
NOT_PLOTTED = COUNT_METRICS
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
CONTENT_PX = 1068  # the page's content width (body 1,100 px less padding)
FONT = 10  # points, the smallest text of every figure

# ------------------------------------------------------------------------------ number formatting

_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_estimate(value: Any) -> bool:
    return isinstance(value, dict) and "mean" in value


def column_scale(values: list[Any]) -> int:
    """The power of ten a column is divided by: 0 when its largest |value| is in [0.01, 10⁴) (or
    it has none), else the exponent of that largest value."""
    numbers = []
    for v in values:
        if _is_estimate(v):
            numbers += [x for x in (v.get("mean"), v.get("low"), v.get("high")) if _finite(x)]
        elif _finite(v):
            numbers.append(v)
    top = max((abs(x) for x in numbers), default=0.0)
    if top == 0.0 or 1e-2 <= top < 1e4:
        return 0
    return math.floor(math.log10(top))


def scale_label(exponent: int) -> str:
    return "" if exponent == 0 else f" (×10{str(exponent).translate(_SUPERSCRIPT)})"


def _fmt(est: Any, digits: int = 3, scale: int = 0, count: bool = False) -> str:
    """An Estimate dict as ``mean ± half-width`` (n ≥ 2), scaled by 10**scale; a count as an integer
    (or its mean and range over seeds when it varies)."""
    if not isinstance(est, dict) or not _finite(est.get("mean")) or est.get("n", 1) == 0:
        return "n/a"
    mean = est["mean"]
    if count:
        values = [v for v in est.get("values") or [] if _finite(v)]
        if float(mean).is_integer() and (not values or min(values) == max(values)):
            return f"{int(mean)}"
        if values:
            return f"{mean:.1f} (range {min(values):.0f}–{max(values):.0f})"
        return f"{mean:.1f}"
    unit = 10.0**scale
    if "n_resamples" in est and _finite(est.get("low")) and _finite(est.get("high")):  # a percentile interval
        return f"{mean / unit:.{digits}f} [{est['low'] / unit:.{digits}f}, {est['high'] / unit:.{digits}f}]"
    if est.get("n", 0) < 2 or not (_finite(est.get("low")) and _finite(est.get("high"))):
        return f"{mean / unit:.{digits}f}"
    half = (est["high"] - est["low"]) / 2
    return f"{mean / unit:.{digits}f} ± {half / unit:.{digits}f}"


def _cell(value: Any, scale: int, digits: int = 3) -> str:
    """A generic table cell: integers as integers, floats scaled, intervals as ``mean [low, high]``."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}".replace(",", " ") if abs(value) >= 10**5 else str(value)
    unit = 10.0**scale
    if isinstance(value, float):
        return f"{value / unit:.{digits}f}" if math.isfinite(value) else "n/a"
    if _is_estimate(value):
        mean, low, high = value.get("mean"), value.get("low"), value.get("high")
        if not _finite(mean):
            return "n/a"
        if _finite(low) and _finite(high) and (low, high) != (mean, mean):
            return f"{mean / unit:.{digits}f} [{low / unit:.{digits}f}, {high / unit:.{digits}f}]"
        return f"{mean / unit:.{digits}f}"
    return str(value)


# ----------------------------------------------------------------------------------------- tables


def _md_table(head: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in body]
    return "\n".join(lines)


def _html_cells(head: list[str], body: list[list[str]], cls: str = "") -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    tr = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>" for cells in body)
    attr = f' class="{cls}"' if cls else ""
    return f'<div class="scroll"><table{attr}><thead><tr>{th}</tr></thead><tbody>{tr}</tbody></table></div>'


def _columns(rows: list[dict]) -> list[str]:
    cols: list[str] = []
    for row in rows:
        for key, value in row.items():
            if key != "method" and isinstance(value, dict) and "mean" in value and key not in cols:
                cols.append(key)
    return cols


def _method_cells(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Header and body of a {method, metric: Estimate} table (mean ± CI half-width, scaled per column)."""
    cols = _columns(rows)
    scales = {c: 0 if c in COUNT_METRICS else column_scale([r.get(c) for r in rows]) for c in cols}
    positions = any("position" in r for r in rows)  # ridge / alignment: one row per read position
    head = [
        "method",
        *(["position"] if positions else []),
        *(METRIC_TITLES.get(c, c) + scale_label(scales[c]) for c in cols),
    ]
    body = [
        [
            str(row["method"]),
            *([str(row.get("position", ""))] if positions else []),
            *(_fmt(row.get(c), scale=scales[c], count=c in COUNT_METRICS) for c in cols),
        ]
        for row in rows
    ]
    return head, body


def markdown_table(rows: list[dict]) -> str:
    """Rows of {method, metric: Estimate} as a Markdown table (mean ± CI half-width)."""
    return _md_table(*_method_cells(rows))


def _html_table(rows: list[dict]) -> str:
    return _html_cells(*_method_cells(rows))


def _metric_notes(rows: list[dict]) -> list[str]:
    return [f"{METRIC_TITLES.get(c, c)}: {METRIC_NOTES[c]}" for c in _columns(rows) if c in METRIC_NOTES]


def _ridge_notes(rows: list[dict]) -> list[str]:
    """The notes under a ridge or alignment table: its columns, then positions and ceilings where shown."""
    notes = _metric_notes(rows)
    if any("position" in r for r in rows):
        notes.append(POSITION_NOTE)
    if any(str(r.get("method", "")).startswith("ceiling") for r in rows):
        notes.append(CEILING_NOTE)
    return notes


def generic_cells(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Header and body of a table of flat row dicts (numbers, strings or {"mean","low","high"}):
    columns in first-seen order, float columns scaled by :func:`column_scale`."""
    cols: list[str] = []
    for row in rows:
        for key, value in row.items():
            if key not in cols and (
                value is None or isinstance(value, str | int | float | bool) or _is_estimate(value)
            ):
                cols.append(key)
    scales = {}
    for c in cols:
        values = [r.get(c) for r in rows]
        floats = [v for v in values if (isinstance(v, float) or _is_estimate(v))]
        scales[c] = column_scale(floats) if floats else 0
    head = [c + scale_label(scales[c]) for c in cols]
    body = [[_cell(row.get(c), scales[c]) for c in cols] for row in rows]
    return head, body


def _sizes_cells(sizes: dict[str, dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    head = ["method", "layer", "coalitions", "largest", "singletons", "median", "p90"]
    body = []
    for method, per_layer in sizes.items():
        for layer, s in per_layer.items():
            if not s.get("count"):
                body.append([method, str(layer), "0", "–", "–", "–", "–"])
                continue
            body.append(
                [
                    method,
                    str(layer),
                    str(s["count"]),
                    str(s["largest"]),
                    str(s["singletons"]),
                    f"{s['median']:.0f}",
                    f"{s['p90']:.0f}",
                ]
            )
    return head, body


def _sizes_md(sizes: dict[str, dict[str, Any]]) -> str:
    return _md_table(*_sizes_cells(sizes))


# ---------------------------------------------------------------------------------------- figures


def _grid(panels: int, width: float = 4.6, height: float = 3.6):
    """A figure of ``panels`` axes, at most two per row (so it is at most 9.6 in = 1,056 px wide)."""
    from matplotlib.figure import Figure

    from hedonic_neurons.plot import DPI

    cols = 1 if panels <= 1 else 2
    rows = max(1, math.ceil(panels / cols))
    fig = Figure(figsize=(width * cols, height * rows + 0.4), dpi=DPI)
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[panels:]:
        ax.set_visible(False)
    return fig, axes[: max(panels, 1)]


def _save(fig: Any, path: Path) -> Path:
    from hedonic_neurons.plot import DPI

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def methods_figure(rows: list[dict], title: str):
    """One panel per metric (at most two per row): bars = methods, error bars = 95% CI. Rows with a
    ``position`` (ridge, alignment) are labelled ``method @ position``, one colour per method."""
    cols = [c for c in _columns(rows) if c not in NOT_PLOTTED]
    fig, axes = _grid(len(cols))
    colour = {m: f"C{i}" for i, m in enumerate(dict.fromkeys(str(r["method"]) for r in rows))}
    for ax, col in zip(axes, cols):
        names, means, errs, colours = [], [], [], []
        for row in rows:
            est = row.get(col)
            if isinstance(est, dict) and est.get("n", 1) > 0 and _finite(est.get("mean")):
                low = est.get("low") if _finite(est.get("low")) else est["mean"]
                high = est.get("high") if _finite(est.get("high")) else est["mean"]
                where = f" @ {row['position']}" if "position" in row else ""
                names.append(f"{row['method']}{where}")
                colours.append(colour[str(row["method"])])
                means.append(est["mean"])
                errs.append([[est["mean"] - low], [high - est["mean"]]])
        for x, m, e, c in zip(range(len(names)), means, errs, colours):
            ax.bar(x, m, yerr=e, capsize=4, color=c)
        ax.set_xticks(list(range(len(names))), names, rotation=30, ha="right", fontsize=FONT)
        ax.tick_params(labelsize=FONT)
        ax.yaxis.get_offset_text().set_fontsize(FONT)
        ax.set_title(METRIC_TITLES.get(col, col), fontsize=FONT + 1)
        ax.axhline(0, color="black", lw=0.6)
    if not cols:
        axes[0].text(0.5, 0.5, "no estimates to plot", ha="center", va="center", fontsize=FONT)
        axes[0].set_axis_off()
    fig.suptitle(title, fontsize=FONT + 2)
    fig.tight_layout()
    return fig


def plot_methods(rows: list[dict], path: Path, title: str) -> Path:
    """:func:`methods_figure` saved as PNG."""
    return _save(methods_figure(rows, title), path)


def sizes_figure(sizes: dict[str, dict[str, Any]]):
    """Rank-size plot of coalition sizes per method (all layers pooled), log-log."""
    from hedonic_neurons.plot import size_distribution

    pooled = {
        method: [[0] * s for summary in per_layer.values() for s in summary.get("all_sizes", [])]
        for method, per_layer in sizes.items()
    }
    pooled = {m: c for m, c in pooled.items() if c}
    if not pooled:
        fig, (ax,) = _grid(1, 6.4, 3.0)
        ax.text(0.5, 0.5, "no coalition sizes recorded", ha="center", va="center", fontsize=FONT)
        ax.set_axis_off()
        return fig
    return size_distribution(pooled, title="Coalition size distribution (all analysed layers)")


def plot_sizes(sizes: dict[str, dict[str, Any]], path: Path) -> Path:
    return _save(sizes_figure(sizes), path)


def transitions_figure(transitions: dict[str, list[dict]]):
    """Stacked bars of transition percentages per layer pair, one panel per method."""
    methods = [m for m, rows in transitions.items() if rows]
    fig, axes = _grid(len(methods))
    for ax, method in zip(axes, methods):
        rows = transitions[method]
        names = [f"{r['source_layer']}→{r['target_layer']}" for r in rows]
        bottom = [0.0] * len(rows)
        for li, label in enumerate(SOURCE_LABELS):
            vals = [float(r["percent"].get(label, 0.0)) for r in rows]
            ax.bar(names, vals, bottom=bottom, label=label, color=f"C{li}")
            bottom = [b + v for b, v in zip(bottom, vals)]
        ax.set_ylim(0, 100)
        ax.set_title(method, fontsize=FONT + 1)
        ax.set_ylabel("% of source coalitions", fontsize=FONT)
        ax.tick_params(labelsize=FONT)
    if methods:
        axes[0].legend(fontsize=FONT, loc="upper right")
    else:
        axes[0].text(0.5, 0.5, "no transitions tracked", ha="center", va="center", fontsize=FONT)
        axes[0].set_axis_off()
    fig.tight_layout()
    return fig


def plot_transitions(transitions: dict[str, list[dict]], path: Path) -> Path:
    return _save(transitions_figure(transitions), path)


# ------------------------------------------------------------------------------------- summary


_FT_METRICS = (
    ("ndcg@10", "nDCG@10"),
    ("first_stage_ndcg@10", "first-stage nDCG@10"),
    ("r2", "R²"),
    ("pearson", "Pearson r"),
    ("spearman", "Spearman ρ"),
)


def finetune_sentences(finetune: Any) -> list[str]:
    """How well the fine-tuned model does its task, one sentence per evaluated split."""
    if not isinstance(finetune, dict):
        return ["No fine-tuning metrics were recorded (the model was analysed as given)."]
    out = []
    task = finetune.get("task", "?")
    for split, what in (("test", "out-of-domain test"), ("val", "validation")):
        m = finetune.get(split)
        if not isinstance(m, dict):
            continue
        parts = [f"{title} {m[key]:.3f}" for key, title in _FT_METRICS if _finite(m.get(key))]
        size = (
            f"{m['n_queries']} queries" if m.get("n_queries") else f"{m['n']} pairs" if m.get("n") else None
        )
        where = f"{what} set ({m.get('dataset', '?')}{', ' + size if size else ''})"
        out.append(
            f"Fine-tuned for {task}: on the {where}: "
            + (", ".join(parts) if parts else "no metric recorded")
            + "."
        )
    return out or [f"Fine-tuning for {task} recorded no evaluation split."]


def _run_sentence(results: dict[str, Any]) -> str:
    methods = [str(r["method"]) for r in results.get("table_extrinsic") or []]
    methods += [m for m in results.get("sizes", {}) if m not in methods]
    text = (
        f"Model {results.get('model', '?')}, task {results.get('task', '?')}, "
        f"layers {results.get('layers', [])}, "
        f"seeds {results.get('seeds', [])}"
    )
    if methods:
        text += f"; methods compared: {', '.join(methods)}"
    return text + "."


# --------------------------------------------------------------------------------- the explorer


def _explorer(results: dict[str, Any]) -> dict[str, list[dict]]:
    ex = results.get("explorer") or {}
    if isinstance(ex, list):
        return {"coalitions": ex} if ex else {}
    return {str(m): list(docs) for m, docs in ex.items() if docs}


def _explorer_md(explorer: dict[str, list[dict]]) -> list[str]:
    from hedonic_neurons.explore import display_tokens, summary_sentence

    lines = []
    for method, docs in explorer.items():
        lines += [f"### {method}", ""]
        for doc in docs:
            name = doc.get("name") or f"L{doc['layer']}"
            lines += [f"#### {name}", "", doc.get("sentence") or summary_sentence(doc), ""]
            lines.append(f"- members ({len(doc['members'])}): {', '.join(str(m) for m in doc['members'])}")
            if doc.get("mean_phi") is not None:
                lines.append(f"- mean pairwise φ: {doc['mean_phi']:.4g}")
            ab = doc.get("ablation")
            if ab and _finite(ab.get("mean")):
                lines.append(
                    f"- ablation effect ({ab['mode']}, mean Δ output, 95% CI, n = {ab['n']}): "
                    f"{ab['mean']:.4g} [{ab['low']:.4g}, {ab['high']:.4g}]"
                )
            wc = doc.get("weight_change")
            if wc:
                lines.append(
                    f"- share of the layer's ‖ΔW‖²: {100 * wc['share']:.2f}% "
                    f"(neuron share {100 * wc['neuron_share']:.2f}%, {wc['enrichment']:.2f}×)"
                )
            heur = doc.get("heuristics")
            if heur:
                pretty = ", ".join(
                    f"{k} {v['pearson']:.2f}" for k, v in heur.items() if v.get("pearson") is not None
                )
                lines.append(f"- Pearson r of mean activation with IR heuristics: {pretty or 'n/a'}")
            ranking = (
                "readout-token activation" if doc.get("rank_by") == "readout" else "largest token activation"
            )
            lines += ["", f"Top {len(doc.get('top') or [])} of {doc['n_texts']} inputs (by {ranking}):", ""]
            for rank, t in enumerate(doc.get("top") or [], 1):
                shown = display_tokens(t["tokens"])
                best = sorted(range(len(shown)), key=lambda k: -t["activations"][k])[:3]
                hot = ", ".join(f"“{shown[k].strip()}” {t['activations'][k]:.3g}" for k in best)
                text = t["text"] if len(t["text"]) <= 160 else t["text"][:157] + "..."
                lines.append(
                    f"{rank}. input {t['input']} (score {t['score']:.3g}; most active tokens {hot}): {text}"
                )
            lines.append("")
    return lines


def _explorer_html(explorer: dict[str, list[dict]]) -> str:
    from hedonic_neurons.explore import summary_html

    parts = []
    for method, docs in explorer.items():
        parts.append(f"<h3>{html.escape(method)}</h3>")
        parts += [summary_html(doc, css=False) for doc in docs]
    return "".join(parts)


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
        f"p{_num(link.get('pct_alpha'), '.0f')}, β·K {_num(link.get('lift_beta'))} "
        f"p{_num(link.get('pct_beta'), '.0f')})"
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
            f"<details><summary>{html.escape(method)}: {len(nodes)} coalitions with a link above the "
            "null</summary>"
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


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "figure"


def write_report(
    results: dict[str, Any], out_dir: str | Path, *, phi_maps: dict[str, tuple[Any, Any]] | None = None
) -> dict[str, Path]:
    """Write results.json, report.md, figures/*.png and report.html into ``out_dir``.

    ``phi_maps``: optional ``{title: (phi, partition)}``; each gets a φ heat map ordered by the
    partition (:func:`hedonic_neurons.plot.phi_heatmap`, singletons left out) in the figures (φ
    matrices are too large for results.json, so they are passed here)."""
    from hedonic_neurons.explore import SUMMARY_CSS

    out = Path(out_dir)
    figs = out / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    title = results.get("title", "hedonic-neurons report")
    extrinsic = results.get("table_extrinsic") or []
    ridge = results.get("table_ridge") or []
    alignment = results.get("table_alignment") or []
    eval_tables = results.get("evaluation_tables") or {}
    transitions = results.get("transitions") or {}
    sizes = results.get("sizes") or {}
    explorer = _explorer(results)
    paths = {"results": write_json(out / "results.json", results)}
    paths["fig_methods"] = plot_methods(
        extrinsic, figs / "methods.png", "Methods compared (mean ± 95% CI over seeds)"
    )
    if ridge:
        paths["fig_ridge"] = plot_methods(ridge, figs / "ridge.png", "Ridge on macro-features")
    paths["fig_sizes"] = plot_sizes(sizes, figs / "sizes.png")
    paths["fig_transitions"] = plot_transitions(transitions, figs / "transitions.png")
    phi_figs: dict[str, Path] = {}
    if phi_maps:
        from hedonic_neurons.plot import phi_heatmap

        for name, (phi, partition) in phi_maps.items():
            fig = phi_heatmap(phi, partition, min_size=2, title=f"φ ordered by partition: {name}")
            phi_figs[name] = paths[f"fig_phi_{_slug(name)}"] = _save(fig, figs / f"phi-{_slug(name)}.png")

    run = _run_sentence(results)
    finetune = finetune_sentences(results.get("finetune"))
    findings = [str(s) for s in results.get("summary") or []]
    if not findings:
        findings = ["The evaluation wrote no summary sentence; the tables below hold its numbers."]
    n_explored = sum(len(d) for d in explorer.values())
    notes = results.get("notes", [])

    # ------------------------------------------------------------------ report.md
    md = [f"# {title}", "", *(f"> {line}" for line in results.get("banner", [])), ""]
    md += ["## Summary", "", f"What was run: {run}", "", *finetune, "", "What the evaluation found:", ""]
    md += [*(f"- {s}" for s in findings), ""]
    if explorer:
        md += [f"The coalition explorer below describes {n_explored} coalitions ({', '.join(explorer)}).", ""]
        md += ["## Coalition explorer", "", *_explorer_md(explorer)]
    md += ["## Extrinsic evaluation", "", markdown_table(extrinsic), ""]
    md += [*(f"- {n}" for n in _metric_notes(extrinsic)), ""]
    if ridge:
        md += ["## Ridge regression on coalition macro-features", "", markdown_table(ridge), ""]
        md += [*(f"- {n}" for n in _ridge_notes(ridge)), ""]
    if alignment:
        md += ["## Alignment with IR heuristics by read position", "", markdown_table(alignment), ""]
        md += [*(f"- {n}" for n in _ridge_notes(alignment)), ""]
    for name, rows in eval_tables.items():
        if rows:
            md += [f"## {name}", "", _md_table(*generic_cells(rows)), ""]
    md += ["## Coalition sizes", "", _sizes_md(sizes), ""]
    lineage = lineage_view(transitions)
    md += ["## Transitions between layers", "", _TRANSITION_NOTE, "", _transition_md(transitions), ""]
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

    # ------------------------------------------------------------------ report.html
    def img(p: Path) -> str:
        data = base64.b64encode(p.read_bytes()).decode()
        return f'<figure><img alt="{p.stem}" src="data:image/png;base64,{data}"></figure>'

    esc = html.escape
    sections = [
        f"<h1>{esc(title)}</h1>",
        *(f'<p class="banner">{esc(b)}</p>' for b in results.get("banner", [])),
        '<section class="summary"><h2>Summary</h2>',
        f"<p><b>What was run.</b> {esc(run)}</p>",
        *(f"<p><b>Task quality.</b> {esc(s)}</p>" for s in finetune),
        "<p><b>What the evaluation found.</b></p><ul>"
        + "".join(f"<li>{esc(s)}</li>" for s in findings)
        + "</ul>",
    ]
    if explorer:
        sections.append(f"<p>The coalition explorer below describes {n_explored} coalitions.</p>")
    sections.append("</section>")
    if explorer:
        sections += ['<h2 id="explorer">Coalition explorer</h2>', _explorer_html(explorer)]
    sections += ["<h2>Extrinsic evaluation</h2>", _html_table(extrinsic)]
    if _metric_notes(extrinsic):
        sections.append(
            "<ul class='notes'>" + "".join(f"<li>{esc(n)}</li>" for n in _metric_notes(extrinsic)) + "</ul>"
        )
    sections.append(img(paths["fig_methods"]))
    if ridge:
        sections += ["<h2>Ridge regression on coalition macro-features</h2>", _html_table(ridge)]
        notes_html = "".join(f"<li>{esc(n)}</li>" for n in _ridge_notes(ridge))
        sections.append(f"<ul class='notes'>{notes_html}</ul>")
        sections.append(img(paths["fig_ridge"]))
    if alignment:
        sections += ["<h2>Alignment with IR heuristics by read position</h2>", _html_table(alignment)]
        notes_html = "".join(f"<li>{esc(n)}</li>" for n in _ridge_notes(alignment))
        sections.append(f"<ul class='notes'>{notes_html}</ul>")
    for name, rows in eval_tables.items():
        if rows:
            sections += [f"<h2>{esc(name)}</h2>", _html_cells(*generic_cells(rows))]
    sections += ["<h2>Coalition sizes</h2>", _html_cells(*_sizes_cells(sizes)), img(paths["fig_sizes"])]
    for name, p in phi_figs.items():
        sections += [f"<h3>φ heat map: {esc(name)}</h3>", img(p)]
    sections += [
        "<h2>Transitions</h2>",
        f"<p>{esc(_TRANSITION_NOTE)}</p>",
        _transition_html(transitions),
        img(paths["fig_transitions"]),
    ]
    if lineage:
        sections += ["<h2>Coalition lineage</h2>", _lineage_html(lineage)]
    if results.get("sankey"):
        src = esc(results["sankey"])
        sections += [
            f'<h2>Coalition flow</h2><iframe src="{src}" title="Sankey"></iframe>'
            f'<p><a href="{src}">open full page</a></p>'
        ]
    if notes:
        sections += ["<h2>Notes</h2><ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>"]
    style = (
        "body{font-family:system-ui,sans-serif;font-size:15px;max-width:1100px;margin:2em auto;"
        "padding:0 16px;"
        "color:#222;box-sizing:border-box}"
        "table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}"
        "td:first-child,th:first-child{text-align:left}.scroll{overflow-x:auto}"
        "figure{margin:1em 0}img{max-width:100%;height:auto}"
        "iframe{width:100%;height:620px;border:1px solid #ddd}"
        ".banner{background:#fff6d5;padding:.5em 1em;border-left:4px solid #e0b000}"
        ".summary{background:#f4f8ff;padding:.2em 1em;border-left:4px solid #3b6fd8}" + SUMMARY_CSS
    )
    page = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
        f"<style>{style}</style></head><body>{''.join(sections)}</body></html>\n"
    )
    paths["html"] = atomic_write_text(out / "report.html", page)
    return paths
