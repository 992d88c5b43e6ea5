"""Tracking against a size-preserving random-partition null: planted flows, random partitions."""

from __future__ import annotations

import numpy as np
import pytest

from hedonic_neurons.errors import ConfigError, DataError
from hedonic_neurons.tracking import interaction_mass, track_layers
from hedonic_neurons.tracking.mass import mass_batch
from hedonic_neurons.tracking.null import (
    classify_null,
    draw_partition_labels,
    lifts,
    null_model,
)


@pytest.mark.parametrize("gated", [True, False])
def test_mass_batch_equals_interaction_mass_per_partition(gated):
    rng = np.random.default_rng(0)
    d, n, n2, K, K2 = 12, 50, 45, 7, 5
    down, up = rng.normal(size=(d, n)), rng.normal(size=(n2, d))
    gate = rng.normal(size=(n2, d)) if gated else None
    g, A = rng.uniform(0.5, 1.5, size=d), rng.uniform(0, 1, size=n)
    src = rng.integers(-1, K, size=(6, n))  # -1: untracked
    tgt = rng.integers(-1, K2, size=(6, n2))
    src[:, :K] = np.arange(K)  # no empty coalition
    tgt[:, :K2] = np.arange(K2)
    for bs in (1, 9, 1000):
        got = mass_batch(down, up, gate, g, A, src, tgt, K, K2, block_size=bs)
        assert got.shape == (6, K, K2)
        for r in range(6):
            expected = interaction_mass(
                down,
                up,
                gate,
                g,
                A,
                [np.flatnonzero(src[r] == c) for c in range(K)],
                [np.flatnonzero(tgt[r] == c) for c in range(K2)],
            )
            np.testing.assert_allclose(got[r], expected, rtol=1e-5)


def test_draw_partition_labels_keeps_sizes_and_uses_every_neuron():
    rng = np.random.default_rng(1)
    sizes = [5, 3, 3, 2]
    labels = draw_partition_labels(sizes, 20, 400, rng)
    for row in labels:
        assert np.bincount(row[row >= 0], minlength=4).tolist() == sizes
    # each neuron is tracked with probability 13/20, each coalition holds it with size/20
    np.testing.assert_allclose((labels >= 0).mean(0), 13 / 20, atol=0.1)
    np.testing.assert_allclose((labels == 0).mean(), 5 / 20, atol=0.01)
    with pytest.raises(DataError, match="do not fit"):
        draw_partition_labels([15, 10], 20, 1, rng)


# ------------------------------------------------------------------------- planted two-layer model

N_COAL, SIZE = 16, 4  # 16 coalitions of 4 neurons on each side: n = n' = 64


def planted_layers(seed: int = 0):
    """Two layers whose W_eff has planted flows on a noisy background (down = I, so the next
    layer's input rows are W_eff / g), on shuffled neurons:

    S0 -> T0 persists; S1 -> T1 + T2 splits; S2 + S3 -> T3 merge; S4 writes almost nothing
    (vanishes); T15 receives almost nothing (emerges); everything else is background only.
    """
    rng = np.random.default_rng(seed)
    n = N_COAL * SIZE
    src_perm, tgt_perm = rng.permutation(n), rng.permutation(n)
    src = [sorted(src_perm[SIZE * i : SIZE * (i + 1)].tolist()) for i in range(N_COAL)]
    tgt = [sorted(tgt_perm[SIZE * j : SIZE * (j + 1)].tolist()) for j in range(N_COAL)]
    A = rng.uniform(0.8, 1.2, size=n)
    w_eff = rng.uniform(0.5, 1.5, size=(n, n))  # [q, p] per unit of A_p
    for i, j in ((0, 0), (1, 1), (1, 2), (2, 3), (3, 3)):
        w_eff[np.ix_(tgt[j], src[i])] += 8.0
    w_eff[:, src[4]] *= 0.02
    w_eff[tgt[15], :] *= 0.02
    g = rng.uniform(0.5, 2.0, size=n)
    down = np.eye(n)
    w_in = w_eff / A[None, :] / g[None, :]  # M then has the designed values in units of W_eff
    return src, tgt, A, g, down, w_in


def test_planted_flows_are_labelled_by_the_null_rule():
    src, tgt, A, g, down, up = planted_layers()
    res = track_layers(down, up, None, g, A, src, tgt, layer=7, null_draws=200, seed=3)
    assert res.rule == "null" and res.target_layer == 8 and res.null["draws"] == 200
    assert res.source_labels[:5] == ["persistence", "split", "merge", "merge", "vanishing"]
    assert res.source_labels[5:] == ["unstructured"] * 11
    assert res.target_labels[:4] == ["persistence", "split", "split", "merge"]
    assert res.target_labels[4:15] == ["unstructured"] * 11 and res.target_labels[15] == "emergence"
    links = {(link["source"], link["target"]): link for link in res.links}
    assert sorted(links) == [(0, 0), (1, 1), (1, 2), (2, 3), (3, 3)]
    tau_a, tau_b = res.null["tau_alpha"], res.null["tau_beta"]
    for link in links.values():  # every link passes the rule, far above the null's 95th percentile
        assert link["lift_alpha"] >= tau_a and link["lift_beta"] >= tau_b
        assert link["pct_alpha"] == 100.0 and link["pct_beta"] == 100.0
    # the split's children each get about half of S1's share: alpha 9/32 of 16 targets
    assert links[(1, 1)]["lift_alpha"] == pytest.approx(16 * 9 / 32, rel=0.1)
    assert res.counts == {
        "persistence": 1,
        "split": 1,
        "merge": 2,
        "vanishing": 1,
        "unstructured": 11,
        "emergence": 1,
    }
    np.testing.assert_allclose(res.percentages["unstructured"], 100 * 11 / 16)
    # the vanishing source's outgoing mass is below every null source's
    assert res.source_pct_out[4] == 0.0 and res.target_pct_in[15] == 0.0
    # the matching is still reported, with lifts and percentiles per matched pair
    by_src = {i: (j, lab) for i, j, lab in res.matches}
    assert by_src[0] == (0, "persistence") and by_src[2][1] in ("merge", "unstructured")
    assert len(res.pct_alpha) == len(res.matches) and all(0 <= p <= 100 for p in res.pct_alpha)
    doc = res.to_dict()
    assert doc["links"][0]["source_coalition"] == 0 and doc["null"]["level"] == 0.95


