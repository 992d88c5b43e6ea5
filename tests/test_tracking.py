"""Cross-layer tracking: interaction mass against brute force, labels on constructed examples."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from hedonic_neurons.errors import ConfigError, DataError
from hedonic_neurons.models.adapters import block, mlp_modules, mlp_weights
from hedonic_neurons.tracking import (
    alpha_beta,
    classify_transitions,
    effective_influence,
    interaction_mass,
    track_layers,
    transition_table,
    write_transition_table,
)
from hedonic_neurons.tracking.model import layer_pair_weights, mean_abs_activations, next_norm_scale
from tiny import tiny_model


def random_partition(n: int, rng: np.random.Generator, n_coal: int) -> list[list[int]]:
    labels = rng.integers(0, n_coal, size=n)
    labels[:n_coal] = np.arange(n_coal)  # no empty coalition
    return [sorted(np.flatnonzero(labels == c).tolist()) for c in range(n_coal)]


def brute_force_mass(down, up, gate, g, A, src, tgt) -> np.ndarray:
    """The definition, one neuron pair at a time, in float64."""
    down, up = down.detach().double().numpy(), up.detach().double().numpy()
    gate = None if gate is None else gate.detach().double().numpy()
    g = np.ones(down.shape[0]) if g is None else g.detach().double().numpy()
    out = np.zeros((len(src), len(tgt)))
    for a, C in enumerate(src):
        for b, D in enumerate(tgt):
            total = 0.0
            for p in C:
                for q in D:
                    w = abs(sum(up[q, k] * g[k] * down[k, p] for k in range(down.shape[0])))
                    if gate is not None:
                        w += abs(sum(gate[q, k] * g[k] * down[k, p] for k in range(down.shape[0])))
                    total += w * A[p]
            out[a, b] = total / (len(C) * len(D))
    return out


def randomise_norms(model: torch.nn.Module, seed: int) -> None:
    """Freshly initialised norms have weight 1; make them random so the norm scale is tested."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if "norm" in type(mod).__name__.lower() and getattr(mod, "weight", None) is not None:
                mod.weight.copy_(torch.rand(mod.weight.shape, generator=gen) * 1.5 + 0.25)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt_neox", "gpt2", "bert"])
def test_interaction_mass_equals_brute_force_double_sum(family):
    model = tiny_model(family, layers=2, d=8, n=12)
    randomise_norms(model, 1)
    rng = np.random.default_rng(0)
    here, nxt = mlp_weights(model, 0), mlp_weights(model, 1)
    if family == "bert":  # post-LN: layer 0's output LayerNorm and layer 1's attention-output LayerNorm
        g = mlp_modules(model, 0).post_norm.weight * block(model, 1).attention.output.LayerNorm.weight
    else:  # pre-LN: post_attention_layernorm / ln_2 of layer 1
        g = mlp_modules(model, 1).mlp_norm.weight
    g = g.detach()
    A = rng.uniform(0.1, 2.0, size=12)
    src, tgt = random_partition(12, rng, 4), random_partition(12, rng, 3)
    expected = brute_force_mass(here.down, nxt.up, nxt.gate, g, A, src, tgt)
    got = interaction_mass(here.down, nxt.up, nxt.gate, g, A, src, tgt, block_size=5)
    assert (nxt.gate is not None) == (family in {"llama", "qwen2"})
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # the model helper reads the same four inputs
    w = layer_pair_weights(model, 0)
    torch.testing.assert_close(w.norm_scale_next, g.float())
    via_model = interaction_mass(w.down, w.up_next, w.gate_next, w.norm_scale_next, A, src, tgt)
    np.testing.assert_allclose(via_model, expected, rtol=1e-5)


def test_norm_scale_changes_the_mass():
    """Guards against a norm scale that is silently ignored."""
    model = tiny_model("llama", layers=2, d=8, n=12)
    randomise_norms(model, 2)
    w = layer_pair_weights(model, 0)
    A = np.ones(12)
    src, tgt = [list(range(6)), list(range(6, 12))], [list(range(12))]
    with_g = interaction_mass(w.down, w.up_next, w.gate_next, w.norm_scale_next, A, src, tgt)
    without = interaction_mass(w.down, w.up_next, w.gate_next, None, A, src, tgt)
    assert not np.allclose(with_g, without, rtol=1e-3)
    assert next_norm_scale(model, 0) is not None


