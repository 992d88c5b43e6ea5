"""Resample ablation: each input's ablated neurons take the token-mean activations of a donor input.

Checked against a hand-written forward (a hook that overwrites the neurons' down-projection inputs
with the donor's token-mean at every position, one input at a time), against mean ablation (a pool
of one donor equal to the means), batched against one set at a time, through the ``ablate``
context, through one layer's evaluation (the fills go with their pairs across batches), for the
donor draw's seeding, and for the errors bad fills raise.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn

from hedonic_neurons.config import EvaluateConfig
from hedonic_neurons.errors import ConfigError, HedonicError, ModelError
from hedonic_neurons.evaluate.layer import donor_fills
from hedonic_neurons.neurons import ablate, ablation_logits, full_logits, record
from hedonic_neurons.neurons.ablation import draw_donors
from synergy_helpers import one_thread
from test_recording import hook_count, lively_model, pad_batch, sequences

FAMILIES = ["llama", "bert", "gpt2"]
LAYER, N = 1, 24
SETS = [[], [3], [5, 17], [0, 23], [2, 7, 11, 19], list(range(0, N, 2))]
DONORS = (5, 9, 4, 7)  # lengths of the donor inputs


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


def down_of(model: nn.Module, layer: int) -> nn.Module:
    """The down projection of ``layer``, found by each family's own attribute names."""
    if hasattr(model, "bert"):
        return model.bert.encoder.layer[layer].output.dense
    if hasattr(model, "transformer"):
        return model.transformer.h[layer].mlp.c_proj
    return model.model.layers[layer].mlp.down_proj


def token_means(model: nn.Module, seqs: list[torch.Tensor], layer: int) -> torch.Tensor:
    """(len(seqs), n): each input's down-projection input averaged over its tokens (run alone)."""
    got: list[torch.Tensor] = []
    handle = down_of(model, layer).register_forward_pre_hook(lambda m, args: got.append(args[0][0].mean(0)))
    try:
        with torch.no_grad():
            for seq in seqs:
                model(input_ids=seq[None])
    finally:
        handle.remove()
    return torch.stack(got)


def brute_force(
    model: nn.Module, seq: torch.Tensor, layer: int, members: list[int], fill: torch.Tensor
) -> float:
    """The model's logit on ``seq`` alone with ``members``' down-projection inputs set to ``fill``."""

    def overwrite(module: nn.Module, args: tuple) -> tuple:
        a = args[0].clone()
        a[..., members] = fill[members].to(a.dtype)
        return (a, *args[1:])

    handle = down_of(model, layer).register_forward_pre_hook(overwrite)
    try:
        with torch.no_grad():
            return float(model(input_ids=seq[None]).logits[0, 0])
    finally:
        handle.remove()


