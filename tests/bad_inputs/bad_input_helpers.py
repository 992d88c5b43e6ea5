"""Helpers of the bad-input tier: the shared inputs, a folder snapshot, and two ways to run the
real CLI: through ``hedonic_neurons.cli:main`` in this process (fast: the imports are paid once)
and as ``python -m hedonic_neurons`` subprocesses."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:  # the shared helpers of tests/ (tiny models, tokenizers)
    sys.path.insert(0, str(TESTS))
REPO = TESTS.parent

#: the machine has no network: never let a case wait for the hub
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HEDONIC_SHARED_IR": "/nonexistent-shared-ir"}


@dataclass
class World:
    """Inputs shared by every case (read only): a tiny LLaMA (3 layers, 24 neurons) with its
    tokenizer and a LoRA adapter, a tiny GPT-2 with its adapter, a pairs TSV, a phi file and
    partitions of layers 1 and 2."""

    root: Path
    model: Path
    adapter: Path
    gpt2: Path
    gpt2_adapter: Path
    pairs: Path
    phi: Path
    part1: Path
    part2: Path


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every entry under ``folder`` (hidden ones too): kind, mode and, for files, size and sha256."""
    out: dict[str, tuple] = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        st = path.lstat()
        if path.is_symlink():
            out[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            out[rel] = ("dir", st.st_mode)
        else:
            try:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
            except PermissionError:
                digest = "unreadable"
            out[rel] = ("file", st.st_mode, st.st_size, digest)
    return out


@dataclass
class Result:
    code: int
    out: str
    err: str


def run_in_process(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> Result:
    """``hedonic ARGV`` through the real entry point, in this process, with stdout/stderr captured."""
    from hedonic_neurons.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved_env = {k: os.environ.get(k) for k in {**OFFLINE, **(env or {})}}
    os.environ.update({**OFFLINE, **(env or {})})
    here = os.getcwd()
    os.chdir(cwd)
    code: int = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        os.chdir(here)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return Result(code, out.getvalue(), err.getvalue())


def cli_command(argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "hedonic_neurons", *argv]


def run_subprocess(
    argv: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 120
) -> Result:
    """``python -m hedonic_neurons ARGV`` as a separate process."""
    done = subprocess.run(
        cli_command(argv),
        cwd=cwd,
        env={**os.environ, **OFFLINE, "OMP_NUM_THREADS": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Result(done.returncode, done.stdout, done.stderr)


HOLD_LOCK = """
import sys
from hedonic_neurons.locking import hold
kind, target = sys.argv[1], sys.argv[2]
with hold(target, kind=kind, command="hedonic test-holder"):
    print("held", flush=True)
    sys.stdin.read()  # until the test closes our stdin
"""


@contextlib.contextmanager
def lock_holder(target: Path, kind: str = "dir"):
    """Another live process holding the lock of ``target`` (a folder that exists, or a file path)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, kind, str(target)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)


def write_config(path: Path, world: World, **changes) -> Path:
    """A small valid ``hedonic run`` config on the tiny model (then ``changes`` applied)."""
    import yaml

    cfg = {
        "name": "tiny",
        "model": str(world.model),
        "adapter": str(world.adapter),
        "task": "cqtr",
        "layers": [1, 2],
        "max_length": 32,
        "data": {"train": "demo", "test": "demo", "max_train_pairs": 40, "max_test_pairs": 20},
        "phi": {"metrics": ["oca"], "max_inputs": 16, "batch_size": 4},
        "evaluate": {"top_k": 2, "seeds": [0, 1, 2], "certify_samples": 200},
    }
    for key, value in changes.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    path.write_text(yaml.safe_dump(cfg))
    return path


def json_dump(path: Path, doc) -> Path:
    path.write_text(json.dumps(doc))
    return path