@pytest.mark.parametrize("gated", [True, False])
def test_blockwise_mass_equals_dense(gated):
    rng = np.random.default_rng(3)
    d, n, n2 = 10, 40, 35
    down = rng.normal(size=(d, n))
    up, gate = rng.normal(size=(n2, d)), rng.normal(size=(n2, d)) if gated else None
    g = rng.uniform(0.5, 1.5, size=d)
    A = rng.uniform(0, 1, size=n)
    # coalitions that do not cover every neuron (untracked neurons are skipped)
    src = [c for c in random_partition(n, rng, 9) if len(c) > 1][:6]
    tgt = [c for c in random_partition(n2, rng, 7) if len(c) > 1][:5]
    w_eff = effective_influence(down, up, gate, g)
    P = np.zeros((n, len(src)))
    for c, members in enumerate(src):
        P[members, c] = 1
    Q = np.zeros((n2, len(tgt)))
    for c, members in enumerate(tgt):
        Q[members, c] = 1
    dense = (P.T * A) @ w_eff.T @ Q / np.outer(P.sum(0), Q.sum(0))
    for bs in (1, 7, 1000):
        np.testing.assert_allclose(
            interaction_mass(down, up, gate, g, A, src, tgt, block_size=bs), dense, rtol=1e-5
        )


def test_alpha_beta_are_shares_before_matching():
    rng = np.random.default_rng(4)
    mass = rng.uniform(0, 1, size=(6, 5))
    mass[2] = 0.0  # a source without mass
    alpha, beta = alpha_beta(mass)
    np.testing.assert_allclose(alpha.sum(1), [1, 1, 0, 1, 1, 1])
    np.testing.assert_allclose(beta.sum(0), np.ones(5))
    np.testing.assert_allclose(alpha[0, 3], mass[0, 3] / mass[0].sum())
    np.testing.assert_allclose(beta[4, 1], mass[4, 1] / mass[:, 1].sum())


# Sources S0..S6 (rows), targets T0..T9 (columns): the mass the constructed weights must produce.
DESIGN = np.zeros((7, 10))
DESIGN[0, 0] = 10  # S0 -> T0 only, T0 fed only by S0: persistence (alpha = beta = 1)
DESIGN[1, [1, 2, 3]] = [4, 3, 3]  # S1 spreads (alpha 0.4), T1 fed only by S1 (beta 1): split
DESIGN[2, 4] = 4  # S2 -> T4 only (alpha 1), T4 also fed by S3 (beta 0.4): merge
DESIGN[3, [4, 5]] = [6, 7]  # S3 matched to T5 (alpha 7/13, beta 1): persistence
DESIGN[4, [6, 7, 8]] = 1  # S4: alpha 1/3, beta 1/4 on its match: vanishing
DESIGN[5, [6, 7, 8]] = 3  # S5: alpha 1/3, beta 3/4: split
# S6 has no mass at all (unmatched: vanishing); T9 receives none (unmatched: emergence)


def constructed_layers(gated: bool):
    """Weights whose interaction mass is DESIGN, on shuffled neurons, with one singleton per side."""
    rng = np.random.default_rng(5)
    n, n2 = 15, 21
    src_perm, tgt_perm = rng.permutation(n), rng.permutation(n2)
    src = [sorted(src_perm[2 * i : 2 * i + 2].tolist()) for i in range(7)] + [[int(src_perm[14])]]
    tgt = [sorted(tgt_perm[2 * j : 2 * j + 2].tolist()) for j in range(10)] + [[int(tgt_perm[20])]]
    A = rng.uniform(0.5, 2.0, size=n)
    g = rng.uniform(0.5, 2.0, size=n)
    down = np.eye(n)  # d_model = n: neuron p writes channel p
    w_eff = np.full((n2, n), 50.0)  # the singletons' weights are large: they must not be tracked
    for i, C in enumerate(src[:7]):
        for j, D in enumerate(tgt[:10]):
            w_eff[np.ix_(D, C)] = DESIGN[i, j] / A[C]
    w_in = w_eff / g  # undo the norm scale
    if gated:  # half through each projection, with opposite signs (absolute values add up)
        return src, tgt, A, g, down, -0.5 * w_in, 0.5 * w_in
    return src, tgt, A, g, down, w_in, None


