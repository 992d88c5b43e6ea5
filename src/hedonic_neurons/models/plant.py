"""Planted coalitions: a real model with known synergistic neurons, made by weight surgery only.

:func:`plant` loads a model, replaces some neurons of MLP layer ``L`` (the *members*) and one
*reader* neuron per group at layer ``L + 1``, and writes the modified checkpoint plus a ground
truth JSON. Nothing is trained: every weight follows from a calibration pass over real inputs
(a few forward passes, one backward pass for a logit gradient), so planting takes seconds to
minutes, and the result is checked on held-out inputs.

Everything planted lives at the **readout token** (the token the head reads: CLS for BERT, the
last token for decoders), because that is where PAS measures the logit: members and readers are
gated off every other token by a linear readout-token indicator (Fisher's discriminant, or a
least-squares fit through the origin for gated MLPs, fitted so that the members' own writes do
not move it). For a group of g members:

* **Members read features.** Member i's pre-activation is ``s·(z_i − t_i)`` with
  ``z_i = a_i·(x − μ)`` a feature of the MLP input x (unit variance over the readout tokens) and
  ``t_i`` the quantile for the rate wanted. Features are whitened directions in the top principal
  subspace of x at the readout token, uncorrelated with each other there (ordered so that the
  other tokens stay near the readout mean on them), or, with ``features="probe"``, ridge probes
  of text properties (query-term overlap, passage length, query length) for the co-active groups.
  *Co-active* groups: members read the group's feature plus an equal member-specific part
  (member features correlate at 0.5; rate 0.7 each). *Independent* groups: each member reads its
  own feature (uncorrelated; rate 0.5^(1/g), so that all g fire together on about half of the
  readout tokens had they been binary).
* **Members write fresh directions.** Member i's output column is ``w·v_i / ā_i``: the v_i are
  orthonormal directions of the low-variance principal subspace of the residual stream
  (orthogonal to the all-ones vector under LayerNorm), ā_i the member's mean activation when
  active, so ``y_i = a_i / ā_i`` is about 1 when it fires; ``w`` is ``write`` times the median
  residual norm at the readout token.
* **A thresholded reader sums them.** How a write at layer L appears in the MLP input at
  L + 1 is measured by random-sign probing (every calibration input gets ±w along all v_i at
  once; the difference of the + and − passes regressed on the signs gives each image). The
  reader's input row is the minimum-variance unbiased decoder of ``Y = Σ_{i∈G} y_i`` from those
  images (generalised least squares against the MLP input's own variation; its R² on the planted
  model is recorded), and its pre-activation is ``s_r·(Ŷ − (g − ½))``: on by ½ with every
  member at its level, below threshold with one of them missing. Its output column writes along
  the mean gradient of the logit with respect to the residual after L + 1 at the readout token.
  The gain is ``effect`` logit standard deviations per unit of reader output, times a
  per-group factor (within 1/4..4) that brings the group's expected pairwise second
  difference at the reader, computed from the calibration sums, to 0.15: co-active groups cross
  their threshold on fewer inputs than independent ones, and would otherwise be weaker.
* **Every member of a group can be given the same strength** (``equal_strength``, default
  off: on MiniLM it changed nothing measurable, ARI 0.49 with it vs 0.55 without at k = 2 in
  docs/recovery.md, and it makes planting about 4x slower). The members of one group are meant
  to be exchangeable: each member's mean Δ with the other
  members (its *strength*) should be the same. Equal slopes, rates and levels do not make it so:
  a member's activation is continuous (its spread when on differs from member to member), its
  decoded part has its own gain, and reverting it to the neuron it replaced adds that neuron's
  write; on a tiny LLaMA the strengths then differ by about 0.2 of the group's mean Δ, and a game
  that picks each neuron's strongest partners splits a group along that order. So the reader
  weighs each member's decoded part: every member is reverted to its reference weights on the
  calibration inputs (up to ``STRENGTH_INPUTS``), which gives each member's drop of the decoded
  sum (the reverted neuron's own write included), and the weights (within ``STRENGTH_RANGE``)
  are adjusted until every member's mean reader-level second difference with the others is the
  same; the offset then keeps the weighted sum's mean. The weights and the spread of the
  strengths (sd / mean) before and after are in each group's ``calibration``; on held-out
  inputs the measured ``member_mean_delta`` and ``member_spread`` are in ``verified``. What
  remains is input-to-input variation: on one input, a member that is barely on interacts less
  with every other member, so Δ averaged over few inputs still has a member-wise order.

* **AND (complements)**: the reader adds ``+E·R(Ŷ − T)``, R the MLP's activation (convex where
  it matters). With R convex and every member's contribution non-negative, the second difference
  ``Δ_ij = ℓ − ℓ_{−i} − ℓ_{−j} + ℓ_{−ij}`` at the reader is ≥ 0 on every input, and > 0 where
  ablating i and j crosses the threshold. The logit sees it through the rest of the model, which
  is close to linear at these small effects (the default ``effect`` is 0.1 logit std: with
  larger ones the head's saturation, a concave function of the reader's output, can flip the
  sign of Δ for groups that overshoot their threshold).
* **OR / redundant (substitutes)**: each member also writes straight along the logit gradient
  at L (the same gain per unit of y), and the reader subtracts ``E·R(Ŷ − T)``: the group's
  effect is ``E·min(Σ y, T)``, so once g − 1 members are active the last adds nothing; Δ_ij ≤ 0
  on every input. (A pure "each alone saturates" OR of three or more co-active members has
  Δ = 0 at the full coalition: ablating two leaves a third that still saturates the unit.
  Saturating at g − 1 makes every pair of the group substitutes.)

Gated MLPs (LLaMA, Mistral, Qwen2) have no biases: the offsets ride on a linear functional that
is ≈ 1 at the readout token (its coefficient of variation is recorded), and the up projection
reads the readout indicator, which also gates the unit: ``gate = s·(a·x − t·one(x))``,
``up = ind(x)``.

The reference model for ablation is the unplanted one: ``hedonic collect OUT/model --reference
ORIGINAL`` (the command is in the ground truth) ablates a planted neuron back to the neuron it
replaced. Every other neuron equals its reference, so its φ_PAS under reference ablation is
exactly 0. Planting on a model with a LoRA adapter writes the unplanted merged model to
``OUT/original`` and makes it the reference.

The ground truth (``OUT/ground_truth.json``) lists the groups (kind, members, reader, feature,
thresholds, levels, decoder R², gains, calibration rates) and, measured on held-out inputs by
batched ablation with the full readout, each group's mean, minimum and maximum Δ over its pairs
and the fraction with the expected sign, each member's mean Δ with the others and their spread,
and the mean and largest |Δ| of pairs across groups.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import random
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from hedonic_neurons.errors import ConfigError, DataError, ModelError, arg
from hedonic_neurons.models.adapters import MLPWeights, linear_weight, mlp_modules, mlp_weights
from hedonic_neurons.models.neuron_model import pair_batches
from hedonic_neurons.models.reference import Reference
from hedonic_neurons.neurons.readout import site_hooks
from hedonic_neurons.neurons.recording import (
    StopForward,
    hooks,
    model_inputs,
    readout_positions,
    run_forward,
)

if TYPE_CHECKING:
    from hedonic_neurons.models.neuron_model import NeuronModel

PLANT_FORMAT = "hedonic-neurons/plant/v1"
KINDS = ("and", "or")
FEATURES = ("random", "probe")
PROBES = ("overlap", "passage_length", "query_length")
"""Text properties the ``probe`` features are fitted to (per (query, passage) input)."""

MEMBER_SLOPE = 4.0
"""Slope of a member's pre-activation per standard deviation of its feature."""
READER_SLOPE = 6.0
"""Slope of a reader's pre-activation per unit of the decoded group sum."""
SHARED_RATE = 0.7
"""Activation rate of the members of a co-active group (at the readout token)."""
ALL_ACTIVE = 0.5
"""Independent groups: the rate at which all members are active together (each has 0.5^(1/g))."""
JITTER = 1.0
"""Member-specific part of a co-active member's feature (relative to the shared one: the members'
features then correlate at 0.5)."""
DELTA_TARGET = 0.15
"""Each reader's gain is set so that its expected second difference over pairs of its members
(on the calibration inputs, in units of y) is this (within GAIN_RANGE)."""
GAIN_RANGE = (0.25, 4.0)
"""Bounds of that per-group factor on the reader's gain."""
SHRINK = 0.05
"""Shrinkage of the decoders' noise covariance towards its mean eigenvalue."""
FEATURE_RANK = 64
"""Features live in the span of this many top principal components of the MLP input (at most d/2)."""
GRADIENT_INPUTS = 64
"""Calibration inputs whose logit gradients give the readers' output direction."""
MAX_BIAS_CV = 0.5
"""Gated MLPs: the largest coefficient of variation (at the readout token) of the linear functional
that stands in for a bias."""
STRENGTH_INPUTS = 256
"""Equal strength: calibration inputs on which each member is reverted to its reference weights."""
STRENGTH_STEPS = 20
"""Equal strength: rounds of reweighting the members' decoded parts."""
STRENGTH_RANGE = (0.5, 2.0)
"""Equal strength: bounds of a member's weight in its reader's decoded sum."""


