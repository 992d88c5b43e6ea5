"""The coalition explorer: inspect_coalition / coalition_summaries against brute-force references."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import transformers as tf
from scipy import stats

from hedonic_neurons.errors import ConfigError, DataError, ModelError
from hedonic_neurons.explore import (
    CoalitionSummary,
    coalition_summaries,
    explorer_section,
    inspect_coalition,
    load_summaries,
    mean_pairwise_phi,
)
from hedonic_neurons.models import adapters, load_model
from hedonic_neurons.neurons import model_inputs
from test_loading import WORDS, make_adapter, save_tiny

FAMILY = "llama"
LAYER = 1
N = 24  # tiny models' neurons per layer


def _pairs(count: int = 9) -> list[tuple[str, str]]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        q = " ".join(rng.choice(WORDS, size=int(rng.integers(2, 4))))
        p = " ".join(rng.choice(WORDS, size=int(rng.integers(4, 9))))
        out.append((q, p))
    return out


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """(NeuronModel with a LoRA adapter on layer 1, the base HF model loaded separately)."""
    tmp = tmp_path_factory.mktemp("explore")
    base = save_tiny(tmp / "base", FAMILY)
    make_adapter(base, tmp / "ad", FAMILY, layers=(LAYER,))
    nm = load_model(base, adapter=tmp / "ad", device="cpu")
    return nm, tf.AutoModelForSequenceClassification.from_pretrained(base).eval()


def _token_acts(nm, batch) -> torch.Tensor:
    """(B, T, n) activations of LAYER by a plain forward with a hook on the MLP's input norm."""
    store = []
    mods = adapters.mlp_modules(nm.model, LAYER)
    handle = mods.mlp_norm.register_forward_hook(lambda m, a, out: store.append(out.detach()))
    try:
        with torch.no_grad():
            nm.model(**model_inputs(batch))
    finally:
        handle.remove()
    return nm.mlp_weights(LAYER).activations(store[0]).detach().double()


def _logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**model_inputs(batch)).logits[:, 0].double()


def test_inspect_coalition_against_brute_force(tuned):
    nm, base = tuned
    pairs = _pairs()
    members = [2, 5, 11, 17]
    partition = [members, [0, 1], [3]]
    rng = np.random.default_rng(1)
    phi = rng.normal(size=(N, N)).astype(np.float32)
    phi = (phi + phi.T) / 2
    np.fill_diagonal(phi, 0)
    s = inspect_coalition(nm, partition, 0, pairs, layer=LAYER, phi=phi, top=4, batch_size=4)
    assert s.index == 0 and s.size == 4 and s.members == members and s.n_texts == 9

    # brute force, one input at a time: per-token coalition activation (mean over members)
    per_input = []
    for q, p in pairs:
        batch = nm.encode([q], [p])
        per_input.append(_token_acts(nm, batch)[0][:, members].mean(1).numpy())
    readout = np.array([a[-1] for a in per_input])  # decoder: the last (non-pad) token
    order = sorted(range(9), key=lambda i: (-readout[i], i))[:4]
    assert [t["input"] for t in s.top] == order
    for t in s.top:
        np.testing.assert_allclose(t["activations"], per_input[t["input"]], atol=1e-5)
        assert t["score"] == pytest.approx(readout[t["input"]], abs=1e-5)
        assert t["readout_position"] == len(per_input[t["input"]]) - 1
        assert len(t["tokens"]) == len(t["token_ids"]) == len(t["activations"])
    by_max = inspect_coalition(nm, partition, members, pairs, layer=LAYER, rank_by="max", top=9)
    assert by_max.index == 0  # a member list found in the partition
    maxima = [a.max() for a in per_input]
    assert [t["input"] for t in by_max.top] == sorted(range(9), key=lambda i: (-maxima[i], i))

    # mean φ over ordered pairs of distinct members
    block = phi[np.ix_(members, members)].astype(np.float64)
    assert s.mean_phi == pytest.approx((block.sum() - np.trace(block)) / 12, rel=1e-6)

    # weight change: members' rows (up, gate) and columns (down) of (tuned - base), squared
    cur, ref = nm.mlp_weights(LAYER), adapters.mlp_weights(base, LAYER)
    per_neuron = np.zeros(N)
    with torch.no_grad():
        for role in ("up", "gate"):
            per_neuron += ((getattr(cur, role) - getattr(ref, role)).double() ** 2).sum(1).numpy()
        per_neuron += ((cur.down - ref.down).double() ** 2).sum(0).numpy()
    assert s.weight_change["share"] == pytest.approx(per_neuron[members].sum() / per_neuron.sum(), rel=1e-5)
    assert s.weight_change["neuron_share"] == pytest.approx(4 / N)

    # ablation: weight surgery (members reverted to the base weights) in a copy of the model
    surgery = copy.deepcopy(nm.model)
    mods, src = adapters.mlp_modules(surgery, LAYER), adapters.mlp_modules(base, LAYER)
    with torch.no_grad():
        for name in ("up", "gate"):
            getattr(mods, name).weight[members] = getattr(src, name).weight[members]
        mods.down.weight[:, members] = src.down.weight[:, members]
    deltas = []
    for q, p in pairs:
        batch = nm.encode([q], [p])
        deltas.append(float(_logits(surgery, batch)[0] - _logits(nm.model, batch)[0]))
    half = stats.t.ppf(0.975, 8) * np.std(deltas, ddof=1) / 3
    ab = s.ablation
    assert ab["mode"] == "reference" and ab["n"] == 9
    assert ab["mean"] == pytest.approx(np.mean(deltas), abs=1e-5)
    assert ab["high"] - ab["mean"] == pytest.approx(half, abs=1e-5)
    assert abs(np.mean(deltas)) > 1e-4  # the check is not vacuous

    # heuristics: correlation of the mean activation over tokens with the features
    from hedonic_neurons.data.heuristics import heuristic_features
    from hedonic_neurons.data.loaders import Pair

    feats = heuristic_features([Pair(q, p, q, p) for q, p in pairs])
    mean_act = np.array([a.mean() for a in per_input])
    for name in ("bm25", "coverage"):
        want = stats.pearsonr(mean_act, feats[name]).statistic
        assert s.heuristics[name]["pearson"] == pytest.approx(want, abs=1e-5)

    # JSON-ready and rendered: one highlighted span per shown token, the readout token outlined
    doc = json.loads(json.dumps(s.to_dict()))
    assert CoalitionSummary.from_dict(doc).members == members and doc["sentence"].startswith("L1 C0")
    page = s._repr_html_()
    assert page.count('class="hn-tok') == sum(len(t["tokens"]) for t in s.top)
    assert page.count("hn-readout") == len(s.top) + 1  # + the CSS rule


