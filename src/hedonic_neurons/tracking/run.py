"""Tracking a folder of partitions through a model (``hedonic track``), and its output files.

Output folder: ``transition_L{l}_L{l+1}.json`` per adjacent layer pair (the
:meth:`TransitionResult.to_dict` document plus provenance), ``transitions.md`` and
``transitions.csv`` (percentage table), ``sankey.html`` (offline interactive Sankey).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hedonic_neurons.artifacts import PARTITION_FORMAT, load_partition, provenance, read_json, write_json
from hedonic_neurons.errors import DataError
from hedonic_neurons.tracking.transitions import (
    TransitionResult,
    track_layers,
    transition_table,
    write_transition_table,
)

__all__ = ["iter_batches", "load_partition_dir", "sample_pairs", "track_partitions", "write_tracking"]


def load_partition_dir(folder: str | os.PathLike) -> dict[int, tuple[Path, dict[str, Any]]]:
    """The partition files of ``folder`` by layer: ``{layer: (path, document)}``.

    Every ``*.json`` with the partition format tag is read (other JSON files are ignored); each
    must name its layer, and no layer may appear twice.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder (expected a folder of partition JSON files)")
    found: dict[int, tuple[Path, dict[str, Any]]] = {}
    for path in sorted(folder.glob("*.json")):
        doc = read_json(path)
        if not isinstance(doc, dict) or doc.get("format") != PARTITION_FORMAT:
            continue
        doc = load_partition(path)
        layer = doc.get("layer")
        if not isinstance(layer, int):
            raise DataError(f"{path}: the partition has no integer 'layer' field (needed to order layers)")
        if layer in found:
            raise DataError(
                f"{path} and {found[layer][0]} are both partitions of layer {layer}; keep one per layer"
            )
        found[layer] = (path, doc)
    if not found:
        raise DataError(f"{folder}: no partition files (JSON with format '{PARTITION_FORMAT}')")
    return dict(sorted(found.items()))


def sample_pairs(pairs: Sequence[Any], max_pairs: int | None, seed: int) -> list[Any]:
    """At most ``max_pairs`` pairs, a seeded random subset in the original order (all if None)."""
    if max_pairs is None or max_pairs >= len(pairs):
        return list(pairs)
    keep = np.sort(np.random.default_rng(seed).choice(len(pairs), size=max_pairs, replace=False))
    return [pairs[i] for i in keep]


def iter_batches(nm: Any, pairs: Sequence[Any], batch_size: int) -> Iterator[Mapping[str, Any]]:
    """Encoded batches of (query, passage) pairs with the model's one input format."""
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        yield nm.encode([p.query for p in chunk], [p.passage for p in chunk])


def track_partitions(
    model: Any,
    partitions: Mapping[int, Sequence[Sequence[int]]],
    mean_abs: Mapping[int, Any],
    *,
    tau: float | None = None,
    min_size: int = 2,
    rule: str = "matching",
    block_size: int = 512,
) -> list[TransitionResult]:
    """Track every adjacent pair (l, l+1) present in ``partitions`` (``{layer: coalitions}``).

    ``model``: a Hugging Face model (weights read with
    :func:`~hedonic_neurons.tracking.model.layer_pair_weights`); ``mean_abs[l]``: E|a_p| of
    layer l (:func:`~hedonic_neurons.tracking.model.mean_abs_activations`).
    """
    from hedonic_neurons.tracking.model import layer_pair_weights

    layers = sorted(partitions)
    pairs = [layer for layer in layers if layer + 1 in partitions]
    if not pairs:
        raise DataError(
            f"no two adjacent layers among the partitions (layers {layers}); tracking needs l and l+1"
        )
    out = []
    for layer in pairs:
        w = layer_pair_weights(model, layer)
        act = mean_abs[layer]
        act = act.detach().cpu().numpy() if hasattr(act, "detach") else np.asarray(act)
        out.append(
            track_layers(
                w.down,
                w.up_next,
                w.gate_next,
                w.norm_scale_next,
                act,
                partitions[layer],
                partitions[layer + 1],
                tau=tau,
                min_size=min_size,
                rule=rule,
                layer=layer,
                block_size=block_size,
            )
        )
    return out


def write_tracking(
    results: Sequence[TransitionResult],
    out_dir: str | os.PathLike,
    *,
    method: str = "",
    meta: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write one JSON per layer pair, the percentage table (Markdown, CSV) and the Sankey HTML."""
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
    title = f"Coalition transitions ({method})" if method else None
    written["sankey"] = write_sankey(results, out_dir / "sankey.html", title=title)
    return written
