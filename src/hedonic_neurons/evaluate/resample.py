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
   resample's φ fix the target sizes, every other hedonic method is size-matched to them),
   measures their per-query normalised RMS Δlogit on the same test queries in one batched
   ablation pass per layer and mode (:func:`resample_effects`), and gives each hedonic method
   the mean over (resample, query) with a two-level bootstrap interval
   (:func:`~hedonic_neurons.evaluate.stability.two_level_interval`, :func:`phi_intervals`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from hedonic_neurons.errors import ConfigError

if TYPE_CHECKING:
    from hedonic_neurons.models.neuron_model import NeuronModel

__all__ = [
    "CONSENSUS_THRESHOLD",
    "STABILITY_TABLE",
    "attach_phi_intervals",
    "phi_intervals",
    "resample_effects",
    "resample_selection",
    "stability_rows",
    "stability_sentences",
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


def resample_effects(
    nm: NeuronModel,
    layer: int,
    test: Sequence[Any],
    chosen: Sequence[Mapping[str, Sequence[Sequence[int]]]],
    *,
    mode: str,
    task: str,
    y_test: np.ndarray,
    sd: float,
    reference: Any = None,
    means: Any = None,
    fills: Any = None,
    batch_size: int = 16,
) -> dict[str, np.ndarray]:
    """Per-query normalised RMS Δlogit of each method's coalitions on each resample: ``{method:
    (R, Q)}``, row r the mean over the coalitions chosen for resample r (NaN where none was).

    Every coalition of every resample is ablated in one batched pass over ``test``
    (:func:`hedonic_neurons.evaluate.passes.layer_outputs`, ablation ``mode``); the measure is
    :func:`hedonic_neurons.evaluate.measures.effect_measures`' ``"rms"`` in units of ``sd`` (the
    evaluation's standard deviation of the unablated outputs), per query id in sorted order
    (the evaluation's query order). ``fills``: for ``mode="resample"``, (len(test), n) each test
    pair's fill, its donor's token-mean activations
    (:func:`~hedonic_neurons.evaluate.layer.donor_fills`; the evaluation's own donors).
    """
    from hedonic_neurons.evaluate.measures import effect_measures, query_index
    from hedonic_neurons.evaluate.passes import layer_outputs

    sets = sorted({tuple(sorted(int(i) for i in c)) for by in chosen for cs in by.values() for c in cs})
    groups, names = query_index([p.qid for p in test])
    methods = list(dict.fromkeys(m for by in chosen for m in by))
    if not sets:
        return {m: np.full((len(chosen), len(names)), np.nan) for m in methods}
    out = layer_outputs(
        nm, test, layer, sets, sub=np.zeros(0, dtype=np.int64), null_sets=[],
        null_bins=np.zeros(0, dtype=np.int64), mode=mode, reference=reference, means=means,
        fills=fills, batch_size=batch_size,
    )  # fmt: skip
    rms = effect_measures(task, out.base, out.ablated, np.asarray(y_test), groups, len(names), sd)["rms"]
    result = {}
    for method in methods:
        rows = []
        for by in chosen:
            idx = [out.row_of(c) for c in by.get(method, [])]
            rows.append(rms[idx].mean(0) if idx else np.full(len(names), np.nan))
        result[method] = np.stack(rows)
    return result


def phi_intervals(effects: np.ndarray, *, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The two-level interval of one method's (R, Q) resampled effects, over the resamples that
    had coalitions to evaluate (rows without NaN): ``two_level_interval``'s dict, or ``{"mean":
    NaN, "low": NaN, "high": NaN, "n_resamples": 0, ...}`` when no resample had one."""
    from hedonic_neurons.evaluate.stability import two_level_interval

    table = np.asarray(effects, dtype=np.float64)
    keep = table[np.isfinite(table).all(axis=1)]
    if keep.shape[0] == 0 or table.shape[1] < 2:
        nan = float("nan")
        return {"mean": nan, "low": nan, "high": nan, "n_resamples": 0, "n_queries": int(table.shape[1])}
    return two_level_interval(keep, n_boot=n_boot, seed=seed)


def attach_phi_intervals(
    rows: list[dict[str, Any]],
    layer: int,
    mode: str,
    effects: Mapping[str, np.ndarray],
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Add ``rms_phi`` (mean over (resample, query) with its two-level interval) and
    ``rms_phi_resamples`` (resamples that had coalitions) to the ``effects`` rows of ``layer``
    and ``mode`` whose method is in ``effects``; returns ``{method: interval dict}``."""
    found = {}
    for method, table in effects.items():
        interval = phi_intervals(table, n_boot=n_boot, seed=seed)
        found[method] = interval
        for row in rows:
            if row.get("layer") == layer and row.get("mode") == mode and row.get("method") == method:
                row["rms_phi"] = {k: interval[k] for k in ("mean", "low", "high")}
                row["rms_phi_resamples"] = int(interval["n_resamples"])
    return found


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
            f"each re-solved; consensus: co-assigned in ≥ {threshold:.0%} of them): {parts}. The ablation "
            "effects table's rms_phi column is each hedonic method's mean normalised RMS Δlogit over "
            "(resample, query) with a two-level bootstrap interval over both."
        )
    return out
