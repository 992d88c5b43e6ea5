"""Advisory locks on output folders and files, so two runs never write into the same place.

Every command that writes holds a lock on its output while it works: an output folder ``DIR``
is locked through ``DIR/.hedonic.lock``, an output file ``F`` through ``.F.lock`` beside it. The
lock file records its holder (pid, host, command line, start time) and is held with
``flock``, so the operating system releases it when the holder dies however it dies: a lock
file left behind by a killed run is *stale* and is taken over silently; a lock recorded by
another host (a shared file system) whose holder cannot be checked from here is refused, with
the path to delete if that run is gone. A second run on a held output gets one
:class:`~hedonic_neurons.errors.BusyError` line naming the holder (exit code 2 on the command
line) and leaves the output as it was.

:func:`locked_output` also tidies up: it creates the output folder (and missing parents) only
once every check has passed, removes empty ``.partial/`` checkpoint folders, and after a failure
(an error or Ctrl-C) removes what the run created unless it left resumable work (a finished
stage, a φ file, a checkpoint), so a run that failed before finishing anything leaves nothing.

Locks are re-entrant within a process (``hedonic run`` holds its folder while the φ stage locks
a subfolder; the CLI holds ``--out`` before the Python function it calls locks it again), and under
``torchrun`` only rank 0 locks (the other ranks write into the folder rank 0 holds).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import functools
import inspect
import json
import os
import shlex
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hedonic_neurons.errors import BusyError

LOCK_NAME = ".hedonic.lock"
PARTIAL = ".partial"


#: the locks this process holds: lock file (real path) -> the descriptor holding its flock
_HELD: dict[str, int] = {}


def lock_path(target: str | os.PathLike, kind: str = "dir") -> Path:
    """The lock file of an output folder (``kind="dir"``) or output file (``kind="file"``)."""
    target = Path(target).expanduser()
    return target / LOCK_NAME if kind == "dir" else target.with_name(f".{target.name}.lock")


def _is_worker_rank() -> bool:
    """A torchrun rank other than 0 (rank 0 holds the lock for the whole group)."""
    return os.environ.get("RANK", "0").strip() not in ("", "0")


def _command_line() -> str:
    """This process's command line as a user would recognise it (``hedonic collect ...``)."""
    argv = sys.argv or [""]
    entry = Path(argv[0]).name
    if entry in ("hedonic", "__main__.py") or entry.startswith("hedonic"):
        return shlex.join(["hedonic", *argv[1:]])
    return shlex.join(["python" if entry in ("", "-c") else entry, *argv[1:]]) + " (Python)"


def _me(command: str | None) -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": (command or _command_line())[:300],
        "started": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def _read_holder(fd: int) -> dict[str, Any]:
    for _ in range(20):  # a holder writes its record right after locking: wait a moment for it
        try:
            raw = os.pread(fd, 4096, 0)
        except OSError:
            return {}
        if raw:
            try:
                doc = json.loads(raw.decode("utf-8", "replace"))
            except ValueError:
                return {}
            return doc if isinstance(doc, dict) else {}
        time.sleep(0.01)
    return {}


def holder_text(holder: dict[str, Any]) -> str:
    """The holder in words: pid, host, command line and start time."""
    text = f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}"
    if holder.get("command"):
        text += f" ({holder['command']})"
    if holder.get("started"):
        text += f", since {holder['started']}"
    return text


def _acquire(lock: Path, target: Path, command: str | None) -> int:
    """Take the lock (or raise BusyError); returns the open descriptor that holds it."""
    for _ in range(50):
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)  # less the umask, as any file
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise BusyError(
                f"{target} is in use by another run: {holder_text(holder)}; wait for it to finish "
                "or write somewhere else"
            ) from None
        try:  # a holder that released unlinked the file: we must hold the file that is at the path
            current = os.stat(lock)
            mine = os.fstat(fd)
            same = (current.st_ino, current.st_dev) == (mine.st_ino, mine.st_dev)
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        holder = _read_holder(fd) if os.fstat(fd).st_size else {}
        if holder.get("host") not in (None, socket.gethostname()):
            os.close(fd)
            raise BusyError(
                f"{target} is locked by a run on another machine: {holder_text(holder)}; if that run "
                f"has ended, delete {lock}"
            )
        # free: new, or stale (its holder died: the OS dropped its flock); record ourselves
        data = json.dumps(_me(command)).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        return fd
    raise BusyError(f"{target}: could not take the lock {lock} (it keeps being replaced)")


