"""Stability certificates (issue 5, method A10): samplers, blocking rates, exact bounds."""

from __future__ import annotations

import itertools
import json
from math import comb

import numpy as np
import pytest
from scipy.stats import beta, binomtest

from hedonic_neurons.errors import ConfigError, DataError
from hedonic_neurons.game import Certificate, TopCover, certify, clopper_pearson_upper
from hedonic_neurons.game.sampling import phi_coalitions, uniform_coalitions
from test_game import ref_blocking, ref_prefers, sym


def test_clopper_pearson_upper_bound():
    for x, n, delta in [(0, 100_000, 0.05), (3, 1000, 0.05), (50, 200, 0.1), (7, 7, 0.05)]:
        ub = clopper_pearson_upper(x, n, delta)
        expected = 1.0 if x == n else beta.ppf(1 - delta, x + 1, n - x)
        assert ub == pytest.approx(expected, rel=1e-9)
        # the one-sided 1-delta bound is the upper end of the two-sided 1-2*delta interval
        two_sided = binomtest(x, n).proportion_ci(confidence_level=1 - 2 * delta, method="exact")
        assert ub == pytest.approx(two_sided.high, rel=1e-9)
    assert clopper_pearson_upper(0, 1000, 0.05) == pytest.approx(1 - 0.05 ** (1 / 1000))


def test_uniform_sampler_draws_uniform_subsets_with_uniform_sizes():
    rng = np.random.default_rng(0)
    pool = np.array([2, 3, 5, 7, 11, 13])
    groups = uniform_coalitions(rng, pool, 60_000, 2, 4)
    assert sorted(int(i) for g in groups for i in g.ids) == list(range(60_000))
    for g in groups:
        assert g.size in (2, 3, 4) and g.ids.size == pytest.approx(20_000, rel=0.05)
        assert (np.diff(g.members, axis=1) > 0).all() and np.isin(g.members, pool).all()
        _, counts = np.unique(g.members, axis=0, return_counts=True)
        assert counts.size == comb(6, g.size)
        assert counts.max() / counts.min() < 1.35  # ~20,000 / C(6, s) each
    big = uniform_coalitions(rng, np.arange(1000), 5000, 10, 10)[0].members  # rejection path
    assert (np.diff(big, axis=1) > 0).all()
    assert abs(np.bincount(big.ravel(), minlength=1000).mean() - 50) < 1e-9


def test_phi_sampler_draws_partners_in_proportion_to_positive_phi():
    phi = sym([[0, 3.0, 1.0, -2.0, 0.0], [0, 0, 1, 1, 1], [0, 0, 0, 1, 1], [0, 0, 0, 0, 1], [0, 0, 0, 0, 0]])
    rng = np.random.default_rng(1)
    groups = phi_coalitions(phi, rng, 200_000, 2, 2)
    pairs = np.concatenate([g.members for g in groups if g.size == 2])
    counts = {tuple(p): c for p, c in zip(*np.unique(pairs, axis=0, return_counts=True))}
    # P(pair {0, j}) = P(seed 0) * w_0j / 4 + P(seed j) * w_j0 / (row sum of j)
    rows = np.maximum(phi, 0).sum(axis=1)
    for (i, j), c in counts.items():
        p = (phi[i, j] / rows[i] + phi[j, i] / rows[j]) / 5
        assert c / 200_000 == pytest.approx(p, abs=0.004)
    assert (0, 3) not in counts and (0, 4) not in counts  # phi <= 0 is never drawn

    # sizes 3 from seed 0 (two positive partners): always {0, 1, 2}; a seed with none: singleton
    solo = sym(np.zeros((3, 3)))
    assert all(g.size == 1 for g in phi_coalitions(solo, rng, 100, 2, 5))
    three = phi_coalitions(phi, np.random.default_rng(2), 20_000, 3, 3)
    for g in three:
        assert g.size == 3 and (np.diff(g.members, axis=1) > 0).all()


