"""The extrinsic table: the paper's per-coalition measures, one row per (method, layer, seed).

For every method the coalitions are chosen the same way. ``hedonic run`` passes the evaluation's
own selection (:mod:`hedonic_neurons.evaluate.layer`: the declared rule, every method size-matched to
the reference method's picks) and its ablated outputs, so this table describes the same coalitions as
the effects and null tables and costs no ablation pass of its own. Called alone, the reference
method's ``top_k`` largest coalitions (size >= ``min_size``) set the target sizes, and every method —
the other hedonic partition included — is size-matched to them (:func:`size_matched`: a distinct
coalition at least that large, subsampled to the size). A row then holds, averaged over its
coalitions:

- ``ood_drop``: task metric unablated − ablated on the test pairs (nDCG@10 for RM, R² otherwise);
- ``alignment_r2`` (query-grouped cross-validated R² of each coalition's activation on the IR
  heuristics that vary within a query), with ``alignment_r2_ood`` and the intercept/scale-refitted
  ``alignment_r2_ood_refit``;
- ``ridge_r2`` (query-grouped cross-validated R² of the task target on the coalitions'
  activations; RM labels standardised per query, so a per-query constant cannot score), with
  ``ridge_r2_ood``, ``ridge_r2_ood_refit``, ``ridge_r2_ood_constant`` (what label shift alone
  scores: the training mean as prediction), ``ridge_ndcg10`` for RM, and ``ridge_null_percentile``
  (percentile of ``ridge_r2`` among random size-matched coalitions);
- ``synergy``: mean pairwise φ inside the coalitions;
- ``blocking_upper_*``: Clopper-Pearson upper bounds of the blocking rate of the whole partition
  (uniform and φ-grown coalitions), under the hedonic partition's own φ (baselines: ``phi``).

Alignment and ridge are computed at every read position the activations were recorded at
(:data:`~hedonic_neurons.evaluate.regression.READ_POSITIONS`: the mean over all tokens, the
readout token, the mean over the query tokens; :func:`record_positions` records them in one
pass): the flat keys above are the ``mean`` position, ``row["by_position"][position]`` holds the
same keys for each position. :func:`ceiling_rows` adds, per layer and position, what any
choice of macro-features could reach (ridge on every neuron and on the top principal
components, same folds), and :func:`position_tables` turns both into the report's ridge and
alignment tables.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from hedonic_neurons.data.loaders import Pair

if TYPE_CHECKING:
    import torch

    from hedonic_neurons.models.inputs import InputFormat
    from hedonic_neurons.models.neuron_model import NeuronModel

#: the columns of the report's ridge and alignment tables (each a mean over seeds of the mean
#: over layers)
RIDGE_COLUMNS = (
    "ridge_r2",
    "ridge_r2_ood",
    "ridge_r2_ood_refit",
    "ridge_r2_ood_constant",
    "ridge_null_percentile",
)
ALIGNMENT_COLUMNS = ("alignment_r2", "alignment_r2_ood", "alignment_r2_ood_refit")


@dataclass
class ExtrinsicData:
    """What the extrinsic table reads that does not depend on the layer: targets, the IR
    heuristics that vary within a query, and each pair's query id (for grouped folds)."""

    task: str
    train: Sequence[Pair]
    test: Sequence[Pair]
    y_train: np.ndarray
    y_test: np.ndarray
    test_qrels: Any
    heur_train: np.ndarray
    heur_test: np.ndarray
    features: tuple[str, ...]

    @classmethod
    def build(
        cls,
        task: str,
        train: Sequence[Pair],
        test: Sequence[Pair],
        y_train: Any,
        y_test: Any,
        test_qrels: Any,
    ) -> ExtrinsicData:
        from hedonic_neurons.data import PASSAGE_FEATURES, heuristic_features

        return cls(
            task=task,
            train=train,
            test=test,
            y_train=np.asarray(y_train, dtype=np.float64),
            y_test=np.asarray(y_test, dtype=np.float64),
            test_qrels=test_qrels,
            heur_train=heuristic_features(train, corpus="query").matrix(PASSAGE_FEATURES),
            heur_test=heuristic_features(test, corpus="query").matrix(PASSAGE_FEATURES),
            features=tuple(PASSAGE_FEATURES),
        )

    @property
    def groups_train(self) -> np.ndarray:
        return np.array([p.qid for p in self.train])

    @property
    def groups_test(self) -> np.ndarray:
        return np.array([p.qid for p in self.test])


