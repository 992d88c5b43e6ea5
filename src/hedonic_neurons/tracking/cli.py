"""``hedonic track`` (cross-layer tracking); ``hedonic baseline`` is in
:mod:`hedonic_neurons.baselines.cli`.

The command functions only load inputs and write files; the work is in
:mod:`hedonic_neurons.tracking`. torch / transformers are
imported inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from hedonic_neurons.errors import ConfigError


def _track_checked_first(command: Any) -> Any:
    """``hedonic track`` with every check that needs no model weights done before any work (the
    output folder, the model's files and layer count, each partition file, a data file), and its
    ``--out`` locked while it works (a second run on the folder is refused)."""
    import functools

    @functools.wraps(command)
    def checked(**kw: Any) -> Any:
        from hedonic_neurons import validation
        from hedonic_neurons.data.splits import DATASETS
        from hedonic_neurons.errors import DataError
        from hedonic_neurons.locking import locked_output
        from hedonic_neurons.tracking.rules import TRACKING_RULES
        from hedonic_neurons.tracking.run import TrackSettings, layer_pairs

        validation.check_output_dir(kw["out"], "--out")
        validation.check_choice(kw["rule"], TRACKING_RULES.names(), "--rule")
        if kw.get("tau") is not None and not 0 < kw["tau"] <= 1:
            raise ConfigError(f"--tau {kw['tau']}: expected a threshold in (0, 1]")
        if kw.get("max_length") is not None and kw["max_length"] < 8:
            raise ConfigError(f"--max-length {kw['max_length']}: expected at least 8 tokens")
        TrackSettings.from_options(kw)  # rule, tau, horizon, flow and pair counts: one line if wrong
        facts = validation.check_model_inputs(
            kw["model"], adapter=kw.get("adapter"), reference=kw.get("reference"),
            dtype=kw.get("dtype"), device=kw.get("device"),
        )  # fmt: skip
        found = validation.read_partition_dir(kw["partitions"], "--partitions")
        for layer, (path, doc) in found.items():
            validation.check_layers([layer], facts, f"{path}: field 'layer'")
            if facts.n_neurons is not None and doc["n_neurons"] != facts.n_neurons:
                raise DataError(
                    f"{path}: {doc['n_neurons']} neurons, but {facts.summary()} has {facts.n_neurons} per layer"
                )
        horizon = kw.get("horizon", 1)
        if isinstance(horizon, int) and horizon >= 1 and not layer_pairs(list(found), horizon):
            raise DataError(
                f"--partitions {kw['partitions']}: no two layers within --horizon {horizon} of each other "
                f"(found layers {sorted(found)})"
            )
        if str(kw["data"]) not in DATASETS:
            validation.read_pairs(kw["data"], "--data")
        with locked_output(kw["out"]):
            return command(**kw)

    return checked


def register(app: typer.Typer) -> None:
    """Register ``hedonic track`` on the main app."""

    @app.command("track")
    @_track_checked_first
    def track(
        model: str = typer.Argument(..., help="minilm, smollm2, a local model folder or a hub id"),
        partitions: Path = typer.Option(..., "--partitions", help="folder of partition JSONs, one per layer"),
        out: Path = typer.Option(..., "--out", help="output folder"),
        adapter: Path | None = typer.Option(None, "--adapter", help="a peft LoRA adapter folder"),
        reference: str | None = typer.Option(None, "--reference", help="pre-fine-tuning checkpoint"),
        rule: str = typer.Option(
            "null",
            "--rule",
            help="a registered tracking rule: null (random-partition null), matching (absolute tau), code",
        ),
        tau: float | None = typer.Option(
            None, "--tau", help="absolute rules only (default 0.5; 0.3 for --rule code)"
        ),
        null_draws: int = typer.Option(100, "--null-draws", help="random partitions in the null"),
        null_level: float = typer.Option(
            0.95, "--null-level", help="share of a random partition left unstructured"
        ),
        horizon: int = typer.Option(3, "--horizon", help="track l -> l+1 ... l+h"),
        flow_pairs: int = typer.Option(
            64, "--flow-pairs", help="inputs for the interventional flow (0: no flow)"
        ),
        min_size: int = typer.Option(2, "--min-size", help="smaller coalitions are not tracked"),
        data: str = typer.Option("demo", "--data", help="pairs for E|a_p|: 'demo', a dataset name or a TSV"),
        max_pairs: int | None = typer.Option(512, "--max-pairs", help="pairs used for E|a_p|"),
        batch_size: int = typer.Option(32, "--batch-size"),
        max_length: int | None = typer.Option(
            None, "--max-length", help="tokens per input (default: the adapter's recorded format, else 256)"
        ),
        block_size: int = typer.Option(512, "--block-size", help="source neurons per block of W_eff"),
        seed: int = typer.Option(0, "--seed", help="which pairs are sampled; the null's draws"),
        dtype: str | None = typer.Option(None, "--dtype"),
        device: str | None = typer.Option(None, "--device", help="auto (default), cpu, cuda, cuda:N"),
    ) -> None:
        """Track coalitions from each layer to the next h: JSON per layer pair, tables, lineage, Sankey.

        E|a_p| is the mean of |a_p| over every non-pad token of --max-pairs pairs of --data; the
        same library calls as ``hedonic run``'s tracking stage, so on the same partitions, model
        and pairs both write the same files."""
        from dataclasses import replace

        from hedonic_neurons.data import load_pairs
        from hedonic_neurons.errors import DataError
        from hedonic_neurons.models import load_model
        from hedonic_neurons.models.inputs import InputFormat
        from hedonic_neurons.models.loading import recorded_input_format
        from hedonic_neurons.tracking.run import TrackSettings, load_partition_dir, track_inputs, track_model

        settings = TrackSettings(
            rule=rule,
            tau=tau,
            min_size=min_size,
            null_draws=null_draws,
            null_level=null_level,
            horizon=horizon,
            flow_pairs=flow_pairs,
            max_pairs=max_pairs,
            seed=seed,
            block_size=block_size,
        )
        found = load_partition_dir(partitions)
        input_format = None
        if max_length is not None:  # as `hedonic run` sets it: the recorded template, this length
            input_format = replace(recorded_input_format(adapter) or InputFormat(), max_length=max_length)
        nm = load_model(
            model, adapter=adapter, reference=reference, dtype=dtype, device=device, input_format=input_format
        )
        for layer, (path, doc) in found.items():
            nm.check_layer(layer)
            if doc["n_neurons"] != nm.n_neurons:
                raise DataError(
                    f"{path}: {doc['n_neurons']} neurons, but the model has {nm.n_neurons} per layer"
                )
        inputs = track_inputs(nm, load_pairs(data), list(found), settings, batch_size=batch_size, data=data)
        parts = {layer: doc["coalitions"] for layer, (_, doc) in found.items()}
        methods = sorted({str(doc.get("method")) for _, doc in found.values()})
        results, written = track_model(
            nm,
            parts,
            inputs,
            settings,
            out,
            method="+".join(methods),
            meta={"partitions": {str(layer): str(path) for layer, (path, _) in found.items()}},
        )
        for r in results:
            pct = ", ".join(f"{k} {v:.0f}%" for k, v in r.percentages.items())
            flow = ""
            if r.flow_info is not None:
                flow = f"; flow-mass Spearman {r.flow_info['spearman']:.2f}"
            typer.echo(
                f"L{r.source_layer}->L{r.target_layer}: {pct} (dropped {r.dropped_sources}/{r.dropped_targets}){flow}"
            )
        typer.echo(
            f"wrote {len(results)} transition files, {written['table_md'].name}, {written['table_csv'].name}, "
            f"{written['pairs_csv'].name}, {written['lineage_md'].name} and {written['sankey'].name} to {out}"
        )
