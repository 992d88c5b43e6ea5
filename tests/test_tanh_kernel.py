"""The compiled CPU kernel of exact PAS on a tanh-pooler head, against the torch form it replaced
on CPU (``_exact_tanh_blocks``), the head evaluated at the four points of every pair (fp64), and
explicit ablation of each neuron and pair in a tiny BERT with a pooler, sums and squares (SE)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from hedonic_neurons.errors import ConfigError
from hedonic_neurons.neurons import capture_site, local_head
from hedonic_neurons.synergy import pas
from hedonic_neurons.synergy.heads import NormTanhHead, structured_head
from hedonic_neurons.synergy.pas import PAS_SIGN, PairSums, exact_local_sum, residual_shifts
from synergy_helpers import TinyNM, finetuned_copy, one_thread, residual_at, reverted, scaled_tiny
from test_pas_tanh import _data, _head

LAYER = 1
TEXTS = [
    ("what is the capital of france", "paris is the capital and largest city of france"),
    ("how tall is mount everest", "everest is the highest mountain above sea level"),
    ("python list sort", "the sort method orders a list in place"),
    ("boiling point of water", "water boils at one hundred degrees celsius at sea level pressure"),
]


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


def _offdiag(m: torch.Tensor) -> torch.Tensor:
    m = m.clone()
    m.fill_diagonal_(0.0)
    return m


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((_offdiag(got) - _offdiag(want)).abs().max() / _offdiag(want).abs().max())


def _kernel(head, r, shifts, dtype=torch.float64, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ_x PAS_SIGN Δ, Σ_x Δ²) from exact_local_sum (the compiled kernel on CPU)."""
    n = shifts.shape[1]
    out, sq = torch.zeros(n, n, dtype=torch.float64), torch.zeros(n, n, dtype=torch.float64)
    exact_local_sum(r, shifts, head, out, dtype=dtype, sq=sq, **kw)
    return out, sq