@pytest.mark.parametrize("gated", [True, False])
def test_constructed_example_labels(gated):
    """The absolute A11 rule, kept by name (it was the default before the null rule)."""
    src, tgt, A, g, down, up, gate = constructed_layers(gated)
    res = track_layers(down, up, gate, g, A, src, tgt, layer=3, rule="matching")
    assert (res.dropped_sources, res.dropped_targets) == (1, 1)
    assert res.source_index == list(range(7)) and res.target_index == list(range(10))
    np.testing.assert_allclose(res.mass, DESIGN, rtol=1e-5, atol=1e-9)
    assert res.source_labels == [
        "persistence",
        "split",
        "merge",
        "persistence",
        "vanishing",
        "split",
        "vanishing",
    ]
    assert [res.target_labels[j] for j in (0, 1, 4, 5, 9, 2, 3)] == ["persistence", "split", "merge"] + [
        "persistence"
    ] + ["emergence"] * 3
    # S4 and S5 share T6..T8: S5 takes one (split), S4 another (vanishing), the third emerges
    assert sorted(res.target_labels[j] for j in (6, 7, 8)) == ["emergence", "split", "vanishing"]
    by_src = {i: (j, lab, a, b) for (i, j, lab), a, b in zip(res.matches, res.alpha, res.beta)}
    assert by_src[0][0] == 0 and by_src[1][0] == 1 and by_src[2][0] == 4 and by_src[3][0] == 5
    assert 6 not in by_src  # no mass, no match
    np.testing.assert_allclose([by_src[1][2], by_src[1][3]], [0.4, 1.0])
    np.testing.assert_allclose([by_src[2][2], by_src[2][3]], [1.0, 0.4])
    np.testing.assert_allclose([by_src[3][2], by_src[3][3]], [7 / 13, 1.0])
    np.testing.assert_allclose([by_src[4][2], by_src[4][3]], [1 / 3, 1 / 4])
    assert res.counts == {"persistence": 2, "split": 2, "merge": 1, "vanishing": 2, "emergence": 4}
    np.testing.assert_allclose(
        [res.percentages[k] for k in ("persistence", "split", "merge", "vanishing", "emergence")],
        [200 / 7, 200 / 7, 100 / 7, 200 / 7, 40.0],
    )
    doc = res.to_dict()
    assert doc["source_layer"] == 3 and doc["target_layer"] == 4
    assert doc["dropped"]["sources"] == 1 and doc["mass"] is not None
    assert doc["matches"][0]["source_size"] == 2


def test_tau_moves_the_labels():
    """tau = 0.3: S1 (alpha 0.4) and S2 (beta 0.4) persist, S4 (alpha 1/3, beta 1/4) merges."""
    src, tgt, A, g, down, up, gate = constructed_layers(False)
    low = track_layers(down, up, gate, g, A, src, tgt, tau=0.3, rule="matching")
    assert low.source_labels[:5] == ["persistence"] * 4 + ["merge"]
    high = track_layers(down, up, gate, g, A, src, tgt, tau=0.6, rule="matching")
    assert high.source_labels[3] == "split"  # alpha 7/13 < 0.6


def test_min_size_drops_and_counts():
    src, tgt, A, g, down, up, gate = constructed_layers(False)
    res = track_layers(down, up, gate, g, A, src, tgt, min_size=3, rule="matching")
    assert (res.dropped_sources, res.dropped_targets) == (8, 11)
    assert res.mass.shape == (0, 0) and res.counts["vanishing"] == 0
    res1 = track_layers(down, up, gate, g, A, src, tgt, min_size=1, rule="matching")
    assert res1.mass.shape == (8, 11) and res1.dropped_sources == 0


def test_code_rule_on_hand_example():
    mass = np.zeros((7, 6))
    mass[0, 0] = 10  # persists with T0
    mass[1, [1, 2]] = [6, 5]  # argmax T1 belongs to S2: two children above 0.3 * 6 -> split
    mass[2, 1] = 7  # persists with T1
    mass[3, [3, 4]] = [2, 10]  # argmax T4 belongs to S5, one child above 3 -> unused ...
    mass[4, [3, 4]] = [2, 10]  # ... as is S4: both feed T3 -> merge
    mass[5, 4] = 20  # persists with T4
    out = classify_transitions(mass, 0.3, rule="code")
    assert out["source_labels"] == [
        "persistence",
        "split",
        "persistence",
        "merge",
        "merge",
        "persistence",
        "vanishing",
    ]
    assert out["target_labels"] == [
        "persistence",
        "persistence",
        "split",
        "merge",
        "persistence",
        "emergence",
    ]
    assert out["counts"] == {"persistence": 3, "split": 1, "vanishing": 1, "merge": 1, "emergence": 1}
    np.testing.assert_allclose(out["percentages"]["merge"], 100 / 6)
    np.testing.assert_allclose(out["percentages"]["persistence"], 300 / 7)


