"""Interventional flow: the batched, replayed-prefix computation equals brute-force ablation."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from hedonic_neurons.errors import DataError, ModelError
from hedonic_neurons.models.adapters import mlp_modules, mlp_weights
from hedonic_neurons.tracking.flow import coalition_flow, interventional_flow, neuron_flow
from test_recording import pad_batch, sequences
from tiny import tiny_config, tiny_model

LAYER = 1
SOURCES = [[0, 5, 9], [3], [1, 2, 4, 6, 7, 8, 10, 11], [23, 12]]
TARGETS = {2: [[0, 1, 2], [3, 4, 5, 6, 7], list(range(8, 24))], 3: [[5, 6], list(range(12))]}
LENGTHS = [(5, 3, 7, 4), (6, 2, 5)]


def lively(family: str, seed: int = 0) -> torch.nn.Module:
    """A tiny model with init std 0.2 (default 0.02): ablation effects are O(0.1), not O(1e-4), so
    a 1e-5 tolerance means something."""
    import transformers as tf

    config = tiny_config(family, layers=4, d=16, n=24)
    config.initializer_range = 0.2
    torch.manual_seed(seed)
    return tf.AutoModelForSequenceClassification.from_config(config).eval()


def batches(side: str) -> list[dict[str, torch.Tensor]]:
    return [pad_batch(sequences(seed=10 + b, lengths=lengths), side) for b, lengths in enumerate(LENGTHS)]


def surgery(model, members, mode, reference=None):
    """A copy of ``model`` with the neurons of ``members`` at LAYER changed by hand."""
    model = copy.deepcopy(model)
    w = mlp_weights(model, LAYER)
    with torch.no_grad():
        for i in members:
            if mode == "reference":
                w.up[i] = reference.up[i]
                w.down[:, i] = reference.down[:, i]
                if w.gate is not None:
                    w.gate[i] = reference.gate[i]
                for name in ("up_bias", "gate_bias"):
                    if getattr(w, name) is not None:
                        getattr(w, name)[i] = getattr(reference, name)[i]
            else:
                w.down[:, i] = 0
    return model


def pooled_activations(model, seqs, layers) -> dict[int, np.ndarray]:
    """Mean over the tokens of each unpadded input of the down projection's input (float64)."""
    out: dict[int, list] = {t: [] for t in layers}
    handles = [
        mlp_modules(model, t).down.register_forward_pre_hook(
            lambda m, args, t=t: out[t].append(args[0][0].double().mean(0))
        )
        for t in layers
    ]
    try:
        with torch.no_grad():
            for s in seqs:
                model(input_ids=s[None], attention_mask=torch.ones(1, len(s), dtype=torch.long))
    finally:
        for h in handles:
            h.remove()
    return {t: torch.stack(v).numpy() for t, v in out.items()}


def brute_force_flow(model, mode, reference=None) -> dict[int, np.ndarray]:
    seqs = [s for b, lengths in enumerate(LENGTHS) for s in sequences(seed=10 + b, lengths=lengths)]
    base = pooled_activations(model, seqs, list(TARGETS))
    flow = {t: np.zeros((len(SOURCES), len(c))) for t, c in TARGETS.items()}
    for i, members in enumerate(SOURCES):
        ablated = pooled_activations(surgery(model, members, mode, reference), seqs, list(TARGETS))
        for t, coalitions in TARGETS.items():
            delta = np.abs(ablated[t] - base[t])  # (inputs, n)
            for j, c in enumerate(coalitions):
                flow[t][i, j] = delta[:, c].mean(1).mean()  # per input: mean over C'; then over inputs
    return flow


@pytest.mark.parametrize(
    ("family", "mode", "side"),
    [
        ("llama", "reference", "left"),
        ("llama", "zero", "right"),
        ("gpt2", "zero", "left"),
        ("gpt_neox", "reference", "left"),
        ("bert", "reference", "right"),
    ],
)
def test_flow_equals_brute_force_ablation(family, mode, side):
    model = lively(family)
    reference = mlp_weights(lively(family, seed=7), LAYER) if mode == "reference" else None
    expected = brute_force_flow(model, mode, reference)
    # max_rows = 9: several passes per batch, the unablated copy in the first one only
    got = interventional_flow(
        model, batches(side), LAYER, SOURCES, TARGETS, mode=mode, reference=reference, max_rows=9
    )
    assert sorted(got) == [2, 3]
    for t in TARGETS:
        assert got[t].shape == (len(SOURCES), len(TARGETS[t]))
        np.testing.assert_allclose(got[t], expected[t], atol=1e-5, rtol=1e-5)
        assert got[t].min() > 1e-3  # every ablation moves every downstream coalition
    # without the replayed prefix: the same numbers
    again = interventional_flow(
        model, batches(side), LAYER, SOURCES, TARGETS, mode=mode, reference=reference, reuse_prefix=False
    )
    for t in TARGETS:
        np.testing.assert_allclose(again[t], got[t], atol=1e-6)


def test_hooks_are_removed_and_the_model_is_unchanged():
    model = tiny_model("llama", layers=4, d=16, n=24)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    neuron_flow(model, batches("left"), LAYER, SOURCES, [2, 3])
    assert sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules()) == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert type(model.model.layers[0]).__name__ == "LlamaDecoderLayer"  # the replay stand-ins are gone


def test_coalition_flow_averages_members():
    per_neuron = np.arange(12, dtype=float).reshape(2, 6)
    np.testing.assert_allclose(coalition_flow(per_neuron, [[0, 1], [5]]), [[0.5, 5], [6.5, 11]])
    with pytest.raises(DataError, match="empty"):
        coalition_flow(per_neuron, [[]])


def test_flow_bad_inputs():
    model = tiny_model("llama", layers=4, d=16, n=24)
    with pytest.raises(ModelError, match="come after"):
        neuron_flow(model, batches("left"), 2, SOURCES, [2])
    with pytest.raises(ModelError, match="reference"):
        neuron_flow(model, batches("left"), 1, SOURCES, [2], mode="reference")
    with pytest.raises(ModelError, match="outside"):
        neuron_flow(model, batches("left"), 1, [[99]], [2])
    with pytest.raises(DataError, match="no inputs"):
        neuron_flow(model, [], 1, SOURCES, [2])
