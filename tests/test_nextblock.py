"""The next-block PAS readout: g_x(r), the model above layer ℓ with the residual at the readout
position replaced by r, against brute-force forwards of the whole model written here."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from hedonic_neurons.config import PhiConfig
from hedonic_neurons.errors import ConfigError
from hedonic_neurons.neurons import local_head
from hedonic_neurons.synergy.collect import CollectSettings, PASCollector
from hedonic_neurons.synergy.nextblock import NextBlockReadout, exact_pairs_sum
from hedonic_neurons.synergy.pas import PAS_SIGN, exact_local_sum, head_gradients, head_hessians, taylor_sum
from synergy_helpers import TinyNM, finetuned_copy, one_thread, scaled_tiny
from tiny import tiny_model

TEXTS = [
    ("what is the capital of france", "paris is the capital and largest city of france"),
    ("how tall is mount everest", "everest is the highest mountain"),
    ("python list sort", "the sort method orders a list in place"),
]
PAIRS = np.array([[0, 5], [1, 2], [3, 7], [5, 23], [10, 11]])
LAST = 2  # the tiny models have 3 layers


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


# ------------------------------------------------------------------ brute force, by hand per family


def _site(model, family, layer):
    """(module, hook kind) of the residual after ``layer``: LLaMA's block output; BERT's sum entering
    the block's output LayerNorm."""
    if family == "bert":
        return model.bert.encoder.layer[layer].output.LayerNorm, "pre"
    return model.model.layers[layer], "post"


def _down(model, family, layer):
    if family == "bert":
        return model.bert.encoder.layer[layer].output.dense
    return model.model.layers[layer].mlp.down_proj


def _inputs(batch):
    """Each input alone, unpadded: (ids (1, T), readout position) — LLaMA reads the last token,
    BERT its CLS (position 0)."""
    out = []
    for ids, mask in zip(batch["input_ids"], batch["attention_mask"]):
        length = int(mask.sum())
        out.append(ids[:length][None])
    return out


def _position(family, ids):
    return 0 if family == "bert" else ids.shape[1] - 1


def _logit(model, family, layer, ids, fn):
    """The model's own output logit on one input when the residual after ``layer`` at the readout
    position is replaced by fn(its value)."""
    module, kind = _site(model, family, layer)
    p = _position(family, ids)

    def edit(h):
        return h.index_put((torch.tensor([0]), torch.tensor([p])), fn(h[0, p])[None])

    if kind == "pre":
        handle = module.register_forward_pre_hook(lambda m, args: (edit(args[0]), *args[1:]))
    else:
        handle = module.register_forward_hook(
            lambda m, args, out: (edit(out[0]), *out[1:]) if isinstance(out, tuple) else edit(out)
        )
    try:
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, 0]
    finally:
        handle.remove()


def _capture(model, family, layer, ids):
    """(r, a) of one input: the residual after ``layer`` and the neurons, at the readout position."""
    store = {}
    p = _position(family, ids)
    module, kind = _site(model, family, layer)
    if kind == "pre":
        h1 = module.register_forward_pre_hook(lambda m, args: store.__setitem__("r", args[0][0, p]))
    else:
        h1 = module.register_forward_hook(
            lambda m, args, out: store.__setitem__("r", (out[0] if isinstance(out, tuple) else out)[0, p])
        )
    h2 = _down(model, family, layer).register_forward_pre_hook(
        lambda m, args: store.__setitem__("a", args[0][0, p])
    )
    try:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=torch.ones_like(ids))
    finally:
        h1.remove()
        h2.remove()
    return store["r"], store["a"]


def _setup(family, layer, *, seed=0):
    """A scaled float64 model, a right-padded batch, and per input r (B, d) and zero-ablation shifts
    d_i = a_i W_i (B, n, d), all computed here."""
    model = scaled_tiny(family, seed=seed).double()
    batch = TinyNM(model).encode([q for q, _ in TEXTS], [p for _, p in TEXTS])
    assert bool((batch["attention_mask"] == 0).any())  # the batch is padded
    weight = _down(model, family, layer).weight.detach()  # (d, n)
    rs, shifts = [], []
    for ids in _inputs(batch):
        r, a = _capture(model, family, layer, ids)
        rs.append(r)
        shifts.append(a[:, None] * weight.T)
    return model, batch, torch.stack(rs), torch.stack(shifts)


