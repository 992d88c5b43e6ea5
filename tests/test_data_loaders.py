"""Loaders of the standard IR files: formats, .gz, and one-line errors naming file and line."""

from __future__ import annotations

import gzip

import pytest

from hedonic_neurons.data import (
    Pair,
    Triple,
    check_qrels_ids,
    from_ir_datasets,
    load_pairs,
    read_passages,
    read_qrels,
    read_queries,
    read_rerank_input,
    read_run,
    read_triples,
)
from hedonic_neurons.errors import DataError


def write(tmp_path, name, text):
    path = tmp_path / name
    if name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_queries_and_passages(tmp_path):
    q = write(tmp_path, "q.tsv", "1\twhat is a cat\n2\tdog food\n")
    assert read_queries(q) == {"1": "what is a cat", "2": "dog food"}
    p = write(tmp_path, "p.tsv", "10\tCats are small.\r\n\n11\tDogs eat food.\n")
    assert read_passages(p) == {"10": "Cats are small.", "11": "Dogs eat food."}


def test_qrels_trec_and_msmarco_variants(tmp_path):
    trec = write(tmp_path, "qrels.txt", "1 0 10 3\n1 0 11 0\n2 0 10 1\n")
    tab = write(tmp_path, "qrels.tsv", "1\t0\t10\t3\n1\t0\t11\t0\n2\t0\t10\t1\n")
    expected = {"1": {"10": 3, "11": 0}, "2": {"10": 1}}
    assert read_qrels(trec) == expected
    assert read_qrels(tab) == expected


def test_rerank_input_gz_run_triples(tmp_path):
    rows = "1\t10\twhat is a cat\tCats are small.\n1\t11\twhat is a cat\tDogs eat food.\n"
    plain = read_rerank_input(write(tmp_path, "top.tsv", rows))
    zipped = read_rerank_input(write(tmp_path, "top.tsv.gz", rows))
    assert (
        plain
        == zipped
        == [
            Pair("1", "10", "what is a cat", "Cats are small."),
            Pair("1", "11", "what is a cat", "Dogs eat food."),
        ]
    )
    assert load_pairs(tmp_path / "top.tsv.gz") == plain
    run = write(tmp_path, "r.trec", "1 Q0 10 1 12.5 bm25\n1 Q0 11 2 3 bm25\n2\tQ0\t10\t1\t-1e-3\tbm25\n")
    assert read_run(run) == {"1": {"10": 12.5, "11": 3.0}, "2": {"10": -0.001}}
    tri = write(tmp_path, "t.tsv", "cat\tCats are small.\tDogs eat food.\n")
    assert read_triples(tri) == [Triple("cat", "Cats are small.", "Dogs eat food.")]


@pytest.mark.parametrize(
    ("reader", "text", "needle"),
    [
        (read_queries, "1\tok\n2 no tab here\n", "bad.tsv:2: expected 2 tab-separated fields"),
        (read_queries, "1\tok\n1\tagain\n", "bad.tsv:2: qid '1' appears twice"),
        (read_passages, "10\t\n", "bad.tsv:1: expected 2 tab-separated fields 'pid \\t text', got an empty"),
        (read_qrels, "1 0 10 3\n1 0 10\n", "bad.tsv:2: expected 4 fields 'qid iter pid grade'"),
        (read_qrels, "1 0 10 high\n", "bad.tsv:1: expected an integer relevance grade, got 'high'"),
        (read_qrels, "1 0 10 1\n1 0 10 2\n", "bad.tsv:2: (1, 10) is judged twice"),
        (read_rerank_input, "1\t10\tq\n", "bad.tsv:1: expected 4 tab-separated fields"),
        (read_rerank_input, "1\t10\tq\tp\n1\t10\tq\tp\n", "bad.tsv:2: pair (1, 10) appears twice"),
        (read_run, "1 Q0 10 1 x bm25\n", "bad.tsv:1: expected a numeric score, got 'x'"),
        (read_run, "1 Q0 10 one 1.0 bm25\n", "bad.tsv:1: expected an integer rank, got 'one'"),
        (read_triples, "q\tpos\n", "bad.tsv:1: expected 3 tab-separated fields"),
    ],
)
def test_malformed_rows_name_file_line_and_expectation(tmp_path, reader, text, needle):
    path = write(tmp_path, "bad.tsv", text)
    with pytest.raises(DataError) as err:
        reader(path)
    message = str(err.value)
    assert needle in message
    assert "\n" not in message


@pytest.mark.parametrize("reader", [read_queries, read_qrels, read_rerank_input, read_run, read_triples])
def test_empty_and_missing_files(tmp_path, reader):
    empty = write(tmp_path, "empty.tsv", "\n  \n")
    with pytest.raises(DataError, match=r"empty\.tsv: file is empty; expected"):
        reader(empty)
    with pytest.raises(DataError, match=r"nope\.tsv: file not found"):
        reader(tmp_path / "nope.tsv")


def test_corrupt_gzip_is_a_data_error(tmp_path):
    path = tmp_path / "x.tsv.gz"
    path.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=r"x\.tsv\.gz: cannot read"):
        read_rerank_input(path)


def test_qrels_with_unknown_ids(tmp_path):
    path = write(tmp_path, "qrels.txt", "1 0 10 1\n3 0 12 1\n")
    assert read_qrels(path, known_qids={"1", "3"}, known_pids={"10", "12"})
    with pytest.raises(DataError, match=r"1 unknown query id\(s\) \(3\); expected only ids of the 2 known"):
        read_qrels(path, known_qids={"1", "2"})
    with pytest.raises(DataError, match=r"1 unknown passage id\(s\) \(12\)"):
        check_qrels_ids(read_qrels(path), known_pids={"10"})


def test_ir_datasets_missing_is_a_clear_error():
    try:
        import ir_datasets  # noqa: F401
    except ImportError:
        with pytest.raises(DataError, match="ir_datasets is not installed"):
            from_ir_datasets("msmarco-passage/trec-dl-2019/judged")
    else:
        pytest.skip("ir_datasets is installed; its loader needs a network, not exercised in tests")
