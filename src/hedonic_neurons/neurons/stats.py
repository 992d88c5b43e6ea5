"""Streaming sufficient statistics of neuron activations: count, sum, sum of outer products.

The sums are additive, so batches, resumed runs (``state_dict``) and distributed ranks
(``all_reduce``) combine exactly. Nothing larger than one batch of activations is ever held.

Precision (``accumulate``). The running sums are kept in ``dtype`` (float64 by default) in both
modes; what differs is the per-batch product aᵀa, the dominant cost:

- ``"fp64"``: every batch is cast to ``dtype`` and aᵀa is one float64 GEMM (the original path,
  bit for bit).
- ``"mixed"``: aᵀa is computed in the batch's own precision (float32; float64 for float64 input;
  bfloat16 / float16 batches are computed in float32, never in half precision) and *added* into
  the float64 running sums. Before the product each batch is shifted by a per-neuron reference c,
  the running mean of the samples seen so far (the batch's own mean for the first batch), rounded
  to float32: x = a − c. The sums stay plain (unshifted) float64 sums: the exact identities
  Σaaᵀ = Σxxᵀ + c(Σx)ᵀ + (Σx)cᵀ + N ccᵀ and Σa = Σx + N c are applied in float64. Only the
  upper block triangle of xᵀx is computed (strips of :data:`STRIP` rows, about 58% of the
  FLOPs for n = 1,536); the lower triangle is mirrored from it when the sums are read.

Error bound of ``"mixed"``. The float32 product of one batch of N_b rows has, entry by entry,
|δ(Σ_t x_ti x_tj)| ≤ γ(N_b)·Σ_t |x_ti||x_tj| ≤ γ(N_b)·N_b·max_t |x_t|², γ(k) = k·u/(1 − k·u),
u = u_fp32 = 2⁻²⁴ ≈ 6e-8 (worst case; blocked BLAS sums are typically ~√N_b·u). As x is centred
on c ≈ μ, Σ_t |x_ti||x_tj| ≤ N_b σ_i σ_j (1 + η_i²)^½ (1 + η_j²)^½ with η = |μ_b − c|/σ_b for the
batch's mean and spread: the rounding is relative to the variances, not to E[a²], so a mean
offset far larger than σ causes no cancellation in cov = E[aaᵀ] − μμᵀ. (The c terms cancel
algebraically in that float64 formula, so an error δ in the float32 Σx moves cov only by
~(c − μ)δᵀ/N; the float32 a − c is exact when a is within a factor 2 of c and otherwise rounds
relative to |a − c|.) Each batch's product is added into float64, so the errors of the batches
add in absolute terms as the sums do: the relative error of cov, hence the absolute error of
ρ = corr (and of φ_OCA = (1 − |cos|)·ρ), is ≲ γ(N_b)·(1 + η²), set by the rows per batch and not
growing with the number of batches. The float64 part adds u_fp64·E[a²]/σ², as in ``"fp64"``.
Measured on MiniLM (≈1,500 tokens per batch): max|Δφ| / max|φ| ≈ 1e-6, top-2 partners of every
neuron unchanged (``benchmarks/bench_oca.py``). On CUDA the float32 GEMM follows PyTorch's
matmul precision (``torch.backends.cuda.matmul.allow_tf32``, off by default: full float32; this
module does not change it); with TF32 on, u becomes 2⁻¹¹ ≈ 4.9e-4 in the bound above.

``dtype=torch.float32`` (float32 running sums) is the legacy low-precision option, with error
growing with the number of batches; it is independent of ``accumulate``.
"""

from __future__ import annotations

from typing import Any

import torch

from hedonic_neurons.errors import DataError

# A neuron whose variance is below this fraction of its mean square (times the accumulator's
# machine epsilon) is treated as constant: rounding in E[a^2] - E[a]^2 is of that size.
_ZERO_VAR_EPS_FACTOR = 100.0

#: Accumulation modes of :class:`Moments` (see the module docstring).
ACCUMULATE = ("fp64", "mixed")
#: Rows of neurons per strip of the blocked upper-triangular product in ``"mixed"`` mode.
STRIP = 256


def _strips(n: int, size: int) -> list[tuple[int, int]]:
    """Contiguous (start, end) neuron ranges of at most ``size``."""
    return [(s, min(s + size, n)) for s in range(0, n, size)]


