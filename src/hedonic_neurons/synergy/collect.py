"""Collecting φ over a dataset: streaming, resumable, distributed (``hedonic collect``).

:func:`collect` runs a :class:`~hedonic_neurons.models.NeuronModel` over (query, passage) pairs and
writes one ``phi_layer{L}.safetensors`` per layer (key ``phi``, float32, n × n; key ``phi_se``,
the standard errors of φ's entries, same shape) with a JSON sidecar (settings, model identity,
input format, counts, the standard-error estimator and a distribution summary of φ).

The metric is any one registered in :data:`~hedonic_neurons.synergy.base.METRICS` (a
:class:`~hedonic_neurons.synergy.base.SynergyMetric`); the two built in are registered here:

- OCA: one forward pass per batch records every pending layer into
  :class:`~hedonic_neurons.neurons.Moments` (:class:`OCACollector`); standard errors by normal
  theory (Fisher's z for ρ) with the number of inputs as the sample size.
- PAS: one layer at a time (:class:`PASCollector`); ``local`` readout: the residual and the MLP
  input at the readout position (:func:`~hedonic_neurons.neurons.capture_site`) give the per-neuron
  shifts d_i, and :mod:`~hedonic_neurons.synergy.pas` adds Σ_x Δ (and Σ_x Δ²) for all pairs;
  ``full`` readout: batched ablation forwards (∅, {i}, {j}, {i, j}) for a requested set of
  pairs; ``next-block`` readout: the same d_i, read through the model above the layer
  (:mod:`~hedonic_neurons.synergy.nextblock`; exact on requested pairs, taylor and grad-outer
  for all). Standard errors: sd / √N of the per-input values.

``settings.max_inputs`` selects the first N pairs for any metric (``hedonic collect
--max-inputs``); the pipeline's input budget ``phi.max_inputs`` is passed on to non-streaming
metrics (PAS) only, so OCA there uses every training pair.

Resuming: a layer whose phi file exists with the same settings is skipped; within a pass the
accumulators and the batch position are checkpointed atomically every few batches (one file per
rank, under ``DIR/.partial``) and picked up by the next run with the same settings.
Distributed: under ``torchrun`` rank r takes batches r, r + world, ...; the sums are all-reduced
and rank 0 writes.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from hedonic_neurons.artifacts import atomic_write_bytes, read_json, save_phi, validate_phi
from hedonic_neurons.cachekey import cache_key
from hedonic_neurons.errors import ConfigError, DataError, HedonicNote, arg
from hedonic_neurons.locking import locks_output
from hedonic_neurons.models.adapters import MLPWeights
from hedonic_neurons.models.neuron_model import encode_pairs
from hedonic_neurons.synergy.base import METRICS, SynergyMetric, reference_error
from hedonic_neurons.synergy.distributed import World, barrier
from hedonic_neurons.synergy.heads import NormAffineHead, NormTanhHead, structured_head
from hedonic_neurons.synergy.nextblock import NextBlockReadout, exact_pairs_sum
from hedonic_neurons.synergy.oca import oca_phi, oca_se
from hedonic_neurons.synergy.pas import (
    MAX_ELEMENTS,
    PAS_SIGN,
    PairSums,
    exact_local_sum,
    grad_outer_sum,
    head_gradients,
    head_hessians,
    residual_shifts,
    taylor_sum,
)

if TYPE_CHECKING:
    from hedonic_neurons.models.neuron_model import NeuronModel

MODES = ("exact", "taylor", "grad-outer")
READOUTS = ("local", "full", "next-block")
ABLATIONS = ("reference", "zero")
POOLINGS = ("tokens", "mean", "last")
ACCUMULATE = ("mixed", "fp64")
PHI_FORMAT = "hedonic-neurons/phi/v1"
#: Bound on one temporary (B, n, d) tensor of residual shifts; larger batches are split.
MAX_SHIFT_ELEMENTS = 1 << 25
#: Rows (ablation sets x inputs) per forward pass of the ``full`` readout.
MAX_ABLATION_ROWS = 256


@dataclass(frozen=True)
class CollectSettings:
    """Everything that determines φ (recorded in the sidecar; a resumed run must match it).

    ``accumulate`` (OCA): precision of the per-batch aᵀa, ``"mixed"`` (float32 products added
    into float64 sums) or ``"fp64"`` (see :mod:`hedonic_neurons.neurons.stats`). Like the device,
    it changes φ by rounding only (≲1e-5 relative), so it is recorded in the sidecar but is not
    part of the key: finished layers and checkpoints of either mode are reused.
    """

    metric: str = "oca"
    mode: str = "exact"
    readout: str = "local"
    ablation: str = "reference"
    pooling: str = "tokens"
    statistic: str = "corr"
    batch_size: int = 16
    max_inputs: int | None = None
    max_pairs: int | None = None
    seed: int = 0
    accumulate: str = "mixed"

    def check(self) -> CollectSettings:
        """One-line :class:`ConfigError` for an unknown metric (one registered in
        :data:`~hedonic_neurons.synergy.base.METRICS`), an unknown value or an invalid combination
        (the metric's own :meth:`~hedonic_neurons.synergy.base.SynergyMetric.check_settings`);
        returns self."""
        metric = METRICS.get(self.metric)
        for name, allowed in (
            ("mode", MODES),
            ("readout", READOUTS),
            ("ablation", ABLATIONS),
            ("pooling", POOLINGS),
            ("statistic", ("corr", "cov")),
            ("accumulate", ACCUMULATE),
        ):
            value = getattr(self, name)
            if value not in allowed:
                raise ConfigError(f"unknown {name} '{value}' (expected one of {', '.join(allowed)})")
        for name in ("batch_size", "max_inputs", "max_pairs"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1
            ):
                raise ConfigError(f"{arg(name)} must be a positive integer, got {value!r}")
        metric.check_settings(self)
        return self

    def to_dict(self) -> dict[str, Any]:
        """The settings that matter for this metric (irrelevant ones are left out): the metric's
        :meth:`~hedonic_neurons.synergy.base.SynergyMetric.describe_settings`."""
        return METRICS.get(self.metric).describe_settings(self, self.metric)


# --------------------------------------------------------------------------------------- helpers


def _fp32(weights: MLPWeights) -> MLPWeights:
    return weights.map(lambda t: t.detach().to(torch.float32))


def _check_finite(tensor: torch.Tensor, what: str, layer: int, batch: int) -> None:
    if not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise DataError(
            f"non-finite {what} at layer {layer} in batch {batch} ({bad} values NaN/inf); "
            "expected finite values (check the model weights; in half precision try --dtype float32)"
        )


def sample_pairs(n: int, max_pairs: int | None, seed: int) -> np.ndarray:
    """Unordered neuron pairs (i < j) as an (m, 2) array: all of them, or ``max_pairs`` drawn
    uniformly without replacement with ``seed``, sorted."""
    total = n * (n - 1) // 2
    if max_pairs is None or max_pairs >= total:
        i, j = np.triu_indices(n, k=1)
        return np.stack([i, j], 1).astype(np.int64)
    flat = np.sort(np.random.default_rng(seed).choice(total, size=max_pairs, replace=False))
    # invert the row-major enumeration of the strict upper triangle
    i = (n - 2 - np.floor(np.sqrt(-8 * flat + 4 * n * (n - 1) - 7) / 2.0 - 0.5)).astype(np.int64)
    j = (flat + i + 1 - n * (n - 1) // 2 + (n - i) * ((n - i) - 1) // 2).astype(np.int64)
    return np.stack([i, j], 1)


def check_pairs(pairs: Any, n: int) -> np.ndarray:
    """Neuron pairs as a sorted (m, 2) int64 array with i < j, duplicates removed; a one-line
    :class:`ConfigError` (naming ``pairs=``) unless every row is two different indices in
    0..n-1."""
    arr = np.asarray(pairs)
    if arr.size == 0 or arr.ndim != 2 or arr.shape[1] != 2 or arr.dtype.kind not in "iu":
        raise ConfigError(
            f"{arg('pairs')} must be a non-empty list of (i, j) neuron index pairs, got an array of shape "
            f"{arr.shape} and dtype {arr.dtype}"
        )
    arr = arr.astype(np.int64)
    bad = np.flatnonzero((arr < 0).any(1) | (arr >= n).any(1) | (arr[:, 0] == arr[:, 1]))
    if bad.size:
        i, j = arr[bad[0]]
        raise ConfigError(
            f"{arg('pairs')}: pair {int(bad[0])} is ({int(i)}, {int(j)}); expected two different "
            f"neurons in 0..{n - 1}"
        )
    return np.unique(np.sort(arr, axis=1), axis=0)


def phi_summary(phi: np.ndarray, mask: np.ndarray | None = None) -> dict[str, Any]:
    """Distribution of the off-diagonal entries of φ (or of the entries where ``mask``)."""
    n = phi.shape[0]
    keep = ~np.eye(n, dtype=bool) if mask is None else mask
    vals = phi[keep].astype(np.float64)
    out: dict[str, Any] = {
        "finite": bool(np.isfinite(phi).all()),
        "symmetric": bool(np.array_equal(phi, phi.T)),
        "zero_diagonal": bool(np.all(np.diagonal(phi) == 0)),
        "entries": int(vals.size),
    }
    if vals.size:
        q = np.quantile(vals, [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99])
        out.update(
            min=float(vals.min()),
            max=float(vals.max()),
            mean=float(vals.mean()),
            std=float(vals.std()),
            quantiles={k: float(v) for k, v in zip(("p01", "p05", "p25", "p50", "p75", "p95", "p99"), q)},
            fraction_positive=float((vals > 0).mean()),
            fraction_zero=float((vals == 0).mean()),
            all_zero=bool(np.all(vals == 0)),
        )
    return out


# ------------------------------------------------------------------------------------ collectors


@METRICS.register("oca")
class OCACollector(SynergyMetric):
    """Streaming Moments of every pending layer, from one forward pass per batch.

    ``settings.accumulate == "mixed"``: activations are recorded (and mean-pooled) in the model's
    dtype, float32 for a half-precision model, and their products added into float64 sums;
    ``"fp64"``: recorded in float64, as originally. The layers share one scratch workspace.

    Standard errors (``phi_se``): normal theory for the statistic with the number of inputs as
    the number of independent samples (:func:`~hedonic_neurons.synergy.oca.oca_se`: Fisher's z
    for ``corr``), written when there are at least 4 inputs (2 for ``cov``).
    """

    name = "oca"
    settings_fields = ("pooling", "statistic")
    multi_layer = True
    streaming = True

    def __init__(self, nm: NeuronModel, layers: Sequence[int], settings: CollectSettings) -> None:
        from hedonic_neurons.neurons import Moments

        self.nm, self.layers, self.settings = nm, list(layers), settings
        self.accumulate = settings.accumulate
        model_dtype = getattr(nm, "dtype", torch.float32)
        if self.accumulate == "fp64":
            self.record_dtype = torch.float64
        else:
            self.record_dtype = (
                model_dtype if model_dtype in (torch.float32, torch.float64) else torch.float32
            )
        self.workspace: dict[Any, torch.Tensor] = {}  # scratch shared by the layers' updates
        self.moments = {
            layer: Moments(
                nm.n_neurons, device=nm.device, accumulate=self.accumulate, workspace=self.workspace
            )
            for layer in self.layers
        }
        self.inputs = 0
        self.tokens = 0
        self._stack: Any = None

    def __enter__(self) -> OCACollector:
        from contextlib import ExitStack

        from hedonic_neurons.neurons import record

        self._stack = ExitStack()
        self.rec = self._stack.enter_context(
            record(
                self.nm.model,
                self.layers,
                pooling=self.settings.pooling,
                dtype=self.record_dtype,
                stop_after=True,
            )
        )
        self.rec.moments = self.moments  # the recorder streams into our accumulators
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.close()

    def update(self, batch: dict[str, Any], index: int) -> None:
        self.rec(batch)
        for layer in self.layers:
            _check_finite(self.moments[layer].sum, "activations", layer, index)
        self.inputs += int(batch["attention_mask"].shape[0])
        self.tokens += int(batch["attention_mask"].sum())

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {
            f"{layer}.{k}": v.cpu()
            for layer in self.layers
            for k, v in self.moments[layer].state_dict().items()
        }
        state["inputs"] = torch.tensor(self.inputs)
        state["tokens"] = torch.tensor(self.tokens)
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        from hedonic_neurons.neurons import Moments

        for layer in self.layers:
            part = {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith(f"{layer}.")}
            self.moments[layer] = Moments.from_state_dict(
                part, device=self.nm.device, accumulate=self.accumulate
            )
            self.moments[layer].workspace = self.workspace
        self.inputs, self.tokens = int(state["inputs"]), int(state["tokens"])

    def all_reduce(self) -> None:
        for moments in self.moments.values():
            moments.all_reduce()
        self.inputs, self.tokens = _all_reduce_ints(self.inputs, self.tokens)

    def result(self, layer: int) -> tuple[np.ndarray, dict[str, Any]]:
        moments = self.moments[layer]
        down = self.nm.mlp_weights(layer).down
        phi = oca_phi(moments, down, statistic=self.settings.statistic)
        meta = {"n_inputs": self.inputs, "n_tokens": self.tokens, "n_samples": int(moments.count)}
        least = 4 if self.settings.statistic == "corr" else 2
        if self.inputs >= least:
            estimator = (
                "(1 - |cos|) * (1 - rho^2) / sqrt(N - 3): delta method on Fisher's z"
                if self.settings.statistic == "corr"
                else "(1 - |cos|) * sqrt((var_i var_j + cov_ij^2) / (N - 1)): normal theory"
            )
            se = {"estimator": estimator, "N": self.inputs, "N_is": "inputs (independent samples)"}
        else:
            se = {"estimator": None, "why": f"{self.inputs} inputs; at least {least} needed"}
        return phi, {**meta, "accumulate": self.accumulate, "se": se}

    def arrays(self, layer: int) -> dict[str, np.ndarray]:
        """``phi_se`` (see the class docstring), or nothing with too few inputs."""
        least = 4 if self.settings.statistic == "corr" else 2
        if self.inputs < least:
            return {}
        down = self.nm.mlp_weights(layer).down
        se = oca_se(self.moments[layer], down, self.inputs, statistic=self.settings.statistic)
        return {"phi_se": se}


@METRICS.register("pas")
class PASCollector(SynergyMetric):
    """Streaming Σ_x of Δ_ij (or its taylor / grad-outer value) for one layer, and Σ_x of its
    square, so that ``phi_se`` = sd / √N over the N inputs (:meth:`PairSums.se`)."""

    name = "pas"
    settings_fields = ("mode", "readout", "ablation")
    multi_layer = False
    streaming = False
    options = ("max_elements", "pair_dtype", "pairs")

    @classmethod
    def check_settings(cls, settings: Any) -> None:
        if settings.readout == "full" and settings.mode != "exact":
            raise ConfigError(
                f"{arg('readout')} full supports {arg('mode')} exact only (got '{settings.mode}'); "
                "taylor and grad-outer use the local readout"
            )

    @classmethod
    def needs_reference(cls, settings: Any) -> bool:
        return settings.ablation == "reference"

    @classmethod
    def describe_settings(cls, settings: Any, metric: str) -> dict[str, Any]:
        out = super().describe_settings(settings, metric)
        out["pooling"] = "readout"
        if settings.readout == "full" or (settings.readout == "next-block" and settings.mode == "exact"):
            out["max_pairs"] = settings.max_pairs
        return out

    @classmethod
    def create(cls, nm: NeuronModel, layers: Sequence[int], settings: Any, **options: Any) -> PASCollector:
        (layer,) = layers
        return cls(nm, layer, settings, **{k: v for k, v in options.items() if k in cls.options})

    def __init__(
        self,
        nm: NeuronModel,
        layer: int,
        settings: CollectSettings,
        *,
        max_elements: int = MAX_ELEMENTS,
        pair_dtype: torch.dtype = torch.float32,
        pairs: np.ndarray | None = None,
    ) -> None:
        """``pair_dtype``: precision of the tanh-pooler path's per-pair work (BERT's head; the
        other heads combine in float64). float32 is exact to about 1e-7 of max|φ| there
        (the second difference is computed without cancellation, see
        :func:`~hedonic_neurons.synergy.pas.exact_local_sum`) and ~1.3x faster than float64.
        ``pairs``: the neuron pairs (m, 2) to report (:func:`check_pairs`); φ and its standard
        errors are zero elsewhere. Default: for the ``full`` readout and the exact ``next-block``
        one ``settings.max_pairs`` pairs drawn with ``settings.seed`` (all pairs when it is None),
        otherwise all pairs (the closed forms compute every pair at once)."""
        from hedonic_neurons.neurons import local_head

        self.nm, self.layer, self.settings = nm, layer, settings
        self.layers = [layer]
        self.max_elements, self.pair_dtype = max_elements, pair_dtype
        self.sums = PairSums(nm.n_neurons, device=nm.device, squares=True)
        self.reference: MLPWeights | None = None
        if settings.ablation == "reference":
            if not getattr(nm, "has_reference", False):
                raise reference_error()
            self.reference = nm.reference_mlp_weights(layer)
        self.pairs: np.ndarray | None = None if pairs is None else check_pairs(pairs, nm.n_neurons)
        self.head_kind = "ablation"
        if settings.readout == "full":
            if self.pairs is None:
                self.pairs = sample_pairs(nm.n_neurons, settings.max_pairs, settings.seed)
            return
        self.weights = _fp32(nm.mlp_weights(layer))
        self.ref32 = _fp32(self.reference) if self.reference is not None else None
        if settings.readout == "next-block":  # the model above the layer, per batch (update)
            if self.pairs is None and settings.mode == "exact":
                self.pairs = sample_pairs(nm.n_neurons, settings.max_pairs, settings.seed)
            self.head_kind = "next-block"
            return
        self.head = local_head(nm, layer, dtype=torch.float32)  # copies: safe to freeze
        for module in (self.head.norm, self.head.pooler):
            if module is not None:
                module.requires_grad_(False)
        self.structured: NormAffineHead | NormTanhHead | None = None
        if settings.mode == "exact":
            self.structured = structured_head(self.head, nm.d_model)
            self.head_kind = {NormAffineHead: "gram", NormTanhHead: "tanh"}.get(
                type(self.structured), "generic"
            )
        else:
            self.head_kind = "autograd"

    def __enter__(self) -> PASCollector:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def update(self, batch: dict[str, Any], index: int) -> None:
        mask = batch["attention_mask"]
        if self.settings.readout == "full":
            self._update_full(batch, index)
        else:
            self._update_local(batch, index)
        self.sums.count += int(mask.shape[0])
        self.sums.tokens += int(mask.sum())

    def _update_local(self, batch: dict[str, Any], index: int) -> None:
        from hedonic_neurons.neurons import capture_site

        cap = capture_site(self.nm.model, batch, self.layer)
        r = cap.resid.to(torch.float32)
        x = cap.mlp_input.to(torch.float32)
        a = self.weights.activations(x)
        _check_finite(a, "activations", self.layer, index)
        _check_finite(r, "residual stream", self.layer, index)
        a_ref = self.ref32.activations(x) if self.ref32 is not None else None
        down = self.weights.down
        ref_down = self.ref32.down if self.ref32 is not None else None
        n, d = down.shape[1], down.shape[0]
        step = max(1, MAX_SHIFT_ELEMENTS // (n * d))
        out, sq = self.sums.sum, self.sums.sq
        mode = self.settings.mode
        next_block = self.settings.readout == "next-block"
        upper = NextBlockReadout(self.nm, batch, self.layer) if next_block else None
        for s in range(0, r.shape[0], step):
            rows = slice(s, s + step)
            if mode == "grad-outer":
                with torch.enable_grad():
                    g_r = head_gradients(self.head, r[rows]) if upper is None else upper.gradients(rows)
                grads = g_r.detach().to(down.dtype) @ down
                grad_outer_sum(grads, a[rows], out, sq)
                continue
            shifts = residual_shifts(a[rows], down, a_ref[rows] if a_ref is not None else None, ref_down)
            if upper is not None and mode == "exact":
                exact_pairs_sum(upper, shifts, self.pairs, out, sq, rows=rows)
            elif mode == "taylor":
                with torch.enable_grad():
                    hess = head_hessians(self.head, r[rows]) if upper is None else upper.hessians(rows)
                taylor_sum(shifts, hess.detach(), out, sq)
            else:
                head = self.structured if self.structured is not None else self.head
                exact_local_sum(
                    r[rows], shifts, head, out, max_elements=self.max_elements, dtype=self.pair_dtype, sq=sq
                )

    def _update_full(self, batch: dict[str, Any], index: int) -> None:
        from hedonic_neurons.neurons import ablation_logits

        pairs = self.pairs
        singles = np.unique(pairs)
        where = {int(i): k + 1 for k, i in enumerate(singles)}
        sets = [[]] + [[int(i)] for i in singles] + [[int(i), int(j)] for i, j in pairs]
        logits = ablation_logits(
            self.nm.model,
            batch,
            self.layer,
            sets,
            mode=self.settings.ablation,
            reference=self.reference,
            readout="full",
            max_batch=MAX_ABLATION_ROWS,
        )
        logits = logits.to(torch.float64)
        _check_finite(logits, "logits", self.layer, index)
        base = logits[0]
        single_rows = torch.as_tensor([where[int(i)] for i in pairs[:, 0]])
        single_cols = torch.as_tensor([where[int(j)] for j in pairs[:, 1]])
        pair_rows = torch.arange(len(pairs)) + 1 + len(singles)
        delta = PAS_SIGN * (base - logits[single_rows] - logits[single_cols] + logits[pair_rows])
        ii, jj = torch.as_tensor(pairs[:, 0]), torch.as_tensor(pairs[:, 1])
        out, sq = self.sums.sum, self.sums.sq
        total, squares = delta.sum(1).to(out), delta.square().sum(1).to(out)
        out[ii, jj] += total
        out[jj, ii] += total
        sq[ii, jj] += squares
        sq[jj, ii] += squares

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = self.sums.state_dict()
        return {
            "sum": state["sum"],
            "sq": state["sq"],
            "count": torch.tensor(state["count"]),
            "tokens": torch.tensor(state["tokens"]),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore; a checkpoint without ``sq`` (written before standard errors) is a KeyError."""
        self.sums = PairSums.from_state_dict(
            {
                "sum": state["sum"],
                "sq": state["sq"],
                "count": int(state["count"]),
                "tokens": int(state["tokens"]),
            },
            device=self.nm.device,
        )

    def all_reduce(self) -> None:
        self.sums.all_reduce()

    def _mask(self) -> np.ndarray | None:
        if self.pairs is None:
            return None
        n = self.sums.n
        mask = np.zeros((n, n), dtype=bool)
        mask[self.pairs[:, 0], self.pairs[:, 1]] = mask[self.pairs[:, 1], self.pairs[:, 0]] = True
        return mask

    def summary_mask(self, layer: int) -> np.ndarray | None:
        mask = self._mask()
        if mask is not None:
            mask = np.triu(mask, 1)  # each requested pair once
        return mask

    def arrays(self, layer: int) -> dict[str, np.ndarray]:
        """``phi_se``: sd / √N of the per-input values over the N inputs (needs N ≥ 2)."""
        if self.sums.count < 2:
            return {}
        se = self.sums.se().to(torch.float32).cpu().numpy()
        mask = self._mask()
        if mask is not None:
            se[~mask] = 0.0
        return {"phi_se": se}

    def result(self, layer: int) -> tuple[np.ndarray, dict[str, Any]]:
        phi = self.sums.mean().to(torch.float32).cpu().numpy()
        mask = self._mask()
        if mask is not None:
            phi[~mask] = 0.0
        meta: dict[str, Any] = {
            "n_inputs": self.sums.count,
            "n_tokens": self.sums.tokens,
            "n_samples": self.sums.count,
            "head": self.head_kind,
            "sign": "phi = E[l - l_-i - l_-j + l_-ij]; positive = complements (the paper's sign)",
        }
        if self.settings.mode == "grad-outer":
            meta["sign"] = "phi = -E[(g*a)(g*a)^T], the public code's surrogate as it is (for comparison)"
        if self.pairs is not None:
            meta["pairs"] = {
                "requested": len(self.pairs),
                "unrequested_entries": "0",
                "list": self.pairs.tolist() if len(self.pairs) <= 100_000 else None,
            }
        if self.sums.count >= 2:
            meta["se"] = {"estimator": "sd / sqrt(N) of the per-input values", "N": self.sums.count}
        else:
            meta["se"] = {"estimator": None, "why": f"{self.sums.count} input; at least 2 needed"}
        return phi, meta


