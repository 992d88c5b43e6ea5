"""PAC Top Covering with phi-aware sampling: the grown-coalition sampler and the solver.

References: brute-force successive-sampling probabilities (every ordered draw sequence
enumerated), exact Top Covering, and planted groups of 3.
"""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest
from scipy.stats import chisquare
from sklearn.metrics import adjusted_rand_score

from hedonic_neurons.errors import ConfigError
from hedonic_neurons.game import PACTopCover, TopCover, sampling
from hedonic_neurons.game.sampling import grown_coalitions, successive_draws
from test_game import game_grid, sym

# ------------------------------------------------------------------------ brute force


def ordered_law(weights, n_draws):
    """P(draw sequence) of successive sampling proportional to ``weights`` (dict: column -> w > 0)."""
    law = {}
    for seq in itertools.permutations(weights, n_draws):
        p, left = 1.0, sum(weights.values())
        for j in seq:
            p *= weights[j] / left
            left -= weights[j]
        law[seq] = p
    return law


def set_law(phi, owner, pool, sizes, power=1.0):
    """P(coalition) of D_owner: target size uniform on ``sizes``, successive draws in ``pool``."""
    w = {int(j): float(phi[owner, j]) ** power for j in pool if j != owner and phi[owner, j] > 0}
    law = Counter()
    for s in sizes:
        need = min(s - 1, len(w))
        for seq, p in ordered_law(w, need).items():
            law[tuple(sorted((owner, *seq)))] += p / len(sizes)
    return law


def assert_matches(counts, law, total):
    """Every observed outcome is possible, and a chi-square test against ``law`` passes."""
    assert set(counts) <= set(law), set(counts) - set(law)
    keys = sorted(law)
    observed = np.array([counts.get(key, 0) for key in keys], dtype=float)
    expected = np.array([law[key] * total for key in keys])
    assert expected.sum() == pytest.approx(total)
    assert chisquare(observed, expected).pvalue > 1e-3
    assert np.abs(observed - expected).max() / total < 0.01


# ---------------------------------------------------------------------------- the sampler


def test_grown_sampler_draws_only_remaining_positive_partners_and_respects_sizes():
    rng = np.random.default_rng(0)
    n = 40
    phi = sym(rng.normal(size=(n, n)))
    phi[3, :] = phi[:, 3] = -np.abs(phi[3])  # no positive partner at all
    phi[3, 3] = 0.0
    phi[5, :] = phi[:, 5] = -1.0  # one positive partner, 6 (outside the pool: 5 has none left)
    phi[5, 6] = phi[6, 5] = 5.0
    phi[7, :] = phi[:, 7] = -1.0  # two positive partners in the pool
    phi[7, [8, 9]] = phi[[8, 9], 7] = [0.5, 2.0]
    np.fill_diagonal(phi, 0.0)
    pool = np.setdiff1d(np.arange(n), [6, 11, 12, 20])
    owners = np.array([0, 1, 3, 5, 7, 8, 39])
    per, lo, hi = 3000, 2, 6
    owner, members = grown_coalitions(phi, np.random.default_rng(1), pool, owners, per, lo, hi)
    assert owner.tolist() == np.repeat(np.arange(owners.size), per).tolist()
    assert members.shape == (owners.size * per, hi)
    assert (members[:, 0] == owners[owner]).all()  # the owner always comes first
    for o, i in enumerate(owners):
        rows = members[owner == o]
        partners = rows[:, 1:]
        real = partners >= 0
        assert (real[:, :-1] | ~real[:, 1:]).all()  # -1 padding only at the end
        got = partners[real]
        assert np.isin(got, pool).all() and (got != i).all()  # remaining neurons, never i
        assert (phi[i, got] > 0).all()  # only positive phi with the owner
        assert all(len(set(r[r >= 0])) == (r >= 0).sum() for r in partners)  # distinct
        n_pos = int((phi[i, pool] > 0).sum())
        size = 1 + real.sum(axis=1)
        # sizes: the target s uniform on {lo..hi}, cut to 1 + (positive partners left)
        expected = {s: 0.0 for s in range(1, hi + 1)}
        for s in range(lo, hi + 1):
            expected[min(s, 1 + n_pos)] += 1 / (hi - lo + 1)
        freq = np.bincount(size, minlength=hi + 1)[1:] / per
        assert freq == pytest.approx([expected[s] for s in range(1, hi + 1)], abs=0.03), i
    assert (members[owner == 2, 1:] == -1).all()  # neuron 3: singletons
    odd = phi.copy()
    odd[0, 0] = 100.0  # a (non-validated) diagonal is never a partner
    _, own = grown_coalitions(odd, np.random.default_rng(2), pool, np.array([0]), 500, 2, 6)
    assert (own[:, 1:] != 0).all()
    assert (members[owner == 3, 1:] == -1).all()  # neuron 5: its partner 6 is not in the pool
    seven = Counter(tuple(sorted(r[r >= 0].tolist())) for r in members[owner == 4])
    assert set(seven) == {(7, 8), (7, 9), (7, 8, 9)}  # s >= 3: fewer than s - 1 left, takes all
    assert seven[(7, 8, 9)] / per == pytest.approx(0.8, abs=0.03)
    assert seven[(7, 9)] / (seven[(7, 8)] + seven[(7, 9)]) == pytest.approx(2.0 / 2.5, abs=0.05)