def test_transition_table_markdown_and_csv(tmp_path):
    src, tgt, A, g, down, up, gate = constructed_layers(False)
    res = [track_layers(down, up, gate, g, A, src, tgt, layer=layer, rule="matching") for layer in (2, 3)]
    rows = transition_table(res, method="hedonic")
    write_transition_table(rows, tmp_path / "t.md", tmp_path / "t.csv")
    with open(tmp_path / "t.csv", newline="") as fh:
        back = list(csv.DictReader(fh))
    assert [r["layers"] for r in back] == ["2->3", "3->4"]
    assert float(back[0]["vanishing_pct"]) == pytest.approx(200 / 7, abs=0.01)
    assert float(back[1]["emergence_pct"]) == 40.0 and back[0]["dropped_sources"] == "1"
    md = (tmp_path / "t.md").read_text()
    assert "| hedonic | 2->3 | 7 | 10 | 1 | 1 | 28.6 | 28.6 | 14.3 | 28.6 | 40.0 |" in md


def test_bad_inputs_are_one_line_errors():
    src, tgt, A, g, down, up, gate = constructed_layers(False)
    with pytest.raises(DataError, match="non-negative"):
        interaction_mass(down, up, gate, g, -A, src, tgt)
    with pytest.raises(DataError, match="input columns"):
        interaction_mass(down, up[:, :-1], gate, g, A, src, tgt)
    with pytest.raises(DataError, match="outside"):
        interaction_mass(down, up, gate, g, A, [[0, 99]], tgt)
    with pytest.raises(DataError, match="more than one"):
        interaction_mass(down, up, gate, g, A, [[0, 1], [1, 2]], tgt)
    with pytest.raises(ConfigError, match="tau"):
        track_layers(down, up, gate, g, A, src, tgt, tau=1.5)
    with pytest.raises(ConfigError, match="rule"):
        classify_transitions(np.ones((2, 2)), rule="nope")


