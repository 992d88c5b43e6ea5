"""Shared test fixtures: where the research-only IR data lives, and a skip when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_IR = Path(os.environ.get("HEDONIC_SHARED_IR", REPO.parent / "shared" / "data" / "ir"))


@pytest.fixture(scope="session")
def shared_ir() -> Path:
    """``../shared/data/ir`` (research-only MS MARCO / TREC DL data, never copied into the repo)."""
    if not (SHARED_IR / "SOURCES.md").is_file():
        pytest.skip(f"research IR data not found at {SHARED_IR} (set HEDONIC_SHARED_IR)")
    return SHARED_IR
