"""The configuration of ``hedonic run``: one validated object for the whole pipeline.

Validation happens before any work starts: unknown keys, wrong types, missing data files and
layers the model does not have each give one :class:`~hedonic_neurons.errors.ConfigError` line
(exit code 2 on the command line). Every field has a default, so a config names only what it
changes. Data paths are relative to the config file's folder. Layers may be negative (counted from
the end, as in ``hedonic collect --layers -1``); :func:`hedonic_neurons.validation.check_run`
turns them into indices from the model's config.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from hedonic_neurons.cachekey import cache_key
from hedonic_neurons.errors import ConfigError, HedonicError

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
    """Hyper-parameters of one LoRA fine-tuning run: the ``finetune`` section of a run config, the
    options of ``hedonic finetune`` and the argument of :func:`hedonic_neurons.models.training.train`
    (all recorded in ``finetune.json``).

    ``task``: the task trained (``cqtr``, ``mean_tf_l``, ``rm``); leave it out of a run config,
    where the run's ``task`` is used. ``learning_rate`` may also be given as ``lr`` (the Python
    and command-line name). ``layers``: None is the default middle band. Constructing one
    directly raises a one-line :class:`~hedonic_neurons.errors.ConfigError` for a bad value.
    """

    task: Task | None = None
    layers: list[int] | None = None  # None: the middle band (the paper's 7-14 of 32, scaled to the depth)
    rank: int = 8
    alpha: float = 64.0  # Tevatron's LoRA default
    dropout: float = 0.1
    learning_rate: float = Field(1e-4, validation_alias=AliasChoices("learning_rate", "lr"))
    weight_decay: float = 0.0
    epochs: float = 1.0
    max_steps: int | None = None  # overrides epochs
    batch_size: int = 16  # sequences per step (rm: batch_size // group_size queries per step)
    group_size: int = 8  # rm: 1 positive + group_size - 1 hard negatives
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    eval_batch_size: int = 64
    seed: int = 0
    train_pooler: bool = True  # BERT: train the pooler (dense+tanh) as part of the head
    head_lr: float | None = None  # learning rate of the head (classifier/score, pooler); None: learning_rate
    standardize: bool = True  # regression: MSE on the z-scored target, mean/std folded into the head
    bucket: int = 8  # length bucketing: sort chunks of `bucket` batches by text length (1: off)
    model_dropout: float | None = None  # dropout p of the base model's own Dropout modules; None: as loaded
    pooler_init: Literal["keep", "standardize"] = "keep"  # BERT pooler (see models.training.init_pooler)
    pooler_init_pairs: int = 512  # training pairs (a seeded sample) used by pooler_init and head_init
    head_init: Literal["keep", "probe"] = "keep"  # final head linear: as loaded, or a ridge probe
    augment: float = 0.0  # regression: probability of cropping a drawn training passage

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            # inside a RunConfig's validation pydantic reports the error with its location
            if sys._getframe(1).f_globals.get("__name__", "").startswith("pydantic"):
                raise
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            raise ConfigError(f"fine-tuning {where + ': ' if where else ''}{msg}" + (
                f" (got {err['input']!r})" if where and err["type"] != "missing" else ""
            )) from None  # fmt: skip

    @property
    def lr(self) -> float:
        """The learning rate (``learning_rate``)."""
        return self.learning_rate

    @model_validator(mode="after")
    def _check(self) -> FinetuneConfig:
        for name in ("rank", "batch_size", "eval_batch_size", "bucket", "pooler_init_pairs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.group_size < 2:
            raise ValueError(f"group_size must be >= 2 (1 positive + negatives), got {self.group_size}")
        if self.task == "rm" and self.group_size > self.batch_size:
            raise ValueError(
                f"rm needs 2 <= group_size <= batch_size, got group_size={self.group_size}, "
                f"batch_size={self.batch_size}"
            )
        for name, value in (
            ("learning_rate (lr)", self.learning_rate),
            ("head_lr", self.head_lr),
            ("epochs", self.epochs),
        ):
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        for name in ("dropout", "model_dropout"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if not 0.0 <= self.warmup_ratio <= 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1], got {self.warmup_ratio}")
        if not 0.0 <= self.augment <= 1.0 or (self.augment and self.task == "rm"):
            raise ValueError(f"augment must be in [0, 1] and only for cqtr / mean_tf_l, got {self.augment}")
        return self

    def hyperparameters(self) -> dict[str, Any]:
        """The fields other than ``task`` and ``layers``, with ``lr`` for ``learning_rate``: the
        keyword arguments of :func:`hedonic_neurons.models.finetune.run_finetune`."""
        out = self.model_dump(exclude={"task", "layers", "learning_rate"})
        return {"lr": self.learning_rate, **out}


class PhiConfig(_Strict):
    # names registered in hedonic_neurons.synergy.base.METRICS (built in: oca, pas)
    metrics: list[Annotated[str, AfterValidator(lambda name: PhiConfig._registered(name))]] = Field(
        ["oca", "pas"], min_length=1
    )
    pas_mode: Literal["exact", "taylor", "grad-outer"] = "exact"
    # PAS readout: "local" (the head on the residual after the layer), "full" (the model's output,
    # neurons ablated at every position; exact mode only) or "next-block" (the model above the layer
    # on the residual at the readout position: taylor costs d passes of the upper model per input;
    # exact and full run 4 logits per pair, ~n²/2 upper-model passes per input for all pairs)
    readout: Literal["local", "full", "next-block"] = "local"
    # the input budget of the expensive metrics (PAS: the first max_inputs training pairs);
    # streaming metrics (OCA: one forward pass per batch) always use every training pair
    max_inputs: int = Field(512, ge=8)
    batch_size: int = Field(16, ge=1)

    _metrics = field_validator("metrics")(classmethod(lambda cls, v: _unique(v)))

    @staticmethod
    def _registered(name: str) -> str:
        from hedonic_neurons.synergy.base import METRICS

        if name not in METRICS:
            raise ValueError(METRICS.unknown(name))
        return name


class GameConfig(_Strict):
    # solver: a registered solver of the game (hedonic_neurons.partitioner.PARTITIONERS, the
    # partitioners with hedonic = True): "exact" (Top Covering with choice sets computed from phi)
    # or "pac" (PAC Top Covering). The default is exact: at the (epsilon, delta) budget PAC's
    # sampled choice sets are noisy at MiniLM scale and their closures merge into one giant
    # coalition (README, "Solvers"). The solver is built from the fields below that it takes.
    solver: str = "exact"
    k: int = Field(2, ge=1)
    epsilon: float = Field(0.05, gt=0, lt=1)
    delta: float = Field(0.05, gt=0, lt=1)
    n_samples: int | None = Field(None, ge=1)
    # PAC samples: "uniform" (a size uniform on min..max, then a uniform subset of that size) or
    # "phi" (grown along positive phi, partners drawn in proportion to phi^phi_power; power 4
    # recovers planted triples where 1 cannot: bench_game.py)
    sampling: Literal["uniform", "phi"] = "uniform"
    phi_power: float = Field(4.0, gt=0)
    # min_z: the noise-robust (thresholded) game. None (the default): off, every positive phi_ij
    # can be a partner. A number z >= 0: phi_ij counts as a partner only when phi_ij > z * se_ij,
    # se the standard error written beside phi by the collectors (every other entry is set to
    # 0), so a neuron with fewer than k real partners does not fill its choice set with noise
    # and chain planted groups together. Use it when phi is estimated from few inputs or is
    # heavy-tailed; 6 (game.significance.DEFAULT_MIN_Z) keeps the noise-free recovery of a
    # planted game with Student-t noise. Needs phi files with standard errors (collected by
    # this version); baselines are unaffected.
    min_z: float | None = Field(None, ge=0, allow_inf_nan=False)

    @field_validator("solver")
    @classmethod
    def _registered_solver(cls, v: str) -> str:
        from hedonic_neurons.partitioner import check_solver

        return check_solver(v)


class TrackingConfig(_Strict):
    # rule: a registered tracking rule (hedonic_neurons.tracking.TRACKING_RULES). "null": labels
    # judged against size-preserving random partitions; the absolute rules stay available by
    # name: "matching" (tau default 0.5) and "code" (public code, tau 0.3).
    # The fields and defaults are tracking.run.TrackSettings' (TrackSettings.from_config builds
    # the run's settings from this section; a test keeps the defaults equal to hedonic track's).
    rule: str = "null"
    tau: float | None = Field(None, gt=0, le=1)  # the rules with a threshold only
    min_size: int = Field(2, ge=1)
    null_draws: int = Field(100, ge=100)  # random partitions per layer pair
    null_level: float = Field(0.95, ge=0.5, lt=1)  # share of a random partition left unstructured
    horizon: int = Field(3, ge=1)  # track layer l to l+1 ... l+horizon
    flow_pairs: int = Field(64, ge=0)  # train pairs for the interventional flow (0: none)
    max_pairs: int | None = Field(512, ge=1)  # train pairs E|a_p| is estimated on (None: all)

    @field_validator("rule")
    @classmethod
    def _registered_rule(cls, v: str) -> str:
        from hedonic_neurons.tracking.rules import TRACKING_RULES

        return TRACKING_RULES.check(v)

    @field_validator("tau")
    @classmethod
    def _tau_for_absolute_rules(cls, v: float | None, info: Any) -> float | None:
        rule = info.data.get("rule")
        if v is not None and rule is not None:
            from hedonic_neurons.tracking.rules import get_rule

            get_rule(rule).check_tau(rule, v)
        return v


def _unique(v: list) -> list:
    if len(set(v)) != len(v):
        raise ValueError("entries must not repeat")
    return v


class EvaluateConfig(_Strict):
    top_k: int = Field(10, ge=1)  # coalitions evaluated per method, seed and layer
    seeds: list[int] = Field([0, 1, 2], min_length=3)  # every reported number over >= 3 seeds
    min_size: int = Field(2, ge=1)  # the legacy OOD-drop table's smallest coalition
    certify_samples: int = Field(20_000, ge=100)  # coalitions drawn per stability certificate
    # the evaluations run (names registered in hedonic_neurons.evaluate.base.EVALUATIONS)
    evaluations: list[str] = ["effects", "null", "synergy", "phi_validity"]
    # which coalitions: "cohesion" (fraction of pairs with phi > 0, then mean phi) or "largest",
    # among those with size in size_band; every method is size-matched to the reference's picks
    selection: Literal["cohesion", "largest"] = "cohesion"
    size_band: tuple[int, int] = (5, 64)
    # the ablations the effects are measured under, side by side: "reference" (the default), "mean",
    # "zero", "resample" (each test pair's ablated neurons take the token-mean activations of a
    # seeded donor training pair, one donor per pair)
    ablation_modes: list[Literal["reference", "mean", "zero", "resample"]] = Field(
        ["reference"], min_length=1
    )
    null_sets: int = Field(200, ge=200)  # random size-matched sets per size bin
    null_bins_per_octave: int = Field(1, ge=1)  # log-scale size bins
    null_pairs: int = Field(64, ge=8)  # test pairs (whole queries) of the null's shared subsample
    # None: the null's subsample is whole test queries; m: at most m pairs of each query (a seeded
    # draw), so that null_pairs pairs span more queries (the null's query bootstrap has more to
    # resample); the comparison stays paired (coalitions and random sets on the same pairs)
    null_pairs_per_query: int | None = Field(None, ge=1)
    synergy_pairs: int = Field(16, ge=4)  # pairs (of the null's subsample) for single-neuron ablations
    bootstrap: int = Field(1000, ge=100)  # resamples of the query bootstrap
    attribution: bool = True  # the |gradient x revert shift| baseline
    attribution_pairs: int = Field(64, ge=1)  # train pairs it is chosen on
    # the report's coalition explorer: per method, the coalitions the selection rule ranks first
    # (at the first analysed layer), shown on this many test inputs with their top-activating ones
    explorer_coalitions: int = Field(5, ge=0)  # 0: no explorer
    explorer_inputs: int = Field(64, ge=1)
    # φ-data resampling: the training pairs φ was estimated on are cut into this many disjoint
    # seeded subsets, φ is estimated on each and every hedonic partition re-solved on it; the run
    # reports each hedonic partition's stability (ARI) and consensus coalitions, and every hedonic
    # row (evaluations, extrinsic, ridge, alignment) gets <figure>_phi intervals over (resample,
    # query) beside the query-only ones (evaluate/resample.py). 0: off; otherwise at least 3
    phi_resamples: int = Field(3, ge=0)

    _seeds = field_validator("seeds")(classmethod(lambda cls, v: _unique(v)))
    _modes = field_validator("ablation_modes")(classmethod(lambda cls, v: _unique(v)))

    @field_validator("evaluations")
    @classmethod
    def _known_evaluations(cls, v: list[str]) -> list[str]:
        from hedonic_neurons.evaluate.base import EVALUATIONS

        for name in _unique(v):
            if name not in EVALUATIONS:
                raise ValueError(EVALUATIONS.unknown(name))
        return v

    @field_validator("phi_resamples")
    @classmethod
    def _resamples(cls, v: int) -> int:
        if v in (1, 2):
            raise ValueError(f"phi_resamples {v}: expected 0 (off) or at least 3 φ resamples")
        return v

    @field_validator("size_band")
    @classmethod
    def _band(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not 2 <= v[0] <= v[1]:
            raise ValueError(f"size_band {list(v)}: expected [low, high] with 2 <= low <= high")
        return v


def _registered_baseline(name: str) -> str:
    from hedonic_neurons.partitioner import check_baseline

    return check_baseline(name)


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
    # registered baselines (hedonic_neurons.partitioner.PARTITIONERS, hedonic = False); each is
    # also its partitions' method name
    # (checked item by item, so an error names its place: 'baselines.0')
    baselines: list[Annotated[str, AfterValidator(_registered_baseline)]] = [
        "random",
        "kmeans",
        "hierarchical",
        "phi-communities",
    ]

    @field_validator("baselines")
    @classmethod
    def _unique_baselines(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("baselines must not repeat")
        return v

    # the files of the 'given' baseline (a fixed partition evaluated like the others): one per
    # analysed layer, each a partition JSON or a 'hedonic plant' ground_truth.json that names its
    # layer (paths relative to the config file); set exactly when 'given' is in baselines
    given: list[str] = Field(default_factory=list, validate_default=True)

    @field_validator("given", mode="before")
    @classmethod
    def _one_or_more_files(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("given")
    @classmethod
    def _given_iff_named(cls, v: list[str], info: Any) -> list[str]:
        named = "given" in (info.data.get("baselines") or [])
        if named and not v:
            raise ValueError(
                "baselines lists 'given' but no file is set; expected given: PATH (a partition JSON or "
                "a plant ground_truth.json, one per analysed layer)"
            )
        if v and not named:
            raise ValueError("files are set but 'given' is not in baselines; expected baselines: [.., given]")
        if len(set(v)) != len(v):
            raise ValueError("files must not repeat")
        return v

    def baseline_settings(self, layer: int) -> dict[str, dict[str, Any]]:
        """The baselines' parameters at ``layer`` (``partition_layer(settings=...)``): for the
        'given' baseline, the file of that layer (``{}`` when no file is given)."""
        if not self.given:
            return {}
        from hedonic_neurons.baselines.given import check_given

        return {"given": {"path": check_given(self.given, self.layers)[layer], "layer": layer}}

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
        """A stable hash of some top-level sections: the cache key of a pipeline stage. With
        'given' files, ``baselines`` also stands for them and their contents (SHA-256), so a
        changed file recomputes every stage that depends on the baselines."""
        dump = self.model_dump(mode="json")
        picked = {n: dump[n] for n in names}
        if "baselines" in names and self.given:
            import hashlib

            picked["given"] = {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in self.given}
        return cache_key(picked)


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


def _builtin(name: str) -> bool:
    """Whether ``name`` is a built-in model name (a reference may be one, like the model)."""
    from hedonic_neurons.models.builtins import BUILTINS

    return name in BUILTINS


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
        if value is not None and not (key == "reference" and _builtin(value)):
            updates[key] = _resolve(value, base, f"{source}: {key}")
    if cfg.given:
        from hedonic_neurons.baselines.given import check_given

        files = [_resolve(p, base, f"{source}: given") for p in cfg.given]
        try:  # every file read and checked; its layer against the layers (negative ones: in check_run)
            check_given(files, cfg.layers if min(cfg.layers) >= 0 else None)
        except HedonicError as exc:
            raise type(exc)(f"{source}: 'given': {exc}") from None
        updates["given"] = files
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
