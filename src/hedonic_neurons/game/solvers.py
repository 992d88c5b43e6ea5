"""Top Covering solvers: exact, and PAC (choice sets from sampled coalitions).

Both repeat one round until every neuron is placed: compute a choice set B_i for every
remaining neuron, build the digraph i -> j for j in B_i, output **all** its sink strongly
connected components as coalitions, and remove them. They differ only in B_i:

* :class:`TopCover` — B_i = Ch(i, R), computed from phi (this is Top Covering itself; its
  partition has no blocking coalition);
* :class:`PACTopCover` — B_i = Ch(i, T_i*), T_i* the best coalition containing i among fresh
  samples on R: from D restricted to R (``sampling="uniform"``) or grown from i along
  positive phi (``sampling="phi"``).
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any

import numpy as np

from hedonic_neurons.artifacts import validate_phi
from hedonic_neurons.errors import ConfigError
from hedonic_neurons.game.checks import SAMPLE_CHUNK, check_count, check_k, check_sizes, check_unit
from hedonic_neurons.game.digraph import groups_of, sink_labels
from hedonic_neurons.game.sampling import grown_coalitions, subset_indices
from hedonic_neurons.game.significance import check_min_z, significant_phi
from hedonic_neurons.game.utility import Choice, choice_sets, group_choice
from hedonic_neurons.partitioner import PARTITIONERS, Partitioner

__all__ = [
    "SAMPLE_CHUNK",
    "SAMPLINGS",
    "PACTopCover",
    "TopCover",
    "check_count",
    "check_k",
    "check_sizes",
    "check_unit",
    "pac_budget",
    "thresholded",
]

#: The sampling distributions of :class:`PACTopCover`.
SAMPLINGS = ("uniform", "phi")


# ------------------------------------------------------------------------------- validation


def thresholded(phi: Any, se: Any, min_z: Any) -> np.ndarray:
    """The game's phi: validated, and thresholded at ``min_z`` standard errors when set."""
    min_z = check_min_z(min_z)
    if min_z is None:
        if se is not None:
            raise ConfigError("se was given but min_z is None: set min_z to use the standard errors")
        return validate_phi(phi)
    if se is None:
        raise ConfigError(f"min_z = {min_z} needs the standard errors of phi (se=...)")
    return significant_phi(phi, se, min_z)


# ----------------------------------------------------------------------------- the rounds


class _Peeling:
    """Shared bookkeeping of the rounds: who is left, what was removed when."""

    def __init__(self, n: int, progress: bool, desc: str) -> None:
        self.n = n
        self.alive = np.ones(n, dtype=bool)
        self.removal_round = np.full(n, -1, dtype=np.int64)
        self.coalitions: list[np.ndarray] = []
        self.diagnostics: list[dict[str, Any]] = []
        self._bar = None
        if progress:
            from tqdm import tqdm

            self._bar = tqdm(total=n, desc=desc, unit="neuron", leave=False)

    def peel(self, remaining: np.ndarray, choice: np.ndarray) -> np.ndarray:
        """One round: remove the sink SCCs of ``remaining[i] -> choice[i]``.

        ``choice`` (r, k) holds neuron ids (``-1`` = none), all of them in ``remaining``.
        Returns the neurons that are still left.
        """
        r = remaining.size
        local = np.full(self.n, -1, dtype=np.int64)
        local[remaining] = np.arange(r)
        valid = choice >= 0
        src = np.broadcast_to(np.arange(r)[:, None], choice.shape)[valid]
        labels = sink_labels(r, src, local[choice[valid]])
        new = groups_of(labels, remaining)
        removed = remaining[labels >= 0]
        t = len(self.diagnostics)
        self.alive[removed] = False
        self.removal_round[removed] = t
        self.coalitions.extend(new)
        self.diagnostics.append(
            {
                "round": t,
                "remaining": int(r),
                "removed": int(removed.size),
                "n_sink_sccs": len(new),
                "largest_removed": int(np.bincount(labels[labels >= 0]).max(initial=0)),
            }
        )
        if self._bar is not None:
            self._bar.update(int(removed.size))
        return remaining[labels < 0]

    def lost_partner(self, left: np.ndarray, choice: np.ndarray) -> np.ndarray:
        """The neurons of ``left`` whose choice set lost a member in the last round."""
        ch = choice[left]
        return left[((ch >= 0) & ~self.alive[np.maximum(ch, 0)]).any(axis=1)]

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _set_results(est: Any, peeling: _Peeling) -> None:
    est._set_result(peeling.coalitions, peeling.n)
    est.removal_round_ = peeling.removal_round
    est.n_rounds_ = len(peeling.diagnostics)
    est.diagnostics_ = peeling.diagnostics


