"""The configuration of ``hedonic run``: one validated object for the whole pipeline.

Validation happens before any work starts: unknown keys, wrong types, missing data files and
layers the model does not have each give one :class:`~hedonic_neurons.errors.ConfigError` line
(exit code 2 on the command line). Every field has a default, so a config names only what it
changes. Data paths are relative to the config file's folder. Layers may be negative (counted from
the end, as in ``hedonic collect --layers -1``); :func:`hedonic_neurons.validation.check_run`
turns them into indices from the model's config.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hedonic_neurons.errors import ConfigError

Task = Literal["cqtr", "mean_tf_l", "rm"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PairSource(_Strict):
    """Query-passage pairs in the standard formats: a top1000-style TSV and (optionally) qrels."""

    rerank: str  # qid \t pid \t query \t passage (.gz allowed)
    qrels: str | None = None  # TREC "qid 0 pid grade" or MS MARCO qrels
    # keep each query's first `depth` candidates in file order (rerank a first stage's top-N)
    depth: int | None = Field(None, ge=1)


class DataConfig(_Strict):
    # "demo" = the built-in demo corpus (its train / test splits); else files in standard formats
    train: Literal["demo"] | PairSource = "demo"
    test: Literal["demo"] | PairSource = "demo"
    max_train_pairs: int = Field(2000, ge=10)
    max_test_pairs: int = Field(1000, ge=10)


class FinetuneConfig(_Strict):
    epochs: float = Field(1.0, gt=0)
    learning_rate: float = Field(1e-4, gt=0)
    batch_size: int = Field(16, ge=1)
    layers: list[int] | None = None  # None: the default middle band (A12)
    group_size: int = Field(8, ge=2)  # RM: 1 positive + hard negatives


class PhiConfig(_Strict):
    metrics: list[Literal["oca", "pas"]] = Field(["oca", "pas"], min_length=1)
    pas_mode: Literal["exact", "taylor", "grad-outer"] = "exact"
    readout: Literal["local", "full"] = "local"
    max_inputs: int = Field(512, ge=8)
    batch_size: int = Field(16, ge=1)

    _metrics = field_validator("metrics")(classmethod(lambda cls, v: _unique(v)))


class GameConfig(_Strict):
    # "exact": Top Covering with choice sets computed from phi (A9); "pac": PAC-Top-Cover (A8).
    # The default is exact: at the (epsilon, delta) budget PAC's sampled choice sets are noisy at
    # MiniLM scale and their closures merge into one giant coalition (README, "Solvers").
    solver: Literal["exact", "pac"] = "exact"
    k: int = Field(2, ge=1)
    epsilon: float = Field(0.05, gt=0, lt=1)
    delta: float = Field(0.05, gt=0, lt=1)
    n_samples: int | None = Field(None, ge=1)
    # PAC samples: "uniform" (D of A8) or "phi" (grown along positive phi, partners drawn in
    # proportion to phi^phi_power; power 4 recovers planted triples where 1 cannot: bench_game.py)
    sampling: Literal["uniform", "phi"] = "uniform"
    phi_power: float = Field(4.0, gt=0)


class TrackingConfig(_Strict):
    # "null": labels judged against size-preserving random partitions (A13'); the absolute rules
    # stay available by name: "matching" (A11, tau default 0.5) and "code" (public code, tau 0.3).
    # The defaults equal `hedonic track`'s (tracking.run.TrackSettings; a test keeps them equal).
    rule: Literal["null", "matching", "code"] = "null"
    tau: float | None = Field(None, gt=0, le=1)  # absolute rules only
    min_size: int = Field(2, ge=1)
    null_draws: int = Field(100, ge=100)  # random partitions per layer pair
    null_level: float = Field(0.95, ge=0.5, lt=1)  # share of a random partition left unstructured
    horizon: int = Field(3, ge=1)  # track layer l to l+1 ... l+horizon
    flow_pairs: int = Field(64, ge=0)  # train pairs for the interventional flow (0: none)

    @field_validator("tau")
    @classmethod
    def _tau_for_absolute_rules(cls, v: float | None, info: Any) -> float | None:
        if v is not None and info.data.get("rule", "null") == "null":
            raise ValueError(
                "tau applies to the rules 'matching' and 'code'; rule 'null' sets it from the null"
            )
        return v


def _unique(v: list) -> list:
    if len(set(v)) != len(v):
        raise ValueError("entries must not repeat")
    return v


class EvaluateConfig(_Strict):
    top_k: int = Field(10, ge=1)
    seeds: list[int] = Field([0, 1, 2], min_length=3)  # A13: every figure over >= 3 seeds
    min_size: int = Field(2, ge=1)
    certify_samples: int = Field(20_000, ge=100)  # coalitions drawn per stability certificate

    _seeds = field_validator("seeds")(classmethod(lambda cls, v: _unique(v)))


Baseline = Literal["random", "kmeans", "hierarchical", "phi-communities"]


class RunConfig(_Strict):
    name: str = "run"
    model: str = "minilm"
    adapter: str | None = None  # an existing LoRA adapter; None: fine-tune one first
    reference: str | None = None  # two-checkpoint mode: the pre-fine-tuning checkpoint
    task: Task = "cqtr"
    layers: list[int] = Field([1, 2, 3, 4], min_length=1)
    data: DataConfig = DataConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    phi: PhiConfig = PhiConfig()
    game: GameConfig = GameConfig()
    baselines: list[Baseline] = ["random", "kmeans", "hierarchical", "phi-communities"]

    @field_validator("baselines")
    @classmethod
    def _unique_baselines(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("baselines must not repeat")
        return v

    tracking: TrackingConfig = TrackingConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    max_length: int = Field(128, ge=16)
    seed: int = 0

    @field_validator("layers")
    @classmethod
    def _sorted_unique(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError("layers must not repeat")
        return sorted(v)

    def section_key(self, *names: str) -> str:
        """A stable hash of some top-level sections: the cache key of a pipeline stage."""
        dump = self.model_dump(mode="json")
        blob = json.dumps({n: dump[n] for n in names}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _first_error(exc: ValidationError, source: str) -> str:
    errors = exc.errors()
    # a mapping given where "demo" | {rerank, qrels} is expected: report the mapping's own error,
    # not that it is not the literal "demo"
    err = next((e for e in errors if not any("literal[" in str(p) for p in e["loc"])), errors[0])
    where = ".".join(str(p) for p in err["loc"] if not str(p).startswith("PairSource")) or "(top level)"
    if err["type"] == "extra_forbidden":
        return f"{source}: unknown key '{where}'"
    if err["type"] == "missing":
        return f"{source}: missing key '{where}'"
    got = err.get("input")
    got_s = f" (got {got!r})" if not isinstance(got, dict | list) else ""
    return f"{source}: '{where}': {err['msg']}{got_s}"


def _resolve(path: str, base: Path, what: str) -> str:
    p = Path(path).expanduser()
    if not p.is_absolute():
        p = (base / p).resolve()
    if not p.exists():
        raise ConfigError(f"{what}: file not found: {p}")
    return str(p)


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read and validate a YAML config; relative data paths resolve against the file's folder.

    Checks everything that can be checked without loading weights: keys, types, ranges, that data
    files and adapter folders exist. Layer ranges are checked by :func:`check_layers`.
    """
    raw: dict[str, Any] = {}
    base = Path.cwd()
    source = "config"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            what = "is a folder, expected a YAML config file" if path.is_dir() else "config file not found"
            raise ConfigError(f"{path}: {what}")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8-sig")) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f" at line {mark.line + 1}" if mark else ""
            raise ConfigError(f"{path}: not valid YAML{line}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text ({exc.reason}); expected a YAML config file") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of keys at the top level")
        base = path.resolve().parent
    raw = {**raw, **(overrides or {})}
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_first_error(exc, source)) from None
    # resolve and check paths
    updates: dict[str, Any] = {}
    data = cfg.data
    for split in ("train", "test"):
        src = getattr(data, split)
        if isinstance(src, PairSource):
            src = src.model_copy(
                update={
                    "rerank": _resolve(src.rerank, base, f"{source}: data.{split}.rerank"),
                    "qrels": _resolve(src.qrels, base, f"{source}: data.{split}.qrels")
                    if src.qrels
                    else None,
                }
            )
            data = data.model_copy(update={split: src})
    updates["data"] = data
    for key in ("adapter", "reference"):
        value = getattr(cfg, key)
        if value is not None:
            updates[key] = _resolve(value, base, f"{source}: {key}")
    if cfg.task == "rm":
        for split in ("train", "test"):
            src = getattr(data, split)
            if isinstance(src, PairSource) and src.qrels is None:
                raise ConfigError(f"{source}: task 'rm' needs data.{split}.qrels (relevance labels)")
    return cfg.model_copy(update=updates)


def check_layers(cfg: RunConfig, n_layers: int) -> None:
    """One line when a configured layer does not exist in the model (negative: from the end)."""
    bad = [layer for layer in cfg.layers + (cfg.finetune.layers or []) if not -n_layers <= layer < n_layers]
    if bad:
        raise ConfigError(
            f"layer {bad[0]} is out of range: model '{cfg.model}' has {n_layers} layers (0..{n_layers - 1})"
        )