@pytest.mark.parametrize("family", FAMILIES)
def test_resample_equals_brute_force_forward(family):
    """Resample ablation of each set on each input = the hand-written forward with the donor's
    token-means in place, with and without the replayed prefix; the donors' token-means are what
    ``record(pooling="mean")`` (the run's donor pool) gives; resample differs from mean ablation."""
    model = lively_model(family)
    donors = sequences(seed=21, lengths=DONORS)
    pool = token_means(model, donors, LAYER)
    side = "right" if family == "bert" else "left"
    with record(model, LAYER, pooling="mean", moments=False, keep=True) as rec:
        rec(pad_batch(donors, side))
    torch.testing.assert_close(rec.kept[LAYER][0].float(), pool, atol=1e-5, rtol=1e-5)
    seqs = sequences(seed=22)
    donor_of = [2, 0, 3]  # a different donor per input
    fills = pool[donor_of]
    batch = pad_batch(seqs, side)
    expected = torch.tensor(
        [[brute_force(model, seq, LAYER, s, fills[b]) for b, seq in enumerate(seqs)] for s in SETS]
    )
    for reuse in (True, False):
        got = ablation_logits(model, batch, LAYER, SETS, mode="resample", fills=fills, reuse_prefix=reuse)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert (got[1:] - got[0]).abs().max() > 1e-3  # the sets matter
    mean = ablation_logits(model, batch, LAYER, SETS, mode="mean", means=pool.mean(0))
    assert (got[1:] - mean[1:]).abs().max() > 1e-4  # the per-input donors matter
    torch.testing.assert_close(got[0], full_logits(model, batch), atol=1e-5, rtol=1e-5)
    assert hook_count(model) == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_one_donor_equal_to_the_means_is_mean_ablation(family):
    """A pool of one donor whose token-means are ``means``: every input draws it, and resample
    ablation gives mean ablation's logits (full and local readout)."""
    model = lively_model(family)
    means = torch.randn(N, generator=torch.Generator().manual_seed(3))
    batch = pad_batch(sequences(seed=23), "right" if family == "bert" else "left")
    index, fills = donor_fills(means[None], 3, seed=5, layer=LAYER)
    assert index.tolist() == [0, 0, 0]
    for readout in ("full", "local"):
        got = ablation_logits(model, batch, LAYER, SETS, mode="resample", fills=fills, readout=readout)
        want = ablation_logits(model, batch, LAYER, SETS, mode="mean", means=means, readout=readout)
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
        assert (want[1:] - want[0]).abs().max() > 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_sets_equal_one_set_at_a_time(family):
    """All sets in one pass = chunks of two sets (max_batch) = one set per call; each input alone
    with its own fill row gives its column; ``ablate`` with the same fills gives the same logits."""
    model = lively_model(family)
    seqs = sequences(seed=24)
    fills = torch.randn(len(seqs), N, generator=torch.Generator().manual_seed(4))
    batch = pad_batch(seqs, "right" if family == "bert" else "left")
    together = ablation_logits(model, batch, LAYER, SETS, mode="resample", fills=fills)
    chunked = ablation_logits(
        model, batch, LAYER, SETS, mode="resample", fills=fills, max_batch=2 * len(seqs)
    )
    torch.testing.assert_close(chunked, together, atol=1e-6, rtol=1e-6)
    for row, members in enumerate(SETS):
        alone = ablation_logits(model, batch, LAYER, [members], mode="resample", fills=fills)
        torch.testing.assert_close(alone[0], together[row], atol=1e-6, rtol=1e-6)
        if members:
            with ablate(model, LAYER, [members], mode="resample", fills=fills):
                inside = full_logits(model, batch)
            torch.testing.assert_close(inside, together[row], atol=1e-5, rtol=1e-5)
    for b, seq in enumerate(seqs):
        one = ablation_logits(model, pad_batch([seq]), LAYER, SETS, mode="resample", fills=fills[b : b + 1])
        torch.testing.assert_close(one[:, 0], together[:, b], atol=1e-5, rtol=1e-5)
    assert hook_count(model) == 0


def test_donor_draw_is_seeded():
    """Same seed and layer, same donors; another seed or layer, other donors; uniform over the
    pool (every donor used), and the fills are the drawn donors' rows."""
    pool = torch.randn(5, N, generator=torch.Generator().manual_seed(6))
    index, fills = donor_fills(pool, 60, seed=0, layer=LAYER)
    again, fills_again = donor_fills(pool.numpy(), 60, seed=0, layer=LAYER)
    np.testing.assert_array_equal(index, again)
    torch.testing.assert_close(fills, pool[index], atol=0, rtol=0)
    torch.testing.assert_close(fills_again, fills, atol=0, rtol=0)
    assert index.shape == (60,) and set(index.tolist()) == set(range(5))
    assert not np.array_equal(donor_fills(pool, 60, seed=1, layer=LAYER)[0], index)
    assert not np.array_equal(donor_fills(pool, 60, seed=0, layer=LAYER + 1)[0], index)
    np.testing.assert_array_equal(draw_donors(5, 60, 7), draw_donors(5, 60, np.random.default_rng(7)))
    assert not np.array_equal(draw_donors(5, 60, 7), draw_donors(5, 60, 8))


