"""Artifacts: atomic writes, provenance, the phi file and the partition file.

Every stage writes files a person can open: tensors in safetensors, everything else JSON.
Files are written atomically (temporary file + rename), so a killed run never leaves a
half-written artifact behind, and every artifact carries :func:`provenance`.
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
from typing import Any

import numpy as np

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


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
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
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found (expected a JSON file)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None


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


def save_phi(path: str | os.PathLike, phi: np.ndarray, metadata: dict[str, Any]) -> Path:
    """Write ``phi`` as ``{path}`` (safetensors, key ``phi``, float32) plus a JSON sidecar.

    The sidecar is ``path`` with suffix ``.json``; it holds ``metadata`` and a provenance block.
    """
    from safetensors.numpy import save

    path = Path(path)
    arr = np.ascontiguousarray(np.asarray(phi, dtype=np.float32))
    atomic_write_bytes(path, save({"phi": arr}))
    write_json(path.with_suffix(".json"), {**metadata, "provenance": provenance()})
    return path


def load_phi(path: str | os.PathLike) -> np.ndarray:
    """Read the ``phi`` tensor of a safetensors file and validate it."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found (expected a phi_layer{{L}}.safetensors file)")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable safetensors file ({exc})") from None
    if "phi" not in tensors:
        raise DataError(f"{path}: no tensor named 'phi' (found {sorted(tensors)})")
    return validate_phi(tensors["phi"], name=str(path))


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
    coalitions: Sequence[Sequence[int]],
    *,
    method: str,
    params: dict[str, Any],
    layer: int | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a partition JSON (the format shared by ``hedonic solve`` and ``hedonic baseline``)."""
    coal = canonical_coalitions(coalitions)
    n = sum(len(c) for c in coal)
    labels = labels_from_coalitions(coal, n)
    doc = {
        "format": PARTITION_FORMAT,
        "method": method,
        "layer": layer,
        "n_neurons": n,
        "params": params,
        "sizes": size_summary(coal),
        **(extra or {}),
        "coalitions": coal,
        "labels": labels.tolist(),
        "provenance": provenance(),
    }
    return write_json(path, doc)


def load_partition(path: str | os.PathLike) -> dict[str, Any]:
    """Read a partition JSON; checks its format tag and that it covers every neuron once."""
    doc = read_json(path)
    if not isinstance(doc, dict) or doc.get("format") != PARTITION_FORMAT:
        raise DataError(f"{path}: not a partition file (expected format '{PARTITION_FORMAT}')")
    labels_from_coalitions(doc["coalitions"], int(doc["n_neurons"]))
    return doc
