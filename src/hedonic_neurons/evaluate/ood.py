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
