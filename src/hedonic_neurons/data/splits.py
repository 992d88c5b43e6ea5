"""Named datasets and query-level splits (issue 3 item 6).

A dataset is an :class:`IRDataset`: pairs, qrels and a split of its *queries* (no query is on two
sides). Named datasets:

- ``msmarco-dev``: the MS MARCO dev subset in the shared data folder (BM25 top-20 for 600
  ``dev.small`` queries, ``top20.bm25.dev600.tsv``; qrels ``qrels.dev.small.tsv`` restricted to
  those queries), split by query into ``train`` and ``val`` (seeded);
- ``dl19``: TREC DL 2019 passage, BM25 top-100 rerank input with NIST's full graded qrels; split
  ``test`` only (out-of-domain test data, never trained on);
- ``demo``: the built-in demo corpus (:mod:`hedonic_neurons.data.demo`), no files needed.

The research data is read from the shared folder (``root``; default ``$HEDONIC_SHARED_IR``, else
``../shared/data/ir`` from the working directory) and never copied.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from hedonic_neurons.data.dataset import IRDataset, split_queries
from hedonic_neurons.data.loaders import Pair, check_qrels_ids, read_qrels, read_rerank_input
from hedonic_neurons.errors import ConfigError, DataError

__all__ = [
    "DATASETS",
    "IRDataset",
    "dl19",
    "load_dataset",
    "load_pairs",
    "msmarco_dev",
    "query_ids",
    "shared_ir_root",
    "split_queries",
    "top_per_query",
]

DATASETS = ("demo", "msmarco-dev", "dl19")


def query_ids(pairs: Sequence[Pair]) -> list[str]:
    """Distinct qids in first-appearance order."""
    return list(dict.fromkeys(p.qid for p in pairs))


def top_per_query(pairs: Sequence[Pair], depth: int) -> list[Pair]:
    """The first ``depth`` pairs of each query, in file order (a first-stage top-``depth``)."""
    seen: dict[str, int] = {}
    out = []
    for p in pairs:
        seen[p.qid] = seen.get(p.qid, 0) + 1
        if seen[p.qid] <= depth:
            out.append(p)
    return out


def shared_ir_root(root: str | os.PathLike | None = None) -> Path:
    """The shared IR data folder: ``root``, else ``$HEDONIC_SHARED_IR``, else ``./../shared/data/ir``."""
    tried = [Path(root)] if root else []
    if not root:
        if os.environ.get("HEDONIC_SHARED_IR"):
            tried.append(Path(os.environ["HEDONIC_SHARED_IR"]))
        tried.append(Path.cwd().parent / "shared" / "data" / "ir")
    for path in tried:
        if (path / "dl19").is_dir() or (path / "msmarco_dev").is_dir():
            return path
    raise DataError(
        f"shared IR data folder not found (tried {', '.join(map(str, tried))}); "
        "expected a folder with msmarco_dev/ and dl19/ (set HEDONIC_SHARED_IR or pass --data-root)"
    )


def msmarco_dev(
    root: str | os.PathLike | None = None, *, val_fraction: float = 0.2, seed: int = 0
) -> IRDataset:
    """MS MARCO dev subset (600 queries x BM25 top-20) split by query into ``train`` / ``val``."""
    base = shared_ir_root(root) / "msmarco_dev"
    pairs = read_rerank_input(base / "top20.bm25.dev600.tsv")
    qids = query_ids(pairs)
    all_qrels = read_qrels(base / "qrels.dev.small.tsv")
    qrels = {q: all_qrels[q] for q in qids if q in all_qrels}
    check_qrels_ids(qrels, known_qids=qids, source=str(base / "qrels.dev.small.tsv"))
    splits = split_queries(qids, {"train": 1.0 - val_fraction, "val": val_fraction}, seed=seed)
    return IRDataset(
        name="msmarco-dev",
        pairs=pairs,
        qrels=qrels,
        splits=splits,
        metadata={
            "files": ["msmarco_dev/top20.bm25.dev600.tsv", "msmarco_dev/qrels.dev.small.tsv"],
            "split": {"by": "query", "val_fraction": val_fraction, "seed": seed},
            "note": "MS MARCO dev.small subset (BM25 top-20); used for training and validation",
        },
    )


def dl19(root: str | os.PathLike | None = None) -> IRDataset:
    """TREC DL 2019 passage: BM25 top-100 rerank input and full NIST qrels; split ``test`` only."""
    base = shared_ir_root(root) / "dl19"
    pairs = read_rerank_input(base / "rerank_input.bm25_top100.tsv.gz")
    qids = query_ids(pairs)
    qrels = read_qrels(base / "qrels.txt", known_qids=qids)
    return IRDataset(
        name="dl19",
        pairs=pairs,
        qrels=qrels,
        splits={"test": sorted(qids)},
        metadata={
            "files": ["dl19/rerank_input.bm25_top100.tsv.gz", "dl19/qrels.txt"],
            "note": "TREC DL 2019 passage, BM25 top-100; out-of-domain test only",
        },
    )


def load_dataset(name: str, root: str | os.PathLike | None = None, *, seed: int = 0) -> IRDataset:
    """A named dataset: ``demo``, ``msmarco-dev`` or ``dl19``."""
    if name == "demo":
        from hedonic_neurons.data.demo import demo_corpus

        return demo_corpus(seed=seed)
    if name == "msmarco-dev":
        return msmarco_dev(root, seed=seed)
    if name == "dl19":
        return dl19(root)
    raise ConfigError(f"unknown dataset '{name}'; expected one of {', '.join(DATASETS)} or a TSV path")


def load_pairs(spec: str | os.PathLike) -> list[Pair]:
    """Pairs for ``hedonic collect --data``: ``"demo"`` (built-in demo corpus), a dataset name, or a
    path to a top1000-style TSV (``qid \\t pid \\t query \\t passage``, .gz ok)."""
    if str(spec) in DATASETS:
        return load_dataset(str(spec)).pairs
    return read_rerank_input(spec)
