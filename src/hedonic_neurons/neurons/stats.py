"""Streaming sufficient statistics of neuron activations: count, sum, sum of outer products.

The sums are additive, so batches, resumed runs (``state_dict``) and distributed ranks
(``all_reduce``) combine exactly. Nothing larger than one batch of activations is ever held.
"""

from __future__ import annotations

from typing import Any

import torch

from hedonic_neurons.errors import DataError

# A neuron whose variance is below this fraction of its mean square (times the accumulator's
# machine epsilon) is treated as constant: rounding in E[a^2] - E[a]^2 is of that size.
_ZERO_VAR_EPS_FACTOR = 100.0


class Moments:
    """Running count, Σa and Σaaᵀ of n-dimensional samples, accumulated in ``dtype`` on ``device``.

    ``update`` takes a (N, n) batch of samples (one row per token or per input, depending on
    the pooling). ``mean``, ``cov`` and ``corr`` are computed from the sums at any time.
    """

    def __init__(self, n: int, dtype: torch.dtype = torch.float64, device: Any = None) -> None:
        if dtype not in (torch.float64, torch.float32):
            raise DataError(f"Moments accumulate in float64 or float32, not {dtype}")
        self.n = int(n)
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.count = torch.zeros((), dtype=torch.int64, device=self.device)
        self.sum = torch.zeros(self.n, dtype=dtype, device=self.device)
        self.outer = torch.zeros(self.n, self.n, dtype=dtype, device=self.device)

    def update(self, a: torch.Tensor) -> None:
        """Add the rows of ``a`` (N, n) as N samples (no gradient is kept)."""
        if a.dim() != 2 or a.shape[1] != self.n:
            raise DataError(f"Moments.update expects a (N, {self.n}) tensor, got shape {tuple(a.shape)}")
        a = a.detach().to(device=self.device, dtype=self.dtype)
        self.count += a.shape[0]
        self.sum += a.sum(0)
        self.outer.addmm_(a.T, a)

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
        count = self._check_count(ddof + 1)
        mean = self.sum / count
        centred = self.outer - count * torch.outer(mean, mean)
        return centred / (count - ddof)

    def corr(self) -> torch.Tensor:
        """Pearson correlation matrix (n, n). A neuron with (numerically) zero variance has
        correlation 0 with every neuron, itself included; all other diagonal entries are 1."""
        count = self._check_count(2)
        cov = self.cov(ddof=0)
        var = cov.diagonal().clamp(min=0)
        mean_sq = self.outer.diagonal() / count
        tol = _ZERO_VAR_EPS_FACTOR * torch.finfo(self.dtype).eps
        live = var > tol * mean_sq
        std = torch.where(live, var.sqrt(), torch.ones_like(var))
        corr = (cov / std[:, None] / std[None, :]).clamp(-1.0, 1.0)
        corr = corr * (live[:, None] & live[None, :])
        idx = torch.arange(self.n, device=self.device)
        corr[idx, idx] = live.to(self.dtype)
        return corr

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The sums as tensors (e.g. for ``safetensors.torch.save_file``); see :meth:`from_state_dict`."""
        return {"count": self.count.clone(), "sum": self.sum.clone(), "outer": self.outer.clone()}

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], device: Any = None) -> Moments:
        """Rebuild an accumulator saved with :meth:`state_dict` (dtype from the stored sums)."""
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
        moments = cls(n, dtype=total.dtype, device=device if device is not None else total.device)
        moments.count += count.reshape(()).to(moments.device, torch.int64)
        moments.sum += total.to(moments.device)
        moments.outer += outer.to(moments.device)
        return moments

    def __repr__(self) -> str:
        return f"Moments(n={self.n}, count={int(self.count)}, dtype={self.dtype}, device={self.device})"
