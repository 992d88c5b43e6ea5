"""Ablation (A2): batched ablation equals weight surgery (foundation issue item 4)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from hedonic_neurons.errors import ModelError
from hedonic_neurons.models.adapters import MLPWeights, block_list, get_spec, mlp_modules, mlp_weights
from hedonic_neurons.neurons import ablation_logits, capture_site, full_logits, local_head
from test_recording import PAIRS, hook_count, lively_model, lora_merged, minilm, pad_batch, sequences
from tiny import FAMILIES, tiny_model

LAYER = 1
SETS = [[], [3], [5], [3, 5], [0, 23], [2, 7, 11, 19], list(range(0, 24, 2))]


def surgery(
    model: nn.Module,
    layer: int,
    members: list[int],
    mode: str,
    reference: MLPWeights | None = None,
    means: torch.Tensor | None = None,
) -> nn.Module:
    """A copy of ``model`` with the neurons' weights changed by hand (no hooks)."""
    model = copy.deepcopy(model)
    w = mlp_weights(model, layer)  # views of the copy's parameters
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
            else:  # zero / mean: the neuron no longer writes; its mean output moves into the bias
                column = w.down[:, i].clone()
                w.down[:, i] = 0
                if mode == "mean":
                    _down_bias(model, layer).add_(means[i] * column)
    return model


def _down_bias(model: nn.Module, layer: int) -> torch.Tensor:
    """The down projection's bias, adding a zero bias to a bias-free Linear first."""
    down = mlp_modules(model, layer).down
    if down.bias is None:
        down.bias = nn.Parameter(torch.zeros(down.weight.shape[0]))
    return down.bias


def logits_of(model: nn.Module, batch: dict, readout: str, layer: int = LAYER) -> torch.Tensor:
    if readout == "full":
        return full_logits(model, batch)
    with torch.no_grad():
        return local_head(model, layer)(capture_site(model, batch, layer).resid)


@pytest.mark.parametrize("family", FAMILIES)
def test_reference_ablation_equals_weight_surgery(family):
    """Reverting neuron sets to the base weights through the library = overwriting their rows and
    columns in a copy of the merged LoRA model (full and local readout, empty set included)."""
    base = lively_model(family)
    peft_model, merged = lora_merged(base)
    reference = mlp_weights(base, LAYER)
    batch = pad_batch(sequences(seed=7), "right")
    for readout in ("full", "local"):
        got = ablation_logits(merged, batch, LAYER, SETS, reference=reference, readout=readout)
        expected = torch.stack(
            [logits_of(surgery(merged, LAYER, s, "reference", reference), batch, readout) for s in SETS]
        )
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        # the sets matter: reverting changes the logit
        assert (got[1:] - got[0]).abs().max() > 1e-3
        # on the unmerged peft model too
        got_peft = ablation_logits(peft_model, batch, LAYER, SETS, reference=reference, readout=readout)
        torch.testing.assert_close(got_peft, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[0], logits_of(merged, batch, "local"), atol=1e-6, rtol=1e-6)
    assert hook_count(merged) == 0 and hook_count(peft_model) == 0


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_zero_and_mean_ablation_equal_surgery(family, mode):
    """Zero ablation = the down column zeroed; mean ablation = zeroed column with m_i W_i moved into
    the down bias (a hook-free model computing the same thing)."""
    model = lively_model(family)
    means = torch.randn(24, generator=torch.Generator().manual_seed(0))
    batch = pad_batch(sequences(seed=8), "left" if family != "bert" else "right")
    for readout in ("full", "local"):
        got = ablation_logits(model, batch, LAYER, SETS, mode=mode, means=means, readout=readout)
        expected = torch.stack(
            [logits_of(surgery(model, LAYER, s, mode, means=means), batch, readout) for s in SETS]
        )
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        assert (got[1:] - got[0]).abs().max() > 1e-4


