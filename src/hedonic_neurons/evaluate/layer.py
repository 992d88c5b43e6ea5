"""One layer's evaluation: choose the coalitions, run the shared passes, run each evaluation.

:func:`evaluate_layer` is what ``hedonic run`` calls per layer and what a notebook or a test
calls on any model:

1. **Selection** (:mod:`.select`): for each seed the reference method's coalitions are chosen by
   the declared rule (cohesion within the size band, or largest) — their sizes are the targets;
   every other method is size-matched to those targets with the same rule.
2. **Attribution baseline** (:mod:`.attribution`): sets of the target sizes from the neurons with
   the largest mean |gradient × revert shift| on the train pairs (method ``"attribution"``).
3. **Null** (:mod:`.null`): ``null_sets`` random sets per occupied log-scale size bin, on a seeded
   subsample of whole test queries (or, with ``null_pairs_per_query`` = m, of at most m seeded
   pairs of each query, so that the subsample spans more queries). The subsample has ``null_pairs`` pairs, fewer when that
   would make the null's forward passes more than twice the rest's (counted in sequences
   forwarded: null sets × subsample pairs against (coalitions + 2) × test pairs + single neurons
   × synergy pairs), never below 16 pairs (or ``null_pairs`` if smaller), never below two queries.
   The single-neuron ablations of the ``synergy`` evaluation (every neuron of an evaluated
   coalition or a random set) run on ``synergy_pairs`` pairs of whole queries of that subsample
   (whole as they are in the subsample).
4. **Passes** (:mod:`.passes`): one batched ablation pass per batch for everything, per mode.
   Under ``"resample"`` every test pair gets one donor from the donor pool (a run: its training
   pairs' token-mean activations), drawn by :func:`donor_fills` from the seed and the layer; the
   pair's ablated neurons take that donor's token-mean activations, in every pass.
5. Every evaluation named in the config gets the :class:`~.base.LayerContext`.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from hedonic_neurons.errors import ConfigError, arg

if TYPE_CHECKING:
    from hedonic_neurons.models.neuron_model import NeuronModel

ATTRIBUTION = "attribution"
MIN_NULL_PAIRS = 16
"""The cost rule never shrinks the null's subsample below this many pairs (or ``null_pairs``)."""
MIN_QUERIES = 2
"""The null's and the single neurons' subsamples hold at least this many whole queries (an
interval over queries needs two)."""


def _rng(seed: int, method: str, layer: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(method.encode()), layer])


DONOR_STREAM = zlib.crc32(b"resample-ablation-donors")
"""Keeps the donor draw's random stream apart from every other draw seeded by (seed, layer)."""


def donor_fills(
    donors: torch.Tensor | np.ndarray, n_inputs: int, *, seed: int, layer: int, n_neurons: int | None = None
) -> tuple[np.ndarray, torch.Tensor]:
    """(donor index of each input (n_inputs,), the fills (n_inputs, n)) for resample ablation.

    ``donors`` (D, n): the pool, each row one donor input's token-mean activations. Input k's
    donor is drawn uniformly with replacement by a numpy Generator seeded with (``seed``, the
    donor stream, ``layer``), so the same seed and layer give the same donors; its fill is that
    donor's row. ``n_neurons``: the layer's width, checked against the pool's when given.
    """
    from hedonic_neurons.neurons.ablation import draw_donors

    pool = donor_pool(donors, n_neurons)
    index = draw_donors(pool.shape[0], n_inputs, [int(seed), DONOR_STREAM, int(layer)])
    return index, pool[torch.as_tensor(index)]


