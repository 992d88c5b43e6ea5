"""Interop with TransformerLens, captum and nnsight: the same numbers through their APIs.

Each test skips (with the reason) when its package is not installed (``pip install -e '.[interop]'``).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from hedonic_neurons.models import mlp_module_names, mlp_modules, mlp_weights
from hedonic_neurons.neurons import (
    ablate,
    ablation_logits,
    capture_site,
    full_logits,
    model_inputs,
    record,
)
from hedonic_neurons.neurons.recording import pool
from hedonic_neurons.synergy.oca import oca_phi
from test_loading import tiny_tokenizer
from test_recording import lora_merged, pad_batch, sequences
from tiny import tiny_model

LAYER = 1
SETS = [[], [3], [5, 7], [0, 11, 23], list(range(0, 24, 3))]


def partition_labels(n: int = 24, k: int = 5, seed: int = 0) -> np.ndarray:
    """A random partition of n neurons into k non-empty coalitions, as labels 0..k-1."""
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.arange(k), rng.integers(0, k, n - k)])
    return rng.permutation(labels)


# ------------------------------------------------------------------------------ TransformerLens


@pytest.mark.parametrize("family", ["gpt2", "qwen2"])
@pytest.mark.parametrize("pooling", ["tokens", "mean"])
def test_transformer_lens_hook_post_gives_the_same_oca_phi(family, pooling):
    """φ_OCA from TransformerLens's ``blocks.{L}.mlp.hook_post`` activations and its ``W_out``
    (correlations by numpy) = φ_OCA from ``record`` and the model's down projection, on the same
    right-padded batch pooled the same way over the non-pad tokens."""
    bridge_module = pytest.importorskip(
        "transformer_lens.model_bridge", reason="transformer-lens is not installed (the interop extra)"
    )
    _, model = lora_merged(tiny_model(family, head="causal"))
    bridge = bridge_module.TransformerBridge.boot_transformers(
        family, hf_model=copy.deepcopy(model), tokenizer=tiny_tokenizer(family), device="cpu"
    )
    batches = [pad_batch(sequences(seed=seed, lengths=(3, 6, 8, 5)), "right") for seed in range(4)]
    with record(model, LAYER, pooling=pooling) as rec:
        for batch in batches:
            rec(batch)
    ours = oca_phi(rec.moments[LAYER], mlp_weights(model, LAYER).down)

    samples = []
    for batch in batches:
        with torch.no_grad():
            _, cache = bridge.run_with_cache(batch["input_ids"], attention_mask=batch["attention_mask"])
        acts = cache[f"blocks.{LAYER}.mlp.hook_post"].double()
        samples.append(pool(acts, batch["attention_mask"], pooling))
    acts = torch.cat(samples).numpy()
    assert acts.shape == (sum((3, 6, 8, 5)) * 4 if pooling == "tokens" else 16, 24)
    down = bridge.blocks[LAYER].mlp.W_out.detach().T  # TransformerLens: (d_mlp, d_model)
    theirs = oca_phi(np.corrcoef(acts, rowvar=False), down)
    assert np.abs(ours).max() > 0.05  # not a trivially zero φ
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)


def test_ablate_through_a_transformer_bridge():
    """``ablate`` given a TransformerBridge hooks the model it wraps: the bridge's own
    ``run_with_cache`` sees the ablated ``hook_post`` and gives the logits of a zero-ablated copy;
    ``ablation_logits(bridge)`` equals ``ablation_logits`` of the copy."""
    bridge_module = pytest.importorskip(
        "transformer_lens.model_bridge", reason="transformer-lens is not installed (the interop extra)"
    )
    model = tiny_model("gpt2", head="causal")
    twin = copy.deepcopy(model)
    bridge = bridge_module.TransformerBridge.boot_transformers(
        "gpt2", hf_model=model, tokenizer=tiny_tokenizer("gpt2"), device="cpu"
    )
    batch = pad_batch(sequences(seed=3), "right")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    union = [1, 4, 9, 16]
    with torch.no_grad():
        plain_logits, plain = bridge.run_with_cache(ids, attention_mask=mask)
        with ablate(bridge, LAYER, union, "zero"):
            logits, cache = bridge.run_with_cache(ids, attention_mask=mask)
        with ablate(twin, LAYER, union, "zero"):
            want = twin(**model_inputs(batch)).logits
    site = f"blocks.{LAYER}.mlp.hook_post"
    real = mask.bool()
    assert torch.all(cache[site][..., union] == 0) and plain[site][..., union].abs().min() > 0
    kept = [i for i in range(24) if i not in union]
    torch.testing.assert_close(cache[site][..., kept], plain[site][..., kept], atol=0, rtol=0)
    torch.testing.assert_close(logits[real], want[real], atol=1e-5, rtol=1e-5)
    assert (logits[real] - plain_logits[real]).abs().max() > 1e-4
    for readout in ("full", "local"):
        got = ablation_logits(bridge, batch, LAYER, SETS, mode="zero", readout=readout, score_token_id=7)
        ref = ablation_logits(twin, batch, LAYER, SETS, mode="zero", readout=readout, score_token_id=7)
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
        assert (ref[1:] - ref[0]).abs().max() > 1e-4


# ------------------------------------------------------------------------------ captum


def _scalar_forward(model):
    def forward(input_ids, attention_mask, position_ids):
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
        return out.logits[:, 0]

    return forward


def _captum_site(model, family):
    """(module, attribute_to_layer_input): the neurons are the output of GPT-2's activation module
    (ungated MLP) and, for every family, the input of the down projection."""
    mods = mlp_modules(model, LAYER)
    return (mods.act, False) if family == "gpt2" else (mods.down, True)


def _captum_effects(model, family, batch, labels):
    captum_attr = pytest.importorskip("captum.attr", reason="captum is not installed (the interop extra)")
    module, to_input = _captum_site(model, family)
    inputs = model_inputs(batch)
    method = captum_attr.LayerFeatureAblation(_scalar_forward(model), module)
    with torch.no_grad():
        attr = method.attribute(
            inputs["input_ids"],
            additional_forward_args=(inputs["attention_mask"], inputs["position_ids"]),
            layer_mask=torch.as_tensor(labels)[None, None, :],
            attribute_to_layer_input=to_input,
            perturbations_per_eval=2,
        )
    assert attr.shape == (*inputs["input_ids"].shape, 24)
    return attr


@pytest.mark.parametrize("family", ["gpt2", "qwen2"])
def test_captum_layer_feature_ablation_equals_ablate(family):
    """captum's ``LayerFeatureAblation`` with the partition's labels as ``layer_mask`` (zero
    baseline) gives, for every neuron of coalition c, the logit drop of ``ablate(..., [c], "zero")``
    (on an unmerged LoRA model); inside another ``ablate`` block it sees that ablation too."""
    peft_model, _ = lora_merged(tiny_model(family))
    batch = pad_batch(sequences(seed=4), "left")
    labels = partition_labels()
    coalitions = [np.flatnonzero(labels == c).tolist() for c in range(labels.max() + 1)]

    def effects() -> torch.Tensor:
        base = full_logits(peft_model, batch)
        drops = torch.zeros(len(batch["input_ids"]), 24)
        for members in coalitions:
            with ablate(peft_model, LAYER, members, "zero"):
                drops[:, members] = (base - full_logits(peft_model, batch))[:, None]
        return drops

    want = effects()
    assert want.abs().max() > 1e-4
    attr = _captum_effects(peft_model, family, batch, labels)
    for t in range(attr.shape[1]):  # the mask spans every token, so every token has the same value
        torch.testing.assert_close(attr[:, t], want, atol=1e-5, rtol=0)
    with ablate(peft_model, 0, [2, 8, 14], "zero"):
        inside_want = effects()
        inside = _captum_effects(peft_model, family, batch, labels)
    assert (inside_want - want).abs().max() > 1e-5
    torch.testing.assert_close(inside[:, -1], inside_want, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------ nnsight


def _envoy(wrapped, name: str):
    for part in name.split("."):
        wrapped = wrapped[int(part)] if part.isdigit() else getattr(wrapped, part)
    return wrapped


@pytest.mark.parametrize("family", ["gpt2", "qwen2"])
def test_nnsight_wrapped_models(family):
    """``ablation_logits(NNsight(m))`` = ``ablation_logits(m)`` (zero and reference, on an unmerged
    LoRA model); an nnsight trace inside ``ablate`` sees the ablated activations and logits, and
    ``ablate`` accepts the wrapper itself."""
    nnsight = pytest.importorskip("nnsight", reason="nnsight is not installed (the interop extra)")
    base = tiny_model(family)
    peft_model, _ = lora_merged(base)
    reference = mlp_weights(base, LAYER)
    wrapped = nnsight.NNsight(peft_model)
    batch = pad_batch(sequences(seed=2), "left")
    for mode in ("zero", "reference"):
        want = ablation_logits(peft_model, batch, LAYER, SETS, mode=mode, reference=reference)
        got = ablation_logits(wrapped, batch, LAYER, SETS, mode=mode, reference=reference)
        torch.testing.assert_close(got, want, atol=0, rtol=0)
        assert (want[1:] - want[0]).abs().max() > 1e-4

    roles = mlp_module_names(peft_model, [LAYER])
    (down_name,) = [name for name, (_, role) in roles.items() if role == "down"]
    union = sorted({i for s in SETS for i in s})
    plain = capture_site(peft_model, batch, LAYER).activations
    expected = ablation_logits(peft_model, batch, LAYER, [union], mode="zero")[0]
    inputs = model_inputs(batch)
    for target in (peft_model, wrapped):
        with ablate(target, LAYER, union, "zero"), wrapped.trace(**inputs):
            acts = _envoy(wrapped, down_name).input.save()
            logits = wrapped.output.logits.save()
        rows = torch.arange(len(acts))
        positions = capture_site(peft_model, batch, LAYER).positions
        seen = acts.detach()[rows, positions]
        assert torch.all(seen[:, union] == 0)
        kept = [i for i in range(24) if i not in union]
        torch.testing.assert_close(seen[:, kept], plain[:, kept], atol=1e-6, rtol=0)
        assert plain[:, union].abs().min() > 0
        torch.testing.assert_close(logits.detach()[:, 0], expected, atol=1e-6, rtol=0)
