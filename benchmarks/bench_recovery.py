"""Recovery of planted coalitions (issue 14): does the pipeline find synergy that is known to be there?

For each model, ``hedonic plant`` puts AND groups (complements; half of them with co-active
members, half with members that read independent features) and OR groups (substitutes) at one
layer; then, on held-out demo inputs, this benchmark collects every φ the code offers

- OCA (pooling ``tokens``, the default, and ``last``, the readout token),
- PAS ``exact`` with the ``local`` readout, PAS ``taylor`` (local; the only readout it has),
- PAS with the ``next-block`` readout (the model above the layer, on the residual at the readout
  position): ``taylor`` for all pairs, ``exact`` on every pair of planted neurons with standard
  errors (``--next-block-inputs`` inputs; every other entry 0),
- PAS ``exact`` with the ``full`` readout: every pair of planted neurons by batched ablation
  (under reference ablation every other neuron equals its reference, so its φ is exactly 0;
  ``tests/test_plant.py`` checks that through ``hedonic collect --readout full``), input by
  input, so that it has standard errors (sd / √N over the inputs),

and partitions each with exact Top Covering and PAC-Top-Cover (k = 1, 2, 4; PAC also with
φ-aware sampling at k = 2), a φ with standard errors also with the thresholded game (exact Top
Covering with ``min_z`` = 3 and 6 at every k: only φ_ij > min_z · se_ij is a partner), and with
the baselines (random size-matched, spherical k-means on the
input rows, hierarchical on activation profiles, Louvain communities of positive φ). Scored:

- per φ: mean φ within AND groups and within OR groups (A4 sign: AND > 0, OR < 0), the fraction
  of pairs with the expected sign, and how the planted AND pairs rank among all pairs:
  precision at K = number of AND pairs (= recall at K), and precision / recall of "φ > 0";
- per partition: ARI against the planted AND groups over their neurons, and over all neurons
  (every other neuron a singleton), AND groups recovered exactly (co-active / independent), OR
  groups kept whole in one coalition (a game that sees substitutes should not), largest coalition.

Results are cached per model in ``--work`` (planted checkpoint, φ files, one JSON); every run
rewrites ``docs/recovery.md`` and ``docs/recovery.png`` from all cached model results, quoting
the commands that made them::

    python benchmarks/bench_recovery.py --model minilm --layer 3
    python benchmarks/bench_recovery.py --model smollm2 --layer 10 --and-groups 4 --or-groups 2 \\
        --max-size 6 --calibration 128 --phi-inputs 32 --full-inputs 8
    python benchmarks/bench_recovery.py --render-only

``--no-docs`` measures (and caches) without rewriting the docs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
RECOVERED_ARI = 0.9


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------- phi


def held_out_pairs(data: str, seed: int, start: int, count: int) -> list[Any]:
    """Demo pairs planting never saw: it shuffles with its seed and uses the first
    calibration + verify ones; these start further on."""
    from hedonic_neurons.data import load_pairs

    pairs = load_pairs(data)
    random.Random(seed).shuffle(pairs)
    return pairs[start : start + count]


def collect_phis(
    nm: Any, truth: dict[str, Any], args: argparse.Namespace, work: Path
) -> dict[str, dict[str, Any]]:
    """Every φ of the planted layer: name -> {"phi", "metric", "readout", "mode", "seconds"}."""
    from hedonic_neurons.artifacts import load_phi
    from hedonic_neurons.models.plant import pair_deltas
    from hedonic_neurons.synergy.collect import CollectSettings, collect, phi_path

    layer = truth["layer"]
    pairs = held_out_pairs(args.data, args.seed, args.calibration + 1000, args.phi_inputs)
    specs = {
        "OCA tokens": ("oca", "-", "-", CollectSettings(metric="oca", pooling="tokens", batch_size=16)),
        "OCA last": ("oca", "-", "-", CollectSettings(metric="oca", pooling="last", batch_size=16)),
        "PAS exact local": (
            "pas",
            "local",
            "exact",
            CollectSettings(metric="pas", mode="exact", readout="local"),
        ),
        "PAS taylor local": (
            "pas",
            "local",
            "taylor",
            CollectSettings(metric="pas", mode="taylor", readout="local"),
        ),
        "PAS taylor next-block": (
            "pas",
            "next-block",
            "taylor",
            CollectSettings(metric="pas", mode="taylor", readout="next-block"),
        ),
    }
    nb_pairs = held_out_pairs(args.data, args.seed, args.calibration + 1000, args.next_block_inputs)
    out: dict[str, dict[str, Any]] = {}
    for name, (metric, readout, mode, settings) in specs.items():
        folder = work / "phi" / name.replace(" ", "-").lower()
        timing = folder / "seconds.json"
        inputs = nb_pairs if readout == "next-block" else pairs
        if not timing.is_file():  # (a finished φ is reused; its time is the first run's)
            t0 = time.time()
            _log(f"{name}: {len(inputs)} inputs")
            collect(nm, inputs, [layer], settings, folder, data=f"{args.data} (held out)", progress=False)
            timing.write_text(json.dumps({"seconds": time.time() - t0}))
        out[name] = {
            "phi": load_phi(phi_path(folder, layer)),
            "metric": metric,
            "readout": readout,
            "mode": mode,
            "inputs": len(inputs),
            "seconds": json.loads(timing.read_text())["seconds"],
        }
    # full readout: every pair of planted neurons (every other entry is exactly 0, with se 0),
    # input by input (Δ of each pair on each input), so φ is the mean and se = sd / √N
    cache = work / "phi" / "pas-exact-full-inputs.npz"
    planted = sorted(i for g in truth["groups"] for i in g["members"])
    full_pairs = held_out_pairs(args.data, args.seed, args.calibration + 1000, args.full_inputs)
    t0 = time.time()
    if cache.is_file():
        saved = np.load(cache)
        per_input, seconds = saved["per_input"], float(saved["seconds"])
    else:
        _log(f"PAS exact full: {len(planted)} planted neurons, {len(full_pairs)} inputs, one at a time")
        todo = [(i, j) for a, i in enumerate(planted) for j in planted[a + 1 :]]
        reference = nm.reference_mlp_weights(layer)
        per_input = np.stack(
            [pair_deltas(nm, [nm.encode([p.query], [p.passage])], layer, reference, todo) for p in full_pairs]
        )
        seconds = time.time() - t0
        np.savez(cache, per_input=per_input, seconds=seconds)
    values = per_input.mean(0)
    errors = per_input.std(0, ddof=1) / np.sqrt(len(per_input)) if len(per_input) > 1 else None
    phi = np.zeros((nm.n_neurons, nm.n_neurons), dtype=np.float32)
    se = np.zeros_like(phi) if errors is not None else None
    iu = [(i, j) for a, i in enumerate(planted) for j in planted[a + 1 :]]
    for k, (i, j) in enumerate(iu):
        phi[i, j] = phi[j, i] = values[k]
        if se is not None:
            se[i, j] = se[j, i] = errors[k]
    out["PAS exact full"] = {
        "phi": phi,
        "se": se,
        "metric": "pas",
        "readout": "full",
        "mode": "exact",
        "inputs": len(full_pairs),
        "seconds": seconds,
    }
    out["PAS exact next-block"] = next_block_phi(nm, layer, iu, nb_pairs, work)
    return out


def next_block_phi(
    nm: Any, layer: int, pairs: list[tuple[int, int]], inputs: list[Any], work: Path
) -> dict[str, Any]:
    """PAS exact with the ``next-block`` readout on the planted pairs (every other entry 0, as for
    the full readout), with standard errors; cached in ``work/phi``."""
    from hedonic_neurons.synergy.api import pas

    cache = work / "phi" / "pas-exact-next-block.npz"
    if cache.is_file():
        saved = np.load(cache)
        phi, se, seconds = saved["phi"], saved["se"], float(saved["seconds"])
    else:
        _log(f"PAS exact next-block: {len(pairs)} planted pairs, {len(inputs)} inputs")
        t0 = time.time()
        phi, se = pas(nm, inputs, layer, mode="exact", readout="next-block", pairs=pairs, with_se=True)
        phi, se = np.asarray(phi, dtype=np.float32), np.asarray(se, dtype=np.float32)
        seconds = time.time() - t0
        np.savez(cache, phi=phi, se=se, seconds=seconds)
    return {
        "phi": phi,
        "se": se,
        "metric": "pas",
        "readout": "next-block",
        "mode": "exact",
        "inputs": len(inputs),
        "seconds": seconds,
    }


# ------------------------------------------------------------------------------ scoring


def phi_scores(phi: np.ndarray, truth: dict[str, Any]) -> dict[str, Any]:
    """Sign and ranking of the planted pairs in one φ."""
    ands = [g for g in truth["groups"] if g["kind"] == "and"]
    ors = [g for g in truth["groups"] if g["kind"] == "or"]

    def within(groups: list[dict[str, Any]]) -> np.ndarray:
        vals = [phi[i, j] for g in groups for a, i in enumerate(g["members"]) for j in g["members"][a + 1 :]]
        return np.asarray(vals, dtype=np.float64)

    and_vals, or_vals = within(ands), within(ors)
    co_vals = within([g for g in ands if g["coactive"]])
    ind_vals = within([g for g in ands if not g["coactive"]])
    group_of = {i: g["index"] for g in truth["groups"] for i in g["members"]}
    planted = sorted(group_of)
    cross_vals = np.asarray(
        [phi[i, j] for a, i in enumerate(planted) for j in planted[a + 1 :] if group_of[i] != group_of[j]],
        dtype=np.float64,
    )
    others = np.setdiff1d(np.arange(len(phi)), planted)
    outside = phi[np.ix_(planted, others)].astype(np.float64)
    n = len(phi)
    iu = np.triu_indices(n, 1)
    flat = phi[iu].astype(np.float64)
    is_and = np.zeros((n, n), dtype=bool)
    for g in ands:
        m = np.asarray(g["members"])
        is_and[np.ix_(m, m)] = True
    truth_flat = is_and[iu]
    k = int(truth_flat.sum())
    top = np.argpartition(-flat, k)[:k]
    positive = flat > 0
    scale = float(np.abs(flat).max()) or 1.0
    top2 = []  # does each AND member's two best partners (by φ, positive) lie in its own group?
    for g in ands:
        for i in g["members"]:
            row = phi[i].astype(np.float64)
            row[i] = -np.inf
            best = np.argsort(-row, kind="stable")[:2]
            top2.append(bool(all(row[b] > 0 and b in g["members"] for b in best)))
    return {
        "and_mean": float(and_vals.mean()) if len(and_vals) else None,
        "or_mean": float(or_vals.mean()) if len(or_vals) else None,
        "and_fraction_positive": float((and_vals > 0).mean()) if len(and_vals) else None,
        "or_fraction_negative": float((or_vals < 0).mean()) if len(or_vals) else None,
        "scale": scale,
        "precision_at_k": float(truth_flat[top].mean()),
        "k": k,
        "positive_precision": float(truth_flat[positive].mean()) if positive.any() else 0.0,
        "positive_recall": float((truth_flat & positive).sum() / max(k, 1)),
        "top2_in_group": float(np.mean(top2)) if top2 else None,
        "and_coactive_mean": float(co_vals.mean()) if len(co_vals) else None,
        "and_independent_mean": float(ind_vals.mean()) if len(ind_vals) else None,
        "cross_mean": float(cross_vals.mean()) if len(cross_vals) else None,
        # a planted neuron's strongest unplanted partners (the 99th percentile over such pairs)
        "outside_p99": float(np.quantile(outside, 0.99)) if outside.size else None,
    }


def partition_scores(
    labels: np.ndarray, coalitions: list[list[int]], truth: dict[str, Any]
) -> dict[str, Any]:
    from sklearn.metrics import adjusted_rand_score

    ands = [g for g in truth["groups"] if g["kind"] == "and"]
    ors = [g for g in truth["groups"] if g["kind"] == "or"]
    neurons = [i for g in ands for i in g["members"]]
    true = [g["index"] for g in ands for _ in g["members"]]
    n = len(labels)
    all_true = np.arange(n) + 10_000  # every other neuron a singleton
    for g in ands:
        all_true[g["members"]] = g["index"]
    as_sets = {frozenset(c) for c in coalitions}
    exact = [g for g in ands if frozenset(g["members"]) in as_sets]
    return {
        "ari_planted": float(adjusted_rand_score(true, labels[neurons])),
        "ari_all": float(adjusted_rand_score(all_true, labels)),
        "exact_coactive": sum(1 for g in exact if g["coactive"]),
        "exact_independent": sum(1 for g in exact if not g["coactive"]),
        "n_coactive": sum(1 for g in ands if g["coactive"]),
        "n_independent": sum(1 for g in ands if not g["coactive"]),
        "or_whole": sum(1 for g in ors if len({int(labels[i]) for i in g["members"]}) == 1),
        "n_or": len(ors),
        "pieces": float(np.mean([len({int(labels[i]) for i in g["members"]}) for g in ands])),
        "largest": max(len(c) for c in coalitions),
        "coalitions_2plus": sum(1 for c in coalitions if len(c) >= 2),
    }


def partitions(
    phis: dict[str, dict[str, Any]], nm: Any, truth: dict[str, Any], args: argparse.Namespace
) -> list[dict]:
    from hedonic_neurons.baselines import Hierarchical, PhiCommunities, RandomPartition, SphericalKMeans
    from hedonic_neurons.baselines.inputs import activation_profiles, input_rows
    from hedonic_neurons.game import PACTopCover, TopCover

    rows: list[dict[str, Any]] = []

    def add(phi_name: str, method: str, k: Any, est: Any, seconds: float) -> None:
        rows.append(
            {
                "phi": phi_name,
                "method": method,
                "k": k,
                "seconds": seconds,
                **partition_scores(np.asarray(est.labels_), est.coalitions_, truth),
            }
        )

    for name, item in phis.items():
        phi = item["phi"]
        for k in args.ks:
            for method, make in (
                ("TopCover", lambda k=k: TopCover(k=k)),
                ("PACTopCover", lambda k=k: PACTopCover(k=k, random_state=args.seed)),
            ):
                t0 = time.time()
                est = make().fit(phi)
                add(name, method, k, est, time.time() - t0)
        if item.get("se") is not None:  # the thresholded game, on the φ that has standard errors
            for z in args.min_z:
                for k in args.ks:
                    t0 = time.time()
                    est = TopCover(k=k, min_z=z).fit(phi, item["se"])
                    add(name, f"TopCover min_z={z:g}", k, est, time.time() - t0)
        t0 = time.time()
        est = PACTopCover(k=2, sampling="phi", phi_power=4, random_state=args.seed).fit(phi)
        add(name, "PACTopCover phi^4", 2, est, time.time() - t0)
        t0 = time.time()
        est = PhiCommunities(random_state=args.seed).fit(phi)
        add(name, "phi-communities", "-", est, time.time() - t0)
    # model-based baselines: they see no φ
    layer = truth["layer"]
    sizes_of = TopCover(k=2).fit(phis["PAS exact full"]["phi"]).coalitions_
    t0 = time.time()
    add(
        "-",
        "random (size-matched)",
        "-",
        RandomPartition(sizes_of, random_state=args.seed).fit(),
        time.time() - t0,
    )
    t0 = time.time()
    add(
        "-",
        "k-means (input rows)",
        "-",
        SphericalKMeans(random_state=args.seed).fit(input_rows(nm.mlp_weights(layer))),
        time.time() - t0,
    )
    pairs = held_out_pairs(args.data, args.seed, args.calibration + 1000, args.phi_inputs)
    batches = [
        nm.encode([p.query for p in pairs[s : s + 16]], [p.passage for p in pairs[s : s + 16]])
        for s in range(0, len(pairs), 16)
    ]
    t0 = time.time()
    profiles = activation_profiles(nm.model, layer, batches)
    add(
        "-",
        "hierarchical (activations)",
        "-",
        Hierarchical(random_state=args.seed).fit(profiles),
        time.time() - t0,
    )
    return rows


# ------------------------------------------------------------------------------ one model


def run_model(args: argparse.Namespace, command: str) -> dict[str, Any]:
    import torch

    from hedonic_neurons.models import load_model
    from hedonic_neurons.models.plant import load_ground_truth, plant

    torch.manual_seed(args.seed)
    work = Path(args.work).expanduser() / f"{args.model}-layer{args.layer}"
    work.mkdir(parents=True, exist_ok=True)
    timing = work / "plant-seconds.json"
    if (work / "plant" / "ground_truth.json").is_file() and timing.is_file():
        truth = load_ground_truth(work / "plant")
        plant_seconds = json.loads(timing.read_text())["seconds"]
    else:
        _log(f"planting into {args.model} at layer {args.layer}")
        t0 = time.time()
        result = plant(
            args.model,
            work / "plant",
            layer=args.layer,
            and_groups=args.and_groups,
            or_groups=args.or_groups,
            min_size=args.min_size,
            max_size=args.max_size,
            calibration=args.calibration,
            verify=0,
            seed=args.seed,
        )
        truth = result.ground_truth
        plant_seconds = time.time() - t0
        timing.write_text(json.dumps({"seconds": plant_seconds}))
    nm = load_model(truth["model"], reference=truth["reference"], device="cpu")
    phis = collect_phis(nm, truth, args, work)
    phi_rows = []
    for name, item in phis.items():
        phi_rows.append(
            {
                "phi": name,
                "metric": item["metric"],
                "readout": item["readout"],
                "mode": item["mode"],
                "inputs": item["inputs"],
                "seconds": item["seconds"],
                **phi_scores(item["phi"], truth),
            }
        )
    _log("partitions")
    part_rows = partitions(phis, nm, truth, args)
    total = plant_seconds + sum(r["seconds"] for r in phi_rows) + sum(r["seconds"] for r in part_rows)
    result = {
        "model": args.model,
        "layer": truth["layer"],
        "command": command,
        "n_neurons": truth["n_neurons"],
        "groups": [
            {k: g[k] for k in ("index", "kind", "size", "coactive", "members", "reader", "decoder_r2")}
            for g in truth["groups"]
        ],
        "plant_seconds": plant_seconds,
        "total_seconds": total,
        "phi": phi_rows,
        "partitions": part_rows,
    }
    (work / "result.json").write_text(json.dumps(result, indent=2))
    return result


# ---------------------------------------------------------------------------------- render


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _sci(v: float | None) -> str:
    return "-" if v is None else f"{v:+.2e}"


def render(results: list[dict[str, Any]]) -> str:
    lines = [
        "# Recovery of planted coalitions",
        "",
        "Generated by `benchmarks/bench_recovery.py` (issue 14); do not edit by hand, except between",
        f"`{HAND_START}` and `{HAND_END}` (kept in its model's section when the file is rewritten).",
        "Each model's numbers come from the command quoted in its section (CPU, 2 shared cores).",
        "",
        "`hedonic plant` replaces neurons of one MLP layer with AND groups (complements: a",
        "thresholded reader at the next layer fires only when all members are active) and OR groups",
        "(substitutes: each member is redundant given the others), half of the AND groups with",
        "co-active members (they read one shared feature) and half with members that read",
        "independent features. Every φ is collected on held-out demo inputs; the reference for PAS",
        "ablation is the unplanted model. ARI over the planted AND neurons (`ARI planted`) and over",
        "all neurons with every unplanted neuron a singleton (`ARI all`); `exact` counts AND groups",
        "found exactly (co-active + independent); `OR whole` counts OR groups put in one coalition",
        "(substitutes should not be). A combination *recovers* the planted structure when",
        f"ARI planted >= {RECOVERED_ARI}.",
        "",
        "![ARI over the planted neurons](recovery.png)",
        "",
    ]
    for res in results:
        groups = res["groups"]
        ands = [g for g in groups if g["kind"] == "and"]
        ors = [g for g in groups if g["kind"] == "or"]
        lines += [
            f"## {res['model']}, layer {res['layer']} ({res['n_neurons']:,} neurons)",
            "",
            "```",
            res["command"],
            "```",
            "",
            f"Planted: {len(ands)} AND groups (sizes {', '.join(str(g['size']) for g in ands)}; "
            f"{sum(g['coactive'] for g in ands)} co-active), {len(ors)} OR groups (sizes "
            f"{', '.join(str(g['size']) for g in ors)}). Planting took {res['plant_seconds']:.0f} s; "
            f"planting, φ and partitions together {res['total_seconds'] / 60:.1f} min.",
            "",
            "### φ: sign and ranking of the planted pairs",
            "",
            "| φ | inputs | mean φ AND | mean φ OR | AND > 0 | OR < 0 | P@K (K = AND pairs) | precision of φ > 0 | recall of φ > 0 | top-2 in group | time (s) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in res["phi"]:
            lines.append(
                f"| {r['phi']} | {r['inputs']} | {_sci(r['and_mean'])} | {_sci(r['or_mean'])} | "
                f"{_fmt(r['and_fraction_positive'])} | {_fmt(r['or_fraction_negative'])} | "
                f"{_fmt(r['precision_at_k'])} | {_fmt(r['positive_precision'], 3)} | {_fmt(r['positive_recall'])} | "
                f"{_fmt(r['top2_in_group'])} | {r['seconds']:.0f} |"
            )
        lines += [
            "",
            "Mean φ by kind of pair: within co-active AND groups, within independent AND groups, within OR",
            "groups, between planted neurons of different groups, and the 99th percentile of φ between a",
            "planted and an unplanted neuron (a partner that competes with the planted ones):",
            "",
            "| φ | AND co-active | AND independent | OR | across groups | planted-unplanted p99 |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for r in res["phi"]:
            lines.append(
                f"| {r['phi']} | {_sci(r['and_coactive_mean'])} | {_sci(r['and_independent_mean'])} | "
                f"{_sci(r['or_mean'])} | {_sci(r['cross_mean'])} | {_sci(r['outside_p99'])} |"
            )
        lines += [
            "",
            "### Partitions",
            "",
            "| φ | method | k | ARI planted | ARI all | exact AND (co + ind) | pieces per AND group | OR whole | coalitions >= 2 | largest |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in res["partitions"]:
            lines.append(
                f"| {r['phi']} | {r['method']} | {r['k']} | {_fmt(r['ari_planted'])} | {_fmt(r['ari_all'])} | "
                f"{r['exact_coactive']} + {r['exact_independent']} of {r['n_coactive']} + {r['n_independent']} | "
                f"{r['pieces']:.1f} | {r['or_whole']} of {r['n_or']} | {r['coalitions_2plus']} | {r['largest']} |"
            )
        lines += ["", "### What is seen", ""]
        lines += [f"- {s}" for s in findings(res)]
        lines.append("")
    return "\n".join(lines)


def findings(res: dict[str, Any]) -> list[str]:
    """Plain statements, computed from the numbers."""
    out = []
    parts = res["partitions"]
    by_phi = {r["phi"]: r for r in res["phi"]}

    def name(r: dict[str, Any]) -> str:
        k = "" if r["k"] == "-" else f" (k = {r['k']})"
        return f"{r['method']}{k}"

    rec = [r for r in parts if r["ari_planted"] >= RECOVERED_ARI]
    if rec:
        out.append(
            "Recover the planted AND groups (ARI planted >= 0.9): "
            + "; ".join(f"{r['phi']} + {name(r)}: {r['ari_planted']:.2f}" for r in rec)
            + "."
        )
    else:
        out.append("No combination recovers the planted AND groups (ARI planted >= 0.9).")
    for key in [*by_phi, "-"]:
        rows = [r for r in parts if r["phi"] == key and r["ari_planted"] < RECOVERED_ARI]
        if not rows:
            continue
        best = max(rows, key=lambda r: r["ari_planted"])
        some = any(r["phi"] == key for r in rec)
        shown = (
            "The baselines that see no φ"
            if key == "-"
            else f"On {key}, {'the other' if some else 'all'} methods"
        )
        out.append(f"{shown} stay below 0.9 (best {name(best)}: ARI planted {best['ari_planted']:.2f}).")
    for key in (
        "PAS exact full",
        "PAS exact next-block",
        "PAS taylor next-block",
        "PAS exact local",
        "PAS taylor local",
        "OCA tokens",
        "OCA last",
    ):
        r = by_phi.get(key)
        if r is None:
            continue
        out.append(
            f"{key}: {100 * r['and_fraction_positive']:.0f}% of AND pairs have φ > 0 (mean {_sci(r['and_mean'])}), "
            f"{100 * r['or_fraction_negative']:.0f}% of OR pairs φ < 0 (mean {_sci(r['or_mean'])}); P@K "
            f"{r['precision_at_k']:.2f}; for {100 * r['top2_in_group']:.0f}% of AND members both best partners "
            "are in their own group."
        )
    full = by_phi.get("PAS exact full")
    tc2 = next(
        (r for r in parts if r["phi"] == "PAS exact full" and r["method"] == "TopCover" and r["k"] == 2), None
    )
    if full is not None and tc2 is not None and tc2["ari_planted"] < RECOVERED_ARI:
        out.append(
            f"PAS exact full ranks the planted pairs almost perfectly, yet exact Top Covering at k = 2 "
            f"splits each AND group into {tc2['pieces']:.1f} coalitions on average (ARI "
            f"{tc2['ari_planted']:.2f}): under the MFC utility a set that already holds every member's two "
            "best partners is preferred to the whole group (same utility, smaller coalition), and when "
            "a group's Δ has a consistent order (some members interact more strongly with every other) its "
            "strongest three members are such a set, close off first, and leave the rest to pair up "
            "among themselves. This is the game's answer on a correct φ, not an error of φ."
        )
    loc = by_phi.get("PAS exact local")
    if loc is not None:
        out.append(
            "The local readout (the head right after the planted layer) cannot see the AND readers, which "
            f"act one layer later, so its AND φ is noise ({100 * loc['and_fraction_positive']:.0f}% of AND "
            "pairs positive). The OR members also write along the logit gradient at the planted layer, "
            f"and their interaction through the head's norm is negative for {100 * loc['or_fraction_negative']:.0f}% "
            "of OR pairs: a substitute effect that the local readout does measure."
        )
    nb, full_r = by_phi.get("PAS exact next-block"), by_phi.get("PAS exact full")
    if nb is not None and full_r is not None:
        out.append(
            "The next-block readout (the model above the planted layer; the neurons ablated at the readout "
            "position only) contains the AND readers of the next layer: "
            f"{100 * nb['and_fraction_positive']:.0f}% of AND pairs positive, {100 * nb['or_fraction_negative']:.0f}% "
            f"of OR pairs negative, P@K {nb['precision_at_k']:.2f}, against {100 * full_r['and_fraction_positive']:.0f}%, "
            f"{100 * full_r['or_fraction_negative']:.0f}% and {full_r['precision_at_k']:.2f} for the full readout "
            f"(ablated at every position; {nb['inputs']} and {full_r['inputs']} inputs)."
        )
    for key in ("OCA tokens", "OCA last"):
        tc = next((r for r in parts if r["phi"] == key and r["method"] == "TopCover" and r["k"] == 2), None)
        r = by_phi.get(key)
        if tc is None or r is None:
            continue
        co, ind, cross, outside = (
            r["and_coactive_mean"] or 0.0,
            r["and_independent_mean"] or 0.0,
            r["cross_mean"] or 0.0,
            r["outside_p99"] or 0.0,
        )
        if cross > 0.5 * co:
            why = (
                "planted neurons correlate across groups almost as much as within (they all fire only at "
                "the readout token), so OCA cannot tell the groups apart"
            )
        elif ind < 0.25 * co:
            why = (
                "the members of independent groups are (nearly) uncorrelated, as planted, so OCA misses "
                "those groups; co-active members correlate"
                + (
                    ", but unplanted neurons correlate as strongly and take their places"
                    if outside >= co
                    else ""
                )
            )
        else:
            why = "co-active and independent groups look alike to OCA here"
        out.append(
            f"{key}: mean φ {_sci(r['and_coactive_mean'])} within co-active AND groups, "
            f"{_sci(r['and_independent_mean'])} within independent ones, {_sci(r['or_mean'])} within OR "
            f"groups, {_sci(r['cross_mean'])} across groups, planted-unplanted p99 {_sci(r['outside_p99'])}: "
            f"{why}. OCA is positive for substitutes as for complements (it sees correlation and "
            f"orthogonal outputs, not the sign of an interaction). Exact Top Covering at k = 2 finds "
            f"{tc['exact_coactive']} of {tc['n_coactive']} co-active and {tc['exact_independent']} of "
            f"{tc['n_independent']} independent AND groups exactly (largest coalition {tc['largest']}) and "
            f"keeps {tc['or_whole']} of {tc['n_or']} OR groups whole."
        )
    return out


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(7 * len(results), 6), squeeze=False)
    for ax, res in zip(axes[0], results):
        rows = [r for r in res["partitions"] if r["k"] in (2, "-")]
        labels = [f"{r['phi']} | {r['method']}" if r["phi"] != "-" else r["method"] for r in rows]
        vals = [r["ari_planted"] for r in rows]
        colors = ["tab:green" if v >= RECOVERED_ARI else "tab:gray" for v in vals]
        y = np.arange(len(rows))
        ax.barh(y, vals, color=colors)
        ax.set_yticks(y, labels, fontsize=7)
        ax.invert_yaxis()
        ax.axvline(RECOVERED_ARI, color="k", lw=0.8, ls="--")
        ax.set_xlim(min(0.0, min(vals) - 0.05), 1.0)
        ax.set_xlabel("ARI over the planted AND neurons (k = 2 where it applies)")
        ax.set_title(f"{res['model']}, layer {res['layer']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


HAND_START, HAND_END = "<!-- by hand -->", "<!-- /by hand -->"


def keep_hand_blocks(old: str, new: str) -> str:
    """``new`` with every block of ``old`` between HAND_START and HAND_END lines put back at the
    end of the ``## `` section it was in (matched by its heading; at the end if that is gone)."""
    lines, blocks, heading, inside = old.splitlines(), [], None, None
    for line in lines:
        if inside is not None:
            inside.append(line)
            if line.strip() == HAND_END:
                blocks.append((heading, "\n".join(inside)))
                inside = None
        elif line.strip() == HAND_START:
            inside = [line]
        elif line.startswith("## "):
            heading = line
    out = new.rstrip("\n").split("\n")
    for heading, block in blocks:
        at = len(out)
        if heading in out:
            start = out.index(heading)
            later = [i for i in range(start + 1, len(out)) if out[i].startswith("## ")]
            at = later[0] if later else len(out)
        out[at:at] = [*block.split("\n"), ""]
    return "\n".join(out).rstrip("\n") + new[len(new.rstrip("\n")) :]


