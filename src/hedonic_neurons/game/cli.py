"""``hedonic solve``: partition one layer's phi into coalitions."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Register this stage's commands on the main app (filled in by the game stage)."""
