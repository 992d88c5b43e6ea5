"""Beyond adjacent layers: l -> l+h through the residual stream, with the same null."""

from __future__ import annotations

import numpy as np
import pytest

from hedonic_neurons.errors import DataError, ModelError
from hedonic_neurons.models.adapters import block, mlp_modules, mlp_weights
from hedonic_neurons.tracking import interaction_mass
from hedonic_neurons.tracking.model import layer_pair_weights, next_norm_scale
from hedonic_neurons.tracking.run import layer_pairs, track_partitions
from test_tracking import brute_force_mass, random_partition, randomise_norms
from tiny import tiny_model


@pytest.mark.parametrize("family", ["llama", "gpt_neox", "gpt2", "bert"])
def test_mass_two_and_three_layers_ahead_equals_brute_force(family):
    model = tiny_model(family, layers=4, d=8, n=12)
    randomise_norms(model, 4)
    rng = np.random.default_rng(1)
    A = rng.uniform(0.1, 2.0, size=12)
    src, tgt = random_partition(12, rng, 4), random_partition(12, rng, 3)
    for target in (2, 3):
        if family == "bert":  # every LayerNorm the residual passes between layer 0's MLP and layer t's
            g = mlp_modules(model, 0).post_norm.weight.detach()
            for k in range(1, target):
                g = (
                    g
                    * block(model, k).attention.output.LayerNorm.weight
                    * mlp_modules(model, k).post_norm.weight
                )
            g = g * block(model, target).attention.output.LayerNorm.weight
        else:  # pre-LN: only the norm in front of layer t's MLP
            g = mlp_modules(model, target).mlp_norm.weight
        g = g.detach()
        w = layer_pair_weights(model, 0, target)
        np.testing.assert_allclose(w.norm_scale_next.numpy(), g.float().numpy(), rtol=1e-6)
        nxt = mlp_weights(model, target)
        expected = brute_force_mass(mlp_weights(model, 0).down, nxt.up, nxt.gate, g, A, src, tgt)
        got = interaction_mass(w.down, w.up_next, w.gate_next, w.norm_scale_next, A, src, tgt)
        np.testing.assert_allclose(got, expected, rtol=1e-5)
    # one layer ahead is still the adjacent case
    torch_g = next_norm_scale(model, 1)
    np.testing.assert_allclose(torch_g.numpy(), next_norm_scale(model, 1, 2).numpy())


def test_layer_pairs_and_tracking_with_a_horizon():
    assert layer_pairs([2, 3, 4, 7], 3) == [(2, 3), (2, 4), (3, 4), (4, 7)]
    assert layer_pairs([2, 3, 4, 7], 1) == [(2, 3), (3, 4)]
    model = tiny_model("qwen2", layers=4, d=16, n=24)
    rng = np.random.default_rng(2)
    parts = {layer: rng.permutation(24).reshape(6, 4).tolist() for layer in (0, 1, 3)}
    A = {layer: rng.uniform(0.1, 1, 24) for layer in (0, 1)}
    res = track_partitions(model, parts, A, horizon=3, null_draws=50)
    assert [(r.source_layer, r.target_layer, r.horizon) for r in res] == [(0, 1, 1), (0, 3, 3), (1, 3, 2)]
    # the far pair has its own null (its own weights), seeded by the pair
    assert res[1].null["draws"] == 50 and res[1].null["tau_alpha"] != res[0].null["tau_alpha"]
    w = layer_pair_weights(model, 0, 3)
    direct = interaction_mass(w.down, w.up_next, w.gate_next, w.norm_scale_next, A[0], parts[0], parts[3])
    np.testing.assert_allclose(res[1].mass, direct)
    with pytest.raises(DataError, match="adjacent"):
        track_partitions(model, {0: parts[0], 3: parts[3]}, A, horizon=2)
    with pytest.raises(DataError, match="no E"):
        track_partitions(model, parts, {0: A[0]}, horizon=3)
    with pytest.raises(ModelError, match="must come after"):
        layer_pair_weights(model, 2, 1)