def chosen_coalitions(
    partitions: Mapping[str, Sequence[Sequence[int]]],
    reference_method: str,
    *,
    top_k: int,
    min_size: int,
    seed: int,
) -> dict[str, tuple[list[list[int]], int]]:
    """For each method, (its coalitions size-matched to the reference's top-``top_k``, skipped
    targets). The reference method keeps its own top-``top_k``; every other method is matched."""
    from hedonic_neurons.evaluate.stats import size_matched, top_coalitions

    ref = top_coalitions(partitions[reference_method], top_k, min_size)
    targets = [len(c) for c in ref]
    out: dict[str, tuple[list[list[int]], int]] = {}
    for method, full in partitions.items():
        if method == reference_method:
            out[method] = (ref, 0)
        else:
            rng = np.random.default_rng([seed, zlib.crc32(method.encode())])
            out[method] = size_matched(targets, full, rng)
    return out


def extrinsic_rows(
    nm: NeuronModel,
    layer: int,
    partitions: Mapping[int, Mapping[str, Sequence[Sequence[int]]]],
    data: ExtrinsicData,
    *,
    reference_method: str,
    phis: Mapping[str, np.ndarray],
    phi_metric: str,
    acts_train: np.ndarray | Mapping[str, np.ndarray],
    acts_test: np.ndarray | Mapping[str, np.ndarray],
    k: int,
    top_k: int,
    min_size: int,
    certify_samples: int,
    batch_size: int,
    null_sets: int = 20,
    progress: Any = None,
    selected: Mapping[tuple[int, str], Sequence[Sequence[int]]] | None = None,
    selected_skipped: Mapping[tuple[int, str], int] | None = None,
    outputs: Any = None,
    query_weights: tuple[np.ndarray, np.ndarray] | None = None,
) -> list[dict[str, Any]]:
    """The extrinsic rows of one layer; ``partitions[seed][method]`` are the full partitions.

    ``selected`` / ``selected_skipped``: ``{(seed, method): coalitions}`` and the skipped targets,
    the coalitions another evaluation already chose (``hedonic run`` passes the evaluation's
    selection, so every table of a run describes the same coalitions); default: the reference's
    ``top_k`` largest of size >= ``min_size``, every other method size-matched to them.
    ``outputs``: a :class:`~hedonic_neurons.evaluate.passes.LayerOutputs` that already holds the
    test outputs with each selected coalition ablated (the evaluation's own passes): the OOD drop
    is read from it, and only coalitions it lacks are ablated again.

    ``acts_train`` / ``acts_test``: (pairs, n) pooled activations, or ``{position: (pairs, n)}``
    (:func:`record_positions`; the same positions in both, ``"mean"`` among them): alignment,
    ridge and its random-set null run at each position (:func:`~.regression.by_position`).
    One batched ablation pass over the test pairs serves every distinct coalition of the layer.

    ``query_weights``: (train (B, Q_train), test (B, Q_test)) query-bootstrap counts
    (:func:`~.stats.bootstrap_weights`, queries in sorted id order). With them each row with
    coalitions also holds ``replicates``: ``{"ood_drop": (B,), "by_position": {position:
    {"ridge_r2": (B,), "alignment_r2": (B,)}}}``, the figures re-scored on each bootstrap sample
    of queries (the fitted models and ablated outputs kept; test queries for the OOD drop,
    training queries for the cross-validated R²s), for
    :func:`~.stats.mixture_interval`.
    """
    from hedonic_neurons.evaluate.ood import ablated_outputs, ood_drops
    from hedonic_neurons.evaluate.regression import (
        alignment_evaluation,
        by_position,
        coalition_matrix,
        random_set_null,
        ridge_evaluation,
    )
    from hedonic_neurons.evaluate.stats import weighted_r2
    from hedonic_neurons.explore import mean_pairwise_phi
    from hedonic_neurons.game import certificates

    phi = phis[phi_metric]
    if selected is not None:
        plan = {
            seed: {
                m: ([list(c) for c in selected[(seed, m)]], int((selected_skipped or {}).get((seed, m), 0)))
                for m in parts
                if (seed, m) in selected
            }
            for seed, parts in partitions.items()
        }
    else:
        plan = {
            seed: chosen_coalitions(parts, reference_method, top_k=top_k, min_size=min_size, seed=seed)
            for seed, parts in partitions.items()
        }
    unique = sorted({tuple(sorted(c)) for per in plan.values() for chosen, _ in per.values() for c in chosen})
    known = {tuple(sorted(c)) for c in outputs.coalitions} if outputs is not None else set()
    missing = [c for c in unique if c not in known]
    if outputs is None or missing:
        base, again = ablated_outputs(
            nm,
            data.test,
            layer,
            [list(c) for c in missing or unique],
            batch_size=batch_size,
            progress=progress,
        )
    if outputs is not None:
        base = outputs.base
        got = dict(zip(missing, again)) if missing else {}
        ablated = np.stack([outputs.ablated[outputs.row_of(c)] if c in known else got[c] for c in unique])
    else:
        ablated = again
    drops = ood_drops(data.task, data.test, data.y_test, base, ablated, data.test_qrels)
    drop_of = dict(zip(unique, drops))
    if query_weights is not None:
        from hedonic_neurons.evaluate.ood import ood_drop_replicates

        w_train, w_test = (np.asarray(w, dtype=np.float64) for w in query_weights)
        pair_w_train = w_train[:, np.unique(data.groups_train, return_inverse=True)[1].ravel()]
        reps = ood_drop_replicates(data.task, data.test, data.y_test, base, ablated, w_test, data.test_qrels)
        drop_reps = dict(zip(unique, reps))
    at_train, at_test = _at_positions(acts_train, "acts_train"), _at_positions(acts_test, "acts_test")
    if set(at_test) != set(at_train):
        from hedonic_neurons.errors import DataError

        raise DataError(
            f"acts_test is read at {sorted(at_test)} but acts_train at {sorted(at_train)}; expected the same"
        )
    n = at_train["mean"].shape[1]
    g_train, g_test = data.groups_train, data.groups_test
    rm = data.task == "rm"
    ridge_kw: dict[str, Any] = {"per_query": rm}
    if rm:
        ridge_kw.update(test_pairs=data.test, test_qrels=data.test_qrels)

    rows: list[dict[str, Any]] = []
    for seed, per in plan.items():
        for method, (chosen, skipped) in per.items():
            full = partitions[seed][method]
            row: dict[str, Any] = {"method": method, "layer": layer, "seed": seed, "k": len(chosen)}
            row["skipped"] = skipped
            # stability under the game the partition answers: a hedonic partition's own φ
            own = phis.get(method.removeprefix("hedonic-"), phi) if method.startswith("hedonic") else phi
            certs = certificates(
                own, full, k=k, n_samples=certify_samples, random_state={"uniform": seed, "phi": seed}
            )
            for dist, cert in certs.items():
                row[f"blocking_rate_{dist}"] = float(cert.rate)
                row[f"blocking_upper_{dist}"] = float(cert.upper_bound)
            row["blocking_upper"] = row["blocking_upper_uniform"]
            if chosen:
                row["ood_drop"] = float(np.mean([drop_of[tuple(sorted(c))] for c in chosen]))
                mat = coalition_matrix(chosen, n)
                c_train = {pos: a @ mat for pos, a in at_train.items()}
                c_test = {pos: a @ mat for pos, a in at_test.items()}
                boot = query_weights is not None
                al = by_position(
                    alignment_evaluation, c_train, c_test, heur_train=data.heur_train, groups_train=g_train,
                    heur_test=data.heur_test, groups_test=g_test, feature_names=data.features, seed=seed,
                    predictions=boot,
                )  # fmt: skip
                rd = by_position(
                    ridge_evaluation, c_train, c_test, y_train=data.y_train, groups_train=g_train,
                    y_test=data.y_test, groups_test=g_test, seed=seed, predictions=boot, **ridge_kw,
                )  # fmt: skip
                if boot:
                    row["replicates"] = {
                        "ood_drop": np.mean([drop_reps[tuple(sorted(c))] for c in chosen], axis=0),
                        "by_position": {
                            pos: {
                                "ridge_r2": weighted_r2(
                                    rd[pos]["cv_targets"], rd[pos]["cv_predictions"], pair_w_train
                                ),
                                "alignment_r2": _column_r2_mean(al[pos], pair_w_train),
                            }
                            for pos in at_train
                        },
                    }
                per_position: dict[str, dict[str, Any]] = {}
                for pos, acts in at_train.items():
                    got = {
                        "alignment_r2": al[pos]["r2_cv"],
                        "alignment_r2_ood": al[pos]["r2_ood"],
                        "alignment_r2_ood_refit": al[pos]["r2_ood_refit"],
                        **_ridge_keys(rd[pos], rm),
                    }

                    def score(coalitions: Sequence[Sequence[int]], acts: np.ndarray = acts) -> float:
                        x = acts @ coalition_matrix(coalitions, n)
                        return ridge_evaluation(x, data.y_train, g_train, nested=False, per_query=rm)["r2_cv"]

                    sizes = [len(c) for c in chosen]
                    null = random_set_null(
                        score, sizes, n, n_sets=null_sets, seed=seed, observed=got["ridge_r2"]
                    )
                    got["ridge_null_percentile"] = null["percentile"]
                    got["ridge_null_median"] = null["q50"]
                    per_position[pos] = got
                row.update(per_position["mean"])
                row["by_position"] = per_position
                row["synergy"] = float(np.mean([mean_pairwise_phi(phi, c) or 0.0 for c in chosen]))
            rows.append(row)
    return rows


