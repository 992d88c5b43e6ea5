"""The ``given`` baseline: a fixed partition read from a file, evaluated like any other method.

It lets a run evaluate a partition made elsewhere (your own clustering, a ground truth) beside
the hedonic partitions and the baselines. Two kinds of file are read:

* a **partition JSON** (format ``hedonic-neurons/partition/v1``, as ``hedonic solve``,
  ``hedonic baseline`` and :meth:`~hedonic_neurons.partition.Partition.save` write it): its
  coalitions as they are;
* a **plant ground truth** (``ground_truth.json`` written by ``hedonic plant``, format
  ``hedonic-neurons/plant/v1``): every planted group (AND and OR) is a coalition and every
  other neuron of the planted layer a singleton.

Either file names the layer it partitions (a partition JSON may leave it null: it then fits
any layer) and its number of neurons; both must match the layer it is used for. In a run config
the baseline is named in ``baselines`` and its files in ``given`` (one per analysed layer)::

    baselines: [given, random]
    given: runs/plant/minilm-l3/ground_truth.json

Every check raises one :class:`~hedonic_neurons.errors.HedonicError` naming the file: missing
or unreadable, neither format, coalitions that do not cover the neurons exactly once, the wrong
layer or the wrong number of neurons.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hedonic_neurons.artifacts import PARTITION_FORMAT, canonical_coalitions, check_partition, read_json
from hedonic_neurons.errors import ConfigError, DataError, arg
from hedonic_neurons.partition import Partition
from hedonic_neurons.partitioner import Partitioner

__all__ = ["PLANT_FORMAT", "GivenPartition", "check_given", "read_given"]

PLANT_FORMAT = "hedonic-neurons/plant/v1"
"""The format tag of a ``hedonic plant`` ground truth (equal to ``models.plant.PLANT_FORMAT``,
repeated here so that reading a ground truth does not import torch)."""


def _plant_partition(doc: dict[str, Any], source: str | os.PathLike) -> Partition:
    """The partition of a plant ground truth: its groups, every other neuron alone."""
    n, layer, groups = doc.get("n_neurons"), doc.get("layer"), doc.get("groups")
    for name, value in (("n_neurons", n), ("layer", layer)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "n_neurons" else 0):
            raise DataError(f"{source}: field '{name}' must be a non-negative integer, got {value!r}")
    if not isinstance(groups, list) or not groups:
        raise DataError(f"{source}: field 'groups' must be a non-empty list of planted groups")
    members: list[list[int]] = []
    for k, group in enumerate(groups):
        got = group.get("members") if isinstance(group, dict) else None
        if (
            not isinstance(got, list)
            or not got
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in got)
        ):
            raise DataError(f"{source}: groups[{k}].members must be a non-empty list of neuron ids")
        members.append(got)
    flat = [i for g in members for i in g]
    bad = [i for i in flat if not 0 <= i < n]
    if bad:
        raise DataError(f"{source}: planted neuron {bad[0]} is outside 0..{n - 1} (n_neurons {n})")
    if len(set(flat)) != len(flat):
        raise DataError(f"{source}: a neuron is in two planted groups; expected disjoint groups")
    planted = set(flat)
    coalitions = members + [[i] for i in range(n) if i not in planted]
    kinds = [{"kind": g.get("kind"), "members": sorted(m)} for g, m in zip(groups, members, strict=True)]
    return Partition.from_coalitions(
        coalitions, n, method="planted", layer=layer, extra={"planted_groups": kinds}
    )


def read_given(path: str | os.PathLike) -> Partition:
    """The partition in ``path``: a partition JSON as it is, or a plant ground truth as its
    groups plus singletons (see the module). The partition's ``extra`` holds ``source`` (the
    file) and, for a ground truth, ``planted_groups`` (each group's ``kind`` and members)."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "file not found"
        raise ConfigError(
            f"given partition {path}: {what}; expected a partition JSON or a plant ground_truth.json"
        )
    doc = read_json(path)
    fmt = doc.get("format") if isinstance(doc, dict) else None
    if fmt == PLANT_FORMAT:
        part = _plant_partition(doc, path)
    elif fmt == PARTITION_FORMAT:
        part = Partition.from_dict(check_partition(doc, path), path)
    else:
        raise DataError(
            f"{path}: neither a partition file nor a plant ground truth (format {fmt!r}; expected "
            f"'{PARTITION_FORMAT}' or '{PLANT_FORMAT}')"
        )
    part.extra["source"] = str(path)
    return part


def check_given(
    paths: Sequence[str | os.PathLike],
    layers: Sequence[int] | None = None,
    n_neurons: int | None = None,
) -> dict[int, str]:
    """Which file partitions which of ``layers``, every file read and checked: ``{layer: path}``.

    A file's layer is its own (a file that names none fits only a single-layer run). One
    :class:`~hedonic_neurons.errors.ConfigError` if a file's layer is not analysed, two files
    name the same layer, an analysed layer has no file, or (with ``n_neurons``) a file partitions
    another number of neurons. ``layers=None``: each file is only read and checked on its own,
    and files without a layer are left out of the result."""
    layers = None if layers is None else list(layers)
    out: dict[int, str] = {}
    for path in paths:
        part = read_given(path)
        if n_neurons is not None and part.n_neurons != n_neurons:
            raise ConfigError(
                f"given partition {path} has {part.n_neurons} neurons, but the model's layers have "
                f"{n_neurons}; expected a partition of this model's neurons"
            )
        layer = part.layer
        if layer is None:
            if layers is None:
                continue
            if len(layers) != 1:
                raise ConfigError(
                    f"given partition {path} names no layer; with several layers ({layers}) each file "
                    "must name its layer"
                )
            layer = layers[0]
        if layers is not None and layer not in layers:
            raise ConfigError(
                f"given partition {path} is of layer {layer}, which the run does not analyse "
                f"(layers {layers}); expected a partition of one of them"
            )
        if layer in out:
            raise ConfigError(f"given partitions {out[layer]} and {path} are both of layer {layer}; keep one")
        out[layer] = str(path)
    missing = [layer for layer in layers or () if layer not in out]
    if missing:
        raise ConfigError(
            f"the 'given' baseline has no partition for layer {missing[0]} (the files cover layers "
            f"{sorted(out)}); expected one file per analysed layer {layers}"
        )
    return out


class GivenPartition(Partitioner):
    """The partition read from ``path`` (:func:`read_given`), unchanged.

    ``layer``: the layer it is used for (None: not checked); the file's layer, when it names one,
    must equal it. ``fit(X)`` takes only the number of neurons, ``len(X)`` (``requires`` is
    None), and checks the file partitions exactly that many. Deterministic: ``random_state`` is
    accepted for the common interface and not used.
    """

    requires = None
    deterministic = True

    def __init__(
        self, path: str | os.PathLike | None = None, layer: int | None = None, *, random_state: Any = None
    ):
        self.path = path
        self.layer = layer
        self.random_state = random_state

    def fit(self, X: Any, y: Any = None) -> GivenPartition:
        """Read the file and check it against this layer (``len(X)`` neurons)."""
        if self.path is None:
            raise ConfigError(
                f"the 'given' baseline needs a partition file: pass {arg('path')} (a run config: given: PATH)"
            )
        part = read_given(self.path)
        n = len(X)
        if part.n_neurons != n:
            raise ConfigError(
                f"given partition {self.path} has {part.n_neurons} neurons, but the layer has {n}; "
                "expected a partition of this model's layer"
            )
        if self.layer is not None and part.layer is not None and part.layer != self.layer:
            raise ConfigError(
                f"given partition {self.path} is of layer {part.layer}, not layer {self.layer}; "
                "expected the file of this layer"
            )
        self.source_ = part
        self._set_result(canonical_coalitions(part.coalitions), n)
        return self

    def diagnostics(self) -> dict[str, Any]:
        """The file read and the method it records (and a ground truth's planted groups)."""
        part = self.source_
        out: dict[str, Any] = {"source": part.extra["source"], "source_method": part.method}
        if "planted_groups" in part.extra:
            out["planted_groups"] = part.extra["planted_groups"]
        return out