def test_bad_fills_raise_one_clear_error():
    """Fills of the wrong shape, missing, non-finite, given to another mode, or a batch of another
    size inside ``ablate``: one ModelError naming fills and the expected shape; no hook left."""
    model = lively_model("llama")
    batch = pad_batch(sequences(seed=25), "left")  # 3 inputs
    good = torch.zeros(3, N)
    bad = {
        "(4, 24)": torch.zeros(4, N),
        "(3, 23)": torch.zeros(3, N - 1),
        "(24,)": torch.zeros(N),
        "None": None,
    }
    for shape, fills in bad.items():
        with pytest.raises(ModelError, match=r"fills of shape \(3, 24\), got " + re.escape(shape)):
            ablation_logits(model, batch, LAYER, SETS, mode="resample", fills=fills)
    with pytest.raises(ModelError, match="NaN"):
        ablation_logits(model, batch, LAYER, SETS, mode="resample", fills=torch.full((3, N), float("nan")))
    with pytest.raises(ModelError, match="only used by mode='resample'"):
        ablation_logits(model, batch, LAYER, SETS, mode="zero", fills=good)
    narrow = ablate(model, LAYER, [[1, 2]], mode="resample", fills=torch.zeros(3, 5))
    with pytest.raises(ModelError, match=r"fills of shape \(rows, 24\)"), narrow:
        pass
    short = ablate(model, LAYER, [[1, 2]], mode="resample", fills=torch.zeros(2, N))
    with pytest.raises(ModelError, match="fills for 2 rows but layer input has a batch of 3 rows"), short:
        full_logits(model, batch)
    assert hook_count(model) == 0
    with pytest.raises(ConfigError, match="donor pool"):
        donor_fills(torch.zeros(0, N), 3, seed=0, layer=LAYER)
    with pytest.raises(ConfigError, match=r"\(D >= 1, 24\), got \(2, 5\)"):
        donor_fills(torch.zeros(2, 5), 3, seed=0, layer=LAYER, n_neurons=N)
    assert issubclass(ModelError, HedonicError) and issubclass(ConfigError, HedonicError)


@pytest.fixture(scope="module")
def neuron_model(tmp_path_factory):
    from synergy_helpers import tiny_neuron_model

    return tiny_neuron_model(tmp_path_factory.mktemp("resample"), N, rows=15, n_test=9)  # 5 queries of 3 pairs


def test_evaluate_layer_runs_resample_with_seeded_donors(neuron_model):
    """One layer's evaluation under "resample": every pass uses each test pair's own donor (the
    outputs equal one ablation call on all pairs with the fills ``donor_fills`` draws for that
    seed and layer, though the passes run in batches of 2); the attribution baseline runs; a pool
    of one donor equal to the means gives the "mean" outputs; no pool is a ConfigError."""
    from hedonic_neurons.evaluate.layer import evaluate_layer
    from hedonic_neurons.models.neuron_model import encode_pairs

    nm, test, train = neuron_model
    with record(nm.model, LAYER, pooling="mean", moments=False, keep=True) as rec:
        rec(encode_pairs(nm, train))
    pool = rec.kept[LAYER][0].float()
    blocks = [list(range(s, s + 6)) for s in range(0, N, 6)]
    partitions = {seed: {"a": blocks, "b": [b[::-1] for b in blocks[::-1]]} for seed in (0, 1, 2)}
    cfg = EvaluateConfig(
        evaluations=["effects"], ablation_modes=["resample"], selection="largest", size_band=(2, 12), top_k=2, null_pairs=8,
        synergy_pairs=4, bootstrap=100, attribution_pairs=6,
    )  # fmt: skip
    common = dict(reference_method="a", task="cqtr", test=test, y_test=np.zeros(len(test)), batch_size=2)
    _, ctx = evaluate_layer(nm, LAYER, partitions, config=cfg, train=train, donors=pool, seed=3, **common)
    out = ctx.outputs["resample"]
    assert "attribution" in ctx.methods
    _, fills = donor_fills(pool, len(test), seed=3, layer=LAYER)
    sets = [[], *[list(c) for c in out.coalitions], list(range(N))]
    want = ablation_logits(nm, encode_pairs(nm, test), LAYER, sets, mode="resample", fills=fills).double()
    got = np.vstack([out.base, out.ablated, out.ceiling])
    np.testing.assert_allclose(got, want.numpy(), atol=1e-5, rtol=1e-5)
    _, other = donor_fills(pool, len(test), seed=4, layer=LAYER)
    shifted = ablation_logits(nm, encode_pairs(nm, test), LAYER, sets, mode="resample", fills=other).double()
    assert np.abs(got - shifted.numpy()).max() > 1e-4  # the seed picks the donors
    both = cfg.model_copy(update={"ablation_modes": ["mean", "resample"], "attribution": False})
    means = pool.mean(0)
    _, ctx2 = evaluate_layer(nm, LAYER, partitions, config=both, means=means, donors=means[None], **common)
    for name in ("base", "ablated", "ceiling", "null"):
        np.testing.assert_allclose(
            getattr(ctx2.outputs["resample"], name), getattr(ctx2.outputs["mean"], name), atol=1e-6, rtol=1e-6
        )
    with pytest.raises(ConfigError, match="needs a donor pool"):
        evaluate_layer(nm, LAYER, partitions, config=cfg, **common)
    from hedonic_neurons.evaluate.passes import layer_outputs

    passes = dict(sub=np.arange(4), null_sets=[], null_bins=np.zeros(0), mode="resample")
    with pytest.raises(ModelError, match=rf"fills of shape \({len(test)}, {N}\), got \(3, {N}\)"):
        layer_outputs(nm, test, LAYER, blocks, fills=fills[:3], **passes)
    with pytest.raises(ModelError, match="only used by mode='resample'"):
        layer_outputs(nm, test, LAYER, blocks, fills=fills, **{**passes, "mode": "zero"})


