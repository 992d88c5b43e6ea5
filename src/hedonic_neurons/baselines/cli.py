"""``hedonic baseline``: one baseline partition of one layer (the same JSON as ``hedonic solve``).

The command checks what the chosen baseline needs (its ``requires``: a partition to size-match,
a phi file, or a model's layer and data), builds that input and runs the baseline through the
one dispatch, :func:`hedonic_neurons.partition.partition_layer` (as ``hedonic run`` does). Any
registered baseline (:data:`hedonic_neurons.partitioner.PARTITIONERS`) can be named. torch /
transformers / scikit-learn are imported inside the command, so ``hedonic --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from hedonic_neurons.baselines import DEFAULT_MAX_PARTNERS
from hedonic_neurons.errors import ConfigError

#: What each kind of input is made from, for the message when it is missing.
NEEDS = {
    "sizes": "--like PARTITION.json (the partition to size-match)",
    "phi": "--phi PHI.safetensors",
    "rows": "MODEL and --layer (it reads the model's layer)",
    "profiles": "MODEL and --layer (it reads the model's layer)",
    None: "--like, --phi or MODEL and --layer (to know the number of neurons)",
}


def _source_of_n(like: Path | None, phi: Path | None, model: str | None, layer: int | None) -> str:
    """For a baseline that requires nothing: the first given input that tells n."""
    if like is not None:
        return "sizes"
    if phi is not None:
        return "phi"
    if model is not None and layer is not None:
        return "rows"
    raise ConfigError(f"this --method needs {NEEDS[None]}")


def run_baseline(
    method: str,
    out: Path,
    *,
    model: str | None = None,
    like: Path | None = None,
    phi: Path | None = None,
    adapter: Path | None = None,
    reference: str | None = None,
    layer: int | None = None,
    data: str = "demo",
    max_pairs: int | None = 512,
    batch_size: int = 32,
    settings: dict[str, Any] | None = None,
    seed: int = 0,
    dtype: str | None = None,
    device: str | None = None,
) -> Any:
    """Check the inputs of baseline ``method``, then compute it and write ``out``; returns the
    :class:`~hedonic_neurons.partition.Partition`.

    Every check that needs no model weights is done first (the output path, the method, the
    files it reads); ``out`` is locked while the baseline runs. ``settings``: the baseline's
    parameters (entries it does not take are ignored).
    """
    from hedonic_neurons import validation
    from hedonic_neurons.locking import locked_output
    from hedonic_neurons.partition import partition_layer
    from hedonic_neurons.partitioner import PARTITIONERS, baseline_names

    validation.check_choice(method, baseline_names(), "--method")
    validation.check_output_file(out, "--out")
    needs = PARTITIONERS.get(method).requires
    kind = needs if needs is not None else _source_of_n(like, phi, model, layer)
    given = {"sizes": like, "phi": phi, "rows": model, "profiles": model}
    if given[kind] is None or (kind in ("rows", "profiles") and layer is None):
        raise ConfigError(f"--method {method} needs {NEEDS[kind]}")

    # up-front checks of the one input this baseline reads
    like_doc: dict[str, Any] | None = None
    all_pairs = None
    if kind == "sizes":
        like_doc = validation.check_partition_file(like, "--like")
    elif kind == "phi":
        validation.check_phi_file(phi, "--phi")
    else:
        facts = validation.check_model_inputs(
            model, adapter=adapter, reference=reference, dtype=dtype, device=device
        )
        validation.check_layers([layer], facts, "--layer")
        if kind == "profiles":
            all_pairs = validation.read_pairs(data, "--data")

    with locked_output(out, kind="file"):
        inputs, found_layer, extra = _inputs(
            kind, like, like_doc, phi, model, adapter, reference, layer, all_pairs,
            data=data, max_pairs=max_pairs, batch_size=batch_size, seed=seed, dtype=dtype, device=device,
        )  # fmt: skip
        inputs.missing = NEEDS
        part = partition_layer(
            layer if layer is not None else found_layer,
            inputs=inputs,
            baselines=[method],
            seeds=[seed],
            settings={method: dict(settings or {})},
        )[(method, seed)]
        part.extra.update(extra)
        part.save(out)
    return part


def _inputs(
    kind: str,
    like: Path | None,
    like_doc: dict[str, Any] | None,
    phi: Path | None,
    model: str | None,
    adapter: Path | None,
    reference: str | None,
    layer: int | None,
    all_pairs: Any,
    **kw: Any,
) -> tuple[Any, int | None, dict[str, Any]]:
    """(LayerInputs, the layer the input names, fields for the file) for one kind of input."""
    from hedonic_neurons.partition import LayerInputs

    if kind == "sizes":
        assert like_doc is not None
        sizes = [len(c) for c in like_doc["coalitions"]]
        inputs = LayerInputs(sizes=lambda: sizes, n_neurons=like_doc["n_neurons"])
        return inputs, like_doc.get("layer"), {"like": str(like), "like_method": like_doc.get("method")}
    if kind == "phi":
        from hedonic_neurons.artifacts import load_phi, read_json

        assert phi is not None
        matrix = load_phi(phi)
        sidecar = phi.with_suffix(".json")
        found = read_json(sidecar).get("layer") if sidecar.is_file() else None
        inputs = LayerInputs(phi=lambda _metric: matrix, n_neurons=matrix.shape[0])
        return inputs, found, {"phi": str(phi)}
    from hedonic_neurons.baselines.inputs import activation_profiles, input_rows
    from hedonic_neurons.models import load_model

    nm = load_model(model, adapter=adapter, reference=reference, dtype=kw["dtype"], device=kw["device"])
    found = nm.check_layer(layer)
    extra: dict[str, Any] = {"model": nm.identity}

    def profiles() -> Any:
        from hedonic_neurons.tracking.run import iter_batches, sample_pairs

        pairs = sample_pairs(all_pairs, kw["max_pairs"], kw["seed"])
        extra["data"] = {"spec": kw["data"], "pairs": len(pairs), "pooling": "mean"}
        return activation_profiles(nm.model, found, iter_batches(nm, pairs, kw["batch_size"]))

    inputs = LayerInputs(
        rows=lambda: input_rows(nm.mlp_weights(found)), profiles=profiles, n_neurons=nm.n_neurons
    )
    return inputs, found, extra


def register(app: typer.Typer) -> None:
    """Register ``hedonic baseline`` on the main app."""

    @app.command("baseline")
    def baseline(
        model: str | None = typer.Argument(
            None, help="kmeans / hierarchical: minilm, smollm2, a folder or hub id"
        ),
        method: str = typer.Option(
            ...,
            "--method",
            help="a registered baseline: random | kmeans | hierarchical | phi-communities (or one you added)",
        ),
        out: Path = typer.Option(..., "--out", help="partition JSON to write"),
        like: Path | None = typer.Option(None, "--like", help="random: the partition to size-match"),
        phi: Path | None = typer.Option(
            None, "--phi", help="phi-communities: a phi_layer{L}.safetensors file"
        ),
        adapter: Path | None = typer.Option(None, "--adapter", help="a peft LoRA adapter folder"),
        reference: str | None = typer.Option(None, "--reference", help="pre-fine-tuning checkpoint"),
        layer: int | None = typer.Option(None, "--layer", help="the layer (kmeans, hierarchical)"),
        data: str = typer.Option(
            "demo", "--data", help="hierarchical: 'demo', a dataset name or a pairs TSV"
        ),
        max_pairs: int | None = typer.Option(512, "--max-pairs", help="hierarchical: pairs in the profiles"),
        batch_size: int = typer.Option(32, "--batch-size"),
        n_clusters: int | None = typer.Option(
            None, "--n-clusters", help="kmeans / hierarchical (default ceil(sqrt(n)))"
        ),
        resolution: float = typer.Option(1.0, "--resolution", help="phi-communities: Louvain resolution"),
        max_partners: int | None = typer.Option(
            DEFAULT_MAX_PARTNERS,
            "--max-partners",
            help="phi-communities: each neuron's m strongest positive partners form the graph",
        ),
        seed: int = typer.Option(0, "--seed", help="random_state"),
        dtype: str | None = typer.Option(None, "--dtype"),
        device: str | None = typer.Option(None, "--device", help="auto (default), cpu, cuda, cuda:N"),
    ) -> None:
        """Write a baseline partition (the same JSON as ``hedonic solve``).

        random: size-matched to --like. kmeans: spherical k-means on the input-projection rows
        (gate rows for gated MLPs) of MODEL's --layer. hierarchical: average-linkage, cosine
        distance on activation profiles (MODEL --layer --data). phi-communities: Louvain on positive --phi.
        """
        part = run_baseline(
            method,
            out,
            model=model,
            like=like,
            phi=phi,
            adapter=adapter,
            reference=reference,
            layer=layer,
            data=data,
            max_pairs=max_pairs,
            batch_size=batch_size,
            settings={"n_clusters": n_clusters, "resolution": resolution, "max_partners": max_partners},
            seed=seed,
            dtype=dtype,
            device=device,
        )
        typer.echo(f"{method}: {len(part)} coalitions of {part.n_neurons} neurons; wrote {out}")