# ------------------------------------------------------------------------------ TopCover


class TopCover(Partitioner):
    """Exact Top Covering: B_i = Ch(i, R), computed from phi (registered as ``"exact"``).

    Each round removes every sink SCC of the choice digraph on the remaining neurons R. Only
    neurons whose choice set lost a member are recomputed; for that every neuron keeps a
    short list of its best positive partners (best first), and phi is read again only for a
    neuron whose list runs out.

    Attributes after :meth:`fit`: ``coalitions_`` (sorted int lists covering 0..n-1 once,
    largest first), ``labels_``, ``removal_round_`` (round in which each neuron was placed),
    ``n_rounds_``, ``diagnostics_`` (one dict per round: remaining, removed, n_sink_sccs,
    largest_removed, recomputed), and ``partition_``. A :class:`~hedonic_neurons.partition.Partitioner`
    that requires phi; deterministic (it has no ``random_state``).
    """

    requires = "phi"
    hedonic = True
    deterministic = True

    def __init__(self, k: int = 2, *, min_z: float | None = None, progress: bool = False) -> None:
        self.k = k
        self.min_z = min_z
        self.progress = progress

    def fit(self, phi: Any, se: Any = None) -> TopCover:
        """Partition the neurons of ``phi`` (n x n, symmetric); returns ``self``.

        With ``min_z`` set, ``se`` (the standard errors of phi, n x n) is required and only
        partners with phi_ij > min_z * se_ij count (the thresholded game,
        :mod:`hedonic_neurons.game.significance`).
        """
        phi = thresholded(phi, se, self.min_z)
        n = phi.shape[0]
        k = check_k(self.k, n)
        width = min(n - 1, max(4 * k, 8))
        peeling = _Peeling(n, self.progress, "top-cover")
        everyone = np.zeros(n, dtype=np.int64)
        first, more = group_choice(phi, np.arange(n), everyone, width)
        cand = first.partners
        choice = np.full((n, k), -1, dtype=np.int64)
        dirty = np.arange(n)
        try:
            while peeling.alive.any():
                recomputed = self._refresh(phi, peeling.alive, cand, more, choice, dirty, k, width)
                left = peeling.peel(np.flatnonzero(peeling.alive), choice[peeling.alive])
                peeling.diagnostics[-1].update(changed=int(dirty.size), recomputed=recomputed)
                dirty = peeling.lost_partner(left, choice)
        finally:
            peeling.close()
        _set_results(self, peeling)
        return self

    def diagnostics(self) -> dict[str, Any]:
        """``{"diagnostics": {"n_rounds", "rounds"}}`` for the partition file."""
        return {"diagnostics": {"n_rounds": self.n_rounds_, "rounds": self.diagnostics_}}

    @staticmethod
    def _refresh(
        phi: np.ndarray,
        alive: np.ndarray,
        cand: np.ndarray,
        more: np.ndarray,
        choice: np.ndarray,
        rows: np.ndarray,
        k: int,
        width: int,
    ) -> int:
        """Recompute Ch(i, R) for ``rows`` from their partner lists (re-reading phi if short)."""
        ok = (cand[rows] >= 0) & alive[np.maximum(cand[rows], 0)]
        short = rows[(ok.sum(axis=1) < k) & more[rows]]
        if short.size:  # the list ran out while more positive partners may remain in R
            groups = np.where(alive, 0, -1)
            fresh, more[short] = group_choice(phi, short, groups, width)
            cand[short] = fresh.partners
            ok = (cand[rows] >= 0) & alive[np.maximum(cand[rows], 0)]
        take = ok & (np.cumsum(ok, axis=1) <= k)
        order = np.argsort(~take, axis=1, kind="stable")[:, :k]
        kept = np.take_along_axis(take, order, axis=1)
        choice[rows] = np.where(kept, np.take_along_axis(cand[rows], order, axis=1), -1)
        return int(short.size)