def test_phi_sampler_successive_sampling_probabilities():
    """Two partners from a seed with weights (0.9, 0.05, 0.05): the exact law of ordered draws.

    The concentrated weight also sends many samples through the one-draw-at-a-time fallback.
    """
    w = np.array([0.0, 0.9, 0.05, 0.05])
    phi = np.zeros((4, 4))
    phi[0], phi[:, 0] = w, w
    groups = phi_coalitions(phi, np.random.default_rng(3), 400_000, 3, 3)
    assert {g.size for g in groups} == {2, 3}  # seeds 1..3 have one positive partner only
    triples = next(g.members for g in groups if g.size == 3)  # all grown from seed 0
    got = {tuple(r): c / len(triples) for r, c in zip(*np.unique(triples, axis=0, return_counts=True))}
    p_12 = 0.9 * 0.05 / 0.1 + 0.05 * 0.9 / 0.95  # 1 then 2, or 2 then 1
    p_23 = 2 * 0.05 * 0.05 / 0.95
    assert len(triples) == pytest.approx(100_000, rel=0.02)
    assert got[(0, 1, 2)] == pytest.approx(p_12, abs=0.006)
    assert got[(0, 1, 3)] == pytest.approx(p_12, abs=0.006)
    assert got[(0, 2, 3)] == pytest.approx(p_23, rel=0.1)


def exact_uniform_blocking_rate(phi, coalitions, k, lo, hi):
    """Pr_{S ~ D}[S blocks], summing over every coalition (n small)."""
    n = len(phi)
    blocking = {tuple(b) for b in ref_blocking(phi.tolist(), coalitions, k)}
    return sum(
        1 / (hi - lo + 1) / comb(n, s)
        for s in range(lo, hi + 1)
        for c in itertools.combinations(range(n), s)
        if c in blocking
    )


def test_uniform_certificate_rate_matches_the_exact_probability():
    rng = np.random.default_rng(5)
    n = 8
    phi = sym(rng.normal(size=(n, n)))
    partition = [[0, 1, 2, 3], [4, 5, 6, 7]]
    exact = exact_uniform_blocking_rate(phi, partition, 2, 2, 5)
    assert 0.01 < exact < 0.9
    cert = certify(phi, partition, k=2, n_samples=50_000, min_size=2, max_size=5, random_state=0)
    assert cert.rate == pytest.approx(exact, abs=4 * np.sqrt(exact * (1 - exact) / 50_000))
    assert cert.n_blocking == round(cert.rate * 50_000) and cert.upper_bound >= cert.rate
    assert tuple(cert.blocking_coalition) in {tuple(b) for b in ref_blocking(phi.tolist(), partition, 2)}


def test_top_cover_partition_is_never_blocked():
    rng = np.random.default_rng(6)
    phi = sym(rng.normal(size=(40, 40)))
    tc = TopCover(k=2).fit(phi)
    for dist in ("uniform", "phi"):
        cert = certify(phi, tc.coalitions_, k=2, n_samples=20_000, distribution=dist, random_state=1)
        assert cert.n_blocking == 0 and cert.blocking_coalition is None
        assert cert.upper_bound == pytest.approx(1 - 0.05 ** (1 / 20_000))


def test_certify_finds_a_planted_blocking_coalition():
    """Neurons 0, 1, 2 are each other's best friends but the partition splits them."""
    rng = np.random.default_rng(8)
    n = 30
    phi = sym(rng.uniform(-0.2, 0.1, size=(n, n)))
    for i, j in itertools.combinations(range(3), 2):
        phi[i, j] = phi[j, i] = 5.0
    bad = [[0, *range(3, 12)], [1, *range(12, 21)], [2, *range(21, 30)]]
    rate = {}
    for dist in ("phi", "uniform"):
        cert = certify(phi, bad, k=2, n_samples=30_000, distribution=dist, random_state=0)
        assert cert.n_blocking > 0
        found = cert.blocking_coalition
        own = {i: c for c in bad for i in c}
        assert all(ref_prefers(phi.tolist(), i, tuple(found), own[i], 2) for i in found)
        rate[dist] = cert.rate
    assert rate["phi"] > 5 * rate["uniform"]  # the phi-aware distribution is the harder test


def test_certificate_to_dict_is_json_and_reproducible():
    phi = sym(np.random.default_rng(9).normal(size=(12, 12)))
    part = [list(range(6)), list(range(6, 12))]
    a = certify(phi, part, n_samples=3000, distribution="phi", random_state=4)
    b = certify(phi, part, n_samples=3000, distribution="phi", random_state=4)
    assert isinstance(a, Certificate) and a == b
    d = json.loads(json.dumps(a.to_dict()))
    assert d["confidence"] == pytest.approx(0.95) and d["distribution"] == "phi" and d["k"] == 2


