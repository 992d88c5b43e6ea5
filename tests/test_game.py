"""The game solvers (issue 5): MFC utility, sink SCCs, exact and PAC Top Covering.

References: a plain-Python implementation of method A7 (below) and the brute-force core check,
exhaustive grids of small games, and the hand-made cases of method Part B §15.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from hedonic_neurons.artifacts import labels_from_coalitions
from hedonic_neurons.errors import ConfigError, HedonicError, PhiError
from hedonic_neurons.game import (
    PACTopCover,
    TopCover,
    choice_sets,
    is_core_stable,
    pac_budget,
    sink_sccs,
    utility,
)

# ------------------------------------------------------------------ plain-Python reference (A7)


def ref_choice(phi, i, coalition, k):
    """Ch(i, S) by sorting: positive partners by (phi desc, index asc), at most k."""
    cands = sorted((j for j in coalition if j != i and phi[i][j] > 0), key=lambda j: (-phi[i][j], j))
    return cands[:k]


def ref_prefers(phi, i, s, t, k):
    """i strictly prefers S to T: u, then the choice set (phi desc, index asc), then size."""
    cs, ct = ref_choice(phi, i, s, k), ref_choice(phi, i, t, k)
    us, ut = sum(phi[i][j] for j in cs) / k, sum(phi[i][j] for j in ct) / k
    if us != ut:
        return us > ut
    if cs != ct:
        key_s = [(-phi[i][j], j) for j in cs] + [(math.inf, -1)] * (k - len(cs))
        key_t = [(-phi[i][j], j) for j in ct] + [(math.inf, -1)] * (k - len(ct))
        return key_s < key_t
    return len(s) < len(t)


def ref_blocking(phi, coalitions, k):
    """All coalitions that block the partition, by enumeration."""
    n = len(phi)
    own = {i: c for c in coalitions for i in c}
    return [
        list(s)
        for size in range(1, n + 1)
        for s in itertools.combinations(range(n), size)
        if all(ref_prefers(phi, i, s, own[i], k) for i in s)
    ]


def sym(a):
    a = np.triu(np.asarray(a, dtype=np.float64), 1)
    return a + a.T


def game_grid():
    """Small games (n <= 7) with several sign and tie patterns."""
    rng = np.random.default_rng(12345)
    for n in range(2, 8):
        yield f"equal-n{n}", np.ones((n, n)) - np.eye(n)
        yield f"negative-n{n}", -(np.ones((n, n)) - np.eye(n))
        yield f"zeros-n{n}", np.zeros((n, n))
        for rep in range(2):
            yield f"signs-n{n}-{rep}", sym(rng.choice([-1.0, 1.0], size=(n, n)))
            yield f"ties-n{n}-{rep}", sym(rng.choice([-1.0, 0.0, 1.0, 2.0], size=(n, n)))
            yield f"normal-n{n}-{rep}", sym(rng.normal(size=(n, n)))
        half = np.arange(n) < n // 2
        yield f"planted-n{n}", sym(np.where(half[:, None] == half[None, :], 1.0, -0.5))


# ---------------------------------------------------------------------------------- utility


def test_choice_sets_and_utility_by_hand():
    row = np.array([[0.5, 2.0, 2.0, -1.0, 1.0, 0.0]])
    pos, val = choice_sets(row, 2)
    assert pos.tolist() == [[1, 2]] and val.tolist() == [[2.0, 2.0]]
    pos, val = choice_sets(row, 4)
    assert pos.tolist() == [[1, 2, 4, 0]]
    pos, val = choice_sets(row, 6)  # zero and negative phi are never partners
    assert pos.tolist() == [[1, 2, 4, 0, -1, -1]] and utility(val).tolist() == [5.5 / 6]
    pos, val = choice_sets(-np.abs(row), 2)
    assert pos.tolist() == [[-1, -1]] and utility(val).tolist() == [0.0]


def test_tie_rule_is_needed_for_core_stability():
    """With exact ties, ranking equal-u coalitions by size alone lets {1, 3, 6} block Top Cover.

    Neuron 6 ties partners 2 and 3 (phi = 2); Ch breaks the tie towards 2, which pulls 2 and 4
    into the coalition. Under "u, then smaller" only, 1, 3 and 6 would all leave for {1, 3, 6}
    (same utility, smaller). Ranking equal-u choice sets by the tie-break of Ch keeps 6 with 2.
    """
    phi = np.array(
        [
            [0, 1, 0, 0, -1, -1, -1],
            [1, 0, 1, 2, 1, 1, 2],
            [0, 1, 0, 1, 2, 0, 2],
            [0, 2, 1, 0, 1, -1, 2],
            [-1, 1, 2, 1, 0, -1, 1],
            [-1, 1, 0, -1, -1, 0, -1],
            [-1, 2, 2, 2, 1, -1, 0],
        ],
        dtype=float,
    )
    tc = TopCover(k=2).fit(phi)
    assert tc.coalitions_ == [[1, 2, 3, 4, 6], [0], [5]]
    assert is_core_stable(phi, tc.coalitions_, k=2) == (True, None)
    assert ref_blocking(phi, tc.coalitions_, 2) == []
    own = tc.coalitions_[0]
    assert ref_choice(phi, 6, own, 2) == [1, 2] and ref_choice(phi, 6, [1, 3, 6], 2) == [1, 3]
    assert not ref_prefers(phi, 6, (1, 3, 6), own, 2)  # same u, but {1, 2} beats {1, 3}


# --------------------------------------------------------------------------- brute force


@pytest.mark.parametrize("seed", range(6))
def test_is_core_stable_agrees_with_plain_python(seed):
    rng = np.random.default_rng(seed)
    n = 6
    phi = sym(rng.choice([-1.0, 0.0, 1.0, 1.5], size=(n, n)))
    for k in (1, 2):
        for _ in range(4):
            labels = rng.integers(0, 3, size=n)
            coalitions = [np.flatnonzero(labels == c).tolist() for c in np.unique(labels)]
            blocking = ref_blocking(phi, coalitions, k)
            stable, found = is_core_stable(phi, coalitions, k)
            assert stable == (not blocking)
            if not stable:
                assert found in blocking and len(found) == min(len(b) for b in blocking)


# ------------------------------------------------------------------------------ sink SCCs


def test_sink_sccs_two_2_cycles_feeding_a_3_cycle():
    edges = [(0, 1), (1, 0), (1, 4), (2, 3), (3, 2), (3, 5), (4, 5), (5, 6), (6, 4)]
    adj = np.zeros((7, 7), dtype=int)
    for i, j in edges:
        adj[i, j] = 1
    first = sink_sccs(adj)
    assert [c.tolist() for c in first] == [[4, 5, 6]]
    rest = np.setdiff1d(np.arange(7), np.concatenate(first))
    second = sink_sccs(adj[np.ix_(rest, rest)])
    assert [rest[c].tolist() for c in second] == [[0, 1], [2, 3]]


def test_sink_sccs_edge_cases():
    assert [c.tolist() for c in sink_sccs(np.zeros((3, 3)))] == [[0], [1], [2]]  # isolated nodes
    assert [c.tolist() for c in sink_sccs(np.eye(2))] == [[0], [1]]  # self-loops ignored
    chain = np.diag(np.ones(3), 1)  # 0 -> 1 -> 2 -> 3
    assert [c.tolist() for c in sink_sccs(chain)] == [[3]]


# ------------------------------------------------------------------- the §15 hand-made games


def test_three_players_all_friends_form_one_coalition():
    phi = sym([[0, 1.0, 0.5], [0, 0, 0.8], [0, 0, 0]])
    for est in (TopCover(k=2), PACTopCover(k=2, random_state=0)):
        est.fit(phi)
        assert est.coalitions_ == [[0, 1, 2]] and est.n_rounds_ == 1


def test_mutual_top_choices_leave_first():
    """1 and 2 are each other's top choice and 3 likes 1: {1, 2} in round 1, then {3}."""
    phi = sym([[0, 2.0, 1.0], [0, 0, -1.0], [0, 0, 0]])
    for est in (TopCover(k=1), PACTopCover(k=1, random_state=0)):
        est.fit(phi)
        assert est.coalitions_ == [[0, 1], [2]]
        assert est.removal_round_.tolist() == [0, 0, 1] and est.n_rounds_ == 2


