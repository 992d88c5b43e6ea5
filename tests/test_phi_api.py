"""One call each: ``oca(model, data, layer)`` and ``pas(model, data, layer, ...)`` (issue 16),
against what ``hedonic collect`` writes and against explicit four-pass ablation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hedonic_neurons.artifacts import load_phi
from hedonic_neurons.cli import main
from hedonic_neurons.data import load_pairs
from hedonic_neurons.errors import ConfigError, DataError, ModelError
from hedonic_neurons.models import load_model
from hedonic_neurons.neurons import ablation_logits
from hedonic_neurons.synergy.api import oca, pas
from hedonic_neurons.synergy.collect import phi_path
from hedonic_neurons.synergy.pas import PAS_SIGN
from synergy_helpers import one_thread, save_scaled_tiny, write_pairs
from test_loading import make_adapter

LAYER = 1


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    out = {"data": write_pairs(root / "pairs.tsv", rows=7)}
    for family in ("gpt2", "qwen2"):
        base = save_scaled_tiny(root / family, family)
        make_adapter(base, root / f"{family}-adapter", family, layers=(LAYER,))
        out[family] = (base, root / f"{family}-adapter")
    return out


def _nm(models, family):
    base, adapter = models[family]
    return load_model(base, adapter=adapter, device="cpu")


def test_oca_equals_what_hedonic_collect_writes(models, tmp_path):
    base, adapter = models["qwen2"]
    try:
        main(
            [
                "collect",
                str(base),
                "--adapter",
                str(adapter),
                "--data",
                str(models["data"]),
                "--layers",
                str(LAYER),
                "--batch-size",
                "3",
                "--out",
                str(tmp_path),
                "--no-progress",
                "--device",
                "cpu",
            ]
        )
    except SystemExit as exc:
        assert exc.code in (0, None)
    written, written_se = load_phi(phi_path(tmp_path, LAYER), with_se=True)
    nm = _nm(models, "qwen2")
    rows = load_pairs(models["data"])
    tuples = [(p.query, p.passage) for p in rows]
    phi = oca(nm, tuples, LAYER, batch_size=3)
    assert phi.dtype == np.float32 and phi.shape == (nm.n_neurons, nm.n_neurons)
    assert np.abs(written).max() > 0.05
    np.testing.assert_allclose(phi, written, atol=1e-6, rtol=0)
    # the same from the loader's row objects and from tokenised batches of any size
    np.testing.assert_allclose(oca(nm, rows, LAYER), written, atol=1e-6, rtol=0)
    batches = [
        nm.encode([q for q, _ in tuples[s : s + 2]], [p for _, p in tuples[s : s + 2]]) for s in (0, 2, 4, 6)
    ]
    phi_b, se_b = oca(nm, iter(batches), LAYER, with_se=True)
    np.testing.assert_allclose(phi_b, written, atol=1e-6, rtol=0)
    np.testing.assert_allclose(se_b, written_se, atol=1e-6, rtol=0)


def _four_pass(nm, batch, readout, ablation):
    """φ_PAS written out: Δ_ij = f(S∖{i,j}) − f(S∖{i}) − f(S∖{j}) + f(S), f(S∖A) the logit with
    the neurons of A ablated (method A4's sign), averaged over the inputs; and the per-input Δ."""
    n = nm.n_neurons
    ref = nm.reference_mlp_weights(LAYER) if ablation == "reference" else None
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]

    def f(removed):  # (len(removed), B): one row per ablated set
        return ablation_logits(
            nm.model, batch, LAYER, removed, mode=ablation, reference=ref, readout=readout, max_batch=512
        ).double()

    whole = f([[]])[0]
    singles = f([[i] for i in range(n)])
    both = f([[i, j] for i, j in pairs])
    per_input = torch.zeros(n, n, whole.shape[0], dtype=torch.float64)
    for k, (i, j) in enumerate(pairs):
        delta = both[k] - singles[i] - singles[j] + whole
        per_input[i, j] = per_input[j, i] = PAS_SIGN * delta
    return per_input.mean(-1).numpy(), per_input.numpy()


