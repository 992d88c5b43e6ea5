"""``hedonic run``: every stage of the method, cached in one output folder.

Stages and their folders (each stage writes a ``stage.json`` with the hash of the configuration
sections it depends on; a stage whose ``stage.json`` matches is skipped, so a killed run resumes
where it stopped and an edited config reruns only what changed):

=============  ==========================  ==================================================
stage          folder                      what
=============  ==========================  ==================================================
finetune       ``finetune/``               LoRA adapter (skipped when ``adapter`` is given)
phi            ``phi/<metric>/``           φ per layer (:func:`hedonic_neurons.synergy.collect`,
                                           itself resumable batch by batch)
activations    ``activations/``            pooled activations of the train and test pairs per
                                           layer: mean over tokens, readout token, query tokens
partitions     ``partitions/<method>/``    hedonic (one per φ metric) and baseline partitions,
                                           one JSON per seed and layer
tracking       ``tracking/<method>/``      transitions from each layer to the next h layers against a null, Sankey (seed 0)
evaluate       ``evaluation.json``         OOD drop, alignment R², ridge R², synergy, certificate
report         ``report.*``                report.md, results.json, figures/, report.html
=============  ==========================  ==================================================

Before any work, :func:`run` checks everything it can from files alone
(:func:`hedonic_neurons.validation.check_run`: stage name, output folder, model, layers,
adapter) and locks the output folder (:mod:`hedonic_neurons.locking`: a second run on it is
refused); the data files are read next, before anything is written. A run that fails or is
interrupted before any stage finished leaves nothing behind; otherwise finished stages are kept
and a rerun resumes from them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Any

import numpy as np

from hedonic_neurons.artifacts import (
    load_phi,
    provenance,
    read_json,
    write_json,
)
from hedonic_neurons.config import PairSource, RunConfig
from hedonic_neurons.errors import ConfigError, HedonicError

# the partitions stage is the one dispatch (also behind `hedonic solve` and `hedonic baseline`)
from hedonic_neurons.partition import HEDONIC, hedonic_method, partition_layer  # noqa: F401
from hedonic_neurons.validation import RUN_STAGES

#: columns of the extrinsic table ("k": coalitions evaluated per layer, after size matching)
EXTRINSIC = ("ood_drop", "alignment_r2", "synergy", "blocking_upper", "blocking_upper_phi", "k")


def _log(msg: str) -> None:
    import sys

    print(f"[hedonic run] {msg}", file=sys.stderr, flush=True)


def _extrinsic_replicates(row: dict[str, Any]) -> dict[str, Any]:
    """One φ resample's extrinsic row reduced to what the report's ``_phi`` intervals need:
    ``{field: {"point", "replicates"}}`` for ``ood_drop`` and, per read position,
    ``ridge_r2`` and ``alignment_r2`` (keys ``<position>/<field>``); ``{}`` for a row without
    coalitions. The replicates are taken out of ``row``."""
    reps = row.pop("replicates", None)
    if reps is None:
        return {}
    out = {"ood_drop": {"point": row["ood_drop"], "replicates": reps["ood_drop"].tolist()}}
    for pos, by in reps["by_position"].items():
        for field, values in by.items():
            out[f"{pos}/{field}"] = {"point": row["by_position"][pos][field], "replicates": values.tolist()}
    return out


@dataclass
class _Evaluated:
    """The evaluation of the layers done so far, as the per-layer files hold it."""

    rows: list[dict[str, Any]]  # the extrinsic rows (hedonic_neurons.evaluate.extrinsic)
    evaluations: dict[str, list[dict[str, Any]]]  # each registered evaluation's rows
    design: list[dict[str, Any]] = dataclass_field(default_factory=list)  # per layer: targets, null, timings
    ceilings: list[dict[str, Any]] = dataclass_field(default_factory=list)  # ridge on every neuron / top PCs
    resampled: list[dict[str, Any]] = dataclass_field(default_factory=list)  # φ-data resampling, per layer

    @classmethod
    def empty(cls, evaluations: Sequence[str]) -> _Evaluated:
        return cls(rows=[], evaluations={name: [] for name in evaluations})

    def add(self, saved: dict[str, Any], *, resampling: bool) -> None:
        """One layer's saved file (``evaluation/layer<L>.json``)."""
        self.rows.extend(saved["rows"])
        self.ceilings.extend(saved["ceilings"])
        self.design.append(saved["design"])
        for name, got in self.evaluations.items():
            got.extend(saved["evaluations"].get(name, []))
        if resampling:
            self.resampled.append(saved["resampled"])


def _layer_file(out: Path, layer: int) -> Path:
    """Where the evaluation stage saves a finished layer."""
    return out / "evaluation" / f"layer{layer}.json"


def _saved_layer(stage: Stage, layer: int) -> dict[str, Any] | None:
    """A layer's saved evaluation when it was made with this stage's key, else None."""
    path = _layer_file(stage.folder.parent, layer)
    saved = read_json(path) if path.is_file() else None
    return saved if saved is not None and saved.get("key") == stage.key else None


class Stage:
    """A cached pipeline stage: ``done()`` when its folder holds a matching ``stage.json``."""

    def __init__(self, folder: Path, key: str) -> None:
        self.folder, self.key = folder, key
        self.marker = folder / "stage.json"

    def done(self) -> bool:
        if not self.marker.is_file():
            return False
        try:
            return read_json(self.marker).get("key") == self.key
        except HedonicError:
            return False

    def finish(self, **info: Any) -> None:
        write_json(self.marker, {"key": self.key, **info, "provenance": provenance()})


# ------------------------------------------------------------------------------------------ data


def _limit_by_query(
    pairs: Sequence[Any], max_pairs: int, seed: int, keep: set[str] | None = None
) -> list[Any]:
    """Whole queries, drawn in a seeded random order, until ``max_pairs`` pairs (rankings stay
    complete; a subset is not biased towards low query ids). ``keep``: only these queries."""
    by_q: dict[str, list[Any]] = {}
    for p in pairs:
        if keep is None or p.qid in keep:
            by_q.setdefault(p.qid, []).append(p)
    order = sorted(by_q)
    np.random.default_rng(seed).shuffle(order)
    out: list[Any] = []
    for qid in order:
        if out and len(out) + len(by_q[qid]) > max_pairs:
            continue
        out.extend(by_q[qid])
    return out


def load_split(
    source: str | PairSource, split: str, max_pairs: int, seed: int, task: str = "cqtr"
) -> tuple[list[Any], dict, str]:
    """(pairs, qrels, description) of one side of the data: the demo corpus or standard files.

    For RM only judged queries are kept (an unjudged query has no relevance to predict).
    """
    from hedonic_neurons.data import demo_corpus, read_qrels, read_rerank_input, top_per_query

    if source == "demo":
        ds = demo_corpus(seed=seed)
        pairs, qrels, desc = (
            ds.split_pairs("train" if split == "train" else "test"),
            ds.qrels,
            f"{ds.name} ({split} split)",
        )
    else:
        pairs = read_rerank_input(source.rerank)
        qrels = read_qrels(source.qrels) if source.qrels else {}
        desc = source.rerank
        if source.depth:
            pairs = top_per_query(pairs, source.depth)
            desc += f" (top {source.depth} per query)"
    keep = set(qrels) if task == "rm" else None
    chosen = _limit_by_query(pairs, max_pairs, seed, keep)
    n_queries = len({p.qid for p in chosen})
    return chosen, qrels, f"{desc}; {n_queries} queries"


