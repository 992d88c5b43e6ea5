"""Exact local PAS on a tanh-pooler head (BERT): the cancellation-free form against brute force.

The reference evaluates the head f at r, r − d_i, r − d_j and r − d_i − d_j for every pair, in
fp64, and combines the four logits. The tolerance is the one the form promises: max |error| at
most 1e-4 of max |Δ| with fp32 per-pair arithmetic, also for shifts of a realistic size relative
to r, where the direct fp32 evaluation of the four logits loses every digit. With fp64 per-pair
arithmetic the bound is 1e-7: there the reference is the less accurate side (its four logits
cancel to ~ε64·|ℓ|/|Δ| ≈ 3e-9 for shifts of 1e-4 of |r|).
"""

from __future__ import annotations

import pytest
import torch

from hedonic_neurons.synergy import pas
from hedonic_neurons.synergy.heads import NormTanhHead
from hedonic_neurons.synergy.pas import PAS_SIGN, exact_local_sum


def _head(d: int, dp: int, seed: int, pooler_scale: float = 1.0) -> NormTanhHead:
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    return NormTanhHead(
        "layer",
        1e-5,
        gamma=1 + 0.2 * torch.randn(d, generator=g, dtype=f64),
        beta=0.1 * torch.randn(d, generator=g, dtype=f64),
        pooler_weight=pooler_scale * torch.randn(dp, d, generator=g, dtype=f64) / d**0.5,
        pooler_bias=0.3 * torch.randn(dp, generator=g, dtype=f64),
        w=torch.randn(dp, generator=g, dtype=f64),
        b=0.2,
    )


