"""The ``hedonic`` command line: one subcommand per pipeline stage.

Each stage's command lives next to its code (``<stage>/cli.py``) and is registered here. Heavy
libraries (torch, transformers) are imported inside the commands, so ``hedonic --help`` is fast.
Every :class:`~hedonic_neurons.errors.HedonicError` and every usage error (a missing or mistyped
option) becomes one line on stderr and exit code 2; a note
(:class:`~hedonic_neurons.errors.HedonicNote`) one ``note:`` line; Ctrl-C the line
``interrupted; rerun to resume`` and exit code 130 (finished artifacts are kept).
"""

from __future__ import annotations

import functools
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import typer

from hedonic_neurons import __version__
from hedonic_neurons.errors import HedonicError, HedonicNote, command_line

app = typer.Typer(
    name="hedonic",
    help="Find coalitions of cooperating MLP neurons in fine-tuned transformers, and track them across layers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # plain click help: rich's help panels print a type after every option ("--quiet <bool>")
    rich_markup_mode=None,
)


@app.callback()
def _root() -> None:
    """Find coalitions of cooperating MLP neurons in fine-tuned transformers."""


@app.command()
def version() -> None:
    """Print the package version."""
    typer.echo(__version__)


# Stage commands. Each module defines functions and registers them on ``app``.
from hedonic_neurons.game import cli as _game_cli  # noqa: E402

_game_cli.register(app)
from hedonic_neurons.models import cli as _models_cli  # noqa: E402

_models_cli.register(app)
from hedonic_neurons.models import finetune as _finetune  # noqa: E402

_finetune.register(app)
from hedonic_neurons.tracking import cli as _tracking_cli  # noqa: E402

_tracking_cli.register(app)
from hedonic_neurons.baselines import cli as _baselines_cli  # noqa: E402

_baselines_cli.register(app)
from hedonic_neurons.synergy import cli as _synergy_cli  # noqa: E402

_synergy_cli.register(app)
from hedonic_neurons import pipeline as _pipeline  # noqa: E402

_pipeline.register(app)


INTERRUPTED = "interrupted; rerun to resume (finished artifacts are kept)"


@contextmanager
def _notes_as_lines() -> Iterator[None]:
    """Show :class:`HedonicNote` warnings as ``note: ...`` lines (every one, not once per place)."""
    with warnings.catch_warnings():
        warnings.simplefilter("always", HedonicNote)
        default = warnings.showwarning

        # wraps: the replacement keeps showwarning's docstring, which the demo corpus reads
        @functools.wraps(default)
        def show(message, category, filename, lineno, file=None, line=None):  # type: ignore[no-untyped-def]
            if issubclass(category, HedonicNote):
                print(f"note: {message}", file=sys.stderr, flush=True)
            else:
                default(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


def _usage_line(exc: Exception) -> str:
    """One line for a click usage error: the command, the message and where to look."""
    ctx = getattr(exc, "ctx", None)
    format_message = getattr(exc, "format_message", None)
    message = format_message() if callable(format_message) else str(exc)
    message = " ".join(message.split())
    where = ctx.command_path if ctx is not None else "hedonic"
    return f"error: {where}: {message} (see '{where} --help')"


def main(argv: list[str] | None = None) -> None:
    """Entry point. Exits 0 on success, 2 (one line on stderr) on bad input or usage, 130 on Ctrl-C."""
    try:
        with _notes_as_lines(), command_line():
            code = app(args=argv, prog_name="hedonic", standalone_mode=False)
    except HedonicError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except typer.TyperException as exc:  # typer's (vendored click's) usage errors
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `hedonic`: the help, as before
            typer.echo(exc.ctx.get_help())  # type: ignore[attr-defined]
            sys.exit(2)
        typer.echo(_usage_line(exc), err=True)
        sys.exit(int(getattr(exc, "exit_code", 2)))
    except (KeyboardInterrupt, typer.Abort):
        typer.echo(INTERRUPTED, err=True)
        sys.exit(130)
    if code == 130:  # typer turns Ctrl-C inside a command into exit code 130
        typer.echo(INTERRUPTED, err=True)
    sys.exit(code if isinstance(code, int) else 0)
