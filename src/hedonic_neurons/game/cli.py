"""``hedonic solve``: partition one layer's phi into coalitions.

The command only loads phi, runs the solver through the one dispatch
(:func:`hedonic_neurons.partition.partition_layer`, as ``hedonic run`` does) and writes the
partition file with the stability certificate under both distributions
(:func:`hedonic_neurons.game.certify.certificates`). The partition's method is
``hedonic-<metric>`` (the metric from the phi file's sidecar; ``hedonic`` without one), and
``params["solver"]`` is ``exact`` or ``pac``.

``--min-z Z`` solves the noise-robust (thresholded) game: the φ file's standard errors are read
too, and φ_ij counts as a partner only when φ_ij > Z · se_ij
(:func:`~hedonic_neurons.game.significance.significant_phi`); the certificates are then of that
game, the one that was solved. ``params["min_z"]`` records Z (None: the plain game).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from hedonic_neurons.locking import locks_output


def check_solve(
    phi_path: Path, out: Path, *, k: int, certify_samples: int, min_z: float | None = None
) -> int:
    """What ``hedonic solve`` can check before solving: the output path, the phi file's header
    (a float n x n tensor ``phi``), 1 <= k < n, the certificate budget, and ``min_z`` (None or a
    finite number >= 0). Returns n."""
    from hedonic_neurons import validation
    from hedonic_neurons.errors import ConfigError, arg
    from hedonic_neurons.game.checks import check_count
    from hedonic_neurons.game.significance import check_min_z

    validation.check_output_file(out, "--out")
    n = validation.check_phi_file(phi_path, "PHI")
    validation.check_k(k, n, "--k")
    check_count("certify_samples", certify_samples)
    try:
        check_min_z(min_z)
    except ConfigError:
        raise ConfigError(
            f"{arg('min_z')} {min_z!r}: expected a finite number >= 0 (standard errors), or leave it unset"
        ) from None
    if min_z is not None:
        _check_has_se(phi_path)
    return n


def _check_has_se(phi_path: Path) -> None:
    """The phi file holds standard errors (tensor ``phi_se``), read from its header only."""
    from safetensors import safe_open

    from hedonic_neurons.artifacts import PHI_SE_KEY
    from hedonic_neurons.errors import DataError, arg

    with safe_open(str(phi_path), framework="numpy") as fh:
        names = sorted(fh.keys())
    if PHI_SE_KEY not in names:
        raise DataError(
            f"{phi_path}: no standard errors of phi (tensor '{PHI_SE_KEY}'; the file has {names}), "
            f"which {arg('min_z')} needs: collect the layer again with this version, or leave "
            f"{arg('min_z')} unset"
        )


@locks_output("out", kind="file")
def solve_phi(
    phi_path: Path,
    out: Path,
    *,
    k: int = 2,
    epsilon: float = 0.05,
    delta: float = 0.05,
    n_samples: int | None = None,
    exact: bool = False,
    seed: int = 0,
    certify_samples: int = 100_000,
    min_size: int = 2,
    max_size: int = 10,
    sampling: str = "uniform",
    phi_power: float = 4.0,
    min_z: float | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Solve the game on a phi file, certify the partition, write ``out``; returns a summary.

    ``min_z``: None, the plain game; a number Z >= 0, the thresholded game (only
    φ_ij > Z · se_ij is a partner), which reads the standard errors saved beside φ (a file
    without them is one :class:`~hedonic_neurons.errors.DataError`, before anything is solved)
    and certifies the thresholded φ. Everything that can be checked before solving is
    (:func:`check_solve`), and ``out`` is locked while solving (a second solve writing the same
    file is refused)."""
    from hedonic_neurons.artifacts import load_phi, read_json
    from hedonic_neurons.errors import DataError
    from hedonic_neurons.game.certify import certificates
    from hedonic_neurons.partition import LayerInputs, partition_layer

    check_solve(phi_path, out, k=k, certify_samples=certify_samples, min_z=min_z)  # before the solve
    if min_z is None:
        phi, se = load_phi(phi_path), None
    else:
        phi, se = load_phi(phi_path, with_se=True)
    sidecar_path = Path(phi_path).with_suffix(".json")
    sidecar = read_json(sidecar_path) if sidecar_path.is_file() else None
    if sidecar is not None and not isinstance(sidecar, dict):
        raise DataError(f"{sidecar_path}: not a phi sidecar (expected a JSON object); delete or fix it")
    sidecar = sidecar or {}
    pac = not exact
    game = {
        "solver": "exact" if exact else "pac",
        "k": k,
        "epsilon": epsilon,
        "delta": delta,
        "n_samples": n_samples,
        "min_size": min_size,
        "max_size": max_size,
        "sampling": sampling if pac else None,
        "phi_power": phi_power if pac and sampling == "phi" else None,
        "min_z": None if min_z is None else float(min_z),
        "progress": progress,
    }
    settings = {**game, "sampling": sampling, "phi_power": phi_power}  # what the solver is given
    timings: dict[str, float] = {}
    # `hedonic collect` writes the metric under "settings"; older sidecars had it at the top level
    metric = sidecar.get("metric") or (sidecar.get("settings") or {}).get("metric")
    metric = metric if isinstance(metric, str) else None
    layer = sidecar.get("layer")
    if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
        layer = None  # a sidecar without a usable layer: the partition names none
    (part,) = partition_layer(
        layer,
        inputs=LayerInputs(
            phi=lambda _metric: phi, phi_se=lambda _metric: (phi, se), n_neurons=phi.shape[0]
        ),
        metrics=[metric],
        game=settings,
        seeds=[seed],
        timings=timings,
    ).values()
    seconds = timings.get("solver", 0.0)
    if min_z is not None:
        from hedonic_neurons.game.significance import significant_phi

        phi = significant_phi(phi, se, min_z)  # the game that was solved is the one certified
    certs = {
        dist: cert.to_dict()
        for dist, cert in certificates(
            phi, part, k=k, n_samples=certify_samples, min_size=min_size, max_size=max_size,
            delta=delta, random_state=seed,
        ).items()
    }  # fmt: skip
    game.pop("progress")
    part.params = {**game, "seed": seed, "certify_samples": certify_samples, "phi": str(phi_path)}
    part.extra["diagnostics"] = {"seconds": seconds, **part.extra.get("diagnostics", {})}
    part.extra["certificate"] = certs
    if sidecar_path.is_file():
        part.extra["phi_metadata"] = sidecar
    part.save(out)
    return {"sizes": part.size_summary(), "certificate": certs, "seconds": seconds, "partition": part}


