"""Transitions judged against a size-preserving random-partition null.

Why a null: α (a source's share of its mass that goes to one target) and β (a target's share of
its mass that comes from one source) shrink like 1/K with the number K of tracked coalitions,
because the interaction mass is dense. An absolute threshold (τ = 0.5) then labels every pair of
every partition, random ones included, "vanishing". Here every quantity is compared with what
random partitions of the same two layers, with the same coalition sizes, give.

Quantities, for a source i and a target j of one layer pair (K sources, K' targets):

- the *lifts* ``lift_alpha = α·K'`` and ``lift_beta = β·K`` (1 = the share a uniform spread gives;
  some texts write them α·K and β·K', K being the count the share is taken over);
- the outgoing mass of a source, ``out = Σ_j M(i, j)``, and the incoming mass of a target,
  ``in = Σ_i M(i, j)``.

The null: R (default 100) draws of a random partition of each layer's neurons into coalitions of
exactly the tracked sizes (drawn from all the layer's neurons); the mass of every draw comes from
one batched, blockwise computation (:func:`~hedonic_neurons.tracking.mass.mass_batch`). From the
draws, four reference distributions, pooled over the draws and the coalitions of the layer pair:

- ``best_alpha``: each null source's largest lift_alpha (its best target),
- ``best_beta``: each null target's largest lift_beta (its best source),
- ``out_mass`` and ``in_mass``.

A percentile is the fraction of the reference distribution at or below the value (×100).

The rule (one level q per layer pair, calibrated on the null):

- a *link* (i, j) is significant when lift_alpha ≥ τ_α and lift_beta ≥ τ_β: i sends to j a larger
  share than the best target of a random coalition, *and* j receives from i a larger share than
  from the best source of a random coalition (both at level q);
- a source *vanishes* when its outgoing mass is at or below τ_out (the lower q-tail of out_mass):
  it writes less into the next layer's coalitions than random coalitions of those sizes; a target
  *emerges* when its incoming mass is at or below τ_in (likewise); a vanishing source has no links;
- source labels: **vanishing**; **split** (≥ 2 significant targets); **merge** (exactly one
  significant target, which has ≥ 2 significant sources); **persistence** (one significant
  target, of which it is the only significant source); **unstructured** (no significant link,
  not vanishing: indistinguishable from a random partition);
- target labels: **merge** (≥ 2 significant sources), **split** (one, and that source splits),
  **persistence** (one, which persists), **emergence** (none, and low incoming mass),
  **unstructured** (none).

Calibration: a null source is *structured* when it vanishes or has a significant link. The level
q is the smallest for which at most ``1 - level`` (default 5%) of the null's sources are
structured, so a random partition is labelled "unstructured" about ``level`` of the time by
construction; τ_α, τ_β, τ_out and τ_in are the null quantiles at q (reported per layer pair).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hedonic_neurons.errors import ConfigError, DataError
from hedonic_neurons.tracking.mass import mass_batch

__all__ = [
    "MIN_DRAWS",
    "NullModel",
    "check_null_settings",
    "classify_null",
    "draw_partition_labels",
    "lifts",
    "null_model",
]

MIN_DRAWS = 20  # below this the tails of the null are not estimated at all
_CHUNK_ELEMENTS = 1 << 24  # float32 entries of one chunk's (draws x K' x block) product


def lifts(mass: np.ndarray, dtype: Any = np.float64) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(lift_alpha, lift_beta, out_mass, in_mass) of a mass matrix (..., K, K').

    lift_alpha = α·K' (α: share of the source's outgoing mass), lift_beta = β·K (β: share of the
    target's incoming mass); a source (target) without mass has zero lifts.
    """
    m = np.asarray(mass, dtype=dtype)
    k_src, k_tgt = m.shape[-2], m.shape[-1]
    out = m.sum(-1)
    inc = m.sum(-2)
    la = np.divide(m, out[..., :, None], out=np.zeros_like(m), where=out[..., :, None] > 0) * k_tgt
    lb = np.divide(m, inc[..., None, :], out=np.zeros_like(m), where=inc[..., None, :] > 0) * k_src
    return la, lb, out, inc


def draw_partition_labels(sizes: Sequence[int], n: int, draws: int, rng: np.random.Generator) -> np.ndarray:
    """(draws, n) labels: each row a uniform random placement of disjoint coalitions of ``sizes``
    among n neurons (label c for the c-th size, -1 for the neurons left out)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    if (sizes < 1).any() or sizes.sum() > n:
        raise DataError(f"coalition sizes {sizes.tolist()} do not fit in {n} neurons")
    base = np.repeat(np.arange(sizes.size), sizes)
    perm = rng.permuted(np.tile(np.arange(n), (draws, 1)), axis=1)
    labels = np.full((draws, n), -1, dtype=np.int64)
    np.put_along_axis(labels, perm[:, : base.size], np.broadcast_to(base, (draws, base.size)), axis=1)
    return labels


def _cdf(sorted_ref: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Fraction of ``sorted_ref`` at or below x."""
    return np.searchsorted(sorted_ref, x, side="right") / max(sorted_ref.size, 1)


