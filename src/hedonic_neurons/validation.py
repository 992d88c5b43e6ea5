"""Up-front checks of everything a command reads and writes, before any work starts.

Each ``hedonic`` command, :func:`hedonic_neurons.pipeline.run` and the Python entry points
(:func:`~hedonic_neurons.models.load_model`, :func:`~hedonic_neurons.synergy.collect.collect`,
:func:`~hedonic_neurons.models.finetune.run_finetune`, ...) call these functions first, so a bad
input costs no work and is never accepted silently:

- outputs: of the right kind (a folder where a folder is written, a file path where a file is),
  inside a writable folder (:func:`check_output_dir`, :func:`check_output_file`); the lock and the
  tidying up are in :mod:`hedonic_neurons.locking`;
- inputs: present, readable and well-formed (:func:`check_input_file`, :func:`read_pairs`,
  :func:`check_phi_file`, :func:`check_partition_file`, :func:`read_partition_dir`,
  :func:`check_phi_folder`); the data loaders skip a header row with a note and strip a UTF-8
  byte-order mark;
- names: stage, dataset and option values with a "did you mean" (:func:`check_choice`);
- models: resolved offline first (built-in name, local folder, hub cache), the hub asked only for
  a name that looks like a hub id and only if it is reachable; layer indices checked against the
  model's config alone, no weights loaded (:func:`model_facts`, :func:`check_layers`); adapters'
  config and weight files readable and made for that model (:func:`check_adapter`); tokenizer
  files present.

Every failure is one :class:`~hedonic_neurons.errors.HedonicError` whose message names the file or
option and what was expected. Nothing here imports torch or transformers, except that checking a
model folder's architecture reads the adapters table (which imports torch).
"""

from __future__ import annotations

import difflib
import json
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from hedonic_neurons.errors import (
    ConfigError,
    DataError,
    HedonicError,
    HedonicNote,
    ModelError,
    PhiError,
    arg,
)

#: The stages of ``hedonic run`` in order (``--stop-after`` names one of them).
RUN_STAGES = ("finetune", "phi", "activations", "partitions", "tracking", "evaluate", "report")

#: Files that carry a tokenizer's vocabulary (one of them must be in a model folder).
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tekken.json",
)
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9_.\-]+")


def note(message: str) -> None:
    """Tell the user something that is not an error (one ``note:`` line on the command line)."""
    warnings.warn(message, HedonicNote, stacklevel=2)


def did_you_mean(value: Any, choices: Iterable[str]) -> str:
    """``"; did you mean X?"`` for the closest choice, or ``""``."""
    close = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def check_choice(value: Any, choices: Sequence[str], option: str) -> Any:
    """``value`` if it is one of ``choices``, else one line naming ``option`` (with a suggestion)."""
    if value not in choices:
        raise ConfigError(
            f"{arg(option)} {value!r}: expected one of {', '.join(choices)}{did_you_mean(value, choices)}"
        )
    return value


def check_stage(stage: str | None, option: str = "--stop-after") -> str | None:
    """A ``hedonic run`` stage name (or None)."""
    return None if stage is None else check_choice(stage, RUN_STAGES, option)


DTYPES = ("float32", "fp32", "bfloat16", "bf16", "float16", "fp16")
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def check_dtype_device(dtype: str | None, device: str | None) -> None:
    """``--dtype`` and ``--device`` spelt as the loader accepts them (CUDA's presence is checked
    when the model loads)."""
    if dtype is not None and str(dtype).removeprefix("torch.").lower() not in DTYPES:
        check_choice(dtype, ("float32", "bfloat16", "float16"), "--dtype")
    if device is not None and not _DEVICE.fullmatch(str(device)):
        raise ConfigError(f"{arg('device')} {device!r}: expected auto, cpu, cuda or cuda:N")


# ------------------------------------------------------------------------------------- outputs


