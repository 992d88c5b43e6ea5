"""Two runs on one output, Ctrl-C, what a run leaves behind, and the inputs that are accepted with
a note (header rows, byte-order marks, negative layers): issue 17 beyond the table of bad inputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from bad_input_helpers import (
    OFFLINE,
    World,
    cli_command,
    run_in_process,
    run_subprocess,
    snapshot,
    write_config,
)

from hedonic_neurons.cli import INTERRUPTED
from hedonic_neurons.errors import BusyError, HedonicNote

# The CLI, with every collector's update waiting at batch HEDONIC_TEST_BLOCK_AFTER + 1 until the
# file $HEDONIC_TEST_GO exists (it signals that it waits by creating $HEDONIC_TEST_GO.waiting):
# a run caught in the middle of its work, at a reproducible point.
BLOCKED_CLI = """
import os, signal, sys, time
# Ctrl-C as in a terminal, even when the tests themselves run in a background job (which starts
# its children with SIGINT ignored)
signal.signal(signal.SIGINT, signal.default_int_handler)
from hedonic_neurons.synergy import collect as c
go, after, calls = os.environ["HEDONIC_TEST_GO"], int(os.environ.get("HEDONIC_TEST_BLOCK_AFTER", "0")), [0]
def make(update):
    def waiting(self, batch, index):
        calls[0] += 1
        if calls[0] > after:
            open(go + ".waiting", "w").close()
            while not os.path.exists(go):
                time.sleep(0.02)
        return update(self, batch, index)
    return waiting
