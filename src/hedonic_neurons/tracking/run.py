"""Tracking a folder of partitions through a model, and its output files.

``hedonic track`` and ``hedonic run``'s tracking stage are two thin clients of the same two
calls: :func:`track_inputs` (E|a_p| and the flow's inputs, from the model and a set of pairs)
and :func:`track_model` (track and write), with one :class:`TrackSettings`
(:meth:`TrackSettings.from_config` for a run's ``tracking`` section). On the same partitions,
model and pairs they write the same files.

Output folder: ``transition_L{l}_L{t}.json`` per layer pair (t = l+1 ... l+h; the
:meth:`TransitionResult.to_dict` document plus provenance), ``transitions.md`` and
``transitions.csv`` (one row per layer pair: label percentages, the null's thresholds and
percentiles, flow-mass agreement), ``pairs.csv`` (every matched pair and significant link, with
mass, α, β, lifts, percentiles and flow), ``lineage.json`` / ``lineage.md`` (per coalition: where
it comes from and where it goes) and ``sankey.html`` (plotly, reading the shared
``plotly.min.js`` bundle of the folder it names).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hedonic_neurons.artifacts import (
    PARTITION_FORMAT,
    atomic_write_text,
    partition_documents,
    provenance,
    write_json,
)
from hedonic_neurons.errors import ConfigError, DataError, arg
from hedonic_neurons.tracking.rules import get_rule
from hedonic_neurons.tracking.transitions import (
    TransitionResult,
    pair_rows,
    track_layers,
    transition_table,
    write_pair_table,
    write_transition_table,
)

if TYPE_CHECKING:
    from hedonic_neurons.models.neuron_model import NeuronModel

__all__ = [
    "FlowSpec",
    "TrackInputs",
    "TrackSettings",
    "iter_batches",
    "layer_pairs",
    "lineage",
    "load_partition_dir",
    "sample_pairs",
    "track_and_write",
    "track_inputs",
    "track_model",
    "track_partitions",
    "write_tracking",
]


@dataclass(frozen=True)
class TrackSettings:
    """Everything that decides tracking's numbers, shared by ``hedonic track`` and ``hedonic run``
    (the defaults are those of both: ``TrackingConfig`` has the same fields and defaults, and
    :meth:`from_config` is the one way a run builds its settings).

    ``rule``: a registered tracking rule (:data:`~hedonic_neurons.tracking.rules.TRACKING_RULES`):
    ``"null"`` (random-partition null), ``"matching"`` (absolute τ on the matched pairs) or
    ``"code"`` (the public code's relative rule); ``tau`` only for the rules that take one.
    ``null_draws`` random partitions at ``null_level``; ``horizon``: track l -> l+1 ... l+horizon;
    ``flow_pairs``: inputs of the interventional flow (0: no flow); ``max_pairs``: the pairs
    E|a_p| is estimated on (a seeded sample; None: all); ``seed``: that sample, the null's draws
    and the flow's input sample; ``block_size``: source neurons per block of W_eff (speed only).
    """

    rule: str = "null"
    tau: float | None = None
    min_size: int = 2
    null_draws: int = 100
    null_level: float = 0.95
    horizon: int = 3
    flow_pairs: int = 64
    max_pairs: int | None = 512
    seed: int = 0
    block_size: int = 512

    def __post_init__(self) -> None:
        get_rule(self.rule).check_tau(self.rule, self.tau)
        if not isinstance(self.horizon, int) or self.horizon < 1:
            raise ConfigError(f"{arg('horizon')} {self.horizon!r}: expected a positive integer")
        if not isinstance(self.flow_pairs, int) or self.flow_pairs < 0:
            raise ConfigError(f"{arg('flow_pairs')} {self.flow_pairs!r}: expected a non-negative integer")
        if self.max_pairs is not None and (not isinstance(self.max_pairs, int) or self.max_pairs < 1):
            raise ConfigError(
                f"{arg('max_pairs')} {self.max_pairs!r}: expected a positive integer (or None: all pairs)"
            )

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> TrackSettings:
        """The settings among ``options`` (e.g. a command's keyword arguments; other keys are
        ignored, missing ones take the defaults)."""
        return cls(**{f.name: options[f.name] for f in fields(cls) if f.name in options})

    @classmethod
    def from_config(cls, tracking: Any, seed: int) -> TrackSettings:
        """The settings of a run's ``tracking`` section (a :class:`~hedonic_neurons.config.TrackingConfig`)
        and its ``seed``: every field the section has, the defaults for the others."""
        names = {f.name for f in fields(cls)} - {"seed"}
        return cls(**{k: v for k, v in tracking.model_dump().items() if k in names}, seed=seed)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FlowSpec:
    """What the interventional flow needs: encoded input batches, the ablation mode and, for
    ``mode="reference"``, a function giving a layer's reference :class:`MLPWeights`."""

    batches: list[Mapping[str, Any]]
    mode: str = "zero"
    reference: Callable[[int], Any] | None = None
    max_rows: int = 256
    pooling: str = "mean"


def load_partition_dir(folder: str | os.PathLike) -> dict[int, tuple[Path, dict[str, Any]]]:
    """The partition files of ``folder`` by layer: ``{layer: (path, document)}``.

    Every ``*.json`` with the partition format tag is read (other JSON files are ignored); each
    must name its layer, and no layer may appear twice.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder (expected a folder of partition JSON files)")
    found, _ = partition_documents(folder)
    if not found:
        raise DataError(f"{folder}: no partition files (JSON with format '{PARTITION_FORMAT}')")
    return found


def sample_pairs(pairs: Sequence[Any], max_pairs: int | None, seed: int) -> list[Any]:
    """At most ``max_pairs`` pairs, a seeded random subset in the original order (all if None)."""
    if max_pairs is None or max_pairs >= len(pairs):
        return list(pairs)
    keep = np.sort(np.random.default_rng(seed).choice(len(pairs), size=max_pairs, replace=False))
    return [pairs[i] for i in keep]


def iter_batches(nm: NeuronModel, pairs: Sequence[Any], batch_size: int) -> Iterator[Mapping[str, Any]]:
    """Encoded batches of (query, passage) pairs (``Pair`` rows or plain tuples) with the model's
    one input format: :func:`hedonic_neurons.synergy.api.iter_batches`, the one batching."""
    from hedonic_neurons.synergy.api import iter_batches as batches

    yield from batches(nm, pairs, batch_size)


def layer_pairs(layers: Sequence[int], horizon: int = 1) -> list[tuple[int, int]]:
    """(l, t) for every l among ``layers`` and every t = l+1 ... l+horizon also among them."""
    have = set(layers)
    return [(lo, lo + h) for lo in sorted(have) for h in range(1, horizon + 1) if lo + h in have]


def track_partitions(
    model: Any,
    partitions: Mapping[int, Sequence[Sequence[int]]],
    mean_abs: Mapping[int, Any],
    *,
    tau: float | None = None,
    min_size: int = 2,
    rule: str = "null",
    block_size: int = 512,
    null_draws: int = 100,
    null_level: float = 0.95,
    horizon: int = 1,
    seed: int = 0,
    flow: FlowSpec | None = None,
) -> list[TransitionResult]:
    """Track every pair (l, l+h), h = 1 ... ``horizon``, present in ``partitions`` (``{layer: coalitions}``).

    ``model``: a Hugging Face model (weights read with
    :func:`~hedonic_neurons.tracking.model.layer_pair_weights`); ``mean_abs[l]``: E|a_p| of
    layer l (:func:`~hedonic_neurons.tracking.model.mean_abs_activations`). The null of pair
    (l, t) is seeded with ``[seed, l, t]``. With ``flow``, every result also gets the
    interventional flow of its coalitions (one batched ablation pass per source layer for all
    its horizons) and its agreement with the mass.
    """
    from hedonic_neurons.tracking.model import layer_pair_weights

    layers = sorted(partitions)
    pairs = layer_pairs(layers, horizon)
    if not pairs:
        raise DataError(
            f"no two adjacent layers among the partitions (layers {layers}, horizon {horizon}); "
            "tracking needs l and l+1 (or l+h)"
        )
    out = []
    for lo, hi in pairs:
        if lo not in mean_abs:
            raise DataError(f"no E|a_p| for layer {lo} (mean_abs has layers {sorted(mean_abs)})")
        w = layer_pair_weights(model, lo, hi)
        act = mean_abs[lo]
        act = act.detach().cpu().numpy() if hasattr(act, "detach") else np.asarray(act)
        out.append(
            track_layers(
                w.down,
                w.up_next,
                w.gate_next,
                w.norm_scale_next,
                act,
                partitions[lo],
                partitions[hi],
                tau=tau,
                min_size=min_size,
                rule=rule,
                layer=lo,
                target_layer=hi,
                null_draws=null_draws,
                null_level=null_level,
                seed=[int(seed), lo, hi],
                block_size=block_size,
            )
        )
    if flow is not None:
        add_flow(model, partitions, out, flow)
    return out


def add_flow(
    model: Any,
    partitions: Mapping[int, Sequence[Sequence[int]]],
    results: Sequence[TransitionResult],
    flow: FlowSpec,
) -> None:
    """Attach the interventional flow to every result (see :mod:`hedonic_neurons.tracking.flow`)."""
    from hedonic_neurons.tracking.flow import interventional_flow

    by_source: dict[int, list[TransitionResult]] = {}
    for r in results:
        by_source.setdefault(r.source_layer, []).append(r)
    for lo, group in by_source.items():
        sources = [list(partitions[lo][i]) for i in group[0].source_index]
        targets = {
            r.target_layer: [list(partitions[r.target_layer][j]) for j in r.target_index] for r in group
        }
        if not sources or not all(targets.values()):
            for r in group:
                r.set_flow(np.zeros_like(r.mass), mode=flow.mode, inputs=0, pooling=flow.pooling)
            continue
        reference = flow.reference(lo) if flow.mode == "reference" and flow.reference is not None else None
        got = interventional_flow(
            model,
            flow.batches,
            lo,
            sources,
            targets,
            mode=flow.mode,
            reference=reference,
            max_rows=flow.max_rows,
        )
        inputs = sum(int(b["attention_mask"].shape[0]) for b in flow.batches)
        for r in group:
            r.set_flow(got[r.target_layer], mode=flow.mode, inputs=inputs, pooling=flow.pooling)


def lineage(results: Sequence[TransitionResult]) -> dict[str, Any]:
    """Per coalition, where it comes from and where it goes, over every tracked layer pair.

    ``{"L{layer}": {"C{index}": {"size", "from": [...], "to": [...]}}}`` with one entry per layer
    pair the coalition takes part in: its label there, its significant links (the other
    coalition, the link's label, lifts and percentiles, flow) and, on the outgoing side, the
    matched target and the largest-flow target.
    """
    out: dict[str, dict[str, Any]] = {}

    def node(layer: int | None, coalition: int, size: int) -> dict[str, Any]:
        entry = out.setdefault(f"L{layer}", {}).setdefault(
            f"C{coalition}", {"size": size, "from": [], "to": []}
        )
        return entry

    for r in results:
        doc = r.to_dict()
        links_out: dict[int, list[dict[str, Any]]] = {}
        links_in: dict[int, list[dict[str, Any]]] = {}
        for link in doc["links"]:
            links_out.setdefault(link["source"], []).append(link)
            links_in.setdefault(link["target"], []).append(link)
        matched = {m["source"]: m for m in doc["matches"]}

        def brief(link: dict[str, Any], other: str) -> dict[str, Any]:
            keys = ("label", "lift_alpha", "lift_beta", "pct_alpha", "pct_beta", "mass", "flow")
            return {"coalition": link[f"{other}_coalition"], **{k: link.get(k) for k in keys}}

        for i, c in enumerate(r.source_index):
            entry: dict[str, Any] = {
                "layer": r.target_layer,
                "label": r.source_labels[i],
                "links": [brief(link, "target") for link in links_out.get(i, [])],
            }
            if r.source_pct_out:
                entry["pct_out"] = r.source_pct_out[i]
            if i in matched:
                m = matched[i]
                entry["matched"] = {
                    "coalition": m["target_coalition"],
                    "label": m["label"],
                    "alpha": m["alpha"],
                    "beta": m["beta"],
                    "lift_alpha": m["lift_alpha"],
                    "pct_alpha": m["pct_alpha"],
                }
            if r.flow is not None and r.flow.shape[1]:
                j = int(r.flow[i].argmax())
                entry["top_flow"] = {"coalition": r.target_index[j], "flow": float(r.flow[i, j])}
            node(r.source_layer, c, r.source_sizes[i])["to"].append(entry)
        for j, c in enumerate(r.target_index):
            entry = {
                "layer": r.source_layer,
                "label": r.target_labels[j],
                "links": [brief(link, "source") for link in links_in.get(j, [])],
            }
            if r.target_pct_in:
                entry["pct_in"] = r.target_pct_in[j]
            node(r.target_layer, c, r.target_sizes[j])["from"].append(entry)
    return out


def _lineage_line(layer: str, name: str, entry: dict[str, Any]) -> str | None:
    """One Markdown line for a coalition with at least one significant link (None otherwise)."""

    def fmt(side: str, items: list[dict[str, Any]]) -> list[str]:
        parts = []
        for e in items:
            for link in e["links"]:
                parts.append(
                    f"{side} L{e['layer']} C{link['coalition']} ({link['label']}, α·K {link['lift_alpha']:.2f} "
                    f"p{link['pct_alpha']:.0f}, β·K {link['lift_beta']:.2f} p{link['pct_beta']:.0f})"
                )
        return parts

    parts = fmt("from", entry["from"]) + fmt("to", entry["to"])
    if not parts:
        return None
    labels = ", ".join(f"→L{e['layer']} {e['label']}" for e in entry["to"])
    return f"- **{layer} {name}** ({entry['size']} neurons; {labels or 'no outgoing pair'}): " + "; ".join(
        parts
    )


def lineage_markdown(tree: dict[str, Any], *, title: str = "Coalition lineage") -> str:
    """The coalitions with a significant link, one line each, by layer; then label counts."""
    lines = [f"# {title}", ""]
    lines.append(
        "Only links above the random-partition null are listed (both lifts at or above the layer "
        "pair's thresholds; pN = percentile among the null's best lifts). Every other tracked "
        "coalition is unstructured, vanishing or emerging (see lineage.json for all of them)."
    )
    for layer in sorted(tree, key=lambda s: int(s[1:])):
        body = [line for name, e in tree[layer].items() if (line := _lineage_line(layer, name, e))]
        lines += ["", f"## {layer}", ""] + (body or ["(no coalition with a significant link)"])
    return "\n".join(lines) + "\n"


def write_tracking(
    results: Sequence[TransitionResult],
    out_dir: str | os.PathLike,
    *,
    method: str = "",
    meta: Mapping[str, Any] | None = None,
    bundle_dir: str | os.PathLike | None = None,
) -> dict[str, Path]:
    """Write one JSON per layer pair, the tables (Markdown, CSV), the pair table, the lineage and
    the Sankey HTML. The Sankey reads plotly from ``plotly.min.js`` in ``bundle_dir`` (default:
    ``out_dir``), written there once and shared by every Sankey that names the same folder."""
    from hedonic_neurons.report.sankey import write_sankey

    out_dir = Path(out_dir)
    written: dict[str, Path] = {}
    for r in results:
        path = out_dir / f"transition_L{r.source_layer}_L{r.target_layer}.json"
        write_json(path, {**r.to_dict(), "method": method, **(meta or {}), "provenance": provenance()})
        written[path.stem] = path
    rows = transition_table(results, method=method or None)
    write_transition_table(rows, out_dir / "transitions.md", out_dir / "transitions.csv")
    written["table_md"], written["table_csv"] = out_dir / "transitions.md", out_dir / "transitions.csv"
    write_pair_table(pair_rows(results, method=method or None), out_dir / "pairs.csv")
    written["pairs_csv"] = out_dir / "pairs.csv"
    tree = lineage(results)
    written["lineage_json"] = write_json(out_dir / "lineage.json", {"method": method, "lineage": tree})
    title = f"Coalition lineage ({method})" if method else "Coalition lineage"
    written["lineage_md"] = atomic_write_text(out_dir / "lineage.md", lineage_markdown(tree, title=title))
    title = f"Coalition transitions ({method})" if method else None
    written["sankey"] = write_sankey(results, out_dir / "sankey.html", title=title, bundle_dir=bundle_dir)
    return written


def track_with_settings(
    model: Any,
    partitions: Mapping[int, Sequence[Sequence[int]]],
    mean_abs: Mapping[int, Any],
    settings: TrackSettings,
    flow: FlowSpec | None = None,
) -> list[TransitionResult]:
    """:func:`track_partitions` with every option taken from ``settings`` (no flow when
    ``settings.flow_pairs`` is 0)."""
    return track_partitions(
        model,
        partitions,
        mean_abs,
        tau=settings.tau,
        min_size=settings.min_size,
        rule=settings.rule,
        block_size=settings.block_size,
        null_draws=settings.null_draws,
        null_level=settings.null_level,
        horizon=settings.horizon,
        seed=settings.seed,
        flow=flow if settings.flow_pairs > 0 else None,
    )


def track_and_write(
    model: Any,
    partitions: Mapping[int, Sequence[Sequence[int]]],
    mean_abs: Mapping[int, Any],
    settings: TrackSettings,
    out_dir: str | os.PathLike,
    *,
    method: str = "",
    meta: Mapping[str, Any] | None = None,
    flow: FlowSpec | None = None,
    bundle_dir: str | os.PathLike | None = None,
) -> tuple[list[TransitionResult], dict[str, Path]]:
    """Track with ``settings`` and write every output file: the one path of ``hedonic track`` and
    of ``hedonic run``'s tracking stage (same partitions, E|a_p| and inputs: same files)."""
    results = track_with_settings(model, partitions, mean_abs, settings, flow)
    meta = {"settings": settings.to_dict(), **(meta or {})}
    return results, write_tracking(results, out_dir, method=method, meta=meta, bundle_dir=bundle_dir)


def flow_spec(
    nm: NeuronModel, pairs: Sequence[Any], settings: TrackSettings, batch_size: int
) -> FlowSpec | None:
    """The flow inputs for a loaded :class:`NeuronModel`: ``settings.flow_pairs`` of ``pairs``
    (a seeded sample), reference ablation when the model has reference weights, else zero."""
    if settings.flow_pairs == 0:
        return None
    chosen = sample_pairs(pairs, settings.flow_pairs, settings.seed)
    mode = "reference" if nm.has_reference else "zero"
    return FlowSpec(
        batches=list(iter_batches(nm, chosen, batch_size)),
        mode=mode,
        reference=nm.reference_mlp_weights if mode == "reference" else None,
    )


@dataclass
class TrackInputs:
    """What tracking reads from a model and its data besides the partitions: E|a_p| per source
    layer (``mean_abs``), the interventional flow's inputs (``flow``, None without flow) and
    their description for the output files (``activations``). Computed once by
    :func:`track_inputs` and shared by every partition tracked on the same model and pairs."""

    mean_abs: dict[int, Any]
    flow: FlowSpec | None
    activations: dict[str, Any]


def track_inputs(
    nm: NeuronModel,
    pairs: Sequence[Any],
    layers: Sequence[int],
    settings: TrackSettings,
    *,
    batch_size: int = 32,
    data: str = "",
) -> TrackInputs:
    """E|a_p| and the flow's inputs for tracking the partitions of ``layers`` through ``nm``.

    ``nm``: a loaded :class:`~hedonic_neurons.models.NeuronModel`; ``pairs``: (query, passage)
    pairs, of which ``settings.max_pairs`` are drawn (seeded by ``settings.seed``, original order
    kept). E|a_p| is the one definition of
    :func:`~hedonic_neurons.tracking.model.mean_abs_activations` (mean of |a_p| over every
    non-pad token of the drawn pairs), for each layer that is the source of a tracked pair
    (l, l+h), h ≤ ``settings.horizon``; the flow uses ``settings.flow_pairs`` of the drawn pairs.
    ``data`` describes the pairs in the output files.
    """
    from hedonic_neurons.tracking import model as tracking_model

    sources = sorted({lo for lo, _ in layer_pairs(list(layers), settings.horizon)})
    if not sources:
        raise DataError(
            f"no two layers within {settings.horizon} of each other (layers {sorted(layers)}); "
            "tracking needs l and l+1 (or l+h)"
        )
    chosen = sample_pairs(pairs, settings.max_pairs, settings.seed)
    if not chosen:
        raise DataError("no (query, passage) pairs to estimate E|a_p| on (empty data)")
    mean_abs = tracking_model.mean_abs_activations(nm.model, sources, iter_batches(nm, chosen, batch_size))
    return TrackInputs(
        mean_abs=mean_abs,
        flow=flow_spec(nm, chosen, settings, batch_size),
        activations={"data": data, "pairs": len(chosen), "statistic": "E|a_p| over non-pad tokens"},
    )


def track_model(
    nm: NeuronModel,
    partitions: Mapping[int, Sequence[Sequence[int]]],
    inputs: TrackInputs,
    settings: TrackSettings,
    out_dir: str | os.PathLike,
    *,
    method: str = "",
    meta: Mapping[str, Any] | None = None,
    bundle_dir: str | os.PathLike | None = None,
) -> tuple[list[TransitionResult], dict[str, Path]]:
    """Track ``partitions`` (``{layer: coalitions}``) through ``nm`` with ``inputs``
    (:func:`track_inputs`) and write every output file to ``out_dir``: the one path of
    ``hedonic track`` and of ``hedonic run``'s tracking stage. The JSONs record the model's
    identity, the inputs' description, the settings and ``meta``."""
    meta = {"model": nm.identity, "activations": inputs.activations, **(meta or {})}
    return track_and_write(
        nm.model,
        partitions,
        inputs.mean_abs,
        settings,
        out_dir,
        method=method,
        meta=meta,
        flow=inputs.flow,
        bundle_dir=bundle_dir,
    )


def track(
    nm: NeuronModel,
    partitions: Mapping[int, Any],
    pairs: Sequence[Any],
    *,
    batch_size: int = 32,
    **settings: Any,
) -> list[TransitionResult]:
    """Track coalitions across layers from Python, in one call (``hn.track``).

    ``nm``: a :class:`~hedonic_neurons.models.NeuronModel`; ``partitions``: ``{layer: partition}``
    where a partition is a :class:`~hedonic_neurons.partition.Partition`, a labels array or a list
    of coalitions; ``pairs``: the (query, passage) pairs E|a_p| (and the interventional flow) are
    estimated on; ``settings``: any field of :class:`TrackSettings` (``rule``, ``horizon``,
    ``null_draws``, ``flow_pairs``, ``max_pairs``, ``seed``, ...). Returns one
    :class:`~hedonic_neurons.tracking.transitions.TransitionResult` per tracked layer pair, with the
    same numbers ``hedonic track`` writes for the same model, partitions, pairs and settings.
    """
    from hedonic_neurons.partition import Partition

    unknown = sorted(set(settings) - {f.name for f in fields(TrackSettings)})
    if unknown:
        names = ", ".join(f.name for f in fields(TrackSettings))
        raise ConfigError(f"track: unknown setting {unknown[0]!r} (expected one of: {names})")
    if not isinstance(partitions, Mapping) or not partitions:
        raise ConfigError(f"{arg('partitions')} expected a non-empty mapping {{layer: partition}}")
    coalitions = {int(layer): Partition.from_any(p).coalitions for layer, p in partitions.items()}
    opts = TrackSettings(**settings)
    inputs = track_inputs(nm, pairs, list(coalitions), opts, batch_size=batch_size)
    return track_with_settings(nm.model, coalitions, inputs.mean_abs, opts, inputs.flow)
