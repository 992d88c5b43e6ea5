"""Loaders for the standard IR files (MS MARCO / TREC formats).

Every loader reads UTF-8 text (a byte-order mark at the start is dropped), transparently gunzips
files whose name ends in ``.gz``, and raises :class:`~hedonic_neurons.errors.DataError` with
``file:line: what was expected`` on the first malformed row, and a clear error for a missing or
empty file. A header row (column names such as ``qid \t pid \t query \t passage`` on the first
line) is recognised and skipped with a note (:class:`~hedonic_neurons.errors.HedonicNote`), never
read as data. Ids are kept as strings (MS MARCO ids are strings of digits). Formats:

- queries / passages: ``id \\t text``
- qrels: ``qid <iter> pid grade`` separated by spaces or tabs (TREC four-column, and the MS MARCO
  tab variant ``qid \\t 0 \\t pid \\t 1``); ``grade`` an integer
- rerank input (top1000-style): ``qid \\t pid \\t query \\t passage``
- TREC run: ``qid Q0 pid rank score name`` (spaces or tabs)
- triples: ``query \\t positive passage \\t negative passage``
"""

from __future__ import annotations

import gzip
import os
import re
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from hedonic_neurons.errors import DataError, HedonicNote

PathLike = str | os.PathLike


@dataclass(frozen=True)
class Pair:
    """One (query, passage) pair with its ids."""

    qid: str
    pid: str
    query: str
    passage: str


class Triple(NamedTuple):
    """One training triple (no ids in the MS MARCO triples files)."""

    query: str
    positive: str
    negative: str


def _lines(path: PathLike, what: str) -> Iterator[tuple[int, str]]:
    """Yield (line number, line without its newline) of a non-empty text file; blank lines skipped."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found (expected {what})")
    opener = gzip.open if path.name.endswith(".gz") else open
    seen = False
    try:
        with opener(path, "rt", encoding="utf-8-sig", newline="") as fh:
            for lineno, line in enumerate(fh, start=1):
                line = line.rstrip("\r\n")
                if not line.strip():
                    continue
                seen = True
                yield lineno, line
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason}); expected {what}") from None
    except (OSError, EOFError) as exc:  # e.g. a truncated or non-gzip .gz file
        raise DataError(f"{path}: cannot read ({exc}); expected {what}") from None
    if not seen:
        raise DataError(f"{path}: file is empty; expected {what}")


def _fields(path: PathLike, lineno: int, line: str, n: int, expected: str, *, tabs: bool) -> list[str]:
    parts = line.split("\t") if tabs else line.split()
    if len(parts) != n or any(not p.strip() for p in parts):
        got = f"{len(parts)} field(s)" if len(parts) != n else "an empty field"
        raise DataError(f"{path}:{lineno}: expected {expected}, got {got}: {line[:80]!r}")
    return [p.strip() for p in parts]


# Column names a header row uses (lower case, without punctuation).
_ID_NAMES = frozenset(
    [
        "qid",
        "queryid",
        "topic",
        "topicid",
        "qno",
        "pid",
        "docid",
        "did",
        "passageid",
        "docno",
        "id",
        "corpusid",
        "documentid",
    ]
)
_TEXT_NAMES = frozenset(
    [
        "query",
        "text",
        "passage",
        "document",
        "doc",
        "body",
        "title",
        "question",
        "querytext",
        "passagetext",
        "doctext",
        "positive",
        "negative",
        "pos",
        "neg",
        "positivepassage",
        "negativepassage",
    ]
)
_VALUE_NAMES = frozenset(
    [
        "grade",
        "relevance",
        "rel",
        "label",
        "score",
        "judgment",
        "judgement",
        "iter",
        "iteration",
        "q0",
        "rank",
        "name",
        "run",
        "tag",
        "runname",
    ]
)


def _name(field: str) -> str:
    return re.sub(r"[^a-z0-9]", "", field.lower())


def _header_rerank(f: list[str]) -> bool:
    return _name(f[0]) in _ID_NAMES and _name(f[1]) in _ID_NAMES


def _header_id_text(f: list[str]) -> bool:
    return _name(f[0]) in _ID_NAMES and _name(f[1]) in _TEXT_NAMES


def _header_qrels(f: list[str]) -> bool:
    return not f[3].lstrip("+-").isdigit() and _name(f[0]) in _ID_NAMES and _name(f[3]) in _VALUE_NAMES


def _header_run(f: list[str]) -> bool:
    return _name(f[0]) in _ID_NAMES and _name(f[3]) in _VALUE_NAMES and _name(f[4]) in _VALUE_NAMES


def _header_triples(f: list[str]) -> bool:
    return all(_name(x) in _TEXT_NAMES for x in f)


def _rows(
    path: PathLike, what: str, n: int, expected: str, *, tabs: bool, header: Callable[[list[str]], bool]
) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of every data row. A header row on the first line is skipped, with a
    note once the file has been read (a file that fails has one error line; a file of only a
    header row is an error)."""
    first, skipped, rows = True, None, 0
    for lineno, line in _lines(path, what):
        parts = line.split("\t") if tabs else line.split()
        if first and len(parts) == n and header([p.strip() for p in parts]):
            first, skipped = (
                False,
                f"{path}:{lineno}: skipped a header row {line[:80]!r} (column names, not data)",
            )
            continue
        first = False
        rows += 1
        yield lineno, _fields(path, lineno, line, n, expected, tabs=tabs)
    if skipped is not None:
        if not rows:
            raise DataError(f"{path}: only a header row, no data; expected {what}")
        warnings.warn(skipped, HedonicNote, stacklevel=3)


