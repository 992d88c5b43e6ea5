"""φ on tiny random models, against brute force: weight surgery, explicit ablation, numpy."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from hedonic_neurons.models.adapters import mlp_modules
from hedonic_neurons.neurons import ablation_logits, local_head, readout_positions
from hedonic_neurons.synergy.collect import CollectSettings, OCACollector, PASCollector
from hedonic_neurons.synergy.heads import NormAffineHead, structured_head
from hedonic_neurons.synergy.oca import orthogonality
from hedonic_neurons.synergy.pas import PAS_SIGN, PairSums, exact_local_sum, residual_shifts
from synergy_helpers import TinyNM, finetuned_copy, one_thread, residual_at, reverted, scaled_tiny

LAYER = 1


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


TEXTS = [
    ("what is the capital of france", "paris is the capital and largest city of france"),
    ("how tall is mount everest", "everest is the highest mountain above sea level"),
    ("python list sort", "the sort method orders a list in place"),
    ("boiling point of water", "water boils at one hundred degrees celsius at sea level pressure"),
]


def _setup(family: str, *, scale: float = 0.5):
    base = scaled_tiny(family)
    tuned = finetuned_copy(base, [LAYER], scale=scale)
    nm = TinyNM(tuned, base)
    batch = nm.encode([q for q, _ in TEXTS], [p for _, p in TEXTS])
    return nm, batch


def _brute_local(nm, batch, zero: bool = False):
    """ℓ_S for ∅, every single and every pair, each by weight surgery and a forward pass."""
    head = local_head(nm.model, LAYER, score_token_id=getattr(nm, "score_token_id", None))
    n = nm.n_neurons
    with torch.no_grad():
        ell = {(): head(residual_at(nm.model, batch, LAYER)).double()}
        for s in itertools.chain(((i,) for i in range(n)), itertools.combinations(range(n), 2)):
            with reverted(nm.model, nm.base, LAYER, s, zero=zero) as model:
                ell[s] = head(residual_at(model, batch, LAYER)).double()
    phi = torch.zeros(n, n, dtype=torch.float64)
    for i, j in itertools.combinations(range(n), 2):
        delta = (ell[()] - ell[(i,)] - ell[(j,)] + ell[(i, j)]).mean()
        phi[i, j] = phi[j, i] = PAS_SIGN * delta
    return phi


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def _collect_pas(nm, batch, **kw) -> PASCollector:
    collector = PASCollector(nm, LAYER, CollectSettings(metric="pas", **kw))
    with collector:
        collector.update(batch, 0)
    return collector


@pytest.mark.parametrize(("family", "kind"), [("llama", "gram"), ("gpt_neox", "gram"), ("bert", "tanh")])
def test_exact_local_pas_equals_weight_surgery_for_every_pair(family, kind):
    nm, batch = _setup(family)
    collector = _collect_pas(nm, batch, mode="exact")
    assert collector.head_kind == kind
    phi = collector.sums.mean()
    want = _brute_local(nm, batch)
    scale = float(want.abs().max())
    assert scale > 1e-3  # not vacuous
    assert torch.allclose(phi, want, atol=1e-5 * max(1.0, scale), rtol=0)
    # and against the neurons stage's batched ablation (4 logits per pair)
    ref = nm.reference_mlp_weights(LAYER)
    sets = [[], [0], [5], [0, 5], [3], [3, 7], [7]]
    logits = ablation_logits(nm.model, batch, LAYER, sets, reference=ref, readout="local").double()
    for a, b, ab in ((1, 2, 3), (4, 6, 5)):
        i, j = sets[a][0], sets[b][0]
        delta = (logits[0] - logits[a] - logits[b] + logits[ab]).mean()
        assert float(phi[i, j]) == pytest.approx(PAS_SIGN * float(delta), abs=1e-5 * max(1.0, scale))


def test_exact_local_pas_on_a_causal_lm_reads_the_score_tokens_logit():
    """A causal LM without a classification head: the local readout is the score token's logit
    through the final norm (the collector used to build its head without the token and fail)."""
    base = scaled_tiny("llama", head="causal")
    nm = TinyNM(finetuned_copy(base, [LAYER]), base)
    nm.score_token_id = 11
    batch = nm.encode([q for q, _ in TEXTS], [p for _, p in TEXTS])
    collector = _collect_pas(nm, batch, mode="exact")
    assert collector.head_kind == "gram"
    phi = collector.sums.mean()
    want = _brute_local(nm, batch)
    scale = float(want.abs().max())
    assert scale > 1e-3
    assert torch.allclose(phi, want, atol=1e-5 * max(1.0, scale), rtol=0)
    nm.score_token_id = 12  # another token's logit is another φ
    other = _collect_pas(nm, batch, mode="exact").sums.mean()
    assert float((other - phi).abs().max()) > 1e-3 * scale


def test_generic_path_equals_closed_form():
    nm, batch = _setup("llama")
    gram = _collect_pas(nm, batch).sums.mean()
    collector = PASCollector(nm, LAYER, CollectSettings(metric="pas"))
    collector.structured = None  # force f evaluated at every pair
    with collector:
        collector.update(batch, 0)
    assert torch.allclose(collector.sums.mean(), gram, atol=1e-5)


def test_zero_ablation_equals_zeroing_the_neuron():
    nm, batch = _setup("llama")
    phi = _collect_pas(nm, batch, ablation="zero").sums.mean()
    want = _brute_local(nm, batch, zero=True)
    assert float(want.abs().max()) > 1e-3
    assert torch.allclose(phi, want, atol=1e-5 * max(1.0, float(want.abs().max())), rtol=0)


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_linear_readout_has_no_synergy(family):
    nm, batch = _setup(family)
    linear = local_head(nm.model, LAYER, norm=False)
    structured = structured_head(linear, nm.d_model)
    assert isinstance(structured, NormAffineHead) and structured.kind is None
    r = residual_at(nm.model, batch, LAYER)
    ref = nm.reference_mlp_weights(LAYER)
    w = nm.mlp_weights(LAYER)
    from hedonic_neurons.neurons import capture_site

    x = capture_site(nm.model, batch, LAYER).mlp_input
    with torch.no_grad():
        shifts = residual_shifts(w.activations(x), w.down, ref.activations(x), ref.down)
    generic = PairSums(nm.n_neurons)
    exact_local_sum(r, shifts, linear, generic.sum)  # f evaluated at every pair
    generic.count = len(r)
    assert generic.mean().abs().max() < 1e-5
    with_norm = _collect_pas(nm, batch).sums.mean()
    assert with_norm.abs().max() > 1e-3


def test_taylor_converges_to_exact_as_shifts_shrink():
    errors = []
    for scale in (0.04, 0.01):
        nm, batch = _setup("llama", scale=scale)
        exact = _collect_pas(nm, batch).sums.mean()
        taylor = _collect_pas(nm, batch, mode="taylor").sums.mean()
        iu = np.triu_indices(nm.n_neurons, 1)
        assert np.corrcoef(exact.numpy()[iu], taylor.numpy()[iu])[0, 1] > 0.98
        errors.append(float((taylor - exact).abs().max() / exact.abs().max()))
    # the error is third order while Δ is second order: relative error ∝ shift size
    assert errors[1] < 0.5 * errors[0] and errors[1] < 0.05


def test_grad_outer_uses_autograd_gradient_through_the_model():
    nm, batch = _setup("llama")
    phi = _collect_pas(nm, batch, mode="grad-outer").sums.mean()
    model, mods = nm.model, mlp_modules(nm.model, LAYER)
    pos = readout_positions(model, batch["attention_mask"])
    rows = torch.arange(len(pos))
    store = {}

    def leaf_hook(module, args):
        x = args[0].clone()
        store["a"] = x[rows, pos].detach().requires_grad_(True)
        x[rows, pos] = store["a"]
        return (x,)

    handles = [
        mods.down.register_forward_pre_hook(leaf_hook),
        mods.block.register_forward_hook(lambda m, a, out: store.__setitem__("r", _first(out))),
    ]
    try:
        model(**batch)
    finally:
        for h in handles:
            h.remove()
    local_head(model, LAYER)(store["r"][rows, pos]).sum().backward()
    v = (store["a"].grad * store["a"]).detach().double()
    want = -(v.T @ v) / len(v)
    want.fill_diagonal_(0.0)
    assert torch.allclose(phi, want, atol=1e-5 * float(want.abs().max()))


def test_oca_equals_numpy_from_stored_activations():
    nm, batch = _setup("gpt_neox")
    batches = [batch, nm.encode(["a b c", "d e"], ["f g h i", "j"])]
    stored = []
    mask_now = {}

    def keep(module, args):
        stored.append(args[0][mask_now["m"].bool()].detach().double())

    handle = mlp_modules(nm.model, LAYER).down.register_forward_pre_hook(keep)
    try:
        for b in batches:
            mask_now["m"] = b["attention_mask"]
            with torch.no_grad():
                nm.model(**b)
    finally:
        handle.remove()
    acts = torch.cat(stored).numpy()
    collector = OCACollector(nm, [LAYER, 2], CollectSettings(metric="oca"))
    with collector:
        for k, b in enumerate(batches):
            collector.update(b, k)
    phi, meta = collector.result(LAYER)
    assert meta["n_samples"] == len(acts) == meta["n_tokens"]
    want = np.corrcoef(acts, rowvar=False) * orthogonality(nm.mlp_weights(LAYER).down).numpy()
    np.fill_diagonal(want, 0.0)
    assert np.allclose(phi, want, atol=1e-5)
