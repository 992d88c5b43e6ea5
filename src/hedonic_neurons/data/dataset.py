"""The dataset type of the data package: :class:`IRDataset` and its query-level split.

The bottom of the data package (it imports only the loaders' :class:`Pair`): the named datasets
(:mod:`hedonic_neurons.data.splits`) and the demo corpus (:mod:`hedonic_neurons.data.demo`) both
build on it, so neither imports the other for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hedonic_neurons.data.loaders import Pair
from hedonic_neurons.errors import ConfigError, DataError

__all__ = ["IRDataset", "split_queries"]


@dataclass
class IRDataset:
    """Pairs (grouped by query, candidate order kept), qrels and a query split."""

    name: str
    pairs: list[Pair]
    qrels: dict[str, dict[str, int]]
    splits: dict[str, list[str]]  # split name -> sorted qids
    metadata: dict[str, Any] = field(default_factory=dict)

    def split_pairs(self, split: str) -> list[Pair]:
        """The pairs whose query is in ``split`` (order kept)."""
        if split not in self.splits:
            raise ConfigError(f"{self.name} has no split '{split}'; expected one of {', '.join(self.splits)}")
        wanted = set(self.splits[split])
        return [p for p in self.pairs if p.qid in wanted]

    def describe(self) -> dict[str, Any]:
        """JSON-safe summary: name, counts per split, metadata."""
        return {
            "name": self.name,
            "n_pairs": len(self.pairs),
            "n_queries": len({p.qid for p in self.pairs}),
            "splits": {k: len(v) for k, v in self.splits.items()},
            **self.metadata,
        }


def split_queries(qids: Sequence[str], fractions: dict[str, float], *, seed: int = 0) -> dict[str, list[str]]:
    """Partition distinct ``qids`` into named parts of the given fractions (seeded, sorted qids first).

    Sizes are ``round(fraction * n)`` for all parts but the last, which takes the rest; every qid
    lands in exactly one part.
    """
    qids = sorted(set(qids))
    if not qids:
        raise DataError("no queries to split")
    total = sum(fractions.values())
    if any(f < 0 for f in fractions.values()) or abs(total - 1.0) > 1e-9:
        raise ConfigError(f"split fractions must be >= 0 and sum to 1, got {fractions}")
    order = np.random.default_rng(seed).permutation(len(qids))
    out: dict[str, list[str]] = {}
    start = 0
    names = list(fractions)
    for k, name in enumerate(names):
        stop = len(qids) if k == len(names) - 1 else start + round(fractions[name] * len(qids))
        out[name] = sorted(qids[i] for i in order[start:stop])
        start = stop
    return out
