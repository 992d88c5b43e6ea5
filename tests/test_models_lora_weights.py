"""mlp_weights of an unmerged peft LoRA model are the effective weights W + scaling * B @ A (what its
forward applies), never the base weights; LoRA variants that are not low-rank sums are refused."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model

from hedonic_neurons.errors import ModelError
from hedonic_neurons.models import adapters
from test_loading import max_diff
from tiny import tiny_model

FIELDS = ("up", "gate", "down", "up_bias", "gate_bias", "down_bias")


def lora_model(family: str, layers=(0, 2), **kw):
    model = tiny_model(family, layers=3)
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=list(adapters.mlp_module_names(model, layers)),
        init_lora_weights=False, **kw,
    )  # fmt: skip
    torch.manual_seed(3)
    return get_peft_model(model, config).eval()


@pytest.mark.parametrize(("family", "kw"), [("gpt2", {}), ("llama", {}), ("gpt2", {"lora_bias": True})])
def test_unmerged_lora_weights_equal_the_merged_models(family, kw):
    peft_model = lora_model(family, **kw)
    base = copy.deepcopy(peft_model).get_base_model()  # still wrapped; read its base layers below
    merged = copy.deepcopy(peft_model).merge_and_unload()
    for layer in range(3):
        unmerged, want = adapters.mlp_weights(peft_model, layer), adapters.mlp_weights(merged, layer)
        for field in FIELDS:
            assert max_diff(getattr(unmerged, field), getattr(want, field)) <= 1e-6, (layer, field)
        mods = adapters.mlp_modules(base, layer)
        plain = adapters.linear_weight(
            getattr(mods.up, "base_layer", mods.up), adapters.get_spec(base).conv1d
        )
        changed = max_diff(unmerged.up, plain)
        assert (changed > 1e-3) == (layer in (0, 2)), layer  # LoRA layers differ from the base weights
    # the same numbers the forward uses: the hand computation of the MLP through the effective weights
    x = torch.randn(5, peft_model.config.get_text_config().hidden_size)
    mods = adapters.mlp_modules(peft_model, 0)
    w = adapters.mlp_weights(peft_model, 0)
    with torch.no_grad():
        hidden = mods.act(mods.up(x)) if mods.gate is None else mods.act(mods.gate(x)) * mods.up(x)
        direct = mods.down(hidden)
        assert torch.allclose(w.output(w.activations(x)), direct, atol=1e-5)


def test_merged_or_disabled_adapters_read_as_the_forward_applies_them():
    peft_model = lora_model("llama")
    merged_want = adapters.mlp_weights(copy.deepcopy(peft_model).merge_and_unload(), 0)
    peft_model.merge_adapter()  # merged in place: the stored weight already holds the update
    assert max_diff(adapters.mlp_weights(peft_model, 0).up, merged_want.up) <= 1e-6
    with peft_model.disable_adapter():  # the forward unmerges: the base weights apply
        base = adapters.mlp_weights(peft_model, 0).up
    peft_model.unmerge_adapter()
    mod = adapters.mlp_modules(peft_model, 0).up
    assert max_diff(base, mod.base_layer.weight) <= 1e-6


def test_dora_is_refused():
    peft_model = lora_model("llama", use_dora=True)
    with pytest.raises(ModelError, match="DoRA"):
        adapters.mlp_weights(peft_model, 0)
    assert adapters.mlp_weights(peft_model, 1).up is not None  # layer 1 carries no adapter