def _brute_delta(model, family, layer, batch, shifts, i, j):
    """Δ_ij per input from four whole-model forwards subtracting d_i, d_j at the readout position."""
    out = []
    for b, ids in enumerate(_inputs(batch)):
        with torch.no_grad():
            ell = {
                s: _logit(
                    model, family, layer, ids, lambda h, s=s, b=b: h - sum((shifts[b, k] for k in s), 0.0)
                )
                for s in ((), (i,), (j,), (i, j))
            }
        out.append(float(ell[()] - ell[(i,)] - ell[(j,)] + ell[(i, j)]))
    return PAS_SIGN * torch.tensor(out, dtype=torch.float64)


def _brute_hessian(model, family, layer, ids, r):
    with sdpa_kernel([SDPBackend.MATH]):  # the fused CPU kernel has no double backward
        return torch.autograd.functional.hessian(lambda x: _logit(model, family, layer, ids, lambda h: x), r)


# ------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_readout_is_the_model_and_its_r_is_the_local_one(family):
    model, batch, r, _ = _setup(family, 1)
    g = NextBlockReadout(model, batch, 1)
    assert torch.allclose(g.resid, r, atol=1e-12, rtol=0)
    with torch.no_grad():
        own = torch.stack([_logit(model, family, 1, ids, lambda h: h) for ids in _inputs(batch)])
        assert torch.allclose(g(g.resid), own, atol=1e-10, rtol=0)
        # another point: the same as the whole model with that residual written in
        x = g.resid + 0.3 * torch.randn(
            g.resid.shape, generator=torch.Generator().manual_seed(0), dtype=r.dtype
        )
        moved = torch.stack(
            [_logit(model, family, 1, ids, lambda h, b=b: x[b]) for b, ids in enumerate(_inputs(batch))]
        )
        assert not torch.allclose(moved, own, atol=1e-3)
        assert torch.allclose(g(x), moved, atol=1e-10, rtol=0)