def test_the_absolute_rule_misses_the_planted_flows():
    """Why the null: with 16 targets every alpha is < 0.5, so A11's tau = 0.5 calls the planted
    persistence "vanishing" (the kept rule, by name)."""
    src, tgt, A, g, down, up = planted_layers()
    res = track_layers(down, up, None, g, A, src, tgt, rule="matching")
    assert res.source_labels[0] == "vanishing" and res.source_labels[1] == "vanishing"


def test_random_partition_is_unstructured():
    """On the same planted model, random partitions of the same sizes are labelled unstructured
    about 95% of the time (>= 90% here, pooled over 8 partitions = 128 sources)."""
    _, _, A, g, down, up = planted_layers()
    n = N_COAL * SIZE
    labels = []
    for seed in range(8):
        rng = np.random.default_rng(100 + seed)
        perm_s, perm_t = rng.permutation(n), rng.permutation(n)
        src = [perm_s[SIZE * i : SIZE * (i + 1)].tolist() for i in range(N_COAL)]
        tgt = [perm_t[SIZE * j : SIZE * (j + 1)].tolist() for j in range(N_COAL)]
        res = track_layers(down, up, None, g, A, src, tgt, layer=0, null_draws=100, seed=seed)
        labels += res.source_labels
    assert labels.count("unstructured") / len(labels) >= 0.90


def test_null_is_calibrated_by_construction():
    src, _, A, g, down, up = planted_layers()
    sizes = [len(c) for c in src]
    for level in (0.9, 0.95):
        null = null_model(down, up, None, g, A, sizes, sizes, draws=150, level=level, seed=5)
        # at most 1 - level of the null's own sources are structured, and not far fewer
        assert 1 - level - 0.02 <= null.structured_fraction <= 1 - level + 1e-12
        assert null.best_alpha.size == 150 * N_COAL and null.q >= level
    # a stricter level moves every threshold outwards
    loose = null_model(down, up, None, g, A, sizes, sizes, draws=150, level=0.8, seed=5)
    assert loose.tau_alpha <= null.tau_alpha and loose.tau_out >= null.tau_out


def test_thresholds_are_the_decisions():
    """A link is significant exactly when both lifts reach the thresholds; a source vanishes
    exactly when its outgoing mass is at or below tau_out."""
    src, tgt, A, g, down, up = planted_layers(seed=1)
    sizes = [len(c) for c in src]
    null = null_model(down, up, None, g, A, sizes, sizes, draws=100, seed=2)
    rng = np.random.default_rng(9)
    for _ in range(5):  # partitions mixing planted and random coalitions
        mix_s = [c if rng.random() < 0.5 else None for c in src]
        free = np.setdiff1d(np.arange(64), [p for c in mix_s if c for p in c])
        rng.shuffle(free)
        it = iter(free.reshape(-1, SIZE).tolist())
        coalitions = [c if c else next(it) for c in mix_s]
        mass = interaction_mass(down, up, None, g, A, coalitions, tgt)
        out = classify_null(mass, null)
        la, lb, out_mass, _ = lifts(mass)
        vanish = out_mass <= null.tau_out
        sig = (la >= null.tau_alpha) & (lb >= null.tau_beta) & ~vanish[:, None]
        assert sorted((i, j) for i, j, _ in out["links"]) == sorted(zip(*map(list, np.nonzero(sig))))
        assert [lab == "vanishing" for lab in out["source_labels"]] == vanish.tolist()
    # percentiles: the share of the null's best lifts at or below the value
    x = float(np.median(null.best_alpha))
    assert null.pct_alpha(x) == pytest.approx(100 * np.mean(null.best_alpha <= x))


def test_lifts_are_shares_times_counts():
    mass = np.array([[2.0, 2.0, 0.0], [1.0, 0.0, 3.0]])
    la, lb, out, inc = lifts(mass)
    np.testing.assert_allclose(la, [[1.5, 1.5, 0.0], [0.75, 0.0, 2.25]])
    np.testing.assert_allclose(lb, [[2 * 2 / 3, 2.0, 0.0], [2 / 3, 0.0, 2.0]])
    np.testing.assert_allclose(out, [4, 4]) and np.testing.assert_allclose(inc, [3, 2, 3])


def test_bad_null_settings_are_one_line_errors():
    src, tgt, A, g, down, up = planted_layers()
    with pytest.raises(ConfigError, match="null draws"):
        track_layers(down, up, None, g, A, src, tgt, null_draws=5)
    with pytest.raises(ConfigError, match="null level"):
        track_layers(down, up, None, g, A, src, tgt, null_level=1.0)
    with pytest.raises(ConfigError, match="sets it from the null"):
        track_layers(down, up, None, g, A, src, tgt, tau=0.5)
    with pytest.raises(ConfigError, match="must come after"):
        track_layers(down, up, None, g, A, src, tgt, layer=3, target_layer=3)
    with pytest.raises(DataError, match="partitions"):
        mass_batch(down, up, None, g, A, np.zeros((2, 64), int), np.zeros((3, 64), int), 1, 1)
