"""Model objects instead of names: NeuronModel.from_hf, load_model(object), the public reference
types, nnsight / TransformerLens wrappers."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import transformers as tf
from peft import PeftModel
from peft.tuners.lora import LoraLayer

from hedonic_neurons.errors import ConfigError, ModelError
from hedonic_neurons.models import (
    CheckpointReference,
    LoraReference,
    ModelReference,
    NeuronModel,
    adapters,
    load_model,
)
from test_loading import P, Q, assert_mlp_equal, make_adapter, max_diff, save_tiny, tiny_tokenizer
from tiny import tiny_model


def lora_modules(model) -> list[str]:
    return sorted(n for n, m in model.named_modules() if isinstance(m, LoraLayer))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_from_hf_peft_model_merges_a_copy_and_keeps_the_base_as_reference(tmp_path, family):
    base = save_tiny(tmp_path / "base", family)
    peft_model = make_adapter(base, tmp_path / "ad", family, layers=(0, 2))
    before = {k: v.clone() for k, v in peft_model.state_dict().items()}
    wrapped_before = lora_modules(peft_model)
    nm = NeuronModel.from_hf(peft_model, tiny_tokenizer(family))
    # the user's object: same tensors, still a peft model with its unmerged LoRA layers
    after = peft_model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert isinstance(peft_model, PeftModel) and lora_modules(peft_model) == wrapped_before
    assert not any(m.merged for m in peft_model.modules() if isinstance(m, LoraLayer))
    assert peft_model.training is False and any(p.requires_grad for p in peft_model.parameters())
    # the analysed copy: merged (no LoRA layers left), the same function as the peft model
    assert not lora_modules(nm.model) and not adapters.is_peft(nm.model)
    batch = nm.encode(Q, P)
    with torch.no_grad():
        assert torch.allclose(nm.model(**batch).logits, peft_model(**batch).logits, atol=1e-5)
    # the reference is the base checkpoint, exactly; the current weights are the merged ones
    fresh = tf.AutoModelForSequenceClassification.from_pretrained(base)
    for layer in range(3):
        assert_mlp_equal(nm.reference_mlp_weights(layer), adapters.mlp_weights(fresh, layer), 1e-6)
        assert_mlp_equal(nm.mlp_weights(layer), adapters.mlp_weights(peft_model, layer), 1e-6)
    changed = [row["layer"] for row in nm.weight_change() if row["total"] > 1e-4]
    assert changed == [0, 2] and nm.lora["layers"] == [0, 2] and nm.lora["rank"] == 4
    assert nm.head == "classification" and nm.identity["adapter"].startswith("<in-memory peft")


def test_load_model_accepts_objects(tmp_path):
    """load_model(peft_model) used to stringify the module into a path."""
    base = save_tiny(tmp_path / "base", "llama")
    peft_model = make_adapter(base, tmp_path / "ad", "llama", layers=(1,))
    nm = load_model(peft_model, tokenizer=tiny_tokenizer("llama"))
    fresh = tf.AutoModelForSequenceClassification.from_pretrained(base)
    assert_mlp_equal(nm.reference_mlp_weights(1), adapters.mlp_weights(fresh, 1), 1e-6)
    # a plain model object plus an adapter folder: the adapter is merged into a copy
    plain = tf.AutoModelForSequenceClassification.from_pretrained(base)
    snapshot = copy.deepcopy(plain.state_dict())
    nm2 = load_model(plain, adapter=tmp_path / "ad")  # tokenizer from the model's own folder
    assert all(torch.equal(v, snapshot[k]) for k, v in plain.state_dict().items())
    assert_mlp_equal(nm2.mlp_weights(1), nm.mlp_weights(1), 1e-6)
    assert_mlp_equal(nm2.reference_mlp_weights(1), adapters.mlp_weights(fresh, 1), 1e-6)
    assert nm2.identity["adapter_sha256"] and nm2.lora["layers"] == [1]
    with pytest.raises(ConfigError, match="device="):
        load_model(plain, device="cpu")


def test_reference_may_be_a_model_object_or_a_checkpoint_path(tmp_path):
    base_folder = save_tiny(tmp_path / "base", "gpt2")
    base = tf.AutoModelForSequenceClassification.from_pretrained(base_folder)
    tuned = copy.deepcopy(base)
    with torch.no_grad():
        adapters.mlp_modules(tuned, 1).down.weight.add_(0.5)  # fine-tuned: one layer's down projection
    tok = tiny_tokenizer("gpt2")
    for ref in (base, base_folder, ModelReference(base), CheckpointReference(base_folder, tuned)):
        nm = NeuronModel.from_hf(tuned, tok, reference=ref)
        assert_mlp_equal(nm.reference_mlp_weights(1), adapters.mlp_weights(base, 1), 0.0)
        rows = nm.weight_change()
        n, d = adapters.n_neurons(base), base.config.n_embd
        assert rows[1]["down"] == pytest.approx(0.5 * (n * d) ** 0.5, rel=1e-6)  # ||0.5 * ones(d, n)||_F
        assert rows[0]["total"] == 0 and rows[2]["total"] == 0
    other = tiny_model("gpt2", layers=2)
    with pytest.raises(ModelError, match="same architecture"):
        NeuronModel.from_hf(tuned, tok, reference=other)
    peft_model = make_adapter(base_folder, tmp_path / "ad", "gpt2")
    with pytest.raises(ConfigError, match="reference="):
        NeuronModel.from_hf(peft_model, tok, reference=base)


def test_constructor_takes_public_types_only():
    model = tiny_model("llama")
    tok = tiny_tokenizer("llama")
    nm = NeuronModel(model, tok)  # used to fail with KeyError 'model'
    assert nm.head == "classification" and nm.input_format.kind == "text" and not nm.has_reference
    assert "LlamaForSequenceClassification" in repr(nm) or nm.identity["model"] in repr(nm)
    # a LoraReference from hand-made factors: reference = W - scaling * B @ A
    a, b = torch.randn(2, 16), torch.randn(24, 2)
    nm = NeuronModel(model, tok, reference=LoraReference({(1, "up"): (a, b, 0.5)}))
    w = adapters.mlp_weights(model, 1)
    ref = nm.reference_mlp_weights(1)
    assert max_diff(ref.up, w.up.detach() - 0.5 * b @ a) < 1e-6
    assert max_diff(ref.gate, w.gate) == 0 and max_diff(ref.down, w.down) == 0
    with pytest.raises(ModelError, match="role"):
        LoraReference({(1, "in"): (a, b, 0.5)})


def test_tokenizer_from_the_models_folder_or_a_clear_error(tmp_path):
    folder = save_tiny(tmp_path / "m", "bert")
    model = tf.AutoModelForSequenceClassification.from_pretrained(folder)
    nm = NeuronModel.from_hf(model)
    assert nm.input_format.kind == "pair" and nm.tokenizer.decode(nm.encode(Q[:1], P[:1])["input_ids"][0])
    with pytest.raises(ModelError, match="tokenizer="):
        NeuronModel.from_hf(tiny_model("bert"))  # random config: no folder to load a tokenizer from


def test_nnsight_is_unwrapped_and_transformer_lens_refused(tmp_path):
    import nnsight

    model = tiny_model("gpt2")
    nm = NeuronModel.from_hf(nnsight.NNsight(model), tiny_tokenizer("gpt2"))
    assert nm.model is model
    causal = tiny_model("llama", head="causal")
    tok = tiny_tokenizer("llama")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # LanguageModel's deprecation in favour of TransformersModel
        language_model = nnsight.LanguageModel(causal, tokenizer=tok)
    nm = NeuronModel.from_hf(language_model)  # its own tokenizer
    assert nm.model is causal and nm.tokenizer is tok and nm.head == "causal"

    import transformer_lens
    from transformer_lens.model_bridge import TransformerBridge

    with pytest.raises(ModelError, match="pass the Hugging Face model instead") as exc:
        load_model(transformer_lens.HookedRootModule())  # TransformerLens' own module tree
    assert "\n" not in str(exc.value)
    # a TransformerBridge wraps a Hugging Face model (original_model): that is what is analysed
    folder = save_tiny(tmp_path / "causal", "gpt2", head="causal")
    bridge = TransformerBridge.boot_transformers(str(folder), device="cpu")
    nm = NeuronModel.from_hf(bridge)
    assert nm.model is bridge.original_model and nm.head == "causal"
    plain = tf.AutoModelForCausalLM.from_pretrained(folder)
    assert_mlp_equal(nm.mlp_weights(1), adapters.mlp_weights(plain, 1), 0.0)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.allclose(nm.model(input_ids=ids).logits, plain(input_ids=ids).logits, atol=1e-6)
    with pytest.raises(ModelError, match="transformers model object"):
        NeuronModel.from_hf(torch.nn.Linear(2, 2), tiny_tokenizer("gpt2"))