@pytest.mark.parametrize("family", ["llama", "bert"])
@pytest.mark.parametrize("layer", [0, 1])
def test_exact_equals_four_whole_model_forwards(family, layer):
    model, batch, _, shifts = _setup(family, layer)
    g = NextBlockReadout(model, batch, layer, max_rows=7)  # several passes per input
    n = shifts.shape[1]
    out = torch.zeros(n, n, dtype=torch.float64)
    sq = torch.zeros_like(out)
    exact_pairs_sum(g, shifts, PAIRS, out, sq)
    scale = 0.0
    for i, j in PAIRS:
        want = _brute_delta(model, family, layer, batch, shifts, i, j)
        scale = max(scale, float(want.abs().max()))
        for a, b in ((i, j), (j, i)):
            assert float(out[a, b]) == pytest.approx(float(want.sum()), abs=1e-9)
            assert float(sq[a, b]) == pytest.approx(float(want.square().sum()), abs=1e-9)
    assert scale > 1e-3  # not vacuous
    mask = np.ones((n, n), dtype=bool)
    mask[PAIRS[:, 0], PAIRS[:, 1]] = mask[PAIRS[:, 1], PAIRS[:, 0]] = False
    assert bool((out[torch.as_tensor(mask)] == 0).all())  # unrequested pairs untouched
    # the inputs one slice at a time give the same sums
    parts = torch.zeros_like(out)
    for rows in (slice(0, 2), slice(2, 3)):
        exact_pairs_sum(g, shifts[rows], PAIRS, parts, rows=rows)
    assert torch.allclose(parts, out, atol=1e-12, rtol=0)


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_taylor_is_the_hessian_of_the_whole_model(family):
    layer = 0
    model, batch, r, shifts = _setup(family, layer)
    g = NextBlockReadout(model, batch, layer, hessian_rows=5)  # copies of inputs split across passes
    hess = g.hessians()
    n = shifts.shape[1]
    want = torch.zeros(n, n, dtype=torch.float64)
    for b, ids in enumerate(_inputs(batch)):
        h_ref = _brute_hessian(model, family, layer, ids, r[b].clone())
        scale = float(h_ref.abs().max())
        assert scale > 1e-3
        # LLaMA's RMSNorm computes in float32 even in a float64 model: H is exact to ~1e-7 of its size
        assert torch.allclose(hess[b], h_ref, atol=1e-6 * scale, rtol=0)
        want += shifts[b] @ h_ref @ shifts[b].T
    out = torch.zeros_like(want)
    taylor_sum(shifts, hess, out)
    assert torch.allclose(out, PAS_SIGN * want, atol=1e-6, rtol=0)
    assert float(want.abs().max()) > 1e-3
    # the gradient (grad-outer) is the whole model's too
    grads = g.gradients()
    for b, ids in enumerate(_inputs(batch)):
        x = r[b].clone().requires_grad_(True)
        (ref,) = torch.autograd.grad(_logit(model, family, layer, ids, lambda h, x=x: x), x)
        assert torch.allclose(grads[b], ref, atol=1e-10, rtol=0)


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_at_the_last_layer_next_block_is_the_local_head(family):
    model, batch, r, shifts = _setup(family, LAST)
    g = NextBlockReadout(model, batch, LAST)
    head = local_head(model, LAST, dtype=torch.float64)
    n = shifts.shape[1]
    local, mine = torch.zeros(n, n, dtype=torch.float64), torch.zeros(n, n, dtype=torch.float64)
    with torch.enable_grad():
        taylor_sum(shifts, head_hessians(head, r).detach(), local)
        local_grads = head_gradients(head, r).detach()
    taylor_sum(shifts, g.hessians(), mine)
    assert float(local.abs().max()) > 1e-3
    assert torch.allclose(mine, local, atol=1e-6, rtol=0)
    assert torch.allclose(g.gradients(), local_grads, atol=1e-6, rtol=0)
    every = np.array(list(itertools.combinations(range(n), 2)))
    local, mine = torch.zeros_like(local), torch.zeros_like(mine)
    exact_local_sum(r, shifts, head, local)
    exact_pairs_sum(g, shifts, every, mine)
    off = ~torch.eye(n, dtype=torch.bool)
    assert float(local[off].abs().max()) > 1e-3
    assert torch.allclose(mine[off], local[off], atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_below_the_last_layer_next_block_is_not_the_local_head(family):
    layer = 1
    model, batch, r, shifts = _setup(family, layer)
    g = NextBlockReadout(model, batch, layer)
    head = local_head(model, layer, dtype=torch.float64)
    n = shifts.shape[1]
    local, mine = torch.zeros(n, n, dtype=torch.float64), torch.zeros(n, n, dtype=torch.float64)
    with torch.enable_grad():
        taylor_sum(shifts, head_hessians(head, r).detach(), local)
    taylor_sum(shifts, g.hessians(), mine)
    assert float((mine - local).abs().max()) > 0.1 * float(local.abs().max())
    local, mine = torch.zeros_like(local), torch.zeros_like(mine)
    exact_local_sum(r, shifts, head, local)
    exact_pairs_sum(g, shifts, PAIRS, mine)
    ii, jj = PAIRS[:, 0], PAIRS[:, 1]
    assert float((mine[ii, jj] - local[ii, jj]).abs().max()) > 0.1 * float(local[ii, jj].abs().max())


def _zeroed_at_readout(model, layer, batch, neurons):
    """LLaMA logits with ``neurons`` of ``layer`` zeroed at the readout position only (a pre-hook
    on the down projection), each input alone."""
    out = []
    for ids in _inputs(batch):
        p = ids.shape[1] - 1

        def zero(m, args, p=p):
            a = args[0].clone()
            a[0, p, list(neurons)] = 0.0
            return (a,)

        handle = model.model.layers[layer].mlp.down_proj.register_forward_pre_hook(zero)
        try:
            with torch.no_grad():
                out.append(model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, 0].double())
        finally:
            handle.remove()
    return torch.stack(out)