# ------------------------------------------------------------------------------------ the plan


@dataclass
class Group:
    """One planted coalition: ``kind`` "and" or "or", members (layer L), reader (layer L + 1)."""

    index: int
    kind: str
    members: list[int]
    reader: int
    coactive: bool
    feature: str = "random"
    rate: float = 0.0
    threshold: float = 0.0
    decoder_r2: float = float("nan")
    member_thresholds: list[float] = field(default_factory=list)
    member_levels: list[float] = field(default_factory=list)
    calibration: dict[str, Any] = field(default_factory=dict)
    verified: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.members)

    @property
    def sign(self) -> int:
        """The sign φ_PAS has within the group: +1 for AND (complements), -1 for OR (substitutes)."""
        return 1 if self.kind == "and" else -1

    def pairs(self) -> list[tuple[int, int]]:
        return [(i, j) for a, i in enumerate(self.members) for j in self.members[a + 1 :]]

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["size"] = self.size
        out["expected_sign"] = self.sign
        return out


@dataclass(frozen=True)
class PlantSpec:
    """What to plant (see :func:`plant`); :meth:`check` validates what needs no model."""

    layer: int
    and_groups: int = 8
    or_groups: int = 4
    min_size: int = 3
    max_size: int = 8
    and_sizes: tuple[int, ...] | None = None
    or_sizes: tuple[int, ...] | None = None
    independent: float = 0.5
    features: str = "random"
    effect: float = 0.1
    write: float = 0.02
    calibration: int = 256
    verify: int = 16
    max_length: int = 64
    batch_size: int = 32
    seed: int = 0
    equal_strength: bool = False

    def check(self) -> PlantSpec:
        """One-line :class:`ConfigError` for settings that are wrong whatever the model; self.

        Integers must be integers (not bools or floats): ``layer`` (negative counts from the
        end), ``and_groups``/``or_groups`` >= 0, ``min_size``/``max_size`` with
        2 <= min_size <= max_size, every explicit group size >= 2, ``calibration`` >= 16,
        ``verify`` >= 0, ``max_length`` >= 8, ``batch_size`` >= 1, ``seed`` >= 0; ``independent``
        a fraction in [0, 1]; ``effect`` and ``write`` finite and > 0; ``equal_strength`` a bool;
        at least one group.
        """
        _integer("layer", self.layer)
        for name in ("and_groups", "or_groups"):
            _integer(name, getattr(self, name), 0, "a non-negative integer")
        for name in ("min_size", "max_size"):
            _integer(name, getattr(self, name))
        if not 2 <= self.min_size <= self.max_size:
            raise ConfigError(
                f"group sizes {self.min_size}-{self.max_size}: expected 2 <= min_size <= max_size"
            )
        for name in ("and_sizes", "or_sizes"):
            sizes = getattr(self, name)
            if sizes is None:
                continue
            if isinstance(sizes, str | bytes) or not all(
                isinstance(v, int | np.integer) and not isinstance(v, bool) for v in sizes
            ):
                raise ConfigError(f"{arg(name)} {sizes!r}: expected a list of integer group sizes")
            if any(int(v) < 2 for v in sizes):
                raise ConfigError(f"{name} {list(sizes)}: every group needs at least 2 neurons")
        _integer("seed", self.seed, 0, "an integer >= 0")
        if not isinstance(self.equal_strength, bool | np.bool_):
            raise ConfigError(f"{arg('equal_strength')} {self.equal_strength!r}: expected True or False")
        ands, ors = self.group_sizes()
        if not ands and not ors:
            raise ConfigError("nothing to plant: give at least one AND or OR group")
        if not _real(self.independent) or not 0.0 <= self.independent <= 1.0:
            raise ConfigError(f"independent must be a fraction in [0, 1], got {self.independent!r}")
        if self.features not in FEATURES:
            raise ConfigError(f"unknown features '{self.features}' (expected one of {', '.join(FEATURES)})")
        for name in ("effect", "write"):
            value = getattr(self, name)
            if not (_real(value) and value > 0 and math.isfinite(value)):
                raise ConfigError(f"{name} must be a positive number, got {value!r}")
        for name, low, what in (
            ("calibration", 16, "at least 16 inputs"),
            ("verify", 0, "an integer >= 0 (inputs)"),
            ("max_length", 8, "an integer >= 8 (tokens)"),
            ("batch_size", 1, "an integer >= 1"),
        ):
            _integer(name, getattr(self, name), low, what)
        return self

    def group_sizes(self) -> tuple[list[int], list[int]]:
        """(AND sizes, OR sizes): explicit lists, or spread evenly over min..max, shuffled by seed."""
        rng = random.Random(self.seed)

        def spread(count: int) -> list[int]:
            sizes = [int(v) for v in np.rint(np.linspace(self.min_size, self.max_size, count))]
            rng.shuffle(sizes)
            return sizes

        ands = list(map(int, self.and_sizes)) if self.and_sizes is not None else spread(self.and_groups)
        ors = list(map(int, self.or_sizes)) if self.or_sizes is not None else spread(self.or_groups)
        return ands, ors


