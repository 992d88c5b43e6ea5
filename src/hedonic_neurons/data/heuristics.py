"""IR heuristic features per (query, passage) pair: BM25, query-term IDF statistics, coverage.

These are the regressors of the alignment evaluation. All tokenisation is
:func:`~hedonic_neurons.data.text.terms`.

- **Corpus.** ``corpus="pairs"`` (default): the distinct passages of the pair set (by pid), one
  BM25 index for all queries, so a passage scores the same against the same query wherever it
  appears. ``corpus="query"``: one index per query over that query's candidate passages (what the
  paper group's code does with ``rank_bm25``). IDF is computed from the same corpus.
- **bm25**: bm25s (``k1``, ``b``, ``method`` are recorded in ``features.params``); the query is
  its processed token list, so a repeated query term counts once per occurrence (standard BM25
  sum over query tokens).
- **idf_sum / idf_mean / idf_max**: over the *distinct* processed query terms, with the
  BM25/Lucene IDF ``log(1 + (N - df + 0.5) / (df + 0.5))`` (N = corpus size, df = number of corpus
  passages containing the term; always positive, finite for terms absent from the corpus), whatever
  the BM25 variant. A query with no term has all three equal to 0.
- **coverage**: the fraction of distinct query terms present in the passage (= CQTR).
- **matched_idf_sum**: the sum of the IDFs of the distinct query terms present in the passage;
  **idf_coverage**: that sum over ``idf_sum`` (IDF-weighted coverage, in [0, 1]; 0 for a query
  with no term).

The three IDF statistics are properties of the query alone: they take one value for every
passage of a query (``QUERY_FEATURES``), so as regressors of a per-pair activation they can only
shift whole queries. ``PASSAGE_FEATURES`` (bm25, coverage, matched_idf_sum, idf_coverage) vary
between the passages of a query and carry the IDF information at the passage level; they are
the regressors to use for alignment. ``FEATURES`` keeps the original five columns of
:meth:`HeuristicFeatures.matrix`; ``ALL_FEATURES`` names every column computed.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from hedonic_neurons.data.loaders import Pair
from hedonic_neurons.data.tasks import TermCache
from hedonic_neurons.data.text import cqtr_terms
from hedonic_neurons.errors import ConfigError, DataError

FEATURES = ("bm25", "idf_sum", "idf_mean", "idf_max", "coverage")
QUERY_FEATURES = ("idf_sum", "idf_mean", "idf_max")
PASSAGE_FEATURES = ("bm25", "coverage", "matched_idf_sum", "idf_coverage")
ALL_FEATURES = (*FEATURES, "matched_idf_sum", "idf_coverage")
BM25_METHODS = ("lucene", "robertson", "atire")
CORPORA = ("pairs", "query")


class HeuristicFeatures(dict):
    """{feature name: float64 array over pairs}, plus ``params`` (BM25 settings, corpus, formula)."""

    params: dict[str, Any]

    def matrix(self, names: Sequence[str] = FEATURES) -> np.ndarray:
        """The features as a (pairs, len(names)) float64 matrix, columns in ``names`` order."""
        return np.column_stack([self[n] for n in names])


def idf(df: int, n_docs: int) -> float:
    """The BM25/Lucene IDF ``log(1 + (N - df + 0.5) / (df + 0.5))``."""
    return math.log(1.0 + (n_docs - df + 0.5) / (df + 0.5))


def heuristic_features(
    pairs: Sequence[Pair], *, k1: float = 1.5, b: float = 0.75, method: str = "lucene", corpus: str = "pairs"
) -> HeuristicFeatures:
    """BM25, IDF statistics of the query terms and coverage for every pair (arrays in pair order).

    Defaults ``k1 = 1.5``, ``b = 0.75`` are the classic Okapi values (also rank_bm25's, the paper
    group's); ``method`` is the bm25s variant (``lucene``, ``robertson`` or ``atire``).
    """
    import bm25s

    if method not in BM25_METHODS:
        raise ConfigError(f"unknown BM25 method '{method}'; expected one of {', '.join(BM25_METHODS)}")
    if corpus not in CORPORA:
        raise ConfigError(f"unknown BM25 corpus '{corpus}'; expected one of {', '.join(CORPORA)}")
    if not pairs:
        raise DataError("no (query, passage) pairs; expected at least one to compute heuristic features")
    logging.getLogger("bm25s").setLevel(logging.WARNING)

    tok = TermCache()
    out = {name: np.zeros(len(pairs), dtype=np.float64) for name in ALL_FEATURES}
    groups: dict[str, list[int]] = {}
    for i, pair in enumerate(pairs):
        groups.setdefault(pair.qid if corpus == "query" else "", []).append(i)

    for idxs in groups.values():
        column: dict[str, int] = {}
        texts: list[str] = []
        for i in idxs:
            pid, text = pairs[i].pid, pairs[i].passage
            if pid not in column:
                column[pid] = len(texts)
                texts.append(text)
            elif texts[column[pid]] != text:
                raise DataError(f"passage id {pid!r} has two different texts; expected one text per pid")
        docs = [tok(t) for t in texts]
        df = Counter(t for doc in docs for t in set(doc))
        retriever = bm25s.BM25(k1=k1, b=b, method=method)
        retriever.index(docs, show_progress=False)
        by_query: dict[str, list[int]] = {}
        for i in idxs:
            by_query.setdefault(pairs[i].qid, []).append(i)
        for members in by_query.values():
            q_terms = tok(pairs[members[0]].query)
            known = [t for t in q_terms if t in retriever.vocab_dict]
            scores = retriever.get_scores(known) if known else np.zeros(len(docs))
            term_idf = {t: idf(df.get(t, 0), len(docs)) for t in sorted(set(q_terms))}
            idfs = list(term_idf.values())
            stats = (sum(idfs), sum(idfs) / len(idfs), max(idfs)) if idfs else (0.0, 0.0, 0.0)
            for i in members:
                p_terms = tok(pairs[i].passage)
                present = set(p_terms)
                matched = sum(v for t, v in term_idf.items() if t in present)
                out["bm25"][i] = scores[column[pairs[i].pid]]
                out["idf_sum"][i], out["idf_mean"][i], out["idf_max"][i] = stats
                out["coverage"][i] = cqtr_terms(q_terms, p_terms)
                out["matched_idf_sum"][i] = matched
                out["idf_coverage"][i] = matched / stats[0] if stats[0] > 0 else 0.0

    features = HeuristicFeatures(out)
    features.params = {
        "bm25": {"library": "bm25s", "version": bm25s.__version__, "k1": k1, "b": b, "method": method},
        "corpus": corpus,
        "corpus_description": (
            "distinct passages of the pair set" if corpus == "pairs" else "each query's candidate passages"
        ),
        "idf": "log(1 + (N - df + 0.5) / (df + 0.5)) over distinct query terms, same corpus",
        "coverage": "fraction of distinct query terms present in the passage (CQTR)",
        "matched_idf_sum": "sum of the IDFs of the distinct query terms present in the passage",
        "idf_coverage": "matched_idf_sum / idf_sum (0 for a query without terms)",
        "query_level": list(QUERY_FEATURES),
        "passage_level": list(PASSAGE_FEATURES),
        "tokenisation": "hedonic_neurons.data.text.terms",
    }
    return features
