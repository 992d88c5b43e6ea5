"""The one cache key: a short, stable hash of JSON-able settings.

Every cached artefact (a pipeline stage's ``stage.json``, a φ file's sidecar, the φ folder of a
run) is named or checked by :func:`cache_key` of the settings that decide it, so an edited
setting starts a new artefact instead of reusing a stale one.

The rule (do not change it: every existing run folder and φ file is keyed by it): serialise with
``json.dumps(obj, sort_keys=True, default=str)`` (Python's default separators ``", "`` and
``": "``, keys sorted at every depth, anything JSON cannot write, e.g. a ``Path``, written as its
``str``), encode as UTF-8, take the SHA-256 hex digest and keep its first 16 characters.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = ["KEY_LENGTH", "cache_key"]

KEY_LENGTH = 16


def cache_key(obj: Any) -> str:
    """The 16-hex-character cache key of ``obj`` (see the module docstring for the exact rule).

    Equal settings give equal keys whatever the order of their dict keys; a value JSON cannot
    write is hashed by its ``str``.
    """
    blob = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:KEY_LENGTH]
