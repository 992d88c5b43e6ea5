"""The three scalar tasks' targets per (query, passage) pair.

- ``cqtr``: Covered Query Term Ratio (:func:`~hedonic_neurons.data.text.cqtr`);
- ``mean_tf_l``: Mean-TF/L (:func:`~hedonic_neurons.data.text.mean_tf_l`);
- ``rm``: graded relevance from qrels; a pair the qrels do not judge gets 0 (the TREC convention:
  unjudged counts as not relevant).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hedonic_neurons.data.loaders import Pair
from hedonic_neurons.data.text import cqtr_terms, mean_tf_l_terms, terms
from hedonic_neurons.errors import ConfigError

TASKS = ("cqtr", "mean_tf_l", "rm")


def check_task(task: str) -> str:
    """``task`` if it is one of :data:`TASKS`, else a ConfigError."""
    if task not in TASKS:
        raise ConfigError(f"unknown task '{task}'; expected one of {', '.join(TASKS)}")
    return task


class TermCache:
    """Memoised :func:`terms` (a query appears in many pairs, a passage in several lists)."""

    def __init__(self) -> None:
        self._cache: dict[str, list[str]] = {}

    def __call__(self, text: str) -> list[str]:
        got = self._cache.get(text)
        if got is None:
            got = self._cache[text] = terms(text)
        return got


def task_targets(
    pairs: Sequence[Pair], task: str, qrels: dict[str, dict[str, int]] | None = None
) -> np.ndarray:
    """Target of ``task`` for every pair, float64 array in pair order (``rm`` needs ``qrels``)."""
    check_task(task)
    if task == "rm":
        if qrels is None:
            raise ConfigError("task 'rm' needs qrels (relevance judgements); none were given")
        return np.array([qrels.get(p.qid, {}).get(p.pid, 0) for p in pairs], dtype=np.float64)
    fn = cqtr_terms if task == "cqtr" else mean_tf_l_terms
    tok = TermCache()
    return np.array([fn(tok(p.query), tok(p.passage)) for p in pairs], dtype=np.float64)