@pytest.mark.parametrize("power", [1.0, 2.0, 3.5])
def test_grown_sampler_frequencies_match_successive_sampling(power):
    """The coalitions of one owner follow the brute-force law of D_i (sizes uniform on 2..4)."""
    phi = np.zeros((8, 8))
    phi[0, 1:] = [5.0, 1.0, 0.5, 0.2, -1.0, 0.0, 3.0]  # 5, 6 never drawn; 7 not in the pool
    phi = sym(np.triu(phi))
    pool = np.array([0, 1, 2, 3, 4, 5, 6])
    per = 60_000
    _, members = grown_coalitions(phi, np.random.default_rng(7), pool, np.array([0]), per, 2, 4, power=power)
    counts = Counter(tuple(sorted(r[r >= 0].tolist())) for r in members)
    assert_matches(counts, set_law(phi, 0, pool, [2, 3, 4], power), per)


def test_successive_draws_order_law_on_every_path(monkeypatch):
    """Ordered draws (not just sets) match brute force on the fast path; forcing every sample
    off it (so each one ends in the exponential race) gives the same law; and a draw whose
    undrawn weight is tiny restarts on a fresh row and keeps the right law."""
    weights = np.array([[0.0, 4.0, 2.0, 1.0, 0.5, 0.0], [1.0, 0.0, 0.0, 3.0, 0.0, 1.0]])
    m = 40_000
    row = np.repeat([0, 1], m)
    need = np.repeat([3, 2], m)
    for forced in (False, True):
        if forced:
            monkeypatch.setattr(sampling, "MIN_FREE_SHARE", 2.0)  # no sample stays on the fast path
        out = successive_draws(np.random.default_rng(3), weights, row, need, 4)
        for r, d in ((0, 3), (1, 2)):
            got = out[row == r]
            assert (got[:, d:] == -1).all()
            counts = Counter(tuple(x) for x in got[:, :d].tolist())
            w = {j: v for j, v in enumerate(weights[r]) if v > 0}
            assert_matches(counts, ordered_law(w, d), m)
    monkeypatch.undo()
    # after the heavy column the rest holds ~4e-16 of the row, a few float64 steps of its
    # cumulative weight (which would make the three equally likely): the draw must restart
    tiny = np.array([[1.0, 1.5e-16, 1.5e-16, 3e-16]])
    out = successive_draws(np.random.default_rng(4), tiny, np.zeros(m, dtype=np.int64), np.full(m, 2), 2)
    assert (out[:, 0] == 0).mean() > 0.999
    second = Counter(out[out[:, 0] == 0, 1].tolist())
    total = sum(second.values())
    assert chisquare([second[1], second[2], second[3]], [total / 4, total / 4, total / 2]).pvalue > 1e-3


# ----------------------------------------------------------------------------- the solver


