"""Interaction mass between the coalitions of adjacent layers.

Neuron p of layer l writes its output vector ``W_down^l[:, p]`` into the residual stream; neuron q
of layer l+1 reads the residual through its input row(s). The neuron-to-neuron influence is

    W_eff[q, p] = |(W_up^{l+1} diag(g) W_down^l)[q, p]| + |(W_gate^{l+1} diag(g) W_down^l)[q, p]|

(the gate term is absent for ungated MLPs), where ``g`` is the weight of the norm that feeds
layer l+1's MLP (RMSNorm / LayerNorm scale; 1 if there is none). Only that scale is kept: the
norm's data-dependent division (and LayerNorm's centring and bias), the attention sublayer and
every other residual path are ignored, as in the paper. The interaction mass of a source
coalition C (layer l) and a target coalition C' (layer l+1) is

    M(C, C') = 1 / (|C| |C'|) * sum_{p in C} sum_{q in C'} W_eff[q, p] * A_p,    A_p = E|a_p|.

:func:`interaction_mass` computes M without ever forming the n' x n matrix W_eff: it walks over
column blocks of ``W_down`` restricted to the tracked neurons, forms ``W_eff[:, block]`` (float32
matmuls, torch, on any device), and accumulates the coalition sums in float64 with
``index_add_``. Memory is O(n' x block_size).

:func:`mass_batch` computes M for many partitions of the same two layers at once (the
random-partition null of :mod:`hedonic_neurons.tracking.null`): each block ``W_eff[:, block]`` is
formed once and reduced for every partition by one sparse one-hot product (targets) and one
``scatter_add_`` (sources). Memory is O(R x K' x block_size) for R partitions of K' targets.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from hedonic_neurons.errors import DataError

__all__ = ["effective_influence", "interaction_mass", "mass_batch"]


def _as_tensor(x: Any, name: str, ndim: int, device: Any):
    import torch

    t = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.ndim != ndim:
        raise DataError(f"{name} must be {ndim}-d, got shape {tuple(t.shape)}")
    t = t.to(device=device if device is not None else t.device, dtype=torch.float32)
    if not torch.isfinite(t).all():
        raise DataError(f"{name} has non-finite entries")
    return t


def _inputs(W_down_l, W_up_next, W_gate_next, norm_scale_next, device):
    """Validated float32 tensors: down (d, n), the scaled input rows [(n', d), ...]."""
    down = _as_tensor(W_down_l, "W_down_l", 2, device)
    device = down.device
    d = down.shape[0]
    rows = []
    for name, w in (("W_up_next", W_up_next), ("W_gate_next", W_gate_next)):
        if w is None:
            continue
        t = _as_tensor(w, name, 2, device)
        if t.shape[1] != d:
            raise DataError(f"{name} has {t.shape[1]} input columns but W_down_l writes d_model = {d}")
        rows.append(t)
    if not rows:
        raise DataError("W_up_next is required (the next layer's input projection)")
    if len(rows) == 2 and rows[0].shape != rows[1].shape:
        raise DataError(f"W_up_next {tuple(rows[0].shape)} and W_gate_next {tuple(rows[1].shape)} differ")
    if norm_scale_next is not None:
        g = _as_tensor(norm_scale_next, "norm_scale_next", 1, device)
        if g.shape[0] != d:
            raise DataError(f"norm_scale_next has {g.shape[0]} entries, expected d_model = {d}")
        rows = [r * g for r in rows]
    return down, rows


def effective_influence(W_down_l, W_up_next, W_gate_next=None, norm_scale_next=None) -> np.ndarray:
    """The dense n' x n matrix W_eff (float64). For small layers and tests; see module docstring."""
    down, rows = _inputs(W_down_l, W_up_next, W_gate_next, norm_scale_next, "cpu")
    down = down.double()
    return sum((r.double() @ down).abs() for r in rows).numpy()


def _membership(coalitions: Sequence[Sequence[int]], n: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Flattened members and their coalition index; checks range and disjointness."""
    members = [np.asarray(c, dtype=np.int64).ravel() for c in coalitions]
    if any(m.size == 0 for m in members):
        raise DataError(f"{name} contains an empty coalition")
    idx = np.concatenate(members) if members else np.zeros(0, dtype=np.int64)
    lab = np.repeat(np.arange(len(members)), [m.size for m in members])
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise DataError(f"{name} names a neuron outside 0..{n - 1}")
    if np.unique(idx).size != idx.size:
        raise DataError(f"{name} places a neuron in more than one coalition")
    return idx, lab


def interaction_mass(
    W_down_l: Any,
    W_up_next: Any,
    W_gate_next: Any,
    norm_scale_next: Any,
    A: Any,
    coalitions_l: Sequence[Sequence[int]],
    coalitions_next: Sequence[Sequence[int]],
    *,
    block_size: int = 512,
    device: Any = None,
) -> np.ndarray:
    """Interaction mass M (len(coalitions_l) x len(coalitions_next), float64); see module docstring.

    Args:
        W_down_l: layer l's down projection, (d_model, n); column p is neuron p's output vector.
        W_up_next: layer l+1's up / input projection, (n', d_model), one row per neuron.
        W_gate_next: layer l+1's gate projection (n', d_model), or None for ungated MLPs.
        norm_scale_next: weight (d_model,) of the norm feeding layer l+1's MLP, or None.
        A: (n,) mean absolute activation E|a_p| of layer l's neurons (must be >= 0).
        coalitions_l / coalitions_next: the coalitions to track (disjoint, non-empty; they need
            not cover every neuron: neurons outside them are never touched).
        block_size: number of source neurons per block (memory is O(n' x block_size)).
        device: torch device for the matmuls (default: that of ``W_down_l``, CPU for numpy).
    """
    import torch

    down, rows = _inputs(W_down_l, W_up_next, W_gate_next, norm_scale_next, device)
    n, n_next = down.shape[1], rows[0].shape[0]
    act = np.asarray(A, dtype=np.float64).ravel()
    if act.shape != (n,) or not np.isfinite(act).all() or (act < 0).any():
        raise DataError(
            f"A must hold {n} finite non-negative values (E|a_p| of layer l), got shape {act.shape}"
        )
    src, src_lab = _membership(coalitions_l, n, "coalitions_l")
    tgt, tgt_lab = _membership(coalitions_next, n_next, "coalitions_next")
    k_src, k_tgt = len(coalitions_l), len(coalitions_next)
    if k_src == 0 or k_tgt == 0:
        return np.zeros((k_src, k_tgt))
    dev = down.device
    tgt_t = torch.as_tensor(tgt, device=dev)
    rows = [r.index_select(0, tgt_t) for r in rows]  # only the tracked target neurons
    tgt_lab_t = torch.as_tensor(tgt_lab, device=dev)
    total = torch.zeros(k_tgt, k_src, dtype=torch.float64, device=dev)
    for start in range(0, src.size, max(int(block_size), 1)):
        cols = torch.as_tensor(src[start : start + block_size], device=dev)
        block = down.index_select(1, cols)  # (d, b)
        w_eff = sum((r @ block).abs_() for r in rows)  # (n'_tracked, b), float32
        weighted = w_eff.double() * torch.as_tensor(act[src[start : start + block_size]], device=dev)
        per_target = torch.zeros(k_tgt, cols.numel(), dtype=torch.float64, device=dev)
        per_target.index_add_(0, tgt_lab_t, weighted)
        total.index_add_(1, torch.as_tensor(src_lab[start : start + block_size], device=dev), per_target)
    sizes_src = np.bincount(src_lab, minlength=k_src).astype(np.float64)
    sizes_tgt = np.bincount(tgt_lab, minlength=k_tgt).astype(np.float64)
    return total.T.cpu().numpy() / np.outer(sizes_src, sizes_tgt)


def _labels(labels: Any, n: int, name: str, device: Any):
    """(R, n) long tensor of coalition labels (-1: not tracked) and the number of coalitions."""
    import torch

    lab = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if lab.ndim != 2 or lab.shape[1] != n:
        raise DataError(f"{name} must be (partitions, {n}), got shape {tuple(lab.shape)}")
    if lab.numel() and int(lab.min()) < -1:
        raise DataError(f"{name} holds a label below -1 (-1 marks an untracked neuron)")
    return lab.to(device)


def mass_batch(
    W_down_l: Any,
    W_up_next: Any,
    W_gate_next: Any,
    norm_scale_next: Any,
    A: Any,
    source_labels: Any,
    target_labels: Any,
    n_sources: int,
    n_targets: int,
    *,
    block_size: int = 512,
    device: Any = None,
) -> np.ndarray:
    """Interaction mass of R partition pairs at once: (R, n_sources, n_targets), float64.

    ``source_labels`` (R, n) / ``target_labels`` (R, n'): partition r puts neuron p into coalition
    ``source_labels[r, p]`` (0..n_sources-1; -1: not tracked), and likewise for the targets. Row r
    of the result equals :func:`interaction_mass` on partition r (weights as there). A coalition
    that is empty in some partition gets zero mass there.
    """
    import torch

    down, rows = _inputs(W_down_l, W_up_next, W_gate_next, norm_scale_next, device)
    dev = down.device
    n, n_next = down.shape[1], rows[0].shape[0]
    act = np.asarray(A, dtype=np.float64).ravel()
    if act.shape != (n,) or not np.isfinite(act).all() or (act < 0).any():
        raise DataError(
            f"A must hold {n} finite non-negative values (E|a_p| of layer l), got shape {act.shape}"
        )
    src = _labels(source_labels, n, "source_labels", dev)
    tgt = _labels(target_labels, n_next, "target_labels", dev)
    if src.shape[0] != tgt.shape[0]:
        raise DataError(f"{src.shape[0]} source partitions but {tgt.shape[0]} target partitions")
    if (src.numel() and int(src.max()) >= n_sources) or (tgt.numel() and int(tgt.max()) >= n_targets):
        raise DataError("a label is not below the number of coalitions (n_sources / n_targets)")
    R, K, K2 = src.shape[0], int(n_sources), int(n_targets)
    if R == 0 or K == 0 or K2 == 0:
        return np.zeros((R, K, K2))
    # targets: one sparse one-hot (R*K', n') so that onehot @ W_eff[:, block] sums each coalition
    r_idx, q_idx = (tgt >= 0).nonzero(as_tuple=True)
    onehot = torch.sparse_coo_tensor(
        torch.stack([r_idx * K2 + tgt[r_idx, q_idx], q_idx]),
        torch.ones(r_idx.numel(), device=dev),
        (R * K2, n_next),
        check_invariants=False,
    ).coalesce()
    keep = torch.as_tensor(np.flatnonzero((src >= 0).any(0).cpu().numpy()), device=dev)
    act_t = torch.as_tensor(act, device=dev, dtype=torch.float32)
    total = torch.zeros(R, K2, K + 1, dtype=torch.float64, device=dev)  # column K: untracked
    step = max(int(block_size), 1)
    for start in range(0, keep.numel(), step):
        cols = keep[start : start + step]
        w_eff = sum((r @ down.index_select(1, cols)).abs_() for r in rows) * act_t[cols]  # (n', b)
        per_target = torch.sparse.mm(onehot, w_eff).view(R, K2, cols.numel()).double()
        idx = src[:, cols].clone()
        idx[idx < 0] = K
        total.scatter_add_(2, idx[:, None, :].expand(R, K2, cols.numel()), per_target)
    sizes_src = torch.zeros(R, K + 1, dtype=torch.float64, device=dev)
    sizes_src.scatter_add_(1, torch.where(src >= 0, src, K), torch.ones_like(src, dtype=torch.float64))
    sizes_tgt = torch.zeros(R, K2 + 1, dtype=torch.float64, device=dev)
    sizes_tgt.scatter_add_(1, torch.where(tgt >= 0, tgt, K2), torch.ones_like(tgt, dtype=torch.float64))
    denom = sizes_src[:, None, :K] * sizes_tgt[:, :K2, None]  # (R, K', K)
    out = torch.where(denom > 0, total[..., :K] / denom.clamp(min=1), torch.zeros((), dtype=torch.float64))
    return out.transpose(1, 2).cpu().numpy()
