"""Task metrics: Pearson / Spearman / R² for the regression tasks, nDCG@10 for reranking.

nDCG@10 is trec_eval's ``ndcg_cut_10`` computed by pytrec_eval (graded gains, trec_eval's tie
order: score descending, then document id descending), averaged over the queries that are both
in the run and in the qrels (trec_eval without ``-c``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats
from sklearn.metrics import r2_score

from hedonic_neurons.data.loaders import Pair
from hedonic_neurons.errors import DataError


def regression_metrics(y_true: Sequence[float], y_pred: Sequence[float]) -> dict[str, float]:
    """``pearson``, ``spearman``, ``r2`` (sklearn's coefficient of determination) and ``n``.

    A correlation is NaN when either side is constant (it is undefined there).
    """
    t = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.asarray(y_pred, dtype=np.float64).ravel()
    if t.shape != p.shape:
        raise DataError(f"y_true has {t.size} values but y_pred has {p.size}; expected the same number")
    if t.size < 2:
        raise DataError(f"regression metrics need at least 2 values, got {t.size}")
    if not (np.isfinite(t).all() and np.isfinite(p).all()):
        raise DataError("regression metrics got non-finite values; expected finite targets and predictions")
    constant = np.ptp(t) == 0 or np.ptp(p) == 0
    pearson = math.nan if constant else float(stats.pearsonr(t, p).statistic)
    spearman = math.nan if constant else float(stats.spearmanr(t, p).statistic)
    return {"pearson": pearson, "spearman": spearman, "r2": float(r2_score(t, p)), "n": int(t.size)}


def scores_by_query(pairs: Sequence[Pair], scores: Sequence[float]) -> dict[str, dict[str, float]]:
    """{qid: {pid: score}} from pairs and their scores (the run format of :func:`ndcg_at_10`)."""
    if len(pairs) != len(scores):
        raise DataError(f"{len(pairs)} pairs but {len(scores)} scores; expected one score per pair")
    run: dict[str, dict[str, float]] = {}
    for pair, s in zip(pairs, scores):
        run.setdefault(pair.qid, {})[pair.pid] = float(s)
    return run


def ndcg_at_10_per_query(
    scores: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]]
) -> dict[str, float]:
    """trec_eval ``ndcg_cut_10`` per query (queries in both ``scores`` and ``qrels``)."""
    import pytrec_eval

    common = sorted(set(scores) & set(qrels))
    if not common:
        raise DataError("no query is both in the run and in the qrels; cannot compute nDCG@10")
    evaluator = pytrec_eval.RelevanceEvaluator({q: qrels[q] for q in common}, {"ndcg_cut_10"})
    run = {q: {p: float(s) for p, s in scores[q].items()} for q in common}
    return {q: float(v["ndcg_cut_10"]) for q, v in evaluator.evaluate(run).items()}


def ndcg_at_10(scores: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]]) -> float:
    """Mean trec_eval ``ndcg_cut_10`` over the queries in both the run and the qrels."""
    per_query = ndcg_at_10_per_query(scores, qrels)
    return float(np.mean(list(per_query.values())))
