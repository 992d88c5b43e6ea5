"""``ablate`` as a context manager: inside it every use of the model sees the ablated neurons.

Checked against ``ablation_logits`` (the batched ablation, itself checked against weight surgery in
test_ablation.py) and against hook-free weight surgery, on tiny GPT-2 and Qwen2 models with LoRA.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hedonic_neurons.errors import ModelError
from hedonic_neurons.models import load_model, mlp_modules, mlp_weights, n_layers
from hedonic_neurons.neurons import ablate, ablation_logits, full_logits, model_inputs
from test_ablation import surgery
from test_loading import make_adapter, save_tiny
from test_recording import lora_merged, pad_batch, sequences
from tiny import tiny_model

LAYER = 1
COALITIONS = [[3, 5], [0, 23], [11]]
UNION = [0, 3, 5, 11, 23]
MODES = ["reference", "zero", "mean"]
FAMILIES = ["gpt2", "qwen2"]


@pytest.fixture(scope="module")
def neuron_models(tmp_path_factory):
    """family -> NeuronModel: a tiny classifier with a LoRA adapter on every MLP, via load_model."""
    out = {}
    for family in FAMILIES:
        folder = tmp_path_factory.mktemp(family)
        base = save_tiny(folder / "base", family)
        make_adapter(base, folder / "adapter", family, layers=(0, 1, 2))
        out[family] = load_model(base, adapter=folder / "adapter", device="cpu")
    return out


def hook_count(model) -> int:
    """Hooks on the MLP modules (where ablation hooks go). transformers 5 keeps hooks of its own on
    the blocks once ``output_hidden_states`` has been used, so the whole model is not hook-free."""
    total = 0
    for layer in range(n_layers(model)):
        mods = mlp_modules(model, layer)
        for module in (mods.up, mods.gate, mods.down):
            if module is not None:
                total += len(module._forward_pre_hooks) + len(module._forward_hooks)
    return total


def all_hooks(model) -> set:
    """Every hook of every module of ``model``, by module name and handle id."""
    return {
        (name, kind, key)
        for name, module in model.named_modules()
        for kind in ("pre", "post")
        for key in (module._forward_pre_hooks if kind == "pre" else module._forward_hooks)
    }


def means_for(n: int = 24) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(3))


def batch_for(family: str, seed: int = 5) -> dict:
    return pad_batch(sequences(seed=seed), "left" if family == "qwen2" else "right")


def direct_logits(model, batch) -> torch.Tensor:
    """The model's own forward (no library hook), its single output logit."""
    with torch.no_grad():
        return model(**model_inputs(batch)).logits[:, 0]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", MODES)
