"""Pairwise Ablation Synergy: exact local PAS in closed form, taylor, grad-outer.

Ablating neuron i at the readout position moves the residual r by a per-input vector d_i
(:func:`residual_shifts`), so with a local head f the ablated logits are
ℓ_{−S} = f(r − Σ_{i∈S} d_i) and

    Δ_ij = ℓ − ℓ_{−i} − ℓ_{−j} + ℓ_{−ij},    φ_PAS(i, j) = PAS_SIGN · E_x[Δ_ij(x)].

Everything here adds per-input values into a streaming :class:`PairSums` (an n × n sum in fp64
and a count), so memory never grows with the data and distributed runs reduce exactly. Given an
``sq`` matrix, the functions also add the per-input values squared, from which
:meth:`PairSums.se` gives the standard error of φ (sd / √N over the inputs).

Cost per input (n neurons, d = d_model, d_p = pooler width):

- Gram path (norm then affine score, :class:`~hedonic_neurons.synergy.heads.NormAffineHead`):
  one Gram block D_I D_Jᵀ per pair of neuron blocks, O(n²·d) multiply-adds (half of it, by
  symmetry) plus O(n²) elementwise work; memory O(B·block²).
- tanh path (:class:`~hedonic_neurons.synergy.heads.NormTanhHead`): the Gram matrix for the
  norm, plus O(n²·d_p) elementwise work (half, by symmetry) in a form free of cancellation
  (:func:`_exact_tanh`). On CPU one compiled kernel (numba, all threads) does a pair's whole
  d_p-long sum in one pass: about fifteen multiply-adds and one division per element, no
  transcendental function for the usual small shifts; memory O(n·d_p + n·block) besides ``out``
  (block = min(n, max_elements / n) rows of the Gram matrix at a time). On other devices
  blocks of pairs go through ten torch passes and one tanh per element.
- generic: f evaluated at n²/2 points per input, in chunks.
- taylor: one d × d Hessian of f per input (torch.func), then D H Dᵀ, O(n·d² + n²·d).
- grad-outer: one gradient of f per input, then an outer product, O(n·d + n²).
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numba
import numpy as np
import torch

from hedonic_neurons.errors import ConfigError, arg
from hedonic_neurons.synergy.heads import NormAffineHead, NormTanhHead

#: φ_PAS = PAS_SIGN · E[Δ_ij]: positive means complements (each neuron matters only when the other
#: is present), as the paper states it; the public code's −E[Δ] is not used.
PAS_SIGN = 1.0
#: ``grad-outer`` is the public code's matrix as it is: GRAD_OUTER_SIGN · E[(g⊙a)(g⊙a)ᵀ].
GRAD_OUTER_SIGN = -1.0

#: Default bound on the elements of one temporary block (keeps memory flat in n and in the data).
MAX_ELEMENTS = 1 << 22
#: The torch form of the tanh path (:func:`_exact_tanh_blocks`, used off CPU): on CPU its per-pair
#: temporaries hold at most this many elements each (three are live at once), so that a block's
#: elementwise passes run in cache; rows of pairs per block at most TANH_BLOCK_ROWS.
TANH_BLOCK_ELEMENTS = 3 << 15
TANH_BLOCK_ROWS = 16
#: Rows of pairs per task of the torch form on CPU (a multiple of the block's rows).
TANH_CHUNK_ROWS = 64
#: Threads of the tanh path on CPU (0: torch.get_num_threads(); at most numba's thread count).
TANH_THREADS = 0
#: The CPU kernel of the tanh path: rows of pairs per parallel task, and the bytes of per-neuron
#: vectors in one block of columns, which stays in a core's cache while a task's rows pass over it.
TANH_ROW_TILE = 4
TANH_COLUMN_BYTES = 1 << 19
#: Where no |y| of a pair exceeds this, the CPU kernel evaluates tanh y by its Taylor polynomial to
#: y⁷ (relative error below 0.022·y⁸ ≤ 2.2e-18); above it, by tanh itself.
TANH_POLY_Y = 0.01


class PairSums:
    """Streaming sum of a per-input n × n quantity, with the number of inputs it covers.

    ``sum`` is an (n, n) tensor (fp64 by default) on ``device``; ``count`` the number of inputs;
    ``tokens`` the number of non-pad tokens those inputs had (for the record). With
    ``squares=True`` it also keeps ``sq``, the sum of the per-input values squared, from which
    :meth:`se` gives the standard error of :meth:`mean`. The sums are additive: :meth:`merge` and
    :meth:`all_reduce` combine shards exactly.
    """

    def __init__(
        self, n: int, dtype: torch.dtype = torch.float64, device: Any = None, *, squares: bool = False
    ) -> None:
        self.sum = torch.zeros(n, n, dtype=dtype, device=device)
        self.sq = torch.zeros(n, n, dtype=dtype, device=device) if squares else None
        self.count = 0
        self.tokens = 0

    @property
    def n(self) -> int:
        return int(self.sum.shape[0])

    def mean(self) -> torch.Tensor:
        """The average per input, symmetrised, with a zero diagonal (zeros if nothing was added)."""
        out = self.sum / max(self.count, 1)
        out = 0.5 * (out + out.T)
        out.fill_diagonal_(0.0)
        return out

    def se(self) -> torch.Tensor:
        """The standard error of :meth:`mean`: sd / √N over the N inputs, sd the sample standard
        deviation (divisor N − 1) of the per-input values, from Σ x and Σ x² of each entry
        (symmetrised, zero diagonal). Needs ``squares=True`` and N ≥ 2."""
        if self.sq is None:
            raise ValueError("PairSums(squares=False) keeps no squares: no standard error")
        count = self.count
        if count < 2:
            raise ValueError(f"a standard error needs at least 2 inputs, have {count}")
        total = 0.5 * (self.sum + self.sum.T)
        sq = 0.5 * (self.sq + self.sq.T)
        var = (sq - total * total / count).clamp_(min=0.0) / (count - 1)
        out = (var / count).sqrt_()
        out.fill_diagonal_(0.0)
        return out

    def merge(self, other: PairSums) -> PairSums:
        self.sum += other.sum.to(self.sum)
        if self.sq is not None:
            if other.sq is None:
                raise ValueError("cannot merge PairSums without squares into one with squares")
            self.sq += other.sq.to(self.sq)
        self.count += other.count
        self.tokens += other.tokens
        return self

    def all_reduce(self) -> PairSums:
        """Sum over all processes (no-op unless torch.distributed is initialised)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            counts = torch.tensor([self.count, self.tokens], dtype=torch.float64, device=self.sum.device)
            dist.all_reduce(self.sum)
            if self.sq is not None:
                dist.all_reduce(self.sq)
            dist.all_reduce(counts)
            self.count, self.tokens = (round(c) for c in counts.tolist())
        return self

    def state_dict(self) -> dict[str, Any]:
        state = {"sum": self.sum.detach().cpu(), "count": self.count, "tokens": self.tokens}
        if self.sq is not None:
            state["sq"] = self.sq.detach().cpu()
        return state

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], device: Any = None) -> PairSums:
        """Rebuild from :meth:`state_dict` (with squares when the state has ``sq``)."""
        total = state["sum"]
        obj = cls(int(total.shape[0]), dtype=total.dtype, device=device, squares="sq" in state)
        obj.sum.copy_(total)
        if obj.sq is not None:
            obj.sq.copy_(state["sq"])
        obj.count, obj.tokens = int(state["count"]), int(state["tokens"])
        return obj