def _sf(sorted_ref: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Fraction of ``sorted_ref`` at or above x."""
    return 1.0 - np.searchsorted(sorted_ref, x, side="left") / max(sorted_ref.size, 1)


def _upper_threshold(sorted_ref: np.ndarray, q: float) -> float:
    """Smallest reference value whose CDF exceeds q: x >= it  <=>  CDF(x) > q (inf if none)."""
    above = np.flatnonzero(_cdf(sorted_ref, sorted_ref) > q)
    return float(sorted_ref[above[0]]) if above.size else float("inf")


def _lower_threshold(sorted_ref: np.ndarray, q: float) -> float:
    """Largest reference value whose survival exceeds q: x <= it  <=>  SF(x) > q (-inf if none)."""
    below = np.flatnonzero(_sf(sorted_ref, sorted_ref) > q)
    return float(sorted_ref[below[-1]]) if below.size else float("-inf")


@dataclass
class NullModel:
    """The random-partition null of one layer pair and the thresholds calibrated on it."""

    draws: int
    level: float
    seed: Any
    q: float
    tau_alpha: float
    tau_beta: float
    tau_out: float
    tau_in: float
    best_alpha: np.ndarray  # sorted reference distributions
    best_beta: np.ndarray
    out_mass: np.ndarray
    in_mass: np.ndarray
    structured_fraction: float  # of the null's own sources (<= 1 - level by construction)
    emerging_fraction: float  # of the null's own targets

    def pct_alpha(self, x: Any) -> np.ndarray:
        return 100.0 * _cdf(self.best_alpha, np.asarray(x, dtype=np.float64))

    def pct_beta(self, x: Any) -> np.ndarray:
        return 100.0 * _cdf(self.best_beta, np.asarray(x, dtype=np.float64))

    def pct_out(self, x: Any) -> np.ndarray:
        return 100.0 * _cdf(self.out_mass, np.asarray(x, dtype=np.float64))

    def pct_in(self, x: Any) -> np.ndarray:
        return 100.0 * _cdf(self.in_mass, np.asarray(x, dtype=np.float64))

    def to_dict(self) -> dict[str, Any]:
        def quantiles(ref: np.ndarray) -> dict[str, float]:
            if not ref.size:
                return {}
            return {f"p{p}": float(np.quantile(ref, p / 100)) for p in (5, 50, 95, 99)}

        return {
            "draws": self.draws,
            "level": self.level,
            "seed": self.seed,
            "q": self.q,
            "tau_alpha": self.tau_alpha,
            "tau_beta": self.tau_beta,
            "tau_out": self.tau_out,
            "tau_in": self.tau_in,
            "null_structured_fraction": self.structured_fraction,
            "null_emerging_fraction": self.emerging_fraction,
            "best_alpha": quantiles(self.best_alpha),
            "best_beta": quantiles(self.best_beta),
            "out_mass": quantiles(self.out_mass),
            "in_mass": quantiles(self.in_mass),
        }


def _structured(la, lb, out, tau_a, tau_b, tau_out) -> np.ndarray:
    """(draws, K) bool: the source vanishes or has a significant link."""
    link = ((la >= tau_a) & (lb >= tau_b)).any(-1)
    return link | (out <= tau_out)


def _calibrate(la, lb, out, inc, level: float) -> tuple[Any, ...]:
    ref_a = np.sort(la.max(-1).ravel())
    ref_b = np.sort(lb.max(-2).ravel())
    ref_out = np.sort(out.ravel())
    ref_in = np.sort(inc.ravel())
    # u: the level at which a null source stops being structured (in chunks of draws: the CDF
    # values of every pair would be 8 bytes x draws x K x K' at once)
    step = max(1, _CHUNK_ELEMENTS // max(la[0].size, 1))
    u_link = np.concatenate(
        [
            np.minimum(_cdf(ref_a, la[s : s + step]), _cdf(ref_b, lb[s : s + step])).max(-1)
            for s in range(0, la.shape[0], step)
        ]
    )
    u = np.maximum(u_link, _sf(ref_out, out))
    q = float(np.quantile(u.ravel(), level, method="higher"))
    tau_a, tau_b = _upper_threshold(ref_a, q), _upper_threshold(ref_b, q)
    tau_out, tau_in = _lower_threshold(ref_out, q), _lower_threshold(ref_in, q)
    frac = float(_structured(la, lb, out, tau_a, tau_b, tau_out).mean())
    emerging = float((inc <= tau_in).mean())
    return q, tau_a, tau_b, tau_out, tau_in, frac, emerging, (ref_a, ref_b, ref_out, ref_in)


def check_null_settings(draws: int, level: float) -> None:
    if not isinstance(draws, int) or isinstance(draws, bool) or draws < MIN_DRAWS:
        raise ConfigError(f"null draws must be an integer >= {MIN_DRAWS}, got {draws!r}")
    if not 0.5 <= level < 1:
        raise ConfigError(f"null level must be in [0.5, 1), got {level!r}")


def null_model(
    W_down_l: Any,
    W_up_next: Any,
    W_gate_next: Any,
    norm_scale_next: Any,
    A: Any,
    source_sizes: Sequence[int],
    target_sizes: Sequence[int],
    *,
    draws: int = 100,
    level: float = 0.95,
    seed: Any = 0,
    block_size: int = 512,
    device: Any = None,
) -> NullModel:
    """The null of one layer pair: ``draws`` random partitions with the given coalition sizes.

    Weights and A as in :func:`~hedonic_neurons.tracking.mass.interaction_mass`; the random
    coalitions are drawn from all n (n') neurons of each layer. ``seed``: anything
    ``numpy.random.default_rng`` takes (the pipeline passes [seed, source layer, target layer]).
    Memory: O(draws x K x K') for the lifts, plus the blockwise product of ``mass_batch``.
    """
    check_null_settings(draws, level)
    n = int(np.shape(W_down_l)[1])
    n_next = int(np.shape(W_up_next)[0])
    k_src, k_tgt = len(source_sizes), len(target_sizes)
    if k_src == 0 or k_tgt == 0:
        empty = np.zeros(0)
        return NullModel(
            draws, level, seed, 1.0, np.inf, np.inf, -np.inf, -np.inf, empty, empty, empty, empty, 0.0, 0.0
        )
    rng = np.random.default_rng(seed)
    src_labels = draw_partition_labels(source_sizes, n, draws, rng)
    tgt_labels = draw_partition_labels(target_sizes, n_next, draws, rng)
    chunk = max(1, _CHUNK_ELEMENTS // max(k_tgt * max(int(block_size), 1), 1))
    masses = []
    for start in range(0, draws, chunk):
        m = mass_batch(
            W_down_l,
            W_up_next,
            W_gate_next,
            norm_scale_next,
            A,
            src_labels[start : start + chunk],
            tgt_labels[start : start + chunk],
            k_src,
            k_tgt,
            block_size=block_size,
            device=device,
        )
        masses.append(m.astype(np.float32))
    la, lb, out, inc = lifts(np.concatenate(masses), dtype=np.float32)
    q, tau_a, tau_b, tau_out, tau_in, frac, emerging, refs = _calibrate(la, lb, out, inc, level)
    return NullModel(draws, level, seed, q, tau_a, tau_b, tau_out, tau_in, *refs, frac, emerging)


def classify_null(mass: Any, null: NullModel) -> dict[str, Any]:
    """Labels of the observed mass matrix under the calibrated null (see the module docstring).

    Returns ``source_labels``, ``target_labels``, ``links`` (list of (i, j, label) for every
    significant link, label = the source's label), ``lift_alpha``, ``lift_beta`` (K x K'),
    ``out_mass`` (K,) and ``in_mass`` (K',).
    """
    m = np.asarray(mass, dtype=np.float64)
    la, lb, out, inc = lifts(m)
    k_src, k_tgt = m.shape
    vanish = out <= null.tau_out
    sig = (la >= null.tau_alpha) & (lb >= null.tau_beta)
    sig[vanish, :] = False
    n_children, n_parents = sig.sum(1), sig.sum(0)
    src_labels = []
    for i in range(k_src):
        if vanish[i]:
            src_labels.append("vanishing")
        elif n_children[i] >= 2:
            src_labels.append("split")
        elif n_children[i] == 1:
            j = int(np.flatnonzero(sig[i])[0])
            src_labels.append("merge" if n_parents[j] >= 2 else "persistence")
        else:
            src_labels.append("unstructured")
    tgt_labels = []
    for j in range(k_tgt):
        parents = np.flatnonzero(sig[:, j])
        if parents.size >= 2:
            tgt_labels.append("merge")
        elif parents.size == 1:
            tgt_labels.append("split" if src_labels[parents[0]] == "split" else "persistence")
        else:
            tgt_labels.append("emergence" if inc[j] <= null.tau_in else "unstructured")
    links = [(int(i), int(j), src_labels[i]) for i, j in zip(*np.nonzero(sig))]
    return dict(
        source_labels=src_labels,
        target_labels=tgt_labels,
        links=links,
        lift_alpha=la,
        lift_beta=lb,
        out_mass=out,
        in_mass=inc,
    )
