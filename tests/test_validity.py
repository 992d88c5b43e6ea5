"""The ``phi_validity`` evaluation: φ against the full-model Δ_ij of a sample of neuron pairs.

On a tiny LLaMA with a LoRA adapter: φ from PAS with the full readout is the quantity itself, so
the evaluation must report Spearman and sign agreement of exactly 1; φ from the local readout
agrees less, and the Δ the evaluation measures must equal four separate ablation passes per pair.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from scipy import stats

from hedonic_neurons import plot
from hedonic_neurons.config import EvaluateConfig
from hedonic_neurons.data import load_pairs
from hedonic_neurons.errors import ConfigError, DataError
from hedonic_neurons.evaluate.base import EVALUATIONS, LayerContext
from hedonic_neurons.evaluate.validity import PhiValidity, agreement, in_dtype, sample_pairs
from hedonic_neurons.models import load_model
from hedonic_neurons.neurons import ablation_logits
from hedonic_neurons.synergy.api import pas
from synergy_helpers import one_thread, save_scaled_tiny, write_pairs
from test_loading import make_adapter
from tiny import tiny_model

LAYER, N, K = 1, 12, 20  # 66 neuron pairs, 20 sampled (10 top |φ|, 10 uniform)


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("validity")
    base = save_scaled_tiny(root / "llama", "llama", n=N)
    make_adapter(base, root / "adapter", "llama", layers=(LAYER,))
    nm = load_model(base, adapter=root / "adapter", device="cpu")
    test = load_pairs(write_pairs(root / "pairs.tsv", rows=9))  # 3 queries of 3 pairs
    with one_thread():
        phis = {r: pas(nm, test, LAYER, mode="exact", readout=r, batch_size=4) for r in ("full", "local")}
    return nm, test, phis


def _ctx(nm, test, phi, modes=("reference",), source=""):
    return LayerContext(
        nm=nm, layer=LAYER, task="cqtr", methods=[], seeds=[0], chosen={}, skipped={}, targets={},
        phi=phi, pairs=list(test), y=np.zeros(len(test)), qrels={}, outputs=dict.fromkeys(modes),
        config=None, groups=np.zeros(len(test), dtype=np.int64), n_queries=1,
        sub_groups=np.zeros(0, dtype=np.int64), n_sub_queries=0, bins=(2, 1), phi_source=source,
    )  # fmt: skip


def _split(rows):
    (summary,) = [r for r in rows if r["kind"] == "summary"]
    points = [r for r in rows if r["kind"] == "pair"]
    return summary, points


def _brute_force(nm, test, i, j, mode, model64=None):
    """Δ_ij = f(∅) − f({i}) − f({j}) + f({i, j}) from four separate passes on one batch, averaged;
    on ``model64`` (a float64 copy of the model, with float64 reference weights) if given."""
    batch = nm.encode([p.query for p in test], [p.passage for p in test])
    model, ref = (nm, None) if model64 is None else model64

    def f(s):
        return ablation_logits(model, batch, LAYER, [s], mode=mode, reference=ref, reuse_prefix=False)[0]

    return float((f([]) - f([i]) - f([j]) + f([i, j])).double().mean())


def _float64(nm):
    ref = nm.reference_mlp_weights(LAYER).map(lambda t: t.double())
    return copy.deepcopy(nm.model).double(), ref


def test_full_readout_phi_is_the_full_model_delta(model):
    nm, test, phis = model
    phi = phis["full"]
    assert np.abs(phi).max() > 1e-3  # not a trivially zero φ
    rows = PhiValidity(n_pairs=K, max_inputs=len(test), batch_size=4).evaluate(
        _ctx(nm, test, phi, source="full-readout PAS")
    )
    summary, points = _split(rows)
    assert (summary["pairs"], summary["top_pairs"], summary["inputs"]) == (K, K // 2, len(test))
    # the same order of the pairs exactly (Spearman's arithmetic may round 1 to 1 - 2e-16)
    assert summary["spearman"] == pytest.approx(1.0, abs=1e-12) and summary["sign_agreement"] == 1.0
    assert summary["signed_pairs"] >= K - 2  # nearly every pair has Δ above rounding
    assert summary["pearson"] == pytest.approx(1.0, abs=1e-6)
    assert summary["slope"] == pytest.approx(1.0, abs=1e-4)
    assert summary["intercept"] == pytest.approx(0.0, abs=1e-6)
    delta = np.array([p["delta"] for p in points])
    got_phi = np.array([p["phi"] for p in points])
    np.testing.assert_allclose(delta, got_phi, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(stats.rankdata(delta), stats.rankdata(got_phi))
    np.testing.assert_array_equal(got_phi, [phi[p["i"], p["j"]] for p in points])
    # the top half: the K/2 largest |φ| pairs; the uniform half: other pairs, each once
    ii, jj = np.triu_indices(N, 1)
    largest = {(int(ii[k]), int(jj[k])) for k in np.argsort(-np.abs(phi[ii, jj]), kind="stable")[: K // 2]}
    assert {(p["i"], p["j"]) for p in points if p["sample"] == "top"} == largest
    uniform = [(p["i"], p["j"]) for p in points if p["sample"] == "uniform"]
    assert len(set(uniform)) == K // 2 and not set(uniform) & largest and all(i < j for i, j in uniform)
    (sentence,) = PhiValidity().summary(rows)
    assert sentence.startswith(
        f"Layer {LAYER}: full-readout PAS agrees with the full-model Δ_ij at Spearman 1.00 on {K} neuron pairs"
    )
    assert "signs agree on 100%" in sentence and "(reference ablation, float64)" in sentence


@pytest.mark.parametrize("mode", ["reference", "zero"])
def test_local_readout_agreement_is_measured_against_four_pass_ablation(model, mode):
    nm, test, phis = model
    phi = phis["local"]
    rows = PhiValidity(n_pairs=K, max_inputs=len(test), batch_size=4, seed=3).evaluate(
        _ctx(nm, test, phi, modes=(mode,))
    )
    summary, points = _split(rows)
    assert summary["mode"] == mode
    pairs = [(p["i"], p["j"]) for p in points]
    model64 = _float64(nm)
    want = np.array([_brute_force(nm, test, i, j, mode, model64) for i, j in pairs])
    delta = np.array([p["delta"] for p in points])
    np.testing.assert_allclose(delta, want, atol=1e-12, rtol=0)
    assert nm.dtype == torch.float32  # the model is back in its own precision
    # in float32 (the model's own type) the same Δ to float32 rounding, against float32 passes
    rows32 = PhiValidity(n_pairs=K, max_inputs=len(test), batch_size=4, seed=3, dtype=None).evaluate(
        _ctx(nm, test, phi, modes=(mode,))
    )
    summary32, points32 = _split(rows32)
    assert summary32["dtype"] == "float32" and summary32["rounding_floor"] > 1e6 * summary["rounding_floor"]
    want32 = np.array([_brute_force(nm, test, i, j, mode) for i, j in pairs])
    np.testing.assert_allclose([p["delta"] for p in points32], want32, atol=1e-6, rtol=0)
    np.testing.assert_allclose(want32, want, atol=1e-5, rtol=0)
    local = np.array([phi[i, j] for i, j in pairs], dtype=np.float64)
    rho = stats.spearmanr(want, local).statistic
    assert summary["spearman"] == pytest.approx(rho, abs=1e-12)
    assert summary["spearman"] < 1.0  # the local readout misses the layers above
    signed = np.abs(want) > summary["rounding_floor"]
    assert summary["sign_agreement"] == pytest.approx(
        np.mean(np.sign(local[signed]) == np.sign(want[signed]))
    )
    assert summary["pearson"] == pytest.approx(np.corrcoef(delta, local)[0, 1], abs=1e-12)
    assert summary["slope"] == pytest.approx(np.polyfit(delta, local, 1)[0], rel=1e-9)
    assert summary["pearson"] == pytest.approx(np.corrcoef(want, local)[0, 1], abs=1e-4)


def test_calibration_figure_points_are_the_delta_phi_pairs(model):
    nm, test, phis = model
    rows = PhiValidity(n_pairs=K, max_inputs=len(test)).evaluate(_ctx(nm, test, phis["local"]))
    _, points = _split(rows)
    fig = plot.phi_calibration(rows)
    ax = fig.axes[0]
    (scatter,) = ax.collections
    want = np.array([[p["delta"], p["phi"]] for p in points])
    np.testing.assert_allclose(np.asarray(scatter.get_offsets()), want, rtol=0, atol=0)
    lines = {line.get_label(): line for line in ax.get_lines()}
    identity = lines["identity (φ = Δ)"]
    np.testing.assert_array_equal(identity.get_xdata(), identity.get_ydata())
    (fit,) = [line for label, line in lines.items() if label.startswith("fit")]
    slope, intercept = np.polyfit(want[:, 0], want[:, 1], 1)
    np.testing.assert_allclose(fit.get_ydata(), slope * np.asarray(fit.get_xdata()) + intercept, rtol=1e-9)
    # the same points from two arrays
    arrays = plot.phi_calibration((want[:, 0], want[:, 1]))
    np.testing.assert_allclose(np.asarray(arrays.axes[0].collections[0].get_offsets()), want, rtol=0, atol=0)
    with pytest.raises(DataError, match="two arrays"):
        plot.phi_calibration([1.0, 2.0, 3.0])
    with pytest.raises(DataError, match="equal length"):
        plot.phi_calibration(([1.0, 2.0], [1.0]))


def test_sample_pairs_top_half_then_uniform_rest():
    phi = np.zeros((6, 6))
    for (i, j), v in {(0, 1): 5.0, (2, 4): -4.0, (3, 5): 3.0, (1, 2): 0.5}.items():
        phi[i, j] = phi[j, i] = v
    pairs, top = sample_pairs(phi, 6, seed=1)
    assert top.tolist() == [True] * 3 + [False] * 3
    assert [tuple(p) for p in pairs[:3]] == [(0, 1), (2, 4), (3, 5)]
    rest = {tuple(p) for p in pairs[3:]}
    assert len(rest) == 3 and not rest & {(0, 1), (2, 4), (3, 5)} and all(i < j for i, j in rest)
    again, _ = sample_pairs(phi, 6, seed=1)
    np.testing.assert_array_equal(pairs, again)
    draws = {tuple(map(tuple, sample_pairs(phi, 6, seed=s)[0][3:])) for s in range(10)}
    assert len(draws) > 1  # the uniform half depends on the seed
    every, top_all = sample_pairs(phi, 64, seed=0)  # 15 pairs <= 64: all of them
    assert len(every) == 15 and int(top_all.sum()) == 15 and top_all[0] and top_all[5]
    with pytest.raises(ConfigError, match="n_pairs= must be at least 2"):
        sample_pairs(phi, 1)
    with pytest.raises(ConfigError, match="square"):
        sample_pairs(np.zeros((3, 4)), 4)


def test_agreement_by_hand():
    delta = np.array([1.0, -2.0, 3.0, 1e-12, 4.0])
    phi = np.array([2.0, 1.0, 6.0, -1.0, 8.0])
    got = agreement(delta, phi, floor=1e-9)
    # the pair with |Δ| = 1e-12 is below the floor; of the other four, the second has the wrong sign
    assert got["signed_pairs"] == 4 and got["sign_agreement"] == 0.75
    assert got["spearman"] == pytest.approx(stats.spearmanr(delta, phi).statistic)
    assert got["pearson"] == pytest.approx(np.corrcoef(delta, phi)[0, 1])
    slope, intercept = np.polyfit(delta, phi, 1)
    assert (got["slope"], got["intercept"]) == (pytest.approx(slope), pytest.approx(intercept))
    flat = agreement(np.ones(4), np.arange(4.0))
    assert np.isnan(flat["spearman"]) and np.isnan(flat["slope"])


def test_registered_and_configurable():
    assert EVALUATIONS.get("phi_validity") is PhiValidity
    assert EvaluateConfig(evaluations=["effects", "phi_validity"]).evaluations[-1] == "phi_validity"
    assert PhiValidity().n_pairs == 64 and PhiValidity(n_pairs=8).n_pairs == 8
    with pytest.raises(ConfigError, match="n_pairs= must be at least 2"):
        PhiValidity(n_pairs=1)
    with pytest.raises(ConfigError, match="max_inputs= must be at least 1"):
        PhiValidity(max_inputs=0)
    with pytest.raises(ConfigError, match="dtype= must be one of"):
        PhiValidity(dtype="float16")
    assert PhiValidity().dtype == "float64" and PhiValidity(dtype=None).dtype is None


def test_no_phi_or_no_usable_mode_is_a_note(model):
    nm, test, phis = model
    ctx = _ctx(nm, test, None)
    assert PhiValidity().evaluate(ctx) == [] and "has no φ" in ctx.notes[0]
    ctx = _ctx(nm, test, phis["local"], modes=("mean",))
    assert PhiValidity().evaluate(ctx) == [] and "mean needs the neurons' means" in ctx.notes[0]
    means = torch.zeros(N)
    ctx = _ctx(nm, test, phis["local"], modes=("mean",))
    ctx.means = means  # mean ablation at zero means is zero ablation
    got, _ = _split(PhiValidity(n_pairs=K, max_inputs=len(test)).evaluate(ctx))
    zero, _ = _split(
        PhiValidity(n_pairs=K, max_inputs=len(test)).evaluate(_ctx(nm, test, phis["local"], ("zero",)))
    )
    assert got["mode"] == "mean" and got["spearman"] == pytest.approx(zero["spearman"], abs=1e-9)


def test_in_dtype_casts_and_restores_every_tensor_exactly():
    model = tiny_model("llama", n=N).to(torch.bfloat16)
    model.model.norm.weight.data = model.model.norm.weight.data.float()  # a mixed-precision model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    assert any(b.is_floating_point() for b in buffers.values())  # rotary inv_freq
    with in_dtype(model, torch.float64):
        assert all(p.dtype == torch.float64 for p in model.parameters())
        assert all(b.dtype == torch.float64 for b in model.buffers() if b.is_floating_point())
    after = model.state_dict()
    for k, v in before.items():
        assert after[k].dtype == v.dtype and torch.equal(after[k], v), k
    for k, v in model.named_buffers():
        assert v.dtype == buffers[k].dtype and torch.equal(v, buffers[k]), k
    with pytest.raises(RuntimeError, match="inside"), in_dtype(model, torch.float64):
        raise RuntimeError("inside")
    assert model.model.norm.weight.dtype == torch.float32
    assert model.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16


def test_runs_inside_evaluate_layer(model):
    from hedonic_neurons.evaluate.layer import evaluate_layer

    nm, test, phis = model
    blocks = [list(range(s, s + 4)) for s in range(0, N, 4)]
    partitions = {seed: {"a": blocks, "b": [b[::-1] for b in blocks[::-1]]} for seed in (0, 1, 2)}
    cfg = EvaluateConfig(
        evaluations=["phi_validity"], attribution=False, size_band=(2, 12), top_k=1, null_pairs=8,
        synergy_pairs=4, bootstrap=100,
    )  # fmt: skip
    results, _ = evaluate_layer(
        nm, LAYER, partitions, reference_method="a", config=cfg, task="cqtr", test=test,
        y_test=np.zeros(len(test)), phi=phis["full"], reference=nm.reference_mlp_weights(LAYER),
    )  # fmt: skip
    summary, points = _split(results["phi_validity"])
    assert (summary["pairs"], summary["inputs"], summary["mode"]) == (64, len(test), "reference")
    assert summary["spearman"] == pytest.approx(1.0, abs=1e-12) and len(points) == 64
    ranks = [stats.rankdata([p[k] for p in points]) for k in ("delta", "phi")]
    np.testing.assert_array_equal(*ranks)  # the same order exactly
    (table,) = PhiValidity().tables(results["phi_validity"]).values()
    assert len(table) == 1 and table[0]["spearman"] == summary["spearman"] and "kind" not in table[0]
