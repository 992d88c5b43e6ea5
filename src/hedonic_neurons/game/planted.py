"""A planted game with noise: the positive control of the solvers.

:func:`planted_game` builds a φ whose answer is known: groups of mixed sizes with heterogeneous
synergy inside, nothing outside, plus heavy-tailed estimation noise of a known standard error.
The recovery of the groups (ARI) as the noise grows, with and without the thresholded game
(:mod:`hedonic_neurons.game.significance`), is in ``benchmarks/bench_game.py --noise-curve``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hedonic_neurons.errors import ConfigError


@dataclass
class PlantedGame:
    """``phi`` (n x n float64, symmetric, zero diagonal), ``se`` (n x n, the noise scale),
    ``labels`` (n,: the planted group of each neuron; unplanted neurons are their own groups)."""

    phi: np.ndarray
    se: np.ndarray
    labels: np.ndarray


def planted_game(
    n: int = 2000,
    n_groups: int = 278,
    sizes: tuple[int, int] = (2, 12),
    strength: tuple[float, float] = (0.2, 1.0),
    sigma: float = 0.0,
    df: float = 5.0,
    random_state: int | np.random.Generator | None = 0,
) -> PlantedGame:
    """Groups of sizes uniform on ``sizes`` (inclusive), each with its own strength s uniform on
    ``strength``; inside a group φ_ij = s · (1 + 0.25 u_ij), u_ij uniform on [-1, 1]; outside 0.
    Then noise σ · t_df (Student t, symmetric) on every off-diagonal pair, and se = σ.
    Groups are placed until ``n_groups`` are planted or the neurons run out.
    """
    lo, hi = sizes
    if not (2 <= lo <= hi <= n) or n_groups < 1 or sigma < 0 or df <= 0:
        raise ConfigError(
            f"planted_game needs 2 <= sizes[0] <= sizes[1] <= n, n_groups >= 1, sigma >= 0, df > 0; "
            f"got sizes={sizes}, n={n}, n_groups={n_groups}, sigma={sigma}, df={df}"
        )
    rng = np.random.default_rng(random_state)
    labels = np.arange(n)
    phi = np.zeros((n, n))
    order = rng.permutation(n)
    pos = 0
    for g in range(n_groups):
        size = int(rng.integers(lo, hi + 1))
        if pos + size > n:
            break
        ids = order[pos : pos + size]
        pos += size
        s = rng.uniform(*strength)
        block = s * (1.0 + 0.25 * rng.uniform(-1.0, 1.0, size=(size, size)))
        phi[np.ix_(ids, ids)] = np.triu(block, 1) + np.triu(block, 1).T
        labels[ids] = n + g  # distinct from the singletons' own ids
    if sigma > 0:
        noise = np.triu(rng.standard_t(df, size=(n, n)), 1) * sigma
        phi += noise + noise.T
    np.fill_diagonal(phi, 0.0)
    _, labels = np.unique(labels, return_inverse=True)
    return PlantedGame(phi, np.full((n, n), float(sigma)), labels)