def test_certify_errors():
    phi = sym(np.ones((5, 5)))
    part = [[0, 1, 2, 3, 4]]
    with pytest.raises(ConfigError, match="distribution"):
        certify(phi, part, distribution="gaussian")
    with pytest.raises(ConfigError, match="n_samples"):
        certify(phi, part, n_samples=0)
    with pytest.raises(ConfigError, match="delta"):
        certify(phi, part, delta=1.0)
    with pytest.raises(ConfigError, match="k must be"):
        certify(phi, part, k=5)
    with pytest.raises(DataError, match="no coalition"):
        certify(phi, [[0, 1]])
    with pytest.raises(DataError, match="repeats"):
        certify(phi, [[0, 1, 2], [2, 3, 4]])


def test_prepared_partition_gives_the_same_certificates_and_checks_its_game():
    from hedonic_neurons.errors import ConfigError
    from hedonic_neurons.game import prepare_partition

    rng = np.random.default_rng(3)
    a = rng.normal(size=(80, 80))
    phi = (a + a.T) / 2
    np.fill_diagonal(phi, 0.0)
    coalitions = [list(range(i, min(i + 7, 80))) for i in range(0, 80, 7)]  # not core stable
    prepared = prepare_partition(phi, coalitions, k=2)
    for dist in ("uniform", "phi"):
        plain = certify(phi, coalitions, k=2, n_samples=3000, distribution=dist, random_state=5)
        fast = certify(phi, prepared, k=2, n_samples=3000, distribution=dist, random_state=5)
        assert plain.to_dict() == fast.to_dict()
    assert certify(phi, prepared, k=2, n_samples=3000, distribution="phi", random_state=5).n_blocking > 0
    with pytest.raises(ConfigError, match="prepared partition"):
        certify(phi, prepared, k=3, n_samples=100)
    with pytest.raises(ConfigError, match="prepared partition"):
        certify(phi[:40, :40], prepared, k=2, n_samples=100)


@pytest.mark.parametrize("n", [5, 32, 70, 100])
def test_phi_sampler_first_draw_follows_the_weights_across_blocks(n):
    """The two-level inverse CDF (blocks of columns, then columns) draws column j with
    probability w_j / sum(w), zero weights never, whether n is below, at or past a block size."""
    from hedonic_neurons.game.sampling import DRAW_BLOCK, _partners_from_rows

    rng = np.random.default_rng(n)
    w = rng.random(n) ** 3
    w[rng.random(n) < 0.3] = 0.0  # zero-weight columns, some inside positive blocks
    w[0] = 0.0
    w[-1] = 0.5  # the last (partial) block carries weight
    m = 200_000
    draws = _partners_from_rows(
        np.random.default_rng(0), w[None, :], np.zeros(m, dtype=np.int64), np.ones(m, dtype=np.int64), 1
    )[:, 0]
    assert (draws >= 0).all() and (w[draws] > 0).all()
    freq = np.bincount(draws, minlength=n) / m
    p = w / w.sum()
    assert np.abs(freq - p).max() < 5 * np.sqrt(p.max() / m) + 1e-12
    assert n <= DRAW_BLOCK or np.bincount(draws // DRAW_BLOCK).size == (n - 1) // DRAW_BLOCK + 1


def test_certificates_is_one_certify_per_distribution_on_independent_streams():
    from hedonic_neurons.game import certificates
    from hedonic_neurons.partition import Partition

    rng = np.random.default_rng(11)
    phi = sym(rng.normal(size=(30, 30)))
    part = Partition.from_labels(rng.integers(0, 6, size=30))
    got = certificates(phi, part, k=2, n_samples=3000, random_state=7, min_size=2, max_size=6)
    assert list(got) == ["uniform", "phi"]
    for i, dist in enumerate(("uniform", "phi"), start=1):
        ref = certify(
            phi, part.coalitions, k=2, n_samples=3000, distribution=dist, min_size=2, max_size=6,
            random_state=np.random.default_rng([7, i]),
        )  # fmt: skip
        assert got[dist] == ref
    assert got["uniform"].n_blocking > 0  # a random partition is blocked: the check has teeth
    same = certificates(phi, part, n_samples=3000, random_state={"uniform": 3, "phi": 3}, max_size=6)
    assert same["uniform"] == certify(phi, part, n_samples=3000, random_state=3, max_size=6)
    with pytest.raises(ConfigError, match="no seed for distribution 'phi'"):
        certificates(phi, part, n_samples=10, random_state={"uniform": 3})
