"""Reading the tensors of a checkpoint folder one at a time, without loading the model.

A folder written by ``save_pretrained``: ``model.safetensors`` (memory-mapped) or
``pytorch_model.bin``, or a sharded copy with its ``*.index.json``. Used for the reference
weights of two-checkpoint pairs, read one layer at a time.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from hedonic_neurons.errors import ModelError


def shape_text(shape: Iterable[int]) -> str:
    """A tensor shape as ``"3x4"``, for messages."""
    return "x".join(str(s) for s in shape)


class Checkpoint:
    """Tensors of a saved checkpoint, read one at a time (safetensors memory-mapped, or .bin)."""

    def __init__(self, folder: str | Path) -> None:
        folder = Path(folder)
        self.folder = folder
        self._file_of: dict[str, Path] = {}
        self._bin: dict[str, dict[str, torch.Tensor]] = {}
        for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
            index = folder / index_name
            if index.is_file():
                weight_map = json.loads(index.read_text())["weight_map"]
                self._file_of = {k: folder / f for k, f in weight_map.items()}
                break
        else:
            for single in ("model.safetensors", "pytorch_model.bin"):
                if (folder / single).is_file():
                    self._file_of = dict.fromkeys(self._keys_of(folder / single), folder / single)
                    break
        if not self._file_of:
            raise ModelError(
                f"reference checkpoint {folder}: no model.safetensors / pytorch_model.bin (or their "
                "index) found; expected a folder written by save_pretrained"
            )

    def _keys_of(self, file: Path) -> list[str]:
        if file.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(file), "pt") as fh:
                return list(fh.keys())
        return list(self._load_bin(file))

    def _load_bin(self, file: Path) -> dict[str, torch.Tensor]:
        key = str(file)
        if key not in self._bin:
            self._bin[key] = torch.load(file, map_location="cpu", mmap=True, weights_only=True)
        return self._bin[key]

    @property
    def names(self) -> Any:
        """The checkpoint's tensor names (a set-like view)."""
        return self._file_of.keys()

    def shape(self, key: str) -> tuple[int, ...]:
        """The shape of tensor ``key``, read from the file header (no data is read)."""
        file = self._file_of[key]
        if file.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(file), "pt") as fh:
                return tuple(fh.get_slice(key).get_shape())
        return tuple(self._load_bin(file)[key].shape)

    def get(self, key: str) -> torch.Tensor:
        """Tensor ``key`` (on the CPU, in its stored dtype)."""
        file = self._file_of[key]
        if file.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(file), "pt") as fh:
                return fh.get_tensor(key)
        return self._load_bin(file)[key]
