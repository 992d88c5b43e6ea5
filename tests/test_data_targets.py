"""Text processing, the task targets, BM25 / IDF / coverage features and the task metrics,
each against a hand computation or a brute-force formula."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hedonic_neurons.data import (
    Pair,
    cqtr,
    heuristic_features,
    mean_tf_l,
    ndcg_at_10,
    regression_metrics,
    scores_by_query,
    task_targets,
    terms,
)
from hedonic_neurons.errors import ConfigError, DataError


def test_terms_lowercase_alphanumeric_no_stop_words():
    assert terms("The Cat's 2 dogs, and THE e-mail_id: naïve café!") == [
        "cat", "s", "2", "dogs", "e", "mail", "id", "naïve", "café"
    ]  # fmt: skip
    assert terms("") == [] and terms("the of and is") == []


def test_cqtr_and_mean_tf_l_by_hand():
    q = "Cats eat fish, cats sleep"  # distinct terms: cats, eat, fish, sleep
    d = "The cats sleep. Cats sleep often and eat"  # cats, sleep, cats, sleep, eat -> |d| = 5
    assert cqtr(q, d) == pytest.approx(3 / 4)
    # tf/|d|: cats 2/5, eat 1/5, fish 0, sleep 2/5 -> mean = 5 / 20
    assert mean_tf_l(q, d) == pytest.approx((2 + 1 + 0 + 2) / 5 / 4)
    for f in (cqtr, mean_tf_l):
        assert f("the of", d) == 0.0  # query without terms
        assert f(q, "and the") == 0.0  # passage without terms


PAIRS = [
    Pair("1", "a", "cats eat fish", "Cats eat fish. Fish fear cats."),
    Pair("1", "b", "cats eat fish", "Dogs bark at night."),
    Pair("2", "a", "fish night", "Cats eat fish. Fish fear cats."),
    Pair("2", "c", "fish night", "The night is dark and the night is long."),
]


def test_task_targets_match_the_text_functions_and_qrels():
    assert task_targets(PAIRS, "cqtr").tolist() == [cqtr(p.query, p.passage) for p in PAIRS]
    assert task_targets(PAIRS, "mean_tf_l").tolist() == [mean_tf_l(p.query, p.passage) for p in PAIRS]
    qrels = {"1": {"a": 2, "b": 0}, "2": {"c": 1}}
    assert task_targets(PAIRS, "rm", qrels).tolist() == [2, 0, 0, 1]  # (2, a) unjudged -> 0
    with pytest.raises(ConfigError, match="needs qrels"):
        task_targets(PAIRS, "rm")
    with pytest.raises(ConfigError, match="unknown task 'bm25'"):
        task_targets(PAIRS, "bm25")


def brute_bm25(query_terms, doc_terms, corpus_terms, k1, b, method):
    n = len(corpus_terms)
    avg = sum(map(len, corpus_terms)) / n
    score = 0.0
    for t in query_terms:  # every query token, repeats included
        df = sum(t in doc for doc in corpus_terms)
        tf = doc_terms.count(t)
        if df == 0:
            continue
        norm = k1 * (1 - b + b * len(doc_terms) / avg)
        if method == "lucene":
            score += math.log(1 + (n - df + 0.5) / (df + 0.5)) * tf / (tf + norm)
        elif method == "robertson":
            score += math.log(max((n - df + 0.5) / (df + 0.5), 1.0)) * tf / (tf + norm)
        else:  # atire
            score += math.log(n / df) * tf * (k1 + 1) / (tf + norm)
    return score


CORPUS_PAIRS = [
    Pair("1", "a", "fish fish night zebra", "Cats eat fish. Fish fear cats."),
    Pair("1", "b", "fish fish night zebra", "Dogs bark at night, every night, at the moon."),
    Pair("1", "c", "fish fish night zebra", "A fish swims."),
    Pair("2", "a", "cats dogs", "Cats eat fish. Fish fear cats."),
    Pair("2", "d", "cats dogs", "Birds sing in the morning and cats listen to the birds."),
    Pair("2", "e", "cats dogs", "Mice run."),
]


@pytest.mark.parametrize("method", ["lucene", "robertson", "atire"])
@pytest.mark.parametrize(("k1", "b"), [(1.5, 0.75), (0.9, 0.4)])
def test_bm25_matches_brute_force_formula(method, k1, b):
    feats = heuristic_features(CORPUS_PAIRS, k1=k1, b=b, method=method)
    docs = {p.pid: terms(p.passage) for p in CORPUS_PAIRS}
    corpus = list(docs.values())
    expected = [brute_bm25(terms(p.query), docs[p.pid], corpus, k1, b, method) for p in CORPUS_PAIRS]
    np.testing.assert_allclose(feats["bm25"], expected, rtol=1e-5, atol=1e-6)
    assert feats["bm25"][0] > 0 and feats.params["bm25"] | {"library": 0, "version": 0} == {
        "library": 0, "version": 0, "k1": k1, "b": b, "method": method
    }  # fmt: skip


def test_idf_statistics_and_coverage_by_hand():
    feats = heuristic_features(CORPUS_PAIRS)
    n = 5  # distinct pids a..e

    def idf(df):
        return math.log(1 + (n - df + 0.5) / (df + 0.5))

    q1 = [idf(2), idf(1), idf(0)]  # fish (a, c), night (b), zebra (none); repeats count once
    q2 = [idf(2), idf(1)]  # cats (a, d), dogs (b)
    for i, want in [(0, q1), (3, q2)]:
        assert feats["idf_sum"][i] == pytest.approx(sum(want))
        assert feats["idf_mean"][i] == pytest.approx(sum(want) / len(want))
        assert feats["idf_max"][i] == pytest.approx(max(want))
    np.testing.assert_allclose(feats["coverage"], [1 / 3, 1 / 3, 1 / 3, 1 / 2, 1 / 2, 0])
    assert feats.matrix().shape == (6, 5)


def test_per_query_corpus_uses_each_candidate_list():
    feats = heuristic_features(CORPUS_PAIRS, corpus="query")
    docs = [terms(p.passage) for p in CORPUS_PAIRS[:3]]
    want = [brute_bm25(terms(CORPUS_PAIRS[0].query), d, docs, 1.5, 0.75, "lucene") for d in docs]
    np.testing.assert_allclose(feats["bm25"][:3], want, rtol=1e-5)
    assert feats.params["corpus"] == "query"
    with pytest.raises(ConfigError, match="unknown BM25 method"):
        heuristic_features(CORPUS_PAIRS, method="bm42")
    with pytest.raises(DataError, match="two different texts"):
        heuristic_features([*CORPUS_PAIRS, Pair("3", "a", "x", "other text")])


def test_regression_metrics_by_hand():
    t = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    p = np.array([1.1, 1.9, 3.5, 3.9, 6.0])
    m = regression_metrics(t, p)
    assert m["pearson"] == pytest.approx(np.corrcoef(t, p)[0, 1])
    assert m["spearman"] == pytest.approx(1.0)  # same order
    assert m["r2"] == pytest.approx(1 - ((t - p) ** 2).sum() / ((t - t.mean()) ** 2).sum())
    assert math.isnan(regression_metrics(t, np.ones(5))["pearson"])
    with pytest.raises(DataError, match="same number"):
        regression_metrics(t, p[:3])


def test_ndcg_at_10_by_hand():
    qrels = {"q": {"a": 3, "b": 0, "c": 1, "z": 2}}  # z: judged but not retrieved
    run = scores_by_query(
        [Pair("q", x, "", "") for x in "abc"] + [Pair("other", "a", "", "")], [0.5, 2.0, 1.0, 9.0]
    )
    dcg = 0 / math.log2(2) + 1 / math.log2(3) + 3 / math.log2(4)  # order b, c, a (trec_eval gains)
    idcg = 3 / math.log2(2) + 2 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at_10(run, qrels) == pytest.approx(dcg / idcg)  # "other" has no qrels: not averaged
    with pytest.raises(DataError, match="no query is both"):
        ndcg_at_10({"x": {"a": 1.0}}, qrels)