def _writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK | os.X_OK)


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _check_container(path: Path, option: str, what: str) -> None:
    """The folder that is to hold ``path`` exists and is writable, or can be created."""
    parent = _nearest_existing(path.parent)
    if not parent.is_dir():
        raise ConfigError(f"{arg(option)} {path}: {parent} is a file, not a folder (expected {what})")
    if not _writable(parent):
        raise ConfigError(f"{arg(option)} {path}: the folder {parent} is not writable (expected {what})")


def check_output_dir(path: str | os.PathLike, option: str = "--out") -> Path:
    """An output folder: an existing writable folder, or a path whose nearest existing ancestor
    is a writable folder (it is created when the work starts, not here)."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{arg(option)} {p}: is a file (expected an output folder; it is created if missing)")
    if p.is_dir():
        if not _writable(p):
            raise ConfigError(f"{arg(option)} {p}: the folder is not writable")
        return p
    _check_container(p, option, "an output folder in a writable folder")
    return p


def check_output_file(path: str | os.PathLike, option: str = "--out") -> Path:
    """An output file: not a folder, in a folder that is writable or can be created."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise ConfigError(f"{arg(option)} {p}: is a folder (expected the path of a file to write)")
    if str(path).endswith(("/", os.sep)):
        raise ConfigError(f"{arg(option)} {path}: ends with a slash (expected the path of a file to write)")
    _check_container(p, option, "a file in a writable folder")
    return p


# -------------------------------------------------------------------------------------- inputs