# ---------------------------------------------------------------------------- PACTopCover


def pac_budget(remaining: int, epsilon: float, delta: float, round_index: int) -> int:
    """Samples per re-estimated neuron in one PAC round: ceil(ln(r * t(t+1) / delta) / epsilon).

    ``r`` remaining neurons, ``t`` = round_index (1-based). See :class:`PACTopCover`.
    """
    t = round_index
    return max(1, math.ceil(math.log(remaining * t * (t + 1) / delta) / epsilon))


class PACTopCover(Partitioner):
    """PAC Top Covering: Top Covering with choice sets estimated from samples (registered as
    ``"pac"``).

    Round t works on the remaining neurons R. A neuron i whose choice set must be (re-)estimated
    gets fresh samples, coalitions of R that contain i, from a distribution D_i chosen by
    ``sampling``. T_i* is i's best sample (the preference of
    :func:`~hedonic_neurons.game.utility.prefers`; the earlier sample among equals) and
    B_i = Ch(i, T_i*). All sink SCCs of the digraph i -> B_i are output and removed, and the
    next round re-estimates only the neurons whose B_i lost a member: as in exact Top Covering,
    a choice set still inside R stays valid (Ch(i, T_i* ∩ R) = B_i), which keeps the number of
    rounds close to Top Covering's. (Re-drawing every choice set every round instead makes the
    digraph a new random graph each round whose few small closed sets are all that is removed:
    on a random phi with n = 4,096 that took 36 rounds of ~200k samples each, and grows with n.)

    **Sampling distributions D_i** (both on the round's R):

    * ``sampling="uniform"`` (default): D restricted to R, kept to the coalitions that contain
      i, drawn directly instead of by rejection. D draws a size s uniform on
      {min_size..max_size} (capped at |R|) and then a uniform subset of R of that size, so given
      that the subset contains i, s has probability proportional to s and the rest of the
      coalition is a uniform (s-1)-subset of R \\ {i}.
    * ``sampling="phi"``: coalitions grown from i. A target size s uniform on
      {min_size..max_size} (capped at |R|), then s - 1 distinct partners from R \\ {i} drawn one
      after another, each with probability proportional to w_ij = max(phi_ij, 0) ** phi_power
      among the partners not drawn yet. A partner with phi_ij <= 0 is never drawn; a neuron
      with fewer than s - 1 positive partners left in R takes all of them (a smaller
      coalition; with none it gets the singleton {i}). With ``phi_power=1`` (default) this is the
      phi-aware sampler of :func:`~hedonic_neurons.game.certify` (``distribution="phi"``,
      :func:`~hedonic_neurons.game.sampling.phi_coalitions`) with its seed fixed to i and its
      pool restricted to R; a larger ``phi_power`` concentrates the draws on i's strongest
      partners (the law depends only on the ratios of phi within i's row, so it is scale-free).
      Why: uniform samples rarely hold two given partners of i at once (on planted groups of 3
      at n = 14,336 a neuron's 266 samples of about 7 members almost never do); growing from i
      along phi puts them together. But with ``phi_power=1`` the many small positive phi of
      noise still outweigh a few strong partners (with noise sd 0.1 against a signal of 1,
      their summed positive phi is about 0.04 n, against 2). On planted triples
      (``benchmarks/bench_game.py --recovery``, default budget) the ARI is, at n = 4,096 and
      14,336: uniform 0.0001 and 0.0000; phi with ``phi_power`` 1: 0.0005 and 0.0001; 2: 1.000
      and 0.98; 4: 1.000 and 1.000 (exact Top Covering: 1.000). A "phi" sample costs about 4x
      the CPU time of a "uniform" one (n = 14,336, ``phi_power=4``: 3.8M samples, 9 s).

    Both give every neuron the same number of samples and read only the re-estimated neurons'
    own rows of phi ("phi": one block of rows of R at a time).

    **Sample budget and what it guarantees.** ``n_samples=None`` gives every re-estimated
    neuron, in round t with r neurons left,

        A_t = ceil( ln(r * t(t+1) / delta) / epsilon )

    samples. The argument uses only that, in round t, each re-estimated neuron i gets A_t
    independent samples from a distribution D_i (here D_i^t: it depends on the round's R, which
    the earlier rounds fixed), so it holds for either ``sampling`` and is **relative to the
    D_i the samples come from**. Let H be the smallest set of i's best coalitions (an upper
    set of i's order, which ranks coalitions by :func:`~hedonic_neurons.game.utility.prefers`
    with ties only between equal choice sets of equal size, so such sets are nested) with
    D_i(H) >= epsilon. If one of the A_t samples falls in H, then T_i* is in H and the
    coalitions i strictly prefers to T_i* form an upper set smaller than H, so their
    D_i-probability is < epsilon. All A_t samples miss H with probability <= (1 - epsilon)^A_t
    <= exp(-epsilon A_t) <= delta / (r t(t+1)), whatever happened in earlier rounds. A union
    bound over the at most r neurons of round t and over all rounds (sum of 1/(t(t+1)) <= 1)
    gives: **with
    probability >= 1 - delta, for every round t and every neuron i re-estimated in it, the
    coalitions of R that i strictly prefers to T_i* have D_i^t-probability < epsilon**, and
    B_i = Ch(i, T_i*). Nothing is said about coalitions that D_i gives little or no weight:
    under ``"phi"`` every coalition holding a neuron j with phi_ij <= 0 has probability 0 (for
    i such a coalition is never better than the same coalition without j), and an epsilon
    share of D_i under ``"phi"`` and under ``"uniform"`` are different sets of coalitions, so
    the two guarantees do not compare. At n = 14,336 and epsilon = delta = 0.05, A_1 = 266 samples per neuron
    (3.8M samples; "uniform" ones have about 7 neurons). This is a per-neuron guarantee on
    the sampled choice sets, not Sliwinski-Zick's theorem for the partition: their bound,
    (2n^4 + 2n^3) * ceil(ln(2n^3/delta)/epsilon), is about 10^19 samples at n = 14,336 and
    cannot be run. The stability actually reached is measured by
    :func:`~hedonic_neurons.game.certify`. An integer ``n_samples`` replaces A_t. Every
    re-estimated neuron gets at least one sample, so no neuron is ever left without a choice
    set, and every round removes at least one sink SCC (at most n rounds). Under either
    distribution a coalition that holds Ch(i, R) has positive probability (max_size >= k + 1;
    for "phi" unless ``phi_power`` > 1 underflows a partner's w_ij to 0 in float64), so as the
    budget grows every B_i becomes Ch(i, R) and the output becomes Top Covering's.

    Attributes after :meth:`fit`: ``coalitions_``, ``labels_``, ``removal_round_``,
    ``n_rounds_``, ``n_samples_`` (total drawn), ``diagnostics_`` (one dict per round:
    remaining, estimated, samples_per_neuron, samples, removed, n_sink_sccs,
    largest_removed), and ``partition_``. A :class:`~hedonic_neurons.partition.Partitioner` that
    requires phi.
    """

    requires = "phi"
    hedonic = True

    def __init__(
        self,
        k: int = 2,
        epsilon: float = 0.05,
        delta: float = 0.05,
        n_samples: int | None = None,
        min_size: int = 2,
        max_size: int = 10,
        random_state: int | np.random.Generator | None = None,
        *,
        sampling: str = "uniform",
        phi_power: float = 1.0,
        min_z: float | None = None,
        progress: bool = False,
    ) -> None:
        self.k = k
        self.min_z = min_z
        self.epsilon = epsilon
        self.delta = delta
        self.n_samples = n_samples
        self.min_size = min_size
        self.max_size = max_size
        self.random_state = random_state
        self.sampling = sampling
        self.phi_power = phi_power
        self.progress = progress

    def _check(self, n: int) -> tuple[int, int, int]:
        k = check_k(self.k, n)
        check_unit("epsilon", self.epsilon)
        check_unit("delta", self.delta)
        lo, hi = check_sizes(self.min_size, self.max_size)
        if hi < k + 1:
            raise ConfigError(
                f"max_size must be >= k + 1 = {k + 1} so a sample can hold a full choice set, got {hi}"
            )
        if self.n_samples is not None:
            check_count("n_samples", self.n_samples)
        if not isinstance(self.sampling, str) or self.sampling not in SAMPLINGS:
            raise ConfigError(f"sampling must be one of {SAMPLINGS}, got {self.sampling!r}")
        p = self.phi_power
        if isinstance(p, bool) or not isinstance(p, Real) or not (math.isfinite(p) and p > 0):
            raise ConfigError(f"phi_power must be a finite number > 0, got {p!r}")
        return k, lo, hi

    def budget(self, remaining: int, round_index: int) -> int:
        """Samples per re-estimated neuron in round ``round_index`` (1-based), r = ``remaining``."""
        if self.n_samples is not None:
            return int(self.n_samples)
        return pac_budget(remaining, float(self.epsilon), float(self.delta), round_index)

    def fit(self, phi: Any, se: Any = None) -> PACTopCover:
        """Partition the neurons of ``phi`` (n x n, symmetric); returns ``self``.

        ``se`` and the ``min_z`` parameter: the thresholded game, as in :meth:`TopCover.fit`.
        """
        phi = thresholded(phi, se, self.min_z)
        n = phi.shape[0]
        k, lo, hi = self._check(n)
        rng = np.random.default_rng(self.random_state)
        peeling = _Peeling(n, self.progress, "pac-top-cover")
        choice = np.full((n, k), -1, dtype=np.int64)
        dirty = np.arange(n)
        how = {"sampling": self.sampling, "power": float(self.phi_power)}
        total = 0
        try:
            while peeling.alive.any():
                remaining = np.flatnonzero(peeling.alive)
                per = self.budget(remaining.size, len(peeling.diagnostics) + 1)
                choice[dirty] = sampled_choice(phi, rng, remaining, dirty, per, lo, hi, k, **how)
                total += per * dirty.size
                left = peeling.peel(remaining, choice[remaining])
                peeling.diagnostics[-1].update(
                    estimated=int(dirty.size), samples_per_neuron=per, samples=per * int(dirty.size)
                )
                dirty = peeling.lost_partner(left, choice)
        finally:
            peeling.close()
        _set_results(self, peeling)
        self.n_samples_ = total
        return self

    def diagnostics(self) -> dict[str, Any]:
        """``{"diagnostics": {"n_rounds", "n_samples", "rounds"}}`` for the partition file."""
        return {
            "diagnostics": {
                "n_rounds": self.n_rounds_,
                "n_samples": self.n_samples_,
                "rounds": self.diagnostics_,
            }
        }


