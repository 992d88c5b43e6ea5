"""The readout (A3): local head, readout site, full-model logit (foundation issue item 5)."""

from __future__ import annotations

import pytest
import torch
import transformers as tf

from hedonic_neurons.errors import ModelError
from hedonic_neurons.models.adapters import mlp_modules, mlp_weights
from hedonic_neurons.neurons import (
    ablation_logits,
    capture_site,
    full_logits,
    local_head,
    model_inputs,
    readout_positions,
)
from test_recording import (
    PAIRS,
    hook_count,
    lively_model,
    lora_merged,
    minilm,
    mlp_input_hook,
    pad_batch,
    sequences,
)
from tiny import FAMILIES, tiny_config, tiny_model

DECODERS = [f for f in FAMILIES if f != "bert"]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("side", ["left", "right"])
def test_local_head_at_last_layer_equals_model_logits(family, side):
    """The head applied to the last layer's readout site is the model's own output logit."""
    if family == "bert" and side == "left":
        pytest.skip("BertForSequenceClassification reads position 0, a pad under left padding")
    model = tiny_model(family)
    batch = pad_batch(sequences(seed=1), side)
    with torch.no_grad():
        own = model(**model_inputs(batch)).logits[:, 0]
    site = capture_site(model, batch, 2)
    with torch.no_grad():
        torch.testing.assert_close(local_head(model, 2)(site.resid), own, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(
            local_head(model, -1, dtype=torch.float64)(site.resid).float(), own, atol=1e-6, rtol=1e-5
        )
    torch.testing.assert_close(full_logits(model, batch), own, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("family", DECODERS)
def test_causal_lm_readout_is_one_token_logit(family):
    """For *ForCausalLM the readout is the lm_head logit of score_token_id at the readout position."""
    model = tiny_model(family, head="causal")
    batch = pad_batch(sequences(seed=2), "left")
    with torch.no_grad():
        logits = model(**model_inputs(batch)).logits
    rows = torch.arange(3)
    own = logits[rows, readout_positions(model, batch["attention_mask"]), 11]
    site = capture_site(model, batch, 2)
    with torch.no_grad():
        torch.testing.assert_close(
            local_head(model, 2, score_token_id=11)(site.resid), own, atol=1e-6, rtol=1e-5
        )
    torch.testing.assert_close(full_logits(model, batch, score_token_id=11), own, atol=1e-6, rtol=1e-5)
    with pytest.raises(ModelError, match="needs score_token_id"):
        local_head(model, 1)


@pytest.mark.parametrize("family", FAMILIES)
def test_capture_site_against_independent_hooks(family):
    """resid = the block's output (pre-LN; BERT: its LayerNorm gives the block output), mlp_input =
    the MLP norm's output, activations = MLPWeights.activations(mlp_input), all at the readout token."""
    model = tiny_model(family)
    batch = pad_batch(sequences(seed=4), "right")
    store: list[torch.Tensor] = []
    handle = mlp_input_hook(model, 1, store)
    try:
        with torch.no_grad():
            hidden = model(**model_inputs(batch), output_hidden_states=True).hidden_states[2]
    finally:
        handle.remove()
    before = hook_count(model)  # transformers keeps its own output-recording hooks
    site = capture_site(model, batch, 1)
    rows, pos = torch.arange(3), site.positions
    torch.testing.assert_close(site.mlp_input, store[0][rows, pos], atol=1e-6, rtol=0)
    hand = mlp_weights(model, 1).activations(site.mlp_input)
    torch.testing.assert_close(site.activations, hand.detach(), atol=1e-5, rtol=0)
    post_norm = mlp_modules(model, 1).post_norm
    with torch.no_grad():
        resid = post_norm(site.resid) if post_norm is not None else site.resid
    torch.testing.assert_close(resid, hidden[rows, pos], atol=1e-6, rtol=0)
    assert hook_count(model) == before


@pytest.mark.parametrize("family", FAMILIES)
def test_linear_readout_has_no_pair_synergy(family):
    """With the head's norm dropped (linear readout), Δ_ij = ℓ - ℓ_-i - ℓ_-j + ℓ_-ij is 0 for every
    pair (reference ablation); with the norm it is not (method A3 / Part B §2)."""
    base = lively_model(family, n=12)
    _, merged = lora_merged(base)
    reference = mlp_weights(base, 1)  # the weights before the LoRA
    batch = pad_batch(sequences(seed=6), "right")
    n = 12
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    sets = [[], *[[i] for i in range(n)], *[list(p) for p in pairs]]
    for norm, check in ((False, "zero"), (True, "nonzero")):
        logits = ablation_logits(merged, batch, 1, sets, reference=reference, readout="local", norm=norm)
        base, single = logits[0], logits[1 : n + 1]
        delta = torch.stack(
            [base - single[i] - single[j] + logits[n + 1 + k] for k, (i, j) in enumerate(pairs)]
        )
        if check == "zero":
            assert delta.abs().max() < 1e-6
        else:
            assert delta.abs().max() > 1e-4
    # norm=False is the linear map itself: its gradient is the (pooler-composed) score vector
    head = local_head(merged, 1, norm=False)
    r = torch.randn(16, requires_grad=True)
    (grad,) = torch.autograd.grad(head(r), r)
    expected = head.weight if head.pooler is None else head.pooler.weight.T @ head.weight
    torch.testing.assert_close(grad, expected.detach(), atol=1e-6, rtol=1e-5)


def test_local_head_structure_and_errors():
    llama, bert = tiny_model("llama"), tiny_model("bert")
    head = local_head(llama, 0)
    assert head.norm_kind == "rms" and head.norm_eps == pytest.approx(llama.config.rms_norm_eps)
    assert head.pooler is None and head.norm is llama.model.norm
    head = local_head(bert, 1)
    assert head.norm_kind == "layer" and head.tanh and head.pooler is bert.bert.pooler.dense
    assert head.norm is bert.bert.encoder.layer[1].output.LayerNorm
    assert local_head(bert, 1, norm=False).norm is None and not local_head(bert, 1, norm=False).tanh
    with pytest.raises(ModelError, match="only for causal LMs"):
        local_head(llama, 0, score_token_id=3)
    config = tiny_config("llama")
    config.num_labels = 2
    two = tf.AutoModelForSequenceClassification.from_config(config)
    with pytest.raises(ModelError, match="2 outputs"):
        local_head(two, 0)
    with pytest.raises(ModelError, match="layer 5 is out of range"):
        local_head(llama, 5)


@pytest.mark.parametrize("family", ["llama", "gpt_neox", "gpt2", "bert"])
def test_readout_on_peft_model(family):
    """capture_site / full_logits / local_head on an unmerged LoRA model equal the merged model's."""
    peft_model, merged = lora_merged(tiny_model(family))
    batch = pad_batch(sequences(), "left" if family != "bert" else "right")
    torch.testing.assert_close(
        full_logits(peft_model, batch), full_logits(merged, batch), atol=1e-5, rtol=1e-5
    )
    sites = [capture_site(m, batch, 1) for m in (peft_model, merged)]
    torch.testing.assert_close(sites[0].resid, sites[1].resid, atol=1e-5, rtol=0)
    with torch.no_grad():
        local = [local_head(m, 1)(s.resid) for m, s in zip((peft_model, merged), sites)]
    torch.testing.assert_close(local[0], local[1], atol=1e-5, rtol=1e-5)
    assert hook_count(peft_model) == 0


@pytest.mark.slow
def test_minilm_readout_equals_logits():
    """MiniLM: the local head at the last layer (and full_logits) equals the model's logits."""
    model, tokenizer = minilm()
    batch = dict(tokenizer(PAIRS, padding=True, return_tensors="pt"))
    with torch.no_grad():
        own = model(**batch).logits[:, 0]
        local = local_head(model, 5)(capture_site(model, batch, 5).resid)
    torch.testing.assert_close(local, own, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(full_logits(model, batch), own, atol=1e-5, rtol=1e-5)
