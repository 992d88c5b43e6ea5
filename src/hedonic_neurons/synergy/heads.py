"""The structure of a layer-local head, so that exact PAS has a closed form.

A local head ``f`` maps a residual vector r (d,) to the scalar logit (the model's own head). Exact local PAS
evaluates ``f`` at r − Σ_{i∈S} d_i for every pair, and that is cheap when ``f`` has one of two
shapes, which :func:`structured_head` reads off a LocalHead (and checks numerically):

- :class:`NormAffineHead`: a norm, then an affine score: f(x) = u·z(x) + c with
  z(x) = x̃ / sqrt(|x̃|²/d + eps), x̃ = x − mean(x) for LayerNorm and x̃ = x for RMSNorm. The norm's
  weight and bias, and the score layer, fold into (u, c). Pre-LN decoders (LLaMA, Mistral, Qwen2,
  GPT-NeoX, GPT-2) have this head. Without a norm (``kind=None``), f(x) = u·x + c.
- :class:`NormTanhHead`: a LayerNorm, then a tanh pooler, then an affine score:
  f(x) = c·tanh(P·(γ⊙z(x) + β) + p) + b (BERT).

Anything else is handled by evaluating ``f`` itself on chunks of pairs (the generic path).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

NormKind = Literal["rms", "layer"]


@dataclass
class NormAffineHead:
    """f(x) = u·z(x) + c, z the (weightless) norm of ``kind`` with ``eps``; ``kind=None``: z(x) = x."""

    kind: NormKind | None
    eps: float
    u: torch.Tensor  # (d,)
    c: float

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return normalise(x.to(self.u.dtype), self.kind, self.eps) @ self.u + self.c


@dataclass
class NormTanhHead:
    """f(x) = w·tanh(P·(γ⊙z(x) + β) + p) + b, z a weightless LayerNorm (BERT's head)."""

    kind: NormKind
    eps: float
    gamma: torch.Tensor  # (d,)
    beta: torch.Tensor  # (d,)
    pooler_weight: torch.Tensor  # (d_p, d)
    pooler_bias: torch.Tensor  # (d_p,)
    w: torch.Tensor  # (d_p,)
    b: float

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = self.gamma * normalise(x.to(self.gamma.dtype), self.kind, self.eps) + self.beta
        return torch.tanh(y @ self.pooler_weight.T + self.pooler_bias) @ self.w + self.b


def normalise(x: torch.Tensor, kind: NormKind | None, eps: float) -> torch.Tensor:
    """The weightless norm z(x) over the last axis (identity when ``kind`` is None)."""
    if kind is None:
        return x
    if kind == "layer":
        x = x - x.mean(-1, keepdim=True)
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def norm_kind(module: nn.Module | None) -> tuple[NormKind, float] | None:
    """(kind, eps) of a LayerNorm or an RMSNorm-style module, None if it is neither."""
    if module is None:
        return None
    if isinstance(module, nn.LayerNorm):
        return "layer", float(module.eps)
    if isinstance(module, nn.RMSNorm):
        return "rms", float(module.eps if module.eps is not None else torch.finfo(torch.float32).eps)
    eps = getattr(module, "variance_epsilon", None)
    if eps is None:
        eps = getattr(module, "eps", None)
    if eps is not None and "rms" in type(module).__name__.lower():
        return "rms", float(eps)
    return None


def _probes(d: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """Random residual-like vectors: a shared offset plus a varying spread, so norms vary."""
    base = torch.randn(d, generator=generator, dtype=torch.float64)
    spread = torch.rand(count, 1, generator=generator, dtype=torch.float64) + 0.25
    return base + spread * torch.randn(count, d, generator=generator, dtype=torch.float64)


def _tolerance(dtype: torch.dtype) -> float:
    return {torch.float64: 1e-9, torch.float32: 1e-4}.get(dtype, 5e-2)


def agrees(structured: Any, f: Any, d: int, *, seed: int = 0) -> bool:
    """Whether ``structured`` reproduces the head ``f`` on random residuals (relative tolerance by
    ``f``'s dtype)."""
    weight = getattr(f, "weight", None)
    like = weight if isinstance(weight, torch.Tensor) else torch.zeros((), dtype=torch.float32)
    x = _probes(d, 32, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        want = f(x.to(device=like.device, dtype=like.dtype)).to(torch.float64).cpu().reshape(-1)
        got = structured(x).reshape(-1)
    scale = 1.0 + float(want.abs().max())
    return bool(torch.all(torch.abs(got - want) <= _tolerance(like.dtype) * scale))


def _f64(t: torch.Tensor | None, d: int | None = None, fill: float = 0.0) -> torch.Tensor:
    if t is None:
        return torch.full((d,), fill, dtype=torch.float64)
    return t.detach().to(device="cpu", dtype=torch.float64)


def _affine_parts(module: nn.Module | None, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, c) with module(h) = h @ A.T + c for a Linear (identity when ``module`` is None)."""
    if module is None:
        return torch.eye(d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64)
    weight = _f64(module.weight)
    return weight, _f64(getattr(module, "bias", None), weight.shape[0])


def structured_head(head: Any, d: int) -> NormAffineHead | NormTanhHead | None:
    """The closed-form structure of a :class:`~hedonic_neurons.neurons.LocalHead`, or None.

    Reads the head's parts (``norm``, ``pooler``, ``tanh``, ``weight``, ``bias``):
    norm -> [pooler] -> score with no tanh is a :class:`NormAffineHead` (the norm's weight and bias
    and all linear maps folded into (u, c)); LayerNorm -> pooler -> tanh -> score is a
    :class:`NormTanhHead`. The result must reproduce ``head`` numerically on random residuals
    (:func:`agrees`), so a head that does something else (an unknown norm, a different weight
    convention) falls back to None, i.e. the generic path, never a silently wrong closed form.
    """
    if not all(hasattr(head, k) for k in ("norm", "pooler", "tanh", "weight", "bias")):
        return None
    norm = head.norm
    kind = norm_kind(norm) if norm is not None else None
    if norm is not None and kind is None:
        return None
    gamma = (
        _f64(getattr(norm, "weight", None), d, 1.0)
        if norm is not None
        else torch.ones(d, dtype=torch.float64)
    )
    beta = (
        _f64(getattr(norm, "bias", None), d, 0.0) if norm is not None else torch.zeros(d, dtype=torch.float64)
    )
    w = _f64(head.weight).reshape(-1)
    b = float(head.bias.detach().reshape(-1)[0]) if head.bias is not None else 0.0
    pool_w, pool_b = _affine_parts(head.pooler, d)
    k, eps = kind if kind is not None else (None, 0.0)
    structured: NormAffineHead | NormTanhHead
    if head.pooler is not None and head.tanh:
        if k != "layer":
            return None
        structured = NormTanhHead(k, eps, gamma, beta, pool_w, pool_b, w, b)
    else:
        lin = pool_w.T @ w  # score(pooler(y)) = y·lin + const
        structured = NormAffineHead(k, eps, gamma * lin, float(beta @ lin + pool_b @ w + b))
    return structured if agrees(structured, head, d) else None