def _all_reduce_ints(*values: int) -> tuple[int, ...]:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return tuple(round(v) for v in t.tolist())


# ------------------------------------------------------------------------------------ the runner


def phi_path(out_dir: str | Path, layer: int) -> Path:
    return Path(out_dir) / f"phi_layer{layer}.safetensors"


def _identity(nm: NeuronModel, settings: CollectSettings, data: str, n_pairs: int) -> dict[str, Any]:
    fmt = getattr(nm, "input_format", None)
    return {
        "settings": settings.to_dict(),
        "model": getattr(nm, "identity", None),
        "input_format": fmt.to_dict() if fmt is not None else None,
        "data": {"spec": data, "pairs": n_pairs},
        "dtype": str(getattr(nm, "dtype", "")).replace("torch.", ""),
    }


def _key(identity: dict[str, Any]) -> str:
    return cache_key(identity)


def _finished(path: Path, key: str) -> bool:
    sidecar = path.with_suffix(".json")
    if not (path.is_file() and sidecar.is_file()):
        return False
    found = read_json(sidecar).get("key")
    if found != key:
        raise ConfigError(
            f"{path} exists but was made with different settings (key {found}, this run {key}); "
            "use another --out or delete it"
        )
    return True


def _save_checkpoint(path: Path, collector: Any, key: str, position: int, world: World) -> None:
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in collector.state_dict().items()}
    meta = {"key": key, "position": str(position), "world": str(world.size), "rank": str(world.rank)}
    atomic_write_bytes(path, save(state, metadata=meta))


