"""Is φ valid? The run's φ against the full-model pairwise interaction Δ_ij (``phi_validity``).

φ is usually estimated cheaply: PAS with the local readout (the model's head applied to the
residual right after the layer) cannot see what neurons do through the layers above. This
evaluation measures, for a seeded sample of neuron pairs of the layer, the quantity φ stands in
for, on held-out test inputs and through the whole model:

    Δ_ij = mean over inputs of f(∅) − f({i}) − f({j}) + f({i, j})

with f(A) the model's output logit when the neurons of A are ablated (the evaluation's first
usable ablation mode; PAS's sign: > 0 means complements). Half of the pairs are the largest |φ|
entries (the ones a partition is built from), half uniform over the other pairs. Every pair's
sets {i}, {j}, {i, j} and the empty set are ablated in one batched
:func:`~hedonic_neurons.neurons.ablation_logits` call per batch of inputs (each neuron's single
set once however many pairs it is in). The passes run in float64 by default: a pair's Δ is often
far below the float32 rounding of the logit it is a difference of.

Reported per layer: Spearman and Pearson correlation of φ with Δ over the sampled pairs (and
Spearman within the top-|φ| and the uniform halves), sign agreement over the pairs whose |Δ| is
above rounding, and the least-squares slope and intercept of φ on Δ (1 and 0 when φ is Δ).
The rows of kind ``"pair"`` hold each sampled pair's (Δ, φ), for
:func:`hedonic_neurons.plot.phi_calibration`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from hedonic_neurons.errors import ConfigError, arg
from hedonic_neurons.evaluate.base import EVALUATIONS, Evaluation, LayerContext

if TYPE_CHECKING:
    from hedonic_neurons.models.neuron_model import NeuronModel

ROUNDING_FACTOR = 16.0
"""|Δ| counts as above rounding when it exceeds this many machine epsilons (of the logits' dtype)
times the mean |unablated logit|: a four-term difference of logits carries about 4 ε |f| of
rounding."""


def sample_pairs(
    phi: np.ndarray, n_pairs: int, seed: int | Sequence[int] = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(pairs (K, 2) with i < j, top (K,) bool): the ``n_pairs // 2`` pairs of largest |φ| (ties:
    the lower pair index first), then pairs drawn uniformly without replacement from the rest
    with ``seed``; every pair when there are no more than ``n_pairs``. ``top`` marks the first
    kind."""
    arr = np.asarray(phi, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1] or arr.shape[0] < 2:
        raise ConfigError(f"phi must be a square n x n matrix with n >= 2, got shape {arr.shape}")
    if int(n_pairs) < 2:
        raise ConfigError(f"{arg('n_pairs')} must be at least 2 (half top |φ|, half uniform), got {n_pairs}")
    ii, jj = np.triu_indices(arr.shape[0], 1)
    values = np.abs(arr[ii, jj])
    if not np.isfinite(values).all():
        raise ConfigError("phi has non-finite entries; expected a finite matrix")
    n_top = int(n_pairs) // 2
    order = np.argsort(-values, kind="stable")
    if ii.size <= n_pairs:
        top = np.zeros(ii.size, dtype=bool)
        top[order[:n_top]] = True
        return np.stack([ii, jj], 1), top
    chosen = order[:n_top]
    rest = np.sort(order[n_top:])
    drawn = np.sort(np.random.default_rng(seed).choice(rest, int(n_pairs) - n_top, replace=False))
    pick = np.concatenate([chosen, drawn])
    top = np.arange(pick.size) < n_top
    return np.stack([ii[pick], jj[pick]], 1), top


@contextmanager
def in_dtype(model: torch.nn.Module, dtype: torch.dtype | None) -> Iterator[None]:
    """``model``'s floating-point parameters and buffers cast in place to ``dtype`` inside the
    block, each cast back to its own type on exit (also after an exception); ``None``: no cast."""
    if dtype is None:
        yield
        return
    saved = [
        (module, kind, name, t.dtype)
        for module in model.modules()
        for kind, tensors in (
            ("param", module.named_parameters(recurse=False)),
            ("buffer", module.named_buffers(recurse=False)),
        )
        for name, t in tensors
        if t.is_floating_point() and t.dtype != dtype
    ]
    cast = [(module, kind, name, dtype) for module, kind, name, _ in saved]
    try:
        _cast(cast)
        yield
    finally:
        _cast(saved)


@torch.no_grad()
def _cast(plan: list[tuple[torch.nn.Module, str, str, torch.dtype]]) -> None:
    for module, kind, name, dtype in plan:
        tensor = getattr(module, name)
        if kind == "param":
            tensor.data = tensor.data.to(dtype)
        else:  # a registered buffer: assignment replaces it in place of the old one
            setattr(module, name, tensor.to(dtype))


@torch.no_grad()
def full_model_deltas(
    nm: NeuronModel,
    inputs: Sequence[Any],
    layer: int,
    pairs: np.ndarray | Sequence[Sequence[int]],
    *,
    mode: str = "reference",
    reference: Any = None,
    means: Any = None,
    batch_size: int = 16,
    max_rows: int = 256,
    dtype: torch.dtype | None = torch.float64,
) -> tuple[np.ndarray, float]:
    """(Δ (K, N) per pair and input, the rounding floor): Δ_ij = f(∅) − f({i}) − f({j}) + f({i, j})
    for each neuron pair of ``pairs`` (K, 2) on each of the ``inputs`` (objects with ``query`` and
    ``passage``), f the model's output logit with the neurons of the set ablated at ``layer``
    (``mode``, ``reference``, ``means`` as in :func:`~hedonic_neurons.neurons.ablation_logits`;
    reference ablation defaults to the model's reference weights). One ablation call per batch of
    ``batch_size`` inputs, at most ``max_rows`` rows (sets × inputs) per forward pass. The floor:
    :data:`ROUNDING_FACTOR` machine epsilons of the logits' dtype times the mean |f(∅)|.

    ``dtype``: the floating-point type the passes run in (default float64: a pair's Δ is often
    far below float32 rounding of the logit). The model's floating-point parameters and buffers
    are cast in place for the passes and each is cast back to its own type afterwards (exact:
    float32, float16 and bfloat16 values are all float64 values); reference weights and means
    are cast too. ``None``: the model's own types."""
    from hedonic_neurons.neurons import ablation_logits
    from hedonic_neurons.synergy.pas import PAS_SIGN

    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if len(inputs) == 0:
        raise ConfigError("full_model_deltas needs at least one input; got none")
    singles = np.unique(pairs)
    where = {int(u): k + 1 for k, u in enumerate(singles)}
    sets = [[]] + [[int(u)] for u in singles] + [[int(i), int(j)] for i, j in pairs]
    rows_i = np.array([where[int(i)] for i in pairs[:, 0]], dtype=np.int64)
    rows_j = np.array([where[int(j)] for j in pairs[:, 1]], dtype=np.int64)
    rows_ij = 1 + len(singles) + np.arange(len(pairs))
    out = np.zeros((len(pairs), len(inputs)))
    base_abs, eps = 0.0, 0.0
    if dtype is not None and mode == "reference":
        if reference is None and getattr(nm, "has_reference", False):
            reference = nm.reference_mlp_weights(layer)
        if reference is not None:
            reference = reference.map(lambda t: t.to(dtype))
    if dtype is not None and means is not None:
        means = torch.as_tensor(means).to(dtype)
    with in_dtype(nm.model, dtype):
        for start in range(0, len(inputs), batch_size):
            chunk = inputs[start : start + batch_size]
            batch = nm.encode([p.query for p in chunk], [p.passage for p in chunk])
            logits = ablation_logits(
                nm, batch, layer, sets, mode=mode, reference=reference, means=means, readout="full",
                max_batch=max_rows,
            )  # fmt: skip
            eps = max(eps, float(torch.finfo(logits.dtype).eps))
            f = logits.double().cpu().numpy()
            base_abs += float(np.abs(f[0]).sum())
            out[:, start : start + len(chunk)] = PAS_SIGN * (f[0][None] - f[rows_i] - f[rows_j] + f[rows_ij])
    return out, ROUNDING_FACTOR * eps * base_abs / len(inputs)


def _corr(kind: str, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(correlation, two-sided p) by scipy; NaN for fewer than 3 points or a constant side."""
    from scipy import stats

    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan"), float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.spearmanr(x, y) if kind == "spearman" else stats.pearsonr(x, y)
    return float(res.statistic), float(res.pvalue)


def agreement(delta: np.ndarray, phi: np.ndarray, floor: float = 0.0) -> dict[str, float]:
    """How well ``phi`` (K,) tracks ``delta`` (K,): ``spearman`` (and ``spearman_p``),
    ``pearson``, ``sign_agreement`` (share of the ``signed_pairs`` with |Δ| > ``floor`` where φ
    has Δ's sign; a φ of 0 never agrees), and ``slope``, ``intercept`` of the least-squares line
    φ ≈ slope · Δ + intercept (NaN when Δ is constant)."""
    delta = np.asarray(delta, dtype=np.float64)
    phi = np.asarray(phi, dtype=np.float64)
    if delta.shape != phi.shape or delta.ndim != 1:
        raise ConfigError(f"delta and phi must be equal-length vectors, got {delta.shape} and {phi.shape}")
    rho, p = _corr("spearman", delta, phi)
    r, _ = _corr("pearson", delta, phi)
    signed = np.abs(delta) > floor
    agree = float(np.mean(np.sign(phi[signed]) == np.sign(delta[signed]))) if signed.any() else float("nan")
    if delta.size >= 2 and np.ptp(delta) > 0:
        slope, intercept = (float(v) for v in np.polyfit(delta, phi, 1))
    else:
        slope = intercept = float("nan")
    return {
        "spearman": rho,
        "spearman_p": p,
        "pearson": r,
        "sign_agreement": agree,
        "signed_pairs": int(signed.sum()),
        "slope": slope,
        "intercept": intercept,
    }


def _usable_mode(ctx: LayerContext) -> str | None:
    for mode in ctx.modes:
        if mode == "reference" and (ctx.reference is not None or getattr(ctx.nm, "has_reference", False)):
            return mode
        if mode == "mean" and ctx.means is not None:
            return mode
        if mode == "zero":
            return mode
    return None


DTYPES = {"float64": torch.float64, "float32": torch.float32, None: None}
"""The ``dtype`` settings of :class:`PhiValidity` (None: the model's own)."""

_STATS = ("spearman", "pearson", "sign_agreement", "slope", "spearman_top", "spearman_uniform")


@EVALUATIONS.register("phi_validity")
class PhiValidity(Evaluation):
    """φ against the full-model Δ_ij on held-out test inputs (see the module docstring).

    Settings (constructor arguments, or class attributes of a registered subclass): ``n_pairs``
    neuron pairs sampled per layer (half top |φ|, half uniform; seeded by ``seed`` and the
    layer), on at most ``max_inputs`` test pairs (whole queries, seeded), ``batch_size`` inputs per
    ablation call and at most ``max_rows`` rows per forward pass, run in ``dtype`` (``"float64"``,
    the default, or ``"float32"``; ``None``: the model's own; see :func:`full_model_deltas`).
    """

    per_method = False  # it measures φ, not a method's coalitions: not re-run on φ resamples

    title = "φ validity: φ against the full-model Δ_ij"
    n_pairs: int = 64
    max_inputs: int = 64
    seed: int = 0
    batch_size: int = 16
    max_rows: int = 256
    dtype: str | None = "float64"

    def __init__(
        self,
        n_pairs: int | None = None,
        max_inputs: int | None = None,
        seed: int | None = None,
        batch_size: int | None = None,
        max_rows: int | None = None,
        dtype: str | None = "default",
    ) -> None:
        if dtype != "default":
            if dtype not in DTYPES:
                raise ConfigError(f"{arg('dtype')} must be one of {list(DTYPES)}, got {dtype!r}")
            self.dtype = dtype
        lowest = {"n_pairs": 2, "max_inputs": 1, "seed": None, "batch_size": 1, "max_rows": 1}
        given = (n_pairs, max_inputs, seed, batch_size, max_rows)
        for (name, low), value in zip(lowest.items(), given):
            if value is None:
                continue
            if low is not None and int(value) < low:
                raise ConfigError(f"{arg(name)} must be at least {low}, got {value}")
            setattr(self, name, int(value))

    def evaluate(self, ctx: LayerContext) -> list[dict[str, Any]]:
        from hedonic_neurons.evaluate.null import query_subsample

        if ctx.phi is None:
            ctx.notes.append(f"phi_validity: layer {ctx.layer} has no φ; nothing to validate")
            return []
        mode = _usable_mode(ctx)
        if mode is None:
            ctx.notes.append(
                f"phi_validity: layer {ctx.layer}: none of the ablation modes {ctx.modes} can run "
                "(reference needs reference weights, mean needs the neurons' means)"
            )
            return []
        phi = np.asarray(ctx.phi, dtype=np.float64)
        pairs, top = sample_pairs(phi, self.n_pairs, seed=[int(self.seed), int(ctx.layer)])
        pick = query_subsample([p.qid for p in ctx.pairs], self.max_inputs, int(self.seed), min_queries=2)
        inputs = [ctx.pairs[int(k)] for k in pick]
        per_input, floor = full_model_deltas(
            ctx.nm, inputs, ctx.layer, pairs, mode=mode,
            reference=ctx.reference if mode == "reference" else None,
            means=ctx.means if mode == "mean" else None,
            batch_size=self.batch_size, max_rows=self.max_rows, dtype=DTYPES[self.dtype],
        )  # fmt: skip
        delta = per_input.mean(1)
        se = (
            per_input.std(1, ddof=1) / np.sqrt(per_input.shape[1])
            if per_input.shape[1] > 1
            else delta * np.nan
        )
        values = phi[pairs[:, 0], pairs[:, 1]]
        stats = agreement(delta, values, floor)
        summary = {
            "layer": ctx.layer,
            "kind": "summary",
            "phi": ctx.phi_source or "φ",
            "mode": mode,
            "pairs": len(pairs),
            "top_pairs": int(top.sum()),
            "inputs": len(inputs),
            "dtype": self.dtype or str(ctx.nm.dtype).removeprefix("torch."),
            **stats,
            "spearman_top": _corr("spearman", delta[top], values[top])[0],
            "spearman_uniform": _corr("spearman", delta[~top], values[~top])[0],
            "rounding_floor": floor,
        }
        points = [
            {
                "layer": ctx.layer,
                "kind": "pair",
                "i": int(i),
                "j": int(j),
                "sample": "top" if t else "uniform",
                "delta": float(d),
                "delta_se": float(s),
                "phi": float(v),
            }
            for (i, j), t, d, s, v in zip(pairs, top, delta, se, values)
        ]
        return [summary, *points]

    def tables(self, rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
        shown = [{k: v for k, v in r.items() if k != "kind"} for r in rows if r.get("kind") == "summary"]
        return {self.title: shown} if shown else {}

    def summary(self, rows: list[dict[str, Any]]) -> list[str]:
        out = []
        for r in rows:
            if r.get("kind") != "summary":
                continue
            f = {k: float("nan") if r.get(k) is None else float(r[k]) for k in _STATS}
            out.append(
                f"Layer {r['layer']}: {r['phi']} agrees with the full-model Δ_ij at Spearman "
                f"{f['spearman']:.2f} on {r['pairs']} neuron pairs ({r['top_pairs']} of the largest |φ|: "
                f"{f['spearman_top']:.2f}; the rest uniform: {f['spearman_uniform']:.2f}) over "
                f"{r['inputs']} held-out test inputs ({r['mode']} ablation, {r.get('dtype', '')}); Pearson {f['pearson']:.2f}, "
                f"signs agree on {f['sign_agreement']:.0%} of the {r['signed_pairs']} pairs with |Δ| above "
                f"rounding, slope of φ on Δ {f['slope']:.3g}."
            )
        return out