def check_input_file(path: str | os.PathLike, option: str, what: str) -> Path:
    """An existing, readable file (not a folder)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{arg(option)} {p}: file not found (expected {what})")
    if p.is_dir():
        raise DataError(f"{arg(option)} {p}: is a folder (expected {what})")
    if not os.access(p, os.R_OK):
        raise DataError(f"{arg(option)} {p}: not readable (expected {what})")
    return p


def check_input_dir(path: str | os.PathLike, option: str, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{arg(option)} {p}: folder not found (expected {what})")
    if not p.is_dir():
        raise DataError(f"{arg(option)} {p}: is a file (expected {what})")
    if not os.access(p, os.R_OK | os.X_OK):
        raise DataError(f"{arg(option)} {p}: folder not readable (expected {what})")
    return p


_PAIRS_TSV = "a top1000-style TSV 'qid \\t pid \\t query \\t passage'"


def check_pairs_spec(spec: str | os.PathLike, option: str = "--data") -> str:
    """``--data``: a dataset name or an existing pairs TSV (not read yet)."""
    from hedonic_neurons.data.splits import DATASETS

    text = str(spec)
    if text in DATASETS:
        return text
    path = Path(text).expanduser()
    if not path.exists():
        raise DataError(
            f"{arg(option)} {text}: no such file and not a dataset name (expected one of "
            f"{', '.join(DATASETS)} or the path of {_PAIRS_TSV}){did_you_mean(text, DATASETS)}"
        )
    check_input_file(path, option, _PAIRS_TSV)
    return text


def read_pairs(spec: str | os.PathLike, option: str = "--data") -> list[Any]:
    """The (query, passage) pairs of ``--data``, read now: a dataset name (with a suggestion for a
    misspelt one) or a pairs TSV (errors name the file and line; a header row is skipped with a
    note; a byte-order mark is stripped)."""
    from hedonic_neurons.data.splits import load_pairs

    text = check_pairs_spec(spec, option)
    pairs = load_pairs(text)
    if not pairs:
        raise DataError(f"{arg(option)} {text}: no (query, passage) pairs; expected at least one")
    return pairs


def check_dataset(name: str, option: str, *, allowed: Sequence[str], root: str | None = None) -> str:
    """A named dataset (``hedonic finetune --data/--test``): one of ``allowed``; a file path is
    refused with what is accepted, and the shared data folder must exist for research sets."""
    if name not in allowed:
        path = Path(str(name)).expanduser()
        if path.exists():
            raise ConfigError(
                f"{arg(option)} {name}: a file, but this option takes a named dataset with query splits "
                f"({', '.join(allowed)}), not a file"
            )
        raise ConfigError(
            f"{arg(option)} {name!r}: expected one of {', '.join(allowed)}{did_you_mean(name, allowed)}"
        )
    if name not in ("demo", "none"):
        from hedonic_neurons.data.splits import shared_ir_root

        shared_ir_root(root)
    return name


# ------------------------------------------------------------------------------ phi and partitions


def check_phi_file(path: str | os.PathLike, option: str = "PHI") -> int:
    """A phi file's header, without reading the matrix: a safetensors file with a float tensor
    ``phi`` of shape n x n (n >= 1). Returns n."""
    from safetensors import SafetensorError, safe_open

    p = check_input_file(path, option, "a phi_layer{L}.safetensors file")
    try:
        with safe_open(str(p), framework="numpy") as fh:
            names = list(fh.keys())
            if "phi" not in names:
                raise DataError(f"{p}: no tensor named 'phi' (found {sorted(names)}); expected a phi file")
            info = fh.get_slice("phi")
            dtype, shape = info.get_dtype(), list(info.get_shape())
    except SafetensorError as exc:
        raise DataError(f"{p}: not a readable safetensors file ({exc}); expected a phi file") from None
    except OSError as exc:
        raise DataError(f"{p}: cannot read ({exc.strerror or exc}); expected a phi file") from None
    if dtype not in ("F16", "F32", "F64"):
        raise PhiError(f"{p}: phi has dtype {dtype}; expected a floating-point matrix (F32 or F64)")
    if len(shape) != 2 or shape[0] != shape[1] or shape[0] == 0:
        raise PhiError(f"{p}: phi has shape {tuple(shape)}; expected a square n x n matrix with n >= 1")
    return int(shape[0])


def check_k(k: int, n: int, option: str = "--k") -> int:
    """The MFC choice-set size: 1 <= k < n (a neuron has n - 1 possible partners)."""
    if not 1 <= k < n:
        raise ConfigError(f"{arg(option)} {k}: k must be an integer with 1 <= k < n = {n} (the number of neurons)")
    return k


def check_partition_file(path: str | os.PathLike, option: str) -> dict[str, Any]:
    """A partition JSON read and checked (:func:`hedonic_neurons.artifacts.load_partition`)."""
    from hedonic_neurons.artifacts import load_partition

    p = check_input_file(path, option, "a partition JSON written by hedonic solve or hedonic baseline")
    return load_partition(p)


def read_partition_dir(
    folder: str | os.PathLike, option: str = "--partitions"
) -> dict[int, tuple[Path, dict]]:
    """The partition files of a folder by layer. Every ``*.json`` carrying the partition format tag
    is checked (errors name the file); other JSON files are skipped with one note naming them."""
    from hedonic_neurons.artifacts import PARTITION_FORMAT, partition_documents

    p = check_input_dir(folder, option, "a folder of partition JSON files, one per layer")
    found, skipped = partition_documents(p)
    if not found:
        raise DataError(f"{arg(option)} {p}: no partition files (JSON with format '{PARTITION_FORMAT}')")
    if skipped:
        shown = ", ".join(skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        note(f"{p}: skipped {len(skipped)} JSON file(s) without the partition format tag: {shown}")
    return found


def check_phi_folder(folder: str | os.PathLike) -> None:
    """What ``hedonic collect`` will read back from its output folder: every phi sidecar a JSON
    object with a ``key``, every ``.partial`` checkpoint a readable safetensors file."""
    from safetensors import SafetensorError, safe_open

    from hedonic_neurons.artifacts import read_json

    folder = Path(folder)
    if not folder.is_dir():
        return
    for sidecar in sorted(folder.glob("phi_layer*.json")):
        doc = read_json(sidecar)
        if not isinstance(doc, dict) or not isinstance(doc.get("key"), str):
            raise DataError(
                f"{sidecar}: not a phi sidecar (expected a JSON object with a 'key' string, as written by "
                "hedonic collect); delete it and its .safetensors file to compute that layer again"
            )
    partial = folder / ".partial"
    if partial.exists() and not partial.is_dir():
        raise DataError(
            f"{partial}: is a file (expected the checkpoint folder of hedonic collect); delete it"
        )
    for ckpt in sorted(partial.glob("*.safetensors")) if partial.is_dir() else []:
        try:
            with safe_open(str(ckpt), framework="numpy") as fh:
                meta = fh.metadata() or {}
        except (SafetensorError, OSError) as exc:
            raise DataError(
                f"{ckpt}: not a readable checkpoint ({exc}); delete it (that pass starts over)"
            ) from None
        if not str(meta.get("position", "")).isdigit():
            raise DataError(
                f"{ckpt}: not a hedonic collect checkpoint (no batch position in its metadata); delete it"
            )


def check_sample_count(metric: str, pooling: str, n_inputs: int, option: str = "--max-inputs") -> None:
    """OCA with one sample per input (``--pooling mean/last``) needs at least 2 inputs."""
    if n_inputs < 1:
        raise DataError(f"{arg(option)}: no (query, passage) pairs to use; expected at least one")
    if metric == "oca" and pooling in ("mean", "last") and n_inputs < 2:
        raise DataError(
            f"{arg(option)}: {n_inputs} input, but OCA with {arg('pooling')} {pooling} takes one sample per input and "
            "needs at least 2 to correlate neurons"
        )


# -------------------------------------------------------------------------------------- models


@dataclass(frozen=True)
class ModelFacts:
    """What is known about a model before loading it (from its config only)."""

    name: str  # as given
    source: str  # "builtin", "folder" or "hub"
    location: str  # package folder, local folder or hub id
    model_type: str | None
    n_layers: int | None
    d_model: int | None
    n_neurons: int | None

    def summary(self) -> str:
        from hedonic_neurons.models.builtins import summary_text

        if None in (self.model_type, self.n_layers, self.d_model, self.n_neurons):
            return f"{self.name} ({self.model_type or 'unknown type'})"
        return summary_text(self.name, self.model_type, self.n_layers, self.d_model, self.n_neurons)  # type: ignore[arg-type]

    def comparable(self) -> tuple[Any, ...]:
        return (self.model_type, self.n_layers, self.d_model, self.n_neurons)


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def facts_from_config(config: dict[str, Any], name: str, source: str, location: str) -> ModelFacts:
    """Facts of a parsed ``config.json`` (the text config of a composite model)."""
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    model_type = config.get("model_type") if isinstance(config.get("model_type"), str) else None

    def first(*keys: str) -> int | None:
        for key in keys:
            value = _int_or_none(text.get(key))
            if value is not None:
                return value
        return None

    d = first("hidden_size", "n_embd", "d_model")
    n = first("intermediate_size", "n_inner", "ffn_dim")
    if n is None and (text.get("model_type") or model_type) == "gpt2" and d is not None:
        n = 4 * d  # GPT-2's n_inner=None means 4 * n_embd
    return ModelFacts(
        name, source, location, model_type, first("num_hidden_layers", "n_layer", "num_layers"), d, n
    )


def _read_config(path: Path, shown: str) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{shown}: {path.name} is not readable JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise ModelError(f"{shown}: {path.name} is not a JSON object")
    return doc


def _check_architecture(facts: ModelFacts, shown: str) -> None:
    from hedonic_neurons.models.adapters import supported_model_types, unknown_architecture

    if facts.model_type not in supported_model_types():
        raise ModelError(f"{shown}: {unknown_architecture(facts.model_type)}")


def _check_safetensors_headers(files: Iterable[Path], shown: str) -> None:
    from safetensors import SafetensorError, safe_open

    for file in files:
        try:
            with safe_open(str(file), framework="numpy"):
                pass
        except (SafetensorError, OSError) as exc:
            raise ModelError(f"{shown}: weights file {file} is not readable ({exc})") from None


def _folder_facts(folder: Path, name: str, *, tokenizer: bool = True) -> ModelFacts:
    shown = f"model folder {folder}"
    config = folder / "config.json"
    if not config.is_file():
        raise ModelError(f"{shown} has no config.json (expected a folder written by save_pretrained)")
    facts = facts_from_config(_read_config(config, shown), name, "folder", str(folder))
    _check_architecture(facts, shown)
    weights = [folder / f for f in WEIGHT_FILES if (folder / f).is_file()]
    if not weights:
        raise ModelError(f"{shown} has no weights (expected one of {', '.join(WEIGHT_FILES)})")
    if (folder / "model.safetensors").is_file():
        _check_safetensors_headers([folder / "model.safetensors"], shown)
    elif (folder / "model.safetensors.index.json").is_file():
        index = _read_config(folder / "model.safetensors.index.json", shown)
        shards = sorted(set((index.get("weight_map") or {}).values()))
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing or not shards:
            raise ModelError(f"{shown}: model.safetensors.index.json names missing shard(s) {missing[:3]}")
        _check_safetensors_headers([folder / s for s in shards], shown)
    if tokenizer and not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise ModelError(
            f"{shown} has no tokenizer files (expected one of {', '.join(TOKENIZER_FILES)}; save the "
            "tokenizer with tokenizer.save_pretrained into the model folder)"
        )
    return facts


def _hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _hub_reachable(timeout: float = 5.0) -> str | None:
    """None if the hub endpoint accepts a connection, else the reason (one quick try, no retries)."""
    import socket

    url = urlparse(_hub_endpoint())
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return str(exc.strerror or exc)


def _hub_facts(repo_id: str, name: str) -> ModelFacts:
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, "config.json")
    if isinstance(cached, str):
        return facts_from_config(_read_config(Path(cached), f"hub model {repo_id}"), name, "hub", repo_id)
    expected = "expected a built-in name (minilm, smollm2), a local folder or a hub id"
    if _hub_offline():
        raise ModelError(
            f"model {name!r}: not a built-in name or a folder, and not in the local hub cache "
            f"(HF_HUB_OFFLINE is set; {expected})"
        )
    reason = _hub_reachable()
    if reason is not None:
        raise ModelError(
            f"model {name!r}: not a built-in name or a folder, not in the local hub cache, and the hub "
            f"({_hub_endpoint()}) is unreachable: {reason}"
        )
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        path = hf_hub_download(repo_id, "config.json")
    except GatedRepoError:
        raise ModelError(
            f"model {name!r}: a gated hub model; log in (huggingface-cli login) and accept its terms"
        ) from None
    except RepositoryNotFoundError:
        raise ModelError(f"model {name!r}: no such model on the hub ({expected})") from None
    except Exception as exc:  # the hub client raises many types; report one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"model {name!r}: could not read its config.json from the hub ({first})") from None
    return facts_from_config(_read_config(Path(path), f"hub model {repo_id}"), name, "hub", repo_id)


def model_facts(
    name_or_path: str | os.PathLike, option: str = "MODEL", *, tokenizer: bool = True
) -> ModelFacts:
    """Resolve a model name offline first and read its facts from its config (no weights loaded).

    A built-in name (its package must be installed); an existing folder (config.json, weights
    whose headers are readable, tokenizer files, a supported architecture); a name that looks like
    a hub id (``owner/name``): the local hub cache first, the hub only if it is reachable (one
    line if not). Anything else is an error that suggests the closest built-in name.
    """
    from hedonic_neurons.models.builtins import BUILTINS, package_folder

    name = str(name_or_path)
    if name in BUILTINS:
        b = BUILTINS[name]
        package_folder(b)  # installed? (a GGUF built-in's cache is built from the package's file)
        return ModelFacts(name, "builtin", b.package, b.model_type, b.n_layers, b.d_model, b.n_neurons)
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelError(
                f"{arg(option)} {name}: is a file; expected a model folder (config.json, weights, tokenizer)"
            )
        return _folder_facts(path.resolve(), str(path.resolve()), tokenizer=tokenizer)
    looks_like_path = name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1
    if looks_like_path:
        raise ModelError(
            f"{arg(option)}: model folder {name} does not exist (expected a built-in name: "
            f"{', '.join(BUILTINS)}, a folder or a hub id)"
        )
    if not _HUB_ID.fullmatch(name):
        raise ModelError(
            f"{arg(option)}: unknown model {name!r}{did_you_mean(name, BUILTINS)} (expected a built-in name: "
            f"{', '.join(BUILTINS)}, a local model folder or a hub id like owner/name)"
        )
    facts = _hub_facts(name, name)
    _check_architecture(facts, f"hub model {name}")
    return facts


def check_layers(
    layers: Iterable[int], facts: ModelFacts, option: str = "--layers", *, named: bool = False
) -> list[int]:
    """Layer indices checked against the model's config (negative ones count from the end);
    returns them non-negative, in the order given. Repeats (after normalising) are an error.
    ``named``: the message names the model (a config); else it says "this model" (a command line,
    where the model is the argument)."""
    model = f"model '{facts.name}'" if named else "this model"
    n = facts.n_layers
    out: list[int] = []
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise ConfigError(f"{arg(option)}: {layer!r} is not a layer index (expected integers)")
        if n is None:
            out.append(layer)
            continue
        if not -n <= layer < n:
            raise ModelError(f"{arg(option)}: layer {layer} is out of range: {model} has {n} layers (0..{n - 1})")
        index = layer % n
        if index in out:
            raise ConfigError(f"{arg(option)}: layer {layer} is given twice (as {index})")
        out.append(index)
    return out


_LAYER_ITEM = re.compile(r"(-?\d+)|(\d+)-(\d+)")


def parse_layers(
    spec: str | int | Sequence[int], n_layers: int | None = None, option: str = "--layers"
) -> list[int]:
    """Layer indices from the one layer grammar of every command and config: sorted, each once.

    Grammar (spaces around items are ignored)::

        layers := "all" | item ("," item)*
        item   := INT          one layer; a negative one counts from the end (-1: the last)
                | INT "-" INT  an inclusive range of non-negative indices, low to high ("2-5")

    so ``"3"``, ``"1,3,5"``, ``"2-5"``, ``"0,4-6,-1"`` and ``"all"`` (every layer, needs
    ``n_layers``). An int or a sequence of ints is accepted too (as the items). With
    ``n_layers``, negative indices in -n_layers..-1 become ``n_layers + i``; indices out of range
    are returned as given, for :func:`check_layers` to report against the model. ``option`` is
    how the messages name the value.
    """
    if isinstance(spec, str):
        text = spec.strip()
        if text.lower() == "all":
            if n_layers is None:
                raise ConfigError(f"{arg(option)} 'all': the model's layer count is not known; list the layers")
            layers = list(range(n_layers))
        else:
            layers = []
            for part in (p.strip() for p in text.split(",")):
                m = _LAYER_ITEM.fullmatch(part)
                if m is None:
                    raise ConfigError(
                        f"{arg(option)} {spec!r}: expected comma-separated layer indices or ranges ('3', "
                        f"'1,3,5', '2-5') or 'all'; {part!r} is not one (expected integers, a range "
                        "low-high, negative indices counting from the end)"
                    )
                if m[1] is not None:
                    layers.append(int(m[1]))
                else:
                    lo, hi = int(m[2]), int(m[3])
                    if lo > hi:
                        raise ConfigError(
                            f"{arg(option)} {spec!r}: range {part} runs backwards (expected low-high)"
                        )
                    layers.extend(range(lo, hi + 1))
    else:
        items = [spec] if isinstance(spec, int) else list(spec)
        for x in items:
            if isinstance(x, bool) or not isinstance(x, int):
                raise ConfigError(f"{arg(option)}: {x!r} is not a layer index (expected integers)")
        layers = list(items)
    if n_layers is not None:
        layers = [n_layers + i if -n_layers <= i < 0 else i for i in layers]
    if not layers:
        raise ConfigError(f"{arg(option)} {spec!r} names no layer")
    return sorted(set(layers))


_LAYER_IN_NAME = re.compile(r"\.(?:layers|h|layer)\.(\d+)\.")


def check_adapter(path: str | os.PathLike, facts: ModelFacts | None) -> Path:
    """A peft LoRA adapter folder: adapter_config.json a JSON object of a plain LoRA adapter, its
    weights readable, and (as far as the files tell) made for the model of ``facts``: the base
    model it records and the layers its weights name."""
    from hedonic_neurons.models.builtins import BUILTINS

    folder = Path(path).expanduser()
    what = "a peft LoRA adapter folder (adapter_config.json + adapter_model.safetensors)"
    if not folder.exists():
        raise ModelError(
            f"adapter {folder}: no adapter_config.json there: the folder does not exist (expected {what})"
        )
    if not folder.is_dir():
        raise ModelError(f"adapter {folder}: is a file (expected {what})")
    cfg_file = folder / "adapter_config.json"
    if not cfg_file.is_file():
        raise ModelError(f"adapter {folder}: no adapter_config.json there (expected {what})")
    cfg = _read_config(cfg_file, f"adapter {folder}")
    if cfg.get("peft_type") != "LORA":
        raise ModelError(
            f"adapter {folder} is a {cfg.get('peft_type')} adapter; only LoRA adapters are supported"
        )
    if cfg.get("use_dora"):
        raise ModelError(f"adapter {folder} is a DoRA adapter; only plain LoRA adapters are supported")
    names: list[str] = []
    weights = folder / "adapter_model.safetensors"
    if weights.is_file():
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(weights), framework="numpy") as fh:
                names = list(fh.keys())
        except (SafetensorError, OSError) as exc:
            raise ModelError(f"adapter {folder}: {weights.name} is not readable ({exc})") from None
        if not names:
            raise ModelError(f"adapter {folder}: {weights.name} holds no tensors")
    elif not (folder / "adapter_model.bin").is_file():
        raise ModelError(f"adapter {folder}: no adapter_model.safetensors or adapter_model.bin")
    if facts is None:
        return folder
    recorded = cfg.get("base_model_name_or_path")
    theirs = None
    if isinstance(recorded, str) and recorded:
        if recorded in BUILTINS:
            b = BUILTINS[recorded]
            theirs = ModelFacts(
                recorded, "builtin", b.package, b.model_type, b.n_layers, b.d_model, b.n_neurons
            )
        elif (Path(recorded).expanduser() / "config.json").is_file():
            with_config = Path(recorded).expanduser() / "config.json"
            try:
                theirs = facts_from_config(_read_config(with_config, recorded), recorded, "folder", recorded)
            except ModelError:
                theirs = None
    known = theirs is not None and None not in theirs.comparable() and None not in facts.comparable()
    if known and theirs.comparable() != facts.comparable():  # type: ignore[union-attr]
        raise ModelError(f"adapter {folder} was made for {theirs.summary()}, but was given {facts.summary()}")
    if facts.n_layers is not None and names:
        layers = {int(m.group(1)) for key in names if (m := _LAYER_IN_NAME.search(key))}
        beyond = sorted(x for x in layers if x >= facts.n_layers)
        if beyond:
            raise ModelError(
                f"adapter {folder} has LoRA weights for layer {beyond[0]}, but {facts.summary()} has layers "
                f"0..{facts.n_layers - 1}; the adapter was made for another base model"
            )
    return folder


def check_reference(
    reference: str | os.PathLike, facts: ModelFacts, option: str = "--reference"
) -> ModelFacts:
    """The pre-fine-tuning checkpoint of a two-checkpoint pair: resolvable, same architecture."""
    ref = model_facts(reference, option, tokenizer=False)
    if ref.model_type and facts.model_type and ref.model_type != facts.model_type:
        raise ModelError(
            f"reference {reference} is a {ref.model_type} model, but {facts.name} is {facts.model_type}; the "
            "two checkpoints must have the same architecture"
        )
    return ref  # shapes are compared tensor by tensor from the checkpoint's headers when loading


def check_model_inputs(
    model: str | os.PathLike,
    *,
    adapter: str | os.PathLike | None = None,
    reference: str | os.PathLike | None = None,
    dtype: str | None = None,
    device: str | None = None,
    option: str = "MODEL",
) -> ModelFacts:
    """A model with its optional adapter or reference (and ``--dtype``, ``--device``), checked
    from their files alone."""
    if adapter is not None and reference is not None:
        raise ConfigError(
            f"give either {arg('adapter')} (LoRA on a base model) or {arg('reference')} (two checkpoints), not both"
        )
    check_dtype_device(dtype, device)
    facts = model_facts(model, option)
    if adapter is not None:
        check_adapter(adapter, facts)
    if reference is not None:
        check_reference(reference, facts)
    return facts


# ---------------------------------------------------------------------------------- hedonic run


def check_run(
    cfg: Any, out: str | os.PathLike, stop_after: str | None = None, *, source: str = "config"
) -> Any:
    """Everything ``hedonic run`` can check before any work: the stage name, the output folder,
    the model (offline first), the layers (from the model's config; negative indices count from
    the end and are returned normalised), the adapter or reference, and that fine-tuning is
    possible. Returns the config with normalised layers. (Data files are read first thing in the
    run, before anything is written: their errors name the file and line.)"""
    check_stage(stop_after)
    check_output_dir(out)

    def where(key: str, exc: Exception) -> HedonicError:
        text = str(exc).removeprefix(f"{key}: ")
        return type(exc)(f"{source}: '{key}': {text}")

    try:
        facts = model_facts(cfg.model, "model")
    except HedonicError as exc:
        raise where("model", exc) from None
    updates: dict[str, Any] = {}
    try:
        updates["layers"] = sorted(check_layers(cfg.layers, facts, "layers", named=True))
    except HedonicError as exc:
        raise where("layers", exc) from None
    if cfg.finetune.layers is not None:
        try:
            ft_layers = sorted(check_layers(cfg.finetune.layers, facts, "finetune.layers", named=True))
        except HedonicError as exc:
            raise where("finetune.layers", exc) from None
        updates["finetune"] = cfg.finetune.model_copy(update={"layers": ft_layers})
    if cfg.given:  # the 'given' baseline's files: one per layer, of n neurons
        from hedonic_neurons.baselines.given import check_given

        try:
            check_given(cfg.given, updates["layers"], facts.n_neurons)
        except HedonicError as exc:
            raise where("given", exc) from None
    if cfg.adapter is not None and cfg.reference is not None:
        raise ConfigError(f"{source}: give either 'adapter' or 'reference', not both")
    if cfg.adapter is not None:
        try:
            check_adapter(cfg.adapter, facts)
        except HedonicError as exc:
            raise where("adapter", exc) from None
    elif cfg.reference is not None:
        try:
            check_reference(cfg.reference, facts, "reference")
        except HedonicError as exc:
            raise where("reference", exc) from None
    elif cfg.data.train != "demo":
        raise ConfigError(
            f"{source}: no 'adapter' given: 'hedonic run' fine-tunes only on the demo corpus; for other data run "
            "'hedonic finetune' first and set 'adapter' to its adapter folder"
        )
    return cfg.model_copy(update=updates)
