"""Markdown tables of one or more ``hedonic run`` outputs side by side (the tables of docs/results-*.md).

Reads each run folder's ``results.json`` and prints, one row per run (its folder name), layer and
method: the ablation effects against the random-set null, φ validity, partition stability under
φ resampling, ridge on coalition macro-features beside its ceilings, and the OOD drop. A hedonic
row's "over (φ resample, query)" cells are its ``<figure>_phi`` intervals (mean [2.5th, 97.5th
percentile]); intervals elsewhere are the run's own (bootstrap over queries, or ± the t-interval
half-width over seeds for the extrinsic tables). Usage::

    python scripts/results_tables.py runs/minilm-msmarco-rm runs/minilm-msmarco-rm-s1 > tables.md
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

EFFECTS = "Ablation effects"
NULL = "Against random size-matched sets"
SYNERGY = "Non-additivity of joint ablation"
STABILITY = "Partition stability under φ resampling"


def _num(x: Any, spec: str) -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def _ci(est: Any, spec: str = ".3f") -> str:
    """An interval dict as ``mean (low–high)``; ``–`` when absent."""
    if not isinstance(est, dict) or est.get("mean") is None:
        return "–"
    low, high = est.get("low"), est.get("high")
    if low is None or high is None:
        return _num(est["mean"], spec)
    return f"{_num(est['mean'], spec)} ({_num(low, spec)}–{_num(high, spec)})"


def _pm(est: Any, spec: str = ".3f") -> str:
    """An Estimate over seeds as ``mean ± half-width``."""
    if not isinstance(est, dict) or est.get("mean") is None:
        return "–"
    if est.get("n", 1) < 2 or est.get("low") is None:
        return _num(est["mean"], spec)
    return f"{_num(est['mean'], spec)} ± {_num((est['high'] - est['low']) / 2, spec)}"


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _find(rows: list[dict], **key: Any) -> dict:
    return next((r for r in rows if all(r.get(k) == v for k, v in key.items())), {})


def tables(runs: dict[str, dict]) -> str:
    out = []
    body = []
    for name, res in runs.items():
        ev = res["evaluation_tables"]
        mode = ev[EFFECTS][0]["mode"] if ev.get(EFFECTS) else "reference"
        for row in ev.get(EFFECTS, []):
            if row["mode"] != mode:
                continue
            key = {"layer": row["layer"], "method": row["method"], "mode": mode}
            null, syn = _find(ev.get(NULL, []), **key), _find(ev.get(SYNERGY, []), **key)
            body.append(
                [
                    name,
                    str(row["layer"]),
                    row["method"],
                    _ci(null.get("percentile_rms"), ".1f"),
                    _ci(null.get("percentile_rms_phi"), ".1f"),
                    _num(null.get("median_percentile_rms"), ".1f"),
                    _num(null.get("above_p95_rms"), ".0%"),
                    f"{_ci(row.get('rms'), '.4f')} ({_num(row.get('ceiling_rms'), '.3f')})",
                    _ci(row.get("rms_phi"), ".4f"),
                    _ci(null.get("percentile_dloss"), ".1f"),
                    f"{_ci(syn.get('nonadditivity'))} ({_num(syn.get('percentile_nonadditivity'), '.0f')})",
                    _ci(syn.get("nonadditivity_phi")),
                ]
            )
    out.append(
        _table(
            [
                "run",
                "layer",
                "method",
                "percentile among random sets, RMS Δlogit",
                "the same over (φ resample, query)",
                "median",
                "above p95",
                "normalised RMS Δlogit (whole layer)",
                "the same over (φ resample, query)",
                "percentile, Δ loss",
                "non-additivity (percentile among random sets)",
                "non-additivity over (φ resample, query)",
            ],
            body,
        )
    )
    body = []
    for name, res in runs.items():
        for title, rows in res["evaluation_tables"].items():
            if title.startswith("φ validity"):
                for r in rows:
                    body.append(
                        [
                            name, str(r["layer"]), str(r["phi"]), _num(r.get("spearman"), ".2f"),
                            _num(r.get("spearman_top"), ".2f"), _num(r.get("spearman_uniform"), ".2f"),
                            _num(r.get("sign_agreement"), ".0%"), str(r.get("pairs")), str(r.get("inputs")),
                        ]
                    )  # fmt: skip
    out.append(
        _table(
            [
                "run",
                "layer",
                "φ",
                "Spearman with full-model Δ_ij",
                "top-|φ| half",
                "uniform half",
                "sign agreement",
                "pairs",
                "inputs",
            ],
            body,
        )
    )
    body = [
        [
            name, str(r["layer"]), r["method"], f"{r['ari_mean']:.2f} ({r['ari_min']:.2f}–{r['ari_max']:.2f})",
            f"{r['ari_full_mean']:.2f}", f"{r['consensus_groups']} ({r['consensus_neurons']})",
        ]
        for name, res in runs.items()
        for r in res["evaluation_tables"].get(STABILITY, [])
    ]  # fmt: skip
    out.append(
        _table(
            [
                "run",
                "layer",
                "method",
                "ARI between φ resamples (range)",
                "ARI against the full-data partition",
                "consensus groups (neurons)",
            ],
            body,
        )
    )
    body = []
    for name, res in runs.items():
        ridge = res["table_ridge"]
        methods = list(dict.fromkeys(r["method"] for r in ridge))
        for method in methods:
            cells = [name, method]
            for pos in ("mean", "query"):
                r = _find(ridge, method=method, position=pos)
                cells += [_pm(r.get("ridge_r2")), _ci(r.get("ridge_r2_phi")), _pm(r.get("ridge_r2_ood"))]
            body.append(cells)
    out.append(
        _table(
            [
                "run",
                "method",
                "ridge R², in-domain CV (mean over tokens)",
                "the same over (φ resample, query)",
                "ridge R², OOD (mean over tokens)",
                "ridge R², in-domain CV (query tokens)",
                "the same over (φ resample, query)",
                "ridge R², OOD (query tokens)",
            ],
            body,
        )
    )
    body = [
        [
            name, r["method"], _pm(r.get("ood_drop"), ".4f"), _ci(r.get("ood_drop_phi"), ".4f"),
            _pm(r.get("alignment_r2")), _ci(r.get("alignment_r2_phi")),
        ]
        for name, res in runs.items()
        for r in res["table_extrinsic"]
    ]  # fmt: skip
    out.append(
        _table(
            [
                "run",
                "method",
                "OOD drop",
                "the same over (φ resample, query)",
                "alignment R² (in-domain CV)",
                "the same over (φ resample, query)",
            ],
            body,
        )
    )
    return "\n\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders, each holding results.json")
    args = parser.parse_args(argv)
    runs = {}
    for folder in args.runs:
        path = folder / "results.json"
        if not path.is_file():
            print(
                f"error: {path} does not exist; expected the output folder of a finished hedonic run",
                file=sys.stderr,
            )
            return 2
        try:
            runs[folder.name] = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            print(
                f"error: {path} is not valid JSON ({exc}); expected a hedonic run's results.json",
                file=sys.stderr,
            )
            return 2
    sys.stdout.write(tables(runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
