"""OOD drop (the legacy table): how much the task metric falls when a coalition is ablated jointly.

The ablation reverts every neuron of the coalition to its reference (pre-fine-tuning) weights in
one forward pass per batch; all coalitions of a layer go through the same batched pass
(:func:`hedonic_neurons.neurons.ablation_logits`). The metric is nDCG@10 for RM and, for the
regression tasks, R² between the model's output and the true target.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from hedonic_neurons.data.loaders import Pair
from hedonic_neurons.data.metrics import ndcg_at_10, regression_metrics, scores_by_query


def task_metric(
    task: str, pairs: Sequence[Pair], outputs: np.ndarray, targets: np.ndarray, qrels=None
) -> float:
    """nDCG@10 (RM, needs ``qrels``) or R² of ``outputs`` against ``targets`` (CQTR, Mean-TF/L)."""
    if task == "rm":
        return ndcg_at_10(scores_by_query(pairs, outputs.tolist()), qrels)
    return regression_metrics(targets, outputs)["r2"]


@torch.no_grad()
def ablated_outputs(
    nm,
    pairs: Sequence[Pair],
    layer: int,
    coalitions: Sequence[Sequence[int]],
    *,
    batch_size: int = 16,
    mode: str = "reference",
    max_rows: int = 256,
    progress=None,
) -> tuple[np.ndarray, np.ndarray]:
    """Model outputs on ``pairs``: unablated (P,) and with each coalition ablated (K, P).

    ``max_rows`` bounds the sequences (ablation sets x pairs) in one forward pass.
    """
    from hedonic_neurons.neurons import ablation_logits

    reference = nm.reference_mlp_weights(layer) if mode == "reference" else None
    sets = [[]] + [list(c) for c in coalitions]
    chunks = []
    for chunk, batch in nm.batches(pairs, batch_size):
        out = ablation_logits(
            nm.model, batch, layer, sets, mode=mode, reference=reference, readout="full", max_batch=max_rows
        )
        chunks.append(out.float().cpu().numpy())
        if progress is not None:
            progress.update(len(chunk))
    allout = np.concatenate(chunks, axis=1)
    return allout[0], allout[1:]


def ood_drops(
    task: str,
    pairs: Sequence[Pair],
    targets: np.ndarray,
    base: np.ndarray,
    ablated: np.ndarray,
    qrels=None,
) -> np.ndarray:
    """Metric(unablated) − metric(ablated) for each row of ``ablated`` (K,)."""
    ref = task_metric(task, pairs, base, targets, qrels)
    return np.array([ref - task_metric(task, pairs, row, targets, qrels) for row in ablated])


def ood_drop_replicates(
    task: str,
    pairs: Sequence[Pair],
    targets: np.ndarray,
    base: np.ndarray,
    ablated: np.ndarray,
    query_weights: np.ndarray,
    qrels=None,
) -> np.ndarray:
    """:func:`ood_drops` on query-bootstrap resamples of ``pairs``: (K, B).

    ``query_weights`` (B, Q): how often each query (in sorted query-id order) is drawn in
    bootstrap sample b (:func:`~hedonic_neurons.evaluate.stats.bootstrap_weights`). For RM the
    drop is the weighted mean of the per-query nDCG@10 drops (queries without judgements left
    out); for the regression tasks R²(unablated) − R²(ablated), each pair weighted by its query's
    count (:func:`~hedonic_neurons.evaluate.stats.weighted_r2`)."""
    from hedonic_neurons.data.metrics import ndcg_at_10_per_query
    from hedonic_neurons.evaluate.stats import weighted_means, weighted_r2

    names, codes = np.unique([p.qid for p in pairs], return_inverse=True)
    w = np.asarray(query_weights, dtype=np.float64)
    if w.ndim != 2 or w.shape[1] != names.size:
        raise ValueError(f"query_weights must be (B, {names.size}), got {w.shape}")
    if task == "rm":
        ref = ndcg_at_10_per_query(scores_by_query(pairs, base.tolist()), qrels)
        per_q = np.full((len(ablated), names.size), np.nan)
        for k, row in enumerate(ablated):
            got = ndcg_at_10_per_query(scores_by_query(pairs, row.tolist()), qrels)
            for j, q in enumerate(names):
                if q in got:
                    per_q[k, j] = ref[q] - got[q]
        return weighted_means(per_q, w).T
    pair_w = w[:, codes.ravel()]
    ref = weighted_r2(targets, base, pair_w)
    return (
        np.stack([ref - weighted_r2(targets, row, pair_w) for row in ablated])
        if len(ablated)
        else np.zeros((0, w.shape[0]))
    )
