"""``hedonic inspect``: what a model is, where its neurons are, and where fine-tuning acted."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from hedonic_neurons.errors import ConfigError, arg

if TYPE_CHECKING:
    from hedonic_neurons.models.neuron_model import NeuronModel


def inspect_summary(nm: NeuronModel, layers: list[int] | None = None) -> dict[str, Any]:
    """Everything ``hedonic inspect`` shows, as a JSON-safe dict."""
    layers = None if layers is None else [nm.check_layer(layer) for layer in layers]
    info = nm.describe()
    info["weight_change"] = nm.weight_change(layers) if nm.has_reference else None
    return info


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def format_summary(info: dict[str, Any]) -> str:
    """The compact text report of :func:`inspect_summary`."""
    fmt = info["input_format"]
    if fmt["kind"] == "pair":
        inputs = "tokenizer pair encoding (query, passage)"
    else:
        inputs = repr(fmt["template"]) + (" + EOS" if fmt["append_eos"] else "")
    lines = [
        f"model          {info['model']}  ({info['model_path']})",
        f"architecture   {info['family']} (model_type {info['model_type']}), head {info['head']}",
        f"layers         {info['n_layers']}",
        f"neurons        {info['n_neurons']:,} per layer (d_model {info['d_model']})",
        f"input          {inputs}; max_length {fmt['max_length']}, padding {fmt['padding_side']}",
        f"dtype/device   {info['dtype']} on {info['device']}",
    ]
    if info.get("score_token_id") is not None:
        lines.append(f"score token    id {info['score_token_id']} (the causal head's scalar is its logit)")
    lora = info.get("lora")
    if lora:
        sha = info.get("adapter_sha256")
        lines.append(f"adapter        {info['adapter']}" + (f"  (sha256 {sha[:12]})" if sha else ""))
        targets = lora["target_modules"]
        if isinstance(targets, list):  # exact module paths: show them once, relative to a layer
            targets = ", ".join(dict.fromkeys(re.sub(r"^.*?\.\d+\.", "", t) for t in targets))
        lines.append(
            f"LoRA           target modules {targets}; rank {lora['rank']}, alpha {lora['alpha']}; "
            f"MLP layers adapted: {', '.join(map(str, lora['layers'])) or 'none'}"
            + ("" if lora["head_from_adapter"] else "; no trained head in the adapter")
        )
    elif info.get("reference"):
        lines.append(f"reference      {info['reference']} (two full checkpoints)")
    rows = info.get("weight_change")
    if rows is None:
        lines.append("weight change  - (no adapter or reference given)")
        return "\n".join(lines)
    lines.append("")
    lines.append("Frobenius norm of the MLP weight change (fine-tuned - reference)")
    lines.append(f"{'layer':>5}  {'gate':>10}  {'up':>10}  {'down':>10}  {'total':>10}  {'relative':>10}")
    for row in rows:
        lines.append(
            f"{row['layer']:>5}  {_fmt(row['gate']):>10}  {_fmt(row['up']):>10}  {_fmt(row['down']):>10}  "
            f"{_fmt(row['total']):>10}  {_fmt(row['relative']):>10}"
        )
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    """Register ``hedonic inspect`` and ``hedonic plant`` on the main app."""
    app.command("plant")(plant_command)

    @app.command("inspect")
    def inspect(
        model: str = typer.Argument(..., help="minilm, smollm2, a local model folder or a hub id"),
        adapter: Path | None = typer.Option(None, "--adapter", help="a peft LoRA adapter folder"),
        reference: str | None = typer.Option(
            None, "--reference", help="the pre-fine-tuning checkpoint (two full checkpoints)"
        ),
        head: str = typer.Option("classification", "--head", help="classification or causal"),
        layers: str | None = typer.Option(None, "--layers", help="only these layers, e.g. 0,2-4"),
        dtype: str | None = typer.Option(None, "--dtype", help="float32 (default), bfloat16, float16"),
        device: str | None = typer.Option(None, "--device", help="auto (default), cpu, cuda, cuda:N"),
        json_path: Path | None = typer.Option(None, "--json", help="also write the report as JSON here"),
    ) -> None:
        """Show architecture, neurons per layer, LoRA targets and the per-layer weight change.

        The weight change is the Frobenius norm of (fine-tuned - reference) MLP weights per layer,
        so you see where fine-tuning acted.
        """
        import contextlib

        from hedonic_neurons import validation
        from hedonic_neurons.artifacts import provenance, write_json
        from hedonic_neurons.locking import locked_output

        # everything that can be checked from files alone, before the model is loaded
        validation.check_choice(head, ("classification", "causal"), "--head")
        if json_path is not None:
            validation.check_output_file(json_path, "--json")
        facts = validation.check_model_inputs(
            model, adapter=adapter, reference=reference, dtype=dtype, device=device
        )
        chosen = None if layers is None else validation.parse_layers(layers, facts.n_layers)
        if chosen is not None:
            chosen = validation.check_layers(chosen, facts, "--layers")
        with (
            locked_output(json_path, kind="file", option="--json") if json_path else contextlib.nullcontext()
        ):
            from hedonic_neurons.models.loading import load_model

            nm = load_model(
                model, adapter=adapter, reference=reference, head=head, dtype=dtype, device=device
            )
            info = inspect_summary(nm, chosen)
            typer.echo(format_summary(info))
            if json_path is not None:
                write_json(
                    json_path, {"provenance": provenance(command="inspect", model=nm.identity), **info}
                )
                typer.echo(f"wrote {json_path}")


def _sizes(text: str | None, name: str) -> list[int] | None:
    """``"3,4,8"`` -> [3, 4, 8] (explicit group sizes); None -> None."""
    if text is None:
        return None
    parts = [p for p in text.replace(" ", "").split(",") if p]
    if not parts or not all(re.fullmatch(r"\d+", p) for p in parts):
        raise ConfigError(f"{arg(name)} {text!r}: expected comma-separated group sizes, e.g. 3,4,8")
    return [int(p) for p in parts]


def _size_range(text: str) -> tuple[int, int]:
    """``"3-8"`` -> (3, 8); ``"4"`` -> (4, 4)."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", text)
    if m is None:
        raise ConfigError(f"{arg('sizes')} {text!r}: expected a size range like 3-8 (or one size, e.g. 4)")
    lo = int(m.group(1))
    return lo, int(m.group(2)) if m.group(2) else lo