def test_mean_abs_activations_matches_unpadded_hand_computation():
    model = tiny_model("llama", layers=3, d=16, n=24)
    rng = np.random.default_rng(6)
    lengths = [5, 3, 7]
    seqs = [torch.as_tensor(rng.integers(1, 97, size=t)) for t in lengths]
    T = max(lengths)
    ids = torch.zeros(len(seqs), T, dtype=torch.long)
    mask = torch.zeros(len(seqs), T, dtype=torch.long)
    for b, s in enumerate(seqs):  # left padding
        ids[b, T - len(s) :] = s
        mask[b, T - len(s) :] = 1
    got = mean_abs_activations(
        model,
        [0, 1],
        [
            {"input_ids": ids[:2], "attention_mask": mask[:2]},
            {"input_ids": ids[2:], "attention_mask": mask[2:]},
        ],
    )
    for layer in (0, 1):
        captured = []
        handle = mlp_modules(model, layer).down.register_forward_pre_hook(
            lambda m, a, out=captured: out.append(a[0][0])
        )
        try:
            with torch.no_grad():
                for s in seqs:  # one unpadded input at a time
                    model(input_ids=s[None], attention_mask=torch.ones(1, len(s), dtype=torch.long))
        finally:
            handle.remove()
        expected = torch.cat(captured).abs().double().mean(0)
        torch.testing.assert_close(got[layer], expected, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------- folder of partitions


def test_track_partitions_and_output_files(tmp_path):
    from hedonic_neurons.artifacts import read_json, save_partition
    from hedonic_neurons.tracking.run import load_partition_dir, track_partitions, write_tracking

    model = tiny_model("gpt2", layers=3, d=16, n=24)
    rng = np.random.default_rng(8)
    for layer in (0, 1, 2):
        save_partition(
            tmp_path / "in" / f"p{layer}.json",
            random_partition(24, rng, 5),
            method="kmeans",
            params={},
            layer=layer,
        )
    (tmp_path / "in" / "notes.json").write_text('{"not": "a partition"}')
    found = load_partition_dir(tmp_path / "in")
    assert sorted(found) == [0, 1, 2]
    parts = {layer: doc["coalitions"] for layer, (_, doc) in found.items()}
    A = {layer: rng.uniform(0, 1, 24) for layer in (0, 1)}
    results = track_partitions(model, parts, A)
    assert [(r.source_layer, r.target_layer) for r in results] == [(0, 1), (1, 2)]
    # the same numbers as the pure function on the model's weights
    w = layer_pair_weights(model, 1)
    direct = interaction_mass(
        w.down,
        w.up_next,
        None,
        w.norm_scale_next,
        A[1],
        [c for c in parts[1] if len(c) >= 2],
        [c for c in parts[2] if len(c) >= 2],
    )
    np.testing.assert_allclose(results[1].mass, direct)
    written = write_tracking(results, tmp_path / "out", method="kmeans", meta={"note": 1})
    doc = read_json(written["transition_L0_L1"])
    assert doc["method"] == "kmeans" and doc["note"] == 1 and "provenance" in doc
    # every tracked source gets one label (the null rule adds "unstructured" to A11's four)
    assert doc["rule"] == "null"
    assert (
        sum(doc["counts"][k] for k in ("persistence", "split", "merge", "vanishing", "unstructured"))
        == doc["tracked"]["sources"]
    )
    assert (tmp_path / "out" / "transitions.csv").read_text().count("kmeans") == 2
    # the Sankey reads plotly from the shared bundle next to it
    assert written["sankey"].stat().st_size < 1_000_000
    assert (tmp_path / "out" / "plotly.min.js").stat().st_size > 1_000_000
    assert 'src="plotly.min.js"' in written["sankey"].read_text()

    save_partition(tmp_path / "in" / "dup.json", parts[2], method="x", params={}, layer=2)
    with pytest.raises(DataError, match="both partitions of layer 2"):
        load_partition_dir(tmp_path / "in")
    with pytest.raises(DataError, match="adjacent"):
        track_partitions(model, {0: parts[0], 2: parts[2]}, A)


def run_cli(args: list[str]) -> None:
    from hedonic_neurons.cli import main

    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code in (0, None)


@pytest.mark.slow
def test_cli_baseline_and_track_on_minilm(tmp_path):
    """End to end on the built-in MiniLM: k-means partitions of layers 1-2, then `hedonic track`."""
    from hedonic_neurons.artifacts import load_partition, read_json

    parts = tmp_path / "parts"
    for layer in (1, 2):
        run_cli(
            [
                "baseline",
                "minilm",
                "--method",
                "kmeans",
                "--layer",
                str(layer),
                "--device",
                "cpu",
                "--out",
                str(parts / f"kmeans_L{layer}.json"),
            ]
        )
    doc = load_partition(parts / "kmeans_L1.json")
    assert doc["n_neurons"] == 1536 and doc["layer"] == 1 and doc["sizes"]["count"] <= 40
    run_cli(
        [
            "baseline",
            "minilm",
            "--method",
            "hierarchical",
            "--layer",
            "2",
            "--max-pairs",
            "24",
            "--device",
            "cpu",
            "--n-clusters",
            "12",
            "--out",
            str(tmp_path / "hier.json"),
        ]
    )
    assert len(load_partition(tmp_path / "hier.json")["coalitions"]) == 12
    run_cli(
        [
            "track",
            "minilm",
            "--partitions",
            str(parts),
            "--out",
            str(tmp_path / "trk"),
            "--max-pairs",
            "16",
            "--device",
            "cpu",
        ]
    )
    tr = read_json(tmp_path / "trk" / "transition_L1_L2.json")
    assert tr["activations"]["pairs"] == 16 and tr["tracked"]["sources"] == doc["sizes"]["count"]
    labels = ("persistence", "split", "merge", "vanishing", "unstructured")
    assert abs(sum(tr["percent"][k] for k in labels) - 100) < 1e-6
    assert (tmp_path / "trk" / "sankey.html").is_file() and (tmp_path / "trk" / "transitions.md").is_file()