def donor_pool(donors: Any, n_neurons: int | None = None) -> torch.Tensor:
    """``donors`` as a checked floating-point (D >= 1, n) CPU tensor (``n_neurons``: the expected n)."""
    try:
        if isinstance(donors, torch.Tensor):
            pool = donors.detach().cpu()
        else:
            pool = torch.as_tensor(np.asarray(donors))
        if not pool.is_floating_point():
            pool = pool.double()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ConfigError(
            f"resample ablation: the donor pool must be a (D, n) array of numbers ({exc})"
        ) from None
    n = pool.shape[1] if pool.dim() == 2 else None
    if pool.dim() != 2 or pool.shape[0] < 1 or (n_neurons is not None and n != n_neurons):
        width = "n" if n_neurons is None else str(n_neurons)
        raise ConfigError(
            f"resample ablation needs a donor pool of shape (D >= 1, {width}), got {tuple(pool.shape)}: "
            f"pass {arg('donors')}the token-mean activations of the donor inputs, one row each"
        )
    return pool


def choose(
    partitions: Mapping[int, Mapping[str, Sequence[Sequence[int]]]],
    reference_method: str,
    phi: np.ndarray | None,
    config: Any,
    layer: int,
) -> tuple[dict[tuple[int, str], list[list[int]]], dict[tuple[int, str], int], dict[int, list[int]]]:
    """(chosen, skipped, targets) for ``partitions[seed][method]`` (see the module docstring)."""
    from hedonic_neurons.evaluate.select import matched_selection, select_coalitions

    chosen: dict[tuple[int, str], list[list[int]]] = {}
    skipped: dict[tuple[int, str], int] = {}
    targets: dict[int, list[int]] = {}
    band = tuple(config.size_band)
    for seed, by_method in partitions.items():
        if reference_method not in by_method:
            raise ConfigError(f"the reference method {reference_method!r} has no partition for seed {seed}")
        ref = select_coalitions(
            by_method[reference_method], phi, rule=config.selection, k=config.top_k, band=band
        )
        targets[seed] = [len(c) for c in ref]
        for method, coalitions in by_method.items():
            if method == reference_method:
                chosen[(seed, method)], skipped[(seed, method)] = ref, 0
                continue
            got, miss = matched_selection(
                targets[seed], coalitions, phi, config.selection, _rng(seed, method, layer)
            )
            chosen[(seed, method)], skipped[(seed, method)] = got, miss
    return chosen, skipped, targets