def residual_shifts(
    a: torch.Tensor,
    down: torch.Tensor,
    a_ref: torch.Tensor | None = None,
    ref_down: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-neuron residual shifts D (B, n, d): d_i = a_i·W_i − a_ref_i·W_ref_i.

    ``a`` (B, n) are the activations with the current weights and ``down`` (d, n) the current down
    projection. For reference ablation pass the reference activations and down projection; for
    zero ablation leave them out (d_i = a_i·W_i). Removing d_i from the residual is exactly what
    ablating neuron i does to it (the MLP output is a sum of per-neuron terms).
    """
    shifts = a.unsqueeze(-1) * down.T.to(a.dtype)
    if a_ref is not None:
        ref = down if ref_down is None else ref_down
        shifts = shifts - a_ref.unsqueeze(-1) * ref.T.to(a.dtype)
    return shifts


def _blocks(n: int, size: int) -> list[slice]:
    return [slice(s, min(s + size, n)) for s in range(0, n, size)]


def _block_size(n: int, per_pair: int, max_elements: int) -> int:
    return max(1, min(n, math.isqrt(max(1, max_elements // max(1, per_pair)))))


def _add_sym(out: torch.Tensor, block_i: slice, block_j: slice, value: torch.Tensor) -> None:
    """Add a pair block and its mirror (blocks are visited with J ≥ I only)."""
    out[block_i, block_j] += value
    if block_i != block_j:
        out[block_j, block_i] += value.T


def _add_singles(out: torch.Tensor, ell0: torch.Tensor, ell_single: torch.Tensor, sign: float) -> None:
    """The separable part Σ_x (ℓ − ℓ_{−i} − ℓ_{−j}) of Σ_x Δ_ij, added once per batch."""
    single = ell_single.sum(0)
    out += sign * (ell0.sum() - single.unsqueeze(1) - single.unsqueeze(0))


def _norm_terms(
    r: torch.Tensor, shifts: torch.Tensor, kind: str | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centred (LayerNorm) vectors, and the squared norms the closed forms need, in fp64.

    Returns (r̃, D̃, |r̃|² (B,), −2 r̃·d̃_i + |d̃_i|² (B, n), …) as (r, D, s0, a, dot) where ``dot``
    is r̃·d̃_i. The pairwise squared norm is |r̃ − d̃_i − d̃_j|² = s0 + a_i + a_j + 2 d̃_i·d̃_j.
    """
    if kind == "layer":
        r = r - r.mean(-1, keepdim=True)
        shifts = shifts - shifts.mean(-1, keepdim=True)
    dot = torch.einsum("bnd,bd->bn", shifts, r.to(shifts.dtype)).double()
    s0 = r.double().pow(2).sum(-1)
    a = shifts.pow(2).sum(-1).double() - 2.0 * dot
    return r, shifts, s0, a, dot


def _gram(shifts: torch.Tensor, block_i: slice, block_j: slice) -> torch.Tensor:
    return torch.bmm(shifts[:, block_i], shifts[:, block_j].transpose(1, 2)).double()


def _exact_affine(
    r: torch.Tensor, shifts: torch.Tensor, head: NormAffineHead, out: torch.Tensor, max_elements: int
) -> None:
    if head.kind is None:
        return  # an affine f has no second differences: Δ ≡ 0 exactly
    batch, n, d = shifts.shape
    r, shifts, s0, a, _ = _norm_terms(r, shifts, head.kind)
    u = head.u.to(device=shifts.device)
    num0 = r.double() @ u  # (B,)
    q = (shifts @ u.to(shifts.dtype)).double()  # (B, n)
    eps = head.eps
    ell0 = num0 * torch.rsqrt(s0 / d + eps)
    ell_i = (num0.unsqueeze(1) - q) * torch.rsqrt((s0.unsqueeze(1) + a) / d + eps)
    _add_singles(out, ell0, ell_i, PAS_SIGN)
    size = _block_size(n, batch, max_elements)
    blocks = _blocks(n, size)
    for bi, block_i in enumerate(blocks):
        for block_j in blocks[bi:]:
            sq = s0[:, None, None] + a[:, block_i, None] + a[:, None, block_j]
            sq = sq + 2.0 * _gram(shifts, block_i, block_j)
            num = num0[:, None, None] - q[:, block_i, None] - q[:, None, block_j]
            ell_ij = (num * torch.rsqrt(sq / d + eps)).sum(0)
            _add_sym(out, block_i, block_j, PAS_SIGN * ell_ij)


def _tanh_singles(
    r_b: torch.Tensor,
    shifts_b: torch.Tensor,
    s0_b: torch.Tensor,
    a_b: torch.Tensor,
    proj: torch.Tensor,
    offset: torch.Tensor,
    eps: float,
) -> dict[str, torch.Tensor]:
    """The per-neuron parts of the tanh path for one input, in fp64 (see :func:`_exact_tanh`)."""
    d = r_b.shape[-1]
    e_r = r_b.double() @ proj  # (d_p,)
    e = (shifts_b @ proj.to(shifts_b.dtype)).double()  # (n, d_p)
    sig0 = torch.rsqrt(s0_b / d + eps)
    sig = torch.rsqrt((s0_b + a_b) / d + eps)  # (n,)
    dsig = _rsqrt_step(a_b, sig0, sig, d)  # σ_i − σ0
    z0 = sig0 * e_r + offset
    x = dsig[:, None] * e_r - sig[:, None] * e  # z_i − z0
    zi = z0 + x
    dh = torch.sinh(x) / torch.cosh(zi)  # cosh(z0)·(tanh z_i − tanh z0), never overflows
    return {
        "e_r": e_r,
        "e": e,
        "sig0": sig0,
        "sig": sig,
        "dsig": dsig,
        "t0": torch.tanh(z0),
        "x": x,
        "zi": zi,
        "dh": dh,
    }


def _rsqrt_step(step: torch.Tensor, before: torch.Tensor, after: torch.Tensor, d: int) -> torch.Tensor:
    """σ' − σ for σ = (v/d + eps)^(-1/2), σ' the same at v + ``step``, without cancellation:
    −(step/d)·σ²σ'²/(σ + σ')."""
    return -(step / d) * (before * after).square() / (before + after)


def _tanh_pair_block(
    bufs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    rows: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    cols: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    c: torch.Tensor,
    p: torch.Tensor,
    q: torch.Tensor,
    e_r: torch.Tensor,
    w: torch.Tensor,
    small: bool,
    out: torch.Tensor,
) -> None:
    """Δ_ij of one (bi, bj) block of pairs into ``out`` (bi·bj,): Σ_k w_k u_ijk, u of :func:`_exact_tanh`.

    ``rows`` = (z0 + x_i, −e_i, D̂_i) as (bi, 1, d_p); ``cols`` = (x_j, −e_j, D̂_j, tanh(z0)·D̂_j) as
    (1, bj, d_p); ``c``, ``p``, ``q`` (bi, bj, 1); ``bufs`` three (bi, bj, d_p) buffers.
    ``small``: every |y| of the block is below sqrt(eps)/2, where
    tanh(y) / (1 + T tanh y) = y (1 − T y) to the dtype's rounding (the rest is (T² − 1/3) y³).
    Ten elementwise passes (twelve if not ``small``) and one matrix-vector product.
    """
    t, y, z = bufs
    zi, nei, dhi = rows
    xj, nej, dhj, t0dhj = cols
    torch.add(zi, xj, out=t)
    t.tanh_()  # T = tanh(z0 + x_i + x_j)
    torch.mul(c, e_r, out=y)
    y.addcmul_(p, nei)
    y.addcmul_(q, nej)  # y = z_ij − (z0 + x_i + x_j)
    if small:
        torch.mul(t, y, out=z)
        y.addcmul_(z, t, value=-1.0)  # (1 − T²) y
        y.addcmul_(z, y, value=-1.0)  # (1 − T²) y (1 − T y)
    else:
        y.tanh_()
        torch.mul(t, y, out=z)
        y.addcmul_(z, t, value=-1.0)  # (1 − T²) tanh y
        y.div_(z.add_(1.0))  # tanh(z_ij) − T, exactly
    torch.addcmul(t0dhj, t, dhj, out=t)  # (tanh z0 + T) D̂_j
    y.addcmul_(dhi, t, value=-1.0)  # u
    torch.mv(y.view(-1, y.shape[-1]), w, out=out)


def _tanh_block_shape(n: int, dp: int, max_elements: int, device: torch.device) -> tuple[int, int]:
    """(bi, bj) of one block of pairs, bj a multiple of bi: three (bi, bj, d_p) buffers within
    ``max_elements`` and, on CPU, each within TANH_BLOCK_ELEMENTS (cache-sized), with at most
    TANH_BLOCK_ROWS rows."""
    budget, rows = max(1, max_elements // 3), n
    if device.type == "cpu":
        budget, rows = min(budget, TANH_BLOCK_ELEMENTS), min(n, TANH_BLOCK_ROWS)
    pairs = max(1, budget // max(1, dp))
    bi = max(1, min(rows, math.isqrt(pairs)))
    return bi, max(1, min(pairs // bi, n + bi - 1) // bi) * bi


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    if t.shape[0] == rows:
        return t
    pad = t.new_zeros((rows - t.shape[0], *t.shape[1:]))
    return torch.cat([t, pad])


def _exact_tanh_blocks(
    r: torch.Tensor,
    shifts: torch.Tensor,
    head: NormTanhHead,
    out: torch.Tensor,
    max_elements: int,
    dtype: torch.dtype,
) -> None:
    """Δ_ij of the tanh-pooler head in torch passes, computed so that the four logits never cancel
    (:func:`_exact_tanh` uses it off CPU; on CPU the compiled kernel evaluates the same form).

    With σ_S the LayerNorm scale after ablating S, and e_r, e_i the images under x ↦ P(γ⊙x) of the
    centred residual and shifts, the pooler pre-activation is z_S = σ_S (e_r − Σ_{i∈S} e_i) + p'.
    Write z_i = z0 + x_i and z_ij = z0 + x_i + x_j + y_ij, so that
    y_ij = c_ij e_r − p_ij e_i − q_ij e_j with the n² scalars c = σ_ij − σ_i − σ_j + σ0,
    p = σ_ij − σ_i, q = σ_ij − σ_j (fp64). For T = tanh(z0 + x_i + x_j) tanh's addition formula
    gives exactly

        T − tanh z_i − tanh z_j + tanh z0 = −D̂_i D̂_j (tanh z0 + T),  D̂_i = sinh(x_i) / cosh(z_i),

    so per pooler unit

        tanh z_ij − tanh z_i − tanh z_j + tanh z0 = (1 − T²) tanh y / (1 + T tanh y) − D̂_i D̂_j (tanh z0 + T)

    and Δ_ij = w·(that). Each term is a product of small quantities known to full relative precision
    (x_i and D̂_i in fp64 per neuron; σ differences from the norms' differences, never from
    differences of σ's), so ``dtype`` (the per-pair arithmetic) sets a rounding error relative to
    the terms of Δ_ij, not to the logits. Where every |y| of a block is below sqrt(eps)/2, tanh y /
    (1 + T tanh y) is evaluated as y (1 − T y), equal to the dtype's rounding.

    Cost: per pair, d_p-long vectors through ten elementwise passes (one tanh) and a
    matrix-vector product, in blocks of bi x bj pairs (16 x 16 on CPU for d_p = 384) whose three
    buffers stay in a core's cache; tasks of up to TANH_CHUNK_ROWS rows of pairs run on a thread
    pool, each thread's passes serial (torch's intra-op threads are 1 for the call), so no pass
    waits on another thread. On MiniLM (n = 1,536, d_p = 384) with float32: ~0.85 s of one core
    per input, ~6x less time than the direct fp64 evaluation (:func:`_exact_tanh_direct`).
    """
    batch, n, d = shifts.shape
    r, shifts, s0, a, _ = _norm_terms(r, shifts, head.kind)
    dev = shifts.device
    proj = (head.pooler_weight * head.gamma).T.to(device=dev, dtype=torch.float64)  # (d, d_p)
    offset = (head.pooler_weight @ head.beta + head.pooler_bias).to(device=dev, dtype=torch.float64)
    dp = proj.shape[1]
    w = head.w.to(device=dev, dtype=dtype)
    small_y = 0.5 * math.sqrt(torch.finfo(dtype).eps)
    bi, bj = _tanh_block_shape(n, dp, max_elements, dev)
    # on CPU (OpenMP) the passes run serially in each of `workers` threads, which take whole tasks,
    # so no pass waits on another thread; torch's thread count is restored afterwards
    serial = dev.type == "cpu" and _openmp()
    threads = torch.get_num_threads()
    workers = max(1, min(TANH_THREADS or threads, 64)) if serial else 1
    per_task = min(TANH_CHUNK_ROWS, n // (4 * workers))  # rows of pairs per task, ≥ 4 tasks a thread
    chunk = bi * max(1, per_task // bi)
    n_rows = -(-n // chunk) * chunk
    n_cols = n_rows + bj  # padded: a padded neuron has u = 0 exactly
    local = threading.local()

    def prepare(b: int) -> dict[str, Any]:
        s = _tanh_singles(r[b], shifts[b], s0[b], a[b], proj, offset, head.eps)
        ne = (-s["e"]).to(dtype)
        dh = s["dh"].to(dtype)
        cols = [_pad_rows(t, n_cols)[None] for t in (s["x"].to(dtype), ne, dh, (s["t0"] * s["dh"]).to(dtype))]
        return {
            "b": b,
            "sig": s["sig"],
            "dsig": s["dsig"],
            "e_r": s["e_r"].to(dtype),
            "ermax": s["e_r"].abs().max(),
            "emax": _pad_rows(s["e"].abs().amax(-1), n_cols),
            "rows": [_pad_rows(t, n_rows)[:, None] for t in (s["zi"].to(dtype), ne, dh)],
            # the blocks of columns start where blocks of rows do
            "cols": [tuple(t[:, k : k + bj] for t in cols) for k in range(0, n_rows, bi)],
        }

    def task(ctx: dict[str, Any], i0: int) -> None:
        bufs = getattr(local, "bufs", None)
        if bufs is None:
            bufs = local.bufs = tuple(torch.empty(bi, bj, dp, dtype=dtype, device=dev) for _ in range(3))
        b, sig = ctx["b"], ctx["sig"]
        rows, cols = slice(i0, min(i0 + chunk, n)), slice(i0, n)
        g2 = _gram(shifts[b : b + 1], rows, cols)[0].mul_(2.0)
        add_i, add_j = g2 + a[b, None, cols], g2 + a[b, rows, None]  # |·|² of ij minus that of i, of j
        sig_ij = torch.rsqrt((add_i + a[b, rows, None] + s0[b]) / d + head.eps)
        m, h = sig_ij.shape
        cpq = torch.zeros(3, chunk, n_cols - i0, dtype=torch.float64, device=dev)
        cpq[1, :m, :h] = _rsqrt_step(add_i, sig[rows, None], sig_ij, d)  # p = σ_ij − σ_i
        cpq[2, :m, :h] = _rsqrt_step(add_j, sig[None, cols], sig_ij, d)  # q = σ_ij − σ_j
        torch.sub(cpq[1, :m, :h], ctx["dsig"][None, cols], out=cpq[0, :m, :h])  # c = p − (σ_j − σ0)
        top = cpq.abs()
        cpq = cpq.to(dtype)
        for rb, ib in enumerate(range(i0, rows.stop, bi)):
            nb = -(-(n - ib) // bj)  # blocks of columns from ib
            span = slice(ib - i0, ib - i0 + nb * bj)
            big = top[:, rb * bi : (rb + 1) * bi, span].unflatten(2, (nb, bj)).amax(dim=(1, 3))
            bound = big[0] * ctx["ermax"] + big[1] * ctx["emax"][ib : ib + bi].max()
            bound += big[2] * ctx["emax"][ib : ib + nb * bj].view(nb, bj).amax(1)
            small = (bound <= small_y).tolist()  # |y| ≤ |c| max|e_r| + |p| max|e_i| + |q| max|e_j|
            res = torch.empty(nb, bi * bj, dtype=dtype, device=dev)
            row_parts = tuple(t[ib : ib + bi] for t in ctx["rows"])
            parts = cpq[:, rb * bi : (rb + 1) * bi, span].unflatten(2, (nb, bj)).unsqueeze(-1)
            for k, (cpq_k, out_k) in enumerate(zip(parts.unbind(2), res.unbind(0))):
                c, p, q = cpq_k.unbind(0)
                cols_k = ctx["cols"][ib // bi + k * (bj // bi)]
                _tanh_pair_block(bufs, row_parts, cols_k, c, p, q, ctx["e_r"], w, small[k], out_k)
            # pairs (i, j ≥ ib) as computed, and their mirror (j, i) beyond this block of rows
            res = res.view(nb, bi, bj).transpose(0, 1).reshape(bi, nb * bj)
            mi = min(bi, n - ib)
            out[ib : ib + mi, ib:].add_(res[:mi, : n - ib], alpha=PAS_SIGN)
            out[ib + mi :, ib : ib + mi].add_(res[:mi, mi : n - ib].T, alpha=PAS_SIGN)

    # each element of `out` has one writer per input
    if serial:
        torch.set_num_threads(1)
    pool = (
        ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)) if workers > 1 else None
    )
    try:
        ctx = prepare(0) if batch else None
        for b in range(batch):
            if pool is None:
                for i0 in range(0, n, chunk):
                    task(ctx, i0)
                ctx = prepare(b + 1) if b + 1 < batch else None
            else:
                running = [pool.submit(task, ctx, i0) for i0 in range(0, n, chunk)]
                ctx = prepare(b + 1) if b + 1 < batch else None  # while the pool works
                for f in running:
                    f.result()
    finally:
        if pool is not None:
            pool.shutdown()
        if serial:
            torch.set_num_threads(threads)


def _exact_tanh(
    r: torch.Tensor,
    shifts: torch.Tensor,
    head: NormTanhHead,
    out: torch.Tensor,
    max_elements: int,
    dtype: torch.dtype,
    sq: torch.Tensor | None = None,
) -> None:
    """Add PAS_SIGN · Σ_x Δ_ij of the tanh-pooler head to ``out`` (and Σ_x Δ_ij² to ``sq``), with
    the cancellation-free form of :func:`_exact_tanh_blocks`.

    On CPU one compiled kernel (:func:`_exact_tanh_cpu`) evaluates it, with ``sq`` in the same
    pass; on other devices the torch passes of :func:`_exact_tanh_blocks` do, one input at a time
    when ``sq`` is given.
    """
    if shifts.device.type == "cpu":
        _exact_tanh_cpu(r, shifts, head, out, max_elements, dtype, sq)
    elif sq is None:
        _exact_tanh_blocks(r, shifts, head, out, max_elements, dtype)
    else:
        _per_input_squares(_exact_tanh_blocks, r, shifts, head, out, max_elements, dtype, sq)


def _per_input_squares(
    fn: Callable[..., None],
    r: torch.Tensor,
    shifts: torch.Tensor,
    head: Any,
    out: torch.Tensor,
    max_elements: int,
    dtype: torch.dtype,
    sq: torch.Tensor,
) -> None:
    """``fn`` (an ``_exact_tanh*`` form) one input at a time into a scratch n × n matrix, whose
    values are added to ``out`` and, squared, to ``sq``."""
    one = torch.empty_like(out)
    for b in range(r.shape[0]):
        one.zero_()
        fn(r[b : b + 1], shifts[b : b + 1], head, one, max_elements, dtype)
        out += one
        sq.addcmul_(one, one)


# The CPU kernel of the tanh path. Per pair (i, j > i) and pooler unit k, with A_i = exp(2 z_i),
# B_j = exp(2 x_j) (so that T = tanh(z_i + x_j) = 1 − s, s = 2 / (A_i B_j + 1), and
# 1 − T² = 4 A_i B_j / (A_i B_j + 1)², both to full relative precision), ne = −e, dh = D̂ and
# t0p1 = tanh z0 + 1, the unit's term of Δ_ij is
#     u = (1 − T²) g − D̂_i D̂_j (tanh z0 + T),   g = tanh y / (1 + T tanh y),
# y = c e_r + p ne_i + q ne_j (see _exact_tanh_blocks). The four loops differ only in g, whose
# series is g = y − T y² + (T² − 1/3) y³ − T (T² − 2/3) y⁴ + (2/15 − T² + T⁴) y⁵ + …: its first two
# terms where every |y| of the pair is below sqrt(eps)/2, its first four where every |y| is below
# eps^(1/4)/2 (both equal to g to the dtype's rounding: the next terms are below eps/4 and
# (2/15)·eps/16 relative to y), tanh y from its Taylor polynomial to y⁷ where every |y| is below
# TANH_POLY_Y, and the library tanh otherwise. The sum over k is in float64. error_model="numpy"
# (no zero-division checks) and reassociation of the sum are what let LLVM vectorise the loops; no
# division by zero can occur in them.


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc"})
def _tanh_units_small(i, j, c, p, q, big_a, big_b, ne, dh, er, t0p1, w):
    tp = big_a.dtype.type
    one, two, four = tp(1.0), tp(2.0), tp(4.0)
    acc = 0.0
    for k in range(big_a.shape[1]):
        prod = big_a[i, k] * big_b[j, k]
        inv = one / (prod + one)
        s = two * inv  # 1 − T
        y = c * er[k] + p * ne[i, k] + q * ne[j, k]
        g = y - (one - s) * y * y  # y (1 − T y)
        u = four * prod * inv * inv * g - dh[i, k] * dh[j, k] * (t0p1[k] - s)
        acc += w[k] * u
    return acc


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc"})
def _tanh_units_series(i, j, c, p, q, big_a, big_b, ne, dh, er, t0p1, w):
    tp = big_a.dtype.type
    one, two, four = tp(1.0), tp(2.0), tp(4.0)
    third, two_thirds = tp(1.0 / 3.0), tp(2.0 / 3.0)
    acc = 0.0
    for k in range(big_a.shape[1]):
        prod = big_a[i, k] * big_b[j, k]
        inv = one / (prod + one)
        s = two * inv
        t = one - s
        t2 = t * t
        y = c * er[k] + p * ne[i, k] + q * ne[j, k]
        g = y * (one + y * (y * ((t2 - third) + y * (t * (two_thirds - t2))) - t))
        u = four * prod * inv * inv * g - dh[i, k] * dh[j, k] * (t0p1[k] - s)
        acc += w[k] * u
    return acc


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc"})
def _tanh_units_poly(i, j, c, p, q, big_a, big_b, ne, dh, er, t0p1, w):
    tp = big_a.dtype.type
    one, two, four = tp(1.0), tp(2.0), tp(4.0)
    c3, c5, c7 = tp(-1.0 / 3.0), tp(2.0 / 15.0), tp(-17.0 / 315.0)
    acc = 0.0
    for k in range(big_a.shape[1]):
        prod = big_a[i, k] * big_b[j, k]
        inv = one / (prod + one)
        s = two * inv
        y = c * er[k] + p * ne[i, k] + q * ne[j, k]
        y2 = y * y
        th = y + y * y2 * (c3 + y2 * (c5 + y2 * c7))  # tanh y
        g = th / (one + (one - s) * th)
        u = four * prod * inv * inv * g - dh[i, k] * dh[j, k] * (t0p1[k] - s)
        acc += w[k] * u
    return acc


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _tanh_units_general(i, j, c, p, q, zi, xj, ne, dh, er, t0, w):
    tp = zi.dtype.type
    one, half = tp(1.0), tp(0.5)
    acc = 0.0
    for k in range(zi.shape[1]):
        base = zi[i, k] + xj[j, k]
        t = math.tanh(base)
        y = c * er[k] + p * ne[i, k] + q * ne[j, k]
        th = math.tanh(y)
        den = one + t * th
        if den > half:
            g = (one - t) * (one + t) * th / den
        else:  # T and tanh y near ±1 with opposite signs: the difference itself is O(1)
            g = math.tanh(base + y) - t
        u = g - dh[i, k] * dh[j, k] * (t0[k] + t)
        acc += w[k] * u
    return acc


@numba.njit(cache=True, nogil=True, error_model="numpy", parallel=True)
def _tanh_kernel(
    r0, m, gram, a, sig, dsig, s0, d, eps, big_a, big_b, ne, dh, zi, xj, er, t0, t0p1, w, emax, ermax,
    general, small_y, series_y, poly_y, sign, out, sq, with_sq, row_tile, col_block,
):
    """Δ_ij of the pairs i ∈ [r0, r0 + m), j > i of one input into ``out`` (and Δ² into ``sq``).

    ``gram``: d̃_i·d̃_j for those rows and the columns from r0 on; ``a``, ``sig``, ``dsig``, ``emax``
    per neuron (float64); ``general``: neurons whose pairs take the general loop. Tasks are pairs of
    tiles of rows (t, last − t), so that each has the same number of pairs; each entry of ``out``
    has one writer.
    """
    n = a.shape[0]
    tp = big_a.dtype.type
    tiles = (m + row_tile - 1) // row_tile
    for task in numba.prange((tiles + 1) // 2):
        for side in range(2):
            tile = task if side == 0 else tiles - 1 - task
            if side == 1 and tile == task:
                continue
            lo = r0 + tile * row_tile
            hi = min(lo + row_tile, r0 + m)
            for jb in range(lo + 1, n, col_block):
                for i in range(lo, hi):
                    si, ai = sig[i], a[i]
                    for j in range(max(i + 1, jb), min(jb + col_block, n)):
                        gg = 2.0 * gram[i - r0, j - r0]
                        add_i = gg + a[j]  # |r̃ − d̃_i − d̃_j|² − |r̃ − d̃_i|²
                        add_j = gg + ai
                        sij = 1.0 / math.sqrt((s0 + ai + add_i) / d + eps)
                        sj = sig[j]
                        p = -(add_i / d) * (si * sij) ** 2 / (si + sij)  # σ_ij − σ_i
                        q = -(add_j / d) * (sj * sij) ** 2 / (sj + sij)  # σ_ij − σ_j
                        c = p - dsig[j]
                        bound = abs(c) * ermax + abs(p) * emax[i] + abs(q) * emax[j]  # ≥ max |y|
                        if general[i] or general[j] or bound > poly_y:
                            delta = _tanh_units_general(i, j, tp(c), tp(p), tp(q), zi, xj, ne, dh, er, t0, w)
                        elif bound <= small_y:
                            delta = _tanh_units_small(
                                i, j, tp(c), tp(p), tp(q), big_a, big_b, ne, dh, er, t0p1, w
                            )
                        elif bound <= series_y:
                            delta = _tanh_units_series(
                                i, j, tp(c), tp(p), tp(q), big_a, big_b, ne, dh, er, t0p1, w
                            )
                        else:
                            delta = _tanh_units_poly(
                                i, j, tp(c), tp(p), tp(q), big_a, big_b, ne, dh, er, t0p1, w
                            )
                        out[i, j] += sign * delta
                        out[j, i] += sign * delta
                        if with_sq:
                            sq[i, j] += delta * delta
                            sq[j, i] += delta * delta


@numba.njit(cache=True, nogil=True, error_model="numpy", parallel=True)
def _tanh_prepare(e, e_r, sig, dsig, z0, limit, big_a, big_b, ne, dh, zi, xj, emax, general):
    """The per-neuron vectors of one input from e (n, d_p) and the per-neuron scales, in float64,
    stored in the kernel's dtype: x_i = (σ_i − σ0) e_r − σ_i e_i, z_i = z0 + x_i, D̂_i =
    sinh(x_i) / cosh(z_i), A_i = exp(2 z_i) and B_i = exp(2 x_i) (clipped to exp(±limit): then
    ``general``), −e_i, and max_k |e_ik|."""
    n, dp = e.shape
    for i in numba.prange(n):
        top = 0.0
        wild = False
        for k in range(dp):
            ek = np.float64(e[i, k])
            x = dsig[i] * e_r[k] - sig[i] * ek
            z = z0[k] + x
            top = max(top, abs(ek))
            wild = wild or abs(2.0 * z) > limit or abs(2.0 * x) > limit
            big_a[i, k] = math.exp(min(max(2.0 * z, -limit), limit))
            big_b[i, k] = math.exp(min(max(2.0 * x, -limit), limit))
            ne[i, k] = -ek
            dh[i, k] = math.sinh(x) / math.cosh(z)  # cosh(z_i)·(tanh z_i − tanh z0), never overflows
            zi[i, k] = z
            xj[i, k] = x
        emax[i] = top
        general[i] = wild


def _exact_tanh_cpu(
    r: torch.Tensor,
    shifts: torch.Tensor,
    head: NormTanhHead,
    out: torch.Tensor,
    max_elements: int,
    dtype: torch.dtype,
    sq: torch.Tensor | None = None,
) -> None:
    """The tanh path on CPU: per input, the per-neuron vectors in float64 (:func:`_tanh_prepare`,
    as :func:`_tanh_singles` computes them), then the compiled kernel over all pairs, in ``dtype``
    per element with float64 sums.

    The Gram matrix is taken min(n, max_elements / n) rows at a time; the buffers are allocated
    once per call. Both kernels run on TANH_THREADS (0: torch.get_num_threads()) of numba's
    threads, restored afterwards. With A_i = exp(2 z_i) and B_j = exp(2 x_j) within the dtype's
    range (|2 z| below log(max) − 8), T = tanh(z_i + x_j) needs one division; a neuron with a value
    outside it takes the general loop (tanh itself) in all its pairs.
    """
    if dtype not in (torch.float32, torch.float64):
        raise ConfigError(
            f"exact PAS on a tanh-pooler head computes its pairs in torch.float32 or torch.float64; "
            f"got {arg('pair_dtype')}{dtype}"
        )
    batch, n, d = shifts.shape
    if shifts.dtype not in (torch.float32, torch.float64):
        shifts = shifts.float()  # the Gram products and projections in float32 at least
    r, shifts, s0, a, _ = _norm_terms(r.detach(), shifts.detach(), head.kind)
    proj = (head.pooler_weight * head.gamma).T.to(dtype=torch.float64)  # (d, d_p)
    proj_s = proj.to(shifts.dtype)
    offset = (head.pooler_weight @ head.beta + head.pooler_bias).to(dtype=torch.float64)
    dp = proj.shape[1]
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    limit = math.log(torch.finfo(dtype).max) - 8.0  # exp(±limit) is a normal number
    small_y = 0.5 * math.sqrt(torch.finfo(dtype).eps)
    series_y = 0.5 * torch.finfo(dtype).eps ** 0.25
    w = head.w.to(torch.float64).numpy().astype(np_dtype)
    direct = out.dtype == torch.float64 and out.is_contiguous() and out.device.type == "cpu"
    target = out if direct else torch.zeros(n, n, dtype=torch.float64)
    target_sq = None
    if sq is not None:
        direct_sq = sq.dtype == torch.float64 and sq.is_contiguous() and sq.device.type == "cpu"
        target_sq = sq if direct_sq else torch.zeros(n, n, dtype=torch.float64)
    out_np = target.numpy()
    sq_np = out_np if target_sq is None else target_sq.numpy()
    rows = max(1, min(n, max_elements // max(1, n)))
    col_block = max(8, TANH_COLUMN_BYTES // (3 * dp * np.dtype(np_dtype).itemsize))
    vectors = [np.empty((n, dp), dtype=np_dtype) for _ in range(6)]  # A, B, −e, D̂, z, x
    emax, general = np.empty(n), np.empty(n, dtype=np.bool_)
    e = torch.empty(n, dp, dtype=shifts.dtype)
    gram = torch.empty(rows * n, dtype=shifts.dtype)
    before = numba.get_num_threads()
    threads = max(1, min(TANH_THREADS or torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(threads)
    try:
        for b in range(batch):
            e_r = r[b].double() @ proj  # (d_p,)
            sig0 = torch.rsqrt(s0[b] / d + head.eps)
            sig = torch.rsqrt((s0[b] + a[b]) / d + head.eps)  # (n,)
            dsig = _rsqrt_step(a[b], sig0, sig, d)  # σ_i − σ0
            z0 = sig0 * e_r + offset
            t0 = torch.tanh(z0)
            torch.mm(shifts[b], proj_s, out=e)
            scales = [t.numpy() for t in (e_r, sig, dsig, z0)]
            _tanh_prepare(e.numpy(), *scales, limit, *vectors, emax, general)
            shared = [t.numpy().astype(np_dtype) for t in (e_r, t0, t0 + 1.0)]
            for r0 in range(0, n, rows):
                m = min(rows, n - r0)
                g = gram[: m * (n - r0)].view(1, m, n - r0)
                torch.bmm(shifts[b : b + 1, r0 : r0 + m], shifts[b : b + 1, r0:].transpose(1, 2), out=g)
                _tanh_kernel(
                    r0, m, g[0].numpy(), a[b].numpy(), *scales[1:3], float(s0[b]), float(d),
                    float(head.eps), *vectors, *shared, w, emax, float(e_r.abs().max()), general, small_y,
                    series_y, TANH_POLY_Y, PAS_SIGN, out_np, sq_np, sq is not None, TANH_ROW_TILE, col_block,
                )
    finally:
        numba.set_num_threads(before)
    if not direct:
        out += target.to(out)
    if sq is not None and target_sq is not sq:
        sq += target_sq.to(sq)


def _exact_tanh_direct(
    r: torch.Tensor,
    shifts: torch.Tensor,
    head: NormTanhHead,
    out: torch.Tensor,
    max_elements: int,
    dtype: torch.dtype,
    sq: torch.Tensor | None = None,
) -> None:
    """The reference evaluation of the tanh path: the four logits ℓ, ℓ_{−i}, ℓ_{−j}, ℓ_{−ij} of
    every pair, each a tanh of the pair's pooler pre-activation, combined (``_add_singles``).

    Exact in fp64, but Δ_ij is then a difference of logits of size ~|ℓ|: in fp32 it was off by up to
    23% of max |φ| on MiniLM. It takes ~2.6x the time of :func:`_exact_tanh_blocks` in fp64 and ~6x
    in fp32. Kept as the reference for comparisons (tests, benchmarks/bench_synergy.py). ``sq``: as
    in :func:`_exact_tanh` (one input at a time).
    """
    if sq is not None:
        _per_input_squares(_exact_tanh_direct, r, shifts, head, out, max_elements, dtype, sq)
        return
    batch, n, d = shifts.shape
    r, shifts, s0, a, _ = _norm_terms(r, shifts, head.kind)
    dev = shifts.device
    proj = (head.pooler_weight * head.gamma).T.to(device=dev)  # (d, d_p): x̃ -> P(γ⊙x̃)
    offset = (head.pooler_weight @ head.beta + head.pooler_bias).to(device=dev, dtype=dtype)
    w = head.w.to(device=dev, dtype=dtype)
    e_r = (r.double() @ proj).to(dtype)  # (B, d_p)
    e = (shifts @ proj.to(shifts.dtype)).to(dtype)  # (B, n, d_p)
    eps = head.eps
    scale0 = torch.rsqrt(s0 / d + eps).to(dtype)
    scale_i = torch.rsqrt((s0.unsqueeze(1) + a) / d + eps).to(dtype)
    ell0 = torch.tanh(e_r * scale0[:, None] + offset) @ w
    ell_i = torch.tanh((e_r.unsqueeze(1) - e) * scale_i[..., None] + offset) @ w
    _add_singles(out, ell0.double(), ell_i.double(), PAS_SIGN)
    size = _block_size(n, e.shape[-1], max_elements)
    blocks = _blocks(n, size)
    for b in range(batch):
        shifts_b, e_b, e_rb = shifts[b : b + 1], e[b], e_r[b]
        for bi, block_i in enumerate(blocks):
            base_i = e_rb - e_b[block_i]  # (bi, d_p)
            for block_j in blocks[bi:]:
                sq = (
                    s0[b]
                    + a[b, block_i, None]
                    + a[b, None, block_j]
                    + 2.0 * _gram(shifts_b, block_i, block_j)[0]
                )
                scale = torch.rsqrt(sq / d + eps).to(dtype)
                z = base_i.unsqueeze(1) - e_b[block_j].unsqueeze(0)  # (bi, bj, d_p), in place below
                ell_ij = z.mul_(scale.unsqueeze(-1)).add_(offset).tanh_() @ w
                _add_sym(out, block_i, block_j, PAS_SIGN * ell_ij.double())


@functools.cache
def _openmp() -> bool:
    """Whether ATen's intra-op parallelism is OpenMP (where torch.set_num_threads is per thread)."""
    return "parallel backend: OpenMP" in torch.__config__.parallel_info()


def _exact_generic(
    r: torch.Tensor,
    shifts: torch.Tensor,
    f: Callable[[torch.Tensor], torch.Tensor],
    out: torch.Tensor,
    max_elements: int,
) -> None:
    batch, n, d = shifts.shape
    with torch.no_grad():
        ell0 = f(r).double().reshape(batch)
        ell_i = f(r.unsqueeze(1) - shifts).double().reshape(batch, n)
        _add_singles(out, ell0, ell_i, PAS_SIGN)
        size = _block_size(n, d, max_elements)
        blocks = _blocks(n, size)
        for b in range(batch):
            rest = r[b] - shifts[b]  # (n, d): r − d_i
            for bi, block_i in enumerate(blocks):
                for block_j in blocks[bi:]:
                    x = rest[block_i].unsqueeze(1) - shifts[b, block_j].unsqueeze(0)
                    _add_sym(out, block_i, block_j, PAS_SIGN * f(x).double().reshape(x.shape[:2]))


def exact_local_sum(
    r: torch.Tensor,
    shifts: torch.Tensor,
    head: NormAffineHead | NormTanhHead | Callable[[torch.Tensor], torch.Tensor],
    out: torch.Tensor,
    *,
    max_elements: int = MAX_ELEMENTS,
    dtype: torch.dtype = torch.float64,
    sq: torch.Tensor | None = None,
) -> None:
    """Add PAS_SIGN · Σ_x Δ_ij(x) for one batch to ``out`` (n, n), exactly (no approximation).

    ``r`` (B, d): residuals at the readout position; ``shifts`` (B, n, d): the d_i of
    :func:`residual_shifts`; ``head``: a structured head (closed forms) or any callable f mapping
    (..., d) -> (...) (generic path, f evaluated at r − d_i − d_j for every pair). ``dtype`` is the
    precision of the tanh path's per-pair arithmetic (the Gram path always combines in fp64).
    The tanh path computes Δ_ij without cancelling the four logits (:func:`_exact_tanh`), so
    float32 is accurate there: on MiniLM (all-MiniLM-L6-v2, reference or zero ablation) it agrees
    with the direct fp64 evaluation to 6e-8 to 1.1e-7 of max |Σ_x Δ|, where the direct fp32
    evaluation was off by up to 23%. On CPU a compiled kernel evaluates it on
    torch.get_num_threads() threads (numba's): ~0.4 s of one core per input in float32 and ~0.55 s
    in float64 (n = 1,536, d_p = 384, setup included). float64, the default, is the reference
    (~1e-12 relative to a brute force in extended precision).
    The diagonal of ``out`` receives meaningless values; :meth:`PairSums.mean` zeroes it.
    ``sq``: if given, Σ_x Δ_ij(x)² is added to it (the tanh kernel on CPU adds both in one pass;
    otherwise the inputs are evaluated one at a time into a scratch n × n matrix, which adds O(n²)
    work per input to the O(n²·d) of the pairs).
    """
    if isinstance(head, NormTanhHead):
        _exact_tanh(r, shifts, head, out, max_elements, dtype, sq=sq)
        return
    if sq is not None:
        one = torch.empty_like(out)
        for b in range(r.shape[0]):
            one.zero_()
            exact_local_sum(
                r[b : b + 1], shifts[b : b + 1], head, one, max_elements=max_elements, dtype=dtype
            )
            out += one
            sq.addcmul_(one, one)
        return
    if isinstance(head, NormAffineHead):
        _exact_affine(r, shifts, head, out, max_elements)
    else:
        _exact_generic(r, shifts, head, out, max_elements)


def head_hessians(f: Callable[[torch.Tensor], torch.Tensor], r: torch.Tensor) -> torch.Tensor:
    """The d × d Hessian of the scalar head ``f`` at every residual of ``r`` (B, d) -> (B, d, d)."""
    from torch.func import hessian, vmap

    return vmap(hessian(f))(r)


def head_gradients(f: Callable[[torch.Tensor], torch.Tensor], r: torch.Tensor) -> torch.Tensor:
    """The gradient of the scalar head ``f`` at every residual of ``r`` (B, d) -> (B, d)."""
    from torch.func import grad, vmap

    return vmap(grad(f))(r)


def taylor_sum(
    shifts: torch.Tensor, hessians: torch.Tensor, out: torch.Tensor, sq: torch.Tensor | None = None
) -> None:
    """Add PAS_SIGN · Σ_x d_iᵀ H_r d_j (the second-order Taylor value of Δ_ij) to ``out``.

    ``hessians`` (B, d, d) are the head's Hessians in residual space (:func:`head_hessians`);
    the n × n product is one contraction over (input, d), never an n × n Hessian. ``sq``: if
    given, Σ_x (d_iᵀ H_r d_j)² is added to it (one n × n product per input instead of one
    contraction for the batch: the same multiply-adds).
    """
    hd = torch.bmm(shifts, hessians.to(shifts.dtype))  # (B, n, d)
    if sq is None:
        out += PAS_SIGN * torch.tensordot(hd, shifts, dims=([0, 2], [0, 2])).to(out.dtype)
        return
    for b in range(shifts.shape[0]):
        one = (hd[b] @ shifts[b].T).to(out.dtype)
        out.add_(one, alpha=PAS_SIGN)
        sq.addcmul_(one, one)


def grad_outer_sum(
    grads: torch.Tensor, a: torch.Tensor, out: torch.Tensor, sq: torch.Tensor | None = None
) -> None:
    """Add GRAD_OUTER_SIGN · Σ_x (g⊙a)(g⊙a)ᵀ to ``out``; g = ∂ℓ/∂a (B, n), a (B, n). ``sq``: if
    given, Σ_x ((g⊙a)_i (g⊙a)_j)² = ((g⊙a)²)ᵀ (g⊙a)² is added to it."""
    v = (grads * a).to(out.dtype)
    out += GRAD_OUTER_SIGN * (v.T @ v)
    if sq is not None:
        v2 = v * v
        sq += v2.T @ v2