def _certificate_line(cert: dict[str, Any]) -> str:
    return (
        f"certificate ({cert['distribution']}): {cert['n_blocking']:,} of {cert['n_samples']:,} sampled "
        f"coalitions block, rate {cert['rate']:.3g}, upper bound {cert['upper_bound']:.3g} at "
        f"{cert['confidence']:.0%} confidence"
    )


def register(app: typer.Typer) -> None:
    """Register ``hedonic solve`` on the main app."""

    @app.command("solve")
    def solve(
        phi: Path = typer.Argument(..., help="a phi_layer{L}.safetensors file (tensor 'phi')"),
        out: Path = typer.Option(..., "--out", help="partition JSON to write"),
        k: int = typer.Option(2, "--k", help="choice-set size of the MFC utility"),
        epsilon: float = typer.Option(0.05, "--epsilon", help="PAC accuracy (sets the sample budget)"),
        delta: float = typer.Option(0.05, "--delta", help="PAC / certificate confidence parameter"),
        n_samples: int | None = typer.Option(
            None,
            "--n-samples",
            help="samples per re-estimated neuron and round (default: from epsilon, delta)",
        ),
        exact: bool = typer.Option(
            False,
            "--exact/--pac",
            metavar="",  # a flag takes no value: no "<bool>" in --help
            help="exact Top Covering, or PAC Top Covering from sampled coalitions",
        ),
        seed: int = typer.Option(0, "--seed", help="random_state of the solver and the certificates"),
        certify_samples: int = typer.Option(
            100_000, "--certify-samples", help="coalitions drawn for each certificate"
        ),
        min_size: int = typer.Option(2, "--min-size", help="smallest sampled coalition"),
        max_size: int = typer.Option(10, "--max-size", help="largest sampled coalition"),
        sampling: str = typer.Option(
            "uniform",
            "--sampling",
            help="PAC samples: 'uniform' (D of the method) or 'phi' (grown along positive phi)",
        ),
        phi_power: float = typer.Option(
            4.0, "--phi-power", help="with --sampling phi: partners drawn in proportion to phi^power"
        ),
        min_z: float | None = typer.Option(
            None,
            "--min-z",
            help="noise-robust game: only phi_ij > Z * se_ij is a partner (needs a phi file with "
            "standard errors; 6 suits heavy-tailed noise; default off)",
        ),
    ) -> None:
        """Partition a layer's neurons into coalitions (PAC or exact Top Covering) and certify it."""
        check_solve(phi, out, k=k, certify_samples=certify_samples, min_z=min_z)
        res = solve_phi(
            phi,
            out,
            k=k,
            epsilon=epsilon,
            delta=delta,
            n_samples=n_samples,
            exact=exact,
            seed=seed,
            certify_samples=certify_samples,
            min_size=min_size,
            max_size=max_size,
            sampling=sampling,
            phi_power=phi_power,
            min_z=min_z,
        )
        s = res["sizes"]
        typer.echo(
            f"{s['count']:,} coalitions of {s['neurons']:,} neurons in {res['seconds']:.1f} s: largest "
            f"{s['largest']:,}, singletons {s['singletons']:,}, median {s['median']:g}, "
            f"p90 {s['p90']:g}, p99 {s['p99']:g}"
        )
        typer.echo("sizes: " + ", ".join(f"{b}: {c}" for b, c in s["histogram"].items()))
        for cert in res["certificate"].values():
            typer.echo(_certificate_line(cert))
        typer.echo(f"wrote {out}")