def write_docs(work: Path) -> None:
    found = sorted(work.glob("*/result.json"))
    results = [json.loads(p.read_text()) for p in found]
    order = {"minilm": 0, "smollm2": 1}
    results.sort(key=lambda r: (order.get(r["model"], 9), r["model"], r["layer"]))
    if not results:
        raise SystemExit(f"no results under {work}; run a model first")
    DOCS.mkdir(exist_ok=True)
    plot(results, DOCS / "recovery.png")
    path = DOCS / "recovery.md"
    text = render(results) + "\n"
    (DOCS / "recovery.md").write_text(keep_hand_blocks(path.read_text(), text) if path.is_file() else text)
    _log(f"wrote {DOCS / 'recovery.md'} and {DOCS / 'recovery.png'}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--layer", type=int, default=3)
    parser.add_argument("--and-groups", type=int, default=8)
    parser.add_argument("--or-groups", type=int, default=4)
    parser.add_argument("--min-size", type=int, default=3)
    parser.add_argument("--max-size", type=int, default=8)
    parser.add_argument("--calibration", type=int, default=256)
    parser.add_argument("--phi-inputs", type=int, default=64, help="inputs for OCA and the local PAS")
    parser.add_argument("--full-inputs", type=int, default=16, help="inputs for PAS with the full readout")
    parser.add_argument(
        "--next-block-inputs", type=int, default=16, help="inputs for PAS with the next-block readout"
    )
    parser.add_argument("--ks", default="1,2,4")
    parser.add_argument(
        "--min-z", default="3,6", help="thresholds of the thresholded game, on the φ with standard errors"
    )
    parser.add_argument("--no-docs", action="store_true", help="measure and cache, but leave docs/ as it is")
    parser.add_argument("--data", default="demo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default=os.path.expanduser("~/.cache/hedonic-neurons/recovery"))
    parser.add_argument(
        "--render-only", action="store_true", help="only rewrite the docs from cached results"
    )
    args = parser.parse_args(argv)
    args.ks = [int(k) for k in args.ks.split(",")]
    args.min_z = [float(z) for z in args.min_z.split(",") if z.strip()]
    work = Path(args.work).expanduser()
    if not args.render_only:
        # the quoted command: what determines the numbers (--no-docs only decides where they go)
        shown = [a for a in (argv if argv is not None else sys.argv[1:]) if a and a != "--no-docs"]
        command = "python benchmarks/bench_recovery.py " + " ".join(shlex.quote(a) for a in shown)
        run_model(args, command.strip())
    if not args.no_docs:
        write_docs(work)


if __name__ == "__main__":
    main()
