"""Every bad input (cases.py) exits 2 with one line naming the file or option, no traceback, and
leaves its folder as it was.

Every case runs through the real entry point (``hedonic_neurons.cli:main``) in this process, and a
sample covering every command and every kind of check runs again as real ``python -m
hedonic_neurons`` subprocesses (each costs 1-4 s of imports): by default the whole table (about
140 processes, a few minutes on 2 cores); ``HEDONIC_BAD_INPUTS_QUICK=1`` runs only a sample that
covers every command and every kind of check, for a quick local run.
"""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from bad_input_helpers import World, lock_holder, run_in_process, run_subprocess, snapshot
from cases import CASES, Case

ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False
NUMBER_OF_ISSUE_CASES = 45  # the cases named in issue 17 come first in cases.py
#: the subprocess sample: every command, outputs, inputs, names, models, locks and usage errors
SUBPROCESS_SAMPLE = (
    "collect-out-is-a-file",
    "solve-out-is-a-folder",
    "phi-of-integers",
    "stop-after-misspelt",
    "baseline-partition-not-utf8",
    "track-partition-string-member",
    "usage-missing-option",
    "usage-unknown-option",
    "collect-folder-in-use",
    "collect-misspelt-model",
    "inspect-layer-out-of-range",
    "finetune-data-tsv",
    "config-yaml-syntax",
    "tsv-three-fields",
    "hub-unreachable",
    "collect-garbage-checkpoint",
)


def _prepare(case: Case, folder: Path, world: World) -> tuple[list[str], dict]:
    folder.mkdir(parents=True, exist_ok=True)
    argv = case.build(folder, world)
    return argv, snapshot(folder)


def _problems(case: Case, result, folder: Path, before: dict) -> list[str]:
    """What is wrong with one run of a case (empty: it met the standard)."""
    out = []
    lines = [line for line in result.err.splitlines() if line.strip()]
    if result.code != 2:
        out.append(f"exit code {result.code}, expected 2")
    if len(lines) != 1:
        out.append(f"{len(lines)} lines on stderr, expected 1: {result.err[-1500:]!r}")
    elif not lines[0].startswith("error: "):
        out.append(f"stderr does not start with 'error: ': {lines[0]!r}")
    missing = [text for text in case.expect if text not in result.err]
    if missing:
        out.append(f"stderr lacks {missing}: {result.err.strip()[:600]!r}")
    if "Traceback" in result.err or "Traceback" in result.out:
        out.append("a traceback was printed")
    after = snapshot(folder)
    if after != before:
        changed = sorted(set(after.items()) ^ set(before.items()))
        out.append(f"the folder changed: {changed[:6]}")
    return out


@contextlib.contextmanager
def _held(case: Case, folder: Path):
    if case.hold is None:
        yield
        return
    with lock_holder(folder / case.hold, case.hold_kind):
        yield


def _skip_reason(case: Case) -> str | None:
    if case.needs_non_root and ROOT:
        return "root ignores file permissions (see test_unwritable_output_is_refused_up_front)"
    return None


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_in_process(case: Case, world: World, tmp_path: Path):
    if reason := _skip_reason(case):
        pytest.skip(reason)
    folder = tmp_path / "case"
    argv, before = _prepare(case, folder, world)
    with _held(case, folder):
        before = snapshot(folder)  # the holder's lock file is part of "before" and "after"
        result = run_in_process(argv, folder, case.env)
        problems = _problems(case, result, folder, before)
    assert not problems, f"{case.id}: " + "; ".join(problems)


def test_cases_through_the_real_cli(world: World, tmp_path: Path):
    """The whole table (with ``HEDONIC_BAD_INPUTS_QUICK=1``, a sample) again, each case as its own
    ``python -m hedonic_neurons`` process, a few at a time."""
    everything = os.environ.get("HEDONIC_BAD_INPUTS_QUICK", "") in ("", "0")
    cases = [c for c in CASES if _skip_reason(c) is None and (everything or c.id in SUBPROCESS_SAMPLE)]
    assert everything or len(cases) == len(SUBPROCESS_SAMPLE)
    prepared = {}
    for c in cases:
        prepared[c.id] = _prepare(c, tmp_path / c.id, world)

    def one(c: Case) -> tuple[str, list[str]]:
        folder = tmp_path / c.id
        argv, before = prepared[c.id]
        with _held(c, folder):
            before = snapshot(folder)
            result = run_subprocess(argv, folder, c.env)
            return c.id, _problems(c, result, folder, before)

    with ThreadPoolExecutor(max_workers=3) as pool:
        failures = {cid: p for cid, p in pool.map(one, cases) if p}
    assert not failures, "\n".join(f"{cid}: {'; '.join(p)}" for cid, p in failures.items())


def test_the_table_covers_the_issue_and_forty_more():
    ids = [c.id for c in CASES]
    assert len(ids) >= NUMBER_OF_ISSUE_CASES + 40, len(ids)
    for named in (
        "collect-out-is-a-file",
        "solve-out-is-a-folder",
        "finetune-out-is-a-file",
        "run-out-is-a-file",
        "model-folder-without-tokenizer",
        "stop-after-misspelt",
        "phi-of-integers",
        "phi-of-booleans",
        "inspect-corrupt-adapter",
        "collect-truncated-adapter",
        "baseline-partition-not-utf8",
        "track-partition-string-member",
        "collect-stale-list-sidecar",
        "collect-garbage-checkpoint",
        "finetune-data-tsv",
        "collect-unknown-dataset",
        "collect-mean-pooling-one-input",
        "usage-missing-option",
        "collect-folder-in-use",
        "collect-misspelt-model",
        "run-layer-out-of-range",
    ):
        assert named in ids, named
