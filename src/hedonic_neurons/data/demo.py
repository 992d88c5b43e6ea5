"""The built-in **demo corpus**: real English text with queries and relevance labels, no files.

Built in about a second from the documentation that ships with Python itself, so it needs
neither a network nor the research data, and is the data of ``hedonic demo``:

- **Passages**: the paragraphs (split at blank lines, whitespace collapsed) of the docstrings of
  a fixed list of 1,420 standard-library functions, classes and methods
  (:data:`hedonic_neurons.data._demo_docs.OBJECTS`, chosen because their docstrings are identical
  on CPython 3.10–3.13), keeping paragraphs with at least 2 terms; identical paragraphs are one
  passage.
- **Queries**: one per object whose first paragraph is a passage: the words of the object's name
  (split at ``_``) followed by the terms (:func:`~hedonic_neurons.data.text.terms`) of the first
  sentence of that paragraph with every third one dropped, at most 7 terms; queries with fewer
  than 3 terms, or equal to an earlier query, are skipped.
- **Relevance**: grade 2 for the object's first paragraph, grade 1 for its other paragraphs, 0
  otherwise (a paragraph shared by several objects is relevant to each).
- **Candidates**: per query, the BM25 top-10 passages over the whole demo corpus (bm25s, Lucene
  variant, k1 = 1.5, b = 0.75; ties by passage id), i.e. hard negatives; if the grade-2 passage
  is not among them it replaces the 10th, so every list has its positive.
- **Splits** by query: train 70 % / val 15 % / test 15 %, seeded.

Everything is deterministic; ``metadata["sha256"]`` fingerprints the passages, queries and labels.
"""

from __future__ import annotations

import hashlib
import logging
import platform
import re

import numpy as np

from hedonic_neurons.data import _demo_docs
from hedonic_neurons.data.dataset import IRDataset, split_queries
from hedonic_neurons.data.loaders import Pair
from hedonic_neurons.data.text import terms

DEMO_NAME = "demo corpus (Python standard-library docstrings)"
DEPTH = 10
BM25 = {"k1": 1.5, "b": 0.75, "method": "lucene"}
_SENTENCE_END = re.compile(r"(?<=[.!?])\s")


class DemoCorpus(IRDataset):
    """The built-in demo corpus (an :class:`IRDataset` with ``train`` / ``val`` / ``test`` splits)."""


def _query(name: str, first_paragraph: str) -> list[str]:
    short = name.rsplit(".", 1)[-1].rsplit(":", 1)[-1]
    head = terms(short.replace("_", " "))
    sentence = _SENTENCE_END.split(first_paragraph, maxsplit=1)[0]
    rest = [t for k, t in enumerate(dict.fromkeys(terms(sentence))) if k % 3 != 2 and t not in head]
    return (head + rest)[:7]


def demo_corpus(*, seed: int = 0, depth: int = DEPTH) -> DemoCorpus:
    """Build the demo corpus (deterministic; about a second). See the module docstring."""
    import bm25s

    logging.getLogger("bm25s").setLevel(logging.WARNING)
    passages: list[str] = []
    pid_of: dict[str, int] = {}
    docs: list[tuple[str, list[int]]] = []  # (object name, passage indices of its paragraphs)
    missing = []
    for name in _demo_docs.OBJECTS:
        obj = _demo_docs.resolve(name)
        if obj is None:
            missing.append(name)
            continue
        idx = []
        for para in _demo_docs.paragraphs(obj):
            if len(terms(para)) < 2:
                continue
            if para not in pid_of:
                pid_of[para] = len(passages)
                passages.append(para)
            idx.append(pid_of[para])
        if idx:
            docs.append((name, idx))

    tokens = [terms(p) for p in passages]
    retriever = bm25s.BM25(**BM25)
    retriever.index(tokens, show_progress=False)
    pid = [f"p{i:04d}" for i in range(len(passages))]

    pairs: list[Pair] = []
    qrels: dict[str, dict[str, int]] = {}
    seen_queries: set[str] = set()
    for name, idx in docs:
        q_terms = _query(name, passages[idx[0]])
        query = " ".join(q_terms)
        if len(q_terms) < 3 or query in seen_queries:
            continue
        seen_queries.add(query)
        qid = f"q{len(qrels):04d}"
        judged = {pid[j]: 1 for j in idx}
        judged[pid[idx[0]]] = 2
        qrels[qid] = judged
        scores = retriever.get_scores([t for t in q_terms if t in retriever.vocab_dict])
        top = [int(j) for j in np.lexsort((np.arange(len(scores)), -scores))[:depth]]
        if idx[0] not in top:
            top[-1] = idx[0]
        pairs.extend(Pair(qid, pid[j], query, passages[j]) for j in top)

    digest = hashlib.sha256()
    for p in pairs:
        digest.update(f"{p.qid}\t{p.pid}\t{p.query}\t{p.passage}\t{qrels[p.qid].get(p.pid, 0)}\n".encode())
    splits = split_queries(list(qrels), {"train": 0.7, "val": 0.15, "test": 0.15}, seed=seed)
    return DemoCorpus(
        name=DEMO_NAME,
        pairs=pairs,
        qrels=qrels,
        splits=splits,
        metadata={
            "demo_corpus": True,
            "source": "docstrings of a fixed list of Python standard-library objects (hedonic_neurons.data._demo_docs)",
            "python": platform.python_version(),
            "n_objects": len(_demo_docs.OBJECTS) - len(missing),
            "missing_objects": missing,
            "n_passages": len(passages),
            "candidates": {
                "depth": depth,
                "bm25": {"library": "bm25s", **BM25},
                "corpus": "all demo passages",
            },
            "relevance": "2 = first paragraph of the object, 1 = its other paragraphs, 0 = other",
            "split": {"by": "query", "fractions": {"train": 0.7, "val": 0.15, "test": 0.15}, "seed": seed},
            "sha256": digest.hexdigest(),
        },
    )
