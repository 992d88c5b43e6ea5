"""Pairwise Ablation Synergy (method A4, A5): exact local PAS in closed form, taylor, grad-outer.

Ablating neuron i at the readout position moves the residual r by a per-input vector d_i
(:func:`residual_shifts`), so with a local head f the ablated logits are
ℓ_{−S} = f(r − Σ_{i∈S} d_i) and

    Δ_ij = ℓ − ℓ_{−i} − ℓ_{−j} + ℓ_{−ij},    φ_PAS(i, j) = PAS_SIGN · E_x[Δ_ij(x)].

Everything here adds per-input values into a streaming :class:`PairSums` (an n × n sum in fp64
and a count), so memory never grows with the data and distributed runs reduce exactly.

Cost per input (n neurons, d = d_model, d_p = pooler width):

- Gram path (norm then affine score, :class:`~hedonic_neurons.synergy.heads.NormAffineHead`):
  one Gram block D_I D_Jᵀ per pair of neuron blocks, O(n²·d) multiply-adds (half of it, by
  symmetry) plus O(n²) elementwise work; memory O(B·block²).
- tanh path (:class:`~hedonic_neurons.synergy.heads.NormTanhHead`): the Gram matrix for the
  norm, plus O(n²·d_p) tanh evaluations (half, by symmetry); memory O(block²·d_p).
- generic: f evaluated at n²/2 points per input, in chunks.
- taylor: one d × d Hessian of f per input (torch.func), then D H Dᵀ, O(n·d² + n²·d).
- grad-outer: one gradient of f per input, then an outer product, O(n·d + n²).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from hedonic_neurons.synergy.heads import NormAffineHead, NormTanhHead

#: φ_PAS = PAS_SIGN · E[Δ_ij] (method A4: positive means complements). Part B's −E[Δ] is not used.
PAS_SIGN = 1.0
#: ``grad-outer`` is the public code's matrix as it is: GRAD_OUTER_SIGN · E[(g⊙a)(g⊙a)ᵀ].
GRAD_OUTER_SIGN = -1.0

#: Default bound on the elements of one temporary block (keeps memory flat in n and in the data).
MAX_ELEMENTS = 1 << 22


class PairSums:
    """Streaming sum of a per-input n × n quantity, with the number of inputs it covers.

    ``sum`` is an (n, n) tensor (fp64 by default) on ``device``; ``count`` the number of inputs;
    ``tokens`` the number of non-pad tokens those inputs had (for the record). The sums are
    additive: :meth:`merge` and :meth:`all_reduce` combine shards exactly.
    """

    def __init__(self, n: int, dtype: torch.dtype = torch.float64, device: Any = None) -> None:
        self.sum = torch.zeros(n, n, dtype=dtype, device=device)
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

    def merge(self, other: PairSums) -> PairSums:
        self.sum += other.sum.to(self.sum)
        self.count += other.count
        self.tokens += other.tokens
        return self

    def all_reduce(self) -> PairSums:
        """Sum over all processes (no-op unless torch.distributed is initialised)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            counts = torch.tensor([self.count, self.tokens], dtype=torch.float64, device=self.sum.device)
            dist.all_reduce(self.sum)
            dist.all_reduce(counts)
            self.count, self.tokens = (round(c) for c in counts.tolist())
        return self

    def state_dict(self) -> dict[str, Any]:
        return {"sum": self.sum.detach().cpu(), "count": self.count, "tokens": self.tokens}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], device: Any = None) -> PairSums:
        total = state["sum"]
        obj = cls(int(total.shape[0]), dtype=total.dtype, device=device)
        obj.sum.copy_(total)
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


def _exact_tanh(
    r: torch.Tensor,
    shifts: torch.Tensor,
    head: NormTanhHead,
    out: torch.Tensor,
    max_elements: int,
    dtype: torch.dtype,
) -> None:
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
) -> None:
    """Add PAS_SIGN · Σ_x Δ_ij(x) for one batch to ``out`` (n, n), exactly (no approximation).

    ``r`` (B, d): residuals at the readout position; ``shifts`` (B, n, d): the d_i of
    :func:`residual_shifts`; ``head``: a structured head (closed forms) or any callable f mapping
    (..., d) -> (...) (generic path, f evaluated at r − d_i − d_j for every pair). ``dtype`` is the
    precision of the tanh path's elementwise work (the Gram path always combines in fp64).
    The diagonal of ``out`` receives meaningless values; :meth:`PairSums.mean` zeroes it.
    """
    if isinstance(head, NormAffineHead):
        _exact_affine(r, shifts, head, out, max_elements)
    elif isinstance(head, NormTanhHead):
        _exact_tanh(r, shifts, head, out, max_elements, dtype)
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


def taylor_sum(shifts: torch.Tensor, hessians: torch.Tensor, out: torch.Tensor) -> None:
    """Add PAS_SIGN · Σ_x d_iᵀ H_r d_j (the second-order Taylor value of Δ_ij) to ``out``.

    ``hessians`` (B, d, d) are the head's Hessians in residual space (:func:`head_hessians`);
    the n × n product is one contraction over (input, d), never an n × n Hessian.
    """
    hd = torch.bmm(shifts, hessians.to(shifts.dtype))  # (B, n, d)
    out += PAS_SIGN * torch.tensordot(hd, shifts, dims=([0, 2], [0, 2])).to(out.dtype)


def grad_outer_sum(grads: torch.Tensor, a: torch.Tensor, out: torch.Tensor) -> None:
    """Add GRAD_OUTER_SIGN · Σ_x (g⊙a)(g⊙a)ᵀ to ``out``; g = ∂ℓ/∂a (B, n), a (B, n)."""
    v = (grads * a).to(out.dtype)
    out += GRAD_OUTER_SIGN * (v.T @ v)