c.OCACollector.update = make(c.OCACollector.update)
c.PASCollector.update = make(c.PASCollector.update)
from hedonic_neurons.cli import main
main(sys.argv[1:])
"""


def start_blocked(args: list[str], cwd: Path, go: Path, block_after: int = 0) -> subprocess.Popen:
    env = {**os.environ, **OFFLINE, "OMP_NUM_THREADS": "1", "HEDONIC_TEST_GO": str(go)}
    env["HEDONIC_TEST_BLOCK_AFTER"] = str(block_after)
    return subprocess.Popen(
        [sys.executable, "-c", BLOCKED_CLI, *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_until_blocked(proc: subprocess.Popen, go: Path, timeout: float = 240) -> None:
    marker = Path(f"{go}.waiting")
    t0 = time.time()
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(
                f"the first run ended early ({proc.returncode}): {proc.stderr.read()[-2000:]}"
            )
        assert time.time() - t0 < timeout, "the first run never reached its work"
        time.sleep(0.05)


def collect_args(w: World, out: Path, *extra: str, data: Path | None = None) -> list[str]:
    return [
        "collect", str(w.model), "--adapter", str(w.adapter), "--data", str(data or w.pairs), "--out", str(out),
        "--no-progress", "--device", "cpu", *extra,
    ]  # fmt: skip


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def lock_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*.lock")] if folder.exists() else []


# ------------------------------------------------------------------------------ two runs, one --out


@pytest.mark.slow
def test_a_second_collect_on_the_folder_is_refused_and_the_first_is_intact(world: World, tmp_path: Path):
    from hedonic_neurons.artifacts import load_phi
    from hedonic_neurons.data import load_pairs
    from hedonic_neurons.models import load_model
    from hedonic_neurons.synergy.collect import CollectSettings, collect, phi_path

    out, go = tmp_path / "phi", tmp_path / "go"
    args = collect_args(world, out, "--layers", "1,2", "--metric", "oca", "--batch-size", "4")
    first = start_blocked(args, tmp_path, go)
    try:
        wait_until_blocked(first, go)
        second = run_subprocess(args, tmp_path)
        assert second.code == 2, second.err
        assert len(lines(second.err)) == 1 and "Traceback" not in second.err
        assert "in use by another run" in second.err and f"pid {first.pid} " in second.err
        assert "collect" in second.err and str(out) in second.err  # the holder's command line
    finally:
        go.touch()
        stdout, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr[-2000:]
    assert stdout.count("wrote ") == 2
    names = sorted(p.name for p in out.iterdir())
    assert names == ["phi_layer1.json", "phi_layer1.safetensors", "phi_layer2.json", "phi_layer2.safetensors"]
    # the first run's phi is what a run alone computes
    nm = load_model(world.model, adapter=world.adapter, device="cpu")
    alone = collect(
        nm, load_pairs(world.pairs), [1, 2], CollectSettings(metric="oca", batch_size=4), tmp_path / "alone",
        data=str(world.pairs), progress=False,
    )  # fmt: skip
    for layer, ref in zip((1, 2), alone):
        np.testing.assert_allclose(load_phi(phi_path(out, layer)), load_phi(ref), atol=1e-6, rtol=0)


@pytest.mark.slow
def test_a_second_run_on_the_folder_is_refused_and_the_first_finishes(world: World, tmp_path: Path):
    cfg = write_config(tmp_path / "cfg.yaml", world)
    out, go = tmp_path / "run", tmp_path / "go"
    args = ["run", str(cfg), "--out", str(out), "--quiet", "--stop-after", "phi"]
    first = start_blocked(args, tmp_path, go)
    try:
        wait_until_blocked(first, go)
        second = run_subprocess(args, tmp_path)
        assert second.code == 2, second.err
        assert len(lines(second.err)) == 1 and "Traceback" not in second.err
        assert "in use by another run" in second.err and f"pid {first.pid} " in second.err
    finally:
        go.touch()
        stdout, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr[-2000:]
    # --stop-after names what was written, not a report that was not
    assert "stopped after phi" in stdout and "report" not in stdout
    assert not (out / "report.html").exists()
    assert len(list(out.glob("phi/oca/*/phi_layer1.safetensors"))) == 1
    assert len(list(out.glob("phi/oca/*/phi_layer2.safetensors"))) == 1
    assert not lock_files(out) and not list(out.rglob(".partial"))


def test_lock_is_refused_while_held_and_taken_over_when_stale(tmp_path: Path):
    from hedonic_neurons.locking import LOCK_NAME, hold, holder_text, locked_output

    folder = tmp_path / "out"
    folder.mkdir()
    helper = (
        "import sys; from hedonic_neurons.locking import hold\n"
        "with hold(sys.argv[1], command='holder'):\n    print('held', flush=True); sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", helper, str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "held"
        record = json.loads((folder / LOCK_NAME).read_text())
        assert record["pid"] == proc.pid and record["command"] == "holder" and record["host"]
        busy = rf"in use by another run: pid {proc.pid} on host .*\(holder\)"
        with pytest.raises(BusyError, match=busy), hold(folder):
            pass
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    assert not (folder / LOCK_NAME).exists()  # released: the holder removed its lock file
    # a lock file left by a killed run (its process is gone, so is its flock) is stale: taken over
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale = {"pid": int(dead.stdout), "host": record["host"], "command": "killed"}
    (folder / LOCK_NAME).write_text(json.dumps(stale))
    with locked_output(folder) as target:
        assert json.loads((target / LOCK_NAME).read_text())["pid"] == os.getpid()
        with hold(folder):  # re-entrant in this process
            pass
        assert (folder / LOCK_NAME).exists()
    assert not (folder / LOCK_NAME).exists()
    assert (
        holder_text({"pid": 7, "host": "h", "command": "x", "started": "t"}) == "pid 7 on host h (x), since t"
    )


def test_worker_ranks_do_not_lock_or_tidy(tmp_path: Path, monkeypatch):
    from hedonic_neurons.locking import LOCK_NAME, locked_output

    monkeypatch.setenv("RANK", "1")
    (tmp_path / "out").mkdir()
    with pytest.raises(RuntimeError), locked_output(tmp_path / "out") as out:
        assert not (out / LOCK_NAME).exists()
        (out / "written by rank 0").write_text("x")
        raise RuntimeError
    assert (tmp_path / "out" / "written by rank 0").exists()  # rank 0's files are not tidied away


# ----------------------------------------------------------------------------------------- Ctrl-C


@pytest.mark.slow
def test_ctrl_c_prints_one_line_and_keeps_finished_artifacts(world: World, tmp_path: Path):
    out, go = tmp_path / "phi", tmp_path / "go"
    args = collect_args(world, out, "--layers", "1,2", "--metric", "pas", "--batch-size", "4")
    # 11 pairs = 3 batches per layer: layer 1 finishes and is written, layer 2 waits at its first batch
    first = start_blocked(args, tmp_path, go, block_after=3)
    wait_until_blocked(first, go)
    first.send_signal(signal.SIGINT)
    _, stderr = first.communicate(timeout=120)
    assert first.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    assert lines(stderr)[-1] == INTERRUPTED and stderr.count("interrupted") == 1
    assert sorted(p.name for p in out.iterdir()) == ["phi_layer1.json", "phi_layer1.safetensors"]
    # a rerun resumes: layer 1 is kept as it is, layer 2 is computed
    stamp = (out / "phi_layer1.safetensors").stat().st_mtime_ns
    again = run_subprocess(args, tmp_path, timeout=600)
    assert again.code == 0, again.err[-2000:]
    assert (out / "phi_layer1.safetensors").stat().st_mtime_ns == stamp and (
        out / "phi_layer2.safetensors"
    ).exists()


def test_interrupt_inside_a_command_is_one_line(tmp_path: Path, monkeypatch):
    """Typer turns a KeyboardInterrupt inside a command into exit code 130 silently; the CLI says
    what happened, in one line."""
    from hedonic_neurons.game import cli as game_cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(game_cli, "solve_phi", interrupted)
    (tmp_path / "phi.safetensors").write_bytes(b"")
    result = run_in_process(
        ["solve", str(tmp_path / "phi.safetensors"), "--out", str(tmp_path / "p.json")], tmp_path
    )
    # the up-front checks run first: an empty file is refused before the (interrupted) solve
    assert result.code == 2
    from hedonic_neurons.artifacts import save_phi

    save_phi(tmp_path / "phi.safetensors", np.zeros((4, 4), np.float32), {})
    result = run_in_process(
        ["solve", str(tmp_path / "phi.safetensors"), "--out", str(tmp_path / "p.json")], tmp_path
    )
    assert result.code == 130 and lines(result.err) == [INTERRUPTED]


# ------------------------------------------------------------------------------ what runs leave


def test_artifacts_follow_the_umask(tmp_path: Path):
    from hedonic_neurons.artifacts import atomic_write_bytes, save_partition

    old = os.umask(0o022)
    try:
        assert atomic_write_bytes(tmp_path / "a.bin", b"x").stat().st_mode & 0o777 == 0o644
        part = save_partition(tmp_path / "p.json", [[0, 1], [2]], method="t", params={})
        assert part.stat().st_mode & 0o777 == 0o644
        os.umask(0o077)
        assert atomic_write_bytes(tmp_path / "b.bin", b"x").stat().st_mode & 0o777 == 0o600
        os.umask(0o002)
        assert atomic_write_bytes(tmp_path / "c.bin", b"x").stat().st_mode & 0o777 == 0o664
    finally:
        os.umask(old)


def test_collect_leaves_no_empty_partial_folder(world: World, tmp_path: Path):
    old = os.umask(0o022)
    try:
        args = collect_args(
            world, tmp_path / "phi", "--layers", "1", "--batch-size", "2", "--checkpoint-every", "1"
        )
        result = run_in_process(args, tmp_path)
    finally:
        os.umask(old)
    assert result.code == 0, result.err
    assert sorted(p.name for p in (tmp_path / "phi").iterdir()) == [
        "phi_layer1.json",
        "phi_layer1.safetensors",
    ]
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in (tmp_path / "phi").iterdir())


def test_failed_run_before_any_stage_finished_leaves_nothing(world: World, tmp_path: Path):
    """A run that fails in its first stage (NaN weights found while collecting phi) removes what
    it created: the output folder, its config.json, the empty stage folders."""
    from synergy_helpers import save_scaled_tiny
    from test_loading import make_adapter

    base = save_scaled_tiny(tmp_path / "nan", "llama", nan_layer=1)
    make_adapter(base, tmp_path / "nan_adapter", "llama", layers=(1, 2))
    cfg = write_config(tmp_path / "cfg.yaml", world, model=str(base), adapter=str(tmp_path / "nan_adapter"))
    result = run_in_process(["run", str(cfg), "--out", str(tmp_path / "new" / "run"), "--quiet"], tmp_path)
    assert result.code == 2 and "non-finite" in lines(result.err)[-1], result.err
    assert not (tmp_path / "new").exists()
    # into a folder that existed (empty): it is left as it was
    (tmp_path / "kept").mkdir()
    before = snapshot(tmp_path / "kept")
    result = run_in_process(["run", str(cfg), "--out", str(tmp_path / "kept"), "--quiet"], tmp_path)
    assert result.code == 2 and snapshot(tmp_path / "kept") == before


def test_run_with_a_finished_stage_keeps_it(tmp_path: Path):
    from hedonic_neurons.locking import locked_output

    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt), locked_output(out):
        (out / "phi").mkdir()
        (out / "phi" / "stage.json").write_text("{}")
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt
    assert sorted(p.name for p in out.rglob("*")) == ["config.json", "phi", "stage.json"]
    with pytest.raises(ValueError), locked_output(tmp_path / "a" / "b" / "c"):
        (tmp_path / "a" / "b" / "c" / "partial.txt").write_text("x")
        raise ValueError
    assert not (tmp_path / "a").exists()  # nothing finished: the folders it created are gone too


def test_unwritable_output_is_refused_up_front(world: World, tmp_path: Path, monkeypatch):
    """Root is not stopped by file permissions, so the unwritable cases of the table run only for
    other users; here the permission check itself is made to say no."""
    from hedonic_neurons import validation

    ro = tmp_path / "ro"
    ro.mkdir()
    monkeypatch.setattr(validation, "_writable", lambda folder: Path(folder) != ro)
    for argv, option in [
        (collect_args(world, ro / "phi", "--layers", "1"), "--out"),
        (["solve", str(world.phi), "--out", str(ro / "p.json")], "--out"),
        (["inspect", str(world.model), "--json", str(ro / "i.json")], "--json"),
        (["run", str(write_config(tmp_path / "cfg.yaml", world)), "--out", str(ro)], "--out"),
    ]:
        result = run_in_process(argv, tmp_path)
        assert result.code == 2 and len(lines(result.err)) == 1, result.err
        assert f"{option} {ro}" in result.err and "not writable" in result.err
    assert not any(ro.iterdir())


# ----------------------------------------------------------------------- accepted, with a note


def test_header_row_is_skipped_with_a_note(tmp_path: Path, world: World):
    from hedonic_neurons.data import read_qrels, read_rerank_input

    body = world.pairs.read_text()
    (tmp_path / "with_header.tsv").write_text("qid\tpid\tquery\tpassage\n" + body)
    with pytest.warns(HedonicNote, match=r"with_header.tsv:1: skipped a header row"):
        pairs = read_rerank_input(tmp_path / "with_header.tsv")
    assert pairs == read_rerank_input(world.pairs)
    (tmp_path / "qrels.txt").write_text("query-id 0 corpus-id relevance\nq1 0 p1 2\n")
    with pytest.warns(HedonicNote):
        assert read_qrels(tmp_path / "qrels.txt") == {"q1": {"p1": 2}}
    # a first row of real data is never taken for a header
    with warnings.catch_warnings():
        warnings.simplefilter("error", HedonicNote)
        assert len(read_rerank_input(world.pairs)) == 11
    # on the command line: one note line, and the header is not a pair
    args = collect_args(world, tmp_path / "phi2", "--layers", "1", data=tmp_path / "with_header.tsv")
    result = run_in_process(args, tmp_path)
    assert result.code == 0, result.err
    assert [line for line in lines(result.err) if line.startswith("note:")] == [
        f"note: {tmp_path / 'with_header.tsv'}:1: skipped a header row 'qid\\tpid\\tquery\\tpassage' "
        "(column names, not data)"
    ]
    meta = json.loads((tmp_path / "phi2" / "phi_layer1.json").read_text())
    assert meta["n_inputs"] == 11


def test_byte_order_mark_is_dropped(tmp_path: Path):
    from hedonic_neurons.config import load_config
    from hedonic_neurons.data import read_qrels, read_rerank_input

    (tmp_path / "r.tsv").write_bytes("\ufeff1\t7\tcat query\ta cat passage\n2\t8\tq\tp\n".encode())
    (tmp_path / "q.txt").write_bytes("\ufeff1 0 7 1\n".encode())
    assert [p.qid for p in read_rerank_input(tmp_path / "r.tsv")] == ["1", "2"]
    assert read_qrels(tmp_path / "q.txt") == {"1": {"7": 1}}
    (tmp_path / "c.yaml").write_bytes("\ufeffname: bom\n".encode())
    assert load_config(tmp_path / "c.yaml").name == "bom"


def test_config_layers_count_from_the_end_like_the_command_line(world: World, tmp_path: Path):
    from hedonic_neurons.config import load_config
    from hedonic_neurons.validation import check_run

    cfg = load_config(write_config(tmp_path / "c.yaml", world, layers=[-1, 1], finetune={"layers": [-2]}))
    checked = check_run(cfg, tmp_path / "out")
    assert checked.layers == [1, 2] and checked.finetune.layers == [1]
    assert not (tmp_path / "out").exists()  # checking writes nothing


def test_validated_phi_refuses_integer_arrays_but_takes_literal_lists():
    from hedonic_neurons.artifacts import validate_phi
    from hedonic_neurons.errors import PhiError

    with pytest.raises(PhiError, match="dtype int64"):
        validate_phi(np.array([[0, 1], [1, 0]], dtype=np.int64))
    with pytest.raises(PhiError, match="dtype bool"):
        validate_phi(np.eye(2, dtype=bool))
    assert validate_phi([[0, 1], [1, 0]]).dtype == np.float64


def test_model_names_are_resolved_offline_first(tmp_path: Path, monkeypatch):
    from hedonic_neurons.errors import ModelError
    from hedonic_neurons.validation import model_facts

    facts = model_facts("minilm")
    assert (facts.source, facts.n_layers, facts.n_neurons) == ("builtin", 6, 1536)
    t0 = time.time()
    with pytest.raises(ModelError, match=r"unknown model 'smollm'; did you mean smollm2\?"):
        model_facts("smollm")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: refused at once
    with pytest.raises(ModelError, match=r"the hub \(http://127.0.0.1:9\) is unreachable"):
        model_facts("someone/model")
    assert time.time() - t0 < 10  # no retries


def test_usage_errors_are_one_line_through_the_real_cli(tmp_path: Path):
    done = subprocess.run(cli_command(["solve"]), capture_output=True, text=True, cwd=tmp_path, check=False)
    assert done.returncode == 2 and lines(done.stderr) == [
        "error: hedonic solve: Missing argument 'phi'. (see 'hedonic solve --help')"
    ]


def test_untagged_json_among_partitions_is_named_in_a_note(world: World, tmp_path: Path):
    import shutil

    from hedonic_neurons.validation import read_partition_dir

    shutil.copy(world.part1, tmp_path / "layer1.json")
    shutil.copy(world.part2, tmp_path / "layer2.json")
    (tmp_path / "summary.json").write_text('{"coalitions": [[0]]}')
    with pytest.warns(
        HedonicNote, match=r"skipped 1 JSON file\(s\) without the partition format tag: summary.json"
    ):
        found = read_partition_dir(tmp_path)
    assert sorted(found) == [1, 2] and found[1][0] == tmp_path / "layer1.json"