def plant_command(
    model: str = typer.Argument(..., help="minilm, smollm2, a local model folder or a hub id"),
    layer: int = typer.Option(
        ..., "--layer", help="the layer whose neurons are replaced (readers go to layer + 1)"
    ),
    out: Path = typer.Option(
        ..., "--out", help="output folder: model/ (the planted checkpoint), ground_truth.json"
    ),
    and_groups: int = typer.Option(8, "--and-groups", help="number of AND (complement) groups"),
    or_groups: int = typer.Option(4, "--or-groups", help="number of OR (redundant) groups"),
    sizes: str = typer.Option("3-8", "--sizes", help="group sizes, spread evenly over this range"),
    and_sizes: str | None = typer.Option(None, "--and-sizes", help="explicit AND group sizes, e.g. 3,5,8"),
    or_sizes: str | None = typer.Option(None, "--or-sizes", help="explicit OR group sizes"),
    independent: float = typer.Option(
        0.5, "--independent", help="fraction of AND groups whose members read independent features"
    ),
    features: str = typer.Option(
        "random", "--features", help="random | probe (ridge probes of text properties)"
    ),
    effect: float = typer.Option(0.1, "--effect", help="a reader's logit effect per unit, in logit std"),
    data: str = typer.Option("demo", "--data", help="calibration inputs: demo, a dataset name or a TSV"),
    calibration: int = typer.Option(256, "--calibration", help="inputs that build the construction"),
    verify: int = typer.Option(16, "--verify", help="held-out inputs on which Δ is measured (0: skip)"),
    seed: int = typer.Option(0, "--seed"),
    adapter: Path | None = typer.Option(None, "--adapter", help="a peft LoRA adapter folder (merged first)"),
    head: str = typer.Option("classification", "--head", help="classification or causal"),
    device: str | None = typer.Option("cpu", "--device", help="cpu (default), cuda, cuda:N, auto"),
    equal_strength: bool = typer.Option(
        False, "--equal-strength", help="weigh the members of a group to the same mean Δ (slower)"
    ),
) -> None:
    """Plant AND and OR coalitions into MODEL at LAYER by weight surgery; write the checkpoint and
    the ground truth.

    Collect φ on it with the unplanted model as the reference, e.g.
    ``hedonic collect OUT/model --reference MODEL --layers LAYER --metric pas --readout full``
    (the exact command is in ground_truth.json).
    """
    from hedonic_neurons.models.plant import plant

    lo, hi = _size_range(sizes)
    result = plant(
        model,
        out,
        layer=layer,
        and_groups=and_groups,
        or_groups=or_groups,
        min_size=lo,
        max_size=hi,
        and_sizes=_sizes(and_sizes, "and_sizes"),
        or_sizes=_sizes(or_sizes, "or_sizes"),
        independent=independent,
        features=features,
        effect=effect,
        data=data,
        calibration=calibration,
        verify=verify,
        seed=seed,
        adapter=adapter,
        head=head,
        equal_strength=equal_strength,
        device=device,
    )
    truth = result.ground_truth
    for g in truth["groups"]:
        shown = g["verified"].get("mean_delta")
        measured = "" if shown is None else f", mean Δ {shown:+.3g}"
        typer.echo(
            f"group {g['index']}: {g['kind'].upper()} of {g['size']} "
            f"({'co-active' if g['coactive'] else 'independent'}) "
            f"at layer {truth['layer']}, reader {g['reader']} at layer {truth['reader_layer']}{measured}"
        )
    typer.echo(f"wrote {result.model_dir}")
    typer.echo(f"wrote {result.ground_truth_path}")
    typer.echo(f"next: {truth['collect']}")