def _load_checkpoint(path: Path, key: str, world: World) -> tuple[dict[str, torch.Tensor], int] | None:
    from safetensors import safe_open

    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
        if meta.get("key") != key or meta.get("world") != str(world.size):
            return None
        state = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open has no iterator)
    return state, int(meta["position"])


def _check_out_dir(out_dir: Path) -> None:
    from hedonic_neurons.validation import check_phi_folder

    check_phi_folder(out_dir)


@locks_output("out_dir", check=_check_out_dir)
def collect(
    nm: NeuronModel,
    pairs: Sequence[Any],
    layers: Sequence[int],
    settings: CollectSettings,
    out_dir: str | Path,
    *,
    data: str = "",
    world: World | None = None,
    checkpoint_every: int = 10,
    progress: bool = True,
    max_elements: int = MAX_ELEMENTS,
    pair_dtype: torch.dtype = torch.float32,
    stop_after: int | None = None,
) -> list[Path]:
    """Collect φ of ``layers`` over ``pairs`` and write ``out_dir/phi_layer{L}.safetensors`` (+ .json).

    ``nm``: a NeuronModel (``model``, ``encode``, ``mlp_weights``, ``reference_mlp_weights``,
    ``n_neurons``, ``d_model``, ``device``, ``identity``, ``input_format``). ``pairs``: objects
    with ``query`` and ``passage``. Finished layers are skipped and partial passes resumed (see the
    module docstring). ``stop_after``: process at most this many batches on this rank and return
    without writing (for tests of resuming). Returns the phi paths of all requested layers.
    ``out_dir`` is locked while collecting (:mod:`hedonic_neurons.locking`: a second collection
    into it is refused) and its sidecars and checkpoints are checked first; an empty ``.partial``
    folder is removed at the end.
    """
    settings.check()
    metric = METRICS.get(settings.metric)
    world = world or World()
    layers = sorted({int(nm.check_layer(int(layer))) for layer in layers})
    if not layers:
        raise ConfigError(f"no layers given (expected e.g. {arg('layers')} 2,3,4)")
    if metric.needs_reference(settings) and not getattr(nm, "has_reference", False):
        raise reference_error()
    pairs = list(pairs)[: settings.max_inputs] if settings.max_inputs else list(pairs)
    if not pairs:
        raise DataError(f"{data or 'the data'}: no usable (query, passage) rows; expected at least one")
    out_dir = Path(out_dir)
    identity = _identity(nm, settings, data, len(pairs))
    key = _key(identity)
    pending = [layer for layer in layers if not _finished(phi_path(out_dir, layer), key)]
    groups = [pending] if metric.multi_layer and pending else [[layer] for layer in pending]
    n_batches = math.ceil(len(pairs) / settings.batch_size)
    shard = list(world.shard(n_batches))
    for group in groups:
        name = f"{settings.metric}-layers{'_'.join(map(str, group))}"
        ckpt = out_dir / ".partial" / f"{name}.rank{world.rank}.safetensors"
        collector = metric.create(nm, group, settings, max_elements=max_elements, pair_dtype=pair_dtype)
        start = 0
        loaded = _load_checkpoint(ckpt, key, world)
        if loaded is not None:
            try:
                collector.load_state_dict(loaded[0])
                start = loaded[1]
            except KeyError as exc:  # a checkpoint of an older version, without an accumulator
                warnings.warn(
                    f"{ckpt}: checkpoint lacks the accumulator {exc.args[0]!r} (written by an older "
                    "version); that pass starts over",
                    HedonicNote,
                    stacklevel=2,
                )
                collector = metric.create(
                    nm, group, settings, max_elements=max_elements, pair_dtype=pair_dtype
                )
        done = _run_pass(
            collector,
            nm,
            pairs,
            shard,
            start,
            settings,
            ckpt,
            key,
            world,
            checkpoint_every,
            progress,
            name,
            stop_after,
        )
        if not done:
            return [phi_path(out_dir, layer) for layer in layers]
        collector.all_reduce()
        if world.is_main:
            for layer in group:
                _write(collector, layer, nm, identity, key, out_dir)
        barrier()
        ckpt.unlink(missing_ok=True)
    return [phi_path(out_dir, layer) for layer in layers]


