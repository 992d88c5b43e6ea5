"""Mixed-precision OCA accumulation: float32 per-batch products added into float64 sums.

``accumulate="mixed"`` must agree with ``"fp64"`` to 1e-5 (relative to max|φ|), also when the
activations have a mean offset far larger than their spread (where a naive float32 E[aaᵀ] − μμᵀ
loses everything); ``"fp64"`` must reproduce the original float64 update bit for bit; resuming
from a checkpoint must be bitwise identical to an uninterrupted run.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hedonic_neurons.artifacts import load_phi
from hedonic_neurons.data import load_pairs
from hedonic_neurons.errors import ConfigError, DataError
from hedonic_neurons.models import load_model
from hedonic_neurons.models.adapters import mlp_modules
from hedonic_neurons.neurons import Moments, model_inputs
from hedonic_neurons.neurons import stats as stats_module
from hedonic_neurons.synergy.collect import CollectSettings, OCACollector, collect, phi_path
from hedonic_neurons.synergy.oca import oca_phi
from synergy_helpers import TinyNM, one_thread, save_scaled_tiny, scaled_tiny, write_pairs
from test_loading import make_adapter


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


def _rel(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def _old_update(state: dict[str, torch.Tensor], a: torch.Tensor) -> None:
    """The original Moments.update (before ``accumulate``), as the reference for ``"fp64"``."""
    a = a.detach().to(dtype=torch.float64)
    state["count"] += a.shape[0]
    state["sum"] += a.sum(0)
    state["outer"].addmm_(a.T, a)


def _old_state(n: int) -> dict[str, torch.Tensor]:
    return {
        "count": torch.zeros((), dtype=torch.int64),
        "sum": torch.zeros(n, dtype=torch.float64),
        "outer": torch.zeros(n, n, dtype=torch.float64),
    }


def _offset_batches(n: int = 40, seed: int = 0) -> list[torch.Tensor]:
    """float32 activations with correlated unit-scale spread on top of means of ±1e3..1e4."""
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(n, n, generator=gen, dtype=torch.float64) / n**0.5
    offset = (1e3 + 9e3 * torch.rand(n, generator=gen, dtype=torch.float64)) * torch.where(
        torch.rand(n, generator=gen) < 0.5, -1.0, 1.0
    )
    batches = []
    for rows in (700, 1, 333, 1000, 64):
        x = torch.randn(rows, n, generator=gen, dtype=torch.float64) @ mix + offset
        x[:, 3] = 5e3  # dead (constant) neuron far from zero
        x[:, 5] = 0.0  # silent neuron
        x[:, 9] = -2 * x[:, 1] + 1e4  # exactly anti-correlated with neuron 1 (up to rounding)
        batches.append(x.to(torch.float32))
    return batches


def _orthogonal_down(n: int, d: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randn(d, n, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------- Moments


def test_fp64_mode_is_the_original_update():
    batches = [b - b.mean(0) * 0.9 for b in _offset_batches()]
    moments, old = Moments(40, accumulate="fp64"), _old_state(40)
    for b in batches:
        moments.update(b)
        _old_update(old, b)
    state = moments.state_dict()
    for key in ("count", "sum", "outer"):
        assert torch.equal(state[key], old[key]), key
    assert Moments(40).accumulate == "fp64"  # the class default is unchanged


@pytest.mark.parametrize("strip", [None, 7])
def test_mixed_with_a_large_mean_offset(monkeypatch, strip):
    """Means of 1e3..1e4 and unit spread: a naive float32 product loses the covariance (checked
    below, so this data does break an uncentred implementation); mixed matches float64 to 1e-5."""
    if strip is not None:
        monkeypatch.setattr(stats_module, "STRIP", strip)  # 6 strips: the mirroring is exercised
    batches = _offset_batches()
    fp64, mixed, fp32 = Moments(40), Moments(40, accumulate="mixed"), Moments(40, dtype=torch.float32)
    naive = _old_state(40)  # float32 products of the raw activations, added into float64
    for b in batches:
        fp64.update(b)
        mixed.update(b)
        fp32.update(b)
        naive["count"] += b.shape[0]
        naive["sum"] += b.sum(0, dtype=torch.float64)
        naive["outer"] += (b.T @ b).double()
    want_cov, want_corr = fp64.cov(), fp64.corr()
    assert _rel(mixed.mean(), fp64.mean()) < 1e-10
    assert _rel(mixed.cov(), want_cov) < 1e-5
    assert _rel(mixed.corr(), want_corr) < 1e-5
    down = _orthogonal_down(40)
    phi = oca_phi(fp64, down)
    assert _rel(oca_phi(mixed, down), phi) < 1e-5
    # the dead and the silent neuron have rho = 0 with everyone in both modes; 1 and 9 anti-correlate
    got = mixed.corr()
    assert got[3].abs().max() == 0 and got[5].abs().max() == 0
    assert got[1, 9] == pytest.approx(-1.0, abs=1e-6)
    # the same data breaks the naive float32 alternatives by orders of magnitude
    assert _rel(Moments.from_state_dict(naive).cov(), want_cov) > 1e-2
    assert _rel(fp32.cov(), want_cov) > 1e-2


def test_mixed_half_precision_input_is_multiplied_in_fp32():
    """bfloat16 batches: products in float32 (in bfloat16 they would be off by ~1e-2)."""
    gen = torch.Generator().manual_seed(3)
    batches = [(torch.randn(500, 24, generator=gen) + 2.0).to(torch.bfloat16) for _ in range(3)]
    fp64, mixed = Moments(24), Moments(24, accumulate="mixed")
    for b in batches:
        fp64.update(b)
        mixed.update(b)
    assert _rel(mixed.corr(), fp64.corr()) < 1e-5
    assert _rel(mixed.cov(), fp64.cov()) < 1e-5


@pytest.mark.parametrize("strip", [None, 7])
def test_mixed_resume_and_merge(monkeypatch, strip):
    """A state_dict round trip midway gives bitwise the same sums as an uninterrupted run; a
    merged pair of halves agrees with the whole."""
    if strip is not None:
        monkeypatch.setattr(stats_module, "STRIP", strip)
    batches = _offset_batches(seed=4)
    whole = Moments(40, accumulate="mixed")
    for b in batches:
        whole.update(b)
    first = Moments(40, accumulate="mixed")
    for b in batches[:3]:
        first.update(b)
    resumed = Moments.from_state_dict(first.state_dict(), accumulate="mixed")
    for b in batches[3:]:
        resumed.update(b)
    for key, value in whole.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key
    second = Moments(40, accumulate="mixed")
    for b in batches[3:]:
        second.update(b)
    merged = Moments.from_state_dict(first.state_dict(), accumulate="mixed").merge(second)
    assert int(merged.count) == int(whole.count)
    assert _rel(merged.corr(), whole.corr()) < 1e-6


def test_accumulate_errors():
    with pytest.raises(DataError, match="unknown accumulate 'fp16'"):
        Moments(3, accumulate="fp16")
    with pytest.raises(ConfigError, match="unknown accumulate 'fast'"):
        CollectSettings(accumulate="fast").check()
    assert "accumulate" not in CollectSettings().to_dict()  # not part of the key (see docstring)


# ------------------------------------------------------------------------------- tiny model


def _tiny_batches(nm: TinyNM, rows: int = 13, size: int = 4) -> list[dict[str, torch.Tensor]]:
    import random

    rng = random.Random(0)
    words = [f"w{k}" for k in range(40)]
    texts = [" ".join(rng.choices(words, k=rng.randint(3, 12))) for _ in range(rows)]
    return [nm.encode(texts[k : k + size], texts[k : k + size][::-1]) for k in range(0, rows, size)]


def _collect_oca(nm: TinyNM, batches, layers, accumulate: str) -> OCACollector:
    collector = OCACollector(nm, layers, CollectSettings(metric="oca", accumulate=accumulate))
    with collector:
        for k, b in enumerate(batches):
            collector.update(b, k)
    return collector


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_collector_fp64_reproduces_the_original_result(family):
    """``accumulate="fp64"``: φ is bitwise the one of the original code path (activations cast
    to float64 at the hook, the original update, the same φ formula)."""
    nm = TinyNM(scaled_tiny(family))
    batches = _tiny_batches(nm)
    old = _old_state(nm.n_neurons)
    mask_now: dict[str, torch.Tensor] = {}

    def hook(module, args):
        a = args[0].detach().to(torch.float64)
        _old_update(old, a[mask_now["m"].bool()])

    handle = mlp_modules(nm.model, 1).down.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            for b in batches:
                inputs = model_inputs(b)
                mask_now["m"] = inputs["attention_mask"]
                nm.model(**inputs)
    finally:
        handle.remove()
    want = oca_phi(Moments.from_state_dict(old), nm.mlp_weights(1).down)
    collector = _collect_oca(nm, batches, [1, 2], "fp64")
    phi, meta = collector.result(1)
    assert np.array_equal(phi, want)
    assert meta["accumulate"] == "fp64"


@pytest.mark.parametrize(("family", "strip"), [("llama", None), ("bert", 5)])
def test_collector_mixed_matches_fp64(monkeypatch, family, strip):
    if strip is not None:
        monkeypatch.setattr(stats_module, "STRIP", strip)
    nm = TinyNM(scaled_tiny(family))
    batches = _tiny_batches(nm)
    fp64 = _collect_oca(nm, batches, [0, 1, 2], "fp64")
    mixed = _collect_oca(nm, batches, [0, 1, 2], "mixed")
    for layer in (0, 1, 2):
        want, _ = fp64.result(layer)
        got, meta = mixed.result(layer)
        assert np.abs(want).max() > 1e-2
        assert _rel(got, want) < 1e-5
        assert meta["accumulate"] == "mixed"
        assert mixed.moments[layer].sum.dtype == torch.float64


def test_collect_resume_is_bitwise_in_mixed_mode(tmp_path):
    """``collect`` killed after 3 batches and resumed gives bitwise the φ of an uninterrupted run."""
    base = save_scaled_tiny(tmp_path / "base", "llama")
    make_adapter(base, tmp_path / "adapter", "llama", layers=(1, 2))
    nm = load_model(base, adapter=tmp_path / "adapter", device="cpu")
    pairs = load_pairs(write_pairs(tmp_path / "pairs.tsv", rows=13))
    settings = CollectSettings(metric="oca", batch_size=2)
    assert settings.accumulate == "mixed"
    whole = collect(nm, pairs, [0, 1, 2], settings, tmp_path / "whole", progress=False, checkpoint_every=2)
    out = tmp_path / "killed"
    collect(nm, pairs, [0, 1, 2], settings, out, progress=False, checkpoint_every=2, stop_after=3)
    assert not phi_path(out, 1).exists()
    resumed = collect(nm, pairs, [0, 1, 2], settings, out, progress=False, checkpoint_every=2)
    for a, b in zip(whole, resumed):
        assert np.array_equal(load_phi(a), load_phi(b))
        assert json.loads(b.with_suffix(".json").read_text())["accumulate"] == "mixed"
    fp64 = collect(
        nm, pairs, [1], CollectSettings(metric="oca", batch_size=2, accumulate="fp64"), tmp_path / "f"
    )
    assert _rel(load_phi(whole[1]), load_phi(fp64[0])) < 1e-5


def test_the_sync_free_reference_is_the_same_choice():
    """The accelerator path picks the shift without a device-to-host sync: the same values."""
    batches = _offset_batches(seed=5)
    moments = Moments(40, accumulate="mixed")
    for b in batches[:3]:
        host, device = moments._reference(b, host=True), moments._reference(b, host=False)
        assert torch.equal(host, device)
        moments.update(b)
    assert torch.equal(moments._reference(batches[3], host=False), moments.sum / int(moments.count))
