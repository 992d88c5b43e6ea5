"""Headless Chromium for the rendering tests (a module of its own: ``conftest`` is not importable
by name once tests/bad_inputs has a conftest of its own)."""

from __future__ import annotations

from pathlib import Path


def headless_chromium(profile: Path, *args: str) -> list[str]:
    """A headless Chromium command line that never touches the network (this machine has none)."""
    return [
        "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        *args,
    ]
