"""Parameter checks shared by the solvers and the certificates (numpy only, no sklearn)."""

from __future__ import annotations

from numbers import Integral, Real
from typing import Any

from hedonic_neurons.errors import ConfigError

__all__ = ["SAMPLE_CHUNK", "check_count", "check_k", "check_sizes", "check_unit"]

#: Samples evaluated at once in a PAC round (bounds the working memory of a round).
SAMPLE_CHUNK = 1 << 16


def check_k(k: Any, n: int) -> int:
    """``k`` must be an integer with 1 <= k < n."""
    if isinstance(k, bool) or not isinstance(k, Integral) or not 1 <= k < n:
        raise ConfigError(f"k must be an integer with 1 <= k < n = {n} (the number of neurons), got {k!r}")
    return int(k)


def check_unit(name: str, value: Any) -> float:
    """A probability parameter (epsilon, delta) must lie strictly between 0 and 1."""
    if isinstance(value, bool) or not isinstance(value, Real) or not 0 < value < 1:
        raise ConfigError(f"{name} must be a number strictly between 0 and 1, got {value!r}")
    return float(value)


def check_count(name: str, value: Any, minimum: int = 1) -> int:
    """A positive integer parameter."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_sizes(min_size: Any, max_size: Any) -> tuple[int, int]:
    """Coalition sizes of D: integers with 1 <= min_size <= max_size."""
    lo = check_count("min_size", min_size)
    hi = check_count("max_size", max_size)
    if hi < lo:
        raise ConfigError(f"max_size must be >= min_size, got min_size={lo}, max_size={hi}")
    return lo, hi