def test_coalition_summaries_of_the_top_k_in_one_file(tuned, tmp_path):
    nm, _ = tuned
    pairs = _pairs(5)
    partition = [[0], [1, 2, 3], [4, 5], [6, 7, 8, 9, 10], [11, 12], *([i] for i in range(13, N))]
    got = coalition_summaries(
        nm, partition, [f"{q} {p}" for q, p in pairs], LAYER, top_k=2, top=3, method="toy", out=tmp_path
    )
    assert [s.index for s in got] == [3, 1] and [s.size for s in got] == [5, 3]
    assert all(s.heuristics is None for s in got)  # plain strings: no (query, passage) pairs
    alone = inspect_coalition(nm, partition, 1, [f"{q} {p}" for q, p in pairs], layer=LAYER, top=3)
    assert got[1].ablation["mean"] == pytest.approx(alone.ablation["mean"], abs=1e-6)
    assert [t["input"] for t in got[1].top] == [t["input"] for t in alone.top]
    docs = load_summaries(tmp_path / "explorer" / "toy-L1.json")
    assert [d["members"] for d in docs] == [[6, 7, 8, 9, 10], [1, 2, 3]]
    plain = [f"{q} {p}" for q, p in pairs]
    section = explorer_section(nm, {"toy": partition, "other": [[0, 1], [2]]}, plain, LAYER, 1, top=2)
    assert [d["members"] for d in section["toy"]] == [[6, 7, 8, 9, 10]] and section["other"][0]["index"] == 0
    assert section["toy"][0]["ablation"]["mean"] == pytest.approx(got[0].ablation["mean"], abs=1e-6)
    assert [t["input"] for t in section["toy"][0]["top"]] == [t["input"] for t in got[0].top[:2]]


def test_mean_pairwise_phi_hand_computed():
    phi = np.array([[0, 1, 2], [1, 0, 4], [2, 4, 0]], dtype=np.float64)
    assert mean_pairwise_phi(phi, [0, 1, 2]) == pytest.approx((1 + 2 + 4) * 2 / 6)
    assert mean_pairwise_phi(phi, [1]) is None


def test_explorer_errors(tuned):
    nm, _ = tuned
    pairs = _pairs(3)
    with pytest.raises(ModelError, match="expected a NeuronModel"):
        inspect_coalition(nm.model, [[0, 1]], 0, pairs, layer=LAYER)
    with pytest.raises(DataError, match="coalition 4 is out of range: the partition has 1"):
        inspect_coalition(nm, [[0, 1]], 4, pairs, layer=LAYER)
    with pytest.raises(DataError, match=r"neuron indices in 0\.\.23"):
        inspect_coalition(nm, [[0, 1]], [0, 24], pairs, layer=LAYER)
    with pytest.raises(DataError, match="twice"):
        inspect_coalition(nm, [[0, 1]], [3, 3], pairs, layer=LAYER)
    with pytest.raises(DataError, match="non-empty list of strings"):
        inspect_coalition(nm, [[0, 1]], 0, "one text", layer=LAYER)
    with pytest.raises(ConfigError, match="rank_by= must be one of readout, max"):
        inspect_coalition(nm, [[0, 1]], 0, pairs, layer=LAYER, rank_by="mean")
    with pytest.raises(ModelError, match="layer 7 is out of range"):
        inspect_coalition(nm, [[0, 1]], 0, pairs, layer=7)
    with pytest.raises(DataError, match="phi is 2 x 2; expected 24 x 24"):
        inspect_coalition(nm, [[0, 1]], 0, pairs, layer=LAYER, phi=np.zeros((2, 2)))
