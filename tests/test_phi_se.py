"""Standard errors beside φ (issue 14) and the inputs each metric uses (issue 13)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from hedonic_neurons.artifacts import load_phi, save_phi
from hedonic_neurons.config import PhiConfig
from hedonic_neurons.data import load_pairs
from hedonic_neurons.errors import DataError, HedonicNote, PhiError
from hedonic_neurons.models import load_model
from hedonic_neurons.neurons import Moments
from hedonic_neurons.pipeline import Pipeline
from hedonic_neurons.synergy.api import oca, pas
from hedonic_neurons.synergy.collect import CollectSettings, collect, phi_path
from hedonic_neurons.synergy.oca import oca_phi, oca_se, orthogonality
from synergy_helpers import one_thread, save_scaled_tiny, write_pairs
from test_loading import make_adapter

LAYER = 1


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("se")
    base = save_scaled_tiny(root / "base", "llama")
    make_adapter(base, root / "adapter", "llama", layers=(LAYER,))
    return {"base": base, "adapter": root / "adapter", "data": write_pairs(root / "pairs.tsv", rows=11)}


def _nm(tiny):
    return load_model(tiny["base"], adapter=tiny["adapter"], device="cpu")


@pytest.mark.parametrize("statistic", ["corr", "cov"])
def test_oca_se_is_the_sd_over_independent_resamples(statistic):
    """Normal data, one sample per input: the SD of φ over 3,000 independent data sets of N = 60
    against the standard error computed from each data set (mean over the data sets)."""
    rng = np.random.default_rng(0)
    n, big_n, draws = 4, 60, 3000
    corr = np.array([[1, 0.6, 0.0, -0.4], [0.6, 1, 0.3, 0.0], [0.0, 0.3, 1, 0.8], [-0.4, 0.0, 0.8, 1]])
    scale = np.diag([1.0, 2.0, 0.5, 1.5])
    chol = np.linalg.cholesky(scale @ corr @ scale)
    down = torch.as_tensor(rng.normal(size=(6, n)))
    phis, ses = [], []
    for _ in range(draws):
        a = rng.normal(size=(big_n, n)) @ chol.T + 3.0
        m = Moments(n)
        m.update(torch.as_tensor(a))
        phis.append(oca_phi(m, down, statistic=statistic))
        ses.append(oca_se(m, down, big_n, statistic=statistic))
    sd = np.std(phis, axis=0, ddof=1)
    se = np.mean(ses, axis=0)
    off = ~np.eye(n, dtype=bool)
    assert np.all(np.diagonal(se) == 0) and np.array_equal(se, se.T)
    # the Monte Carlo SD itself is uncertain by ~1.3% (3,000 draws); normal theory at N = 60 by a few %
    np.testing.assert_allclose(se[off], sd[off], rtol=0.08)
    orth = orthogonality(down).numpy()
    if statistic == "corr":  # by hand: (1 - |cos|)(1 - rho^2)/sqrt(N - 3) at the estimated rho
        m = Moments(n)
        m.update(torch.as_tensor(rng.normal(size=(big_n, n)) @ chol.T))
        rho = m.corr().numpy()
        want = orth * (1 - rho**2) / np.sqrt(big_n - 3)
        np.testing.assert_allclose(oca_se(m, down, big_n)[off], want[off], rtol=1e-5)
    with pytest.raises(PhiError, match="at least"):
        oca_se(m, down, 3 if statistic == "corr" else 1, statistic=statistic)


def test_collect_writes_se_beside_phi_and_resumes_it(tiny, tmp_path):
    nm = _nm(tiny)
    pairs = load_pairs(tiny["data"])
    for metric in ("oca", "pas"):
        settings = CollectSettings(metric=metric, batch_size=2)
        (whole,) = collect(nm, pairs, [LAYER], settings, tmp_path / f"{metric}-whole", progress=False)
        phi, se = load_phi(whole, with_se=True)
        assert se.shape == phi.shape and se.min() >= 0 and se.max() > 0
        meta = json.loads(whole.with_suffix(".json").read_text())
        assert meta["se"]["N"] == len(pairs) and meta["se"]["estimator"]
        if metric == "oca":  # Fisher's z with N = the number of inputs (not of tokens)
            orth = orthogonality(nm.mlp_weights(LAYER).down).numpy()
            keep = (orth > 0.1) & ~np.eye(len(orth), dtype=bool)
            rho = phi[keep] / orth[keep]
            want = orth[keep] * (1 - rho**2) / np.sqrt(len(pairs) - 3)
            assert meta["n_tokens"] > len(pairs)
            np.testing.assert_allclose(se[keep], want, rtol=1e-4, atol=1e-6)
        out = tmp_path / f"{metric}-killed"
        collect(nm, pairs, [LAYER], settings, out, progress=False, checkpoint_every=2, stop_after=3)
        assert len(list((out / ".partial").iterdir())) == 1
        (resumed,) = collect(nm, pairs, [LAYER], settings, out, progress=False, checkpoint_every=2)
        phi2, se2 = load_phi(resumed, with_se=True)
        np.testing.assert_allclose(phi2, phi, atol=1e-9, rtol=0)
        np.testing.assert_allclose(se2, se, atol=1e-9, rtol=0)
    # a PAS checkpoint written before the squares were kept: the pass starts over, same result
    out = tmp_path / "old-ckpt"
    settings = CollectSettings(metric="pas", batch_size=2)
    collect(nm, pairs, [LAYER], settings, out, progress=False, checkpoint_every=2, stop_after=3)
    (ckpt,) = (out / ".partial").iterdir()
    from safetensors import safe_open

    with safe_open(str(ckpt), framework="numpy") as fh:
        meta = fh.metadata()
        state = {k: fh.get_tensor(k) for k in fh.keys() if k != "sq"}  # noqa: SIM118
    save_file(state, str(ckpt), metadata=meta)
    with pytest.warns(HedonicNote, match="lacks the accumulator 'sq'"):
        (again,) = collect(nm, pairs, [LAYER], settings, out, progress=False, checkpoint_every=2)
    phi3, se3 = load_phi(again, with_se=True)
    want_phi, want_se = load_phi(tmp_path / "pas-whole" / again.name, with_se=True)
    np.testing.assert_allclose(phi3, want_phi, atol=1e-9, rtol=0)
    np.testing.assert_allclose(se3, want_se, atol=1e-9, rtol=0)


@pytest.mark.parametrize(
    ("family", "mode"), [("llama", "taylor"), ("llama", "grad-outer"), ("bert", "exact")]
)
def test_pas_se_from_per_input_values(tiny, tmp_path, family, mode):
    """The per-input values are the φ of each input alone; their sd / √N is the SE (taylor,
    grad-outer, and exact on BERT's tanh-pooler head, zero ablation)."""
    if family == "llama":
        nm, ablation = _nm(tiny), "reference"
    else:
        nm, ablation = load_model(save_scaled_tiny(tmp_path / "bert", "bert"), device="cpu"), "zero"
        from hedonic_neurons.neurons import local_head
        from hedonic_neurons.synergy.heads import NormTanhHead, structured_head

        assert isinstance(structured_head(local_head(nm.model, LAYER), nm.d_model), NormTanhHead)
    rows = [(p.query, p.passage) for p in load_pairs(tiny["data"])][:6]
    phi, se = pas(nm, rows, LAYER, mode=mode, ablation=ablation, batch_size=4, with_se=True)
    each = np.stack([pas(nm, [row], LAYER, mode=mode, ablation=ablation) for row in rows]).astype(np.float64)
    np.testing.assert_allclose(phi, each.mean(0), atol=1e-6, rtol=1e-5)
    want = each.std(0, ddof=1) / np.sqrt(len(rows))
    assert want.max() > 1e-4
    np.testing.assert_allclose(se, want, atol=1e-6, rtol=1e-4)


def test_load_phi_with_se_of_an_old_file_is_a_clear_error(tmp_path):
    phi = np.array([[0, 1, -2], [1, 0, 0.5], [-2, 0.5, 0]], dtype=np.float32)
    old = save_phi(tmp_path / "phi_layer0.safetensors", phi, {"layer": 0})
    np.testing.assert_array_equal(load_phi(old), phi)
    with pytest.raises(DataError, match=r"no standard errors \('phi_se'"):
        load_phi(old, with_se=True)
    se = np.abs(phi) / 10
    new = save_phi(tmp_path / "phi_layer1.safetensors", phi, {"layer": 1}, se=se)
    got_phi, got_se = load_phi(new, with_se=True)
    np.testing.assert_array_equal(got_phi, phi)
    np.testing.assert_allclose(got_se, se)
    assert sorted(load_file(str(new))) == ["phi", "phi_se"]
    bad = tmp_path / "phi_layer2.safetensors"
    save_file({"phi": phi, "phi_se": -se}, str(bad))
    with pytest.raises(PhiError, match="expected standard errors >= 0"):
        load_phi(bad, with_se=True)
    with pytest.raises(PhiError, match="shape"):
        save_phi(tmp_path / "x.safetensors", phi, {}, se=se[:2])


def test_max_inputs_is_the_pas_budget_and_oca_uses_every_input(tiny, tmp_path):
    """The pipeline's phi.max_inputs limits PAS only (issue 13); OCA streams every train pair."""
    nm = _nm(tiny)
    train = load_pairs(tiny["data"])
    assert len(train) == 11
    run = SimpleNamespace(
        cfg=SimpleNamespace(phi=PhiConfig(max_inputs=8, batch_size=4), layers=[LAYER], seed=0),
        nm=nm,
        train=train,
        train_desc="tiny pairs",
        progress=False,
        notes=[],
        phi_dir=lambda metric: tmp_path / metric,
    )
    Pipeline.stage_phi(run)
    seen = {}
    for metric in ("oca", "pas"):
        meta = json.loads(phi_path(tmp_path / metric, LAYER).with_suffix(".json").read_text())
        seen[metric] = (meta["n_inputs"], meta["data"]["pairs"], meta["settings"]["max_inputs"])
    assert seen == {"oca": (11, 11, None), "pas": (8, 8, 8)}
    # and OCA over every input is what oca() gives on all of them
    np.testing.assert_allclose(
        load_phi(phi_path(tmp_path / "oca", LAYER)), oca(nm, train, LAYER, batch_size=4), atol=1e-6, rtol=0
    )
