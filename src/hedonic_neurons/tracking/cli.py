"""``hedonic baseline`` (baseline partitions) and ``hedonic track`` (cross-layer tracking).

The command functions only load inputs and write files; the work is in
:mod:`hedonic_neurons.baselines` and :mod:`hedonic_neurons.tracking`. torch / transformers are
imported inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from hedonic_neurons.baselines.partitioners import DEFAULT_MAX_PARTNERS
from hedonic_neurons.errors import ConfigError

METHODS = ("random", "kmeans", "hierarchical", "phi-communities")


def _model_options(model: str | None, layer: int | None, method: str) -> None:
    if model is None or layer is None:
        raise ConfigError(f"--method {method} needs MODEL and --layer (it reads the model's layer)")


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
        from hedonic_neurons.tracking.run import layer_pairs
        from hedonic_neurons.tracking.transitions import RULES

        validation.check_output_dir(kw["out"], "--out")
        validation.check_choice(kw["rule"], RULES, "--rule")
        if kw.get("tau") is not None and not 0 < kw["tau"] <= 1:
            raise ConfigError(f"--tau {kw['tau']}: expected a threshold in (0, 1]")
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


def random_baseline(like: Path, seed: int) -> tuple[Any, int | None, dict[str, Any]]:
    """RandomPartition size-matched to the partition file ``like``."""
    from hedonic_neurons.artifacts import load_partition
    from hedonic_neurons.baselines import RandomPartition

    doc = load_partition(like)
    est = RandomPartition(doc["coalitions"], random_state=seed).fit()
    return est, doc.get("layer"), {"like": str(like), "like_method": doc.get("method")}


def phi_baseline(
    phi: Path, resolution: float, max_partners: int | None, seed: int
) -> tuple[Any, int | None, dict]:
    """PhiCommunities on a phi file; the layer comes from its JSON sidecar when it names one."""
    from hedonic_neurons.artifacts import load_phi, read_json
    from hedonic_neurons.baselines import PhiCommunities

    est = PhiCommunities(resolution, max_partners=max_partners, random_state=seed).fit(load_phi(phi))
    sidecar = phi.with_suffix(".json")
    layer = read_json(sidecar).get("layer") if sidecar.is_file() else None
    return est, layer, {"phi": str(phi), "edges": est.n_edges_}


def register(app: typer.Typer) -> None:
    """Register ``hedonic baseline`` and ``hedonic track`` on the main app."""

    @app.command("baseline")
    def baseline(
        model: str | None = typer.Argument(
            None, help="kmeans / hierarchical: minilm, smollm2, a folder or hub id"
        ),
        method: str = typer.Option(..., "--method", help="random | kmeans | hierarchical | phi-communities"),
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
        from hedonic_neurons import validation
        from hedonic_neurons.artifacts import save_partition
        from hedonic_neurons.locking import locked_output

        # up-front checks: everything this command reads and writes, before any work
        validation.check_choice(method, METHODS, "--method")
        validation.check_output_file(out, "--out")
        if method == "random":
            if like is None:
                raise ConfigError("--method random needs --like PARTITION.json (the partition to size-match)")
            validation.check_partition_file(like, "--like")
        elif method == "phi-communities":
            if phi is None:
                raise ConfigError("--method phi-communities needs --phi PHI.safetensors")
            validation.check_phi_file(phi, "--phi")
        else:
            _model_options(model, layer, method)
            facts = validation.check_model_inputs(
                model, adapter=adapter, reference=reference, dtype=dtype, device=device
            )
            validation.check_layers([layer], facts, "--layer")
            if method == "hierarchical":
                all_pairs = validation.read_pairs(data, "--data")
        with locked_output(out, kind="file"):
            extra: dict[str, Any] = {}
            if method == "random":
                est, found_layer, extra = random_baseline(like, seed)
            elif method == "phi-communities":
                est, found_layer, extra = phi_baseline(phi, resolution, max_partners, seed)
            else:
                from hedonic_neurons.baselines import Hierarchical, SphericalKMeans
                from hedonic_neurons.baselines.inputs import activation_profiles, input_rows
                from hedonic_neurons.models import load_model

                nm = load_model(model, adapter=adapter, reference=reference, dtype=dtype, device=device)
                found_layer = nm.check_layer(layer)
                extra = {"model": nm.identity}
                if method == "kmeans":
                    est = SphericalKMeans(n_clusters, random_state=seed).fit(
                        input_rows(nm.mlp_weights(found_layer))
                    )
                else:
                    from hedonic_neurons.tracking.run import iter_batches, sample_pairs

                    pairs = sample_pairs(all_pairs, max_pairs, seed)
                    X = activation_profiles(nm.model, found_layer, iter_batches(nm, pairs, batch_size))
                    est = Hierarchical(n_clusters, random_state=seed).fit(X)
                    extra["data"] = {"spec": data, "pairs": len(pairs), "pooling": "mean"}
            layer_out = layer if layer is not None else found_layer
            params = {k: v for k, v in est.get_params().items() if k != "sizes"}
            save_partition(out, est.coalitions_, method=method, params=params, layer=layer_out, extra=extra)
            typer.echo(
                f"{method}: {len(est.coalitions_)} coalitions of {est.n_neurons_} neurons; wrote {out}"
            )

    @app.command("track")
    @_track_checked_first
    def track(
        model: str = typer.Argument(..., help="minilm, smollm2, a local model folder or a hub id"),
        partitions: Path = typer.Option(..., "--partitions", help="folder of partition JSONs, one per layer"),
        out: Path = typer.Option(..., "--out", help="output folder"),
        adapter: Path | None = typer.Option(None, "--adapter", help="a peft LoRA adapter folder"),
        reference: str | None = typer.Option(None, "--reference", help="pre-fine-tuning checkpoint"),
        rule: str = typer.Option(
            "null", "--rule", help="null (random-partition null), matching (A11, absolute tau) or code"
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
        block_size: int = typer.Option(512, "--block-size", help="source neurons per block of W_eff"),
        seed: int = typer.Option(0, "--seed", help="which pairs are sampled; the null's draws"),
        dtype: str | None = typer.Option(None, "--dtype"),
        device: str | None = typer.Option(None, "--device", help="auto (default), cpu, cuda, cuda:N"),
    ) -> None:
        """Track coalitions from each layer to the next h: JSON per layer pair, tables, lineage, Sankey."""
        from hedonic_neurons.data import load_pairs
        from hedonic_neurons.errors import DataError
        from hedonic_neurons.models import load_model
        from hedonic_neurons.tracking.model import mean_abs_activations
        from hedonic_neurons.tracking.run import (
            TrackSettings,
            flow_spec,
            iter_batches,
            layer_pairs,
            load_partition_dir,
            sample_pairs,
            track_and_write,
        )

        settings = TrackSettings(
            rule=rule,
            tau=tau,
            min_size=min_size,
            null_draws=null_draws,
            null_level=null_level,
            horizon=horizon,
            flow_pairs=flow_pairs,
            seed=seed,
            block_size=block_size,
        )
        found = load_partition_dir(partitions)
        nm = load_model(model, adapter=adapter, reference=reference, dtype=dtype, device=device)
        for layer, (path, doc) in found.items():
            nm.check_layer(layer)
            if doc["n_neurons"] != nm.n_neurons:
                raise DataError(
                    f"{path}: {doc['n_neurons']} neurons, but the model has {nm.n_neurons} per layer"
                )
        sources = sorted({lo for lo, _ in layer_pairs(list(found), horizon)})
        if not sources:
            raise DataError(
                f"{partitions}: no two layers within {horizon} of each other (found {sorted(found)})"
            )
        pairs = sample_pairs(load_pairs(data), max_pairs, seed)
        mean_abs = mean_abs_activations(nm.model, sources, iter_batches(nm, pairs, batch_size))
        parts = {layer: doc["coalitions"] for layer, (_, doc) in found.items()}
        methods = sorted({str(doc.get("method")) for _, doc in found.values()})
        meta = {
            "model": nm.identity,
            "partitions": {str(layer): str(path) for layer, (path, _) in found.items()},
            "activations": {"data": data, "pairs": len(pairs), "statistic": "E|a_p| over non-pad tokens"},
        }
        results, written = track_and_write(
            nm.model,
            parts,
            mean_abs,
            settings,
            out,
            method="+".join(methods),
            meta=meta,
            flow=flow_spec(nm, pairs, settings, batch_size),
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