def task_values(task: str, pairs: Sequence[Any], qrels: dict) -> np.ndarray:
    """Task target per pair; RM: graded relevance scaled to [0, 1] by the largest grade."""
    from hedonic_neurons.data import task_targets

    y = np.asarray(task_targets(pairs, task, qrels), dtype=np.float64)
    if task == "rm" and y.max() > 0:
        y = y / y.max()
    return y


# -------------------------------------------------------------------------------------- pipeline


class Pipeline:
    """One run of every stage for a validated :class:`RunConfig` into ``out``."""

    def __init__(self, cfg: RunConfig, out: str | Path, *, progress: bool = True) -> None:
        self.cfg, self.out, self.progress = cfg, Path(out), progress
        self.out.mkdir(parents=True, exist_ok=True)
        self.notes: list[str] = []

    # -- stages ---------------------------------------------------------------------------------

    def run(self, stop_after: str | None = None, *, report_finished: bool = False) -> Path:
        """Every stage in order (or up to ``stop_after``). Returns ``report.html``, or the output
        folder when stopped before the report. The config is expected checked
        (:func:`hedonic_neurons.validation.check_run`, as :func:`run` does).

        ``report_finished``: instead of evaluating the layers still to do, write the report from
        the layers whose evaluation is saved (a stopped run; :meth:`finished_evaluation`), marked
        as partial. The stages before the evaluation must be those of this config (they are
        reused from their files); a folder with no finished layer is refused before any work."""
        cfg = self.cfg
        from hedonic_neurons.models import load_model

        # the data first: its errors name the file and line, before anything is written
        self.train, self.train_qrels, self.train_desc = load_split(
            cfg.data.train, "train", cfg.data.max_train_pairs, cfg.seed, cfg.task
        )
        self.test, self.test_qrels, self.test_desc = load_split(
            cfg.data.test, "test", cfg.data.max_test_pairs, cfg.seed, cfg.task
        )
        if cfg.task == "rm" and not self.test_qrels:
            raise ConfigError("task 'rm' needs relevance labels (qrels) for the test data")
        for metric in cfg.phi.metrics if cfg.evaluate.phi_resamples else ():  # φ resampling: enough pairs
            self.resample_subsets(metric)
        if report_finished and not any(_layer_file(self.out, layer).is_file() for layer in cfg.layers):
            raise self._nothing_finished()  # before any work (the layer files' keys are read later)
        _log(f"output folder: {self.out}")
        write_json(self.out / "config.json", {**cfg.model_dump(mode="json"), "provenance": provenance()})
        adapter = self.stage_finetune()
        if stop_after == "finetune":
            return self.out
        self.nm = load_model(
            cfg.model, adapter=adapter, reference=cfg.reference, input_format=self._input_format(adapter)
        )
        steps: list[tuple[str, Callable[[], None]]] = [
            ("phi", self.stage_phi),
            ("activations", self.stage_activations),
            ("partitions", self.stage_partitions),
            ("tracking", self.stage_tracking),
            ("evaluate", self.stage_evaluate),
            ("report", self.stage_report),
        ]
        assert ("finetune", *(name for name, _ in steps)) == RUN_STAGES
        # read once, before any work: refuses a run with no finished layer
        finished = self.finished_evaluation() if report_finished else None
        for name, fn in steps:
            if finished is not None and name == "evaluate":
                self.evaluation, layers = finished
                self.stage_report(layers=layers)
                break
            fn()
            if stop_after == name and name != "report":
                return self.out
        return self.out / "report.html"

    def _input_format(self, adapter: str | None = None):
        """The input format: the template the adapter was trained with (its ``finetune.json``), else
        the default; ``max_length`` always from the config."""
        from hedonic_neurons.models.inputs import InputFormat
        from hedonic_neurons.models.loading import recorded_input_format

        fmt = recorded_input_format(adapter) or InputFormat()
        return replace(fmt, max_length=self.cfg.max_length)

    def stage_finetune(self) -> str | None:
        cfg = self.cfg
        if cfg.adapter is not None:
            return cfg.adapter
        if cfg.reference is not None:
            return None  # two-checkpoint mode: the model is already fine-tuned
        if cfg.data.train != "demo":
            raise ConfigError(
                "no 'adapter' given: 'hedonic run' fine-tunes only on the demo corpus; for other data run "
                "'hedonic finetune' first and set 'adapter' to its adapter folder"
            )
        from hedonic_neurons.models.finetune import run_finetune

        folder = self.out / "finetune"
        stage = Stage(folder, cfg.section_key("model", "task", "data", "finetune", "max_length", "seed"))
        if not stage.done():
            _log(f"fine-tuning {cfg.model} for {cfg.task} on the demo corpus")
            ft = cfg.finetune
            hyper: dict[str, Any] = {**ft.hyperparameters(), "seed": cfg.seed}
            metrics = run_finetune(
                cfg.model,
                task=cfg.task,
                out=folder,
                data="demo",
                layers=ft.layers,
                max_length=cfg.max_length,
                max_train_queries=max(1, cfg.data.max_train_pairs // 10),
                max_eval_queries=max(1, cfg.data.max_test_pairs // 10),
                progress=self.progress,
                **hyper,
            )
            stage.finish(metrics=metrics)
        self.finetune_metrics = read_json(stage.marker).get("metrics")
        return str(folder / "adapter")

    def stage_phi(self) -> None:
        """φ (and its standard errors) of every metric of ``phi.metrics`` (registered in
        :data:`~hedonic_neurons.synergy.base.METRICS`). ``phi.max_inputs`` is the budget of the
        expensive metrics (PAS: the first N training pairs); a streaming metric (OCA) uses every
        training pair."""
        from hedonic_neurons.synergy.base import METRICS
        from hedonic_neurons.synergy.collect import CollectSettings, collect

        cfg = self.cfg
        for metric in cfg.phi.metrics:
            _log(f"phi ({metric}) for layers {cfg.layers}")
            streaming = METRICS.get(metric).streaming
            settings = CollectSettings(
                metric=metric,
                mode=cfg.phi.pas_mode,
                readout=cfg.phi.readout,
                batch_size=cfg.phi.batch_size,
                max_inputs=None if streaming else cfg.phi.max_inputs,
                seed=cfg.seed,
                ablation="reference" if self.nm.has_reference else "zero",
            )
            collect(
                self.nm, self.train, cfg.layers, settings, self.phi_dir(metric),
                data=self.train_desc, progress=self.progress,
            )  # fmt: skip
        if not self.nm.has_reference:
            self.notes.append("The model has no reference weights: PAS used zero-ablation.")

    def phi(self, metric: str, layer: int, *, with_se: bool = False) -> Any:
        """φ of ``metric`` at ``layer``; ``with_se=True``: ``(phi, se)``, its standard errors."""
        from hedonic_neurons.synergy.collect import phi_path

        return load_phi(phi_path(self.phi_dir(metric), layer), with_se=with_se)

    def phi_dir(self, metric: str) -> Path:
        """φ of one metric, in a folder named by the settings that determine it (a changed
        ``phi`` section starts a new folder instead of clashing with the old files)."""
        return self.out / "phi" / metric / self._model_key("phi")[:10]

    # -- φ-data resampling (evaluate.phi_resamples) ---------------------------------------------

    def phi_inputs(self, metric: str) -> list[Any]:
        """The training pairs φ of ``metric`` is estimated on: every training pair for a
        streaming metric, else the first ``phi.max_inputs``."""
        from hedonic_neurons.synergy.base import METRICS

        if METRICS.get(metric).streaming or not self.cfg.phi.max_inputs:
            return list(self.train)
        return list(self.train)[: self.cfg.phi.max_inputs]

    def resample_subsets(self, metric: str) -> list[np.ndarray]:
        """The ``evaluate.phi_resamples`` disjoint subsets (indices into :meth:`phi_inputs`) that
        φ of ``metric`` is re-estimated on, seeded by the run's ``seed``."""
        from hedonic_neurons.evaluate.stability import split_inputs

        n, parts = len(self.phi_inputs(metric)), self.cfg.evaluate.phi_resamples
        if parts > n:
            raise ConfigError(
                f"evaluate.phi_resamples = {parts} needs at least {parts} training pairs to estimate "
                f"{metric} φ on, got {n}; expected fewer resamples or more training pairs"
            )
        return split_inputs(n, parts, self.cfg.seed)

    def phi_resample_dir(self, metric: str, r: int) -> Path:
        """φ of ``metric`` estimated on resample ``r`` (named like :meth:`phi_dir`, and by R)."""
        root = self.out / "resample" / "phi" / metric
        return root / f"{self._model_key('phi')[:10]}-R{self.cfg.evaluate.phi_resamples}" / f"r{r}"

    def stage_phi_resample(self) -> None:
        """φ of every metric on each disjoint subset of :meth:`resample_subsets` (settings as in
        :meth:`stage_phi`, the subset being all the inputs); each cached and resumable like φ
        itself (:func:`~hedonic_neurons.synergy.collect`). The subsets are written to
        ``subsets.json`` beside them."""
        from hedonic_neurons.synergy.collect import CollectSettings, collect

        cfg = self.cfg
        for metric in cfg.phi.metrics:
            pairs, subsets = self.phi_inputs(metric), self.resample_subsets(metric)
            folder = self.phi_resample_dir(metric, 0).parent
            folder.mkdir(parents=True, exist_ok=True)
            write_json(
                folder / "subsets.json",
                {"n": len(pairs), "seed": cfg.seed, "subsets": [s.tolist() for s in subsets]},
            )
            settings = CollectSettings(
                metric=metric,
                mode=cfg.phi.pas_mode,
                readout=cfg.phi.readout,
                batch_size=cfg.phi.batch_size,
                max_inputs=None,
                seed=cfg.seed,
                ablation="reference" if self.nm.has_reference else "zero",
            )
            for r, idx in enumerate(subsets):
                _log(f"phi ({metric}) on resample {r + 1} of {len(subsets)} ({idx.size} pairs)")
                desc = (
                    f"{self.train_desc}; φ resample {r + 1} of {len(subsets)}: {idx.size} of the "
                    f"{len(pairs)} pairs φ is estimated on (disjoint subsets, seed {cfg.seed})"
                )
                collect(
                    self.nm, [pairs[int(i)] for i in idx], cfg.layers, settings,
                    self.phi_resample_dir(metric, r), data=desc, progress=self.progress,
                )  # fmt: skip

    def phi_resampled(self, metric: str, r: int, layer: int, *, with_se: bool = False) -> Any:
        """φ of ``metric`` at ``layer`` estimated on resample ``r`` (``with_se``: with its SE)."""
        from hedonic_neurons.synergy.collect import phi_path

        return load_phi(phi_path(self.phi_resample_dir(metric, r), layer), with_se=with_se)

    def resample_partition_path(self, method: str, r: int, layer: int) -> Path:
        key = f"{self._model_key('phi', 'game')[:10]}-R{self.cfg.evaluate.phi_resamples}"
        return self.out / "resample" / "partitions" / key / method / f"r{r}" / f"layer{layer}.json"

    def resampled_partitions(self, layer: int, r: int) -> dict[str, Any]:
        """Every hedonic partition of ``layer`` re-solved on φ resample ``r`` with the game's
        settings and seed ``evaluate.seeds[0]`` (written once, read back on a rerun):
        ``{method: Partition}``."""
        from hedonic_neurons.partition import LayerInputs

        seed = self.cfg.evaluate.seeds[0]
        got = partition_layer(
            layer,
            phi=lambda metric: self.phi_resampled(metric, r, layer),
            phi_se=lambda metric: self.phi_resampled(metric, r, layer, with_se=True),
            metrics=self.cfg.phi.metrics,
            seeds=[seed],
            game=self.cfg.game,
            path=lambda method, seed: self.resample_partition_path(method, r, layer),
            inputs=LayerInputs(n_neurons=self.nm.n_neurons),
        )
        return {method: part for (method, _), part in got.items()}

    def resample_layer(
        self,
        layer: int,
        ctx: Any,
        config: Any,
        means: Any = None,
        donors: Any = None,
        *,
        data: Any,
        acts_train: Any,
        acts_test: Any,
        rows: dict[str, list[dict[str, Any]]],
    ) -> dict[str, Any]:
        """φ resampling at one layer, after its evaluation (``ctx``: its
        :class:`~hedonic_neurons.evaluate.base.LayerContext`; ``config``: the evaluation's
        settings, ablation modes included; ``rows``: its rows by evaluation, given ``<field>_phi``
        intervals here): every hedonic partition re-solved on each φ resample, its stability and
        consensus groups (:func:`~hedonic_neurons.evaluate.resample.stability_rows`), the
        coalitions the selection rule picks on each resample (``random`` size-matched to them
        too), every configured evaluation and the extrinsic figures re-run on them with their
        query-bootstrap replicates (module :mod:`~hedonic_neurons.evaluate.resample`). Returns the
        layer's entry of ``phi_resampling`` (the extrinsic replicates under ``extrinsic``, for
        the report's tables)."""
        from hedonic_neurons.evaluate.base import EVALUATIONS
        from hedonic_neurons.evaluate.extrinsic import extrinsic_rows
        from hedonic_neurons.evaluate.resample import (
            attach_phi_intervals,
            resample_context,
            resample_outputs,
            resample_selection,
            stability_rows,
            strip_replicates,
        )
        from hedonic_neurons.evaluate.stats import bootstrap_weights, keep_replicates

        cfg, ev = self.cfg, self.cfg.evaluate
        seed, n = ev.seeds[0], ev.phi_resamples
        hedonic = [hedonic_method(m) for m in cfg.phi.metrics]
        phi_metric = self.synergy_metric
        parts = [self.resampled_partitions(layer, r) for r in range(n)]
        # baselines do not depend on φ: random is re-matched to each resample's targets (the
        # hedonic rows' paired comparison), and a given partition, when it is the reference, sets them
        fixed = {m: self.coalitions(m, seed, layer) for m in ("random", "given") if m in cfg.baselines}
        chosen = resample_selection(
            [{**{m: p[m].coalitions for m in hedonic}, **fixed} for p in parts],
            [self.phi_resampled(phi_metric, r, layer) for r in range(n)],
            reference_method=self.reference_method,
            config=config,
            layer=layer,
            seed=seed,
        )
        reference = self.nm.reference_mlp_weights(layer) if self.nm.has_reference else None
        fills = None
        if "resample" in config.ablation_modes:  # the main evaluation's donors: same seed, same layer
            from hedonic_neurons.evaluate.layer import donor_fills

            fills = donor_fills(
                donors, len(self.test), seed=cfg.seed, layer=layer, n_neurons=int(self.nm.n_neurons)
            )[1]
        # the extrinsic figures' query draws: the same for every layer and resample
        weights = (
            bootstrap_weights(len({p.qid for p in self.train}), ev.bootstrap, seed=5000),
            bootstrap_weights(len({p.qid for p in self.test}), ev.bootstrap, seed=5001),
        )
        per_method = [name for name in rows if EVALUATIONS.get(name).per_method]  # not φ validity
        by_evaluation: dict[str, list[Any]] = {name: [] for name in per_method}
        extrinsic: dict[str, list[Any]] = {m: [] for m in hedonic}
        cost = {"null_rows": 0, "rest_rows": 0}  # sequences forwarded (seconds: the design's phi_resample)

        def extend(outputs: Any, sets: list[Any], bar: Any = None) -> dict[str, Any]:  # per mode
            got = {}
            for mode in outputs:
                got[mode] = resample_outputs(
                    self.nm, layer, self.test, outputs[mode], sets, bins=ctx.bins, null_sets=config.null_sets,
                    seed=seed, mode=mode, reference=reference if mode == "reference" else None,
                    means=means if mode == "mean" else None, fills=fills if mode == "resample" else None,
                    batch_size=cfg.phi.batch_size, progress=bar,
                )  # fmt: skip
            return got

        # one batched pass for every resample's coalitions, with random sets for every size bin
        # the main null lacks (sizes from all resamples' coalitions in that bin) and their single
        # neurons; each resample then reads its coalitions from it without another pass
        picked = [c for r in range(n) for cs in chosen[r].values() for c in cs]
        _log(
            f"layer {layer}: ablating the {len({tuple(sorted(c)) for c in picked})} coalitions "
            f"the {n} φ resamples pick, in one pass"
        )
        from tqdm.auto import tqdm

        with tqdm(
            total=len(self.test) * len(ctx.outputs),
            desc=f"φ resampling, layer {layer}",
            unit="pair",
            leave=False,
            disable=not self.progress,
        ) as bar:
            pooled = extend(ctx.outputs, picked, bar)
        for out in pooled.values():  # forward passes of the resampling (extra null bins under null)
            for part in ("null", "rest"):
                cost[f"{part}_rows"] += int(out.rows.get(part, 0))
        for r in range(n):
            _log(f"layer {layer}, φ resample {r + 1} of {n}: re-running the evaluations")
            outputs = extend(pooled, [c for cs in chosen[r].values() for c in cs])
            phis_r = {m: self.phi_resampled(m, r, layer) for m in cfg.phi.metrics}
            ctx_r = resample_context(ctx, chosen[r], outputs, phis_r[phi_metric], self.reference_method)
            with keep_replicates():
                for name in per_method:
                    got = EVALUATIONS.get(name)().evaluate(ctx_r)
                    by_evaluation[name].append(strip_replicates(got))
            mine = {m: chosen[r][m] for m in hedonic}
            extr = extrinsic_rows(
                self.nm, layer, {seed: {m: parts[r][m].coalitions for m in hedonic}}, data,
                reference_method=self.reference_method, phis=phis_r, phi_metric=phi_metric,
                acts_train=acts_train, acts_test=acts_test, k=cfg.game.k, top_k=ev.top_k,
                min_size=ev.min_size, certify_samples=ev.certify_samples, batch_size=cfg.phi.batch_size,
                selected={(seed, m): cs for m, cs in mine.items()},
                selected_skipped={(seed, m): ctx_r.skipped[(seed, m)] for m in mine},
                outputs=outputs[next(iter(outputs))], query_weights=weights,
            )  # fmt: skip
            for row in extr:
                extrinsic[row["method"]].append(_extrinsic_replicates(row))
        for name in per_method:
            got = rows[name]
            attach_phi_intervals(
                [row for row in got if row.get("layer") == layer], by_evaluation[name], hedonic,
                seed=4000 + layer,
            )  # fmt: skip
        stab, consensus = stability_rows(
            {m: [p[m].labels for p in parts] for m in hedonic},
            {m: self.partition(m, seed, layer).labels for m in hedonic},
            layer,
        )
        return {
            "layer": layer,
            "stability": stab,
            "consensus": consensus,
            "chosen": chosen,
            "extrinsic": extrinsic,
            "cost": cost,
        }

    def stage_activations(self) -> None:
        """Pooled activations of the train/test pairs per layer at every read position (float32
        .npy; :func:`~hedonic_neurons.evaluate.extrinsic.record_positions`, one pass per split):
        ``<split>_layer<L>.npy`` the mean over all tokens, ``..._readout.npy`` the token the head
        reads, ``..._query.npy`` the mean over the query tokens (with a fast tokenizer). The
        positions recorded are listed in the stage's ``stage.json``."""
        from hedonic_neurons.evaluate.extrinsic import record_positions
        from hedonic_neurons.evaluate.regression import READ_POSITIONS

        cfg = self.cfg
        folder = self.out / "activations"
        stage = Stage(folder, self._model_key() + "+positions")
        if stage.done():
            return
        _log("recording pooled activations of the train and test pairs")
        folder.mkdir(parents=True, exist_ok=True)
        fast = getattr(self.nm.tokenizer, "is_fast", False)
        positions = [p for p in READ_POSITIONS if p != "query" or fast]
        if "query" not in positions:
            _log("the tokenizer is not a fast one (no character offsets): no query-token features")
        for split, pairs in (("train", self.train), ("test", self.test)):
            got = record_positions(self.nm, pairs, cfg.layers, cfg.phi.batch_size, positions)
            for layer in cfg.layers:
                for pos in positions:
                    np.save(self._acts_path(split, layer, pos), got[layer][pos])
        stage.finish(train_pairs=len(self.train), test_pairs=len(self.test), positions=positions)

    def _acts_path(self, split: str, layer: int, position: str = "mean") -> Path:
        suffix = "" if position == "mean" else f"_{position}"
        return self.out / "activations" / f"{split}_layer{layer}{suffix}.npy"

    def acts(self, split: str, layer: int, position: str = "mean") -> np.ndarray:
        """Pooled activations (pairs, n) of ``split`` at ``layer``, read at ``position``."""
        return np.load(self._acts_path(split, layer, position))

    def acts_at(self, split: str, layer: int) -> dict[str, np.ndarray]:
        """``{position: pooled activations}`` for every read position the activations stage recorded."""
        positions = read_json(self.out / "activations" / "stage.json").get("positions", ["mean"])
        return {pos: self.acts(split, layer, pos) for pos in positions}

    def _model_key(self, *sections: str) -> str:
        """Cache key of a stage: model identity, input format, the data-defining sections and ``sections``.

        Stages later in the pipeline name every section of the stages before them, so a change
        upstream invalidates everything downstream.
        """
        from hedonic_neurons.cachekey import cache_key

        base = ("task", "seed", "max_length", "data", "layers")
        return cache_key(
            [self.nm.identity, self.nm.input_format.to_dict(), self.cfg.section_key(*base, *sections)]
        )

    def _partitions_key(self, *sections: str) -> str:
        """Cache key of the partitions stage (and, with ``"tracking"``, of tracking): φ, the game,
        the baselines and, of the ``evaluate`` section, only ``evaluate.seeds``, the one setting
        they read, so changing an evaluation knob (null size, selection rule, ...) re-runs the
        evaluation but reuses the partitions and their tracking."""
        from hedonic_neurons.cachekey import cache_key

        return cache_key(
            [self._model_key("phi", "game", "baselines", *sections), list(self.cfg.evaluate.seeds)]
        )

    @property
    def methods(self) -> list[str]:
        """The partitions the run compares: ``hedonic-<metric>`` per φ metric, then the baselines."""
        return [hedonic_method(m) for m in self.cfg.phi.metrics] + list(self.cfg.baselines)

    @property
    def reference_method(self) -> str:
        """The partition whose selected coalitions fix the sizes every method is matched to: the
        'given' partition when the run has one (a ground truth, or the partition asked about),
        else the hedonic PAS partition (the first metric's when PAS is not computed)."""
        if "given" in self.cfg.baselines:
            return "given"
        return hedonic_method(self.synergy_metric)

    def partition_path(self, method: str, seed: int, layer: int) -> Path:
        return self.out / "partitions" / method / f"seed{seed}" / f"layer{layer}.json"

    def coalitions(self, method: str, seed: int, layer: int) -> list[list[int]]:
        """The coalitions of a written partition."""
        return self.partition(method, seed, layer).coalitions

    def partition(self, method: str, seed: int, layer: int) -> Any:
        """A written partition (:class:`~hedonic_neurons.partition.Partition`)."""
        from hedonic_neurons.partition import Partition

        return Partition.load(self.partition_path(method, seed, layer))

    def stage_partitions(self) -> None:
        """Every method's partition of every layer and seed, through the one dispatch
        (:func:`~hedonic_neurons.partition.partition_layer`)."""
        from hedonic_neurons.baselines.inputs import input_rows
        from hedonic_neurons.partition import LayerInputs

        cfg = self.cfg
        g = cfg.game
        stage = Stage(self.out / "partitions", self._partitions_key())
        if stage.done():
            return
        import shutil

        shutil.rmtree(self.out / "partitions", ignore_errors=True)  # never reuse partitions of another config
        n_clusters = math.ceil(math.sqrt(self.nm.n_neurons))
        for layer in cfg.layers:
            _log(f"partitions of layer {layer}")
            partition_layer(
                layer,
                phi=lambda metric, layer=layer: self.phi(metric, layer),
                phi_se=lambda metric, layer=layer: self.phi(metric, layer, with_se=True),  # game.min_z
                metrics=cfg.phi.metrics,
                baselines=cfg.baselines,
                seeds=cfg.evaluate.seeds,
                game=g,
                path=lambda method, seed, layer=layer: self.partition_path(method, seed, layer),
                rows=lambda layer=layer: input_rows(self.nm.mlp_weights(layer)),
                profiles=lambda layer=layer: self.acts("train", layer).T,
                n_clusters=n_clusters,
                settings=cfg.baseline_settings(layer),  # the 'given' baseline's file of this layer
                inputs=LayerInputs(n_neurons=self.nm.n_neurons),
            )
        stage.finish()

    def stage_tracking(self) -> None:
        """Track every method's partitions (seed ``evaluate.seeds[0]``) through the model: the
        library calls of ``hedonic track`` (:func:`~hedonic_neurons.tracking.run.track_inputs` on
        the train pairs, then :func:`~hedonic_neurons.tracking.run.track_model`), with the
        settings of the ``tracking`` section, so both write the same files on the same inputs."""
        from hedonic_neurons.tracking.run import TrackSettings, layer_pairs, track_inputs, track_model
        from hedonic_neurons.tracking.transitions import transition_table

        cfg = self.cfg
        settings = TrackSettings.from_config(cfg.tracking, cfg.seed)
        self.transitions: dict[str, list[dict]] = {}
        if not layer_pairs(cfg.layers, settings.horizon):
            self.notes.append(
                f"No two analysed layers are within {settings.horizon} of each other, so nothing was tracked."
            )
            return
        seed = cfg.evaluate.seeds[0]
        inputs = None  # E|a_p| and the flow's inputs: computed once, for the first method to track
        for method in self.methods:
            folder = self.out / "tracking" / method
            stage = Stage(folder, self._partitions_key("tracking"))
            if not stage.done():
                _log(f"tracking {method}")
                if inputs is None:
                    inputs = track_inputs(
                        self.nm, self.train, cfg.layers, settings,
                        batch_size=cfg.phi.batch_size, data=self.train_desc,
                    )  # fmt: skip
                parts = {layer: self.coalitions(method, seed, layer) for layer in cfg.layers}
                paths = {str(layer): str(self.partition_path(method, seed, layer)) for layer in cfg.layers}
                results, _ = track_model(
                    self.nm,
                    parts,
                    inputs,
                    settings,
                    folder,
                    method=method,
                    meta={"partitions": paths, "seed": seed},
                    bundle_dir=self.out / "tracking",
                )
                rows = [
                    {
                        "source_layer": r.source_layer,
                        "target_layer": r.target_layer,
                        "percent": dict(r.percentages),
                        **row,
                        "link_list": r.to_dict()["links"],
                    }
                    for r, row in zip(results, transition_table(results, method=method))
                ]
                stage.finish(rows=rows)
            self.transitions[method] = read_json(stage.marker)["rows"]

    def stage_evaluate(self) -> None:
        from tqdm.auto import tqdm

        from hedonic_neurons.evaluate.extrinsic import ExtrinsicData, extrinsic_rows

        cfg = self.cfg
        ev = cfg.evaluate
        path = self.out / "evaluation.json"
        stage = self._evaluation_stage()
        if stage.done():
            self.evaluation = read_json(path)
            return
        y_train = task_values(cfg.task, self.train, self.train_qrels)
        y_test = task_values(cfg.task, self.test, self.test_qrels)
        data = ExtrinsicData.build(cfg.task, self.train, self.test, y_train, y_test, self.test_qrels)
        phi_metric = self.synergy_metric
        ev_cfg, modes = self._ablation_config()
        so_far = _Evaluated.empty(ev.evaluations)
        rows, new_rows, design, ceilings, resampled = (
            so_far.rows, so_far.evaluations, so_far.design, so_far.ceilings, so_far.resampled
        )  # fmt: skip
        if ev.phi_resamples:
            self.stage_phi_resample()
        bar = tqdm(  # ablation passes over the test pairs dominate: count pairs, layer by layer
            total=len(cfg.layers) * len(self.test) * len(modes),
            desc="evaluate",
            unit="pair",
            disable=not self.progress,
        )
        for layer in cfg.layers:
            bar.set_postfix(layer=layer)
            # each finished layer is saved, so a killed run resumes at the first unfinished one
            layer_path = _layer_file(self.out, layer)
            saved = _saved_layer(stage, layer)
            if saved is not None:
                so_far.add(saved, resampling=bool(ev.phi_resamples))
                bar.update(len(self.test) * len(modes))
                continue
            before = (len(rows), len(ceilings), {name: len(got) for name, got in new_rows.items()})
            phis = {m: self.phi(m, layer) for m in cfg.phi.metrics}
            phi = phis[phi_metric]
            # pooled activations at every read position recorded (mean, readout, query)
            at_train, at_test = self.acts_at("train", layer), self.acts_at("test", layer)
            a_train = at_train["mean"]
            # the ceiling beside every method's macro-feature ridge: all neurons, top top_k PCs
            from hedonic_neurons.evaluate.extrinsic import ceiling_rows

            ceilings.extend(ceiling_rows(layer, data, at_train, at_test, n_pcs=ev.top_k, seed=ev.seeds[0]))
            # the evaluations that can tell a coalition from chance (hedonic_neurons.evaluate.layer)
            # with φ resampling a layer is saved only after its resampling; its main evaluation
            # (the longer part) is kept in between, so a run killed during the resampling resumes
            # after it (a pickle: the context holds the ablated outputs the resampling extends)
            main_path = stage.folder / f"layer{layer}.main.pkl"
            done = _read_layer_main(main_path, stage.key) if ev.phi_resamples else None
            if done is not None:
                results, ctx, extr = done
                ctx = replace(ctx, nm=self.nm)
                _log(f"layer {layer}: main evaluation reused from {main_path.name}")
                bar.update(len(self.test) * len(modes))
            else:
                from hedonic_neurons.evaluate.layer import evaluate_layer

                results, ctx = evaluate_layer(
                    self.nm,
                    layer,
                    {seed: {m: self.coalitions(m, seed, layer) for m in self.methods} for seed in ev.seeds},
                    reference_method=self.reference_method,
                    config=ev_cfg,
                    task=cfg.task,
                    test=self.test,
                    y_test=y_test,
                    qrels=self.test_qrels,
                    train=self.train,
                    phi=phi,
                    reference=self.nm.reference_mlp_weights(layer) if self.nm.has_reference else None,
                    means=a_train.mean(0) if "mean" in modes else None,
                    donors=a_train if "resample" in modes else None,
                    seed=cfg.seed,
                    batch_size=cfg.phi.batch_size,
                    progress=bar,
                    phi_source=(
                        f"{cfg.phi.readout}-readout PAS ({cfg.phi.pas_mode})"
                        if phi_metric == "pas"
                        else phi_metric.upper()
                    ),
                )
                # the paper's per-coalition measures (hedonic_neurons.evaluate.extrinsic), on the coalitions
                # the evaluation selected and from its ablated outputs (first ablation mode): no extra pass
                extr = extrinsic_rows(
                    self.nm,
                    layer,
                    {seed: {m: self.coalitions(m, seed, layer) for m in self.methods} for seed in ev.seeds},
                    data,
                    reference_method=self.reference_method,
                    phis=phis,
                    phi_metric=phi_metric,
                    acts_train=at_train,
                    acts_test=at_test,
                    k=cfg.game.k,
                    top_k=ev.top_k,
                    min_size=ev.min_size,
                    certify_samples=ev.certify_samples,
                    batch_size=cfg.phi.batch_size,
                    progress=bar,
                    selected=ctx.chosen,
                    selected_skipped=ctx.skipped,
                    outputs=ctx.outputs[modes[0]],
                )
                if ev.phi_resamples:
                    _write_layer_main(main_path, stage.key, results, ctx, extr)
            for name, got in results.items():
                new_rows[name].extend(got)
            rows.extend(extr)
            if ev.phi_resamples:  # φ-data resampling: re-solve, re-select, re-measure (evaluate/resample.py)
                _log(f"φ resampling of layer {layer}: {ev.phi_resamples} re-solved partitions per method")
                t_resample = time.perf_counter()
                resampled.append(
                    self.resample_layer(
                        layer, ctx, ev_cfg, a_train.mean(0) if "mean" in modes else None,
                        a_train if "resample" in modes else None, data=data, acts_train=at_train,
                        acts_test=at_test, rows=new_rows,
                    )
                )  # fmt: skip
            out0 = next(iter(ctx.outputs.values()))
            design.append(
                {
                    "layer": layer,
                    "targets": {str(k): v for k, v in ctx.targets.items()},
                    "null_sets": len(out0.null_sets),
                    "null_bins": sorted(set(out0.null_bins.tolist())),
                    "null_pairs": int(out0.sub.size),
                    "null_queries": int(ctx.n_sub_queries),
                    "test_queries": int(ctx.n_queries),
                    "single_neurons": len(out0.singles),
                    **{f"{k}": v for k, v in ctx.timing.items()},
                    **({"phi_resample": time.perf_counter() - t_resample} if ev.phi_resamples else {}),
                }
            )
            write_json(
                layer_path,
                {
                    "key": stage.key,
                    "rows": rows[before[0] :],
                    "ceilings": ceilings[before[1] :],
                    "evaluations": {name: got[before[2][name] :] for name, got in new_rows.items()},
                    "design": design[-1],
                    "resampled": resampled[-1] if ev.phi_resamples else None,
                },
            )
            main_path.unlink(missing_ok=True)
        bar.close()
        self.evaluation = self._evaluation_doc(so_far, modes)
        if ev.phi_resamples:  # φ-data resampling: stability, consensus, per-resample effects
            write_json(self.out / "resample" / "stability.json", self.evaluation["phi_resampling"])
        write_json(path, self.evaluation)
        stage.finish()

    def _evaluation_stage(self) -> Stage:
        return Stage(self.out / "evaluation", self._model_key("phi", "game", "baselines", "evaluate"))

    @property
    def synergy_metric(self) -> str:
        """The φ every method's synergy, certificate and evaluation read: PAS when computed."""
        metrics = self.cfg.phi.metrics
        return "pas" if "pas" in metrics else metrics[0]

    def _ablation_config(self) -> tuple[Any, list[str]]:
        """(evaluate section, ablation modes) as the evaluation runs them: without reference
        weights (no adapter, no reference checkpoint) zero ablation stands in for reference."""
        ev = self.cfg.evaluate
        modes = list(ev.ablation_modes)
        if self.nm.has_reference or "reference" not in modes:
            return ev, modes
        modes = list(dict.fromkeys("zero" if m == "reference" else m for m in modes))
        return ev.model_copy(update={"ablation_modes": modes}), modes

    def _evaluation_doc(self, done: _Evaluated, modes: list[str]) -> dict[str, Any]:
        """The evaluation (``evaluation.json``'s content) of the layers in ``done``."""
        cfg = self.cfg
        doc: dict[str, Any] = {
            "rows": done.rows,
            "phi_for_synergy_and_certificate": self.synergy_metric,
            "evaluations": done.evaluations,
            "design": done.design,
            "ridge_ceiling": done.ceilings,
            "ablation_modes": modes,
        }
        if cfg.evaluate.phi_resamples:
            from hedonic_neurons.evaluate.resample import CONSENSUS_THRESHOLD

            doc["phi_resampling"] = {
                "resamples": cfg.evaluate.phi_resamples,
                "seed": cfg.seed,
                "consensus_threshold": CONSENSUS_THRESHOLD,
                "subset_sizes": {m: [int(s.size) for s in self.resample_subsets(m)] for m in cfg.phi.metrics},
                "layers": done.resampled,
            }
        return doc

    def _nothing_finished(self) -> ConfigError:
        return ConfigError(
            f"nothing to report yet: no layer of {self.out} has finished its evaluation with this "
            f"config (layers {self.cfg.layers}; a finished layer is saved as evaluation/layer<L>.json); "
            "run 'hedonic run' without --report-finished to evaluate"
        )

    def finished_evaluation(self) -> tuple[dict[str, Any], list[int]]:
        """(evaluation, layers) of the layers whose evaluation a run of this config has saved, in
        order up to the first unfinished one (layers are evaluated in order). Raises
        :class:`ConfigError` when no layer has finished."""
        cfg = self.cfg
        stage = self._evaluation_stage()
        done = _Evaluated.empty(cfg.evaluate.evaluations)
        layers: list[int] = []
        for layer in cfg.layers:
            saved = _saved_layer(stage, layer)
            if saved is None:
                break
            done.add(saved, resampling=bool(cfg.evaluate.phi_resamples))
            layers.append(layer)
        if not layers:
            raise self._nothing_finished()
        return self._evaluation_doc(done, self._ablation_config()[1]), layers

    def stage_report(self, layers: list[int] | None = None) -> None:
        """report.md, results.json, figures/ and report.html from ``self.evaluation``. ``layers``:
        the layers it covers when not every configured layer (a partial report, marked so)."""
        from hedonic_neurons.artifacts import size_summary
        from hedonic_neurons.evaluate.stats import mean_ci
        from hedonic_neurons.report.build import write_report

        cfg = self.cfg
        layers = list(cfg.layers) if layers is None else layers
        partial = layers != list(cfg.layers)
        rows = self.evaluation["rows"]

        def per_seed(method: str, metric: str) -> list[float]:
            vals = []
            for seed in cfg.evaluate.seeds:
                xs = [r[metric] for r in rows if r["method"] == method and r["seed"] == seed and metric in r]
                vals.append(float(np.mean(xs)) if xs else float("nan"))
            return vals

        extrinsic = [
            {
                "method": m,
                **{k: mean_ci(per_seed(m, k)).to_dict() for k in EXTRINSIC},
            }
            for m in self.methods
        ]
        from hedonic_neurons.evaluate.extrinsic import position_tables

        # ridge (with its ceiling) and alignment at every read position
        ridge, alignment = position_tables(
            rows, self.methods, cfg.evaluate.seeds, self.evaluation.get("ridge_ceiling", [])
        )
        resampling = self.evaluation.get("phi_resampling")  # φ-data resampling (evaluate.phi_resamples)
        if resampling:
            from hedonic_neurons.evaluate.resample import table_phi_intervals

            table_phi_intervals(extrinsic, ridge, alignment, resampling["layers"], seed=cfg.seed)
        sizes = {}
        for m in self.methods:
            sizes[m] = {}
            for layer in layers:
                coal = self.coalitions(m, cfg.evaluate.seeds[0], layer)
                sizes[m][str(layer)] = {**size_summary(coal), "all_sizes": [len(c) for c in coal]}
        banner = []
        if partial:
            banner.append(
                f"PARTIAL RUN: the evaluation has finished layers {layers} of {list(cfg.layers)}; every "
                f"figure below is over layers {layers} only. Rerun 'hedonic run' on this config to "
                "evaluate the rest (finished layers are kept)."
            )
        if "demo" in (cfg.data.train, cfg.data.test):
            banner.append(
                "DEMO CORPUS: Python standard-library docstrings, not MS MARCO. These numbers show the "
                "pipeline working end to end; they are not the paper's results."
            )
        notes = list(self.notes)
        notes.append(
            f"Train pairs: {len(self.train)} ({self.train_desc}); test pairs: {len(self.test)} ({self.test_desc})."
        )
        if cfg.game.solver == "exact":
            notes.append(
                "Hedonic partitions come from exact Top Covering, which is deterministic: their intervals "
                "are zero except where a figure itself samples (the certificate)."
                + (  # φ-data resampling (evaluate.phi_resamples)
                    " Every hedonic row's <figure>_phi interval adds the variance of re-solving on "
                    f"{cfg.evaluate.phi_resamples} disjoint subsets of the φ data to that of the queries."
                    if cfg.evaluate.phi_resamples
                    else ""
                )
            )
        notes.append(
            f"Every figure is the mean over seeds {cfg.evaluate.seeds} of the mean over layers {layers} and the "
            f"top-{cfg.evaluate.top_k} coalitions (size ≥ {cfg.evaluate.min_size}); ± is the 95% t-interval half-width."
        )
        notes.append(
            f"Baselines are size-matched to {self.reference_method}. Mean pairwise φ uses the "
            f"{self.evaluation['phi_for_synergy_and_certificate'].upper()} φ for every method; the blocking-rate bound "
            "(uniform coalitions of 2-10 neurons, Clopper-Pearson at 95%) uses each hedonic partition's own φ and "
            f"the {self.evaluation['phi_for_synergy_and_certificate'].upper()} φ for baselines."
        )
        from hedonic_neurons.evaluate.base import EVALUATIONS
        from hedonic_neurons.evaluate.layer import design_sentences

        tables: dict[str, list[dict[str, Any]]] = {}
        summary: list[str] = []
        for name, got in self.evaluation.get("evaluations", {}).items():
            evaluation = EVALUATIONS.get(name)()
            tables.update(evaluation.tables(got))
            summary.extend(evaluation.summary(got))
        design = self.evaluation.get("design", [])
        summary.extend(design_sentences(design, cfg.evaluate, self.reference_method))
        if resampling:
            from hedonic_neurons.evaluate.resample import STABILITY_TABLE, stability_sentences

            stab_rows = [r for d in resampling["layers"] for r in d["stability"]]
            tables[STABILITY_TABLE] = stab_rows
            summary.extend(stability_sentences(stab_rows, resampling["consensus_threshold"]))
        results = {
            "title": f"hedonic-neurons: {cfg.name}",
            "banner": banner,
            "model": cfg.model,
            "task": cfg.task,
            "layers": layers,
            **({"layers_configured": list(cfg.layers)} if partial else {}),
            "seeds": cfg.evaluate.seeds,
            "table_extrinsic": extrinsic,
            "table_ridge": ridge,
            "table_alignment": alignment,
            "evaluation_tables": tables,
            "summary": summary,
            "sizes": sizes,
            "transitions": getattr(self, "transitions", {}),
            "sankey": _first_sankey(self.out, self.methods),
            "finetune": getattr(self, "finetune_metrics", None),
            "config": cfg.model_dump(mode="json"),
            "notes": notes,
            "provenance": provenance(model=self.nm.identity),
        }
        results["explorer"] = self.explorer()
        layer = cfg.layers[0]
        phi = self.phi(self.evaluation["phi_for_synergy_and_certificate"], layer)
        phi_maps = {
            f"{m}, layer {layer}": (phi, self.coalitions(m, cfg.evaluate.seeds[0], layer))
            for m in self.methods
            if m.startswith("hedonic")
        }
        write_report(results, self.out, phi_maps=phi_maps)
        _log(f"report: {self.out / 'report.html'}")

    def explorer(self) -> dict[str, list[dict[str, Any]]]:
        """The report's coalition explorer (cached in ``explorer/``): at the first analysed layer,
        for every method, the ``evaluate.explorer_coalitions`` coalitions the evaluation's
        selection rule ranks first (the largest ones when none is in the size band), each with its
        top-activating test inputs and per-token activations (:func:`~hedonic_neurons.explore.coalition_summaries`)."""
        from hedonic_neurons.evaluate.select import select_coalitions
        from hedonic_neurons.evaluate.stats import top_coalitions
        from hedonic_neurons.explore import explorer_section

        cfg, ev = self.cfg, self.cfg.evaluate
        if ev.explorer_coalitions == 0:
            return {}
        stage = Stage(self.out / "explorer", self._model_key("phi", "game", "baselines", "evaluate"))
        if stage.done():
            return read_json(stage.marker)["explorer"]
        layer, seed = cfg.layers[0], ev.seeds[0]
        phi = self.phi(self.evaluation["phi_for_synergy_and_certificate"], layer)
        texts = self.test[: ev.explorer_inputs]
        found: dict[str, list[dict[str, Any]]] = {}
        for method in self.methods:
            part = self.coalitions(method, seed, layer)
            chosen = select_coalitions(
                part, phi, rule=ev.selection, k=ev.explorer_coalitions, band=tuple(ev.size_band)
            ) or top_coalitions(part, ev.explorer_coalitions, ev.min_size)
            if chosen:
                found.update(
                    explorer_section(
                        self.nm,
                        {method: part},
                        texts,
                        layer,
                        coalitions=chosen,
                        phi=phi,
                        batch_size=cfg.phi.batch_size,
                        out=self.out,
                    )
                )
        stage.finish(explorer=found)
        return found


def _first_sankey(out: Path, methods: Sequence[str]) -> str | None:
    for m in methods:
        if (out / "tracking" / m / "sankey.html").is_file():
            return f"tracking/{m}/sankey.html"
    return None


def run(
    cfg: RunConfig,
    out: str | Path,
    *,
    progress: bool = True,
    stop_after: str | None = None,
    source: str = "config",
    report_finished: bool = False,
) -> Path:
    """Run (or resume) the whole pipeline; returns the path of ``report.html`` (the output folder
    when ``stop_after`` names an earlier stage). ``report_finished``: report the layers whose
    evaluation has finished instead of evaluating the rest (:meth:`Pipeline.run`).

    Checks first (:func:`hedonic_neurons.validation.check_run`; ``source`` names the config in its
    messages), then holds the lock of ``out`` for the whole run: a second run on the same folder
    is refused with one line naming this one. A failure before any stage finished removes what
    the run created.
    """
    from hedonic_neurons.locking import locked_output
    from hedonic_neurons.validation import check_run

    cfg = check_run(cfg, out, stop_after, source=source)
    if report_finished and stop_after is not None:
        raise ConfigError("--report-finished writes the report; it cannot be combined with --stop-after")
    with locked_output(out, command=f"hedonic run ({source})" if source != "config" else None):
        return Pipeline(cfg, out, progress=progress).run(
            stop_after=stop_after, report_finished=report_finished
        )


#: ``hedonic demo``: MiniLM on the built-in demo corpus, sized to finish in minutes on 2 CPU cores.
DEMO_CONFIG: dict[str, Any] = {
    "name": "demo (MiniLM, CQTR, demo corpus)",
    "model": "minilm",
    "task": "cqtr",
    "layers": [2, 3],
    "max_length": 128,
    "data": {"train": "demo", "test": "demo", "max_train_pairs": 1200, "max_test_pairs": 100},
    # a short fine-tune needs a high rate to move the MLP weights (docs/finetune-minilm.md)
    "finetune": {"epochs": 1, "learning_rate": 1e-3, "batch_size": 16},
    # taylor: on MiniLM's tanh-pooler head exact local PAS costs 8-14 s per input on 2 cores
    # (docs/benchmarks.md); taylor is about 1x a forward pass and agrees with exact (r = 1.00)
    "phi": {"metrics": ["oca", "pas"], "pas_mode": "taylor", "max_inputs": 256, "batch_size": 16},
    # the random-set null and the single-neuron ablations on a smaller shared subsample keep the
    # demo's evaluation to minutes on a laptop
    "evaluate": {
        "top_k": 5,
        "seeds": [0, 1, 2],
        "certify_samples": 5000,
        "null_pairs": 32,
        "synergy_pairs": 8,
    },
}


def register(app: Any) -> None:
    """``hedonic run`` and ``hedonic demo``."""
    import typer

    @app.command("run")
    def run_cmd(
        config: Path = typer.Argument(..., help="YAML config (see configs/ for examples)."),
        out: Path = typer.Option(None, "--out", help="Output folder (default: runs/<config name>)."),
        stop_after: str = typer.Option(
            None, "--stop-after", help=f"Stop after this stage ({', '.join(RUN_STAGES)})."
        ),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
        report_finished: bool = typer.Option(
            False,
            "--report-finished",
            help="Write the report from the layers whose evaluation has finished (a stopped run), "
            "marked partial, without evaluating the rest.",
        ),
    ) -> None:
        """Run every stage (fine-tune, φ, partitions, tracking, evaluation, report); resumes a killed run."""
        from hedonic_neurons.config import load_config
        from hedonic_neurons.validation import check_stage

        check_stage(stop_after)
        cfg = load_config(config)
        folder = out or Path("runs") / Path(config).stem
        result = run(
            cfg, folder, progress=not quiet, stop_after=stop_after, source=str(config),
            report_finished=report_finished,
        )  # fmt: skip
        if stop_after is not None and stop_after != "report":
            typer.echo(
                f"stopped after {stop_after}; outputs in {result} (rerun without --stop-after to go on)"
            )
        else:
            typer.echo(f"report: {result}")

    @app.command("demo")
    def demo_cmd(
        out: Path = typer.Option(Path("runs/demo"), "--out", help="Output folder."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
    ) -> None:
        """The whole method on MiniLM and the built-in demo corpus (no network, no data files)."""
        from hedonic_neurons.config import load_config

        report = run(load_config(None, DEMO_CONFIG), out, progress=not quiet)
        typer.echo(f"demo finished; open the report: {report}")


def _write_layer_main(path: Path, key: Any, results: Any, ctx: Any, extr: Any) -> None:
    """Keep one layer's main evaluation (its rows, its context without the model, the extrinsic
    rows) until the layer's φ resampling is saved; written atomically."""
    import pickle

    from hedonic_neurons.artifacts import atomic_write_bytes

    atomic_write_bytes(path, pickle.dumps({"key": key, "main": (results, replace(ctx, nm=None), extr)}))


def _read_layer_main(path: Path, key: Any) -> Any:
    """What :func:`_write_layer_main` kept, or None (absent, unreadable, or another stage key)."""
    import pickle

    if not path.is_file():
        return None
    try:
        with open(path, "rb") as fh:
            got = pickle.load(fh)
    except Exception:  # a partial or foreign file: the layer's evaluation is redone
        return None
    return got["main"] if isinstance(got, dict) and got.get("key") == key else None