def test_neurons_without_positive_partner_are_singletons():
    phi = sym([[0, 1, -1, 0], [0, 0, -1, 0], [0, 0, 0, -2], [0, 0, 0, 0]])
    for est in (TopCover(k=1), PACTopCover(k=1, random_state=0)):
        assert est.fit(phi).coalitions_ == [[0, 1], [2], [3]]


# -------------------------------------------------------------------------- exhaustive grid


def test_exhaustive_grid_top_cover_is_core_stable_and_pac_converges_to_it():
    checked = 0
    for name, phi in game_grid():
        n = phi.shape[0]
        for k in range(1, min(n, 4)):
            tc = TopCover(k=k).fit(phi)
            stable, blocking = is_core_stable(phi, tc.coalitions_, k)
            assert stable, f"{name} k={k}: {tc.coalitions_} blocked by {blocking}"
            pac = PACTopCover(k=k, n_samples=400, random_state=checked).fit(phi)
            assert pac.coalitions_ == tc.coalitions_, f"{name} k={k}"
            checked += 1
    assert checked == 150


@pytest.mark.parametrize("seed", range(3))
def test_random_games_up_to_12_neurons_are_core_stable(seed):
    rng = np.random.default_rng(100 + seed)
    for n in (9, 12):
        phi = sym(rng.normal(size=(n, n)))
        for k in (1, 2, 3):
            tc = TopCover(k=k).fit(phi)
            assert is_core_stable(phi, tc.coalitions_, k) == (True, None)