def test_null_pairs_per_query_spreads_the_nulls_subsample_over_more_queries(neuron_model):
    """``null_pairs_per_query``: the null's subsample (shared by the coalitions and the random
    sets) takes at most that many pairs of each test query, so the same budget spans more queries;
    the default keeps whole queries. The design sentence says which."""
    from hedonic_neurons.evaluate.layer import design_sentences, evaluate_layer

    nm, test, _ = neuron_model  # 3 test queries of 3 pairs
    blocks = [list(range(s, s + 6)) for s in range(0, N, 6)]
    partitions = {seed: {"a": blocks} for seed in (0, 1, 2)}
    common = dict(reference_method="a", task="cqtr", test=test, y_test=np.zeros(len(test)), batch_size=4)
    cfg = EvaluateConfig(
        evaluations=["null"], ablation_modes=["zero"], selection="largest", size_band=(2, 12), top_k=1, null_pairs=8,
        synergy_pairs=4, bootstrap=100, attribution=False,
    )  # fmt: skip
    qids = np.array([p.qid for p in test])
    _, whole = evaluate_layer(nm, LAYER, partitions, config=cfg, **common)
    sub = whole.outputs["zero"].sub
    assert len(sub) == 6 and len(set(qids[sub])) == 2  # two whole queries: a third would overflow 8
    spread_cfg = cfg.model_copy(update={"null_pairs_per_query": 2})
    rows, spread = evaluate_layer(nm, LAYER, partitions, config=spread_cfg, **common)
    sub2 = spread.outputs["zero"].sub
    assert len(sub2) == 6 and len(set(qids[sub2])) == 3 and spread.n_sub_queries == 3
    assert rows["null"][0]["null_queries"] == 3
    design = [{"layer": LAYER, "null_bins": [0], "null_pairs": 6, "null_queries": 3, "null_rows": 1, "rest_rows": 1}]
    assert "from 3 queries (at most 2 pairs of each, a seeded draw)" in design_sentences(design, spread_cfg, "a")[1]
    assert "from 3 whole queries" in design_sentences(design, cfg, "a")[1]


def test_layer_outputs_shows_progress_within_a_batch(neuron_model):
    """The progress bar (counted in pairs) moves while one batch runs its many ablation sets (the
    single neurons, the null), and adds up to the number of pairs exactly."""
    from hedonic_neurons.evaluate.passes import layer_outputs

    nm, test, _ = neuron_model

    class Counter:
        def __init__(self):
            self.steps = []

        def update(self, n):
            self.steps.append(n)

    bar = Counter()
    null_sets = [[i, (i + 5) % N] for i in range(N)]
    layer_outputs(
        nm, test, LAYER, [[0, 1, 2], [3, 4]], sub=np.arange(6), syn=np.arange(3), null_sets=null_sets,
        null_bins=np.zeros(N, dtype=np.int64), singles=list(range(N)), mode="zero", batch_size=3, max_rows=12,
        progress=bar,
    )  # fmt: skip
    assert sum(bar.steps) == len(test) and all(isinstance(s, int) and s > 0 for s in bar.steps)
    assert len(bar.steps) > 3  # 3 batches (syn, sub, rest), each of 3 pairs, show more than one step each
