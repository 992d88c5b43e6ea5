"""The few exception classes a user sees.

Every error the library raises on bad input is a :class:`HedonicError`. Its message names the
problem and what was expected; the command line prints it as one line on stderr and exits with
code 2 (no traceback).
"""

import contextlib
import contextvars
from collections.abc import Iterator


class HedonicError(ValueError):
    """Base class of every user-facing error."""


class DataError(HedonicError):
    """A data file is missing, empty or malformed (the message names the file and line)."""


class ModelError(HedonicError):
    """Unknown architecture, layer out of range, adapter that does not match its base model..."""


class PhiError(HedonicError):
    """A synergy matrix is not square, not finite or not symmetric."""


class ConfigError(HedonicError):
    """A configuration file or a parameter is invalid."""


class BusyError(HedonicError):
    """An output folder or file is in use by another run (its lock names the holder)."""


class HedonicNote(UserWarning):
    """Something a user should know that is not an error (a header row skipped, a file ignored).

    Issued with :func:`warnings.warn`; the command line prints it as one ``note:`` line on stderr.
    """


# How an error names a parameter: ``adapter=`` from Python, ``--adapter`` from the command line.
_ON_COMMAND_LINE: contextvars.ContextVar[bool] = contextvars.ContextVar("hedonic_cli", default=False)


def arg(name: str) -> str:
    """The name of parameter ``name`` as the caller wrote it: ``--name-with-dashes`` inside a
    ``hedonic`` command, ``name=`` from Python. Use it in every error message that tells the user
    what to pass, so Python users are not told about CLI flags (and vice versa). ``name`` may be
    written either way (``"max_inputs"`` or ``"--max-inputs"``)."""
    if name.startswith("-"):
        name = name.lstrip("-").replace("-", "_")
    return f"--{name.replace('_', '-')}" if _ON_COMMAND_LINE.get() else f"{name}="


@contextlib.contextmanager
def command_line() -> Iterator[None]:
    """Inside this block :func:`arg` names parameters as command-line options."""
    token = _ON_COMMAND_LINE.set(True)
    try:
        yield
    finally:
        _ON_COMMAND_LINE.reset(token)