def _data(batch: int, n: int, d: int, rel: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Residuals r (B, d) and shifts (B, n, d) with |d_i| ≈ rel·|r| (each neuron its own size)."""
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(batch, d, generator=g, dtype=torch.float64) + 0.5
    size = rel * torch.exp(torch.randn(batch, n, 1, generator=g, dtype=torch.float64))
    shifts = torch.randn(batch, n, d, generator=g, dtype=torch.float64) / d**0.5
    return r, shifts * size * r.norm(dim=-1)[:, None, None]


def _brute(head: NormTanhHead, r: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """PAS_SIGN · Σ_x Δ_ij from f at the four points of every pair (fp64), zero diagonal."""
    out = torch.zeros(shifts.shape[1], shifts.shape[1], dtype=torch.float64)
    for b in range(r.shape[0]):
        rb, db = r[b], shifts[b]
        ell0 = head(rb)
        ell_i = head(rb - db)
        ell_ij = head(rb - db[:, None] - db[None, :])
        out += ell0 - ell_i[:, None] - ell_i[None, :] + ell_ij
    out.fill_diagonal_(0.0)
    return PAS_SIGN * out


def _offdiag(m: torch.Tensor) -> torch.Tensor:
    m = m.clone()
    m.fill_diagonal_(0.0)
    return m


def _run(head, r, shifts, dtype, *, direct=False, max_elements=pas.MAX_ELEMENTS) -> torch.Tensor:
    """The tanh path's Σ_x Δ_ij (or the direct four-logit evaluation), zero diagonal."""
    out = torch.zeros(shifts.shape[1], shifts.shape[1], dtype=torch.float64)
    if direct:
        pas._exact_tanh_direct(r, shifts, head, out, max_elements, dtype)
    else:
        exact_local_sum(r, shifts, head, out, max_elements=max_elements, dtype=dtype)
    return _offdiag(out)


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max())


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 2 x 4 pairs, tasks of 3 blocks of rows: n is then not a multiple of any size."""
    monkeypatch.setattr(pas, "TANH_BLOCK_ELEMENTS", 8 * 8)  # 2 x 4 pairs of 8 pooler units
    monkeypatch.setattr(pas, "TANH_BLOCK_ROWS", 2)
    monkeypatch.setattr(pas, "TANH_CHUNK_ROWS", 6)
    monkeypatch.setattr(pas, "TANH_THREADS", 1)
    assert pas._tanh_block_shape(27, 8, pas.MAX_ELEMENTS, torch.device("cpu")) == (2, 4)


@pytest.mark.parametrize("rel", [1e-4, 1e-2, 0.3])
def test_tanh_path_equals_brute_force(rel, small_blocks):
    head = _head(d=16, dp=8, seed=1)
    r, shifts = _data(3, 27, 16, rel, seed=2)
    want = _brute(head, r, shifts)
    assert want.abs().max() > 0
    assert _rel(_run(head, r, shifts, torch.float64), want) < 1e-7
    assert _rel(_run(head, r, shifts, torch.float32), want) < 1e-4


def test_realistic_shifts_where_the_four_logits_cancel(small_blocks):
    """Shifts of 1e-4 of |r| (MiniLM's are ~5e-5): the direct fp32 evaluation has no correct digit,
    the cancellation-free form in fp32 agrees with fp64 brute force to far better than 1e-4."""
    head = _head(d=24, dp=12, seed=3)
    r, shifts = _data(4, 33, 24, 1e-4, seed=4)
    want = _brute(head, r, shifts)
    direct32 = _run(head, r, shifts, torch.float32, direct=True)
    assert _rel(direct32, want) > 1e-2  # the regime is one where cancellation bites
    assert _rel(_run(head, r, shifts, torch.float32), want) < 1e-5
    assert _rel(_run(head, r, shifts, torch.float64), want) < 1e-7


def test_saturated_units_zero_and_mixed_shifts(small_blocks):
    """Pooler units deep in saturation (|z| ~ 10), neurons with zero shift, and shifts of very
    different sizes in one input (both the small-y and the general form within a call)."""
    head = _head(d=16, dp=8, seed=5, pooler_scale=8.0)
    r, shifts = _data(2, 29, 16, 1e-3, seed=6)
    shifts[:, 3] = 0.0
    shifts[0, 5] *= 300.0  # y of its pairs is large: the general form
    shifts[1, 7] *= 1e-6
    want = _brute(head, r, shifts)
    assert want.abs().max() > 0
    assert _rel(_run(head, r, shifts, torch.float64), want) < 1e-7
    assert _rel(_run(head, r, shifts, torch.float32), want) < 1e-4


@pytest.mark.parametrize("max_elements", [7, 1000, pas.MAX_ELEMENTS])
@pytest.mark.parametrize("chunk_rows", [6, pas.TANH_CHUNK_ROWS])
def test_block_sizes_and_threads_do_not_change_the_result(max_elements, chunk_rows, monkeypatch):
    monkeypatch.setattr(pas, "TANH_CHUNK_ROWS", chunk_rows)
    head = _head(d=16, dp=8, seed=7)
    r, shifts = _data(3, 40, 16, 1e-3, seed=8)
    want = _brute(head, r, shifts)
    threads = torch.get_num_threads()
    results = []
    for workers in (1, 3):
        monkeypatch.setattr(pas, "TANH_THREADS", workers)
        results.append(_run(head, r, shifts, torch.float32, max_elements=max_elements))
        assert torch.get_num_threads() == threads  # restored
    assert _rel(results[1], results[0]) < 1e-6  # threads split the work, never the sums
    assert _rel(results[0], want) < 1e-4


def test_fp32_inputs_agree_with_the_direct_fp64_evaluation():
    """As the collector calls it (fp32 residuals and shifts): the same value as the four-logit
    evaluation in fp64, which shares the fp32 Gram products and projections."""
    head = _head(d=32, dp=16, seed=9)
    r, shifts = _data(2, 40, 32, 5e-4, seed=10)
    r, shifts = r.float(), shifts.float()
    direct64 = _run(head, r, shifts, torch.float64, direct=True)
    assert _rel(_run(head, r, shifts, torch.float64), direct64) < 1e-7
    assert _rel(_run(head, r, shifts, torch.float32), direct64) < 1e-4


def test_adds_to_out_symmetrically():
    head = _head(d=16, dp=8, seed=11)
    r, shifts = _data(2, 11, 16, 1e-2, seed=12)
    out = torch.ones(11, 11, dtype=torch.float64)
    exact_local_sum(r, shifts, head, out, dtype=torch.float32)
    out -= 1.0
    assert torch.allclose(out, out.T, rtol=0, atol=1e-6 * out.abs().max())
    assert _rel(_offdiag(out), _brute(head, r, shifts)) < 1e-4


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_small_y_form_equals_the_general_form(dtype):
    """Below the threshold sqrt(eps)/2 on |y|, y (1 − T y) stands for tanh y / (1 + T tanh y): the
    two forms of one block agree to the dtype's rounding (their difference is (T² − 1/3) y³)."""
    g = torch.Generator().manual_seed(13)
    bi, bj, dp = 3, 5, 7
    small_y = 0.5 * torch.finfo(dtype).eps ** 0.5

    def rand(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).to(dtype)

    dh = small_y**0.5 / 2  # D̂_i D̂_j as large as y: both terms of u count
    rows = (rand(bi, 1, dp), rand(bi, 1, dp, scale=0.5), rand(bi, 1, dp, scale=dh))
    cols = (
        rand(1, bj, dp, scale=0.1),
        rand(1, bj, dp, scale=0.5),
        *(rand(1, bj, dp, scale=dh) for _ in "ab"),
    )
    c, p, q = (rand(bi, bj, 1, scale=small_y / 8) for _ in "cpq")  # |y| ~ small_y / 4
    e_r, w = rand(dp), rand(dp)
    results = []
    for small in (True, False):
        bufs = tuple(torch.empty(bi, bj, dp, dtype=dtype) for _ in range(3))
        res = torch.empty(bi * bj, dtype=dtype)
        pas._tanh_pair_block(bufs, rows, cols, c, p, q, e_r, w, small, res)
        results.append(res.double())
    assert _rel(results[0], results[1]) < 8 * torch.finfo(dtype).eps
