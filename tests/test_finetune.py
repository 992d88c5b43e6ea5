"""LoRA fine-tuning on tiny random models: the loss goes down, the adapter reloads and changes
exactly the MLP of the chosen layers (and the head), the layer band follows A12."""

from __future__ import annotations

import random
import zlib

import numpy as np
import pytest
import torch

from hedonic_neurons.data import Pair, demo_corpus, task_targets
from hedonic_neurons.errors import ConfigError, ModelError
from hedonic_neurons.models.adapters import mlp_module_names
from hedonic_neurons.models.training import (
    FinetuneConfig,
    add_lora,
    default_layer_band,
    head_features,
    head_linear,
    init_head_probe,
    init_pooler,
    parse_layers,
    predict,
    regression_batches,
    rm_batches,
    rm_groups,
    train,
)
from tiny import FAMILIES, tiny_model


def encode(queries, passages, vocab=97, length=24):
    """A tiny offline 'tokenizer': crc32 of each word, right padding with id 0."""
    rows = []
    for q, p in zip(queries, passages):
        words = (q + " | " + p).lower().split()[:length]
        rows.append([1 + zlib.crc32(w.encode()) % (vocab - 1) for w in words])
    width = max(map(len, rows))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    return {"input_ids": ids, "attention_mask": (ids != 0).long()}


@pytest.fixture(scope="module")
def demo():
    return demo_corpus()


def test_default_layer_band_scales_7_to_14_of_32():
    assert default_layer_band(32) == list(range(7, 15))
    assert default_layer_band(6) == [1, 2, 3]
    assert default_layer_band(30) == list(range(7, 14))
    assert default_layer_band(1) == [0]
    assert parse_layers("1-2,4", 6) == [1, 2, 4] and parse_layers("all", 3) == [0, 1, 2]
    with pytest.raises(ConfigError, match="layers 0..5"):
        parse_layers("4-9", 6)


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_targets_only_the_mlp_of_chosen_layers(family):
    model = tiny_model(family, layers=3)
    peft_model = add_lora(model, [1])
    lora = {n.split(".lora_")[0].removeprefix("base_model.model.") for n, _ in peft_model.named_parameters()
            if "lora_" in n}  # fmt: skip
    assert lora == set(mlp_module_names(model, [1]))
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "modules_to_save" in n for n in trainable)
    assert any("modules_to_save" in n for n in trainable)  # the head is trained too


def test_needs_a_one_logit_classifier():
    with pytest.raises(ModelError, match="sequence-classification model with one label"):
        add_lora(tiny_model("llama", head="causal"), [1])


def full_mse(model, pairs, y):
    return float(((torch.tensor(predict(model, encode, pairs)) - torch.tensor(y)) ** 2).mean())


def test_regression_loss_drops_and_adapter_reloads_with_exact_layers(demo, tmp_path):
    from peft import PeftModel

    pairs = demo.split_pairs("train")[:160]
    y = task_targets(pairs, "cqtr")
    model = add_lora(tiny_model("llama", layers=4), [1, 2], rank=4, alpha=8, dropout=0.0)
    before = full_mse(model, pairs, y)
    cfg = FinetuneConfig(task="cqtr", lr=2e-2, batch_size=16, epochs=4, warmup_ratio=0.0, seed=0)
    log = train(model, encode, pairs, cfg, progress=False)
    after = full_mse(model, pairs, y)
    assert log["steps"] == 40 and after < 0.5 * before
    trained_scores = predict(model, encode, pairs[:20])
    model.save_pretrained(tmp_path / "adapter")

    base = tiny_model("llama", layers=4)
    reference = {n: p.detach().clone() for n, p in base.named_parameters()}
    loaded = PeftModel.from_pretrained(base, tmp_path / "adapter")
    assert predict(loaded, encode, pairs[:20]) == pytest.approx(trained_scores, abs=1e-5)
    merged = loaded.merge_and_unload()
    changed = {n for n, p in merged.named_parameters() if not torch.equal(p, reference[n])}
    mlp = {f"{m}.weight" for m in mlp_module_names(merged, [1, 2])}
    assert changed == mlp | {"score.weight"}


def test_rm_groups_positive_first_and_ranking_loss_drops(demo):
    pairs = demo.split_pairs("train")[:400]  # 40 queries x 10 candidates
    groups, skipped = rm_groups(pairs, demo.qrels)
    assert len(groups) == 40 and skipped == 0

    for batch in rm_batches(groups, 4, 2, random.Random(0)):
        for g in range(0, len(batch), 4):
            first, *rest = batch[g : g + 4]
            assert demo.qrels[pairs[first].qid].get(pairs[first].pid, 0) > 0
            assert all(demo.qrels[pairs[i].qid].get(pairs[i].pid, 0) == 0 for i in rest)
    model = add_lora(tiny_model("qwen2", layers=3), [1], rank=4, alpha=8, dropout=0.0)
    cfg = FinetuneConfig(task="rm", lr=2e-2, batch_size=16, group_size=4, epochs=6, warmup_ratio=0.0)
    log = train(model, encode, pairs, cfg, qrels=demo.qrels, progress=False)
    assert log["train_queries"] == 40 and log["steps"] == 60
    assert log["loss_last_20"] < log["loss_first_20"] - 0.1


