"""The ``next-block`` PAS readout: the model from block ℓ+1 up to the head, as a function of r.

The local readout applies the head straight to the residual r after block ℓ at the readout
position (:func:`~hedonic_neurons.neurons.readout_positions`: the last non-pad token of a
decoder, BERT's CLS). That skips the blocks above ℓ, and on BERT its synergies can be
uncorrelated with those of the whole model. The next-block readout keeps them: for one input x,

    g_x(r) = the model's output logit when the residual at the readout position after block ℓ
             is replaced by r, every other position keeping its unablated state,

so the blocks ℓ+1..L−1 and the head run on top of the new state. r and the per-neuron shifts d_i
are those of the local readout (:func:`~hedonic_neurons.synergy.pas.residual_shifts`): for the
pre-LN families r is block ℓ's output; for BERT it is the sum before the block's output
LayerNorm, and the new state there is that LayerNorm of r. In a causal model the other positions
are unaffected anyway; in BERT the other tokens keep their block-ℓ states but attend to the new
CLS state from block ℓ+1 up. At the last layer there are no blocks above and g_x is the local
head. Ablating neuron i at the readout position only is then ℓ_{−S} = g_x(r − Σ_{i∈S} d_i).

This differs from the ``full`` readout (:func:`~hedonic_neurons.neurons.ablation_logits` with
``readout="full"``), which ablates the neurons at every position of layer ℓ: there the other
tokens' states change too, so the attention of the blocks above sees ablated keys and values.
The next-block readout isolates the path through the readout position.

Modes (the upper model runs in the model's own dtype; use float32 or float64 models, a half
precision Hessian is coarse):

- ``exact``: the four values g(r), g(r − d_i), g(r − d_j), g(r − d_i − d_j) of each requested
  pair, batched through the upper model (:func:`exact_pairs_sum`): 1 + s + m rows per input for
  m pairs over s distinct neurons, each row a pass through blocks ℓ+1.. of all T tokens. The
  four logits cancel: Δ_ij carries the rounding of the logits (~1e-7·|ℓ| in float32), which can
  be the size of Δ itself (MiniLM, layer 3, random pairs: |Δ| ~ 1e-8, and the float32 values
  were off by about that much from float64 ones); for exact values there run the model in
  float64 (``nm.model.double()``). taylor has no such cancellation.
- ``taylor``: Δ_ij ≈ d_iᵀ H_x d_j with H_x the d × d Hessian of g_x at r, for all pairs
  (:meth:`NextBlockReadout.hessians`, then :func:`~hedonic_neurons.synergy.pas.taylor_sum`).
  Cost per input: d Hessian-vector products through the upper model, i.e. d rows of one
  forward, backward and double-backward pass (batched ``hessian_rows`` at a time), then the
  O(n·d² + n²·d) product D H Dᵀ. Attention runs on PyTorch's math SDPA kernel there (the fused
  kernels have no double backward); models with other attention kernels (flash-attention 2) are
  not supported by this mode.
- ``grad-outer``: the gradient of g_x at r (one backward per input), as the local surrogate.

When to use it: below the last layer, where the local head is not a faithful stand-in for the
model (on BERT-style models the local PAS can even be anticorrelated with the whole model's Δ);
at the last layer it equals the local readout and only costs more. It costs the upper model d
times per input (taylor) or 1 + s + m times (exact). Measured on MiniLM (all-MiniLM-L6-v2,
n = 1,536, d = 384, one 18-token input, layer 3 of 6, 2 CPU threads on a loaded 2-core machine):
taylor ~30-55 s per input, against ~0.5-1.5 s for the local taylor readout; there the two
readouts' φ (zero ablation, an untrained classifier, 2 inputs) correlated 0.30 over the pairs.
The exact mode suits samples of pairs (``max_pairs``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from hedonic_neurons.errors import ModelError
from hedonic_neurons.models.adapters import block, block_list, check_layer, mlp_modules, n_layers
from hedonic_neurons.neurons.ablation import replayed_prefix, torch_model_of
from hedonic_neurons.neurons.readout import local_head, site_hooks
from hedonic_neurons.neurons.recording import (
    StopForward,
    hooks,
    model_inputs,
    readout_positions,
    run_forward,
)
from hedonic_neurons.synergy.pas import PAS_SIGN

#: Rows (points x, one input each) per no-gradient pass through the upper model.
MAX_ROWS = 256
#: Rows per Hessian pass (each row is one Hessian-vector product: forward, backward, double
#: backward through the upper model, with the graph kept for the second derivative).
HESSIAN_ROWS = 64


def _take(value: Any, index: torch.Tensor, batch_size: int) -> Any:
    """``value`` with its batch rows picked by ``index`` (tensors, also inside tuples / lists)."""
    if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == batch_size:
        return value.index_select(0, index.to(value.device))
    if isinstance(value, (tuple, list)):
        return type(value)(_take(v, index, batch_size) for v in value)
    return value


def _first(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _rows(rows: slice | torch.Tensor | None, batch_size: int, device: Any) -> torch.Tensor:
    if rows is None:
        return torch.arange(batch_size, device=device)
    if isinstance(rows, slice):
        return torch.arange(batch_size, device=device)[rows]
    return torch.as_tensor(rows, dtype=torch.long, device=device)


class NextBlockReadout:
    """g_x(r) for the inputs of one batch: the model above block ``layer`` as a function of the
    residual at the readout position (see the module docstring).

    ``model``: a :class:`~hedonic_neurons.models.NeuronModel` (its ``score_token_id`` is used) or a
    transformers / peft model. ``batch``: the tokenised batch (``input_ids``, ``attention_mask``,
    ...). ``score_token_id``: for causal LMs, the token whose logit is the score. One forward
    through blocks 0..``layer`` is run here (no gradient) to record their output.

    Attributes: ``resid`` (B, d), r at the readout position of each input (the local readout's
    r); ``positions`` (B,) those positions.
    """

    def __init__(
        self,
        model: Any,
        batch: Mapping[str, Any],
        layer: int,
        *,
        score_token_id: int | None = None,
        max_rows: int = MAX_ROWS,
        hessian_rows: int = HESSIAN_ROWS,
    ) -> None:
        target, owner = torch_model_of(model)
        if score_token_id is None and owner is not None:
            score_token_id = getattr(owner, "score_token_id", None)
        self.model = target
        self.layer = check_layer(target, layer)
        self.last = n_layers(target) - 1
        self.max_rows, self.hessian_rows = max(1, int(max_rows)), max(1, int(hessian_rows))
        self.inputs = model_inputs(batch)
        mask = self.inputs["attention_mask"]
        self.batch_size = int(mask.shape[0])
        self.positions = readout_positions(target, mask)
        self.post_norm: nn.Module | None = mlp_modules(target, self.layer).post_norm
        store: dict[str, Any] = {}

        def save_output(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            store["out"] = output
            raise StopForward

        with torch.no_grad(), hooks() as hook_set:
            site_hooks(target, self.layer, hook_set, store, stop=False)
            hook_set.post(block(target, self.layer), save_output)
            run_forward(target, self.inputs)
        self.output = store["out"]  # block `layer`'s output, in the form the layer loop expects
        self.hidden = _first(self.output)  # (B, T, d): the states after block `layer`
        rows = torch.arange(self.batch_size, device=self.positions.device)
        self.resid = store["resid"][rows, self.positions]
        head = local_head(target, self.last, score_token_id=score_token_id)
        if self.post_norm is not None:
            # BERT: the last block's output is already normed; the local head's norm is that norm
            head = dataclasses.replace(head, norm=None)
        self.head = head

    @property
    def d_model(self) -> int:
        return int(self.resid.shape[-1])

    def _forward(self, points: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """g at ``points`` (K, d), row k for input ``index[k]``, in one pass -> (K,)."""
        k = points.shape[0]
        pos = self.positions[index]
        state = points.to(self.hidden.dtype)
        if self.post_norm is not None:
            state = self.post_norm(state)
        hidden = self.hidden.index_select(0, index).index_put(
            (torch.arange(k, device=pos.device), pos), state
        )
        if isinstance(self.output, tuple):
            output: Any = (hidden, *_take(self.output[1:], index, self.batch_size))
        else:
            output = hidden
        inputs = {key: _take(v, index, self.batch_size) for key, v in self.inputs.items()}
        store: dict[str, torch.Tensor] = {}

        def save(module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
            store["h"] = _first(out)
            raise StopForward

        with replayed_prefix(self.model, self.layer + 1, output) as stand_ins, hooks() as hook_set:
            # after the swap: at the last layer the last block is itself a stand-in
            hook_set.post(block_list(self.model)[self.last], save)
            run_forward(self.model, inputs)
        if stand_ins[-1].calls == 0:
            raise ModelError(
                "readout 'next-block': the model's forward did not use the replayed residual (a "
                "wrapper such as nnsight patches the forward); pass the unwrapped Hugging Face model"
            )
        final = store["h"][torch.arange(k, device=pos.device), pos]
        return self.head(final)

    def __call__(self, points: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """g at ``points`` (K, d), point k for input ``index[k]`` (default: point b for input b)
        -> (K,), in passes of at most ``max_rows`` rows; differentiable in ``points``."""
        if points.dim() != 2 or points.shape[-1] != self.d_model:
            raise ModelError(
                f"points must be (K, {self.d_model}) residual vectors, got shape {tuple(points.shape)}"
            )
        index = _rows(None, self.batch_size, self.positions.device) if index is None else index
        index = torch.as_tensor(index, dtype=torch.long, device=self.positions.device)
        if index.shape != points.shape[:1]:
            raise ModelError(
                f"index must be ({points.shape[0]},), one input per point; got {tuple(index.shape)}"
            )
        parts = [
            self._forward(points[s : s + self.max_rows], index[s : s + self.max_rows])
            for s in range(0, points.shape[0], self.max_rows)
        ]
        return torch.cat(parts) if parts else points.new_zeros(0)

    def gradients(self, rows: slice | torch.Tensor | None = None) -> torch.Tensor:
        """∇g_x at r for the inputs ``rows`` (default all) -> (K, d), detached."""
        index = _rows(rows, self.batch_size, self.positions.device)
        out = []
        with torch.enable_grad():
            for s in range(0, index.numel(), self.max_rows):
                idx = index[s : s + self.max_rows]
                pts = self.resid[idx].detach().clone().requires_grad_(True)
                value = self._forward(pts, idx).sum()
                (grad,) = (
                    torch.autograd.grad(value, pts, allow_unused=True) if value.requires_grad else (None,)
                )
                out.append(torch.zeros_like(pts) if grad is None else grad.detach())
        return torch.cat(out) if out else self.resid.new_zeros(0, self.d_model)

    def hessians(self, rows: slice | torch.Tensor | None = None) -> torch.Tensor:
        """The d × d Hessian of g_x at r for the inputs ``rows`` (default all) -> (K, d, d),
        symmetrised, detached.

        Row k of H_x is one Hessian-vector product: the point r is copied d times, and the
        derivative of Σ_k ∂g/∂r_k (copy k's k-th gradient entry) with respect to copy k is
        H_x e_k; the copies of all inputs run ``hessian_rows`` at a time.
        """
        from torch.nn.attention import SDPBackend, sdpa_kernel

        index = _rows(rows, self.batch_size, self.positions.device)
        d = self.d_model
        flat = index.repeat_interleave(d)  # row (b, k) -> input b
        coord = torch.arange(d, device=index.device).repeat(index.numel())  # row (b, k) -> k
        out = torch.zeros(flat.numel(), d, dtype=self.resid.dtype, device=self.resid.device)
        with torch.enable_grad(), sdpa_kernel([SDPBackend.MATH]):
            for s in range(0, flat.numel(), self.hessian_rows):
                idx, cols = flat[s : s + self.hessian_rows], coord[s : s + self.hessian_rows]
                pts = self.resid[idx].detach().clone().requires_grad_(True)
                value = self._forward(pts, idx).sum()
                if not value.requires_grad:
                    continue  # g does not depend on r: H = 0
                (grad,) = torch.autograd.grad(value, pts, create_graph=True)
                picked = grad.gather(1, cols[:, None]).sum()
                if not picked.requires_grad:
                    continue  # g is affine in r: H = 0
                (hvp,) = torch.autograd.grad(picked, pts, allow_unused=True)
                if hvp is not None:
                    out[s : s + idx.numel()] = hvp.detach()
        hess = out.view(index.numel(), d, d)
        return 0.5 * (hess + hess.transpose(1, 2))


def exact_pairs_sum(
    readout: NextBlockReadout,
    shifts: torch.Tensor,
    pairs: np.ndarray,
    out: torch.Tensor,
    sq: torch.Tensor | None = None,
    rows: slice | torch.Tensor | None = None,
) -> None:
    """Add PAS_SIGN · Σ_x Δ_ij(x) of the next-block readout to ``out[i, j]`` and ``out[j, i]`` for
    each requested pair, exactly: Δ_ij = g(r) − g(r − d_i) − g(r − d_j) + g(r − d_i − d_j).

    ``shifts`` (K, n, d): the d_i of the inputs ``rows`` of the readout's batch (default all);
    ``pairs`` (m, 2): neuron pairs i < j (:func:`~hedonic_neurons.synergy.collect.check_pairs`).
    Per input the 1 + s + m points (s distinct neurons in the pairs) run through the upper model
    ``readout.max_rows`` at a time, so memory stays O(max_rows · T · d) whatever m is. ``sq``: if
    given, Σ_x Δ_ij(x)² is added to it (both triangles). Entries of unrequested pairs are left.
    Δ is a difference of four logits in the model's dtype, so its error is the logits' rounding
    (see the module docstring), not relative to Δ.
    """
    index = _rows(rows, readout.batch_size, readout.positions.device)
    k, n, d = shifts.shape
    if k != index.numel():
        raise ModelError(f"shifts are for {k} inputs but rows select {index.numel()}")
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    singles = np.unique(pairs)
    where = np.searchsorted(singles, pairs)  # (m, 2): each pair's neurons among the singles
    s, m = singles.size, pairs.shape[0]
    per = 1 + s + m
    if m and (singles.min() < 0 or singles.max() >= n):
        raise ModelError(
            f"pairs must hold neuron indices in 0..{n - 1}, got {singles.min()}..{singles.max()}"
        )
    # each point is r − sub[c1] − sub[c2], sub = (0, d_singles...): column 0 is no neuron
    c1 = np.concatenate([[0], 1 + np.arange(s), 1 + where[:, 0]])
    c2 = np.concatenate([[0], np.zeros(s, dtype=np.int64), 1 + where[:, 1]])
    dev = shifts.device
    c1_t, c2_t = torch.as_tensor(c1, device=dev), torch.as_tensor(c2, device=dev)
    sub = torch.cat([shifts.new_zeros(k, 1, d), shifts[:, torch.as_tensor(singles, device=dev)]], 1)
    r = readout.resid[index].to(dev)
    dtype = torch.promote_types(r.dtype, shifts.dtype)
    logits = torch.empty(k * per, dtype=torch.float64, device=dev)
    step = readout.max_rows
    with torch.no_grad():
        for start in range(0, k * per, step):
            ids = torch.arange(start, min(start + step, k * per), device=dev)
            b, j = ids // per, ids % per
            points = r[b].to(dtype) - sub[b, c1_t[j]].to(dtype) - sub[b, c2_t[j]].to(dtype)
            logits[start : start + ids.numel()] = readout(points, index[b]).double()
    logits = logits.view(k, per)
    base = logits[:, :1]
    single = logits[:, 1 : 1 + s]
    delta = PAS_SIGN * (base - single[:, where[:, 0]] - single[:, where[:, 1]] + logits[:, 1 + s :])  # (K, m)
    ii, jj = torch.as_tensor(pairs[:, 0], device=out.device), torch.as_tensor(pairs[:, 1], device=out.device)
    total = delta.sum(0).to(out)
    out[ii, jj] += total
    out[jj, ii] += total
    if sq is not None:
        squares = delta.square().sum(0).to(sq)
        sq[ii, jj] += squares
        sq[jj, ii] += squares
