"""``hedonic collect``: pairwise synergy φ (OCA or PAS) of MLP layers over a dataset."""

from __future__ import annotations

import re
from pathlib import Path

import typer

from hedonic_neurons.errors import ConfigError


def parse_layers(text: str, n_layers: int) -> list[int]:
    """``"2,3,4"``, ``"2-4"``, ``"all"`` or a mix (``"0,5-7"``) -> sorted layer indices.

    Indices are checked later against the model (out of range is a one-line error); negative
    indices count from the end.
    """
    if text.strip().lower() == "all":
        return list(range(n_layers))
    out: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        span = re.fullmatch(r"(\d+)-(\d+)", part)
        try:
            out.update(range(int(span[1]), int(span[2]) + 1) if span else [int(part)])
        except ValueError:
            raise ConfigError(f"--layers '{text}': expected integers, ranges like 2-4, or 'all'") from None
    if not out:
        raise ConfigError(f"--layers '{text}' names no layer")
    return sorted(out)


def collect(
    model: str = typer.Argument(..., help="Built-in name (minilm, smollm2), local folder or hub id."),
    layers: str = typer.Option(..., "--layers", help="Layers: 2,3,4 or 2-4 or all."),
    out: Path = typer.Option(..., "--out", help="Output folder for phi_layer{L}.safetensors (+ .json)."),
    adapter: str | None = typer.Option(None, "--adapter", help="peft LoRA adapter folder (merged)."),
    reference: str | None = typer.Option(
        None,
        "--reference",
        help="Reference (pre-fine-tuning) checkpoint when MODEL is a full fine-tuned one.",
    ),
    metric: str = typer.Option(
        "oca",
        "--metric",
        help="A registered synergy metric (hedonic_neurons.synergy.METRICS): built in oca | pas.",
    ),
    mode: str = typer.Option("exact", "--mode", help="PAS: exact | taylor | grad-outer"),
    readout: str = typer.Option(
        "local",
        "--readout",
        help="PAS: local (head after the layer) | full | next-block (model above the layer)",
    ),
    ablation: str = typer.Option(
        "reference", "--ablation", help="PAS: reference (revert to pre-LoRA) | zero"
    ),
    data: str = typer.Option("demo", "--data", help="demo, a dataset name, or a top1000-style TSV."),
    max_pairs: int | None = typer.Option(
        None,
        "--max-pairs",
        help="PAS --readout full, or next-block --mode exact: number of neuron pairs (sampled with --seed).",
    ),
    max_inputs: int | None = typer.Option(
        None, "--max-inputs", help="Use the first N (query, passage) pairs (any metric)."
    ),
    batch_size: int = typer.Option(16, "--batch-size"),
    pooling: str = typer.Option("tokens", "--pooling", help="OCA: tokens | mean | last"),
    statistic: str = typer.Option(
        "corr", "--statistic", help="OCA: corr (Pearson correlation) | cov (covariance, as the public code)"
    ),
    seed: int = typer.Option(0, "--seed"),
    dtype: str | None = typer.Option(None, "--dtype", help="Model dtype (float32, bfloat16, ...)."),
    device: str | None = typer.Option(
        None, "--device", help="cpu, cuda, cuda:1 (default: cuda if available)."
    ),
    checkpoint_every: int = typer.Option(10, "--checkpoint-every", help="Batches between checkpoints."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Collect φ of LAYERS over the data and write one phi file per layer (resumable; torchrun-able)."""
    from hedonic_neurons import validation
    from hedonic_neurons.locking import locked_output
    from hedonic_neurons.synergy.collect import CollectSettings

    settings = CollectSettings(
        metric=metric,
        mode=mode,
        readout=readout,
        ablation=ablation,
        pooling=pooling,
        statistic=statistic,
        batch_size=batch_size,
        max_inputs=max_inputs,
        max_pairs=max_pairs,
        seed=seed,
    ).check()
    if checkpoint_every < 1:
        raise ConfigError(f"--checkpoint-every must be a positive integer, got {checkpoint_every}")
    # everything that can be checked without loading the model, before any work
    validation.check_output_dir(out)
    facts = validation.check_model_inputs(
        model, adapter=adapter, reference=reference, dtype=dtype, device=device
    )
    chosen = validation.check_layers(validation.parse_layers(layers, facts.n_layers), facts, "--layers")
    pairs = validation.read_pairs(data, "--data")
    validation.check_sample_count(
        settings.metric, settings.pooling, min(len(pairs), max_inputs or len(pairs)), "--max-inputs"
    )
    from hedonic_neurons.models import load_model  # torch: only once the checks have passed
    from hedonic_neurons.synergy.collect import collect as run_collect
    from hedonic_neurons.synergy.distributed import process_group

    with locked_output(out), process_group() as world:
        validation.check_phi_folder(out)
        nm = load_model(
            model, adapter=adapter, reference=reference, dtype=dtype, device=device or world.device
        )
        paths = run_collect(
            nm,
            pairs,
            chosen,
            settings,
            out,
            data=str(data),
            world=world,
            checkpoint_every=checkpoint_every,
            progress=progress,
        )
        if world.is_main:
            for path in paths:
                typer.echo(f"wrote {path}")


def register(app: typer.Typer) -> None:
    """Register ``hedonic collect`` on the main app."""
    app.command("collect")(collect)