def test_chunks_masks_and_ablation_at_last_layer():
    """max_batch chunking and bool masks give the same logits; a local readout at the last layer
    is the full readout; an empty list of sets gives an empty result."""
    base = tiny_model("qwen2")
    _, merged = lora_merged(base)
    reference = mlp_weights(base, 2)
    batch = pad_batch(sequences(seed=9), "left")
    one_pass = ablation_logits(merged, batch, 2, SETS, reference=reference)
    masks = torch.zeros(len(SETS), 24, dtype=torch.bool)
    for row, members in enumerate(SETS):
        masks[row, members] = True
    chunked = ablation_logits(merged, batch, 2, masks, reference=reference, max_batch=7)
    torch.testing.assert_close(chunked, one_pass, atol=1e-6, rtol=1e-6)
    # on_pass reports each pass's sets: 7 // 3 = 2 sets per pass (rows = sets x 3 inputs <= 7),
    # at the last layer (the head reads the ablated block: run per set) and below it (rebuilt)
    for layer in (2, 1):
        passes: list[int] = []
        ablation_logits(
            merged, batch, layer, SETS, reference=mlp_weights(base, layer), max_batch=7, on_pass=passes.append
        )
        assert passes == [2, 2, 2, 1]
    assert ablation_logits(merged, batch, 2, [], reference=reference).shape == (0, 3)


def test_batched_ablation_equals_unbatched():
    """Ablating in a padded batch gives, per input, what the input alone gives."""
    base = tiny_model("gpt_neox")
    _, merged = lora_merged(base)
    reference = mlp_weights(base, LAYER)
    seqs = sequences(seed=10)
    for side in ("left", "right"):
        batched = ablation_logits(merged, pad_batch(seqs, side), LAYER, SETS, reference=reference)
        for row, seq in enumerate(seqs):
            alone = ablation_logits(merged, pad_batch([seq]), LAYER, SETS, reference=reference)
            torch.testing.assert_close(batched[:, row], alone[:, 0], atol=1e-5, rtol=1e-5)


def test_ablation_errors_leave_no_hooks():
    model = tiny_model("llama")
    batch = pad_batch(sequences(), "right")
    with pytest.raises(ModelError, match="needs the layer's reference"):
        ablation_logits(model, batch, 1, [[1]])
    with pytest.raises(ModelError, match=r"needs means of shape \(24,\)"):
        ablation_logits(model, batch, 1, [[1]], mode="mean", means=torch.zeros(3))
    with pytest.raises(ModelError, match="outside 0..23"):
        ablation_logits(model, batch, 1, [[1, 24]], mode="zero")
    with pytest.raises(ModelError, match="unknown ablation mode 'revert'"):
        ablation_logits(model, batch, 1, [[1]], mode="revert")
    with pytest.raises(ModelError, match="unknown readout"):
        ablation_logits(model, batch, 1, [[1]], mode="zero", readout="final")
    with pytest.raises(ModelError, match="12 neurons"):
        ablation_logits(model, batch, 1, [[1]], reference=mlp_weights(tiny_model("llama", n=12), 1))

    def boom(module, args):
        raise RuntimeError("boom")

    handle = mlp_modules(model, 2).block.register_forward_pre_hook(boom)
    try:
        blocks = list(block_list(model))
        with pytest.raises(RuntimeError, match="boom"):
            ablation_logits(model, batch, 1, [[1], [2]], reference=mlp_weights(model, 1))
        assert hook_count(model) == 1
        assert list(block_list(model)) == blocks  # the replayed prefix is put back
    finally:
        handle.remove()
    assert hook_count(model) == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_reused_prefix_equals_full_recompute(family):
    """Running the blocks below the ablated layer once per batch, and the ablated block too below
    the last layer (its output rebuilt per set), gives the logits of running them once per set, at
    every layer, under either padding; the model's blocks are untouched after."""
    base = tiny_model(family, layers=4)
    _, merged = lora_merged(base)
    blocks = list(block_list(merged))
    side = "right" if family == "bert" else "left"
    batch = pad_batch(sequences(seed=11), side)
    calls = []
    handle = block_list(merged)[0].register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    try:
        for layer in range(4):
            reference = mlp_weights(base, layer)
            calls.clear()
            ablated: list[int] = []
            on_layer = block_list(merged)[layer].register_forward_pre_hook(
                lambda m, a, seen=ablated: seen.append(a[0].shape[0])
            )
            got = ablation_logits(merged, batch, layer, SETS, reference=reference, max_batch=9)
            on_layer.remove()
            # block 0 ran once on the 3 inputs; the ablated block too, except at the last layer,
            # where the head reads it and it runs in every pass (3, 3 and 1 sets)
            assert calls == [3]
            assert ablated == ([3] if layer < 3 else [9, 9, 3])
            slow = ablation_logits(merged, batch, layer, SETS, reference=reference, reuse_prefix=False)
            torch.testing.assert_close(got, slow, atol=1e-5, rtol=1e-5)
            assert (got[1:] - got[0]).abs().max() > 1e-4
    finally:
        handle.remove()
    assert list(block_list(merged)) == blocks and hook_count(merged) == 0