def naive_top_cover(phi, k):
    """Top Covering as written (Part B §5.2 with all sink SCCs per round), recomputing all."""
    n = len(phi)
    remaining, out = list(range(n)), []
    while remaining:
        pos = {j: p for p, j in enumerate(remaining)}
        adj = np.zeros((len(remaining), len(remaining)))
        for i in remaining:
            for j in ref_choice(phi, i, remaining, k):
                adj[pos[i], pos[j]] = 1
        sinks = [[remaining[p] for p in c] for c in sink_sccs(adj)]
        out += sinks
        gone = {i for c in sinks for i in c}
        remaining = [i for i in remaining if i not in gone]
    return sorted(out, key=lambda c: (-len(c), c[0]))


@pytest.mark.parametrize("values", ["normal", "ties"])
def test_top_cover_incremental_equals_naive_recomputation(values):
    rng = np.random.default_rng(7)
    n = 150
    a = rng.normal(size=(n, n)) if values == "normal" else rng.choice([-1.0, 0.5, 1.0], size=(n, n))
    phi = sym(a)
    for k in (1, 2, 3):
        tc = TopCover(k=k).fit(phi)
        assert tc.coalitions_ == naive_top_cover(phi.tolist(), k)
    assert sum(d["recomputed"] for d in tc.diagnostics_) > 0  # the list-refill path ran


# ------------------------------------------------------------------------- planted groups


def planted(n_groups, size, noise, seed):
    rng = np.random.default_rng(seed)
    truth = rng.permutation(np.repeat(np.arange(n_groups), size))
    phi = (truth[:, None] == truth[None, :]).astype(float) + sym(
        rng.normal(scale=noise, size=(truth.size,) * 2)
    )
    np.fill_diagonal(phi, 0.0)
    return phi, truth


def test_planted_groups_are_recovered():
    """Groups of k + 1 (closed under top-k choice) with noise sd 0.2 against a signal of 1."""
    phi, truth = planted(20, 3, 0.2, seed=0)
    assert adjusted_rand_score(truth, TopCover(k=2).fit(phi).labels_) >= 0.95
    pac = PACTopCover(k=2, n_samples=500, random_state=0).fit(phi)
    assert adjusted_rand_score(truth, pac.labels_) >= 0.95
    phi, truth = planted(10, 5, 0.15, seed=1)
    assert adjusted_rand_score(truth, TopCover(k=4).fit(phi).labels_) >= 0.95


def test_pac_recovery_improves_with_the_sample_budget():
    phi, truth = planted(40, 3, 0.2, seed=0)
    scores = [
        adjusted_rand_score(truth, PACTopCover(k=2, n_samples=m, random_state=0).fit(phi).labels_)
        for m in (30, 2000)
    ]
    assert scores[0] < 0.5 <= 0.95 <= scores[1]


# ------------------------------------------------------------------ estimator contract


