"""``hedonic finetune``: LoRA-fine-tune a one-logit reranker for one task and save the adapter.

:func:`run_finetune` is the whole command: data, model, training
(:func:`hedonic_neurons.models.training.train`), evaluation on the validation split and on the
out-of-domain test set (TREC DL 2019), saved adapter + ``finetune.json`` (task, data, splits,
hyper-parameters, input format, LoRA settings, provenance) + ``metrics.json``. The
hyper-parameters are :class:`hedonic_neurons.config.FinetuneConfig`; their defaults are the
command's defaults. :func:`register` adds the command to the ``hedonic`` app.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hedonic_neurons.errors import ConfigError, HedonicNote, arg

if TYPE_CHECKING:  # torch, scikit-learn: keep `hedonic --help` fast
    from hedonic_neurons.data import Pair
    from hedonic_neurons.models.training import Encode

FORMAT = "hedonic-neurons/finetune/v1"


def load_for_finetune(
    name_or_path: str, *, max_length: int | None = None, template: str | None = None
) -> tuple[Any, Encode, dict, dict]:
    """(HF model with a one-logit head, encode function, input format dict, identity dict),
    loaded by :func:`hedonic_neurons.models.load_model`.

    ``template``: the decoder input template (default
    :data:`~hedonic_neurons.models.inputs.DEFAULT_TEMPLATE`; encoders use the tokenizer's pair
    encoding and ignore it)."""
    from hedonic_neurons.models.inputs import InputFormat
    from hedonic_neurons.models.loading import load_model

    default = InputFormat()
    fmt = replace(default, max_length=max_length or default.max_length, template=template or default.template)
    with warnings.catch_warnings():  # the head is initialised at random on purpose: it is trained next
        warnings.filterwarnings("ignore", message=".*initialised at random", category=HedonicNote)
        nm = load_model(name_or_path, head="classification", input_format=fmt)
    return nm.model, nm.encode, nm.input_format.to_dict(), dict(nm.identity)


# ---------------------------------------------------------------------------------------- run

TRAIN_DATASETS = ("demo", "msmarco-dev")  # named datasets with a train split
TEST_DATASETS = ("dl19", "demo")  # named datasets with a test split


def check_finetune(
    model: str,
    *,
    task: str,
    out: str | os.PathLike,
    data: str,
    test: str | None,
    data_root: str | None = None,
    layers: str | Sequence[int] | None = None,
    check_model: bool = True,
    **hyper: Any,
) -> list[int] | None:
    """Everything ``hedonic finetune`` can check before loading the model or any data: task,
    output folder, dataset names (and the shared data folder), the model (offline first), the
    LoRA layers against the model's config, the hyper-parameters. Returns the layers (None when
    the model is not checked)."""
    from hedonic_neurons import validation
    from hedonic_neurons.config import FinetuneConfig
    from hedonic_neurons.data.tasks import TASKS
    from hedonic_neurons.models.training import parse_layers

    validation.check_choice(task, TASKS, arg("task"))
    validation.check_output_dir(out, arg("out"))
    validation.check_dataset(data, arg("data"), allowed=TRAIN_DATASETS, root=data_root)
    if test is not None and data != "demo":
        validation.check_dataset(test, arg("test"), allowed=(*TEST_DATASETS, "none"), root=data_root)
    FinetuneConfig(task=task, layers=None, **hyper)  # the hyper-parameters, one line if one is wrong
    if not check_model:
        return None
    facts = validation.model_facts(model, "MODEL" if arg("model").startswith("--") else "model")
    if facts.n_layers is None:
        return None
    try:
        return parse_layers(layers, facts.n_layers)
    except ConfigError as exc:
        raise ConfigError(f"{arg('layers')}: {exc}") from None


def run_finetune(
    model: str,
    *,
    task: str,
    out: str | os.PathLike,
    data: str = "msmarco-dev",
    test: str | None = "dl19",
    data_root: str | None = None,
    layers: str | Sequence[int] | None = None,
    max_length: int | None = None,
    max_train_queries: int | None = None,
    max_eval_queries: int | None = None,
    max_val_queries: int | None = None,
    test_depth: int | None = None,
    template: str | None = None,
    progress: bool = True,
    loader: Callable[..., tuple[Any, Encode, dict, dict]] | None = None,
    **hyper: Any,
) -> dict[str, Any]:
    """Fine-tune ``model`` for ``task`` on ``data`` (train split), evaluate on its ``val`` split
    and on ``test`` (a dataset name; ``None``: none), and write ``out/adapter``,
    ``out/finetune.json`` and ``out/metrics.json``. Returns the metrics.

    ``data``: a dataset name (``msmarco-dev``, ``demo``); for ``demo`` the test set is the demo's
    own ``test`` split. ``max_train_queries`` / ``max_eval_queries`` keep the first queries (in
    sorted qid order) of each split, to fit a time budget; they are recorded. ``max_val_queries``
    limits the validation split only (default: ``max_eval_queries``; 0: no validation).
    ``test_depth`` keeps the first N candidates of each test query in file order (the first
    stage's ranking: reranking the BM25 top-N), to fit a time budget; nDCG@10 of the first stage is
    unchanged for N >= 10. ``template``: decoder input template (recorded in ``finetune.json``,
    where ``hedonic run`` reads it back for the adapter).
    """
    from hedonic_neurons.locking import locked_output

    check_finetune(
        model, task=task, out=out, data=data, test=test, data_root=data_root, layers=layers,
        check_model=loader is None, **hyper,
    )  # fmt: skip
    # a second run into `out` is refused; a failed one leaves nothing behind
    with locked_output(out, resumable=None):
        return _run_finetune(
            model, task=task, out=out, data=data, test=test, data_root=data_root, layers=layers,
            max_length=max_length, max_train_queries=max_train_queries, max_eval_queries=max_eval_queries,
            max_val_queries=max_val_queries, test_depth=test_depth, template=template, progress=progress,
            loader=loader, **hyper,
        )  # fmt: skip


def _run_finetune(
    model: str,
    *,
    task: str,
    out: str | os.PathLike,
    data: str,
    test: str | None,
    data_root: str | None,
    layers: str | Sequence[int] | None,
    max_length: int | None,
    max_train_queries: int | None,
    max_eval_queries: int | None,
    max_val_queries: int | None,
    test_depth: int | None,
    template: str | None,
    progress: bool,
    loader: Callable[..., tuple[Any, Encode, dict, dict]] | None,
    **hyper: Any,
) -> dict[str, Any]:
    import torch

    from hedonic_neurons.artifacts import provenance, write_json
    from hedonic_neurons.config import FinetuneConfig
    from hedonic_neurons.data import load_dataset, top_per_query
    from hedonic_neurons.models.adapters import n_layers
    from hedonic_neurons.models.training import add_lora, evaluate, lora_summary, parse_layers, predict, train

    out = Path(out)
    seed = int(hyper.get("seed", 0))
    dataset = load_dataset(data, data_root, seed=seed)

    def subset(ds, split: str, limit: int | None) -> tuple[list[Pair], list[str]]:
        qids = ds.splits[split][:limit] if limit else ds.splits[split]
        keep = set(qids)
        return [p for p in ds.pairs if p.qid in keep], list(qids)

    train_pairs, train_qids = subset(dataset, "train", max_train_queries)
    val_limit = max_eval_queries if max_val_queries is None else max_val_queries
    val_pairs, val_qids = subset(dataset, "val", val_limit) if val_limit != 0 else ([], [])
    if data == "demo" or test is None:
        test_ds, test_split = (dataset, "test") if data == "demo" and test is not None else (None, None)
    else:
        test_ds, test_split = load_dataset(test, data_root), "test"
    test_pairs, test_qids = subset(test_ds, test_split, max_eval_queries) if test_ds else ([], [])
    if test_depth is not None:
        if test_depth < 1:
            raise ConfigError(f"{arg('test_depth')} must be >= 1 candidates per query, got {test_depth}")
        test_pairs = top_per_query(test_pairs, test_depth)

    hf_model, encode, input_format, identity = (loader or load_for_finetune)(
        model, max_length=max_length, template=template
    )
    torch.manual_seed(seed)
    chosen = parse_layers(layers, n_layers(hf_model))
    config = FinetuneConfig(task=task, layers=chosen, **hyper)
    peft_model = add_lora(
        hf_model,
        chosen,
        rank=config.rank,
        alpha=config.alpha,
        dropout=config.dropout,
        train_pooler=config.train_pooler,
    )
    log = train(peft_model, encode, train_pairs, config, qrels=dataset.qrels, progress=progress)

    metrics: dict[str, Any] = {"task": task}
    for name, pairs, qrels in (
        ("val", val_pairs, dataset.qrels),
        ("test", test_pairs, test_ds.qrels if test_ds else None),
    ):
        if pairs:
            start = time.perf_counter()
            scores = predict(peft_model, encode, pairs, batch_size=config.eval_batch_size, progress=progress)
            metrics[name] = {
                "dataset": dataset.name if name == "val" else test_ds.name,
                **evaluate(task, pairs, scores, qrels),
                "predict_seconds": round(time.perf_counter() - start, 1),
            }
    metrics["train_seconds"] = round(log["seconds"], 1)
    metrics["train_cpu_seconds"] = round(log["cpu_seconds"], 1)

    out.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(out / "adapter")
    record = {
        "format": FORMAT,
        "task": task,
        "model": identity,
        "data": {
            "train": {
                "dataset": dataset.name,
                "split": "train",
                "qids": train_qids,
                "n_pairs": len(train_pairs),
            },
            "val": {"dataset": dataset.name, "split": "val", "qids": val_qids, "n_pairs": len(val_pairs)},
            "test": {
                "dataset": test_ds.name,
                "split": test_split,
                "n_queries": len(test_qids),
                "n_pairs": len(test_pairs),
                "depth": test_depth,
            }
            if test_ds
            else None,
            "dataset": dataset.describe(),
            "max_train_queries": max_train_queries,
            "max_eval_queries": max_eval_queries,
            "max_val_queries": max_val_queries,
        },
        "hyperparameters": config.model_dump(),
        "lora": lora_summary(peft_model, chosen, config),
        "input_format": input_format,
        "training": {k: v for k, v in log.items() if k != "loss"},
        "loss_curve": log["loss"],
        "provenance": provenance(torch_threads=torch.get_num_threads()),
    }
    write_json(out / "finetune.json", record)
    write_json(out / "metrics.json", metrics)
    return metrics


# ----------------------------------------------------------------------------------------- CLI


def register(app: Any) -> None:
    """Add ``hedonic finetune`` to the typer app (its defaults are :class:`FinetuneConfig`'s)."""
    import typer

    from hedonic_neurons.config import FinetuneConfig

    d = {name: field.default for name, field in FinetuneConfig.model_fields.items()}

    @app.command()
    def finetune(
        model: str = typer.Argument(..., help="built-in name (minilm, smollm2), local path or hub id"),
        task: str = typer.Option(..., help="cqtr, mean_tf_l or rm"),
        out: Path = typer.Option(..., help="output folder (adapter/, finetune.json, metrics.json)"),
        data: str = typer.Option("msmarco-dev", help="training data: msmarco-dev or demo"),
        test: str = typer.Option("dl19", help="out-of-domain test set ('none' to skip; demo uses its own)"),
        data_root: str = typer.Option(None, help="shared IR data folder (default $HEDONIC_SHARED_IR)"),
        layers: str = typer.Option(
            "middle", help="LoRA layers: middle (7-14 of 32, scaled to the depth), all, '7-14', '1,3'"
        ),
        epochs: float = typer.Option(d["epochs"]),
        max_steps: int = typer.Option(d["max_steps"], help="number of optimiser steps (overrides --epochs)"),
        lr: float = typer.Option(d["learning_rate"], help="learning rate"),
        batch_size: int = typer.Option(d["batch_size"], help="sequences per step"),
        group_size: int = typer.Option(d["group_size"], help="rm: 1 positive + group_size-1 hard negatives"),
        rank: int = typer.Option(d["rank"]),
        alpha: float = typer.Option(d["alpha"]),
        dropout: float = typer.Option(d["dropout"], help="LoRA dropout"),
        model_dropout: float = typer.Option(
            d["model_dropout"], help="dropout of the model's own layers (default: as loaded)"
        ),
        pooler_init: str = typer.Option(
            d["pooler_init"], help="BERT pooler: keep, or standardize (tanh of z-scored CLS)"
        ),
        head_init: str = typer.Option(
            d["head_init"],
            help="final head linear: keep, or probe (ridge fit on the frozen model's features)",
        ),
        augment: float = typer.Option(
            d["augment"],
            help="cqtr/mean_tf_l: probability of cropping a training passage (target recomputed)",
        ),
        max_length: int = typer.Option(None, help="max tokens per input (default: the model's format)"),
        template: str = typer.Option(
            None,
            help="decoders: input template with {query} and {passage} "
            "(default 'query: {query} document: {passage}')",
        ),
        max_train_queries: int = typer.Option(None),
        max_eval_queries: int = typer.Option(None, help="keep the first N queries of val and test"),
        max_val_queries: int = typer.Option(None, help="keep the first N val queries (0: no validation)"),
        test_depth: int = typer.Option(None, help="keep each test query's first N candidates (BM25 top-N)"),
        head_lr: float = typer.Option(
            d["head_lr"], help="learning rate of the head (classifier, pooler); default --lr"
        ),
        train_pooler: bool = typer.Option(
            d["train_pooler"], help="BERT: train the pooler as part of the head"
        ),
        standardize: bool = typer.Option(
            d["standardize"], help="regression: MSE on the z-scored target, folded back"
        ),
        eval_batch_size: int = typer.Option(d["eval_batch_size"]),
        threads: int = typer.Option(None, help="torch CPU threads"),
        seed: int = typer.Option(d["seed"]),
    ) -> None:
        """LoRA-fine-tune a one-logit reranker for one task (MLP-only LoRA); writes adapter + metrics."""
        import json

        hyper = dict(
            head_lr=head_lr, train_pooler=train_pooler, standardize=standardize,
            eval_batch_size=eval_batch_size, epochs=epochs, max_steps=max_steps, lr=lr,
            batch_size=batch_size, group_size=group_size, rank=rank,
            alpha=alpha, dropout=dropout, model_dropout=model_dropout, pooler_init=pooler_init,
            head_init=head_init, augment=augment, seed=seed,
        )  # fmt: skip
        test_set = None if test == "none" else test
        check_finetune(
            model, task=task, out=out, data=data, test=test_set, data_root=data_root, layers=layers, **hyper
        )  # before torch is imported
        import torch

        if threads:
            torch.set_num_threads(threads)
        metrics = run_finetune(
            model,
            task=task,
            out=out,
            data=data,
            test=None if test == "none" else test,
            data_root=data_root,
            layers=layers,
            max_length=max_length,
            template=template,
            max_train_queries=max_train_queries,
            max_eval_queries=max_eval_queries,
            max_val_queries=max_val_queries,
            test_depth=test_depth,
            head_lr=head_lr,
            train_pooler=train_pooler,
            standardize=standardize,
            eval_batch_size=eval_batch_size,
            epochs=epochs,
            max_steps=max_steps,
            lr=lr,
            batch_size=batch_size,
            group_size=group_size,
            rank=rank,
            alpha=alpha,
            dropout=dropout,
            model_dropout=model_dropout,
            pooler_init=pooler_init,
            head_init=head_init,
            augment=augment,
            seed=seed,
        )
        typer.echo(json.dumps(metrics, indent=2))
        typer.echo(f"wrote {out / 'adapter'}, {out / 'finetune.json'}, {out / 'metrics.json'}")
