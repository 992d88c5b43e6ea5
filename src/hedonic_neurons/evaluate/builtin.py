"""The built-in evaluations: ``effects``, ``null`` and ``synergy`` (see :mod:`.base`).

* ``effects``: per method, layer and ablation mode, the mean over the method's evaluated
  coalitions (and seeds) of the per-query Δ task loss and normalised RMS Δlogit
  (:mod:`.measures`), raw and as a fraction of the whole-layer ablation; the Pearson / Spearman
  correlation of output and target before and after (nDCG@10 too for RM); the paired difference
  from the ``random`` baseline on the same queries; and the minimal detectable difference at
  α = 0.05 and power 0.8 given the per-query standard deviation of that difference.
* ``null``: each coalition's mid-rank percentile among the random size-matched sets of its size
  bin, measured on the shared subsample (:mod:`.null`); per method the mean percentile.
* ``synergy``: non-additivity of each coalition, E|δ_S − Σ_{i∈S} δ_i| / E|δ_S| with δ the change
  of the output when the set (or neuron i alone) is ablated, and its signed counterpart
  E[δ_S − Σ δ_i] / E|δ_S| (for a pair this numerator is the pairwise second difference that PAS
  averages, so > 0 means complements in PAS's convention); against the same for the random sets.
  It warns when single-neuron effects explain more than 95% of joint effects
  (1 − Σ(δ_S − Σδ_i)² / Σ δ_S² over every evaluated coalition of the layer).

Every interval is a percentile bootstrap over queries (resampling queries, not pairs); one
resampling matrix per layer is shared by every method, so differences between methods are paired.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hedonic_neurons.evaluate.base import EVALUATIONS, Evaluation, LayerContext
from hedonic_neurons.evaluate.measures import denoise
from hedonic_neurons.evaluate.null import mid_rank_percentile
from hedonic_neurons.evaluate.stats import (
    bootstrap_weights,
    interval_of,
    minimal_detectable_difference,
    weighted_means,
)

MEASURES = {"rms": "normalised RMS Δlogit", "dloss": "Δ task loss"}


def _nanmean(x: np.ndarray, axis: Any = None) -> Any:
    with np.errstate(invalid="ignore"), np.testing.suppress_warnings() as sup:
        sup.filter(RuntimeWarning)
        return np.nanmean(x, axis=axis)


def method_vector(ctx: LayerContext, mode: str, method: str, per_coalition: np.ndarray) -> np.ndarray | None:
    """(Q,) per-query effect of a method: mean over seeds of the mean over its coalitions."""
    per_seed = [
        _nanmean(per_coalition[rows], axis=0)
        for seed in ctx.seeds
        if (rows := ctx.rows_of(mode, seed, method))
    ]
    return _nanmean(np.stack(per_seed), axis=0) if per_seed else None


def _all_rows(ctx: LayerContext, mode: str, method: str) -> list[int]:
    return [r for seed in ctx.seeds for r in ctx.rows_of(mode, seed, method)]


def _base_row(ctx: LayerContext, mode: str, method: str) -> dict[str, Any]:
    rows = _all_rows(ctx, mode, method)
    sizes = [len(ctx.outputs[mode].coalitions[r]) for r in rows]
    return {
        "layer": ctx.layer,
        "method": method,
        "mode": mode,
        "coalitions": len(rows),
        "mean_size": float(np.mean(sizes)) if sizes else float("nan"),
        "skipped": int(sum(ctx.skipped.get((s, method), 0) for s in ctx.seeds)),
    }


@EVALUATIONS.register("effects")
class Effects(Evaluation):
    title = "Ablation effects"

    def evaluate(self, ctx: LayerContext) -> list[dict[str, Any]]:
        from hedonic_neurons.data.metrics import ndcg_at_10, scores_by_query
        from hedonic_neurons.evaluate.measures import correlations

        cfg = ctx.config
        weights = bootstrap_weights(ctx.n_queries, cfg.bootstrap, seed=1000 + ctx.layer)
        out_rows = []
        for mode in ctx.modes:
            eff, out = ctx.effects(mode), ctx.outputs[mode]
            before = correlations(out.base, ctx.y)
            ndcg = (
                (lambda o: ndcg_at_10(scores_by_query(ctx.pairs, o.tolist()), ctx.qrels))
                if ctx.task == "rm"
                else None
            )
            random_vec = {
                m: method_vector(ctx, mode, "random", eff.coal[m]) if "random" in ctx.methods else None
                for m in MEASURES
            }
            for method in ctx.methods:
                row = _base_row(ctx, mode, method)
                rows = _all_rows(ctx, mode, method)
                row["pearson_before"], row["spearman_before"] = before["pearson"], before["spearman"]
                if ndcg is not None:
                    row["ndcg_before"] = ndcg(out.base)
                if not rows:
                    out_rows.append(row)
                    continue
                for m in MEASURES:
                    vec = method_vector(ctx, mode, method, eff.coal[m])
                    boots = weighted_means(vec, weights)
                    ceil = eff.ceiling[m]
                    row[m] = interval_of(boots, _nanmean(vec))
                    with np.errstate(invalid="ignore", divide="ignore"):  # a ceiling of 0: NaN
                        row[f"{m}_fraction"] = interval_of(
                            boots / weighted_means(ceil, weights), np.float64(_nanmean(vec)) / _nanmean(ceil)
                        )
                    row[f"ceiling_{m}"] = float(_nanmean(ceil))
                    diff = vec
                    if random_vec[m] is not None and method != "random":
                        diff = vec - random_vec[m]
                        row[f"{m}_vs_random"] = interval_of(weighted_means(diff, weights), _nanmean(diff))
                    valid = diff[np.isfinite(diff)]
                    sd = float(np.std(valid, ddof=1)) if valid.size > 1 else float("nan")
                    row[f"sd_{m}"] = sd
                    row[f"mdd_{m}"] = minimal_detectable_difference(sd, int(valid.size))
                after = [correlations(out.ablated[r], ctx.y) for r in rows]
                row["pearson_after"] = float(_nanmean([a["pearson"] for a in after]))
                row["spearman_after"] = float(_nanmean([a["spearman"] for a in after]))
                if ndcg is not None:
                    row["ndcg_after"] = float(np.mean([ndcg(out.ablated[r]) for r in rows]))
                out_rows.append(row)
        return out_rows

    def summary(self, rows: list[dict[str, Any]]) -> list[str]:
        out = []
        for layer in sorted({r["layer"] for r in rows}):
            row = next((r for r in rows if r["layer"] == layer and "mdd_rms" in r), None)
            if row is None or not np.isfinite(_f(row["mdd_rms"])):
                continue
            against = "random" if "rms_vs_random" in row else "zero"
            out.append(
                f"Layer {layer}: the smallest difference in normalised RMS Δlogit from {against} that the "
                f"test queries can detect (α = 0.05, power 0.8) is {_f(row['mdd_rms']):.3g} "
                f"(per-query SD {_f(row['sd_rms']):.3g}; {row['method']})."
            )
        return out


def _ordinal(x: float) -> str:
    k = round(x)
    suffix = "th" if 10 <= k % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    return f"{k}{suffix}"


def _n(count: int, one: str, many: str | None = None) -> str:
    return f"{count} {one if count == 1 else (many or one + 's')}"


def _ci(low: float, high: float, spec: str) -> str:
    if not (np.isfinite(low) and np.isfinite(high)):
        return "no interval: fewer than 2 queries"
    return f"95% CI {low:{spec}}–{high:{spec}}"


def _f(x: Any) -> float:
    """A row value as a float (rows read back from JSON have None where a value was NaN)."""
    return float("nan") if x is None else float(x)


def coalition_percentiles(
    ctx: LayerContext, mode: str, measure: str = "rms", *, n_boot: int = 0, seed: int = 0
) -> tuple[dict[tuple[int, str], np.ndarray], dict[tuple[int, str], np.ndarray]]:
    """Each coalition's mid-rank percentile among the random sets of its size bin, on the shared
    subsample: ({(seed, method): (k,) percentiles}, {(seed, method): (B, k) bootstrap replicates}
    (empty without ``n_boot``))."""
    eff, out = ctx.effects(mode), ctx.outputs[mode]
    coal_pt = _nanmean(eff.coal_sub[measure], axis=1)
    null_pt = _nanmean(eff.null[measure], axis=1)
    if n_boot:
        w = bootstrap_weights(ctx.n_sub_queries, n_boot, seed=seed)
        coal_b, null_b = weighted_means(eff.coal_sub[measure], w), weighted_means(eff.null[measure], w)
    points, boots = {}, {}
    for key in ctx.chosen:
        rows = ctx.rows_of(mode, *key)
        pts, bs = [], []
        for r in rows:
            in_bin = out.null_bins == ctx.bin_of(len(out.coalitions[r]))
            pts.append(float(mid_rank_percentile(coal_pt[r], null_pt[in_bin])))
            if n_boot:
                bs.append(mid_rank_percentile(coal_b[:, r], null_b[:, in_bin]))
        points[key] = np.array(pts)
        if n_boot:
            boots[key] = np.stack(bs, 1) if bs else np.zeros((n_boot, 0))
    return points, boots


@EVALUATIONS.register("null")
class Null(Evaluation):
    title = "Against random size-matched sets"

    def evaluate(self, ctx: LayerContext) -> list[dict[str, Any]]:
        cfg = ctx.config
        out_rows = []
        for mode in ctx.modes:
            out = ctx.outputs[mode]
            per = {
                m: coalition_percentiles(ctx, mode, m, n_boot=cfg.bootstrap, seed=2000 + ctx.layer)
                for m in MEASURES
            }
            for method in ctx.methods:
                row = _base_row(ctx, mode, method)
                row.update(
                    null_sets=len(out.null_sets),
                    null_bins=len(set(out.null_bins.tolist())),
                    null_pairs=int(out.sub.size),
                    null_queries=int(ctx.n_sub_queries),
                )
                keys = [(s, method) for s in ctx.seeds if (s, method) in ctx.chosen]
                for m in MEASURES:
                    pts = np.concatenate([per[m][0][k] for k in keys]) if keys else np.zeros(0)
                    if pts.size == 0:
                        continue
                    boots = np.concatenate([per[m][1][k] for k in keys], axis=1)
                    row[f"percentile_{m}"] = interval_of(_nanmean(boots, axis=1), float(pts.mean()))
                    row[f"median_percentile_{m}"] = float(np.median(pts))
                    row[f"above_p95_{m}"] = float((pts > 95).mean())
                out_rows.append(row)
        return out_rows

    def summary(self, rows: list[dict[str, Any]]) -> list[str]:
        out = []
        first_mode = rows[0]["mode"] if rows else None
        for r in rows:
            if r["mode"] != first_mode or "percentile_rms" not in r:
                continue
            p = {k: _f(v) for k, v in r["percentile_rms"].items()}
            phi = r.get("percentile_rms_phi")  # φ-data resampling: query and φ-data variance
            over_phi = (
                f"; re-solved on {phi['n_resamples']} φ resamples: {_f(phi['mean']):.0f}, "
                f"{_ci(_f(phi['low']), _f(phi['high']), '.0f')} over resamples and queries"
                if phi
                else ""
            )
            out.append(
                f"Layer {r['layer']}, {r['method']}: its evaluated coalitions (n = {r['coalitions']}) sit "
                f"on average at the {_ordinal(p['mean'])} percentile "
                f"({_ci(p['low'], p['high'], '.0f')}{over_phi}) of random "
                f"size-matched sets by normalised RMS Δlogit ({r['mode']} ablation; {r['null_sets']} random "
                f"sets in {_n(r['null_bins'], 'size bin')}, on {_n(r['null_pairs'], 'test pair')} of "
                f"{_n(r['null_queries'], 'query', 'queries')})."
            )
        return out


def _group_sum(values: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    out = np.zeros((values.shape[0], n_groups))
    for g in range(n_groups):
        out[:, g] = values[:, groups == g].sum(1)
    return out


def additivity_terms(
    joint: np.ndarray, base: np.ndarray, singles_of: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """(δ_S, δ_S − Σ_i δ_i) per set and pair: ``joint`` (K, S) outputs with each set ablated,
    ``base`` (S,) unablated, ``singles_of[k]`` (|S_k|, S) outputs with each member alone ablated."""
    d_joint = denoise(base, joint) - base[None, :]
    d_sum = (
        np.stack([(denoise(base, s) - base[None, :]).sum(0) for s in singles_of])
        if singles_of
        else d_joint * 0
    )
    return d_joint, d_joint - d_sum


def non_additivity(
    d_joint: np.ndarray, d_rest: np.ndarray, floor: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """(E|δ_S − Σδ_i| / E|δ_S|, E[δ_S − Σδ_i] / E|δ_S|) per set; NaN where E|δ_S| <= ``floor``
    (a set whose ablation changes nothing has no defined ratio)."""
    den = np.abs(d_joint).mean(-1)
    den = np.where(den > floor, den, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.abs(d_rest).mean(-1) / den, d_rest.mean(-1) / den


@EVALUATIONS.register("synergy")
class Synergy(Evaluation):
    title = "Non-additivity of joint ablation"

    def evaluate(self, ctx: LayerContext) -> list[dict[str, Any]]:
        mode = ctx.modes[0]
        out = ctx.outputs[mode]
        if not out.singles:
            return []
        from hedonic_neurons.evaluate.measures import query_index

        pos = {i: k for k, i in enumerate(out.singles)}
        base = out.base[out.syn]
        coal_joint, coal_rest = additivity_terms(
            out.ablated[:, out.syn], base, [out.single[[pos[i] for i in c]] for c in out.coalitions]
        )
        null_joint, null_rest = additivity_terms(
            out.null[:, np.searchsorted(out.sub, out.syn)],
            base,
            [out.single[[pos[i] for i in s]] for s in out.null_sets],
        )
        floor = 0.0  # denoised: a set that changes nothing has δ_S = 0 exactly
        null_na, _ = non_additivity(null_joint, null_rest, floor)
        g, names = query_index([ctx.pairs[int(i)].qid for i in out.syn])
        q = len(names)
        weights = bootstrap_weights(q, ctx.config.bootstrap, seed=3000 + ctx.layer)
        num_b = weights @ _group_sum(np.abs(coal_rest), g, q).T  # (B, C)
        den_b = weights @ _group_sum(np.abs(coal_joint), g, q).T
        sig_b = weights @ _group_sum(coal_rest, g, q).T
        na, inter = non_additivity(coal_joint, coal_rest, floor)
        everyone = sorted({r for m in ctx.methods for r in _all_rows(ctx, mode, m)})
        layer_explained = _explained(coal_joint[everyone], coal_rest[everyone])
        out_rows = []
        for method in ctx.methods:
            row = _base_row(ctx, mode, method)
            rows = _all_rows(ctx, mode, method)
            if not rows:
                out_rows.append(row)
                continue
            ok = [r for r in rows if np.isfinite(na[r])]  # sets whose ablation changes something
            row["changed"] = len(ok)
            if ok:
                with np.errstate(invalid="ignore", divide="ignore"):
                    row["nonadditivity"] = interval_of(
                        _nanmean(num_b[:, ok] / den_b[:, ok], axis=1), float(np.mean(na[ok]))
                    )
                    row["interaction"] = interval_of(
                        _nanmean(sig_b[:, ok] / den_b[:, ok], axis=1), float(np.mean(inter[ok]))
                    )
            bins = [ctx.bin_of(len(out.coalitions[r])) for r in rows]
            in_bins = np.isin(out.null_bins, bins)
            row["null_nonadditivity"] = (
                float(np.nanmedian(null_na[in_bins])) if in_bins.any() else float("nan")
            )
            pct = [
                float(mid_rank_percentile(na[r], null_na[(out.null_bins == b) & np.isfinite(null_na)]))
                for r, b in zip(rows, bins)
                if np.isfinite(na[r])
            ]
            row["percentile_nonadditivity"] = float(np.mean(pct)) if pct else float("nan")
            row["first_order_explained"] = _explained(coal_joint[rows], coal_rest[rows])
            row["layer_first_order_explained"] = layer_explained
            out_rows.append(row)
        return out_rows

    def summary(self, rows: list[dict[str, Any]]) -> list[str]:
        out = []
        for layer in sorted({r["layer"] for r in rows}):
            here = [r for r in rows if r["layer"] == layer and "nonadditivity" in r]
            for r in here:
                na = {k: _f(v) for k, v in r["nonadditivity"].items()}
                null = _f(r["null_nonadditivity"])
                versus = (
                    f"random size-matched sets: {null:.0%}, percentile {_f(r['percentile_nonadditivity']):.0f}"
                    if np.isfinite(null)
                    else "no random size-matched set changed the output, so there is no null to compare with"
                )
                out.append(
                    f"Layer {layer}, {r['method']}: joint ablation departs from the sum of single-neuron "
                    f"effects by {na['mean']:.0%} of the joint effect "
                    f"({_ci(na['low'], na['high'], '.0%')}; {versus})."
                )
            explained = _f(here[0]["layer_first_order_explained"]) if here else float("nan")
            if np.isfinite(explained) and explained > 0.95:
                out.append(
                    f"Warning: at layer {layer} single-neuron effects explain {explained:.1%} of joint "
                    "ablation effects (more than 95%): ablation is nearly additive there, so coalition "
                    "effects are close to sums of neuron effects and say little about synergy."
                )
        return out


def _explained(d_joint: np.ndarray, d_rest: np.ndarray) -> float:
    """1 − Σ(δ_S − Σδ_i)² / Σ δ_S²: the share of joint effects the single-neuron sum explains."""
    den = float((d_joint**2).sum())
    return 1.0 - float((d_rest**2).sum()) / den if den > 0 else float("nan")