def sampled_choice(
    phi: np.ndarray,
    rng: np.random.Generator,
    remaining: np.ndarray,
    players: np.ndarray,
    per_player: int,
    min_size: int,
    max_size: int,
    k: int,
    *,
    sampling: str = "uniform",
    power: float = 1.0,
) -> np.ndarray:
    """B_i = Ch(i, T_i*) for each of ``players``, from ``per_player`` samples each.

    ``sampling="uniform"``: samples come from D restricted to ``remaining`` (sorted),
    conditioned on containing the player; ``"phi"``: coalitions grown from the player inside
    ``remaining`` along positive phi (``phi_ij ** power``; see :class:`PACTopCover` and
    :func:`~hedonic_neurons.game.sampling.grown_coalitions`). Only the players' own rows of
    phi are read. Returns (len(players), k) neuron ids, ``-1`` padded.
    """
    if sampling == "phi":
        return _grown_choice(phi, rng, remaining, players, per_player, min_size, max_size, k, power)
    r = remaining.size
    lo, hi = min(min_size, r), min(max_size, r)
    sizes = np.arange(lo, hi + 1)
    size_prob = sizes / sizes.sum()
    where = np.searchsorted(remaining, players)
    out = np.full((players.size, k), -1, dtype=np.int64)
    step = max(1, SAMPLE_CHUNK // per_player)
    for start in range(0, players.size, step):
        who = np.arange(start, min(start + step, players.size))
        owner = np.repeat(np.arange(who.size), per_player)
        size = rng.choice(sizes, size=owner.size, p=size_prob)
        partners = np.full((owner.size, k), -1, dtype=np.int64)
        chosen = np.zeros((owner.size, k))
        for s in range(max(lo, 2), hi + 1):
            ids = np.flatnonzero(size == s)
            if not ids.size:
                continue
            x = subset_indices(rng, r - 1, ids.size, s - 1)  # a subset of R without the player
            x += x >= where[who[owner[ids]]][:, None]
            cols = remaining[x]
            pos, chosen[ids] = choice_sets(phi[players[who[owner[ids]]][:, None], cols], k, overwrite=True)
            partners[ids] = np.where(pos >= 0, np.take_along_axis(cols, np.maximum(pos, 0), axis=1), -1)
        choice = Choice(partners, chosen)
        best = best_entries(
            owner, who.size, u=choice.u, size=size, choice=choice, sample=np.arange(owner.size)
        )
        out[who] = partners[best]
    return out


def _grown_choice(
    phi: np.ndarray,
    rng: np.random.Generator,
    remaining: np.ndarray,
    players: np.ndarray,
    per_player: int,
    min_size: int,
    max_size: int,
    k: int,
    power: float,
) -> np.ndarray:
    """:func:`sampled_choice` with coalitions grown from each player (``sampling="phi"``)."""
    n = phi.shape[0]
    out = np.full((players.size, k), -1, dtype=np.int64)
    step = max(1, SAMPLE_CHUNK // per_player)
    for start in range(0, players.size, step):
        who = players[start : start + step]
        owner, members = grown_coalitions(
            phi, rng, remaining, who, per_player, min_size, max_size, power=power
        )
        cols = np.full(members.shape, n, dtype=np.int64)  # the partners in index order; n: none
        cols[:, :-1] = np.sort(np.where(members[:, 1:] >= 0, members[:, 1:], n), axis=1)
        real = cols < n
        vals = np.where(real, phi[who[owner][:, None], np.minimum(cols, n - 1)], -np.inf)
        pos, chosen = choice_sets(vals, k, overwrite=True)
        partners = np.where(pos >= 0, np.take_along_axis(cols, np.maximum(pos, 0), axis=1), -1)
        choice = Choice(partners, chosen)
        size = 1 + real.sum(axis=1)
        best = best_entries(
            owner, who.size, u=choice.u, size=size, choice=choice, sample=np.arange(owner.size)
        )
        out[start : start + who.size] = partners[best]
    return out


def best_entries(
    player: np.ndarray, n_players: int, *, u: np.ndarray, size: np.ndarray, choice: Choice, sample: np.ndarray
) -> np.ndarray:
    """Index of each player's best entry (-1 if none), in the order of ``utility.prefers``.

    Utility desc, then the choice set (members best first: phi desc, index asc), then size asc,
    then the earlier sample. Only entries tied on utility go through the full sort.
    """
    best_u = np.full(n_players, -np.inf)
    np.maximum.at(best_u, player, u)
    top = np.flatnonzero(u == best_u[player])
    count = np.bincount(player[top], minlength=n_players)
    out = np.full(n_players, -1, dtype=np.int64)
    single = top[count[player[top]] == 1]
    out[player[single]] = single
    tied = top[count[player[top]] > 1]
    if tied.size:
        keys = [sample[tied], size[tied]]
        for t in reversed(range(choice.chosen.shape[1])):
            keys += [choice.partners[tied, t], -choice.chosen[tied, t]]
        order = tied[np.lexsort([*keys, player[tied]])]
        first = np.ones(order.size, dtype=bool)
        first[1:] = player[order[1:]] != player[order[:-1]]
        out[player[order[first]]] = order[first]
    return out


PARTITIONERS.add("exact", TopCover)
PARTITIONERS.add("pac", PACTopCover)