def _run_pass(
    collector: Any,
    nm: NeuronModel,
    pairs: list[Any],
    shard: list[int],
    start: int,
    settings: CollectSettings,
    ckpt: Path,
    key: str,
    world: World,
    checkpoint_every: int,
    progress: bool,
    name: str,
    stop_after: int | None,
) -> bool:
    from tqdm.auto import tqdm

    bar = tqdm(
        total=len(shard), initial=start, desc=name, unit="batch", disable=not (progress and world.is_main)
    )
    size = settings.batch_size
    processed = 0
    with collector, torch.no_grad(), bar:
        for position in range(start, len(shard)):
            if stop_after is not None and processed >= stop_after:
                return False
            b = shard[position]
            batch = encode_pairs(nm, pairs[b * size : (b + 1) * size], start=b * size)
            collector.update(batch, b)
            processed += 1
            bar.update(1)
            if (position + 1) % checkpoint_every == 0 and position + 1 < len(shard):
                _save_checkpoint(ckpt, collector, key, position + 1, world)
    return True


def _write(
    collector: SynergyMetric, layer: int, nm: NeuronModel, identity: dict[str, Any], key: str, out_dir: Path
) -> Path:
    phi, meta = collector.result(layer)
    validate_phi(phi, name=f"phi of layer {layer}")
    arrays = collector.arrays(layer)
    mask = collector.summary_mask(layer)
    metadata = {
        "format": PHI_FORMAT,
        "layer": layer,
        "n_neurons": int(phi.shape[0]),
        **identity,
        **meta,
        "summary": phi_summary(phi, mask),
        "key": key,
    }
    return save_phi(phi_path(out_dir, layer), phi, metadata, arrays=arrays)
