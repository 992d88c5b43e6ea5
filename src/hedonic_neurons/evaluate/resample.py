"""Intervals that include φ-data variance: re-select and re-measure on φ-resampled partitions.

A hedonic partition is fitted to one φ, itself an estimate from a finite set of training pairs,
so an interval over test queries alone leaves out how much the partition (and with it every
figure computed from it) would change on other φ data. ``hedonic run`` with
``evaluate.phi_resamples = R`` (R >= 3) therefore

1. cuts the training pairs φ was estimated on into R disjoint seeded subsets
   (:func:`~hedonic_neurons.evaluate.stability.split_inputs`) and estimates φ of every metric on
   each;
2. re-solves every hedonic partition on each resampled φ with the same game settings;
3. per hedonic method and layer reports the partitions' agreement (:func:`stability_rows`:
   pairwise adjusted Rand index across resamples and against the full-data partition, and the
   groups of neurons co-assigned in at least 80% of the resamples);
4. for each resample selects coalitions with the evaluation's own rule
   (:func:`resample_selection`: the reference method's picks by the selection rule on that
   resample's φ fix the target sizes, every other hedonic method and the ``random`` baseline
   are size-matched to them), ablates them in one batched pass per layer and mode beside the
   main evaluation's outputs (:func:`resample_outputs`: same pairs, same null, plus random sets
   for any size bin the main null lacks), and runs every configured evaluation and the
   extrinsic figures on them (:func:`resample_context`), keeping the query-bootstrap
   replicates (:func:`~hedonic_neurons.evaluate.stats.keep_replicates`; the same query draws
   as the main evaluation's);
5. gives each hedonic row, for each of its interval fields, a ``<field>_phi`` interval
   (:func:`attach_phi_intervals`, :func:`~hedonic_neurons.evaluate.stats.mixture_interval`):
   replicate b takes a random resample's replicate b, so the interval holds the spread between
   partitions fitted on different φ data and the variance of the queries. Each resample's φ
   comes from 1/R of the data, so its partitions vary more than the full-data one would: the
   interval errs wide. The report's extrinsic, ridge and alignment tables get the same for
   their hedonic rows (:func:`table_phi_intervals`): the OOD drop and the cross-validated R²s
   re-scored on query-bootstrap samples (test queries for the drop, training queries for the
   R²s) for each resample's coalitions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from hedonic_neurons.errors import ConfigError

if TYPE_CHECKING:
    from hedonic_neurons.evaluate.base import LayerContext
    from hedonic_neurons.evaluate.passes import LayerOutputs
    from hedonic_neurons.models.neuron_model import NeuronModel

__all__ = [
    "CONSENSUS_THRESHOLD",
    "STABILITY_TABLE",
    "attach_phi_intervals",
    "resample_context",
    "resample_outputs",
    "resample_selection",
    "stability_rows",
    "stability_sentences",
    "strip_replicates",
    "table_phi_intervals",
]

CONSENSUS_THRESHOLD = 0.8
"""Consensus coalitions: neurons co-assigned in at least this fraction of the φ resamples."""

#: the title of the report's table of :func:`stability_rows`
STABILITY_TABLE = "Partition stability under φ resampling"


def resample_selection(
    partitions: Sequence[Mapping[str, Sequence[Sequence[int]]]],
    phis: Sequence[np.ndarray | None],
    *,
    reference_method: str,
    config: Any,
    layer: int,
    seed: int = 0,
) -> list[dict[str, list[list[int]]]]:
    """The coalitions evaluated for each φ resample, by the evaluation's selection rule.

    ``partitions[r][method]``: the coalitions of each hedonic method fitted on φ resample r
    (the reference method among them); ``phis[r]``: the φ the selection rule ranks cohesion by
    on resample r (the evaluation's φ metric estimated on that resample). For each resample the
    reference method's top ``config.top_k`` coalitions in ``config.size_band`` fix the target
    sizes and every other method is size-matched to them
    (:func:`hedonic_neurons.evaluate.layer.choose`, with ``seed`` as the evaluation seed).
    Returns ``[{method: coalitions}]``, one dict per resample.
    """
    from hedonic_neurons.evaluate.layer import choose

    if len(partitions) != len(phis):
        raise ConfigError(f"got {len(partitions)} resampled partitions but {len(phis)} φ matrices")
    out = []
    for by_method, phi in zip(partitions, phis):
        chosen, _, _ = choose({seed: dict(by_method)}, reference_method, phi, config, layer)
        out.append({method: chosen[(seed, method)] for method in by_method})
    return out


def resample_outputs(
    nm: NeuronModel,
    layer: int,
    test: Sequence[Any],
    main: LayerOutputs,
    coalitions: Sequence[Sequence[int]],
    *,
    bins: tuple[int, int],
    null_sets: int,
    seed: int,
    mode: str,
    reference: Any = None,
    means: Any = None,
    fills: Any = None,
    batch_size: int = 16,
    progress: Any = None,
) -> LayerOutputs:
    """The main evaluation's outputs (``main``, one ablation mode) extended to ``coalitions``.

    Coalitions ``main`` already holds keep their rows; the others are ablated on the test pairs
    in one batched pass (:func:`~hedonic_neurons.evaluate.passes.layer_outputs`), together with
    the single neurons of theirs the additivity check lacks (on ``main``'s ``syn`` pairs; only
    when ``main`` has single neurons) and ``null_sets`` random sets for each size bin
    (``bins``: lower end, bins per octave) the main null does not cover (on ``main``'s
    subsample; seeded by ``seed`` and ``layer``). Unablated and whole-layer outputs, the
    subsamples and the main null are ``main``'s, so every figure computed from the result is
    paired with the main evaluation's on the same pairs. ``progress``: a bar (``update(pairs)``)
    for the pass, as :func:`~hedonic_neurons.evaluate.passes.layer_outputs` takes it.
    """
    from hedonic_neurons.evaluate.null import random_sets, size_bin
    from hedonic_neurons.evaluate.passes import LayerOutputs, layer_outputs

    uniq = sorted({tuple(sorted(int(i) for i in c)) for c in coalitions})
    known = set(main.coalitions)
    new = [c for c in uniq if c not in known]
    have_singles = set(main.singles)
    singles = sorted({i for c in uniq for i in c} - have_singles) if main.singles else []
    covered = set(main.null_bins.tolist())
    by_bin: dict[int, list[int]] = {}
    for c in uniq:
        k = size_bin(len(c), *bins)
        if k not in covered:
            by_bin.setdefault(k, []).append(len(c))
    extra_sets, extra_bins = random_sets(
        by_bin, int(nm.n_neurons), null_sets, seed=seed * 7919 + layer + 104729
    )
    if main.singles:  # the extra null sets' neurons, for their non-additivity
        singles = sorted(set(singles) | ({i for st in extra_sets for i in st} - have_singles))
    if not (new or singles or extra_sets):
        got = None
    else:
        got = layer_outputs(
            nm, test, layer, new, sub=main.sub, null_sets=extra_sets, null_bins=extra_bins, singles=singles,
            syn=main.syn, mode=mode, reference=reference, means=means, fills=fills, batch_size=batch_size,
            progress=progress,
        )  # fmt: skip
    ablated = np.stack(
        [main.ablated[main.row_of(c)] if c in known else got.ablated[got.row_of(c)] for c in uniq]
    ) if uniq else np.zeros((0, main.base.size))  # fmt: skip
    all_singles = main.singles + singles
    order = np.argsort(all_singles, kind="stable")
    single = np.concatenate([main.single, got.single]) if singles else main.single
    return LayerOutputs(
        mode=mode,
        coalitions=uniq,
        base=main.base,
        ablated=ablated,
        ceiling=main.ceiling,
        sub=main.sub,
        syn=main.syn,
        null_sets=main.null_sets + (got.null_sets if got is not None else []),
        null_bins=np.concatenate([main.null_bins, extra_bins]).astype(np.int64),
        null=np.concatenate([main.null, got.null]) if got is not None and extra_sets else main.null,
        singles=[int(all_singles[i]) for i in order],
        single=single[order] if len(all_singles) else single,
        seconds=dict(got.seconds) if got is not None else {"null": 0.0, "rest": 0.0},
        rows=dict(got.rows) if got is not None else {"null": 0, "rest": 0},
    )


def resample_context(
    ctx: LayerContext,
    chosen: Mapping[str, Sequence[Sequence[int]]],
    outputs: Mapping[str, LayerOutputs],
    phi: np.ndarray | None,
    reference_method: str,
) -> LayerContext:
    """The main evaluation's context (``ctx``) with one φ resample's coalitions: ``chosen``
    ``{method: coalitions}`` (the selection rule's picks on that resample, the reference
    method's sizes as targets), ``outputs`` from :func:`resample_outputs` per mode, ``phi`` the
    resample's φ. Test pairs, targets, query index and subsample stay the main evaluation's."""
    import dataclasses

    seed = ctx.seeds[0]
    targets = [len(c) for c in chosen.get(reference_method, [])]
    return dataclasses.replace(
        ctx,
        methods=list(chosen),
        seeds=[seed],
        chosen={(seed, m): [list(c) for c in cs] for m, cs in chosen.items()},
        skipped={(seed, m): max(0, len(targets) - len(cs)) for m, cs in chosen.items()},
        targets={seed: targets},
        phi=phi,
        outputs=dict(outputs),
        notes=[],
        timing={},
    )


def strip_replicates(
    rows: list[dict[str, Any]],
) -> dict[tuple[Any, ...], dict[str, tuple[np.ndarray, float]]]:
    """Take the bootstrap replicates out of evaluation rows computed inside
    :func:`~hedonic_neurons.evaluate.stats.keep_replicates`: ``{(layer, method, mode): {field:
    (replicates, point)}}``; the rows are left as they would be without it."""
    found: dict[tuple[Any, ...], dict[str, tuple[np.ndarray, float]]] = {}
    for row in rows:
        key = (row.get("layer"), row.get("method"), row.get("mode"))
        for field, value in row.items():
            if isinstance(value, dict) and "replicates" in value:
                found.setdefault(key, {})[field] = (np.asarray(value.pop("replicates")), float(value["mean"]))
    return found


def attach_phi_intervals(
    rows: list[dict[str, Any]],
    resampled: Sequence[Mapping[tuple[Any, ...], Mapping[str, tuple[np.ndarray, float]]]],
    methods: Sequence[str],
    *,
    seed: int = 0,
) -> None:
    """Give every row of ``methods`` (the hedonic ones) a ``<field>_phi`` interval for each
    interval field the φ resamples measured (``resampled[r]``: :func:`strip_replicates` of
    resample r's rows): :func:`~hedonic_neurons.evaluate.stats.mixture_interval` of the
    resamples' query-bootstrap replicates, so it holds query and φ-data variance. Resamples
    without the field (no coalition in the size band on that φ) are left out; the interval says
    how many were kept (``n_resamples``)."""
    from hedonic_neurons.evaluate.stats import mixture_interval

    for row in rows:
        if row.get("method") not in methods:
            continue
        key = (row.get("layer"), row.get("method"), row.get("mode"))
        fields = dict.fromkeys(f for by in resampled for f in by.get(key, {}))
        for field in fields:
            got = [by[key][field] for by in resampled if field in by.get(key, {})]
            row[f"{field}_phi"] = mixture_interval([g[0] for g in got], [g[1] for g in got], seed=seed)


def table_phi_intervals(
    extrinsic: list[dict[str, Any]],
    ridge: list[dict[str, Any]],
    alignment: list[dict[str, Any]],
    layers: Sequence[Mapping[str, Any]],
    *,
    seed: int = 0,
) -> None:
    """``_phi`` intervals for the hedonic rows of the report's extrinsic, ridge and alignment
    tables (each figure there the mean over layers): ``ood_drop_phi`` and ``alignment_r2_phi``
    (all-token mean) on the extrinsic table, ``ridge_r2_phi`` / ``alignment_r2_phi`` at each
    row's read position. ``layers``: the ``phi_resampling`` entries, each with ``extrinsic``
    ``{method: [per resample {"<field>" or "<position>/<field>": {"point", "replicates"}}]}``.
    Per resample the replicates (the same query draws in every layer) and the point are
    averaged over the layers that have the figure, then combined by
    :func:`~hedonic_neurons.evaluate.stats.mixture_interval`."""
    from hedonic_neurons.evaluate.stats import mixture_interval

    def interval(method: str, key: str) -> dict[str, Any] | None:
        per: dict[int, list[Mapping[str, Any]]] = {}
        for entry in layers:
            for r, got in enumerate(entry.get("extrinsic", {}).get(method, [])):
                if key in got:
                    per.setdefault(r, []).append(got[key])
        if not per:
            return None
        reps = [
            np.mean([np.asarray(g["replicates"], dtype=np.float64) for g in per[r]], axis=0)
            for r in sorted(per)
        ]
        points = [
            float(np.mean([np.nan if g["point"] is None else g["point"] for g in per[r]]))
            for r in sorted(per)
        ]
        return mixture_interval(reps, points, seed=seed)

    methods = {m for entry in layers for m in entry.get("extrinsic", {})}
    for rows, field, at in (
        (extrinsic, "ood_drop", lambda row: "ood_drop"),
        (extrinsic, "alignment_r2", lambda row: "mean/alignment_r2"),
        (ridge, "ridge_r2", lambda row: f"{row.get('position', 'mean')}/ridge_r2"),
        (alignment, "alignment_r2", lambda row: f"{row.get('position', 'mean')}/alignment_r2"),
    ):
        for row in rows:
            if row.get("method") in methods and (got := interval(row["method"], at(row))) is not None:
                row[f"{field}_phi"] = got


def stability_rows(
    labels: Mapping[str, Sequence[np.ndarray]],
    full: Mapping[str, np.ndarray],
    layer: int,
    *,
    threshold: float = CONSENSUS_THRESHOLD,
) -> tuple[list[dict[str, Any]], dict[str, list[list[int]]]]:
    """Per hedonic method, how much its partition of ``layer`` depends on the φ data.

    ``labels[method]``: the R label vectors fitted on the φ resamples; ``full[method]``: the
    label vector fitted on all the φ data. Each row: ``layer``, ``method``, ``resamples``, the
    pairwise ARI across resamples (``ari_mean``, ``ari_min``, ``ari_max``; ``sklearn``'s
    ``adjusted_rand_score``), the ARI of each resample against the full-data partition
    (``ari_full_mean``, ``ari_full_min``, ``ari_full_max``), the mean number of coalitions, and
    the consensus groups (neurons linked when co-assigned in at least ``threshold`` of the
    resamples, groups of at least 2): their number, the neurons they hold, the largest one's
    size and their mean co-assignment rate. Returns (rows, ``{method: consensus groups}``).
    """
    from sklearn.metrics import adjusted_rand_score

    from hedonic_neurons.evaluate.stability import co_assignment, consensus_coalitions, stability

    rows, groups = [], {}
    for method, items in labels.items():
        st = stability(items)
        vs_full = [float(adjusted_rand_score(full[method], lab)) for lab in items]
        cons = consensus_coalitions(items, threshold=threshold, min_size=2)
        rate = co_assignment(cons, items) if cons else []
        groups[method] = cons
        rows.append(
            {
                "layer": layer,
                "method": method,
                "resamples": st["n_resamples"],
                "ari_mean": st["ari_mean"],
                "ari_min": st["ari_min"],
                "ari_max": st["ari_max"],
                "ari_full_mean": float(np.mean(vs_full)),
                "ari_full_min": float(np.min(vs_full)),
                "ari_full_max": float(np.max(vs_full)),
                "coalitions_mean": st["n_coalitions_mean"],
                "consensus_groups": len(cons),
                "consensus_neurons": int(sum(len(c) for c in cons)),
                "consensus_largest": max((len(c) for c in cons), default=0),
                "consensus_co_assignment": float(np.mean(rate)) if rate else float("nan"),
            }
        )
    return rows, groups


def stability_sentences(
    rows: Sequence[Mapping[str, Any]], threshold: float = CONSENSUS_THRESHOLD
) -> list[str]:
    """One sentence per hedonic method: its partitions' agreement under φ resampling, by layer."""
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        parts = "; ".join(
            f"layer {r['layer']}: ARI {r['ari_mean']:.2f} between resamples (range "
            f"{r['ari_min']:.2f}–{r['ari_max']:.2f}), {r['ari_full_mean']:.2f} against the full-data "
            f"partition, {r['consensus_groups']} consensus groups holding {r['consensus_neurons']} neurons"
            for r in mine
        )
        out.append(
            f"{method} under φ resampling ({mine[0]['resamples']} disjoint subsets of the φ training pairs, "
            f"each re-solved; consensus: co-assigned in ≥ {threshold:.0%} of them): {parts}. Every hedonic row's "
            "<figure>_phi columns repeat its figures for the coalitions of these re-solved partitions, with a "
            "percentile interval over (resample, query bootstrap)."
        )
    return out
