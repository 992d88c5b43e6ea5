"""The extrinsic table: the paper's per-coalition measures, one row per (method, layer, seed).

For every method the coalitions are chosen the same way: the reference method's ``top_k``
largest coalitions (size >= ``min_size``) set the target sizes, and every method — the other
hedonic partition included — is size-matched to them (:func:`size_matched`: a distinct coalition
at least that large, subsampled to the size). A row then holds, averaged over its coalitions:

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
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from hedonic_neurons.data.loaders import Pair

if TYPE_CHECKING:
    from hedonic_neurons.models.neuron_model import NeuronModel


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
        cls, task: str, train: Sequence[Pair], test: Sequence[Pair], y_train: Any, y_test: Any, test_qrels: Any
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
    acts_train: np.ndarray,
    acts_test: np.ndarray,
    k: int,
    top_k: int,
    min_size: int,
    certify_samples: int,
    batch_size: int,
    null_sets: int = 20,
    progress: Any = None,
) -> list[dict[str, Any]]:
    """The extrinsic rows of one layer; ``partitions[seed][method]`` are the full partitions.

    One batched ablation pass over the test pairs serves every distinct coalition of the layer.
    """
    from hedonic_neurons.evaluate.ood import ablated_outputs, ood_drops
    from hedonic_neurons.evaluate.regression import (
        alignment_evaluation,
        coalition_matrix,
        random_set_null,
        ridge_evaluation,
    )
    from hedonic_neurons.explore import mean_pairwise_phi
    from hedonic_neurons.game import certificates

    phi = phis[phi_metric]
    plan = {
        seed: chosen_coalitions(parts, reference_method, top_k=top_k, min_size=min_size, seed=seed)
        for seed, parts in partitions.items()
    }
    unique = sorted({tuple(c) for per in plan.values() for chosen, _ in per.values() for c in chosen})
    base, ablated = ablated_outputs(
        nm, data.test, layer, [list(c) for c in unique], batch_size=batch_size, progress=progress
    )
    drops = ood_drops(data.task, data.test, data.y_test, base, ablated, data.test_qrels)
    drop_of = dict(zip(unique, drops))
    n = acts_train.shape[1]
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
                row["ood_drop"] = float(np.mean([drop_of[tuple(c)] for c in chosen]))
                mat = coalition_matrix(chosen, n)
                c_train, c_test = acts_train @ mat, acts_test @ mat
                al = alignment_evaluation(
                    c_train, data.heur_train, g_train, c_test, data.heur_test, g_test,
                    feature_names=data.features, seed=seed,
                )  # fmt: skip
                row["alignment_r2"] = al["r2_cv"]
                row["alignment_r2_ood"] = al["r2_ood"]
                row["alignment_r2_ood_refit"] = al["r2_ood_refit"]
                rd = ridge_evaluation(c_train, data.y_train, g_train, c_test, data.y_test, g_test, seed=seed, **ridge_kw)
                row["ridge_r2"], row["ridge_alpha"] = rd["r2_cv"], rd["alpha"]
                for key in ("r2_ood", "r2_ood_refit", "r2_ood_constant"):
                    row[f"ridge_{key}"] = rd[key]
                if rm:
                    row["ridge_ndcg10"] = rd.get("ndcg10_ood")

                def score(coalitions: Sequence[Sequence[int]]) -> float:
                    x = acts_train @ coalition_matrix(coalitions, n)
                    return ridge_evaluation(x, data.y_train, g_train, nested=False, per_query=rm)["r2_cv"]

                null = random_set_null(
                    score, [len(c) for c in chosen], n, n_sets=null_sets, seed=seed, observed=row["ridge_r2"]
                )
                row["ridge_null_percentile"] = null["percentile"]
                row["ridge_null_median"] = null["q50"]
                row["synergy"] = float(np.mean([mean_pairwise_phi(phi, c) or 0.0 for c in chosen]))
            rows.append(row)
    return rows