def test_collector_next_block_equals_zeroing_at_the_readout_position():
    layer = 1
    base = scaled_tiny("llama")
    nm = TinyNM(finetuned_copy(base, [layer]), base)
    batch = nm.encode([q for q, _ in TEXTS], [p for _, p in TEXTS])
    collector = PASCollector(
        nm, layer, CollectSettings(metric="pas", readout="next-block", ablation="zero"), pairs=PAIRS
    )
    assert collector.head_kind == "next-block"
    with collector:
        collector.update(batch, 0)
    phi = collector.sums.mean()
    ell0 = _zeroed_at_readout(nm.model, layer, batch, [])
    scale = 0.0
    for i, j in PAIRS:
        delta = (
            ell0
            - _zeroed_at_readout(nm.model, layer, batch, [i])
            - _zeroed_at_readout(nm.model, layer, batch, [j])
        )
        delta = PAS_SIGN * (delta + _zeroed_at_readout(nm.model, layer, batch, [i, j])).mean()
        scale = max(scale, abs(float(delta)))
        assert float(phi[i, j]) == pytest.approx(float(delta), abs=2e-5 * max(1.0, float(ell0.abs().max())))
    assert scale > 1e-3
    # taylor through the collector: the readout's Hessians times the collector's shifts
    taylor = PASCollector(
        nm, layer, CollectSettings(metric="pas", readout="next-block", mode="taylor", ablation="zero")
    )
    with taylor:
        taylor.update(batch, 0)
    g = NextBlockReadout(nm.model, batch, layer)
    weights = nm.mlp_weights(layer)
    with torch.no_grad():
        a = weights.activations(_mlp_input(nm.model, layer, batch, g.positions))
        shifts = a[:, :, None] * weights.down.T[None]  # zero ablation: d_i = a_i W_i
    want = torch.zeros(nm.n_neurons, nm.n_neurons, dtype=torch.float64)
    taylor_sum(shifts, g.hessians(), want)
    got = taylor.sums.sum
    assert float(want.abs().max()) > 1e-3
    assert torch.allclose(got, want, atol=1e-4 * float(want.abs().max()), rtol=0)


def _mlp_input(model, layer, batch, positions):
    store = {}
    handle = model.model.layers[layer].mlp.up_proj.register_forward_pre_hook(
        lambda m, args: store.__setitem__("x", args[0])
    )
    try:
        with torch.no_grad():
            model(**batch)
    finally:
        handle.remove()
    return store["x"][torch.arange(len(positions)), positions]


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_collector_at_the_last_layer_matches_the_local_readout(family):
    base = scaled_tiny(family)
    nm = TinyNM(finetuned_copy(base, [LAST]), base)
    batch = nm.encode([q for q, _ in TEXTS], [p for _, p in TEXTS])
    for mode in ("taylor", "grad-outer", "exact"):
        phis = []
        for readout in ("local", "next-block"):
            collector = PASCollector(nm, LAST, CollectSettings(metric="pas", readout=readout, mode=mode))
            with collector:
                collector.update(batch, 0)
            phis.append(collector.sums.mean())
        scale = float(phis[0].abs().max())
        assert scale > 1e-4, mode
        assert torch.allclose(phis[1], phis[0], atol=1e-4 * scale, rtol=0), mode


def test_settings_and_config_accept_next_block():
    for mode in ("exact", "taylor", "grad-outer"):
        CollectSettings(metric="pas", readout="next-block", mode=mode).check()
    exact = CollectSettings(metric="pas", readout="next-block", max_pairs=9).to_dict()
    assert exact["readout"] == "next-block" and exact["max_pairs"] == 9
    taylor = CollectSettings(metric="pas", readout="next-block", mode="taylor", max_pairs=9).to_dict()
    assert "max_pairs" not in taylor  # taylor covers every pair
    local = CollectSettings(metric="pas", mode="taylor").to_dict()
    assert local != taylor  # the cache key (a hash of these) tells the readouts apart
    with pytest.raises(ConfigError, match="next-block"):
        CollectSettings(metric="pas", readout="nextblock").check()
    assert PhiConfig(readout="next-block").readout == "next-block"