@contextlib.contextmanager
def hold(target: str | os.PathLike, *, kind: str = "dir", command: str | None = None) -> Iterator[None]:
    """Hold the lock of ``target`` (which, for a folder, must exist) for the ``with`` block."""
    lock = lock_path(target, kind)
    key = os.path.realpath(lock)
    if key in _HELD:  # re-entrant within this process: the outer holder releases it
        yield
        return
    if _is_worker_rank():
        yield
        return
    fd = _acquire(lock, Path(target), command)
    _HELD[key] = fd
    try:
        yield
    finally:
        del _HELD[key]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)  # while still holding it, so no one can take the old file
        os.close(fd)


def is_held(target: str | os.PathLike, kind: str = "dir") -> bool:
    """Whether this process holds the lock of ``target``."""
    return os.path.realpath(lock_path(target, kind)) in _HELD


def has_resumable_work(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds work a rerun resumes from: a finished stage (``stage.json``), a φ
    file or a checkpoint under ``.partial/``."""
    folder = Path(folder)
    if not folder.is_dir():
        return False
    for pattern in ("stage.json", "phi_layer*.safetensors", f"{PARTIAL}/*"):
        if next(folder.rglob(pattern), None) is not None:
            return True
    return False


def _missing_dirs(folder: Path) -> list[Path]:
    """The folders of ``folder``'s path that do not exist yet, outermost first."""
    out: list[Path] = []
    p = folder
    while not p.exists() and p != p.parent:
        out.append(p)
        p = p.parent
    return out[::-1]


def _remove_empty_partials(folder: Path) -> None:
    if not folder.is_dir():
        return
    for partial in sorted(folder.rglob(PARTIAL), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            partial.rmdir()  # only when empty


@contextlib.contextmanager
def locked_output(
    target: str | os.PathLike,
    *,
    kind: str = "dir",
    option: str = "--out",
    command: str | None = None,
    resumable: Callable[[Path], bool] | None = has_resumable_work,
) -> Iterator[Path]:
    """Check, create and lock an output folder (``kind="dir"``) or file for the ``with`` block.

    Checks first (:func:`hedonic_neurons.validation.check_output_dir` / ``check_output_file``:
    of the right kind, in a writable folder), then creates the folder, takes the lock, and on
    leaving releases it and removes empty ``.partial/`` folders. After a failure (any exception,
    Ctrl-C included) everything this block created is removed again unless ``resumable(folder)``
    finds work a rerun would resume from (``resumable=None``: nothing is, always remove).
    Yields the output path.
    """
    from hedonic_neurons import validation

    target = Path(target).expanduser()
    if kind == "dir":
        validation.check_output_dir(target, option)
        folder = target
    else:
        validation.check_output_file(target, option)
        folder = target.parent
    if is_held(target, kind) or _is_worker_rank():  # the holder (or rank 0) creates and tidies
        with hold(target, kind=kind, command=command):
            yield target
        return
    created = _missing_dirs(folder)
    before = set(os.listdir(folder)) if kind == "dir" and folder.is_dir() else set()
    folder.mkdir(parents=True, exist_ok=True)
    finished = False
    try:
        with hold(target, kind=kind, command=command):
            yield target
            finished = True
    finally:
        if kind == "dir":
            _remove_empty_partials(folder)
        if not finished and kind == "dir" and folder.is_dir() and not (resumable and resumable(folder)):
            for name in set(os.listdir(folder)) - before:
                path = folder / name
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
        for path in reversed(created):
            with contextlib.suppress(OSError):
                path.rmdir()  # only when empty


def locks_output(
    param: str,
    *,
    kind: str = "dir",
    option: str = "--out",
    check: Callable[[Path], Any] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: run the function under :func:`locked_output` on its argument ``param``; ``check``
    (optional) is called with the output path once the lock is held, before the function."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            with locked_output(bound.arguments[param], kind=kind, option=option) as target:
                if check is not None:
                    check(target)
                return fn(*args, **kwargs)

        return wrapper

    return decorate
