"""The one text-processing function, and the two lexical task targets.

:func:`terms` is used for everything lexical in the project: the CQTR and Mean-TF/L targets,
IDF, coverage and BM25 tokenisation. It lower-cases the text, takes maximal runs of Unicode
letters and digits as tokens (``[^\\W_]+``: so "don't" gives "don" and "t", "e-mail" gives "e"
and "mail", underscores split words), and removes English stop words. The stop-word list is
scikit-learn's ``ENGLISH_STOP_WORDS`` (318 words, the Glasgow Information Retrieval Group list),
which has not changed across scikit-learn releases. No stemming.

Definitions for degenerate inputs (choices made here; the task definitions are silent):

- a query with no term after processing (empty, or only stop words) has CQTR = 0 and
  Mean-TF/L = 0;
- a passage with no term after processing has CQTR = 0 and Mean-TF/L = 0 (|d| = 0, no term can
  occur in it).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

STOP_WORDS: frozenset[str] = frozenset(ENGLISH_STOP_WORDS)
_TOKEN = re.compile(r"[^\W_]+")


def terms(text: str) -> list[str]:
    """Lower-cased alphanumeric word tokens of ``text`` with English stop words removed, in order.

    The one text-processing function of the project (targets, IDF, coverage, BM25).
    """
    return [t for t in _TOKEN.findall(text.lower()) if t not in STOP_WORDS]


def cqtr_terms(query_terms: Sequence[str], passage_terms: Sequence[str]) -> float:
    """Covered query term ratio from processed tokens: share of distinct query terms in the passage."""
    distinct = set(query_terms)
    if not distinct or not passage_terms:
        return 0.0
    present = set(passage_terms)
    return sum(t in present for t in distinct) / len(distinct)


def mean_tf_l_terms(query_terms: Sequence[str], passage_terms: Sequence[str]) -> float:
    """Mean over distinct query terms t of tf(t, d) / |d|, from processed tokens."""
    distinct = set(query_terms)
    if not distinct or not passage_terms:
        return 0.0
    tf = Counter(passage_terms)
    return sum(tf[t] for t in distinct) / (len(distinct) * len(passage_terms))


def cqtr(query: str, passage: str) -> float:
    """Covered Query Term Ratio: fraction of distinct query terms that occur in the passage."""
    return cqtr_terms(terms(query), terms(passage))


def mean_tf_l(query: str, passage: str) -> float:
    """Mean-TF/L: mean over distinct query terms of tf(t, d) / |d| (|d| = processed token count)."""
    return mean_tf_l_terms(terms(query), terms(passage))
