"""Named datasets, query-level splits, the built-in demo corpus, and the shared-data checks
(nDCG@10 of the published BM25 run on TREC DL 2019)."""

from __future__ import annotations

import hashlib
import json

import pytest

from hedonic_neurons.data import (
    DEMO_NAME,
    _demo_docs,
    demo_corpus,
    dl19,
    load_pairs,
    msmarco_dev,
    ndcg_at_10,
    query_ids,
    read_qrels,
    read_run,
    split_queries,
    top_per_query,
)
from hedonic_neurons.errors import ConfigError


def assert_partition(splits, qids):
    parts = [set(v) for v in splits.values()]
    assert sum(map(len, parts)) == len(set().union(*parts)) == len(set(qids))  # disjoint
    assert set().union(*parts) == set(qids)  # covering


def test_split_queries_partition_and_seed():
    qids = [f"q{i}" for i in range(101)]
    a = split_queries(qids, {"train": 0.7, "val": 0.15, "test": 0.15}, seed=0)
    assert_partition(a, qids)
    assert [len(v) for v in a.values()] == [71, 15, 15]
    assert a == split_queries(list(reversed(qids)), {"train": 0.7, "val": 0.15, "test": 0.15}, seed=0)
    assert a != split_queries(qids, {"train": 0.7, "val": 0.15, "test": 0.15}, seed=1)
    with pytest.raises(ConfigError, match="sum to 1"):
        split_queries(qids, {"train": 0.7, "val": 0.7})


@pytest.fixture(scope="module")
def demo():
    return demo_corpus()


def test_demo_corpus_size_labels_and_splits(demo):
    assert len(demo.pairs) >= 2000
    assert "demo corpus" in demo.name and demo.name == DEMO_NAME and demo.metadata["demo_corpus"] is True
    assert_partition(demo.splits, query_ids(demo.pairs))
    assert set(demo.splits) == {"train", "val", "test"}
    train, test = demo.split_pairs("train"), demo.split_pairs("test")
    assert {p.qid for p in train}.isdisjoint({p.qid for p in test})
    by_query = {}
    for p in demo.pairs:
        by_query.setdefault(p.qid, []).append(p)
    assert set(by_query) == set(demo.qrels)
    for qid, cands in by_query.items():  # every list: 10 distinct candidates, exactly one grade-2 positive
        assert len({p.pid for p in cands}) == len(cands) == 10
        assert sum(demo.qrels[qid].get(p.pid, 0) == 2 for p in cands) == 1
    assert load_pairs("demo") == demo.pairs


def test_demo_corpus_is_deterministic(demo):
    again = demo_corpus()
    assert again.pairs == demo.pairs and again.qrels == demo.qrels and again.splits == demo.splits
    assert again.metadata["sha256"] == demo.metadata["sha256"]


def test_demo_source_text_is_the_one_checked_on_python_310_to_313():
    # sha256 of `python _demo_docs.py objects`, identical on CPython 3.10.13, 3.11.7, 3.12.1, 3.13.0
    text = json.dumps({n: _demo_docs.paragraphs(_demo_docs.resolve(n)) for n in _demo_docs.OBJECTS},
                      indent=0, sort_keys=True)  # fmt: skip
    digest = hashlib.sha256(text.encode()).hexdigest()
    assert digest == "04d0a2b3d2de8cba5e6bce1ff5205ea0568ebc512559d5b77617205bffd56c16"


def test_bm25_run_ndcg_on_dl19_is_0_5058(shared_ir):
    qrels = read_qrels(shared_ir / "dl19" / "qrels.txt")
    run = read_run(shared_ir / "dl19" / "runs" / "bm25.trec")
    assert round(ndcg_at_10(run, qrels), 4) == 0.5058


def test_msmarco_dev_split_by_query(shared_ir):
    ds = msmarco_dev(shared_ir, seed=0)
    qids = query_ids(ds.pairs)
    assert len(ds.pairs) == 12000 and len(qids) == 600
    assert_partition(ds.splits, qids)
    assert (len(ds.splits["train"]), len(ds.splits["val"])) == (480, 120)
    assert {p.qid for p in ds.split_pairs("train")}.isdisjoint({p.qid for p in ds.split_pairs("val")})
    assert set(ds.qrels) <= set(qids) and sum(map(len, ds.qrels.values())) == 600
    assert msmarco_dev(shared_ir, seed=1).splits != ds.splits


def test_dl19_is_test_only(shared_ir):
    ds = dl19(shared_ir)
    assert len(ds.pairs) == 4300 and list(ds.splits) == ["test"] and len(ds.splits["test"]) == 43
    assert sum(map(len, ds.qrels.values())) == 9260  # full NIST qrels, judged pids without text kept


def test_top_per_query_keeps_file_order_and_first_stage_ndcg(shared_ir):
    from hedonic_neurons.data import Pair

    pairs = [Pair(q, f"{q}{i}", "", "") for q in "ab" for i in range(4)] + [Pair("a", "a9", "", "")]
    assert [p.pid for p in top_per_query(pairs, 2)] == ["a0", "a1", "b0", "b1"]
    ds = dl19(shared_ir)
    top30 = top_per_query(ds.pairs, 30)
    assert len(top30) == 43 * 30
    # reranking the BM25 top-30 (file order) leaves BM25's own nDCG@10 at 0.5058
    rank: dict[str, int] = {}
    run: dict[str, dict[str, float]] = {}
    for p in top30:
        rank[p.qid] = rank.get(p.qid, 0) + 1
        run.setdefault(p.qid, {})[p.pid] = -rank[p.qid]
    assert round(ndcg_at_10(run, ds.qrels), 4) == 0.5058


def test_demo_corpus_is_the_same_inside_the_command_line():
    """The demo corpus is built from live docstrings; the CLI's note printer replaces
    warnings.showwarning, which must not change the corpus (hedonic run vs pipeline.run)."""
    from hedonic_neurons import cli
    from hedonic_neurons.data.demo import demo_corpus

    outside = demo_corpus(seed=0).split_pairs("train")
    with cli._notes_as_lines():
        inside = demo_corpus(seed=0).split_pairs("train")
    assert [(p.qid, p.pid) for p in inside] == [(p.qid, p.pid) for p in outside]