def test_unknown_mlp_output_runs_the_ablated_block_per_set():
    """An architecture that does not declare how its MLP output reaches the block output
    (``mlp_output=None``, e.g. one registered by a user) runs the ablated block once per set, and
    gets the logits the rebuilt block output gives for the declared one."""
    import dataclasses

    from hedonic_neurons.models.adapters import ARCHITECTURES, register_architecture

    base = tiny_model("llama", layers=3)
    batch = pad_batch(sequences(seed=5), "left")
    spec = get_spec(base)
    rebuilt = ablation_logits(base, batch, LAYER, SETS, mode="zero")
    runs = []
    handle = block_list(base)[LAYER].register_forward_pre_hook(lambda m, a: runs.append(a[0].shape[0]))
    try:
        register_architecture(dataclasses.replace(spec, mlp_output=None), replace=True)
        per_set = ablation_logits(base, batch, LAYER, SETS, mode="zero")
    finally:
        register_architecture(spec, replace=True)
        handle.remove()
    assert ARCHITECTURES.get("llama") is spec
    assert runs == [3 * len(SETS)]
    torch.testing.assert_close(rebuilt, per_set, atol=1e-5, rtol=1e-5)
    assert (per_set[1:] - per_set[0]).abs().max() > 1e-4


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_rebuilt_block_output_in_bf16(family):
    """In a bf16 model the ablation effects from the rebuilt block output (Δ accumulated in
    float32) are no further from the float32 model's than those of running the ablated block per
    set (a rebuilt output that dropped Δ would be off by the whole effect)."""
    sets = [[], list(range(0, 24, 2)), list(range(24))]
    model32 = lively_model(family, layers=3)
    model16 = copy.deepcopy(model32).to(torch.bfloat16)
    batch = pad_batch(sequences(seed=7), "right" if family == "bert" else "left")

    def effects(model, rebuild=True):
        logits = ablation_logits(model, batch, LAYER, sets, mode="zero", rebuild_layer=rebuild).float()
        return logits[1:] - logits[0]

    want, fast, slow = effects(model32), effects(model16), effects(model16, rebuild=False)
    size = float(want.abs().max())
    err_fast, err_slow = float((fast - want).abs().max()), float((slow - want).abs().max())
    assert err_fast <= 1.5 * err_slow + 0.02 * size, (err_fast, err_slow, size)


@pytest.mark.slow
def test_minilm_reference_ablation_equals_surgery():
    """MiniLM with a random LoRA on its MLPs: library reversion = weight surgery, at layer 3."""
    base, tokenizer = minilm()
    assert get_spec(base).family == "bert"
    _, merged = lora_merged(base)
    reference = mlp_weights(base, 3)
    batch = dict(tokenizer(PAIRS, padding=True, return_tensors="pt"))
    sets = [[], [10], [700], [10, 700], list(range(0, 1536, 7))]
    got = ablation_logits(merged, batch, 3, sets, reference=reference)
    expected = torch.stack([full_logits(surgery(merged, 3, s, "reference", reference), batch) for s in sets])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert (got[1:] - got[0]).abs().max() > 1e-4
