"""Artifacts: atomic writes, provenance, the phi file and the partition file.

Every stage writes files a person can open: tensors in safetensors, everything else JSON.
Files are written atomically (temporary file + rename), so a killed run never leaves a
half-written artifact behind; they get the permissions of an ordinary file (``0666`` less the
user's umask), and every artifact carries :func:`provenance`. Partition files are read through
one schema (:class:`PartitionFile`), so a malformed one is one error naming the file and field.
"""

from __future__ import annotations

import datetime as _dt
import functools
import itertools
import json
import os
import platform
import subprocess
import tempfile
import weakref
from collections.abc import Sequence
from importlib import metadata as _metadata
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from hedonic_neurons import __version__
from hedonic_neurons.errors import DataError, PhiError

PARTITION_FORMAT = "hedonic-neurons/partition/v1"


@functools.lru_cache(maxsize=1)
def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


@functools.cache
def _version_of(distribution: str) -> str | None:
    """A distribution's installed version from its package metadata (never imports it)."""
    try:
        return _metadata.version(distribution)
    except _metadata.PackageNotFoundError:
        return None


def provenance(**extra: Any) -> dict[str, Any]:
    """Who made an artifact: package version, git commit, library versions, time, plus ``extra``.

    Library versions come from installed package metadata, so recording them imports nothing
    (importing torch only to read its version cost 2.8 s of a 21 s ``hedonic solve``); the git
    commit is looked up once per process.
    """
    info: dict[str, Any] = {
        "package": "hedonic-neurons",
        "version": __version__,
        "git_commit": _git_commit(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    torch_version = _version_of("torch")
    if torch_version is not None:
        info["torch"] = torch_version
    info.update(extra)
    return info


def current_umask() -> int:
    """The process's umask (read from ``/proc`` where possible: setting it to read it is racy)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename.

    The file gets mode ``0666 & ~umask``, as if it had been opened normally (the temporary file
    would otherwise keep ``mkstemp``'s private ``0600``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _finite(obj: Any) -> Any:
    """NaN and infinities become None (JSON has no NaN): "could not be computed"."""
    if isinstance(obj, float | np.floating):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    if isinstance(obj, np.ndarray) and obj.dtype.kind == "f":
        return _finite(obj.tolist())
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically. numpy scalars and arrays are converted; NaN and
    infinities are written as null."""
    return atomic_write_text(
        path, json.dumps(_finite(obj), indent=2, default=_json_default, allow_nan=False) + "\n"
    )


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file (a UTF-8 byte-order mark is allowed); one :class:`DataError` naming the
    file when it is missing, unreadable, not UTF-8 or not JSON."""
    path = Path(path)
    if not path.is_file():
        what = "a folder" if path.is_dir() else "file not found"
        raise DataError(f"{path}: {what} (expected a JSON file)")
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); expected a JSON file"
        ) from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc}); expected a JSON file") from None


# ----------------------------------------------------------------------------------------- phi


def _row_blocks(n: int, rows_per_block: int) -> list[slice]:
    return [slice(a, min(a + rows_per_block, n)) for a in range(0, n, rows_per_block)]


def _upper_tiles(n: int, tile: int = 256) -> list[tuple[slice, slice]]:
    """Square tiles (I, J) with J >= I covering every pair i <= j: a tile and its mirror fit in
    cache, so comparing ``arr[I, J]`` with ``arr[J, I].T`` does not stride across rows."""
    blocks = _row_blocks(n, tile)
    return [(bi, bj) for x, bi in enumerate(blocks) for bj in blocks[x:]]


def _raise_non_finite(arr: np.ndarray, name: str) -> None:
    total, first = 0, None
    for blk in _row_blocks(arr.shape[0], max(1, (1 << 21) // arr.shape[0])):
        bad = ~np.isfinite(arr[blk])
        total += int(bad.sum())
        if first is None and bad.any():
            i, j = map(int, np.argwhere(bad)[0])
            first = (i + blk.start, j)
    i, j = first  # type: ignore[misc]
    raise PhiError(
        f"{name} has {total} non-finite entries (first at [{i}, {j}] = {arr[i, j]}); "
        "expected every entry finite"
    )


#: The arrays :func:`validate_phi` returned (read-only views), by id; they are trusted as they are.
_TRUSTED: weakref.WeakValueDictionary[int, np.ndarray] = weakref.WeakValueDictionary()


def is_validated_phi(phi: Any) -> bool:
    """Whether ``phi`` is an array that :func:`validate_phi` returned (so it need not be checked
    again)."""
    return isinstance(phi, np.ndarray) and _TRUSTED.get(id(phi)) is phi


def _trusted(arr: np.ndarray) -> np.ndarray:
    view = arr.view()
    view.flags.writeable = False
    _TRUSTED[id(view)] = view
    return view


def validate_phi(phi: Any, *, name: str = "phi", atol: float = 1e-5) -> np.ndarray:
    """The one validator every phi passes through.

    Validation happens once, where phi enters: the result is a **read-only view** that this
    function recognises and returns at once (no pass over the data) when it is given that
    same object again, so a phi loaded by :func:`load_phi` and handed to a solver, both
    certificates and a baseline is checked once, not four times (at n = 14,336 the check is
    about 0.6 s of a 0.9 s exact solve). Only that returned object is trusted: a slice, a
    copy or any other array is checked in full. Keep the returned view and do not write to
    the array it was made from (when phi was already valid no copy is made, so the view
    shares the caller's memory).

    Checks that ``phi`` is a square, non-empty, finite, symmetric (to ``atol`` relative to its
    largest entry) 2-d matrix and returns it with a zero diagonal (the diagonal is not used by
    any stage). float32 input stays float32 and float64 stays float64 (anything else becomes
    float64). Memory: one pass over 256 x 256 tiles (no n x n temporaries), and the input
    is returned as is, without a copy, when it is already C-contiguous, exactly symmetric and
    zero on the diagonal; otherwise a symmetrised ``0.5 * (phi + phi.T)`` copy with the diagonal
    set to zero is returned (the caller's array is never modified).
    """
    if is_validated_phi(phi):
        return phi
    arr = np.asarray(phi)
    # an array of integers or booleans is a wrong file (labels, counts, a mask), not a phi;
    # nested lists of numbers (literal test data) are converted
    if arr.dtype.kind != "f" and (hasattr(phi, "dtype") or arr.dtype.kind not in "iu"):
        raise PhiError(f"{name} has dtype {arr.dtype}; expected a floating-point matrix (float32 or float64)")
    if arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float64)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise PhiError(f"{name} must be a square n x n matrix, got shape {tuple(arr.shape)}")
    n = arr.shape[0]
    if n == 0:
        raise PhiError(f"{name} is empty (0 x 0); expected at least one neuron")
    arr = np.ascontiguousarray(arr)
    tiles = _upper_tiles(n)
    buf = np.empty(min(n, 256) ** 2, dtype=arr.dtype)
    scale, worst, where = 0.0, 0.0, (0, 0)
    for bi, bj in tiles:  # one pass: finiteness, largest magnitude, largest asymmetry
        upper, lower = arr[bi, bj], arr[bj, bi]
        hi = max(float(upper.max()), float(lower.max()))
        lo = min(float(upper.min()), float(lower.min()))
        if not (np.isfinite(hi) and np.isfinite(lo)):
            _raise_non_finite(arr, name)
        scale = max(scale, hi, -lo)
        diff = buf[: upper.size].reshape(upper.shape)
        np.subtract(upper, lower.T, out=diff)
        np.abs(diff, out=diff)
        flat = int(diff.argmax())
        if diff.flat[flat] > worst:
            worst = float(diff.flat[flat])
            where = (bi.start + flat // diff.shape[1], bj.start + flat % diff.shape[1])
    scale = max(scale, 1e-30)
    if worst > atol * scale:
        i, j = where
        raise PhiError(
            f"{name} is not symmetric: [{i}, {j}] = {arr[i, j]:.6g} but [{j}, {i}] = {arr[j, i]:.6g}"
        )
    if worst == 0.0 and not np.diagonal(arr).any():
        return _trusted(arr)
    owned = arr is not phi and arr.flags.owndata
    if isinstance(phi, np.ndarray) and np.may_share_memory(arr, phi):
        owned = False
    out = arr if owned else arr.copy()
    if worst > 0.0:  # symmetrise in place, tile by tile (each pair written once)
        for bi, bj in tiles:
            avg = 0.5 * (out[bi, bj] + out[bj, bi].T)
            out[bi, bj] = avg
            out[bj, bi] = avg.T
    np.fill_diagonal(out, 0.0)
    return _trusted(out)


def save_phi(
    path: str | os.PathLike,
    phi: np.ndarray,
    metadata: dict[str, Any],
    *,
    se: np.ndarray | None = None,
    arrays: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write ``phi`` as ``{path}`` (safetensors, key ``phi``, float32) plus a JSON sidecar.

    The sidecar is ``path`` with suffix ``.json``; it holds ``metadata`` and a provenance block.
    ``se``: the standard errors of φ's entries (same shape), saved under the key ``phi_se``
    (float32) and read back by ``load_phi(path, with_se=True)``. ``arrays``: further named
    arrays for the same file (saved as float32 when floating point; ``phi_se`` may be passed
    here too, as the collectors do).
    """
    from safetensors.numpy import save

    path = Path(path)
    arr = np.ascontiguousarray(np.asarray(phi, dtype=np.float32))
    tensors = {"phi": arr}
    extra = dict(arrays or {})
    if se is not None:
        extra[PHI_SE_KEY] = se
    for name, value in extra.items():
        if name == "phi":
            raise PhiError("save_phi: an extra array may not be named 'phi' (that is phi itself)")
        value = np.asarray(value)
        if value.dtype.kind == "f":
            value = value.astype(np.float32)
        if name == PHI_SE_KEY and value.shape != arr.shape:
            raise PhiError(f"the standard errors of phi have shape {value.shape}; expected {arr.shape}")
        tensors[name] = np.ascontiguousarray(value)
    atomic_write_bytes(path, save(tensors))
    write_json(path.with_suffix(".json"), {**metadata, "provenance": provenance()})
    return path


#: The key of φ's standard errors in a phi file.
PHI_SE_KEY = "phi_se"


def _check_se(se: np.ndarray, phi: np.ndarray, name: str) -> np.ndarray:
    """Standard errors of a phi file: same shape as φ, finite, >= 0 and symmetric (returned
    read-only, float32 or float64 as stored, diagonal zero)."""
    if se.dtype.kind != "f":
        raise PhiError(f"{name}: '{PHI_SE_KEY}' has dtype {se.dtype}; expected floating point")
    if se.shape != phi.shape:
        raise PhiError(f"{name}: '{PHI_SE_KEY}' has shape {se.shape}; expected {phi.shape}, like phi")
    out = validate_phi(se, name=f"{name} ({PHI_SE_KEY})")
    if (out < 0).any():
        i, j = map(int, np.argwhere(out < 0)[0])
        raise PhiError(f"{name}: '{PHI_SE_KEY}'[{i}, {j}] = {out[i, j]}; expected standard errors >= 0")
    return out


def load_phi(path: str | os.PathLike, *, with_se: bool = False) -> Any:
    """Read the ``phi`` tensor of a safetensors file and validate it.

    ``with_se=True``: return ``(phi, se)``, ``se`` the standard errors written beside φ (key
    ``phi_se``: finite, >= 0, symmetric, same shape). A file without them (written before the
    collectors wrote standard errors, or with too few inputs for one) is one :class:`DataError`
    saying so.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(path)
    if not path.is_file():
        what = "a folder" if path.is_dir() else "file not found"
        raise DataError(f"{path}: {what} (expected a phi_layer{{L}}.safetensors file)")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, TypeError) as exc:
        raise DataError(f"{path}: not a readable safetensors file ({exc})") from None
    if "phi" not in tensors:
        raise DataError(f"{path}: no tensor named 'phi' (found {sorted(tensors)})")
    phi = validate_phi(tensors["phi"], name=str(path))
    if not with_se:
        return phi
    if PHI_SE_KEY not in tensors:
        raise DataError(
            f"{path}: no standard errors ('{PHI_SE_KEY}'; the file has {sorted(tensors)}): it was written "
            "before hedonic collect saved them, or from too few inputs for one (see 'se' in its .json "
            "sidecar); collect that layer again into a new folder, or load it without with_se"
        )
    return phi, _check_se(tensors[PHI_SE_KEY], phi, str(path))


# ----------------------------------------------------------------------------------- partitions


def labels_from_coalitions(coalitions: Sequence[Sequence[int]], n: int) -> np.ndarray:
    """Coalition index of every neuron; checks that ``coalitions`` cover 0..n-1 exactly once."""
    labels = np.full(n, -1, dtype=np.int64)
    for c, members in enumerate(coalitions):
        idx = np.asarray(members, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise DataError(f"coalition {c} names a neuron outside 0..{n - 1}")
        if (labels[idx] != -1).any() or len(np.unique(idx)) != idx.size:
            raise DataError(f"coalition {c} repeats a neuron that is already placed")
        labels[idx] = c
    if (labels == -1).any():
        missing = np.flatnonzero(labels == -1)
        raise DataError(f"{missing.size} neurons are in no coalition (first: {int(missing[0])})")
    return labels


def canonical_coalitions(coalitions: Sequence[Sequence[int]]) -> list[list[int]]:
    """Sorted members, coalitions largest first, ties by smallest member."""
    out = [sorted(int(i) for i in c) for c in coalitions]
    out.sort(key=lambda c: (-len(c), c[0] if c else -1))
    return out


def size_summary(coalitions: Sequence[Sequence[int]]) -> dict[str, Any]:
    """Coalition size distribution: count, largest, singletons, quantiles, histogram."""
    sizes = np.array([len(c) for c in coalitions], dtype=np.int64)
    if sizes.size == 0:
        return {"count": 0}
    q = np.quantile(sizes, [0.5, 0.9, 0.99])
    edges = [1, 2, 3, 5, 11, 51, 151, 10**12]
    hist = {
        (f"{lo}" if hi - lo == 1 else f"{lo}-{hi - 1}" if hi < 10**12 else f">={lo}"): int(
            ((sizes >= lo) & (sizes < hi)).sum()
        )
        for lo, hi in itertools.pairwise(edges)
    }
    return {
        "count": int(sizes.size),
        "neurons": int(sizes.sum()),
        "largest": int(sizes.max()),
        "singletons": int((sizes == 1).sum()),
        "mean": float(sizes.mean()),
        "median": float(q[0]),
        "p90": float(q[1]),
        "p99": float(q[2]),
        "histogram": hist,
    }


def save_partition(
    path: str | os.PathLike,
    partition: Any,
    *,
    method: str | None = None,
    params: dict[str, Any] | None = None,
    layer: int | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a partition JSON (the one format of ``hedonic solve``, ``hedonic baseline`` and
    ``hedonic run``). ``partition`` is a :class:`~hedonic_neurons.partition.Partition` (the
    arguments given replace its own), a labels array (one coalition id per neuron) or a list
    of coalitions covering 0..n-1 exactly once."""
    from hedonic_neurons.partition import Partition

    part = Partition.from_any(partition, method=method, params=params, layer=layer, extra=extra)
    return part.save(path)


class PartitionFile(BaseModel):
    """The schema of a partition JSON (written by :func:`save_partition`): the fields every reader
    relies on. Other fields (sizes, certificates, provenance, ...) are kept as they are."""

    model_config = ConfigDict(extra="allow")

    format: Literal["hedonic-neurons/partition/v1"]
    n_neurons: StrictInt = Field(ge=1)
    coalitions: list[list[StrictInt]]
    layer: StrictInt | None = Field(None, ge=0)
    method: str | None = None
    labels: list[StrictInt] | None = None
    params: dict[str, Any] | None = None


def _field_name(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def is_partition_document(doc: Any) -> bool:
    """Whether a parsed JSON document carries the partition format tag."""
    return isinstance(doc, dict) and doc.get("format") == PARTITION_FORMAT


def check_partition(doc: Any, source: str | os.PathLike) -> dict[str, Any]:
    """Validate a parsed partition document against :class:`PartitionFile` and check that its
    coalitions cover neurons 0..n_neurons-1 exactly once (and agree with ``labels``). Errors are
    one :class:`DataError` naming ``source`` and the field."""
    if not isinstance(doc, dict):
        raise DataError(
            f"{source}: not a partition file (expected a JSON object with format '{PARTITION_FORMAT}', "
            f"got a JSON {type(doc).__name__})"
        )
    try:
        PartitionFile.model_validate(doc)
    except ValidationError as exc:
        errors = exc.errors()
        fmt = next((e for e in errors if e["loc"][:1] == ("format",)), None)
        if fmt is not None:
            got = "no 'format' field" if fmt["type"] == "missing" else f"format {doc.get('format')!r}"
            raise DataError(
                f"{source}: not a partition file ({got}; expected format '{PARTITION_FORMAT}')"
            ) from None
        err = errors[0]
        field = _field_name(err["loc"])
        if err["type"] == "missing":
            raise DataError(
                f"{source}: missing field '{field}' (expected a partition file as written by "
                "hedonic solve or hedonic baseline)"
            ) from None
        got = err.get("input")
        shown = f" (got {got!r})" if not isinstance(got, dict | list) else ""
        raise DataError(f"{source}: field '{field}': {err['msg']}{shown}") from None
    try:
        labels = labels_from_coalitions(doc["coalitions"], doc["n_neurons"])
    except DataError as exc:
        raise DataError(f"{source}: field 'coalitions' with n_neurons {doc['n_neurons']}: {exc}") from None
    recorded = doc.get("labels")
    if recorded is not None:
        if len(recorded) != labels.size:
            raise DataError(
                f"{source}: field 'labels' has {len(recorded)} entries, expected n_neurons = {labels.size}"
            )
        differ = np.flatnonzero(np.asarray(recorded, dtype=np.int64) != labels)
        if differ.size:
            i = int(differ[0])
            raise DataError(
                f"{source}: field 'labels' disagrees with 'coalitions' at neuron {i} "
                f"(labels says {recorded[i]}, coalitions say {int(labels[i])})"
            )
    return doc


def load_partition(path: str | os.PathLike) -> dict[str, Any]:
    """Read a partition JSON; checks it against :class:`PartitionFile` and that it covers every
    neuron once (:func:`check_partition`). Returns the document."""
    return check_partition(read_json(path), path)


def partition_documents(
    folder: str | os.PathLike,
) -> tuple[dict[int, tuple[Path, dict[str, Any]]], list[str]]:
    """The partition files of ``folder`` by layer, ``{layer: (path, document)}`` in layer order,
    and the names of the ``*.json`` files skipped because they lack the partition format tag.

    Every tagged file is checked (:func:`check_partition`; errors name the file); each must name
    its layer, and no layer may appear twice. An empty result is the caller's to report.
    """
    found: dict[int, tuple[Path, dict[str, Any]]] = {}
    skipped: list[str] = []
    for path in sorted(Path(folder).glob("*.json")):
        doc = read_json(path)
        if not is_partition_document(doc):
            skipped.append(path.name)
            continue
        doc = check_partition(doc, path)
        layer = doc.get("layer")
        if layer is None:
            raise DataError(f"{path}: field 'layer' is missing or null (needed to order the layers)")
        if layer in found:
            raise DataError(
                f"{path} and {found[layer][0]} are both partitions of layer {layer}; keep one per layer"
            )
        found[layer] = (path, doc)
    return dict(sorted(found.items())), skipped