def _int(path: PathLike, lineno: int, value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DataError(f"{path}:{lineno}: expected an integer {name}, got {value!r}") from None


def _read_id_text(path: PathLike, kind: str) -> dict[str, str]:
    expected = f"2 tab-separated fields '{kind}id \\t text'"
    out: dict[str, str] = {}
    for lineno, (key, text) in _rows(
        path, f"a {kind} TSV ({expected})", 2, expected, tabs=True, header=_header_id_text
    ):
        if key in out:
            raise DataError(f"{path}:{lineno}: {kind}id {key!r} appears twice; expected unique ids")
        out[key] = text
    return out


def read_queries(path: PathLike) -> dict[str, str]:
    """MS MARCO queries TSV (``qid \\t query``) -> {qid: query}."""
    return _read_id_text(path, "q")


def read_passages(path: PathLike) -> dict[str, str]:
    """MS MARCO passages / collection TSV (``pid \\t passage``) -> {pid: passage}."""
    return _read_id_text(path, "p")


def read_qrels(
    path: PathLike, *, known_qids: Iterable[str] | None = None, known_pids: Iterable[str] | None = None
) -> dict[str, dict[str, int]]:
    """Relevance judgements -> {qid: {pid: grade}}.

    Accepts TREC ``qid 0 pid grade`` (spaces) and the MS MARCO tab variant. The same (qid, pid)
    twice is an error. With ``known_qids`` / ``known_pids``, every id must be among them
    (:func:`check_qrels_ids`).
    """
    expected = "4 fields 'qid iter pid grade' (space- or tab-separated)"
    qrels: dict[str, dict[str, int]] = {}
    for lineno, (qid, _, pid, grade) in _rows(
        path, f"a qrels file ({expected})", 4, expected, tabs=False, header=_header_qrels
    ):
        judged = qrels.setdefault(qid, {})
        if pid in judged:
            raise DataError(f"{path}:{lineno}: ({qid}, {pid}) is judged twice; expected one grade per pair")
        judged[pid] = _int(path, lineno, grade, "relevance grade")
    check_qrels_ids(qrels, known_qids=known_qids, known_pids=known_pids, source=str(path))
    return qrels


def check_qrels_ids(
    qrels: dict[str, dict[str, int]],
    *,
    known_qids: Iterable[str] | None = None,
    known_pids: Iterable[str] | None = None,
    source: str = "qrels",
) -> None:
    """Raise DataError if ``qrels`` names a qid not in ``known_qids`` or a pid not in ``known_pids``."""
    for ids, known, kind in (
        (qrels.keys(), known_qids, "query"),
        ({p for judged in qrels.values() for p in judged}, known_pids, "passage"),
    ):
        if known is None:
            continue
        known = set(known)
        unknown = sorted(set(ids) - known)
        if unknown:
            shown = ", ".join(unknown[:5]) + (", ..." if len(unknown) > 5 else "")
            raise DataError(
                f"{source}: {len(unknown)} unknown {kind} id(s) ({shown}); expected only ids of the "
                f"{len(known)} known {kind}s"
            )


def read_rerank_input(path: PathLike) -> list[Pair]:
    """top1000-style rerank input (``qid \\t pid \\t query \\t passage``, .gz ok) -> pairs in file order."""
    expected = "4 tab-separated fields 'qid \\t pid \\t query \\t passage'"
    pairs: list[Pair] = []
    seen: set[tuple[str, str]] = set()
    for lineno, (qid, pid, query, passage) in _rows(
        path, f"a rerank input TSV ({expected})", 4, expected, tabs=True, header=_header_rerank
    ):
        if (qid, pid) in seen:
            raise DataError(f"{path}:{lineno}: pair ({qid}, {pid}) appears twice; expected unique pairs")
        seen.add((qid, pid))
        pairs.append(Pair(qid, pid, query, passage))
    return pairs


def read_run(path: PathLike) -> dict[str, dict[str, float]]:
    """TREC run file (``qid Q0 pid rank score name``) -> {qid: {pid: score}} (pytrec_eval's run format)."""
    expected = "6 fields 'qid Q0 pid rank score name' (space- or tab-separated)"
    run: dict[str, dict[str, float]] = {}
    for lineno, (qid, _, pid, rank, score, _tag) in _rows(
        path, f"a TREC run file ({expected})", 6, expected, tabs=False, header=_header_run
    ):
        _int(path, lineno, rank, "rank")
        try:
            value = float(score)
        except ValueError:
            raise DataError(f"{path}:{lineno}: expected a numeric score, got {score!r}") from None
        ranked = run.setdefault(qid, {})
        if pid in ranked:
            raise DataError(f"{path}:{lineno}: ({qid}, {pid}) is ranked twice; expected one row per pair")
        ranked[pid] = value
    return run


def read_triples(path: PathLike) -> list[Triple]:
    """MS MARCO triples (``query \\t positive \\t negative``) -> list of :class:`Triple`."""
    expected = "3 tab-separated fields 'query \\t positive \\t negative'"
    return [
        Triple(*fields)
        for _, fields in _rows(
            path, f"a triples TSV ({expected})", 3, expected, tabs=True, header=_header_triples
        )
    ]


def from_ir_datasets(
    dataset_id: str, *, depth: int = 100, max_queries: int | None = None
) -> tuple[list[Pair], dict[str, dict[str, int]]]:
    """Pairs and qrels from an `ir_datasets <https://ir-datasets.com>`_ dataset with scored docs.

    ``dataset_id`` e.g. ``"msmarco-passage/trec-dl-2019/judged"``. Candidates are its ``scoreddocs``
    (the official first-stage run), the first ``depth`` per query by score; ``max_queries`` keeps
    the first queries in qid order. Needs the optional ``ir_datasets`` package and, on first use,
    a network connection (it downloads into ``~/.ir_datasets``). Never used by the tests.
    """
    try:
        import ir_datasets  # optional dependency
    except ImportError:
        raise DataError(
            "the optional package ir_datasets is not installed (pip install ir_datasets); "
            "or pass local TSV files"
        ) from None
    try:
        ds = ir_datasets.load(dataset_id)
        if not ds.has_scoreddocs():
            raise DataError(f"ir_datasets '{dataset_id}' has no scoreddocs; expected a dataset with a run")
        queries = {q.query_id: q.text for q in ds.queries_iter()}
        qids = sorted(queries)[:max_queries] if max_queries else sorted(queries)
        wanted = set(qids)
        ranked: dict[str, list[tuple[float, str]]] = {}
        for sd in ds.scoreddocs_iter():
            if sd.query_id in wanted:
                ranked.setdefault(sd.query_id, []).append((-sd.score, sd.doc_id))
        store = ds.docs_store()
        pairs = []
        for qid in qids:
            for _, pid in sorted(ranked.get(qid, []))[:depth]:
                pairs.append(Pair(qid, pid, queries[qid], store.get(pid).text))
        qrels: dict[str, dict[str, int]] = {}
        if ds.has_qrels():
            for qr in ds.qrels_iter():
                if qr.query_id in wanted:
                    qrels.setdefault(qr.query_id, {})[qr.doc_id] = int(qr.relevance)
    except DataError:
        raise
    except KeyError:
        raise DataError(f"unknown ir_datasets id '{dataset_id}' (see https://ir-datasets.com)") from None
    except Exception as exc:  # download errors, offline machine
        raise DataError(
            f"ir_datasets '{dataset_id}' could not be loaded ({type(exc).__name__}: {exc}); "
            "it needs a network connection on first use"
        ) from None
    if not pairs:
        raise DataError(f"ir_datasets '{dataset_id}' gave no (query, passage) pairs")
    return pairs, qrels