def _column_r2_mean(result: Mapping[str, Any], pair_weights: np.ndarray) -> np.ndarray:
    """(B,) the mean over coalitions (columns; constant ones left out) of the weighted R² of an
    alignment result's out-of-fold predictions: its ``r2_cv`` under each row of ``pair_weights``."""
    from hedonic_neurons.evaluate.stats import weighted_r2

    target, pred = np.asarray(result["cv_targets"]), np.asarray(result["cv_predictions"])
    cols = np.stack([weighted_r2(target[:, k], pred[:, k], pair_weights) for k in range(target.shape[1])])
    with np.errstate(invalid="ignore"), np.testing.suppress_warnings() as sup:
        sup.filter(RuntimeWarning)
        return np.nanmean(cols, axis=0)


def _at_positions(acts: Any, name: str) -> dict[str, np.ndarray]:
    """``{position: activations}`` from a mapping, or ``{"mean": acts}`` from one array."""
    from hedonic_neurons.errors import DataError, arg
    from hedonic_neurons.evaluate.regression import READ_POSITIONS

    if not isinstance(acts, Mapping):
        return {"mean": np.asarray(acts)}
    unknown = sorted(set(acts) - set(READ_POSITIONS))
    if unknown or "mean" not in acts:
        raise DataError(
            f"{arg(name)} is read at {sorted(acts)}; expected positions among {list(READ_POSITIONS)}, "
            "'mean' included"
        )
    return {pos: np.asarray(acts[pos]) for pos in READ_POSITIONS if pos in acts}