def _real(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


def _integer(name: str, value: Any, low: int | None = None, what: str = "an integer") -> None:
    """One :class:`ConfigError` unless ``value`` is an integer (not a bool) >= ``low``."""
    ok = isinstance(value, int | np.integer) and not isinstance(value, bool)
    if not ok or (low is not None and value < low):
        if name == "calibration" and ok:
            raise ConfigError(f"calibration needs at least 16 inputs, got {value}")
        raise ConfigError(f"{arg(name)} {value!r}: expected {what}")


# --------------------------------------------------------------------------------- capturing


def _score(nm: NeuronModel, output: Any, positions: torch.Tensor) -> torch.Tensor:
    """The model's scalar output per input (classification logit, or the score token's logit)."""
    logits = output.logits
    if logits.dim() == 2:
        return logits[:, 0]
    rows = torch.arange(logits.shape[0], device=logits.device)
    return logits[rows, positions, int(nm.score_token_id)]


@dataclass
class _Tokens:
    """Tensors over the non-pad tokens of the calibration batches (float64, CPU)."""

    x: np.ndarray  # (N, d) MLP input at L
    resid: np.ndarray  # (N, d) residual site at L
    readout: np.ndarray  # (N,) bool: the token the head reads
    x_readout: np.ndarray  # (B, d) MLP input at L at each input's readout token (batch order)


def _flags(mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    flags = torch.zeros_like(mask, dtype=torch.bool)
    flags[torch.arange(len(positions), device=positions.device), positions] = True
    return flags


def _capture_layer(nm: NeuronModel, batches: list[dict[str, torch.Tensor]], layer: int) -> _Tokens:
    """MLP input and residual at ``layer`` over the non-pad tokens (the forward stops there)."""
    model = nm.model
    up = mlp_modules(model, layer).up
    xs, rs, ro, x_ro = [], [], [], []
    for batch in batches:
        inputs = model_inputs(batch)
        mask = inputs["attention_mask"].bool()
        positions = readout_positions(model, inputs["attention_mask"])
        store: dict[str, torch.Tensor] = {}
        with torch.no_grad(), hooks() as hook_set:
            hook_set.pre(up, lambda module, args, store=store: store.__setitem__("x", args[0]))
            site_hooks(model, layer, hook_set, store, stop=True)
            run_forward(model, inputs)
        rows = torch.arange(len(positions), device=positions.device)
        xs.append(store["x"][mask].double().cpu())
        rs.append(store["resid"][mask].double().cpu())
        ro.append(_flags(mask, positions)[mask].cpu())
        x_ro.append(store["x"][rows, positions].double().cpu())
    return _Tokens(
        x=torch.cat(xs).numpy(),
        resid=torch.cat(rs).numpy(),
        readout=torch.cat(ro).numpy(),
        x_readout=torch.cat(x_ro).numpy(),
    )


def _gradients(
    nm: NeuronModel, batches: list[dict[str, torch.Tensor]], layer: int, limit: int
) -> tuple[np.ndarray, np.ndarray, dict[str, float], np.ndarray]:
    """Mean gradient of the model's logit with respect to the residual after ``layer`` and after
    ``layer + 1`` at the readout token, over the first ``limit`` inputs; the mean cosine of the
    per-input gradients with their mean; the logits."""
    model = nm.model
    downs = (mlp_modules(model, layer).down, mlp_modules(model, layer + 1).down)
    grads: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
    logits = []
    seen = 0
    for batch in batches:
        if seen >= limit:
            break
        inputs = model_inputs(batch)
        positions = readout_positions(model, inputs["attention_mask"])
        eps: list[torch.Tensor] = []

        def add_eps(module: nn.Module, args: Any, output: torch.Tensor, eps: list = eps) -> torch.Tensor:
            e = torch.zeros_like(output, requires_grad=True)
            eps.append(e)
            return output + e

        with torch.enable_grad(), hooks() as hook_set:
            for down in downs:
                hook_set.post(down, add_eps)
            score = _score(nm, run_forward(model, inputs), positions)
            g_here, g_next = torch.autograd.grad(score.sum(), eps)
        rows = torch.arange(len(positions), device=positions.device)
        grads[0].append(g_here[rows, positions].double().cpu())
        grads[1].append(g_next[rows, positions].double().cpu())
        logits.append(score.detach().double().cpu())
        seen += len(positions)
    gh, gn = torch.cat(grads[0]), torch.cat(grads[1])

    def mean_cos(g: torch.Tensor) -> float:
        return float(torch.nn.functional.cosine_similarity(g, g.mean(0)[None], dim=1).mean())

    cosines = {"layer": mean_cos(gh), "next_layer": mean_cos(gn)}
    return gh.mean(0).numpy(), gn.mean(0).numpy(), cosines, torch.cat(logits).numpy()


def _capture_next(
    nm: NeuronModel, batches: list[dict[str, torch.Tensor]], layer: int, members: list[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(activations of ``members`` at ``layer``, MLP input at ``layer + 1``, readout flags) over
    the non-pad tokens (the forward stops at the MLP of ``layer + 1``)."""
    model = nm.model
    here, nxt = mlp_modules(model, layer), mlp_modules(model, layer + 1)
    idx = torch.as_tensor(members, dtype=torch.long)
    acts, xs, ro = [], [], []
    for batch in batches:
        inputs = model_inputs(batch)
        mask = inputs["attention_mask"].bool()
        positions = readout_positions(model, inputs["attention_mask"])
        store: dict[str, torch.Tensor] = {}

        def save_acts(module: nn.Module, args: Any, store: dict = store) -> None:
            store["a"] = args[0][..., idx.to(args[0].device)]

        def save_next(module: nn.Module, args: Any, store: dict = store) -> None:
            store["x"] = args[0]
            raise StopForward

        with torch.no_grad(), hooks() as hook_set:
            hook_set.pre(here.down, save_acts)
            hook_set.pre(nxt.up, save_next)
            run_forward(model, inputs)
        acts.append(store["a"][mask].double().cpu())
        xs.append(store["x"][mask].double().cpu())
        ro.append(_flags(mask, positions)[mask].cpu())
    return torch.cat(acts).numpy(), torch.cat(xs).numpy(), torch.cat(ro).numpy()


# ------------------------------------------------------------------------------ the geometry


def _feature_rows(
    x: np.ndarray, readout: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, int]:
    """Candidate feature directions of the MLP input, best first: (rows (d, m), μ, rank).

    Over the readout tokens, projections ``z = row·(x − μ)`` (μ their mean) have unit variance
    and are uncorrelated with each other: the rows are whitened directions in the span of the
    top principal components of the readout tokens' x, orthogonal to μ in whitened coordinates
    (so ``row·μ = 0``: a gated MLP's stand-in bias then carries only the threshold). They are
    ordered by how close the *other* tokens stay to μ on them (the eigenvalues of the other
    tokens' second moment about μ, ascending), so a feature does not fire off the readout token
    by accident before the readout gate sees it.
    """
    xr = x[readout]
    mu = xr.mean(0)
    d = x.shape[1]
    vals, vecs = np.linalg.eigh(np.cov(xr - mu, rowvar=False))
    k = max(2, min(FEATURE_RANK, d // 2, len(xr) // 4))
    top_vals, top_vecs = vals[::-1][:k], vecs[:, ::-1][:, :k]
    white = top_vecs / np.sqrt(np.maximum(top_vals, 1e-12))
    basis = np.eye(k)
    w_mu = white.T @ mu
    if np.linalg.norm(w_mu) > 0:
        q, _ = np.linalg.qr(np.column_stack([w_mu / np.linalg.norm(w_mu), rng.standard_normal((k, k - 1))]))
        basis = q[:, 1:]
    rows = white @ basis
    others = x[~readout]
    if len(others):
        wo = (others - mu) @ rows
        _, u = np.linalg.eigh(wo.T @ wo / len(wo))
        rows = rows @ u  # ascending: the quietest for the other tokens first
    return rows, mu, k


def _probe_targets(pairs: Sequence[Any]) -> dict[str, np.ndarray]:
    from hedonic_neurons.data.text import cqtr, terms

    return {
        "overlap": np.array([cqtr(p.query, p.passage) for p in pairs]),
        "passage_length": np.array([len(terms(p.passage)) for p in pairs], dtype=float),
        "query_length": np.array([len(terms(p.query)) for p in pairs], dtype=float),
    }


def _probe_directions(
    x_readout: np.ndarray, targets: dict[str, np.ndarray]
) -> dict[str, tuple[np.ndarray, float]]:
    """Ridge probe (alpha by cross-validation) of each property from the readout token's MLP
    input: its direction (d,) and its cross-validated R²."""
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import cross_val_score

    out = {}
    for name, y in targets.items():
        if np.std(y) == 0:
            raise DataError(
                f"probe feature '{name}' is constant over the calibration inputs; use features='random'"
            )
        ridge = RidgeCV(alphas=np.logspace(-2, 4, 13)).fit(x_readout, y)
        r2 = cross_val_score(RidgeCV(alphas=[ridge.alpha_]), x_readout, y, cv=4, scoring="r2")
        out[name] = (np.asarray(ridge.coef_, dtype=np.float64), float(np.mean(r2)))
    return out


def _uses_layernorm(nm: NeuronModel, layer: int) -> bool:
    mods = mlp_modules(nm.model, layer)
    norm = mods.post_norm if mods.post_norm is not None else mods.mlp_norm
    return isinstance(norm, nn.LayerNorm)


def _quiet_directions(
    resid: np.ndarray, readout: np.ndarray, count: int, layernorm: bool, rng: np.random.Generator
) -> tuple[np.ndarray, float]:
    """``count`` orthonormal directions (d, count) in the low-variance principal subspace of the
    residual (orthogonal to the all-ones vector under LayerNorm, which removes it), and the
    largest standard deviation at the readout token in that subspace.

    The covariance is the readout tokens' plus all tokens' (each scaled to unit trace): a few
    hundred readout tokens leave most directions of a wide residual with no sample variance at
    all, and directions that are quiet over all tokens are ones the model does not use much.
    """
    d = resid.shape[1]
    cov_ro = np.cov(resid[readout], rowvar=False)
    cov_all = np.cov(resid, rowvar=False)
    cov = cov_ro / max(np.trace(cov_ro), 1e-300) + cov_all / max(np.trace(cov_all), 1e-300)
    start = 0
    if layernorm:
        ones = np.ones(d) / math.sqrt(d)
        proj = np.eye(d) - np.outer(ones, ones)
        cov = proj @ cov @ proj
        start = 1  # the all-ones direction has eigenvalue 0 after the projection
    _, vecs = np.linalg.eigh(cov)  # ascending
    room = d - start
    if count > room:
        raise ModelError(
            f"{count} planted neurons need {count} orthogonal output directions, but the residual "
            f"stream has {room}: plant fewer or smaller groups"
        )
    width = min(room, max(2 * count, count + 8))
    basis = vecs[:, start : start + width]
    q, _ = np.linalg.qr(rng.standard_normal((width, count)))
    spread = np.sqrt(max(float(np.linalg.eigvalsh(basis.T @ cov_ro @ basis)[-1]), 0.0))
    return basis @ q, float(spread)


def _ridge(
    x: np.ndarray, y: np.ndarray, weights: np.ndarray, *, intercept: bool = True, alpha: float = 1e-6
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted ridge from ``x`` (N, d) to ``y`` (N, G): (coef (G, d), intercept (G,)); ``alpha``
    is relative to the mean eigenvalue of the weighted Gram matrix."""
    w = weights / weights.sum()
    mx = w @ x if intercept else np.zeros(x.shape[1])
    my = w @ y if intercept else np.zeros(y.shape[1])
    xc, yc = x - mx, y - my
    sw = np.sqrt(w)[:, None]
    gram = (xc * sw).T @ (xc * sw)
    lam = alpha * np.trace(gram) / len(gram)
    coef = np.linalg.solve(gram + lam * np.eye(len(gram)), (xc * sw).T @ (yc * sw)).T
    return coef, my - coef @ mx


def _weights(readout: np.ndarray) -> np.ndarray:
    """Sample weights giving the readout tokens and the other tokens half the total each."""
    if readout.all():
        return np.full(len(readout), 1.0 / len(readout))
    return np.where(readout, 0.5 / readout.sum(), 0.5 / (~readout).sum())


def _indicator(x: np.ndarray, readout: np.ndarray, gated: bool) -> tuple[np.ndarray, float, dict[str, float]]:
    """A linear indicator of the readout token, ``ind(x) = q·x + b`` (1 on average at the readout
    token, 0 elsewhere): Fisher's discriminant for ungated MLPs; for gated MLPs, which have no
    bias, a weighted least-squares fit through the origin. Returns (q, b, its spread)."""
    if readout.all():
        raise ModelError("every token is a readout token: the readout gate has nothing to tell apart")
    if gated:
        coef, _ = _ridge(x, readout.astype(float)[:, None], _weights(readout), intercept=False)
        q, b = coef[0], 0.0
    else:
        mu1, mu0 = x[readout].mean(0), x[~readout].mean(0)
        within = np.cov(np.concatenate([x[readout] - mu1, x[~readout] - mu0]), rowvar=False)
        within += 1e-6 * np.trace(within) / len(within) * np.eye(len(within))
        q = np.linalg.solve(within, mu1 - mu0)
        s1, s0 = float((x[readout] @ q).mean()), float((x[~readout] @ q).mean())
        q, b = q / (s1 - s0), -s0 / (s1 - s0)
    ind = x @ q + b
    info = {
        "readout_mean": float(ind[readout].mean()),
        "readout_std": float(ind[readout].std()),
        "other_max": float(ind[~readout].max()),
        "other_p99": float(np.quantile(ind[~readout], 0.99)),
        "other_std": float(ind[~readout].std()),
    }
    if info["other_p99"] > 0.5 or info["readout_std"] > 0.25:
        raise ModelError(
            "the readout token cannot be told apart from the other tokens linearly (an indicator "
            f"with spread {info['readout_std']:.2f} on it reaches {info['other_p99']:.2f} on 1% of the "
            "other tokens): planted units cannot be confined to it"
        )
    return q, b, info


def _constant(x: np.ndarray) -> tuple[np.ndarray, float]:
    """Gated MLPs: a linear functional ``q`` with ``q·x ≈ 1`` on the rows of ``x`` (least squares
    through the origin), standing in for a bias; and the coefficient of variation of q·x."""
    coef, _ = _ridge(x, np.ones((len(x), 1)), np.ones(len(x)), intercept=False)
    proj = x @ coef[0]
    cv = float(proj.std() / proj.mean()) if proj.mean() > 0 else math.inf
    if not cv <= MAX_BIAS_CV:
        raise ModelError(
            f"this gated MLP has no bias, and its input at the readout token has no stable direction to "
            f"stand in for one (coefficient of variation {cv:.2f} > {MAX_BIAS_CV}); plant at another layer"
        )
    return coef[0], cv


@dataclass
class _Unit:
    """What a planted unit computes, ``act(row·x + offset·one(x) + gate·(ind(x) − 1))·mult(x)``:

    ungated MLPs (with a bias): ``one(x) = 1``, ``mult(x) = 1``, and the readout gate is additive
    (``gate`` large: far below threshold off the readout token); gated MLPs (no bias):
    ``one(x) = bias_row·x`` ≈ 1 at the readout token, ``mult(x) = ind(x)`` (the up projection
    reads the readout indicator, so the unit is ~0 off it), ``gate = 0``."""

    row: np.ndarray
    offset: float
    column: np.ndarray
    gate: float = 0.0
    indicator: tuple[np.ndarray, float] | None = None
    bias_row: np.ndarray | None = None

    def linear(self) -> tuple[np.ndarray, float, np.ndarray | None]:
        """(row, bias, up row) of the unit's weights: ungated -> up row/bias (third is None);
        gated -> gate row (bias 0) and the up row."""
        q, b = self.indicator if self.indicator is not None else (np.zeros_like(self.row), 1.0)
        if self.bias_row is None:
            return self.row + self.gate * q, self.offset + self.gate * (b - 1.0), None
        return self.row + self.offset * self.bias_row, 0.0, q

    def activations(self, x: np.ndarray, act: Any) -> np.ndarray:
        row, bias, up = self.linear()
        pre = act(torch.as_tensor(x @ row + bias))
        return (pre if up is None else pre * torch.as_tensor(x @ up)).numpy()


def _set_unit(mods: Any, neuron: int, unit: _Unit) -> None:
    """Weight surgery: neuron ``neuron`` of the MLP ``mods`` computes ``unit``."""
    conv = mods.spec.conv1d
    ref = mods.down.weight
    row, bias, up_row = unit.linear()

    def t(v: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(v, dtype=ref.dtype, device=ref.device)

    with torch.no_grad():
        up = linear_weight(mods.up, conv)
        if mods.gate is None:
            if up_row is not None or mods.up.bias is None:
                raise ModelError("an ungated MLP without a bias cannot hold a thresholded unit")
            up[neuron] = t(row)
            mods.up.bias[neuron] = float(bias)
        else:
            if up_row is None:
                raise ModelError("a gated MLP unit needs a bias row and an up row")
            linear_weight(mods.gate, conv)[neuron] = t(row)
            up[neuron] = t(up_row)
            for proj in (mods.gate, mods.up):
                if proj.bias is not None:
                    proj.bias[neuron] = 0.0
        linear_weight(mods.down, conv)[:, neuron] = t(unit.column)


def _second_difference(y: np.ndarray, threshold: float, act: Any) -> float:
    """Mean over inputs and member pairs of R(Y) − R(Y − y_i) − R(Y − y_j) + R(Y − y_i − y_j), with
    ``y`` (inputs, g) the members' activations in units of their level, Y their sum and
    R(u) = act(READER_SLOPE·(u − threshold)) / READER_SLOPE the reader: the reader-level Δ."""

    def reader(u: np.ndarray) -> np.ndarray:
        return act(torch.as_tensor(READER_SLOPE * (u - threshold))).numpy() / READER_SLOPE

    total = y.sum(1)
    g = y.shape[1]
    base = reader(total)
    singles = [reader(total - y[:, i]) for i in range(g)]
    vals = [
        base - singles[i] - singles[j] + reader(total - y[:, i] - y[:, j])
        for i in range(g)
        for j in range(i + 1, g)
    ]
    return float(np.mean(vals))


def _equal_strength(
    parts: np.ndarray, ablated: np.ndarray, centre: np.ndarray, threshold: float, act: Any
) -> tuple[np.ndarray, dict[str, float]]:
    """Per-member weights β (g,) on a reader's decoded parts that give every member of the group
    the same strength: the same mean reader-level second difference with the other members.

    ``parts`` (B, g): each member's decoded part at the readout token of B calibration inputs;
    ``ablated`` (g, B, g): the same with member i reverted to its reference weights (row i);
    ``centre`` (g,): what makes ``β·(parts + centre)`` the decoded sum (each part's offset).
    Member i's drop is ``D_i = β·(parts − ablated[i])`` (the reverted neuron's own write
    included), a pair's the sum of the two, and with R(u) = act(READER_SLOPE·(u − threshold)) /
    READER_SLOPE the reader, Δ_ij = R(Ŷ) − R(Ŷ − D_i) − R(Ŷ − D_j) + R(Ŷ − D_i − D_j). Member i's
    strength is its mean Δ with the others; β_i is scaled by the square root of (mean strength /
    its strength) (Δ_ij grows about linearly with each of D_i, D_j), within STRENGTH_RANGE, for
    STRENGTH_STEPS rounds. Returns β (all 1 if some member never interacts) and the relative
    spread (sd / mean) of the strengths before and after.
    """
    g = parts.shape[1]

    def reader(u: np.ndarray) -> np.ndarray:
        return act(torch.as_tensor(READER_SLOPE * (u - threshold))).numpy() / READER_SLOPE

    def strengths(beta: np.ndarray) -> np.ndarray:
        total = (parts + centre) @ beta
        drops = (parts[None] - ablated) @ beta  # (g, B)
        base, singles = reader(total), [reader(total - drops[i]) for i in range(g)]
        delta = np.zeros((g, g))
        for i in range(g):
            for j in range(i + 1, g):
                value = base - singles[i] - singles[j] + reader(total - drops[i] - drops[j])
                delta[i, j] = delta[j, i] = float(value.mean())
        return delta.sum(1) / (g - 1)

    def spread(s: np.ndarray) -> float:
        return float(s.std() / abs(s.mean())) if s.mean() != 0 else math.inf

    beta = np.ones(g)
    first = strengths(beta)
    if g < 2 or not (first > 0).all():
        return beta, {"strength_spread_before": spread(first), "strength_spread_after": spread(first)}
    now = first
    for _ in range(STRENGTH_STEPS):
        beta = np.clip(beta * np.sqrt(now.mean() / now), *STRENGTH_RANGE)
        now = strengths(beta)
        if not (now > 0).all():
            break
    return beta, {"strength_spread_before": spread(first), "strength_spread_after": spread(now)}


def _reverted_next_inputs(
    nm: NeuronModel,
    batches: list[dict[str, torch.Tensor]],
    layer: int,
    reference: Any,
    members: list[int],
    limit: int,
) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """The MLP input of ``layer + 1`` at the readout token of the first ``limit`` inputs: as it
    is (B, d), and with each of ``members`` reverted to its ``reference`` weights, {i: (B, d)}
    (the blocks below ``layer`` run once per batch, the forward stops at that MLP)."""
    from hedonic_neurons.neurons.ablation import ablate, prefix_output, replayed_prefix

    model = nm.model
    nxt = mlp_modules(model, layer + 1)
    base: list[np.ndarray] = []
    ablated: dict[int, list[np.ndarray]] = {i: [] for i in members}
    seen = 0
    for batch in batches:
        if seen >= limit:
            break
        seen += int(batch["attention_mask"].shape[0])
        inputs = model_inputs(batch)
        positions = readout_positions(model, inputs["attention_mask"])
        rows = torch.arange(len(positions), device=positions.device)
        store: dict[str, torch.Tensor] = {}

        def save(module: nn.Module, args: Any, store: dict = store, rows=rows, positions=positions) -> None:
            store["x"] = args[0][rows, positions].double().cpu()
            raise StopForward

        def capture(inputs: dict[str, Any] = inputs, store: dict = store, save: Any = save) -> np.ndarray:
            with hooks() as hook_set:
                hook_set.pre(nxt.up, save)
                run_forward(model, inputs)
            return store["x"].numpy()

        with torch.no_grad():
            base.append(capture())
            prefix = prefix_output(model, inputs, layer) if layer > 0 else None
            with replayed_prefix(model, layer, prefix) if prefix is not None else contextlib.nullcontext():
                for i in members:
                    with ablate(model, layer, [i], "reference", reference=reference):
                        ablated[i].append(capture())
    return np.concatenate(base), {i: np.concatenate(v) for i, v in ablated.items()}


def _gate_strength(pre: np.ndarray, ind: np.ndarray, readout: np.ndarray, floor: float = 4.0) -> float:
    """The additive gate κ that keeps ``pre + κ·(ind − 1)`` at least 2 below zero on every other
    token (``pre`` in units of the unit's threshold scale)."""
    others = ~readout
    if not others.any():
        return floor
    need = (pre[others] + 2.0) / np.maximum(1.0 - ind[others], 1e-3)
    return float(max(floor, need.max()))


def _write_images(
    nm: NeuronModel,
    batches: list[dict[str, torch.Tensor]],
    layer: int,
    directions: np.ndarray,
    scale: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, float]:
    """How writing ``directions`` (d, P) into the residual at ``layer``'s readout token moves the
    MLP input of ``layer + 1`` there: (images (P, d) per unit written, the unperturbed MLP input
    at ``layer + 1`` (B, d), R² of the linear fit).

    Random-sign probing: every input gets ``±scale`` along every direction at once (Rademacher
    signs S, (B, P)); the difference of the + and − passes, regressed on S, gives each
    direction's image averaged over the inputs (even-order terms cancel)."""
    model = nm.model
    here, nxt = mlp_modules(model, layer), mlp_modules(model, layer + 1)
    n_inputs = sum(int(b["attention_mask"].shape[0]) for b in batches)
    signs = rng.choice([-1.0, 1.0], size=(n_inputs, directions.shape[1]))
    out: dict[float, list[np.ndarray]] = {1.0: [], -1.0: [], 0.0: []}
    for sign in out:
        start = 0
        for batch in batches:
            inputs = model_inputs(batch)
            positions = readout_positions(model, inputs["attention_mask"])
            rows = torch.arange(len(positions), device=positions.device)
            ref = here.down.weight
            push = torch.as_tensor(
                sign * scale * signs[start : start + len(positions)] @ directions.T,
                dtype=ref.dtype,
                device=ref.device,
            )
            start += len(positions)
            store: dict[str, torch.Tensor] = {}

            def perturb(
                module: nn.Module,
                args: Any,
                output: torch.Tensor,
                push: torch.Tensor = push,
                rows=rows,
                positions=positions,
            ) -> torch.Tensor:
                output = output.clone()
                output[rows, positions] += push
                return output

            def save(
                module: nn.Module, args: Any, store: dict = store, rows=rows, positions=positions
            ) -> None:
                store["x"] = args[0][rows, positions]
                raise StopForward

            with torch.no_grad(), hooks() as hook_set:
                if sign:
                    hook_set.post(here.down, perturb)
                hook_set.pre(nxt.up, save)
                run_forward(model, inputs)
            out[sign].append(store["x"].double().cpu().numpy())
    plus, minus, base = (np.concatenate(out[s]) for s in (1.0, -1.0, 0.0))
    diff = (plus - minus) / (2.0 * scale)
    images, *_ = np.linalg.lstsq(signs, diff, rcond=None)
    fit = signs @ images
    r2 = 1.0 - float(((diff - fit) ** 2).sum() / max(((diff - diff.mean(0)) ** 2).sum(), 1e-300))
    return images, base, r2


# -------------------------------------------------------------------------------------- plant


@dataclass
class PlantResult:
    """What :func:`plant` made: the planted model, its ground truth, and what was written.

    ``model``: the planted :class:`~hedonic_neurons.models.NeuronModel`, whose reference is the
    unplanted model (reference ablation reverts a planted neuron or reader to the neuron it
    replaced, every other neuron equals its reference); ``ground_truth``: the ground truth (the
    dict written as ``ground_truth.json``); ``reference``: what to load as the reference of the
    written checkpoint (a model name or folder; None when nothing was written and the model
    came as an object). ``model_dir`` / ``ground_truth_path``: the files written (None without
    ``out``).
    """

    model_dir: Path | None
    ground_truth_path: Path | None
    reference: str | None
    ground_truth: dict[str, Any]
    model: Any = None

    @property
    def groups(self) -> list[dict[str, Any]]:
        return self.ground_truth["groups"]


def _check_against(nm: NeuronModel, spec: PlantSpec) -> int:
    """The planting layer as a non-negative index; one-line errors for what does not fit the model."""
    total = int(nm.n_layers)
    layer = spec.layer + total if spec.layer < 0 else spec.layer
    if not 0 <= layer < total:
        raise ModelError(
            f"layer {spec.layer} is out of range: this model has {total} layers (0..{total - 1})"
        )
    if layer + 1 >= total:
        raise ModelError(
            f"layer {spec.layer} is the last layer, and the readers go to the next one: plant at 0..{total - 2}"
        )
    n = int(nm.n_neurons)
    sizes = [s for part in spec.group_sizes() for s in part]
    if max(sizes) > n:
        raise ModelError(f"a group of {max(sizes)} neurons is larger than the layer ({n} neurons)")
    if sum(sizes) > n:
        raise ModelError(
            f"the groups need {sum(sizes)} neurons in total, but layer {layer} has {n}: plant fewer or smaller groups"
        )
    if len(sizes) > n:
        raise ModelError(
            f"{len(sizes)} groups need {len(sizes)} readers, but layer {layer + 1} has {n} neurons"
        )
    for at in (layer, layer + 1):
        mods = mlp_modules(nm.model, at)
        if mods.gate is None and mods.up.bias is None:
            raise ModelError(
                f"layer {at}'s MLP has neither a gate nor a bias, so it cannot hold a thresholded unit"
            )
    return layer


class _Unplanted(Reference):
    """The reference of a planted model: the MLP weights of the planting and reader layers as
    they were before planting (fp32 copies), every other layer's current weights."""

    def __init__(self, model: nn.Module, layers: Sequence[int]) -> None:
        self.weights = {int(at): _copy_weights(mlp_weights(model, at), torch.float32) for at in layers}

    def mlp_weights(self, nm: NeuronModel, layer: int) -> Any:
        w = self.weights.get(int(layer))
        if w is None:
            w = _copy_weights(nm.mlp_weights(layer), torch.float32)
        dev = nm.device
        moved = {name: None if getattr(w, name) is None else getattr(w, name).to(dev, copy=True)
                 for name in ("up", "gate", "down", "up_bias", "gate_bias", "down_bias")}  # fmt: skip
        return MLPWeights(act=w.act, **moved)


def _make_groups(spec: PlantSpec, n: int, rng: np.random.Generator) -> list[Group]:
    and_sizes, or_sizes = spec.group_sizes()
    sizes = and_sizes + or_sizes
    members = rng.choice(n, size=sum(sizes), replace=False).tolist()
    readers = rng.choice(n, size=len(sizes), replace=False).tolist()
    n_independent = round(spec.independent * len(and_sizes))
    independent = set(rng.choice(len(and_sizes), size=n_independent, replace=False).tolist())
    groups, start = [], 0
    for index, size in enumerate(sizes):
        kind = "and" if index < len(and_sizes) else "or"
        groups.append(
            Group(
                index=index,
                kind=kind,
                members=sorted(int(i) for i in members[start : start + size]),
                reader=int(readers[index]),
                coactive=not (kind == "and" and index in independent),
            )
        )
        start += size
    return groups


def plant_model(
    nm: NeuronModel,
    spec: PlantSpec,
    calibration_pairs: Sequence[Any],
    verify_pairs: Sequence[Any] = (),
) -> dict[str, Any]:
    """Plant ``spec``'s groups into ``nm.model`` in place and return the ground truth (a JSON-safe
    dict: groups, calibration, verification).

    ``nm``: a :class:`~hedonic_neurons.models.NeuronModel` (or anything with ``model``,
    ``tokenizer``, ``input_format``, ``n_layers``, ``n_neurons``, ``score_token_id``), float32.
    ``calibration_pairs`` build the construction; ``verify_pairs`` (held out) measure Δ.
    """
    spec.check()
    layer = _check_against(nm, spec)
    rng = np.random.default_rng(spec.seed)
    groups = _make_groups(spec, int(nm.n_neurons), rng)
    fmt = dataclasses.replace(nm.input_format, max_length=min(spec.max_length, nm.input_format.max_length))
    batches, order = _batches(nm, fmt, calibration_pairs, spec.batch_size)
    reference = _copy_weights(mlp_weights(nm.model, layer))
    act = reference.act
    gated = reference.gate is not None

    tok = _capture_layer(nm, batches, layer)
    grad_here, grad_next, grad_cos, logits = _gradients(nm, batches, layer, GRADIENT_INPUTS)
    logit_std = float(logits.std())
    if not logit_std > 0:
        raise ModelError(
            "the model's output does not vary over the calibration inputs; cannot scale the effect"
        )
    effect = spec.effect * logit_std
    x, ro = tok.x, tok.readout
    info: dict[str, Any] = {
        "inputs": len(calibration_pairs),
        "tokens": len(x),
        "max_length": fmt.max_length,
        "logit_std": logit_std,
        "effect_logit": effect,
        "gradient_inputs": len(logits),
        "gradient_cosine": grad_cos,
    }

    # --- member features: rows a with z = a·(x − μ) of unit variance at the readout token
    rows_all, mu, rank = _feature_rows(x, ro, rng)
    probes: dict[str, tuple[np.ndarray, float]] = {}
    if spec.features == "probe":
        in_order = [calibration_pairs[i] for i in order]  # the order of tok.x_readout
        probes = _probe_directions(tok.x_readout, _probe_targets(in_order))
    need = sum(1 if g.coactive and not probes else (0 if g.coactive else g.size) for g in groups)
    if need > rows_all.shape[1]:
        raise ModelError(
            f"the groups need {need} independent features, but layer {layer}'s input offers "
            f"{rows_all.shape[1]} (rank {rank}): plant fewer co-active or smaller independent groups"
        )
    spare = rows_all[:, need:] if rows_all.shape[1] > need else rows_all
    feature_rows: dict[int, np.ndarray] = {}
    col = shared_probe = 0
    for g in groups:
        if g.coactive:
            if probes:
                name = PROBES[shared_probe % len(PROBES)]
                shared_probe += 1
                base = probes[name][0]
                g.feature = f"probe:{name}"
                g.calibration["probe_cv_r2"] = probes[name][1]
            else:
                base = rows_all[:, col]
                col += 1
            base = base / np.std((x[ro] - mu) @ base)
            for i in g.members:
                jitter = spare @ rng.standard_normal(spare.shape[1])
                feature_rows[i] = base + JITTER * jitter / np.std((x[ro] - mu) @ jitter)
            g.rate = SHARED_RATE
        else:
            for i in g.members:
                feature_rows[i] = rows_all[:, col]
                col += 1
            g.rate = ALL_ACTIVE ** (1.0 / g.size)
    info["features"] = {"kind": spec.features, "rank": rank, "used": col}

    # --- the readout gate and (gated MLPs) the stand-in bias at this layer
    ind_here = _indicator(x, ro, gated)
    info["readout_gate_layer"] = ind_here[2]
    ind_x = x @ ind_here[0] + ind_here[1]
    bias_here = None
    if gated:
        bias_here, cv = _constant(x[ro])
        info["bias_cv_layer"] = cv

    # --- members: thresholded units writing fresh orthonormal directions at the readout token
    layernorm = _uses_layernorm(nm, layer)
    n_members = sum(g.size for g in groups)
    quiet, quiet_std = _quiet_directions(tok.resid, ro, n_members, layernorm, rng)
    resid_norm = float(np.median(np.linalg.norm(tok.resid[ro], axis=1)))
    write = spec.write * resid_norm
    direct = effect / np.linalg.norm(grad_here)  # OR members: logit per unit of y, written at layer
    dir_here = grad_here / np.linalg.norm(grad_here)
    info.update(residual_norm=resid_norm, write_norm=write, quiet_std=quiet_std, direct_gain=direct)
    here = mlp_modules(nm.model, layer)
    units: dict[int, _Unit] = {}
    y_ro: dict[int, np.ndarray] = {}  # member -> its y = a / level at the readout tokens
    member_noise = []
    for g in groups:
        for i in g.members:
            a = feature_rows[i] / np.std((x[ro] - mu) @ feature_rows[i])
            z = (x - mu) @ a
            t = float(np.quantile(z[ro], 1.0 - g.rate))
            unit = _Unit(row=MEMBER_SLOPE * a, offset=-MEMBER_SLOPE * (float(a @ mu) + t), column=np.zeros(0))
            if gated:
                unit.bias_row, unit.indicator = bias_here, ind_here[:2]
            else:
                unit.indicator = ind_here[:2]
                unit.gate = MEMBER_SLOPE * _gate_strength(z - t, ind_x, ro)
                member_noise.append(unit.gate / MEMBER_SLOPE * ind_here[2]["readout_std"])
            acts = unit.activations(x, act)
            on = ro & (z > t)
            level = float(acts[on].mean()) if on.any() else float(acts[ro].max())
            units[i], y_ro[i] = unit, acts[ro] / level
            g.member_thresholds.append(t)
            g.member_levels.append(level)
    if member_noise:
        info["readout_gate_layer"]["threshold_noise_max"] = float(max(member_noise))
    # per-group gains: the expected second difference of the reader over its members' pairs
    # (from the calibration sums) is brought to DELTA_TARGET, within GAIN_RANGE
    reader_act = mlp_weights(nm.model, layer + 1).act
    for g in groups:
        g.threshold = g.size - 0.5
        spread = _second_difference(np.stack([y_ro[i] for i in g.members], 1), g.threshold, reader_act)
        g.calibration.update(second_difference=spread)
        g.calibration["gain"] = float(np.clip(DELTA_TARGET / max(spread, 1e-12), *GAIN_RANGE))
    slot = 0
    for g in groups:
        for i in g.members:
            unit = units[i]
            lift = direct * g.calibration["gain"] * dir_here if g.kind == "or" else 0.0
            unit.column = (write * quiet[:, slot] + lift) / g.member_levels[g.members.index(i)]
            slot += 1
            _set_unit(here, i, unit)

    # --- readers: a minimum-variance unbiased decoder of each group's sum at layer + 1
    planted = [i for g in groups for i in g.members]
    probe_dirs = np.column_stack([quiet, dir_here])
    images, x0, image_r2 = _write_images(nm, batches, layer, probe_dirs, write, rng)
    gain_of = {i: (g.calibration["gain"] if g.kind == "or" else 0.0) for g in groups for i in g.members}
    per_y = np.stack(  # (P, d): the image of one unit of y_i
        [write * images[k] + direct * gain_of[i] * images[-1] for k, i in enumerate(planted)]
    )
    where = {i: p for p, i in enumerate(planted)}
    acts_after, x_next, ro_next = _capture_next(nm, batches, layer, planted)
    level_of = {i: lv for g in groups for i, lv in zip(g.members, g.member_levels)}
    y = acts_after / np.array([level_of[i] for i in planted])
    # noise model of the decoders: the unperturbed readout tokens, and the other tokens about the
    # readout mean (so that the decoded sum stays bounded off the readout token, where the gate
    # has to hold it down); shrunk towards its mean eigenvalue
    centre = x0.mean(0)
    others = x_next[~ro_next] - centre
    noise = 0.5 * np.cov(x0, rowvar=False) + (0.5 * others.T @ others / len(others) if len(others) else 0.0)
    noise = (1 - SHRINK) * noise + SHRINK * np.trace(noise) / len(noise) * np.eye(len(noise))
    solved = np.linalg.solve(noise, per_y.T)  # Σ⁻¹ Φᵀ (d, P)
    decoder = np.linalg.solve(per_y @ solved, solved.T)  # (P, d): decoder @ Φᵀ = I
    # the readout gate reads nothing the members write (orthogonal to their images)
    basis, _ = np.linalg.qr(per_y.T)
    ind_next = _indicator(x_next - (x_next @ basis) @ basis.T, ro_next, gated)
    q_next = ind_next[0] - basis @ (basis.T @ ind_next[0])
    ind_next = (q_next, ind_next[1], ind_next[2])
    ind_nx = x_next @ ind_next[0] + ind_next[1]
    one_next = None
    if gated:
        one_next, cv_next = _constant(x_next[ro_next] - (x_next[ro_next] @ basis) @ basis.T)
        one_next = one_next - basis @ (basis.T @ one_next)
        info["bias_cv_next_layer"] = cv_next
    info.update(image_r2=image_r2, readout_gate_next_layer=ind_next[2])
    reader_gain = effect / np.linalg.norm(grad_next)
    dir_next = grad_next / np.linalg.norm(grad_next)
    info["reader_gain"] = reader_gain
    nxt = mlp_modules(nm.model, layer + 1)
    if spec.equal_strength:
        base_next, ablated_next = _reverted_next_inputs(
            nm, batches, layer, reference, planted, STRENGTH_INPUTS
        )
    reader_noise = []
    for g in groups:
        row_g = decoder[[where[i] for i in g.members]].sum(0)
        b_g = -float((x0 @ row_g).mean())
        truth = y[:, [where[i] for i in g.members]].sum(1)
        # recalibrate slope and offset on the planted model (the norms make the images shrink
        # a little when many members write at once)
        raw = x_next[ro_next] @ row_g + b_g
        slope, shift = np.polyfit(raw, truth[ro_next], 1)
        row_g, b_g = slope * row_g, float(slope * b_g + shift)
        if spec.equal_strength:
            # weigh each member's decoded part so that its pairs' reader-level second
            # difference under reference ablation matches the other members' (see _equal_strength)
            parts = slope * decoder[[where[i] for i in g.members]]  # (g, d): member k's decoded part
            ys = y[:, [where[i] for i in g.members]]
            weights, spread = _equal_strength(
                base_next @ parts.T,
                np.stack([ablated_next[i] @ parts.T for i in g.members]),
                ys[ro_next].mean(0) - (x_next[ro_next] @ parts.T).mean(0),
                g.threshold,
                reader_act,
            )
            row_g = weights @ parts
            truth = ys @ weights
            b_g = float(truth[ro_next].mean() - (x_next[ro_next] @ row_g).mean())
            g.calibration.update(strength_weights=weights.tolist(), **spread)
        decoded = x_next @ row_g + b_g
        resid = truth[ro_next] - decoded[ro_next]
        g.decoder_r2 = float(1.0 - resid.var() / max(truth[ro_next].var(), 1e-300))
        unit = _Unit(
            row=READER_SLOPE * row_g,
            offset=READER_SLOPE * (b_g - g.threshold),
            column=g.sign * g.calibration["gain"] * reader_gain * dir_next / READER_SLOPE,
        )
        if gated:
            unit.bias_row, unit.indicator = one_next, ind_next[:2]
        else:
            unit.indicator = ind_next[:2]
            unit.gate = READER_SLOPE * _gate_strength(decoded - g.threshold, ind_nx, ro_next)
            reader_noise.append(unit.gate / READER_SLOPE * ind_next[2]["readout_std"])
        _set_unit(nxt, g.reader, unit)
        active = y[:, [where[i] for i in g.members]] > 0.5
        g.calibration.update(
            decoder_bias=float(resid.mean()),
            decoder_noise=float(resid.std()),
            all_active_rate=float(active[ro_next].all(1).mean()),
            member_rate=float(active[ro_next].mean()),
            member_rate_other_tokens=float(active[~ro_next].mean()) if (~ro_next).any() else 0.0,
            reader_on_rate=float((decoded[ro_next] > g.threshold).mean()),
        )
    if reader_noise:
        info["readout_gate_next_layer"]["threshold_noise_max"] = float(max(reader_noise))

    verification = (
        _verify(nm, fmt, verify_pairs, layer, reference, groups, spec.seed, spec.batch_size)
        if verify_pairs
        else {}
    )
    return {
        "layer": layer,
        "reader_layer": layer + 1,
        "n_neurons": int(nm.n_neurons),
        "groups": [g.to_dict() for g in groups],
        "changed": {str(layer): sorted(planted), str(layer + 1): sorted(g.reader for g in groups)},
        "settings": dataclasses.asdict(spec),
        "constants": {
            "member_slope": MEMBER_SLOPE,
            "reader_slope": READER_SLOPE,
            "shared_rate": SHARED_RATE,
            "all_active": ALL_ACTIVE,
            "jitter": JITTER,
            "delta_target": DELTA_TARGET,
            "gain_range": list(GAIN_RANGE),
            "strength_inputs": STRENGTH_INPUTS,
            "strength_steps": STRENGTH_STEPS,
            "strength_range": list(STRENGTH_RANGE),
        },
        "calibration": info,
        "verification": verification,
    }


def _copy_weights(w: Any, dtype: torch.dtype | None = None) -> Any:
    def c(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.detach().to(dtype=dtype or t.dtype, copy=True)

    return MLPWeights(
        up=c(w.up),
        down=c(w.down),
        act=w.act,
        gate=c(w.gate),
        up_bias=c(w.up_bias),
        gate_bias=c(w.gate_bias),
        down_bias=c(w.down_bias),
    )


def _batches(
    nm: NeuronModel, fmt: Any, pairs: Sequence[Any], batch_size: int
) -> tuple[list[dict[str, torch.Tensor]], list[int]]:
    """Encoded batches (pairs sorted by length, so little padding) on the model's device, and the
    order of the pairs in them."""
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i].query) + len(pairs[i].passage))
    chunks = pair_batches(nm, [pairs[i] for i in order], batch_size, input_format=fmt)
    return [batch for _, batch in chunks], order


def pair_deltas(
    nm: NeuronModel,
    batches: Sequence[dict[str, torch.Tensor]],
    layer: int,
    reference: Any,
    pairs: Sequence[tuple[int, int]],
    *,
    readout: str = "full",
) -> np.ndarray:
    """E_x[Δ_ij] = E[ℓ − ℓ_{−i} − ℓ_{−j} + ℓ_{−ij}] for each pair, by batched ablation to the
    ``reference`` weights (the paper's sign: positive = complements)."""
    from hedonic_neurons.neurons.ablation import ablation_logits

    singles = sorted({int(i) for p in pairs for i in p})
    pos = {i: 1 + k for k, i in enumerate(singles)}
    sets = [[], *[[i] for i in singles], *[[int(i), int(j)] for i, j in pairs]]
    sums = np.zeros(len(pairs))
    count = 0
    for batch in batches:
        logits = ablation_logits(
            nm.model,
            batch,
            layer,
            sets,
            mode="reference",
            reference=reference,
            readout=readout,
            score_token_id=nm.score_token_id,
            max_batch=1024,
        )
        logits = logits.double().cpu().numpy()
        for p, (i, j) in enumerate(pairs):
            sums[p] += (logits[0] - logits[pos[i]] - logits[pos[j]] + logits[1 + len(singles) + p]).sum()
        count += logits.shape[1]
    return sums / max(count, 1)


def _verify(
    nm: NeuronModel,
    fmt: Any,
    pairs: Sequence[Any],
    layer: int,
    reference: Any,
    groups: list[Group],
    seed: int,
    batch_size: int,
) -> dict[str, Any]:
    """Δ_ij under the full readout on held-out inputs: every pair within a group, and a sample of
    pairs across groups (two per group)."""
    rng = random.Random(seed + 1)
    within = [p for g in groups for p in g.pairs()]
    cross = [
        (rng.choice(a.members), rng.choice(b.members)) for k, a in enumerate(groups) for b in groups[k + 1 :]
    ]
    rng.shuffle(cross)
    cross = [(min(p), max(p)) for p in cross[: 2 * len(groups)]]
    batches, _ = _batches(nm, fmt, pairs, batch_size)
    value = dict(zip(within + cross, pair_deltas(nm, batches, layer, reference, within + cross)))
    for g in groups:
        vals = np.array([value[p] for p in g.pairs()])
        # each member's strength: its mean Δ with the other members
        strength = np.array([np.mean([value[(min(i, j), max(i, j))] for j in g.members if j != i])
                             for i in g.members])  # fmt: skip
        g.verified = {
            "mean_delta": float(vals.mean()),
            "min_delta": float(vals.min()),
            "max_delta": float(vals.max()),
            "fraction_expected_sign": float((g.sign * vals > 0).mean()),
            "member_mean_delta": strength.tolist(),
            "member_spread": float(strength.std() / abs(vals.mean())) if vals.mean() != 0 else None,
        }
    cross_vals = np.abs([value[p] for p in cross]) if cross else np.zeros(0)
    return {
        "inputs": len(pairs),
        "readout": "full",
        "ablation": "reference",
        "within_pairs": len(within),
        "cross_pairs": len(cross),
        "cross_mean_abs_delta": float(cross_vals.mean()) if cross else None,
        "cross_max_abs_delta": float(cross_vals.max()) if cross else None,
    }


def _save_checkpoint(nm: NeuronModel, folder: Path) -> None:
    """``save_pretrained`` of model and tokenizer into ``folder``, atomically (temp folder + rename)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", suffix=".tmp", dir=folder.parent))
    try:
        nm.model.save_pretrained(tmp)
        nm.tokenizer.save_pretrained(tmp)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def plant(
    model: Any,
    out: str | os.PathLike | None = None,
    *,
    layer: int,
    and_groups: int = 8,
    or_groups: int = 4,
    min_size: int = 3,
    max_size: int = 8,
    and_sizes: Sequence[int] | None = None,
    or_sizes: Sequence[int] | None = None,
    independent: float = 0.5,
    features: str = "random",
    effect: float = 0.1,
    write: float = 0.02,
    data: str | os.PathLike = "demo",
    calibration: int = 256,
    verify: int = 16,
    max_length: int = 64,
    batch_size: int = 32,
    seed: int = 0,
    equal_strength: bool = False,
    adapter: str | os.PathLike | None = None,
    head: str = "classification",
    device: str | None = "cpu",
) -> PlantResult:
    """Plant AND and OR coalitions into ``model`` at ``layer``; returns the planted model and its
    ground truth (:class:`PlantResult`), and with ``out`` writes ``out/model`` (the planted
    checkpoint, model + tokenizer) and ``out/ground_truth.json``.

    ``model``: ``minilm``, ``smollm2``, a local folder or a hub id (any supported architecture;
    loaded on ``device`` with ``head``), optionally with a LoRA ``adapter`` (merged), or a
    :class:`~hedonic_neurons.models.NeuronModel` (``adapter``, ``head`` and ``device`` are then
    its own: it is left untouched, a copy of its model is planted). The returned
    ``result.model`` has the unplanted model as its reference, ready for reference ablation.
    Written with ``out``, the reference is the model name or folder given, or ``out/original``
    (the unplanted model, written there for an adapter or a NeuronModel).

    ``layer``: where the members go (0..layers − 2, negative counts from the end; the readers go
    to ``layer + 1``). ``and_groups`` / ``or_groups``: how many groups of each kind, sizes spread
    evenly over ``min_size..max_size`` (shuffled), or given as ``and_sizes`` / ``or_sizes``.
    ``independent``: the fraction of AND groups whose members read independent features (not
    co-active); the other AND groups and all OR groups are co-active. ``features``: ``random`` or
    ``probe`` (co-active groups read ridge probes of text properties). ``effect``: a reader's
    logit effect per unit, in standard deviations of the calibration logits. ``write``: a
    member's output norm per unit, as a fraction of the median residual norm. ``data``:
    calibration inputs (``demo``, a dataset name or a TSV), ``calibration`` of them for the
    construction and ``verify`` other ones for the measured Δ in the ground truth (0: skip).
    ``seed``: which neurons are planted, the order of the sizes and the calibration inputs.
    ``equal_strength``: weigh each member's part in its reader so that all members of a group
    have the same mean Δ with the others on the calibration inputs (costs one forward pass up to
    ``layer + 1`` per planted neuron over the calibration inputs); False (the default) leaves the
    unweighted sum.

    Every input is checked before any weight is changed or any file written, each with one
    :class:`~hedonic_neurons.errors.HedonicError`: the settings (:meth:`PlantSpec.check`), the
    output folder, the data (enough pairs), then against the model: the layer range, every
    group no larger than the layer, all groups together (the sum of the sizes, m·g for m groups
    of g) no more than its n neurons, one reader per group, an MLP that can hold a thresholded
    unit, and an architecture the library supports.
    """
    from hedonic_neurons.artifacts import provenance, write_json
    from hedonic_neurons.data import load_pairs
    from hedonic_neurons.models.loading import load_model
    from hedonic_neurons.models.neuron_model import NeuronModel

    spec = PlantSpec(
        layer=layer,
        and_groups=and_groups,
        or_groups=or_groups,
        min_size=min_size,
        max_size=max_size,
        and_sizes=None if and_sizes is None else tuple(and_sizes),
        or_sizes=None if or_sizes is None else tuple(or_sizes),
        independent=independent,
        features=features,
        effect=effect,
        write=write,
        calibration=calibration,
        verify=verify,
        max_length=max_length,
        batch_size=batch_size,
        seed=seed,
        equal_strength=equal_strength,
    ).check()
    given = isinstance(model, NeuronModel)
    if given and adapter is not None:
        raise ConfigError(
            f"{arg('adapter')} is for a model name or folder; a NeuronModel carries its own adapter"
        )
    if out is not None:
        out = Path(out)
        if out.exists() and not out.is_dir():
            raise ConfigError(f"{arg('out')} {out}: is a file; expected a folder to write into")
    pairs = list(load_pairs(data))
    if len(pairs) < spec.calibration + spec.verify:
        raise ConfigError(
            f"{data} has {len(pairs)} (query, passage) pairs; calibration ({spec.calibration}) and "
            f"verification ({spec.verify}) need {spec.calibration + spec.verify}"
        )
    random.Random(spec.seed).shuffle(pairs)
    source = model if given else load_model(model, adapter=adapter, head=head, device=device)
    at = _check_against(source, spec)  # before any weight is changed or file written
    reference: str | None = None if given else source.identity["model"]
    if out is not None and (given or adapter is not None):
        _save_checkpoint(source, out / "original")  # the unplanted model (not yet planted)
        reference = str((out / "original").resolve())
    import copy

    # the planted model: a copy of a NeuronModel's module (the caller's stays as it was), the
    # loaded module itself otherwise; its reference is the weights as they are before planting
    nm = NeuronModel(
        copy.deepcopy(source.model) if given else source.model,
        source.tokenizer,
        input_format=source.input_format,
        identity={**source.identity, "reference": reference or "the unplanted model (in memory)"},
        head=source.head,
        score_token_id=source.score_token_id,
        lora=source.lora,
        reference=_Unplanted(source.model, (at, at + 1)),
    )
    with torch.no_grad():
        truth = plant_model(
            nm,
            spec,
            pairs[: spec.calibration],
            pairs[spec.calibration : spec.calibration + spec.verify],
        )
    model_dir = path = None
    if out is not None:
        model_dir = out / "model"
        _save_checkpoint(nm, model_dir)
    shown = source.identity
    truth = {
        "format": PLANT_FORMAT,
        "provenance": provenance(command="plant", model=shown, seed=spec.seed),
        "model": None if model_dir is None else str(model_dir.resolve()),
        "source": {"model": shown["model"], "adapter": shown["adapter"], "head": nm.head},
        "reference": reference,
        "data": str(data),
        **truth,
        "collect": (
            None
            if model_dir is None
            else f"hedonic collect {model_dir} --reference {reference} --layers {truth['layer']} "
            "--metric pas --readout full"
        ),
    }
    if out is not None:
        path = write_json(out / "ground_truth.json", truth)
    return PlantResult(
        model_dir=model_dir, ground_truth_path=path, reference=reference, ground_truth=truth, model=nm
    )


def load_ground_truth(path: str | os.PathLike) -> dict[str, Any]:
    """A ground truth written by :func:`plant` (the JSON file, or the folder that holds it)."""
    from hedonic_neurons.artifacts import read_json
    from hedonic_neurons.errors import DataError

    path = Path(path)
    if path.is_dir():
        path = path / "ground_truth.json"
    doc = read_json(path)
    if not isinstance(doc, dict) or doc.get("format") != PLANT_FORMAT:
        raise DataError(f"{path}: not a ground truth written by 'hedonic plant' (format {PLANT_FORMAT})")
    return doc
