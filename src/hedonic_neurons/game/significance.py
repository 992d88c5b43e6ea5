"""The thresholded game: only significantly positive φ counts as a partner.

φ is estimated from data, so every entry carries noise. In the top-responsive game a
neuron's choice set is its k best **positive** partners; a neuron whose real partners are fewer
than k, or weak, fills its choice set with small positive noise values, and the closures under
choice then chain planted groups into coalitions of hundreds of neurons (measured on a planted
game in ``benchmarks/bench_game.py --noise-curve``). The thresholded game keeps φ_ij as a possible
partner only when

    φ_ij > min_z · se_ij,

se the standard error of φ_ij (written beside φ by the collectors, or known for a synthetic
game); every other entry is set to 0 (φ ≤ 0 is never a partner, so that is exactly "not a
partner" and changes no utility of a kept partner). ``min_z = 0`` is the plain game on the
positive part of φ.

Default :data:`DEFAULT_MIN_Z` = 6, chosen on the planted game of
:func:`~hedonic_neurons.game.planted.planted_game` (n = 2,000, 278 groups of 2-12, strengths
0.2-1, Student-t noise with 5 degrees of freedom, se = its scale σ; ``bench_game.py
--noise-curve``): the smallest threshold at which exact Top Covering stays within 0.05 ARI of its
noise-free recovery at σ = 0.005 and 0.02 for both k = 2 and k = 3 (at k = 3, 5 standard errors
lose 0.09 at σ = 0.02; at k = 2, 4 lose 0.2). Heavy tails are why it is this high: for Gaussian
noise fewer standard errors would do. At σ = 0.05 even 6 standard errors (0.3) cut the weakest
groups (strength 0.15-0.25), so no threshold recovers them: a noise level the data must avoid.
"""

from __future__ import annotations

from numbers import Real
from typing import Any

import numpy as np

from hedonic_neurons.artifacts import validate_phi
from hedonic_neurons.errors import ConfigError, PhiError

#: The threshold (in standard errors) of the thresholded game; see the module docstring.
DEFAULT_MIN_Z = 6.0


def check_min_z(min_z: Any) -> float | None:
    """``min_z`` is None (the plain game) or a finite number >= 0."""
    if min_z is None:
        return None
    if isinstance(min_z, bool) or not isinstance(min_z, Real) or not np.isfinite(min_z) or min_z < 0:
        raise ConfigError(f"min_z must be None or a finite number >= 0 (standard errors), got {min_z!r}")
    return float(min_z)


def significant_phi(phi: Any, se: Any, min_z: float) -> np.ndarray:
    """φ with every entry that is not above ``min_z`` standard errors set to 0 (a new array).

    ``phi`` and ``se`` are n × n; ``se`` must be finite and >= 0 (symmetric like φ). The result
    is validated (a trusted read-only array, see :func:`~hedonic_neurons.artifacts.validate_phi`).
    Works in row blocks, so the only n × n array it makes is the result.
    """
    min_z = check_min_z(min_z)
    if min_z is None:
        raise ConfigError("min_z is None: there is no threshold to apply")
    phi = validate_phi(phi)
    se_arr = np.asarray(se)
    if se_arr.shape != phi.shape:
        raise PhiError(
            f"the standard errors of phi have shape {se_arr.shape}; expected {phi.shape}, like phi"
        )
    if se_arr.dtype.kind != "f":
        raise PhiError(f"the standard errors of phi must be floating point, got dtype {se_arr.dtype}")
    out = np.zeros_like(phi)
    n = phi.shape[0]
    step = max(1, (1 << 21) // max(n, 1))
    for start in range(0, n, step):
        rows = slice(start, min(start + step, n))
        s = se_arr[rows]
        if not np.isfinite(s).all() or (s < 0).any():
            bad = np.argwhere(~np.isfinite(s) | (s < 0))[0]
            i, j = int(bad[0]) + start, int(bad[1])
            raise PhiError(
                f"the standard error of phi[{i}, {j}] is {se_arr[i, j]}; expected a finite number >= 0"
            )
        block = phi[rows]
        keep = block > min_z * s
        out[rows][keep] = block[keep]
    # se is symmetric only up to rounding: keep a pair if either side passes, so φ stays symmetric
    _symmetric_max(out)
    return validate_phi(out)


def _symmetric_max(out: np.ndarray) -> None:
    """out = max(out, out.T) in place, tile by tile (no n × n temporary)."""
    n, t = out.shape[0], 512
    for bi in range(0, n, t):
        for bj in range(bi, n, t):
            upper = out[bi : bi + t, bj : bj + t]
            lower = out[bj : bj + t, bi : bi + t]
            both = np.maximum(upper, lower.T)
            upper[...] = both
            lower[...] = both.T
