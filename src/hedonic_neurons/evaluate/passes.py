"""The batched ablation passes of one layer's evaluation: every set, one replayed prefix per batch.

All evaluated coalitions, the whole-layer ablation (the ceiling), the random sets of the null
and the single neurons of the additivity check are ablated with
:func:`hedonic_neurons.neurons.ablation_logits`, which runs the blocks below the layer once per
batch and repeats only the blocks from the layer up, once per set. The pairs of the null's
subsample are batched on their own, so the null, the single neurons and the coalitions they are
compared with come out of the same forward passes; the other test pairs see only the coalitions
and the ceiling. The null's passes are timed apart from the rest.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from hedonic_neurons.models.neuron_model import NeuronModel


@dataclass
class LayerOutputs:
    """Model outputs of one layer's evaluation under one ablation mode.

    ``base`` (P,) unablated and ``ablated`` (C, P) with each of ``coalitions`` ablated, on all test
    pairs; ``ceiling`` (P,) with the whole layer ablated. On the subsample ``sub`` (S,) (indices
    into the pairs): ``null`` (M, S) for ``null_sets`` (bin of each: ``null_bins``); on the smaller
    subsample ``syn`` (S1,) (indices into the pairs, a subset of ``sub``): ``single`` (N1, S1) for
    each neuron of ``singles``. ``seconds``: wall time of the null's passes and of the
    rest; ``rows``: sequences forwarded (sets × pairs) for each.
    """

    mode: str
    coalitions: list[tuple[int, ...]]
    base: np.ndarray
    ablated: np.ndarray
    ceiling: np.ndarray
    sub: np.ndarray
    syn: np.ndarray
    null_sets: list[list[int]]
    null_bins: np.ndarray
    null: np.ndarray
    singles: list[int]
    single: np.ndarray
    seconds: dict[str, float] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)

    def row_of(self, coalition: Sequence[int]) -> int:
        return self._index[tuple(sorted(int(i) for i in coalition))]

    def __post_init__(self) -> None:
        self._index = {c: k for k, c in enumerate(self.coalitions)}


class _Ticker:
    """Advances ``progress`` (counted in pairs) by a batch's ``pairs`` in proportion to the
    ablation sets finished so far, so a batch that runs thousands of sets (the single neurons,
    the null) shows progress while it runs; whole steps only, the rest at :meth:`finish`."""

    def __init__(self, progress: Any, pairs: int, sets: int) -> None:
        self.progress, self.pairs, self.sets = progress, pairs, max(sets, 1)
        self.done, self.shown = 0, 0

    def __call__(self, n_sets: int) -> None:
        self.done += n_sets
        self._show(min(self.pairs, self.pairs * self.done // self.sets))

    def finish(self) -> None:
        self._show(self.pairs)

    def _show(self, upto: int) -> None:
        if self.progress is not None and upto > self.shown:
            self.progress.update(upto - self.shown)
            self.shown = upto


@torch.no_grad()
def layer_outputs(
    nm: NeuronModel,
    pairs: Sequence[Any],
    layer: int,
    coalitions: Sequence[Sequence[int]],
    *,
    sub: np.ndarray,
    null_sets: Sequence[Sequence[int]],
    null_bins: np.ndarray,
    singles: Sequence[int] = (),
    syn: np.ndarray | None = None,
    mode: str = "reference",
    reference: Any = None,
    means: torch.Tensor | None = None,
    fills: torch.Tensor | np.ndarray | None = None,
    batch_size: int = 16,
    max_rows: int = 256,
    progress: Any = None,
) -> LayerOutputs:
    """Run every pass of one layer's evaluation (see the module docstring). ``syn``: the pairs
    (a subset of ``sub``; default all of it) on which ``singles`` are ablated. ``fills``: for
    ``mode="resample"``, (len(pairs), n) the fill of each pair (its donor's token-mean
    activations; row k goes with ``pairs[k]`` in every pass)."""
    from hedonic_neurons.models.neuron_model import encode_pairs
    from hedonic_neurons.neurons import ablation_logits
    from hedonic_neurons.neurons.ablation import check_fills

    uniq = sorted({tuple(sorted(int(i) for i in c)) for c in coalitions})
    n = int(nm.n_neurons)
    main_sets = [[], *[list(c) for c in uniq], list(range(n))]
    single_sets = [[int(i)] for i in singles]
    n_pairs = len(pairs)
    fills = check_fills(mode, fills, n_pairs, n, "cpu")  # one row per pair
    sub = np.asarray(sub, dtype=np.int64)
    syn = sub if syn is None else np.asarray(syn, dtype=np.int64)
    if not np.isin(syn, sub).all():
        raise ValueError("the single-neuron pairs must be part of the null's subsample")
    in_sub = np.zeros(n_pairs, dtype=bool)
    in_sub[sub] = True
    rest = np.flatnonzero(~in_sub)
    sub_only = np.setdiff1d(sub, syn)
    main = np.zeros((len(main_sets), n_pairs))
    null = np.zeros((len(null_sets), sub.size))
    single = np.zeros((len(single_sets), syn.size))
    seconds = {"null": 0.0, "rest": 0.0}
    rows = {"null": 0, "rest": 0}
    kw = dict(
        mode=mode,
        reference=reference,
        means=means,
        readout="full",
        score_token_id=getattr(nm, "score_token_id", None),
        max_batch=max_rows,
    )

    def run(sets: list[list[int]], batch: dict, what: str, idx: np.ndarray, tick: Any = None) -> np.ndarray:
        if not sets:
            return np.zeros((0, batch["attention_mask"].shape[0]))
        t0 = time.perf_counter()
        rows_fill = None if fills is None else fills[torch.as_tensor(idx)]
        out = ablation_logits(nm.model, batch, layer, sets, fills=rows_fill, on_pass=tick, **kw)
        out = out.double().cpu().numpy()
        seconds[what] += time.perf_counter() - t0
        rows[what] += len(sets) * out.shape[1]
        return out

    # pairs of similar length batch together (by characters, a proxy for tokens): less padding, and
    # the outputs do not depend on the batching (each is written back to its pair)
    text_len = np.array([len(p.query) + len(p.passage) for p in pairs])
    for idx_all, part in ((syn, "syn"), (sub_only, "sub"), (rest, "rest")):
        idx_all = idx_all[np.argsort(text_len[idx_all], kind="stable")]
        for start in range(0, idx_all.size, batch_size):
            idx = idx_all[start : start + batch_size]
            batch = encode_pairs(nm, [pairs[int(i)] for i in idx])
            sets = main_sets + single_sets if part == "syn" else main_sets
            tick = _Ticker(progress, len(idx), len(sets) + (len(null_sets) if part != "rest" else 0))
            out = run(sets, batch, "rest", idx, tick)
            main[:, idx] = out[: len(main_sets)]
            if part == "syn":
                single[:, np.searchsorted(syn, idx)] = out[len(main_sets) :]
            if part != "rest":
                null[:, np.searchsorted(sub, idx)] = run([list(s) for s in null_sets], batch, "null", idx, tick)
            tick.finish()
    return LayerOutputs(
        mode=mode,
        coalitions=list(uniq),
        base=main[0],
        ablated=main[1:-1],
        ceiling=main[-1],
        sub=sub,
        syn=syn,
        null_sets=[list(s) for s in null_sets],
        null_bins=np.asarray(null_bins, dtype=np.int64),
        null=null,
        singles=[int(i) for i in singles],
        single=single,
        seconds=seconds,
        rows=rows,
    )