def planted(n, noise=0.1, seed=0):
    """Groups of 3 with phi = 1 inside, plus symmetric N(0, noise^2) noise, zero diagonal."""
    rng = np.random.default_rng(seed)
    truth = rng.permutation(np.arange(n) // 3)
    phi = (truth[:, None] == truth[None, :]) + sym(rng.normal(scale=noise, size=(n, n)))
    np.fill_diagonal(phi, 0.0)
    return phi.astype(np.float32), truth


def test_phi_sampling_recovers_planted_triples_where_uniform_does_not():
    phi, truth = planted(300)
    uniform = PACTopCover(k=2, random_state=0).fit(phi)
    grown = PACTopCover(k=2, random_state=0, sampling="phi").fit(phi)
    assert uniform.diagnostics_[0]["samples_per_neuron"] == grown.diagnostics_[0]["samples_per_neuron"] == 188
    assert adjusted_rand_score(truth, grown.labels_) >= 0.95
    assert adjusted_rand_score(truth, uniform.labels_) < 0.2
    assert adjusted_rand_score(truth, TopCover(k=2).fit(phi).labels_) == 1.0


def test_phi_power_concentrates_the_draws_on_strong_partners():
    """At n = 3,000 the noise's many small positive phi drown the two partners for power 1
    (summed positive noise ~ 0.04 n against 2); power 4 recovers the triples (same budget)."""
    phi, truth = planted(3000, seed=1)
    scores = {
        p: adjusted_rand_score(
            truth,
            PACTopCover(k=2, n_samples=60, random_state=0, sampling="phi", phi_power=p).fit(phi).labels_,
        )
        for p in (1.0, 4.0)
    }
    assert scores[1.0] < 0.5 and scores[4.0] >= 0.95


def test_phi_sampling_with_a_huge_budget_is_exact_top_cover():
    checked = 0
    for name, phi in game_grid():
        n = phi.shape[0]
        for k in range(1, min(n, 4)):
            tc = TopCover(k=k).fit(phi)
            pac = PACTopCover(k=k, n_samples=400, random_state=checked, sampling="phi").fit(phi)
            assert pac.coalitions_ == tc.coalitions_, f"{name} k={k}"
            checked += 1
    assert checked == 150
    rng = np.random.default_rng(11)
    for n, power in ((40, 1.0), (60, 3.0)):
        phi = sym(rng.normal(size=(n, n)))
        for k in (1, 2, 3):
            pac = PACTopCover(k=k, n_samples=3000, random_state=k, sampling="phi", phi_power=power)
            assert pac.fit(phi).coalitions_ == TopCover(k=k).fit(phi).coalitions_, (n, k)


def test_phi_sampling_is_reproducible_and_uniform_is_the_default():
    rng = np.random.default_rng(5)
    phi = sym(rng.normal(size=(120, 120))).astype(np.float32)
    runs = [PACTopCover(k=2, random_state=3, sampling="phi").fit(phi) for _ in range(2)]
    assert runs[0].coalitions_ == runs[1].coalitions_ and runs[0].diagnostics_ == runs[1].diagnostics_
    assert sorted(i for c in runs[0].coalitions_ for i in c) == list(range(120))
    plain, uniform = (PACTopCover(k=2, random_state=3, **kw).fit(phi) for kw in ({}, {"sampling": "uniform"}))
    assert plain.coalitions_ == uniform.coalitions_ and plain.diagnostics_ == uniform.diagnostics_
    assert plain.coalitions_ != runs[0].coalitions_  # the two distributions really differ here


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"sampling": "Phi"}, "sampling must be one of"),
        ({"sampling": "bogus"}, "sampling must be one of"),
        ({"sampling": None}, "sampling must be one of"),
        ({"phi_power": 0.0}, "phi_power"),
        ({"phi_power": -1.0}, "phi_power"),
        ({"phi_power": float("inf")}, "phi_power"),
        ({"phi_power": float("nan")}, "phi_power"),
        ({"phi_power": True}, "phi_power"),
        ({"phi_power": "2"}, "phi_power"),
    ],
)
def test_bad_sampling_parameters_are_one_line_config_errors(params, match):
    with pytest.raises(ConfigError, match=match) as exc:
        PACTopCover(k=1, **params).fit(sym(np.ones((5, 5))))
    assert "\n" not in str(exc.value)