def test_logits_inside_equal_ablation_logits(neuron_models, family, mode):
    """Inside the block the model's logits are those of ablation_logits on the union of the
    coalitions (NeuronModel reference weights, zero, mean); after it, the plain logits again."""
    nm = neuron_models[family]
    batch = batch_for(family)
    means = means_for()
    plain = full_logits(nm.model, batch)
    expected = ablation_logits(nm, batch, LAYER, [UNION], mode=mode, means=means)[0]
    explicit = ablation_logits(
        nm.model, batch, LAYER, [UNION], mode=mode, reference=nm.reference_mlp_weights(LAYER), means=means
    )[0]
    torch.testing.assert_close(expected, explicit, atol=0, rtol=0)
    assert (expected - plain).abs().max() > 1e-4  # the neurons matter: the test could fail
    with ablate(nm, LAYER, COALITIONS, mode, means=means) as model:
        assert model is nm.model
        torch.testing.assert_close(full_logits(nm.model, batch), expected, atol=1e-6, rtol=0)
        torch.testing.assert_close(direct_logits(nm.model, batch), expected, atol=1e-6, rtol=0)
    assert hook_count(nm.model) == 0
    torch.testing.assert_close(full_logits(nm.model, batch), plain, atol=0, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", MODES)
def test_raw_peft_and_hf_models(family, mode):
    """A raw (unmerged) PeftModel and its merged HF model: the same logits as ablation_logits;
    reference weights given as reference=..."""
    base = tiny_model(family)
    peft_model, merged = lora_merged(base)
    reference = mlp_weights(base, LAYER)
    means = means_for().numpy()  # an array works as well as a tensor
    batch = batch_for(family, seed=6)
    for model in (peft_model, merged):
        expected = ablation_logits(
            model, batch, LAYER, [UNION], mode=mode, reference=reference, means=torch.from_numpy(means)
        )[0]
        plain = full_logits(model, batch)
        assert (expected - plain).abs().max() > 1e-5
        with ablate(model, LAYER, COALITIONS, mode, means=means, reference=reference):
            torch.testing.assert_close(full_logits(model, batch), expected, atol=1e-6, rtol=0)
        assert hook_count(model) == 0
        torch.testing.assert_close(full_logits(model, batch), plain, atol=0, rtol=0)


def test_coalition_forms_agree(neuron_models):
    """A Partition-like object, a flat list, numpy / tensor ids and nested lists ablate the same
    neurons; a partition of the wrong width is refused."""
    nm = neuron_models["qwen2"]
    batch = batch_for("qwen2")
    expected = ablation_logits(nm, batch, LAYER, [UNION], mode="zero")[0]
    forms = [
        SimpleNamespace(coalitions=COALITIONS, n_neurons=24),
        SimpleNamespace(coalitions_=COALITIONS),
        UNION,
        np.array(UNION),
        torch.tensor(UNION),
        [np.array([3, 5]), torch.tensor([0, 23]), (np.int64(11),)],
    ]
    for form in forms:
        with ablate(nm, np.int64(LAYER), form, "zero"):
            torch.testing.assert_close(full_logits(nm.model, batch), expected, atol=1e-6, rtol=0)
    partition = SimpleNamespace(coalitions=[[1]], n_neurons=12)
    with pytest.raises(ModelError, match="partition covers 12 neurons but layer 1 has 24"):
        ablate(nm, LAYER, partition, "zero").__enter__()
    # no neurons: nothing installed, nothing changes
    plain = full_logits(nm.model, batch)
    with ablate(nm, LAYER, [], "zero"):
        assert hook_count(nm.model) == 0
        torch.testing.assert_close(full_logits(nm.model, batch), plain, atol=0, rtol=0)


def test_exception_inside_removes_hooks(neuron_models):
    """An exception in the block (or in a forward inside it) propagates; hooks are gone after,
    the logits are the plain ones and the same neurons can be ablated again."""
    nm = neuron_models["gpt2"]
    batch = batch_for("gpt2")
    plain = full_logits(nm.model, batch)
    before = all_hooks(nm.model)
    with pytest.raises(RuntimeError, match="inside"), ablate(nm, LAYER, COALITIONS):
        assert hook_count(nm.model) == 3  # reference: up pre-hook, down pre- and post-hook
        raise RuntimeError("inside")
    assert hook_count(nm.model) == 0 and all_hooks(nm.model) == before
    torch.testing.assert_close(full_logits(nm.model, batch), plain, atol=0, rtol=0)

    def boom(module, args):
        raise ValueError("boom in forward")

    handle = nm.model.score.register_forward_pre_hook(boom)
    try:
        with pytest.raises(ValueError, match="boom in forward"), ablate(nm, LAYER, COALITIONS, "zero"):
            direct_logits(nm.model, batch)
        assert hook_count(nm.model) == 0 and len(all_hooks(nm.model) - before) == 1  # the test's own
    finally:
        handle.remove()
    assert all_hooks(nm.model) == before
    with ablate(nm, LAYER, COALITIONS, "zero"):  # the neurons were released
        assert (full_logits(nm.model, batch) - plain).abs().max() > 1e-4
    torch.testing.assert_close(full_logits(nm.model, batch), plain, atol=0, rtol=0)


def generate(model, prompt: dict, **kw):
    with torch.no_grad():
        out = model.generate(
            **prompt,
            max_new_tokens=6,
            do_sample=False,
            pad_token_id=0,
            output_scores=True,
            return_dict_in_generate=True,
            **kw,
        )
    return out.sequences, torch.stack(out.scores)


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_sees_the_ablation(family):
    """``generate`` (with and without a KV cache) inside the block is the generation of a copy
    whose layer is zero-ablated by weight surgery; it differs from the plain model and is the
    plain generation again after the block. Reference ablation of a LoRA model: its base model
    at that layer."""
    base = tiny_model(family, head="causal")
    peft_model, merged = lora_merged(base)
    prompt = pad_batch(sequences(seed=12, lengths=(4, 7)), "left")
    everything = list(range(24))
    plain_seq, plain_scores = generate(merged, prompt)
    zeroed = surgery(merged, LAYER, everything, "zero")
    want_seq, want_scores = generate(zeroed, prompt)
    assert not torch.equal(want_seq, plain_seq)  # the layer matters
    for cache in (True, False):
        with ablate(merged, LAYER, everything, "zero"):
            seq, scores = generate(merged, prompt, use_cache=cache)
        assert torch.equal(seq, want_seq)
        torch.testing.assert_close(scores, want_scores, atol=1e-5, rtol=1e-5)
    reference = mlp_weights(base, LAYER)
    reverted = surgery(merged, LAYER, everything, "reference", reference)
    with ablate(peft_model, LAYER, everything, reference=reference):
        seq, scores = generate(peft_model, prompt)
    want_seq, want_scores = generate(reverted, prompt)
    assert torch.equal(seq, want_seq)
    torch.testing.assert_close(scores, want_scores, atol=1e-5, rtol=1e-5)
    after_seq, after_scores = generate(merged, prompt)
    assert torch.equal(after_seq, plain_seq) and torch.equal(after_scores, plain_scores)
    assert hook_count(merged) == 0 and hook_count(peft_model) == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_hidden_states_see_the_ablation(neuron_models, family):
    """``output_hidden_states`` inside the block: unchanged below the layer, changed from it on,
    equal to a weight-surgery copy everywhere (mean ablation)."""
    nm = neuron_models[family]
    batch = model_inputs(batch_for(family))
    means = means_for()
    with torch.no_grad():
        plain = nm.model(**batch, output_hidden_states=True).hidden_states
        copy_ = surgery(nm.model, LAYER, UNION, "mean", means=means)
        want = copy_(**batch, output_hidden_states=True).hidden_states
        with ablate(nm, LAYER, COALITIONS, "mean", means=means):
            got = nm.model(**batch, output_hidden_states=True).hidden_states
    real = batch["attention_mask"].bool()
    for i, (g, w, p) in enumerate(zip(got, want, plain, strict=True)):
        torch.testing.assert_close(g[real], w[real], atol=1e-5, rtol=1e-5)
        if i <= LAYER:  # embeddings and blocks below the ablated one
            torch.testing.assert_close(g, p, atol=0, rtol=0)
        else:
            assert (g[real] - p[real]).abs().max() > 1e-4


def test_nested_two_layers_equal_surgery(neuron_models):
    """Two layers at once, with different modes: the composition of both weight surgeries."""
    nm = neuron_models["qwen2"]
    batch = batch_for("qwen2")
    a, b = [1, 4, 9], [2, 3, 20]
    want = surgery(nm.model, 0, a, "reference", nm.reference_mlp_weights(0))
    want = surgery(want, 2, b, "zero")
    expected = full_logits(want, batch)
    with ablate(nm, 0, a), ablate(nm, 2, b, "zero"):
        torch.testing.assert_close(full_logits(nm.model, batch), expected, atol=1e-5, rtol=1e-5)
        with ablate(nm, 1, UNION, "zero"):  # a third one on top changes the logits again
            assert (full_logits(nm.model, batch) - expected).abs().max() > 1e-5
        torch.testing.assert_close(full_logits(nm.model, batch), expected, atol=1e-5, rtol=1e-5)
    assert hook_count(nm.model) == 0


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", MODES)
def test_nested_same_layer_equals_union(neuron_models, family, mode):
    """Two coalitions of one layer in nested blocks = one block with both = ablation_logits of the
    union; leaving the inner block leaves the outer ablation; ablation_logits inside the block
    composes with it; overlapping neurons are refused without disturbing the outer block."""
    nm = neuron_models[family]
    batch = batch_for(family)
    means = means_for()
    a, b = [3, 5, 11], [0, 23]
    union = ablation_logits(nm, batch, LAYER, [a + b], mode=mode, means=means)[0]
    only_a = ablation_logits(nm, batch, LAYER, [a], mode=mode, means=means)[0]
    assert (union - only_a).abs().max() > 1e-5
    with ablate(nm, LAYER, [a, b], mode, means=means):
        torch.testing.assert_close(full_logits(nm.model, batch), union, atol=1e-6, rtol=0)
    with ablate(nm, LAYER, a, mode, means=means):
        with ablate(nm, LAYER, b, mode, means=means):
            torch.testing.assert_close(full_logits(nm.model, batch), union, atol=1e-6, rtol=0)
        torch.testing.assert_close(full_logits(nm.model, batch), only_a, atol=1e-6, rtol=0)
        inside = ablation_logits(nm, batch, LAYER, [[], b], mode=mode, means=means)
        # inside, a is in the captured layer state and b in the rebuilt output: float rounding
        torch.testing.assert_close(inside[0], only_a, atol=1e-5, rtol=0)
        torch.testing.assert_close(inside[1], union, atol=1e-5, rtol=0)
        hooks_before = hook_count(nm.model)
        with pytest.raises(ModelError, match="neurons 5 of layer 1 are already ablated"):
            ablate(nm, LAYER, [5, 6], mode, means=means).__enter__()
        with pytest.raises(ModelError, match="neurons 3, 11 of layer 1 are already ablated"):
            ablation_logits(nm, batch, LAYER, [[3, 11]], mode=mode, means=means)
        assert hook_count(nm.model) == hooks_before
        torch.testing.assert_close(full_logits(nm.model, batch), only_a, atol=1e-6, rtol=0)
    assert hook_count(nm.model) == 0


def test_bad_arguments_fail_before_any_hook(neuron_models):
    nm = neuron_models["qwen2"]
    raw = tiny_model("gpt2")
    cases = [
        (dict(model=nm, layer=3, coalitions=[1]), r"layer 3 is out of range: this model has 3 layers"),
        (dict(model=nm, layer=-4, coalitions=[1]), r"layer -4 is out of range"),
        (
            dict(model=nm, layer=1, coalitions=[[1, 24], [2, -1], [2]]),
            r"neuron ids for layer 1: -1, 24 outside 0..23; 2 given more than once",
        ),
        (dict(model=nm, layer=1, coalitions=[1], mode="revert"), r"unknown ablation mode 'revert'"),
        (dict(model=nm, layer=1, coalitions=[1], mode="mean"), r"needs means of shape \(24,\), got None"),
        (
            dict(model=nm, layer=1, coalitions=[1], mode="mean", means=np.zeros(5)),
            r"needs means of shape \(24,\), got \(5,\): pass means=",
        ),
        (dict(model=raw, layer=1, coalitions=[1]), r"needs the layer's reference weights: pass reference="),
        (dict(model=nm, layer=1, coalitions=[1, [2]]), r"item 0 \(1\) is not a list of integer neuron ids"),
        (dict(model=nm, layer=1, coalitions=[[1.5]]), r"item 0 \(\[1.5\]\) is not a list"),
        (dict(model=nm, layer=1, coalitions="1,2"), r"coalitions must be neuron ids"),
        (dict(model="gpt2", layer=1, coalitions=[1]), r"expected a transformers model.*str"),
        (
            dict(model=nm, layer=1, coalitions=[1], reference=mlp_weights(tiny_model("qwen2", n=12), 1)),
            r"reference weights have 12 neurons; layer 1 has 24",
        ),
    ]
    for kwargs, message in cases:
        with pytest.raises(ModelError, match=message), ablate(**kwargs):
            pytest.fail("the block must not run")
    assert hook_count(nm.model) == 0 and hook_count(raw) == 0
    # the hooks go on the object given: a copy is ablated on its own, the original is untouched
    other = copy.deepcopy(nm.model)
    with ablate(other, LAYER, [1], "zero"):
        assert hook_count(other) == 1 and hook_count(nm.model) == 0