def _blocks(head, r, shifts, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """The same sums from the torch form, one input at a time."""
    n = shifts.shape[1]
    out, sq = torch.zeros(n, n, dtype=torch.float64), torch.zeros(n, n, dtype=torch.float64)
    for b in range(r.shape[0]):
        one = torch.zeros(n, n, dtype=torch.float64)
        pas._exact_tanh_blocks(r[b : b + 1], shifts[b : b + 1], head, one, pas.MAX_ELEMENTS, dtype)
        out += one
        sq += one * one
    return out, sq


def _four_points(head: NormTanhHead, r, shifts) -> tuple[torch.Tensor, torch.Tensor]:
    """The same sums from f at r, r − d_i, r − d_j, r − d_i − d_j (fp64), per input."""
    n = shifts.shape[1]
    out, sq = torch.zeros(n, n, dtype=torch.float64), torch.zeros(n, n, dtype=torch.float64)
    for b in range(r.shape[0]):
        rb, db = r[b].double(), shifts[b].double()
        ell_i = head(rb - db)
        delta = head(rb) - ell_i[:, None] - ell_i[None, :] + head(rb - db[:, None] - db[None, :])
        out += PAS_SIGN * delta
        sq += delta * delta
    return out, sq


def _regimes(head: NormTanhHead, r, shifts, dtype) -> tuple[float, float, float, float]:
    """Fractions of pairs whose bound on |y| puts them in the kernel's small, series, polynomial and
    general loop (the kernel's own rule, evaluated here in torch)."""
    r, shifts, s0, a, _ = pas._norm_terms(r, shifts, head.kind)
    proj = (head.pooler_weight * head.gamma).T
    offset = head.pooler_weight @ head.beta + head.pooler_bias
    d, n = shifts.shape[-1], shifts.shape[1]
    eps = torch.finfo(dtype).eps
    edges = torch.tensor([0.5 * eps**0.5, 0.5 * eps**0.25, pas.TANH_POLY_Y], dtype=torch.float64)
    counts = torch.zeros(4, dtype=torch.float64)
    iu = torch.triu_indices(n, n, 1)
    for b in range(r.shape[0]):
        s = pas._tanh_singles(r[b], shifts[b], s0[b], a[b], proj, offset, head.eps)
        g2 = 2.0 * (shifts[b] @ shifts[b].T).double()
        add_i, add_j = g2 + a[b][None, :], g2 + a[b][:, None]
        sig_ij = torch.rsqrt((s0[b] + a[b][:, None] + add_i) / d + head.eps)
        p = pas._rsqrt_step(add_i, s["sig"][:, None], sig_ij, d)
        q = pas._rsqrt_step(add_j, s["sig"][None, :], sig_ij, d)
        c = p - s["dsig"][None, :]
        emax = s["e"].abs().amax(-1)
        bound = c.abs() * s["e_r"].abs().max() + p.abs() * emax[:, None] + q.abs() * emax[None, :]
        counts += torch.bincount(torch.bucketize(bound[iu[0], iu[1]], edges), minlength=4)
    return tuple((counts / counts.sum()).tolist())


def _bert():
    """A tiny BERT (24 neurons, pooler of 16) fine-tuned at LAYER, its residuals and the shifts of
    reference ablation, and its local head's structure."""
    base = scaled_tiny("bert")
    nm = TinyNM(finetuned_copy(base, [LAYER], scale=0.5), base)
    batch = nm.encode([q for q, _ in TEXTS], [p for _, p in TEXTS])
    head = structured_head(local_head(nm.model, LAYER), nm.d_model)
    assert isinstance(head, NormTanhHead)
    r = residual_at(nm.model, batch, LAYER)
    x = capture_site(nm.model, batch, LAYER).mlp_input
    w, ref = nm.mlp_weights(LAYER), nm.reference_mlp_weights(LAYER)
    with torch.no_grad():
        shifts = residual_shifts(w.activations(x), w.down, ref.activations(x), ref.down)
    return nm, batch, head, r, shifts


def test_tiny_bert_kernel_equals_torch_form_four_points_and_explicit_ablation():
    nm, batch, head, r, shifts = _bert()
    r, shifts = r.double(), shifts.double()  # fp32 shifts would round the Gram products first
    got, got_sq = _kernel(head, r, shifts)
    blocks, blocks_sq = _blocks(head, r, shifts)
    four, four_sq = _four_points(head, r, shifts)
    assert _offdiag(four).abs().max() > 1e-3 and _offdiag(four_sq).abs().max() > 1e-6  # not vacuous
    assert _rel(got, blocks) < 1e-10 and _rel(got_sq, blocks_sq) < 1e-10
    assert _rel(got, four) < 1e-7 and _rel(got_sq, four_sq) < 1e-7
    # neurons and pairs of them reverted to the reference weights in the model, a forward pass each
    model_head = local_head(nm.model, LAYER)
    some = [0, 3, 5, 8, 13, 17, 23]
    with torch.no_grad():
        ell = {(): model_head(residual_at(nm.model, batch, LAYER)).double()}
        for s in itertools.chain(((i,) for i in some), itertools.combinations(some, 2)):
            with reverted(nm.model, nm.base, LAYER, s) as model:
                ell[s] = model_head(residual_at(model, batch, LAYER)).double()
    k = len(some)
    want, want_sq = torch.zeros(k, k, dtype=torch.float64), torch.zeros(k, k, dtype=torch.float64)
    for (a, i), (b, j) in itertools.combinations(enumerate(some), 2):
        delta = ell[()] - ell[(i,)] - ell[(j,)] + ell[(i, j)]  # per input
        want[a, b] = want[b, a] = PAS_SIGN * delta.sum()
        want_sq[a, b] = want_sq[b, a] = (delta * delta).sum()
    assert want.abs().max() > 1e-3
    sub = torch.tensor(some)[:, None], torch.tensor(some)[None, :]
    assert _rel(got[sub], want) < 1e-4 and _rel(got_sq[sub], want_sq) < 1e-4  # fp32 forward passes
    # and the standard error PairSums derives from them
    sums = PairSums(nm.n_neurons, squares=True)
    exact_local_sum(r, shifts, head, sums.sum, sq=sums.sq)
    sums.count = r.shape[0]
    per_input = torch.stack([_four_points(head, r[b : b + 1], shifts[b : b + 1])[0] for b in range(4)])
    se = per_input.std(0, correction=1) / math.sqrt(4)
    assert torch.allclose(_offdiag(sums.se()), _offdiag(se), rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize(
    ("rel", "dtype", "regime"),
    [
        (1e-4, torch.float32, 0),  # MiniLM-sized shifts in fp32: two terms of g's series
        (1e-4, torch.float64, 0),
        (1e-3, torch.float64, 1),  # four terms of the series
        (0.03, torch.float32, 1),
        (0.03, torch.float64, 2),  # tanh y by its polynomial
        (0.3, torch.float64, 3),  # huge shifts: the general loop (tanh itself)
        (0.3, torch.float32, 3),
    ],
)
def test_each_loop_of_the_kernel_equals_four_points(rel, dtype, regime):
    head = _head(d=24, dp=12, seed=21)
    r, shifts = _data(3, 31, 24, rel, seed=22)
    fractions = _regimes(head, r, shifts, dtype)
    assert fractions[regime] > 0.3, fractions  # the loop under test does a good part of the pairs
    want, want_sq = _four_points(head, r, shifts)
    got, got_sq = _kernel(head, r, shifts, dtype)
    tol = 1e-7 if dtype == torch.float64 else 1e-4  # the bounds of tests/test_pas_tanh.py
    assert _rel(got, want) < tol and _rel(got_sq, want_sq) < tol
    blocks, blocks_sq = _blocks(head, r, shifts, dtype)
    tol = 1e-12 if dtype == torch.float64 else tol  # the same form in torch: rounding apart
    assert _rel(got, blocks) < tol and _rel(got_sq, blocks_sq) < tol


def test_units_past_the_exponential_range_take_the_general_loop():
    """Pooler pre-activations of |z| ~ 60 (exp(2z) overflows float32) on some units, with shifts
    that move them by tens: T = tanh(z_i + x_j) must still be right where z_i is huge and z_i + x_j
    is not (float32), and the saturated units add nothing spurious (float64)."""
    head = _head(d=16, dp=8, seed=23, pooler_scale=60.0)
    r, shifts = _data(2, 19, 16, 1e-3, seed=24)
    shifts[0, 4] *= 2000.0  # moves the pooler pre-activation by ~ |z|
    r_c, shifts_c, s0, a, _ = pas._norm_terms(r, shifts, head.kind)
    proj, offset = (head.pooler_weight * head.gamma).T, head.pooler_weight @ head.beta + head.pooler_bias
    s = pas._tanh_singles(r_c[0], shifts_c[0], s0[0], a[0], proj, offset, head.eps)
    limit32 = math.log(torch.finfo(torch.float32).max) - 8.0
    assert float(2 * s["zi"].abs().max()) > limit32 and float(2 * s["x"].abs().max()) > limit32
    want, want_sq = _four_points(head, r, shifts)
    for dtype, tol in ((torch.float32, 1e-4), (torch.float64, 1e-7)):
        got, got_sq = _kernel(head, r, shifts, dtype)
        assert torch.isfinite(got).all() and torch.isfinite(got_sq).all()
        assert _rel(got, want) < tol and _rel(got_sq, want_sq) < tol


def test_threads_and_row_blocks_do_not_change_the_result(monkeypatch):
    head = _head(d=16, dp=8, seed=25)
    r, shifts = _data(2, 45, 16, 1e-3, seed=26)
    results = []
    for threads, max_elements in ((1, pas.MAX_ELEMENTS), (2, pas.MAX_ELEMENTS), (2, 45 * 7), (2, 1)):
        monkeypatch.setattr(pas, "TANH_THREADS", threads)
        results.append(_kernel(head, r, shifts, torch.float32, max_elements=max_elements))
    for out, sq in results[1:]:
        assert torch.equal(out, results[0][0]) and torch.equal(sq, results[0][1])  # same sums, bit for bit
    assert _rel(results[0][0], _four_points(head, r, shifts)[0]) < 1e-4


def test_out_of_another_dtype_or_layout_and_bad_pair_dtype():
    head = _head(d=16, dp=8, seed=27)
    r, shifts = _data(2, 13, 16, 1e-2, seed=28)
    want, want_sq = _kernel(head, r, shifts)
    out32 = torch.zeros(13, 13, dtype=torch.float32)
    sq_t = torch.zeros(13, 13, dtype=torch.float64).T  # a transposed view: not C-contiguous
    exact_local_sum(r, shifts, head, out32, sq=sq_t)
    assert _rel(out32.double(), want) < 1e-6 and _rel(sq_t, want_sq) < 1e-12
    with pytest.raises(ConfigError, match=r"float32 or torch.float64; got pair_dtype=torch.bfloat16"):
        exact_local_sum(r, shifts, head, want, dtype=torch.bfloat16)