def test_bucketed_batches_cover_each_index_once_with_similar_lengths():
    rng = random.Random(0)
    lengths = [rng.randrange(1000) for _ in range(203)]
    batches = regression_batches(203, 8, random.Random(1), lengths, bucket=4)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(203)) and max(map(len, batches)) == 8
    for b in batches:  # a batch is a run of a length-sorted chunk of 32
        assert [lengths[i] for i in b] == sorted(lengths[i] for i in b)
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    plain = regression_batches(203, 8, random.Random(1))
    assert spread < 0.5 * sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in plain) / len(
        plain
    )


def test_predict_in_length_order_matches_one_by_one(demo):
    pairs = demo.split_pairs("train")[:13]
    model = tiny_model("bert", layers=2).eval()
    one_by_one = [predict(model, encode, [p])[0] for p in pairs]
    assert predict(model, encode, pairs, batch_size=4) == pytest.approx(one_by_one, abs=1e-5)


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_standardized_target_is_folded_back_into_the_head(demo, family):
    """With a vanishing learning rate the model is unchanged during training, so after the fold its
    output must be std * f0 + mean (bias head) or std * f0 (no-bias head), f0 the initial output."""
    pairs = demo.split_pairs("train")[:32]
    y = task_targets(pairs, "mean_tf_l")
    model = add_lora(tiny_model(family, layers=3), [1], rank=4, alpha=8, dropout=0.0)
    f0 = predict(model, encode, pairs)
    cfg = FinetuneConfig(task="mean_tf_l", lr=1e-12, batch_size=16, max_steps=1, warmup_ratio=0.0)
    log = train(model, encode, pairs, cfg, progress=False)
    shift = y.mean() if family == "bert" else 0.0
    assert log["standardized"] == pytest.approx({"shift": shift, "scale": y.std()})
    assert predict(model, encode, pairs) == pytest.approx(y.std() * f0 + shift, abs=1e-6)


def test_bert_pooler_is_trained_as_head_and_saved(demo, tmp_path):
    from peft import PeftModel

    pairs = demo.split_pairs("train")[:48]
    model = add_lora(tiny_model("bert", layers=3), [1], rank=4, alpha=8, dropout=0.0)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("pooler" in n and "modules_to_save" in n for n in trainable)
    train(
        model, encode, pairs, FinetuneConfig(task="cqtr", lr=1e-2, max_steps=3, head_lr=3e-2), progress=False
    )
    scores = predict(model, encode, pairs)
    model.save_pretrained(tmp_path / "adapter")
    base = tiny_model("bert", layers=3)
    reference = {n: p.detach().clone() for n, p in base.named_parameters()}
    merged = PeftModel.from_pretrained(base, tmp_path / "adapter").merge_and_unload()
    assert predict(merged, encode, pairs) == pytest.approx(scores, abs=1e-5)
    changed = {n for n, p in merged.named_parameters() if not torch.equal(p, reference[n])}
    mlp = {f"{m}.weight" for m in mlp_module_names(merged, [1])}
    head = {"classifier.weight", "classifier.bias", "bert.pooler.dense.weight", "bert.pooler.dense.bias"}
    assert changed == mlp | head


def test_init_pooler_standardizes_the_cls_state_per_dimension(demo):
    pairs = demo.split_pairs("train")[:40]
    model = add_lora(tiny_model("bert", layers=2), [1], rank=4, alpha=8, dropout=0.0)
    summary = init_pooler(model, encode, pairs, batch_size=16)
    assert summary["n_pairs"] == 40
    dense = next(m for n, m in model.named_modules() if n.endswith("pooler.modules_to_save.default")).dense
    seen = []
    hook = dense.register_forward_hook(lambda _m, _a, out: seen.append(out.detach()))
    predict(model, encode, pairs)
    hook.remove()
    pre = torch.cat(seen)  # pre-activations (h - mu) / sigma over the same pairs
    assert pre.mean(0) == pytest.approx(torch.zeros(pre.shape[1]), abs=1e-4)
    assert pre.std(0) == pytest.approx(torch.ones(pre.shape[1]), abs=1e-3)
    assert init_pooler(add_lora(tiny_model("llama", layers=2), [1]), encode, pairs) is None