def evaluate_layer(
    nm: NeuronModel,
    layer: int,
    partitions: Mapping[int, Mapping[str, Sequence[Sequence[int]]]],
    *,
    reference_method: str,
    config: Any,
    task: str,
    test: Sequence[Any],
    y_test: np.ndarray,
    qrels: dict | None = None,
    train: Sequence[Any] = (),
    phi: np.ndarray | None = None,
    reference: Any = None,
    means: torch.Tensor | np.ndarray | None = None,
    donors: torch.Tensor | np.ndarray | None = None,
    seed: int = 0,
    batch_size: int = 16,
    progress: Any = None,
    phi_source: str = "",
) -> tuple[dict[str, list[dict[str, Any]]], Any]:
    """Run the configured evaluations on one layer; returns ({evaluation: rows}, the context).

    ``partitions[seed][method]``: each method's coalitions (lists of neuron indices) per seed.
    ``reference``: the layer's reference :class:`~hedonic_neurons.models.adapters.MLPWeights`
    (needed for ``"reference"`` ablation); ``means``: per-neuron mean activations (``"mean"``);
    ``donors`` (D, n): the donor pool of ``"resample"`` (the token-mean activations of D inputs;
    each test pair's donor is drawn by :func:`donor_fills` with ``seed`` and ``layer``). The
    attribution baseline is scored under the first configured mode other than ``"resample"``, or
    under mean ablation with the pool's mean (the expected fill of a random donor) when
    ``"resample"`` is the only one. ``config``: an
    :class:`~hedonic_neurons.config.EvaluateConfig`. ``phi_source``: how ``phi`` was measured, in
    words (for the φ-validity verdict).
    """
    import time

    from hedonic_neurons.evaluate.attribution import attribution_scores, attribution_sets
    from hedonic_neurons.evaluate.base import EVALUATIONS, LayerContext
    from hedonic_neurons.evaluate.measures import query_index
    from hedonic_neurons.evaluate.null import query_subsample, random_sets, size_bin
    from hedonic_neurons.evaluate.passes import layer_outputs

    evaluations = [EVALUATIONS.get(name)() for name in config.evaluations]
    modes = list(config.ablation_modes)
    if "reference" in modes and reference is None:
        raise ConfigError("ablation mode 'reference' needs the layer's reference weights (reference=...)")
    if means is not None and not isinstance(means, torch.Tensor):
        means = torch.as_tensor(np.asarray(means), dtype=torch.float32)
    if "mean" in modes and means is None:
        raise ConfigError("ablation mode 'mean' needs the neurons' mean activations (means=...)")
    fills = pool = None
    if "resample" in modes:
        if donors is None:
            raise ConfigError(
                "ablation mode 'resample' needs a donor pool: pass "
                f"{arg('donors')}the token-mean activations of the donor inputs, one row each"
            )
        pool = donor_pool(donors, int(nm.n_neurons))
        fills = donor_fills(pool, len(test), seed=seed, layer=layer)[1]
    y_test = np.asarray(y_test, dtype=np.float64)
    if y_test.shape != (len(test),):
        raise ConfigError(
            f"y_test has {y_test.size} values for {len(test)} test pairs; expected one per pair"
        )
    chosen, skipped, targets = choose(partitions, reference_method, phi, config, layer)
    methods = list(dict.fromkeys(m for by in partitions.values() for m in by))
    timing: dict[str, float] = {}
    if config.attribution and train and any(targets.values()):
        t0 = time.perf_counter()
        pick = query_subsample([p.qid for p in train], config.attribution_pairs, seed)
        attr_mode = next((m for m in modes if m != "resample"), "mean")
        attr_means = means if means is not None or pool is None else pool.mean(0)
        scores = attribution_scores(
            nm, [train[int(i)] for i in pick], layer, mode=attr_mode, reference=reference,
            means=attr_means, batch_size=batch_size,
        )  # fmt: skip
        for s in targets:
            chosen[(s, ATTRIBUTION)], skipped[(s, ATTRIBUTION)] = attribution_sets(scores, targets[s]), 0
        methods.append(ATTRIBUTION)
        timing["attribution"] = time.perf_counter() - t0
    lo, per_octave = int(config.size_band[0]), int(config.null_bins_per_octave)
    by_bin: dict[int, list[int]] = {}
    for sizes in targets.values():
        for s in sizes:
            by_bin.setdefault(size_bin(s, lo, per_octave), []).append(s)
    null_sets, null_bins = random_sets(by_bin, int(nm.n_neurons), config.null_sets, seed=seed * 7919 + layer)
    all_sets = {tuple(c) for cs in chosen.values() for c in cs}
    singles: list[int] = []
    if "synergy" in config.evaluations:
        singles = sorted({i for c in all_sets for i in c} | {i for s in null_sets for i in s})
    qids = [p.qid for p in test]
    n_sub = min(int(config.null_pairs), len(test))
    rest_rows = (len(all_sets) + 2) * len(test) + len(singles) * min(int(config.synergy_pairs), n_sub)
    if null_sets:  # keep null rows <= 2 x the rest's rows, but never below MIN_NULL_PAIRS
        n_sub = min(n_sub, max(MIN_NULL_PAIRS, 2 * rest_rows // len(null_sets)))
    sub = query_subsample(
        qids, max(n_sub, 1), seed, min_queries=MIN_QUERIES, per_query=config.null_pairs_per_query
    )
    sub_qids = [qids[int(i)] for i in sub]
    syn = sub[query_subsample(sub_qids, int(config.synergy_pairs), seed, min_queries=MIN_QUERIES)]
    groups, names = query_index(qids)
    sub_groups, sub_names = query_index([qids[int(i)] for i in sub])
    outputs = {}
    for mode in modes:
        outputs[mode] = layer_outputs(
            nm, test, layer, sorted(all_sets), sub=sub, null_sets=null_sets, null_bins=null_bins,
            singles=singles, syn=syn, mode=mode, reference=reference if mode == "reference" else None,
            means=means if mode == "mean" else None, fills=fills if mode == "resample" else None,
            batch_size=batch_size, progress=progress,
        )  # fmt: skip
    ctx = LayerContext(
        nm=nm,
        layer=layer,
        task=task,
        methods=methods,
        seeds=sorted(partitions),
        chosen=chosen,
        skipped=skipped,
        targets=targets,
        phi=phi,
        pairs=list(test),
        y=y_test,
        qrels=qrels or {},
        outputs=outputs,
        config=config,
        groups=groups,
        n_queries=len(names),
        sub_groups=sub_groups,
        n_sub_queries=len(sub_names),
        bins=(lo, per_octave),
        reference=reference,
        means=means,
        phi_source=phi_source,
    )
    ctx.timing = {
        **timing,
        "null": sum(o.seconds["null"] for o in outputs.values()),
        "rest": sum(o.seconds["rest"] for o in outputs.values()),
        "null_rows": sum(o.rows["null"] for o in outputs.values()),
        "rest_rows": sum(o.rows["rest"] for o in outputs.values()),
    }
    results = {}
    for name, ev in zip(config.evaluations, evaluations):
        # the passes advanced the bar; an evaluation that runs passes of its own (phi_validity's
        # full-model ablations) shows its name there, and each one's seconds go to the design
        if hasattr(progress, "set_postfix"):
            progress.set_postfix(layer=layer, step=name)
        t0 = time.perf_counter()
        results[name] = ev.evaluate(ctx)
        ctx.timing[f"seconds_{name}"] = time.perf_counter() - t0
    return results, ctx


def design_sentences(design: Sequence[dict[str, Any]], ev: Any, reference_method: str) -> list[str]:
    """Sentences for the report: how the evaluated coalitions, the null's size bins and its
    subsample were chosen, and what the null cost. ``design``: one dict per layer (``layer``,
    ``null_bins``, ``null_pairs``, ``null_queries``, ``null_rows``, ``rest_rows``), as ``hedonic
    run`` records them; ``ev``: the :class:`~hedonic_neurons.config.EvaluateConfig`."""
    if not design:
        return []
    lo, hi = ev.size_band
    out = [
        f"Coalitions evaluated: per method, seed and layer the top {ev.top_k} by {ev.selection} among "
        f"sizes {lo}–{hi}, every method (hedonic ones included) size-matched to the sizes "
        f"{reference_method} gives; plus the attribution baseline (|gradient × revert shift| on "
        "train pairs)."
        if ev.attribution
        else f"Coalitions evaluated: per method, seed and layer the top {ev.top_k} by {ev.selection} among "
        f"sizes {lo}–{hi}, every method size-matched to the sizes {reference_method} gives."
    ]
    whole = (
        "whole queries "
        if ev.null_pairs_per_query is None
        else f"queries (at most {ev.null_pairs_per_query} pairs of each, a seeded draw) "
    )
    for d in design:
        null_rows, rest_rows = d.get("null_rows", 0), d.get("rest_rows", 0)
        ratio = f"{null_rows / rest_rows:.2f}×" if rest_rows else "n/a"
        out.append(
            f"Layer {d['layer']} null: {ev.null_sets} random sets in each of {len(d['null_bins'])} "
            f"log-scale size bins ({ev.null_bins_per_octave} per octave from {lo}; only bins holding "
            "an evaluated coalition), sizes cycled from those coalitions; on a seeded subsample of "
            f"{d['null_pairs']} test pairs from {d['null_queries']} {whole}"
            f"(null_pairs = {ev.null_pairs}, fewer where needed "
            f"to keep the null's forward passes within 2× the rest's). The null forwarded {null_rows} "
            f"sequences, {ratio} the rest of the evaluation's {rest_rows}."
        )
    return out
