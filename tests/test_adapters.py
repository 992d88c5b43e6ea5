"""Adapters: every supported family resolves its MLP modules on tiny random models."""

import pytest
import torch
import transformers as tf

from hedonic_neurons.errors import ModelError
from hedonic_neurons.models import adapters
from tiny import FAMILIES, tiny_config


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("head", ["seqcls", "causal"])
def test_spec_resolves_modules(family, head):
    if family == "bert" and head == "causal":
        pytest.skip("BERT is an encoder; it has no causal-LM head")
    torch.manual_seed(0)
    config = tiny_config(family)
    config.num_labels = 1
    auto = tf.AutoModelForSequenceClassification if head == "seqcls" else tf.AutoModelForCausalLM
    model = auto.from_config(config).eval()
    spec = adapters.get_spec(model)
    assert spec.family == family
    assert adapters.n_layers(model) == 3
    assert adapters.n_neurons(model) == 24
    w = adapters.mlp_weights(model, 1)
    assert tuple(w.up.shape) == (24, 16) and tuple(w.down.shape) == (16, 24)
    assert (w.gate is not None) == (family in ("llama", "mistral", "qwen2"))
    # the hand computation of the MLP equals the module's own output
    mods = adapters.mlp_modules(model, 1)
    x = torch.randn(2, 5, 16)
    a = w.activations(x)
    out = w.output(a)
    mlp = mods.block.mlp if family != "bert" else None
    if mlp is not None:
        torch.testing.assert_close(out, mlp(x), atol=1e-6, rtol=1e-5)
    else:
        torch.testing.assert_close(out, mods.down(mods.block.intermediate(x)), atol=1e-6, rtol=1e-5)
    assert adapters.check_layer(model, -1) == 2


def test_unknown_architecture_and_layer_out_of_range():
    config = tf.T5Config(vocab_size=32, d_model=8, d_ff=16, num_layers=1, num_heads=1, d_kv=4)
    with pytest.raises(ModelError, match="unknown architecture 't5'.*ArchSpec"):
        adapters.get_spec(config)
    model = tf.AutoModelForSequenceClassification.from_config(tiny_config("llama"))
    with pytest.raises(ModelError, match=r"layer 7 is out of range: this model has 3 layers"):
        adapters.check_layer(model, 7)


def test_lora_targets():
    assert adapters.get_spec(tiny_config("llama")).lora_targets == ("down_proj", "gate_proj", "up_proj")
    assert adapters.get_spec(tiny_config("gpt2")).lora_targets == ("c_fc", "c_proj")