@pytest.mark.parametrize("family", FAMILIES)
def test_head_features_are_the_pooled_input_of_the_head(demo, family):
    """logit = features @ W.T + b for every architecture: the model's own pooling picks the rows
    (BERT: pooler output; decoders: the last non-pad token, with right padding here)."""
    pairs = demo.split_pairs("train")[:11]
    model = add_lora(tiny_model(family, layers=2), [1], rank=4, alpha=8, dropout=0.0)
    linear = head_linear(model)
    x = head_features(model, encode, pairs, batch_size=4)
    assert x.shape == (11, linear.in_features)
    w = linear.weight.detach().double().numpy().ravel()
    b = 0.0 if linear.bias is None else float(linear.bias.detach())
    assert x @ w + b == pytest.approx(predict(model, encode, pairs, batch_size=4), abs=1e-5)


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_head_probe_recovers_a_linear_target(demo, family):
    """A target that is a linear function of the head features is fitted almost exactly; the head
    then outputs it, and the features (the base model) are untouched."""
    pairs = demo.split_pairs("train")[:120]
    model = add_lora(tiny_model(family, layers=2), [1], rank=4, alpha=8, dropout=0.0)
    x = head_features(model, encode, pairs)
    w_true = np.random.default_rng(0).normal(size=x.shape[1])
    y = x @ w_true + (0.5 if family == "bert" else 0.0)
    summary = init_head_probe(model, encode, pairs, y, batch_size=32)
    assert summary["n_pairs"] == 120 and summary["pearson_in_sample"] > 0.99
    assert np.corrcoef(predict(model, encode, pairs), y)[0, 1] > 0.99
    assert head_features(model, encode, pairs) == pytest.approx(x, abs=1e-6)  # only the head changed


def test_train_with_head_probe_records_it(demo):
    pairs = demo.split_pairs("train")[:200]
    model = add_lora(tiny_model("llama", layers=2), [1], rank=4, alpha=8, dropout=0.0)
    cfg = FinetuneConfig(
        task="rm", lr=1e-12, batch_size=8, group_size=4, max_steps=1, head_init="probe", pooler_init_pairs=16
    )
    log = train(model, encode, pairs, cfg, qrels=demo.qrels, progress=False)
    assert log["head_init"]["n_pairs"] == 16  # 8 queries x (one relevant, one other)
    with pytest.raises(ConfigError, match="head_init"):
        FinetuneConfig(task="cqtr", head_init="ridge")


def test_crop_passage_is_a_contiguous_span_of_at_least_30_percent():
    from hedonic_neurons.data import Pair
    from hedonic_neurons.models.training import crop_passage

    words = [f"w{i}" for i in range(20)]
    pair = Pair("q", "p", "query", " ".join(words))
    rng = random.Random(0)
    lengths = set()
    for _ in range(200):
        got = crop_passage(pair, rng).passage.split()
        start = words.index(got[0])
        assert got == words[start : start + len(got)] and len(got) >= 6
        lengths.add(len(got))
    assert min(lengths) == 6 and max(lengths) == 20
    assert crop_passage(Pair("q", "p", "query", "one"), rng).passage == "one"


def test_augment_trains_on_crops_with_recomputed_targets(demo):
    """With augment=1 every passage the model sees is a crop, and the loss of each step is the MSE
    against the standardised target of the cropped pair (not of the original)."""
    pairs = demo.split_pairs("train")[:48]
    model = add_lora(tiny_model("llama", layers=2), [1], rank=4, alpha=8, dropout=0.0)
    seen = []

    def spy(queries, passages):
        seen.append((list(queries), list(passages)))
        return encode(queries, passages)

    cfg = FinetuneConfig(
        task="cqtr", lr=1e-12, head_lr=1e-12, batch_size=16, max_steps=3, augment=1.0, seed=0
    )
    log = train(model, spy, pairs, cfg, progress=False)
    scale = task_targets(pairs, "cqtr").std()  # llama's score has no bias: the target is only scaled
    by_query = {}
    for p in pairs:
        by_query.setdefault(p.query, []).append(p.passage)
    shorter = 0
    for step, (queries, passages) in enumerate(seen):
        for q, text in zip(queries, passages):
            assert any(f" {text} " in f" {orig} " for orig in by_query[q])  # a span of one of its passages
            shorter += all(len(text) < len(orig) for orig in by_query[q])
        cropped = [Pair("q", "p", q, text) for q, text in zip(queries, passages)]
        y = task_targets(cropped, "cqtr") / scale
        with torch.no_grad():  # the trained head outputs the raw scale: back to the loss's scale
            out = model(**encode(queries, passages)).logits.squeeze(-1).double().numpy() / scale
        assert log["loss"][step] == pytest.approx(float(((out - y) ** 2).mean()), rel=1e-4)
    assert shorter > 10
    with pytest.raises(ConfigError, match="augment"):
        FinetuneConfig(task="rm", augment=0.5)


def test_finetune_template_reaches_the_encoder_and_the_record(tmp_path):
    """--template changes what a decoder reads (the query after the passage) and is recorded."""
    from hedonic_neurons.models.finetune import load_for_finetune
    from test_loading import save_tiny

    base = save_tiny(tmp_path / "base", "llama", layers=2)
    doc_first = "document: {passage} query: {query}"
    _, enc_default, fmt_default, _ = load_for_finetune(str(base), max_length=64)
    _, enc_doc_first, fmt, _ = load_for_finetune(str(base), max_length=64, template=doc_first)
    assert (fmt["template"], fmt["max_length"]) == (doc_first, 64)
    assert fmt_default["template"] == "query: {query} document: {passage}"
    a = enc_default(["alpha beta"], ["gamma delta"])["input_ids"][0].tolist()
    b = enc_doc_first(["alpha beta"], ["gamma delta"])["input_ids"][0].tolist()
    assert a != b and sorted(a) == sorted(b)  # the same tokens, passage first