class Moments:
    """Running count, Σa and Σaaᵀ of n-dimensional samples, accumulated in ``dtype`` on ``device``.

    ``update`` takes a (N, n) batch of samples (one row per token or per input, depending on
    the pooling). ``mean``, ``cov`` and ``corr`` are computed from the sums at any time.
    ``accumulate``: ``"fp64"`` (default; aᵀa in ``dtype``) or ``"mixed"`` (aᵀa of the shifted batch
    in its own precision, float32 for float32 or half-precision input, added into the ``dtype``
    sums); see the module docstring for the error bound. The state (``count``, ``sum``,
    ``outer``) has the same meaning and format in both modes.
    """

    def __init__(
        self,
        n: int,
        dtype: torch.dtype = torch.float64,
        device: Any = None,
        accumulate: str = "fp64",
        workspace: dict[Any, torch.Tensor] | None = None,
    ) -> None:
        if dtype not in (torch.float64, torch.float32):
            raise DataError(f"Moments accumulate in float64 or float32, not {dtype}")
        if accumulate not in ACCUMULATE:
            raise DataError(f"unknown accumulate '{accumulate}' (expected one of {', '.join(ACCUMULATE)})")
        self.n = int(n)
        self.dtype = dtype
        self.accumulate = accumulate
        #: scratch buffers of ``"mixed"`` updates; accumulators that update one after another
        #: (e.g. the layers of one forward pass) may share one dict to hold them once
        self.workspace: dict[Any, torch.Tensor] = {} if workspace is None else workspace
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.count = torch.zeros((), dtype=torch.int64, device=self.device)
        self.sum = torch.zeros(self.n, dtype=dtype, device=self.device)
        self._outer = torch.zeros(self.n, self.n, dtype=dtype, device=self.device)
        # "mixed" writes only the upper block triangle (strips fixed at construction); the lower
        # one is stale until mirrored
        self._strips = _strips(self.n, STRIP)
        self._stale = False

    @property
    def outer(self) -> torch.Tensor:
        """Σaaᵀ (n, n), in ``dtype`` (the lower triangle is brought up to date first)."""
        if self._stale:
            self._mirror()
        return self._outer

    @outer.setter
    def outer(self, value: torch.Tensor) -> None:
        self._outer = value
        self._stale = False

    def _mirror(self) -> None:
        for s, e in self._strips[:-1]:
            self._outer[e:, s:e].copy_(self._outer[s:e, e:].T)
        self._stale = False

    def update(self, a: torch.Tensor) -> None:
        """Add the rows of ``a`` (N, n) as N samples (no gradient is kept)."""
        if a.dim() != 2 or a.shape[1] != self.n:
            raise DataError(f"Moments.update expects a (N, {self.n}) tensor, got shape {tuple(a.shape)}")
        if self.accumulate == "mixed":
            self._update_mixed(a)
            return
        a = a.detach().to(device=self.device, dtype=self.dtype)
        self.count += a.shape[0]
        self.sum += a.sum(0)
        self._outer.addmm_(a.T, a)

    def _scratch(self, name: str, numel: int, dtype: torch.dtype) -> torch.Tensor:
        """A flat reusable buffer of at least ``numel`` elements from :attr:`workspace` (allocating
        per batch would cost page faults, and the buffers may be shared between accumulators)."""
        key = (name, dtype, self.device)
        buf = self.workspace.get(key)
        if buf is None or buf.numel() < numel:
            grown = numel if buf is None else max(numel, buf.numel() * 5 // 4)
            buf = torch.empty(grown, dtype=dtype, device=self.device)
            self.workspace[key] = buf
        return buf[:numel]

    def _reference(self, a: torch.Tensor, *, host: bool) -> torch.Tensor:
        """The shift of a ``"mixed"`` batch ``a`` before rounding: the running mean so far (a
        function of the checkpointed state, so a resumed run shifts exactly as the uninterrupted
        one), or the batch mean for the first batch. ``host=False`` makes the same choice
        without a device-to-host sync (for accelerators)."""
        if host:
            seen = int(self.count)
            return self.sum / seen if seen else a.sum(0, dtype=self.dtype) / a.shape[0]
        first = a.sum(0, dtype=self.dtype) / a.shape[0]
        return torch.where(self.count > 0, self.sum / self.count.clamp(min=1), first)

    def _update_mixed(self, a: torch.Tensor) -> None:
        rows, n = int(a.shape[0]), self.n
        if rows == 0:
            return
        work = a.dtype if a.dtype in (torch.float32, torch.float64) else torch.float32
        acc = self.dtype
        a = a.detach()
        own = a.dtype != work or a.device != self.device
        if own:  # a converted copy, ours to overwrite
            a = a.to(device=self.device, dtype=work)
        c = self._reference(a, host=self.device.type == "cpu").to(work)
        c_acc = c.to(acc)  # exactly the shift that is subtracted
        x = a.sub_(c) if own else torch.sub(a, c, out=self._scratch("x", rows * n, work).view(rows, n))
        # Σx in the working precision: an error δ in it moves cov by ~(c − μ)δᵀ/N, not by cδᵀ
        # (the c terms cancel), so it is not amplified by the mean offset
        sx = x.sum(0).to(acc)
        self.count += rows
        self.sum += sx + rows * c_acc
        # Σaaᵀ += xᵀx + c sxᵀ + sx cᵀ + N ccᵀ = xᵀx + [c, u] [u, c]ᵀ with u = sx + N/2 c
        u = sx + (0.5 * rows) * c_acc
        left = torch.stack([c_acc, u], 1)
        right = torch.stack([u, c_acc], 0)
        out = self._outer
        strips = self._strips
        if work != acc:
            size = (strips[0][1] - strips[0][0]) * n
            gram, gram_acc = self._scratch("gram", size, work), self._scratch("gram_acc", size, acc)
        for s, e in strips:
            block = out[s:e, s:]
            if work == acc:
                block.addmm_(x[:, s:e].T, x[:, s:])
            else:
                shape = (e - s, n - s)
                g = torch.mm(x[:, s:e].T, x[:, s:], out=gram[: shape[0] * shape[1]].view(shape))
                block.add_(gram_acc[: g.numel()].view(shape).copy_(g))
            block.addmm_(left[s:e], right[:, s:])
        self._stale = self._stale or len(strips) > 1

    def merge(self, other: Moments) -> Moments:
        """Add another accumulator's sums into this one (same n); returns self."""
        if other.n != self.n:
            raise DataError(f"cannot merge Moments of {other.n} neurons into Moments of {self.n}")
        self.count += other.count.to(self.device)
        self.sum += other.sum.to(self.device, self.dtype)
        self.outer += other.outer.to(self.device, self.dtype)
        return self

    def all_reduce(self) -> Moments:
        """Sum the accumulators of all ranks in place (torch.distributed); no-op when not initialised."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            for t in (self.count, self.sum, self.outer):
                dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return self

    def _check_count(self, least: int) -> int:
        count = int(self.count)
        if count < least:
            raise DataError(f"Moments hold {count} samples; at least {least} needed for this statistic")
        return count

    def mean(self) -> torch.Tensor:
        """Mean activation per neuron, (n,)."""
        return self.sum / self._check_count(1)

    def cov(self, ddof: int = 1) -> torch.Tensor:
        """Covariance matrix (n, n); ``ddof=1`` (the default, as ``numpy.cov``) divides by N - 1."""
        return self.cov_rows(slice(None), ddof)

    def corr(self) -> torch.Tensor:
        """Pearson correlation matrix (n, n). A neuron with (numerically) zero variance has
        correlation 0 with every neuron, itself included; all other diagonal entries are 1."""
        return self.corr_rows(slice(None))

    def cov_rows(self, rows: slice, ddof: int = 1) -> torch.Tensor:
        """Rows ``rows`` of :meth:`cov` (a (len(rows), n) block; nothing n × n is made)."""
        count = self._check_count(ddof + 1)
        mean = self.sum / count
        centred = self.outer[rows] - count * torch.outer(mean[rows], mean)
        return centred.div_(count - ddof)

    def corr_rows(self, rows: slice) -> torch.Tensor:
        """Rows ``rows`` of :meth:`corr` (a (len(rows), n) block; nothing n × n is made)."""
        count = self._check_count(2)
        mean = self.sum / count
        outer_diag = self.outer.diagonal()
        var = (outer_diag / count - mean * mean).clamp(min=0)
        tol = _ZERO_VAR_EPS_FACTOR * torch.finfo(self.dtype).eps
        live = var > tol * (outer_diag / count)
        std = torch.where(live, var.sqrt(), torch.ones_like(var))
        corr = self.cov_rows(rows, ddof=0)
        corr.div_(std[rows, None]).div_(std[None, :]).clamp_(-1.0, 1.0)
        corr.mul_(live[rows, None] & live[None, :])
        idx = torch.arange(self.n, device=self.device)[rows]
        corr[torch.arange(idx.numel(), device=self.device), idx] = live[rows].to(self.dtype)
        return corr

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The sums as tensors (e.g. for ``safetensors.torch.save_file``); see :meth:`from_state_dict`."""
        return {"count": self.count.clone(), "sum": self.sum.clone(), "outer": self.outer.clone()}

    @classmethod
    def from_state_dict(
        cls, state: dict[str, torch.Tensor], device: Any = None, accumulate: str = "fp64"
    ) -> Moments:
        """Rebuild an accumulator saved with :meth:`state_dict` (dtype from the stored sums; the
        state is the same in both ``accumulate`` modes, so either can continue it)."""
        try:
            total, outer, count = state["sum"], state["outer"], state["count"]
        except KeyError as exc:
            raise DataError(f"Moments state lacks '{exc.args[0]}' (expected count, sum, outer)") from None
        n = int(total.shape[0])
        if tuple(outer.shape) != (n, n) or count.numel() != 1:
            raise DataError(
                f"Moments state has sum {tuple(total.shape)}, outer {tuple(outer.shape)}, count "
                f"{tuple(count.shape)}; expected (n,), (n, n) and a scalar"
            )
        moments = cls(
            n,
            dtype=total.dtype,
            device=device if device is not None else total.device,
            accumulate=accumulate,
        )
        moments.count += count.reshape(()).to(moments.device, torch.int64)
        moments.sum += total.to(moments.device)
        moments.outer += outer.to(moments.device)
        return moments

    def __repr__(self) -> str:
        return (
            f"Moments(n={self.n}, count={int(self.count)}, dtype={self.dtype}, device={self.device}, "
            f"accumulate={self.accumulate!r})"
        )
