"""The ``hedonic`` command line: one subcommand per pipeline stage.

Each stage's command lives next to its code (``<stage>/cli.py``) and is registered here. Heavy
libraries (torch, transformers) are imported inside the commands, so ``hedonic --help`` is fast.
Every :class:`~hedonic_neurons.errors.HedonicError` becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys

import typer

from hedonic_neurons import __version__
from hedonic_neurons.errors import HedonicError

app = typer.Typer(
    name="hedonic",
    help="Find coalitions of cooperating MLP neurons in fine-tuned transformers, and track them across layers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
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
from hedonic_neurons.synergy import cli as _synergy_cli  # noqa: E402

_synergy_cli.register(app)
from hedonic_neurons import pipeline as _pipeline  # noqa: E402

_pipeline.register(app)


def main(argv: list[str] | None = None) -> None:
    """Entry point. Usage errors exit 2 (typer); user errors become one line and exit code 2."""
    try:
        app(args=argv, prog_name="hedonic")
    except HedonicError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted; finished artifacts are kept, rerun to resume", err=True)
        sys.exit(130)
