"""Partitions of a layer's neurons, the partitioners that make them, and the one dispatch.

* :class:`Partition`: a partition of neurons 0..n-1 into coalitions, with what made it
  (``method``, ``params``, ``layer``, ``provenance``, ``extra``); saved and loaded in the one
  partition JSON format (``"hedonic-neurons/partition/v1"``).
* :class:`~hedonic_neurons.partitioner.Partitioner`: the protocol of every method that
  partitions neurons, a scikit-learn clusterer that declares the input it needs (``requires``),
  and :data:`~hedonic_neurons.partitioner.PARTITIONERS`, the registry of them all (defined in
  :mod:`hedonic_neurons.partitioner`, which loads scikit-learn; importable from here too).
* :func:`partition_layer`: the one function that runs partitioners on a layer (``hedonic
  solve``, ``hedonic baseline`` and ``hedonic run`` all call it), dispatching on ``requires``.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hedonic_neurons.artifacts import (
    PARTITION_FORMAT,
    canonical_coalitions,
    check_partition,
    labels_from_coalitions,
    provenance,
    read_json,
    size_summary,
    write_json,
)
from hedonic_neurons.errors import ConfigError, DataError

__all__ = [
    "HEDONIC",
    "INPUTS",
    "LayerInputs",
    "Partition",
    "coalitions_from_labels",
    "hedonic_method",
    "partition_layer",
]

#: Names of :mod:`hedonic_neurons.partitioner` (which loads scikit-learn), imported on first use.
_PROTOCOL = ("PARTITIONERS", "Partitioner", "baseline_names", "make_partitioner", "solver_names")


def __getattr__(name: str) -> Any:
    if name in _PROTOCOL:
        from hedonic_neurons import partitioner

        return getattr(partitioner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: The kinds of input a partitioner can require (see :attr:`Partitioner.requires`).
INPUTS = ("phi", "rows", "profiles", "sizes", None)

#: The keys of a partition document that :class:`Partition` holds as attributes (the rest is ``extra``).
_OWN_FIELDS = (
    "format",
    "method",
    "layer",
    "n_neurons",
    "params",
    "sizes",
    "coalitions",
    "labels",
    "provenance",
)


def hedonic_method(metric: str | None) -> str:
    """The method name of a hedonic partition: ``hedonic-<metric>`` (``hedonic`` when the φ's
    metric is not known)."""
    return f"hedonic-{metric}" if metric else "hedonic"


#: The method name of the hedonic partition of each built-in φ metric.
HEDONIC = {metric: hedonic_method(metric) for metric in ("oca", "pas")}


def coalitions_from_labels(labels: Sequence[int] | np.ndarray) -> list[list[int]]:
    """Group neuron indices by cluster label into canonical coalitions (labels that no neuron has
    do not make an empty coalition)."""
    labels = np.asarray(labels)
    order = np.argsort(labels, kind="stable")
    _, starts = np.unique(labels[order], return_index=True)
    return canonical_coalitions(np.split(order, starts[1:]))


def _check_labels(labels: Any) -> np.ndarray:
    """``labels`` as a non-empty 1-d int64 array of non-negative integers."""
    if isinstance(labels, str | bytes) or not hasattr(labels, "__len__"):
        raise DataError(
            f"labels must be a 1-d sequence of integers (one per neuron), got {type(labels).__name__}"
        )
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.size == 0:
        raise DataError(f"labels must be a non-empty 1-d sequence (one per neuron), got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise DataError(f"labels must be integers (one cluster id per neuron), got dtype {arr.dtype}")
    if arr.min() < 0:
        i = int(np.flatnonzero(arr < 0)[0])
        raise DataError(f"labels must be >= 0 (every neuron in a coalition), got {int(arr[i])} at neuron {i}")
    return arr.astype(np.int64, copy=False)


def jsonable(value: Any) -> Any:
    """A parameter value as written into a partition file (numpy scalars to Python, a random
    Generator by its name)."""
    if isinstance(value, np.integer | np.floating | np.bool_):
        return value.item()
    if isinstance(value, np.random.Generator | np.random.RandomState):
        return type(value).__name__
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


# ------------------------------------------------------------------------------------ Partition


class Partition:
    """A partition of neurons 0..n-1 into coalitions, and what made it.

    ``labels`` (int64, length n, read-only): ``labels[i]`` is the index of neuron i's coalition in
    ``coalitions``; ``coalitions``: canonical (each sorted, largest first, ties by smallest
    member). Any labelling can be given (:meth:`from_labels`; it is renumbered) or a list of
    coalitions that covers 0..n-1 exactly once (:meth:`from_coalitions`).

    **Method names** (``method``), one vocabulary for every file: what the run compares.
    ``hedonic-<metric>`` (``hedonic-oca``, ``hedonic-pas``; ``hedonic`` when the φ's metric is not
    known) for the hedonic game's partitions, whichever solver made them (the solver, ``exact``
    or ``pac``, and its settings are in ``params["solver"]`` and ``params``); a baseline's
    registered name (``random``, ``kmeans``, ``hierarchical``, ``phi-communities``, or any
    partitioner registered in :data:`PARTITIONERS`).

    ``params``: the settings that made it (JSON-ready); ``layer``: the layer (or None);
    ``provenance``: who wrote it (set when loaded; a new partition gets a fresh one when saved);
    ``extra``: any other fields of the file (certificates, diagnostics, ...), written as they are.

    A Partition is a sequence of its coalitions (``len``, iteration, indexing), so it can be
    passed wherever a list of coalitions is expected.
    """

    __hash__ = None  # type: ignore[assignment]

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray,
        *,
        method: str | None = None,
        params: Mapping[str, Any] | None = None,
        layer: int | None = None,
        provenance: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        arr = _check_labels(labels)
        coalitions = coalitions_from_labels(arr)
        canonical = labels_from_coalitions(coalitions, arr.size)
        canonical.flags.writeable = False
        if layer is not None and (
            isinstance(layer, bool) or not isinstance(layer, int | np.integer) or layer < 0
        ):
            raise DataError(f"layer must be an integer >= 0 or None, got {layer!r}")
        if method is not None and not isinstance(method, str):
            raise DataError(f"method must be a string or None, got {method!r}")
        self._labels = canonical
        self._coalitions = coalitions
        self.method = method
        self.params: dict[str, Any] = dict(params or {})
        self.layer = None if layer is None else int(layer)
        self.provenance = dict(provenance) if provenance is not None else None
        self.extra: dict[str, Any] = dict(extra or {})
        clash = sorted(set(self.extra) & set(_OWN_FIELDS))
        if clash:
            raise DataError(f"extra must not hold the partition fields {clash} (pass them as arguments)")

    # -- constructors -------------------------------------------------------------------------
    @classmethod
    def from_labels(cls, labels: Sequence[int] | np.ndarray, **meta: Any) -> Partition:
        """From one cluster label per neuron (any non-negative integers; renumbered so that
        ``labels[i]`` indexes the canonical ``coalitions``). ``meta``: method, params, layer,
        provenance, extra."""
        return cls(labels, **meta)

    @classmethod
    def from_coalitions(
        cls, coalitions: Sequence[Sequence[int]], n_neurons: int | None = None, **meta: Any
    ) -> Partition:
        """From coalitions that cover neurons 0..n-1 exactly once (n: ``n_neurons``, default the
        total size of the coalitions); any order. ``meta`` as in :meth:`from_labels`."""
        if isinstance(coalitions, Partition):
            return cls(coalitions.labels, **meta)
        if isinstance(coalitions, str | bytes) or not hasattr(coalitions, "__len__") or not len(coalitions):
            raise DataError("coalitions must be a non-empty list of lists of neuron ids")
        if not all(hasattr(c, "__len__") and not isinstance(c, str | bytes) for c in coalitions):
            raise DataError("coalitions must be a list of lists of neuron ids (one list per coalition)")
        n = sum(len(c) for c in coalitions) if n_neurons is None else n_neurons
        return cls(labels_from_coalitions(coalitions, n), **meta)

    @classmethod
    def from_any(cls, value: Any, **meta: Any) -> Partition:
        """A Partition from a Partition (its metadata, updated by the ``meta`` given that are not
        None), a labels array or list of integers, or a list of coalitions."""
        if isinstance(value, Partition):
            own = {
                "method": value.method, "params": value.params, "layer": value.layer,
                "provenance": value.provenance, "extra": value.extra,
            }  # fmt: skip
            own.update({k: v for k, v in meta.items() if v is not None})
            return cls(value.labels, **own)
        if isinstance(value, np.ndarray) and value.ndim == 1:
            return cls.from_labels(value, **meta)
        if (
            hasattr(value, "__len__")
            and len(value)
            and all(isinstance(x, int | np.integer) and not isinstance(x, bool) for x in value)
        ):
            return cls.from_labels(value, **meta)
        return cls.from_coalitions(value, **meta)

    # -- the partition ------------------------------------------------------------------------
    @property
    def labels(self) -> np.ndarray:
        """Coalition index of every neuron (int64, read-only)."""
        return self._labels

    @property
    def coalitions(self) -> list[list[int]]:
        """The coalitions, canonical: sorted members, largest first, ties by smallest member."""
        return self._coalitions

    @property
    def n_neurons(self) -> int:
        return int(self._labels.size)

    @property
    def sizes(self) -> list[int]:
        """Coalition sizes, largest first (the order of ``coalitions``)."""
        return [len(c) for c in self._coalitions]

    def top_k(self, k: int, min_size: int = 2) -> list[list[int]]:
        """The ``k`` largest coalitions with at least ``min_size`` members (ties by smallest
        member)."""
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 0:
            raise ConfigError(f"k must be an integer >= 0, got {k!r}")
        return [c for c in self._coalitions if len(c) >= min_size][: int(k)]

    def size_summary(self) -> dict[str, Any]:
        """Coalition size distribution (the file's ``sizes`` field)."""
        return size_summary(self._coalitions)

    def __len__(self) -> int:
        return len(self._coalitions)

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._coalitions)

    def __getitem__(self, index: int) -> list[int]:
        return self._coalitions[index]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Partition):
            return NotImplemented
        return np.array_equal(self._labels, other._labels) and (
            self.method,
            self.layer,
            self.params,
            self.extra,
        ) == (other.method, other.layer, other.params, other.extra)

    def __repr__(self) -> str:
        where = f", layer={self.layer}" if self.layer is not None else ""
        return (
            f"Partition(method={self.method!r}{where}, n_neurons={self.n_neurons}, "
            f"coalitions={len(self)}, largest={self.sizes[0]})"
        )

    # -- the file -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The partition document, as :meth:`save` writes it (a fresh provenance if it has none)."""
        return {
            "format": PARTITION_FORMAT,
            "method": self.method,
            "layer": self.layer,
            "n_neurons": self.n_neurons,
            "params": jsonable(self.params),
            "sizes": self.size_summary(),
            **self.extra,
            "coalitions": self._coalitions,
            "labels": self._labels.tolist(),
            "provenance": self.provenance if self.provenance is not None else provenance(),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the partition JSON (atomically); returns the path. A partition without a
        provenance gets one here (and keeps it, so it equals the file it wrote)."""
        doc = self.to_dict()
        self.provenance = doc["provenance"]
        return write_json(path, doc)

    @classmethod
    def from_dict(cls, doc: Any, source: str | os.PathLike = "partition") -> Partition:
        """A Partition from a parsed partition document, checked as :meth:`load` checks a file."""
        doc = check_partition(doc, source)
        return cls.from_coalitions(
            doc["coalitions"],
            doc["n_neurons"],
            method=doc.get("method"),
            params=doc.get("params") or {},
            layer=doc.get("layer"),
            provenance=doc.get("provenance"),
            extra={k: v for k, v in doc.items() if k not in _OWN_FIELDS},
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> Partition:
        """Read a partition JSON; a malformed file is one :class:`DataError` naming the file and
        the field."""
        return cls.from_dict(read_json(path), path)


# ------------------------------------------------------------------------------------- dispatch


@dataclass
class LayerInputs:
    """The inputs of one layer that partitioners may require, each computed only when first
    asked for and then kept.

    ``phi(metric)``: a metric's φ; ``phi_se(metric)``: ``(phi, se)``, a metric's φ and its
    standard errors read together (what a hedonic solver with ``min_z`` set is given; see
    :meth:`phi_and_se`); ``rows()``: the MLP input-projection rows; ``profiles()``: activation
    profiles; ``sizes()``: target coalition sizes (when not given, :func:`partition_layer` uses
    the reference hedonic partition's); ``n_neurons``: n, for partitioners that require nothing.
    ``missing[kind]`` says what the caller must pass to provide an input that is None (it is in
    the error a partitioner that needs it raises).
    """

    phi: Callable[[str | None], np.ndarray] | None = None
    phi_se: Callable[[str | None], tuple[np.ndarray, np.ndarray]] | None = None
    rows: Callable[[], np.ndarray] | None = None
    profiles: Callable[[], np.ndarray] | None = None
    sizes: Callable[[], Sequence[int]] | None = None
    n_neurons: int | None = None
    missing: Mapping[str, str] = field(default_factory=dict)
    _cache: dict[Any, Any] = field(default_factory=dict, repr=False)

    def get(self, kind: str | None, metric: str | None = None) -> Any:
        """The input of kind ``kind`` (one of :data:`INPUTS`; ``metric``: whose φ)."""
        if kind not in INPUTS:
            raise ConfigError(f"unknown partitioner input {kind!r} (expected one of {INPUTS})")
        key = (kind, metric if kind == "phi" else None)
        if key not in self._cache:
            if kind is None:
                value: Any = np.empty((self.n(), 0))
            else:
                source = getattr(self, kind)
                if source is None:
                    raise ConfigError(f"no {kind} to partition: pass {self.missing.get(kind, kind)}")
                value = source(metric) if kind == "phi" else source()
            self._cache[key] = value
        return self._cache[key]

    def phi_and_se(self, metric: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(phi, se)`` of ``metric``, read once by ``phi_se(metric)`` and kept; the φ is also
        what :meth:`get` then returns for ``"phi"`` (so a layer's φ is read once, with its
        standard errors only when a partitioner asks for them)."""
        key = ("se", metric)
        if key not in self._cache:
            if self.phi_se is None:
                raise ConfigError(
                    f"min_z needs the standard errors of phi: pass {self.missing.get('phi_se', 'phi_se')}"
                )
            phi, se = self.phi_se(metric)
            self._cache.setdefault(("phi", metric), phi)
            self._cache[key] = se
        return self._cache[("phi", metric)], self._cache[key]

    def n(self) -> int:
        """The number of neurons: ``n_neurons``, else that of an input already computed."""
        if self.n_neurons is not None:
            return int(self.n_neurons)
        for value in self._cache.values():
            if hasattr(value, "shape"):
                return int(value.shape[0])
            return int(sum(value))
        raise ConfigError(f"the number of neurons is not known: pass {self.missing.get('n', 'n_neurons')}")


@dataclass
class _Job:
    method: str  # the partition's method name
    name: str  # the registered partitioner
    settings: Mapping[str, Any]  # its parameters (entries it does not take are ignored)
    metric: str | None  # whose φ, for a partitioner that requires φ
    params: Mapping[str, Any]  # written into the partition file


def partition_layer(
    layer: int | None,
    *,
    phi: Callable[[str], np.ndarray] | None = None,
    phi_se: Callable[[str], tuple[np.ndarray, np.ndarray]] | None = None,
    metrics: Sequence[str | None] = (),
    baselines: Sequence[str] = (),
    seeds: Sequence[int] = (0,),
    game: Any = None,
    path: Callable[[str, int], Path] | None = None,
    rows: Callable[[], np.ndarray] | None = None,
    profiles: Callable[[], np.ndarray] | None = None,
    n_clusters: int | None = None,
    timings: dict[str, float] | None = None,
    settings: Mapping[str, Mapping[str, Any]] | None = None,
    inputs: LayerInputs | None = None,
    reference: str | None = None,
) -> dict[tuple[str, int], Partition]:
    """Every hedonic partition and baseline of one layer, for every seed: the one dispatch.

    Hedonic partitions: for each φ metric of ``metrics`` (None: a φ whose metric is not known),
    the solver ``game["solver"]`` (a registered partitioner with ``hedonic = True``) built from
    ``game``'s settings (a ``GameConfig`` or a mapping), method ``hedonic-<metric>``. Baselines:
    each registered name of ``baselines``, built from ``settings[name]`` (plus ``n_clusters``
    where that is a parameter). Every partitioner gets the input its ``requires`` names, from
    ``inputs`` (or ``phi(metric)``, ``rows()``, ``profiles()``): a baseline that requires φ gets
    the reference metric's φ, one that requires sizes gets ``inputs.sizes()`` or else the sizes
    of the reference hedonic partition of the same seed. A hedonic solver whose ``min_z`` is set
    (``game.min_z``: the thresholded game, only φ_ij > min_z · se_ij is a partner) is fitted
    with ``fit(phi, se)``, both from ``inputs.phi_and_se`` (or ``phi_se(metric)``); without
    ``min_z`` only φ is read, and baselines never get the standard errors. The reference metric is
    ``reference``, else PAS when it is among ``metrics``, else the first metric. Every input is
    computed once per layer, :meth:`Partitioner.prepare` once per partitioner and parameters,
    and a ``deterministic`` partitioner is fitted once and reused for every seed.

    ``path(method, seed)``: where each partition is written; an existing file there is read
    instead (so a killed stage resumes). Without ``path`` nothing is written. Partitioners get
    ``random_state=seed``. Returns the partitions by (method, seed); ``timings`` (optional)
    collects seconds per step.
    """
    from hedonic_neurons.partitioner import Partitioner, check_baseline, check_solver, make_partitioner

    clock = timings if timings is not None else {}

    @contextlib.contextmanager
    def timed(step: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            clock[step] = clock.get(step, 0.0) + time.perf_counter() - t0

    metrics = list(metrics)
    if reference is not None:
        ref: str | None = reference
    else:
        ref = "pas" if "pas" in metrics else (metrics[0] if metrics else None)
    if inputs is None:
        inputs = LayerInputs()
    for kind, source in (("phi", phi), ("phi_se", phi_se), ("rows", rows), ("profiles", profiles)):
        if source is not None and getattr(inputs, kind) is None:
            setattr(inputs, kind, source)
    jobs: list[_Job] = []
    if metrics:
        if game is None:
            raise ConfigError("hedonic partitions need the game's settings (game=...)")
        game_settings = dict(game.model_dump() if hasattr(game, "model_dump") else game)
        solver = check_solver(game_settings.get("solver"))
        jobs += [
            _Job(hedonic_method(m), solver, game_settings, m, {**game_settings, "phi": m}) for m in metrics
        ]
    for name in baselines:
        check_baseline(name)
        own = dict((settings or {}).get(name, {}))
        if n_clusters is not None:
            own.setdefault("n_clusters", n_clusters)
        jobs.append(_Job(name, name, own, ref, {}))

    out: dict[tuple[str, int], Partition] = {}
    prepared: dict[Any, Any] = {}
    fitted: dict[Any, Partitioner] = {}

    def input_of(job: _Job, kind: str | None, seed: int) -> Any:
        if kind == "sizes" and inputs.sizes is None:
            like = out.get((hedonic_method(ref), seed)) if metrics else None
            if like is None:
                raise ConfigError(
                    f"{job.name} is size-matched to a hedonic partition: pass its sizes or the game's metrics"
                )
            return like.sizes
        if kind == "phi":
            if inputs.phi is None:
                raise ConfigError(f"{job.name} partitions φ: pass {inputs.missing.get('phi', 'phi')}")
            with timed("read and validate phi"):
                return inputs.get("phi", job.metric)
        if kind is None and inputs.n_neurons is None and out:
            inputs.n_neurons = next(iter(out.values())).n_neurons
        return inputs.get(kind)

    for seed in seeds:
        for job in jobs:
            target = Path(path(job.method, seed)) if path is not None else None
            if target is not None and target.is_file():
                out[(job.method, seed)] = Partition.load(target)
                continue
            est = make_partitioner(job.name, job.settings, seed)
            kind = est.requires
            thresholded = est.hedonic and est.get_params(deep=False).get("min_z") is not None
            se = None
            if thresholded:
                with timed("read and validate phi"):
                    X, se = inputs.phi_and_se(job.metric)
            else:
                X = input_of(job, kind, seed)
            fixed = sorted((k, repr(v)) for k, v in est.get_params(deep=False).items() if k != "random_state")
            key = (job.name, kind, job.metric, tuple(fixed), seed if kind == "sizes" else None)
            with timed("solver" if est.hedonic else job.method):
                if key not in prepared:
                    prepared[key] = est.prepare(X)
                if est.deterministic and key in fitted:
                    done = fitted[key]
                else:
                    done = est.fit(prepared[key], se) if thresholded else est.fit(prepared[key])
                    if est.deterministic:
                        fitted[key] = done
            if est.hedonic:
                params = dict(job.params)
            else:
                params = {**jsonable(est.get_params(deep=False)), **_input_params(kind, job.metric, ref)}
            params["seed"] = seed
            part = Partition(
                done.labels_, method=job.method, params=params, layer=layer, extra=done.diagnostics()
            )
            if target is not None:
                with timed("write"):
                    part.save(target)
            out[(job.method, seed)] = part
    return out


def _input_params(kind: str | None, metric: str | None, reference: str | None) -> dict[str, Any]:
    """What a baseline's input was, for its partition file's ``params``."""
    if kind == "phi":
        return {"phi": metric}
    if kind == "sizes":
        return {"like": hedonic_method(reference)} if reference is not None else {}
    if kind == "profiles":
        return {"features": "mean activation per train pair"}
    if kind == "rows":
        return {"features": "input-projection rows"}
    return {}