def _ridge_keys(rd: Mapping[str, Any], rm: bool) -> dict[str, Any]:
    """A :func:`~.regression.ridge_evaluation` result under the extrinsic rows' key names."""
    out = {
        "ridge_r2": rd["r2_cv"],
        "ridge_alpha": rd["alpha"],
        "ridge_r2_ood": rd["r2_ood"],
        "ridge_r2_ood_refit": rd["r2_ood_refit"],
        "ridge_r2_ood_constant": rd["r2_ood_constant"],
    }
    if rm:
        out["ridge_ndcg10"] = rd.get("ndcg10_ood")
    return out


def ceiling_label(kind: str) -> str:
    """The report's method column of a ceiling row: ``all_neurons`` or ``pcs_<k>``."""
    if kind == "all_neurons":
        return "ceiling: all neurons"
    return f"ceiling: top {kind.removeprefix('pcs_')} PCs"


def ceiling_rows(
    layer: int,
    data: ExtrinsicData,
    acts_train: np.ndarray | Mapping[str, np.ndarray],
    acts_test: np.ndarray | Mapping[str, np.ndarray],
    *,
    n_pcs: int,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """What any choice of macro-features could reach at one layer, at every read position.

    Two rows, ``ceiling: all neurons`` (ridge on every neuron's pooled activation) and
    ``ceiling: top <n_pcs> PCs`` (ridge on the top ``n_pcs`` principal components of the same
    activations, PCA fitted on each training fold's pairs only), both by
    :func:`~.regression.ridge_ceiling`: the target, the per-query standardisation of RM labels,
    the query-grouped folds and the α grid are those of the methods' macro-feature ridge in
    :func:`extrinsic_rows`, so the numbers sit beside theirs. The pipeline passes
    ``n_pcs = evaluate.top_k``: a method's ridge gets at most that many macro-features (one per
    coalition), and the same number of directions chosen by variance alone is the fair
    comparison for it; the all-neuron row is the upper bound with no limit on the features.
    α is chosen once on all training pairs and kept in every fold (``nested=False``: 2 n_splits
    + 1 eigendecompositions per fit instead of (n_splits + 1)², which matters at 14k neurons);
    that choice can only flatter the ceiling. ``seed`` sets the OOD refit's calibration queries
    and the PCA's random state. Each row has ``method``, ``ceiling`` (``all_neurons`` or
    ``pcs_<k>``), ``layer``, the ``mean`` position's ridge keys (as in :func:`extrinsic_rows`)
    and ``by_position`` ({position: those keys plus ``n_features``}).
    """
    from hedonic_neurons.evaluate.regression import ridge_ceiling

    at_train, at_test = _at_positions(acts_train, "acts_train"), _at_positions(acts_test, "acts_test")
    rm = data.task == "rm"
    kw: dict[str, Any] = {"per_query": rm}
    if rm:
        kw.update(test_pairs=data.test, test_qrels=data.test_qrels)
    per_position = {}
    for pos, x in at_train.items():
        per_position[pos] = ridge_ceiling(
            x, data.y_train, data.groups_train, at_test[pos], data.y_test, data.groups_test,
            n_pcs=(int(n_pcs),), seed=seed, **kw,
        )  # fmt: skip
    rows = []
    for kind in per_position["mean"]:
        by = {
            pos: {**_ridge_keys(got[kind], rm), "n_features": got[kind]["n_features"]}
            for pos, got in per_position.items()
        }
        row: dict[str, Any] = {"method": ceiling_label(kind), "ceiling": kind, "layer": layer}
        row.update({k: v for k, v in by["mean"].items() if k != "n_features"})
        row["n_features"] = by["mean"]["n_features"]
        row["alpha_nested"] = False
        row["by_position"] = by
        rows.append(row)
    return rows


def _value(row: Mapping[str, Any], position: str, key: str) -> float | None:
    """``row``'s ``key`` at ``position`` (rows written before positions existed: the flat keys)."""
    by = row.get("by_position")
    got = by.get(position, {}) if by else (row if position == "mean" else {})
    if key not in got:
        return None
    return float("nan") if got[key] is None else float(got[key])


def _positions_of(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    from hedonic_neurons.evaluate.regression import READ_POSITIONS

    seen = {p for r in rows for p in (r.get("by_position") or {"mean": None})}
    return [p for p in READ_POSITIONS if p in seen] or ["mean"]


def position_tables(
    rows: Sequence[Mapping[str, Any]],
    methods: Sequence[str],
    seeds: Sequence[int],
    ceilings: Sequence[Mapping[str, Any]] = (),
    ridge_columns: Sequence[str] = RIDGE_COLUMNS,
    alignment_columns: Sequence[str] = ALIGNMENT_COLUMNS,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The report's ridge and alignment tables from the extrinsic ``rows`` and :func:`ceiling_rows`.

    Ridge: for each read position, one row per method (each column the mean over ``seeds`` of
    the mean over layers, as :class:`~.stats.Estimate` dicts with a t-interval over seeds), then
    one row per ceiling (the mean over layers: a ceiling does not depend on the seed, n = 1).
    Alignment: one row per position and method, the same way. Every row has ``method`` and
    ``position``.
    """
    from hedonic_neurons.evaluate.stats import mean_ci

    def per_seed(method: str, position: str, key: str) -> list[float]:
        vals = []
        for seed in seeds:
            xs = [
                v
                for r in rows
                if r["method"] == method and r["seed"] == seed
                if (v := _value(r, position, key)) is not None
            ]
            vals.append(float(np.mean(xs)) if xs else float("nan"))
        return vals

    def of_methods(position: str, columns: Sequence[str]) -> list[dict[str, Any]]:
        return [
            {
                "method": m,
                "position": position,
                **{k: mean_ci(per_seed(m, position, k)).to_dict() for k in columns},
            }
            for m in methods
        ]

    positions = _positions_of(list(rows) + list(ceilings))
    kinds = list(dict.fromkeys(c["ceiling"] for c in ceilings))
    ridge, alignment = [], []
    for pos in positions:
        ridge.extend(of_methods(pos, ridge_columns))
        for kind in kinds:
            mine = [c for c in ceilings if c["ceiling"] == kind]
            row: dict[str, Any] = {"method": ceiling_label(kind), "position": pos}
            for key in ridge_columns:
                xs = [v for c in mine if (v := _value(c, pos, key)) is not None]
                if xs:
                    row[key] = mean_ci([float(np.mean(xs))]).to_dict()
            ridge.append(row)
        alignment.extend(of_methods(pos, alignment_columns))
    return ridge, alignment


# ------------------------------------------------------------------------------ read positions


def _template_span(template: str, query: str, passage: str) -> tuple[int, int]:
    """Character span of the query in ``template.format(query=query, passage=passage)``."""
    import string

    offset, span = 0, (0, 0)
    for literal, field, _, _ in string.Formatter().parse(template):
        offset += len(literal)
        if field == "query":
            span = (offset, offset + len(query))
        if field is not None:
            offset += len(query if field == "query" else passage)
    return span


def _query_flags(fmt: InputFormat, tokenizer: Any, query: str, passage: str, ids: list[int]) -> list[bool]:
    """One flag per token of ``ids`` (an input's non-pad tokens): True for a query token."""
    from hedonic_neurons.errors import ModelError

    if fmt.kind == "pair":
        enc = tokenizer(query, passage, truncation="only_second", max_length=fmt.max_length)
        if len(enc["input_ids"]) > fmt.max_length:  # the query alone does not fit: both were cut
            enc = tokenizer(query, passage, truncation="longest_first", max_length=fmt.max_length)
        if list(enc["input_ids"]) != list(ids):
            raise ModelError(
                "could not find the query tokens: re-encoding the pair gave other tokens than the input "
                "format's encoding (expected the tokenizer's own pair encoding)"
            )
        return [s == 0 for s in enc.sequence_ids()]
    body = list(ids)
    if fmt.append_eos:
        body = body[:-1]
    text = fmt.template.format(query=query, passage=passage)
    enc = tokenizer(text, return_offsets_mapping=True)
    full, offsets = list(enc["input_ids"]), enc["offset_mapping"]
    q0, q1 = _template_span(fmt.template, query, passage)
    in_query = [e > s and s < q1 and e > q0 for s, e in offsets]
    # truncation cuts the passage only: the tokens before the cut and after it keep their place
    limit = min(len(body), len(full))
    head = 0
    while head < limit and body[head] == full[head]:
        head += 1
    tail = 0
    while tail < limit - head and body[-1 - tail] == full[-1 - tail]:
        tail += 1
    flags = [False] * len(body)
    for i in range(head):
        flags[i] = in_query[i]
    for j in range(1, tail + 1):
        flags[-j] = in_query[-j]
    return flags + [False] * (len(ids) - len(body))


def query_token_mask(
    fmt: InputFormat,
    tokenizer: Any,
    queries: Sequence[str],
    passages: Sequence[str],
    batch: Mapping[str, Any],
) -> torch.Tensor:
    """(B, T) bool: True at the tokens of each input of ``batch`` that come from its query.

    ``batch``: ``fmt.encode(tokenizer, queries, passages)`` (any padding side). Pair formats
    (encoders): the query is the tokenizer's first sequence (``sequence_ids() == 0``; [CLS],
    [SEP] and the passage are not), in the same pair encoding and truncation as the format's.
    Text formats (decoders): a token is a query token when its character span (the tokenizer's
    offsets in ``fmt.template`` filled with the query and the whole passage) overlaps the query's
    characters. The format truncates only the passage, so the tokens before the cut (those
    equal to the untruncated encoding's first tokens) and after it (equal to its last tokens,
    the template text after the passage) are matched in place; the appended EOS is never a
    query token. Needs a fast (Rust) tokenizer, which gives character offsets.
    """
    import torch

    from hedonic_neurons.errors import ModelError

    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(
            f"query-token features need a fast tokenizer (character offsets); {type(tokenizer).__name__} "
            "is not one"
        )
    mask = batch["attention_mask"].bool()
    ids = batch["input_ids"]
    out = torch.zeros_like(mask)
    for b, (q, p) in enumerate(zip(queries, passages)):
        where = mask[b].nonzero().squeeze(-1)
        flags = _query_flags(fmt, tokenizer, q, p, ids[b, where].tolist())
        out[b, where[torch.tensor(flags, dtype=torch.bool, device=where.device)]] = True
    return out


def record_positions(
    nm: NeuronModel,
    pairs: Sequence[Any],
    layers: Sequence[int],
    batch_size: int,
    positions: Sequence[str] | None = None,
) -> dict[int, dict[str, np.ndarray]]:
    """Pooled neuron activations of every pair at each read position: ``{layer: {position: (pairs, n)}}``.

    One forward pass per batch (``nm.batches``, ending after the last layer) and a pre-hook on each
    layer's down projection (the neuron site) pool the batch's activations in float64: ``mean``
    over the non-pad tokens (what ``record(pooling="mean")`` gives), ``readout`` at the token the
    head reads (:func:`~hedonic_neurons.neurons.recording.readout_positions`), ``query`` the
    mean over the query tokens (:func:`query_token_mask`; zeros for an input whose query was cut
    off whole, which only a query longer than the format's ``max_length`` is). Only the pooled
    vectors are kept
    (float32), never per-token buffers. ``positions``: a subset of ``READ_POSITIONS`` (default:
    all of them; ``query`` only with a fast tokenizer).
    """
    import torch

    from hedonic_neurons.errors import ConfigError, arg
    from hedonic_neurons.evaluate.regression import READ_POSITIONS
    from hedonic_neurons.models.adapters import mlp_modules
    from hedonic_neurons.models.neuron_model import as_pair
    from hedonic_neurons.neurons.recording import (
        StopForward,
        check_layers,
        hooks,
        model_inputs,
        pool,
        readout_positions,
        run_forward,
    )

    if positions is None:
        positions = [p for p in READ_POSITIONS if p != "query" or getattr(nm.tokenizer, "is_fast", False)]
    unknown = [p for p in positions if p not in READ_POSITIONS]
    if unknown or not positions:
        raise ConfigError(f"{arg('positions')} {list(positions)}: expected some of {list(READ_POSITIONS)}")
    model = nm.model
    layers = check_layers(model, list(layers))
    kept: dict[int, dict[str, list[np.ndarray]]] = {layer: {p: [] for p in positions} for layer in layers}
    state: dict[str, torch.Tensor] = {}

    def hook_for(layer: int) -> Any:
        def hook(module: Any, args: tuple[Any, ...]) -> None:
            a = args[0].detach().to(torch.float64)
            for p in positions:
                if p == "mean":
                    got = pool(a, state["mask"], "mean")
                elif p == "readout":
                    got = pool(a, state["mask"], "last", state["readout"])
                else:
                    got = pool(a, state["query"], "mean")
                kept[layer][p].append(got.float().cpu().numpy())
            if layer == layers[-1]:
                raise StopForward

        return hook

    with torch.no_grad(), hooks() as hook_set:
        for layer in layers:
            hook_set.pre(mlp_modules(model, layer).down, hook_for(layer))
        for chunk, batch in nm.batches(pairs, batch_size):
            inputs = model_inputs(batch)
            state["mask"] = inputs["attention_mask"]
            state["readout"] = readout_positions(model, state["mask"])
            if "query" in positions:
                texts = [as_pair(item) for item in chunk]
                state["query"] = query_token_mask(
                    nm.input_format, nm.tokenizer, [q for q, _ in texts], [p for _, p in texts], batch
                ).to(state["mask"].device)
            run_forward(model, inputs)
    return {layer: {p: np.concatenate(v) for p, v in got.items()} for layer, got in kept.items()}