@pytest.mark.parametrize("family", ["gpt2", "qwen2"])
@pytest.mark.parametrize("readout", ["local", "full"])
def test_pas_exact_equals_explicit_four_pass_ablation(models, family, readout):
    nm = _nm(models, family)
    rows = load_pairs(models["data"])
    batch = nm.encode([p.query for p in rows], [p.passage for p in rows])
    want, per_input = _four_pass(nm, batch, readout, "reference")
    assert np.abs(want).max() > 1e-3  # the tiny model's synergies are not all zero
    phi, se = pas(nm, rows, LAYER, mode="exact", readout=readout, batch_size=3, with_se=True)
    np.testing.assert_allclose(phi, want, atol=1e-5, rtol=0)
    # standard errors: the explicit per-input Δ's sd / √N
    want_se = per_input.std(-1, ddof=1) / np.sqrt(per_input.shape[-1])
    np.testing.assert_allclose(se, want_se, atol=1e-5, rtol=1e-4)
    if readout == "local":  # zero ablation too, and a requested set of pairs
        want0, _ = _four_pass(nm, batch, readout, "zero")
        np.testing.assert_allclose(pas(nm, rows, LAYER, ablation="zero"), want0, atol=1e-5, rtol=0)
        some = [(3, 1), (0, 5), (5, 0)]
        part = pas(nm, rows, LAYER, pairs=some)
        mask = np.zeros_like(part, dtype=bool)
        mask[[1, 3, 0, 5], [3, 1, 5, 0]] = True
        assert np.all(part[~mask] == 0)
        np.testing.assert_allclose(part[mask], want[mask], atol=1e-5, rtol=0)


def test_errors_name_python_arguments(models):
    nm = _nm(models, "gpt2")
    rows = [("a query", "a passage"), ("another", "one more passage")]
    with pytest.raises(ConfigError, match="readout= full supports mode= exact only"):
        pas(nm, rows, LAYER, mode="taylor", readout="full")
    with pytest.raises(ConfigError, match="unknown mode 'fast'"):
        pas(nm, rows, LAYER, mode="fast")
    with pytest.raises(ConfigError, match="batch_size= must be a positive integer"):
        oca(nm, rows, LAYER, batch_size=0)
    with pytest.raises(ConfigError, match=r"pairs=: pair 0 is \(2, 2\)"):
        pas(nm, rows, LAYER, pairs=[(2, 2)])
    with pytest.raises(ConfigError, match="model= must be a NeuronModel"):
        oca(nm.model, rows, LAYER)
    with pytest.raises(DataError, match="data= is empty"):
        oca(nm, [], LAYER)
    with pytest.raises(DataError, match="data= must be a list of"):
        oca(nm, "demo", LAYER)
    with pytest.raises(DataError, match="item 1 is a text but item 0 is a pair"):
        oca(nm, [("q", "p"), "text"], LAYER)
    with pytest.raises(ModelError, match="layer 9"):
        oca(nm, rows, 9)
    with pytest.raises(DataError, match="no standard errors"):
        oca(nm, rows, LAYER, pooling="mean", with_se=True)  # 2 inputs: Fisher's z needs 4
    plain = load_model(models["gpt2"][0], device="cpu")  # no reference weights
    with pytest.raises(ModelError, match="ablation= zero"):
        pas(plain, rows, LAYER)


def test_texts_are_whole_inputs(models):
    nm = _nm(models, "qwen2")
    texts = ["the cat sat on the mat", "a dog ran far", "rain falls on the plain", "so it goes"]
    tok, fmt = nm.tokenizer, nm.input_format
    eos = [tok.eos_token_id] if fmt.append_eos else []
    rows = [
        {"input_ids": ids + eos, "attention_mask": [1] * len(ids + eos)} for ids in tok(texts)["input_ids"]
    ]
    batch = tok.pad(rows, padding=True, padding_side=fmt.padding_side, return_tensors="pt")
    phi = pas(nm, texts, LAYER, mode="taylor", batch_size=2)
    same = pas(nm, [dict(batch)], LAYER, mode="taylor")
    np.testing.assert_allclose(phi, same, atol=1e-6, rtol=0)
    assert np.abs(phi).max() > 1e-4