def test_same_random_state_same_output_and_a_full_partition():
    rng = np.random.default_rng(3)
    phi = sym(rng.normal(size=(80, 80))).astype(np.float32)
    runs = [PACTopCover(k=2, random_state=5).fit(phi) for _ in range(2)]
    assert runs[0].coalitions_ == runs[1].coalitions_ and runs[0].n_samples_ == runs[1].n_samples_
    assert runs[0].diagnostics_ == runs[1].diagnostics_
    gen = [PACTopCover(k=2, random_state=np.random.default_rng(5)).fit(phi) for _ in range(2)]
    assert gen[0].coalitions_ == gen[1].coalitions_ == runs[0].coalitions_
    for est in (runs[0], TopCover(k=2).fit(phi)):
        c = est.coalitions_
        assert sorted(i for g in c for i in g) == list(range(80))
        assert all(g == sorted(g) for g in c) and [len(g) for g in c] == sorted(map(len, c), reverse=True)
        np.testing.assert_array_equal(est.labels_, labels_from_coalitions(c, 80))
        assert est.removal_round_.min() == 0 and est.removal_round_.max() == est.n_rounds_ - 1


def test_pac_budget_formula_and_diagnostics():
    assert pac_budget(14_336, 0.05, 0.05, 1) == math.ceil(math.log(14_336 * 2 / 0.05) / 0.05) == 266
    rng = np.random.default_rng(4)
    phi = sym(rng.normal(size=(50, 50)))
    est = PACTopCover(k=2, epsilon=0.1, delta=0.2, random_state=0).fit(phi)
    total = 0
    for t, d in enumerate(est.diagnostics_, start=1):
        assert d["samples_per_neuron"] == pac_budget(d["remaining"], 0.1, 0.2, t)
        assert d["samples"] == d["estimated"] * d["samples_per_neuron"]
        total += d["samples"]
    assert est.diagnostics_[0]["estimated"] == 50 and est.n_samples_ == total
    assert sum(d["removed"] for d in est.diagnostics_) == 50
    fixed = PACTopCover(k=2, n_samples=7, random_state=0).fit(phi)
    assert all(d["samples_per_neuron"] == 7 for d in fixed.diagnostics_)


def test_float32_and_float64_give_the_same_partition():
    rng = np.random.default_rng(9)
    phi = sym(rng.normal(size=(60, 60))).astype(np.float32)
    assert TopCover(k=2).fit(phi).coalitions_ == TopCover(k=2).fit(phi.astype(np.float64)).coalitions_
    a = PACTopCover(k=2, random_state=1).fit(phi).coalitions_
    assert a == PACTopCover(k=2, random_state=1).fit(phi.astype(np.float64)).coalitions_


# -------------------------------------------------------------------------------- errors


def one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg and msg
    return msg


@pytest.mark.parametrize("solver", [TopCover, PACTopCover])
def test_bad_phi_is_a_one_line_phi_error(solver):
    for bad, match in [
        (np.zeros((3, 4)), "square"),
        (np.array([[0.0, np.nan], [np.nan, 0.0]]), "non-finite"),
        (np.array([[0.0, 1.0], [0.0, 0.0]]), "not symmetric"),
        (np.zeros((0, 0)), "empty"),
    ]:
        with pytest.raises(PhiError, match=match) as exc:
            solver(k=1).fit(bad)
        one_line(exc)


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"k": 0}, "k must be"),
        ({"k": 5}, "k must be"),
        ({"k": 2.5}, "k must be"),
        ({"epsilon": 0.0}, "epsilon"),
        ({"epsilon": 1.0}, "epsilon"),
        ({"delta": -0.1}, "delta"),
        ({"delta": 1.5}, "delta"),
        ({"min_size": 0}, "min_size"),
        ({"min_size": 5, "max_size": 4}, "max_size must be >= min_size"),
        ({"k": 3, "max_size": 3}, "k \\+ 1"),
        ({"n_samples": 0}, "n_samples"),
    ],
)
def test_bad_parameters_are_one_line_config_errors(params, match):
    phi = sym(np.ones((5, 5)))
    with pytest.raises(ConfigError, match=match) as exc:
        PACTopCover(**params).fit(phi)
    one_line(exc)
    if set(params) == {"k"}:
        with pytest.raises(ConfigError, match=match):
            TopCover(**params).fit(phi)


def test_is_core_stable_refuses_large_n():
    with pytest.raises(HedonicError, match="n <= 12") as exc:
        is_core_stable(np.zeros((13, 13)), [[i] for i in range(13)])
    one_line(exc)