@pytest.mark.parametrize(
    ("family", "head"),
    [
        ("mistral", "seqcls"),
        ("qwen2", "seqcls"),
        ("gpt_neox", "seqcls"),
        ("gpt2", "seqcls"),
        ("gpt2", "causal"),
    ],
)
def test_other_families_read_the_whole_model(family, head):
    """g at a moved residual equals the model's own output (seqcls logit, or a causal LM's logit of
    one token) with that residual written after block 0 at the last token."""
    from hedonic_neurons.models.adapters import block

    torch.manual_seed(0)
    model = tiny_model(family, head=head).double()
    token = 7 if head == "causal" else None
    batch = TinyNM(model).encode([q for q, _ in TEXTS], [p for _, p in TEXTS])
    g = NextBlockReadout(model, batch, 0, score_token_id=token)
    x = g.resid + 0.5 * torch.randn(g.resid.shape, dtype=g.resid.dtype)
    want = []
    for b, ids in enumerate(_inputs(batch)):
        p = ids.shape[1] - 1

        def put(m, args, out, b=b, p=p):
            h = out[0] if isinstance(out, tuple) else out
            h = h.index_put((torch.tensor([0]), torch.tensor([p])), x[b][None])
            return (h, *out[1:]) if isinstance(out, tuple) else h

        handle = block(model, 0).register_forward_hook(put)
        try:
            with torch.no_grad():
                logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        finally:
            handle.remove()
        want.append(logits[0, p, token] if head == "causal" else logits[0, 0])
    with torch.no_grad():
        assert torch.allclose(g(x), torch.stack(want), atol=1e-9, rtol=0)
        assert not torch.allclose(g(x), g(g.resid), atol=1e-4)


def test_cli_collects_next_block(tmp_path):
    """``hedonic collect --readout next-block``: the readout is recorded and keyed; at the last layer
    the φ it writes is the local readout's."""
    import json

    from hedonic_neurons.artifacts import load_phi
    from hedonic_neurons.cli import main
    from hedonic_neurons.synergy.collect import phi_path
    from synergy_helpers import save_scaled_tiny, write_pairs

    base = save_scaled_tiny(tmp_path / "base", "llama")
    data = write_pairs(tmp_path / "pairs.tsv", rows=4)
    phis, keys = [], []
    for readout in ("next-block", "local"):
        out = tmp_path / readout
        args = ["collect", str(base), "--data", str(data), "--out", str(out), "--no-progress"]
        args += ["--device", "cpu", "--layers", str(LAST), "--metric", "pas", "--mode", "taylor"]
        args += ["--ablation", "zero", "--readout", readout]
        try:
            main(args)
        except SystemExit as exc:
            assert exc.code in (0, None)
        meta = json.loads(phi_path(out, LAST).with_suffix(".json").read_text())
        assert meta["settings"]["readout"] == readout
        phis.append(load_phi(phi_path(out, LAST)))
        keys.append(meta["key"])
    assert keys[0] != keys[1]
    scale = float(np.abs(phis[1]).max())
    assert scale > 1e-4
    assert np.allclose(phis[0], phis[1], atol=1e-4 * scale, rtol=0)


def test_bad_points_and_rows_are_one_line_errors():
    from hedonic_neurons.errors import ModelError

    model, batch, _, shifts = _setup("llama", 1)
    g = NextBlockReadout(model, batch, 1)
    with pytest.raises(ModelError, match=r"points must be \(K, 16\)"):
        g(g.resid[:, :5])
    with pytest.raises(ModelError, match="one input per point"):
        g(g.resid, torch.tensor([0, 1]))
    out = torch.zeros(24, 24, dtype=torch.float64)
    with pytest.raises(ModelError, match="shifts are for 3 inputs but rows select 2"):
        exact_pairs_sum(g, shifts, PAIRS, out, rows=slice(0, 2))
    with pytest.raises(ModelError, match=r"neuron indices in 0\.\.23"):
        exact_pairs_sum(g, shifts, np.array([[0, 24]]), out)
