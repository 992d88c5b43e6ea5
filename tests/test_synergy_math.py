"""Pure math of synergy (no model): closed forms against brute force, taylor, grad-outer, OCA."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hedonic_neurons.synergy.heads import NormAffineHead, NormTanhHead, normalise
from hedonic_neurons.synergy.oca import oca_phi, orthogonality
from hedonic_neurons.synergy.pas import (
    GRAD_OUTER_SIGN,
    PAS_SIGN,
    PairSums,
    exact_local_sum,
    grad_outer_sum,
    head_gradients,
    head_hessians,
    residual_shifts,
    taylor_sum,
)

B, N, D = 3, 7, 5


def _data(seed: int = 0, scale: float = 0.3):
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(B, D, generator=g, dtype=torch.float64) + 0.5
    shifts = scale * torch.randn(B, N, D, generator=g, dtype=torch.float64)
    return r, shifts


def _brute(f, r, shifts) -> torch.Tensor:
    """Σ_x Δ_ij by evaluating f at the four points of every pair, one by one."""
    out = torch.zeros(N, N, dtype=torch.float64)
    for b in range(B):
        for i in range(N):
            for j in range(N):
                if i == j:
                    continue
                di, dj = shifts[b, i], shifts[b, j]
                out[i, j] += f(r[b]) - f(r[b] - di) - f(r[b] - dj) + f(r[b] - di - dj)
    return PAS_SIGN * out


def _offdiag(m: torch.Tensor) -> torch.Tensor:
    return m - torch.diag(torch.diagonal(m))


def _heads():
    g = torch.Generator().manual_seed(3)
    u = torch.randn(D, generator=g, dtype=torch.float64)
    tanh = NormTanhHead(
        "layer",
        1e-5,
        gamma=1 + 0.1 * torch.randn(D, generator=g, dtype=torch.float64),
        beta=0.1 * torch.randn(D, generator=g, dtype=torch.float64),
        pooler_weight=torch.randn(4, D, generator=g, dtype=torch.float64),
        pooler_bias=torch.randn(4, generator=g, dtype=torch.float64),
        w=torch.randn(4, generator=g, dtype=torch.float64),
        b=0.7,
    )
    return {
        "rms": NormAffineHead("rms", 1e-6, u, 0.3),
        "layer": NormAffineHead("layer", 1e-5, u, -1.2),
        "tanh": tanh,
    }


@pytest.mark.parametrize("name", ["rms", "layer", "tanh"])
@pytest.mark.parametrize("max_elements", [1 << 22, 7])
def test_closed_forms_equal_brute_force(name, max_elements):
    r, shifts = _data()
    head = _heads()[name]
    out = torch.zeros(N, N, dtype=torch.float64)
    exact_local_sum(r, shifts, head, out, max_elements=max_elements)
    want = _brute(head, r, shifts)
    assert torch.allclose(_offdiag(out), want, atol=1e-10, rtol=0)
    assert want.abs().max() > 1e-3  # the test is not vacuous
    # the generic path (f evaluated at every pair) gives the same
    gen = torch.zeros(N, N, dtype=torch.float64)
    exact_local_sum(r, shifts, lambda x: head(x), gen, max_elements=max_elements)
    assert torch.allclose(_offdiag(gen), want, atol=1e-10, rtol=0)


def test_tanh_path_fp32_close_to_fp64():
    r, shifts = _data(1)
    head = _heads()["tanh"]
    out64, out32 = torch.zeros(N, N, dtype=torch.float64), torch.zeros(N, N, dtype=torch.float64)
    exact_local_sum(r, shifts, head, out64)
    exact_local_sum(r, shifts, head, out32, dtype=torch.float32)
    assert torch.allclose(_offdiag(out32), _offdiag(out64), atol=1e-5)


def test_normalise_matches_torch_norms():
    x = torch.randn(4, D, dtype=torch.float64)
    ln = torch.nn.functional.layer_norm(x, (D,), eps=1e-5)
    assert torch.allclose(normalise(x, "layer", 1e-5), ln, atol=1e-12)
    rms = torch.nn.functional.rms_norm(x, (D,), eps=1e-6)
    assert torch.allclose(normalise(x, "rms", 1e-6), rms, atol=1e-12)


def test_linear_head_has_no_synergy():
    r, shifts = _data()
    u = torch.randn(D, dtype=torch.float64)
    out = torch.zeros(N, N, dtype=torch.float64)
    exact_local_sum(r, shifts, NormAffineHead(None, 0.0, u, 1.0), out)
    assert torch.count_nonzero(out) == 0
    exact_local_sum(r, shifts, lambda x: x @ u + 1.0, out)  # generic path: numerically zero
    assert _offdiag(out).abs().max() < 1e-12


def test_taylor_is_exact_on_a_quadratic_head():
    r, shifts = _data(2, scale=1.0)
    g = torch.Generator().manual_seed(5)
    q = torch.randn(D, D, generator=g, dtype=torch.float64)
    q = q + q.T
    w = torch.randn(D, generator=g, dtype=torch.float64)

    def f(x):
        return 0.5 * torch.einsum("...i,ij,...j->...", x, q, x) + x @ w

    hess = head_hessians(f, r)
    assert torch.allclose(hess, q.expand(B, D, D), atol=1e-12)
    approx = torch.zeros(N, N, dtype=torch.float64)
    taylor_sum(shifts, hess, approx)
    exact = torch.zeros(N, N, dtype=torch.float64)
    exact_local_sum(r, shifts, f, exact)
    assert torch.allclose(_offdiag(approx), _offdiag(exact), atol=1e-9, rtol=0)
    # and by hand: d_iᵀ Q d_j summed over inputs
    by_hand = PAS_SIGN * torch.einsum("bid,de,bje->ij", shifts, q, shifts)
    assert torch.allclose(approx, by_hand, atol=1e-12)


def test_taylor_matches_exact_to_second_order_on_a_norm_head():
    r, shifts = _data(4, scale=1e-3)
    head = _heads()["rms"]
    exact = torch.zeros(N, N, dtype=torch.float64)
    exact_local_sum(r, shifts, head, exact)
    approx = torch.zeros(N, N, dtype=torch.float64)
    taylor_sum(shifts, head_hessians(head, r), approx)
    err = (_offdiag(approx) - _offdiag(exact)).abs().max()
    assert err < 1e-2 * _offdiag(exact).abs().max()


def test_grad_outer_by_hand():
    g = torch.Generator().manual_seed(6)
    grads = torch.randn(B, N, generator=g, dtype=torch.float64)
    a = torch.randn(B, N, generator=g, dtype=torch.float64)
    out = torch.zeros(N, N, dtype=torch.float64)
    grad_outer_sum(grads, a, out)
    want = np.zeros((N, N))
    for b in range(B):
        for i in range(N):
            for j in range(N):
                want[i, j] += -(grads[b, i] * a[b, i]) * (grads[b, j] * a[b, j])
    assert GRAD_OUTER_SIGN == -1.0
    assert np.allclose(out.numpy(), want, atol=1e-12)


def test_head_gradients():
    u = torch.randn(D, dtype=torch.float64)
    r = torch.randn(B, D, dtype=torch.float64)
    grads = head_gradients(lambda x: (x @ u) ** 2, r)
    assert torch.allclose(grads, 2 * (r @ u)[:, None] * u, atol=1e-12)


def test_residual_shifts():
    a, a_ref = torch.randn(B, N), torch.randn(B, N)
    w, w_ref = torch.randn(D, N), torch.randn(D, N)
    shifts = residual_shifts(a, w, a_ref, w_ref)
    b, i = 1, 4
    assert torch.allclose(shifts[b, i], a[b, i] * w[:, i] - a_ref[b, i] * w_ref[:, i], atol=1e-6)
    assert torch.allclose(residual_shifts(a, w)[b, i], a[b, i] * w[:, i])


def test_pair_sums_merge_and_state():
    x, y = PairSums(3), PairSums(3)
    x.sum += torch.arange(9.0).reshape(3, 3)
    x.count, x.tokens = 2, 10
    y.sum += 1.0
    y.count, y.tokens = 1, 4
    back = PairSums.from_state_dict(x.state_dict())
    assert torch.equal(back.sum, x.sum) and back.count == 2 and back.tokens == 10
    x.merge(y)
    assert x.count == 3 and x.tokens == 14
    mean = x.mean()
    assert torch.equal(mean, mean.T) and torch.all(torch.diagonal(mean) == 0)
    assert mean[0, 1] == pytest.approx(((1 + 1) + (3 + 1)) / 2 / 3)


def test_oca_equals_numpy():
    rng = np.random.default_rng(0)
    acts = rng.normal(size=(200, 6))
    acts[:, 2] = acts[:, 0] * 0.5 + rng.normal(size=200) * 0.1
    acts[:, 4] = 3.0  # a dead neuron: ρ = 0 with everyone
    down = rng.normal(size=(5, 6))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.nan_to_num(np.corrcoef(acts, rowvar=False))
    unit = down / np.linalg.norm(down, axis=0)
    want = (1 - np.abs(unit.T @ unit)) * rho
    np.fill_diagonal(want, 0)
    phi = oca_phi(rho, down)
    assert phi.dtype == np.float32 and np.array_equal(phi, phi.T)
    assert np.allclose(phi, want, atol=1e-6)
    assert np.all(phi[4] == 0) and np.abs(phi).max() <= 1


def test_orthogonality_of_zero_column():
    down = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    orth = orthogonality(down)
    assert orth[0, 1] == 1.0 and orth[0, 2] == pytest.approx(1 - 2**-0.5)
