"""``hedonic solve``: partition one layer's phi into coalitions.

The command only loads phi, runs :mod:`hedonic_neurons.game` and writes the partition file
(``artifacts.save_partition``) with the stability certificate under both distributions.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer

from hedonic_neurons.locking import locks_output


def check_solve(phi_path: Path, out: Path, *, k: int, certify_samples: int) -> int:
    """What ``hedonic solve`` can check before solving: the output path, the phi file's header
    (a float n x n tensor ``phi``), 1 <= k < n and the certificate budget. Returns n."""
    from hedonic_neurons import validation
    from hedonic_neurons.game.solvers import check_count

    validation.check_output_file(out, "--out")
    n = validation.check_phi_file(phi_path, "PHI")
    validation.check_k(k, n, "--k")
    check_count("certify_samples", certify_samples)
    return n


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
    progress: bool = True,
) -> dict[str, Any]:
    """Solve the game on a phi file, certify the partition, write ``out``; returns a summary.

    Everything that can be checked before solving is (:func:`check_solve`), and ``out`` is locked
    while solving (a second solve writing the same file is refused)."""
    import numpy as np

    from hedonic_neurons.artifacts import load_phi, read_json, save_partition, size_summary
    from hedonic_neurons.game import PACTopCover, TopCover, certify, prepare_partition

    check_solve(phi_path, out, k=k, certify_samples=certify_samples)  # fail before the solve, not after
    phi = load_phi(phi_path)
    sidecar_path = Path(phi_path).with_suffix(".json")
    sidecar = read_json(sidecar_path) if sidecar_path.is_file() else None
    if sidecar is not None and not isinstance(sidecar, dict):
        from hedonic_neurons.errors import DataError

        raise DataError(f"{sidecar_path}: not a phi sidecar (expected a JSON object); delete or fix it")
    if exact:
        est: Any = TopCover(k, progress=progress)
    else:
        est = PACTopCover(
            k, epsilon, delta, n_samples, min_size, max_size, random_state=seed,
            sampling=sampling, phi_power=phi_power, progress=progress,
        )  # fmt: skip
    t0 = time.perf_counter()
    est.fit(phi)
    seconds = time.perf_counter() - t0
    prepared = prepare_partition(phi, est.coalitions_, k)
    certificates = {
        dist: certify(
            phi,
            prepared,
            k=k,
            n_samples=certify_samples,
            distribution=dist,
            min_size=min_size,
            max_size=max_size,
            delta=delta,
            random_state=np.random.default_rng([seed, i]),
        ).to_dict()
        for i, dist in enumerate(("uniform", "phi"), start=1)
    }
    params = {
        "solver": type(est).__name__,
        "k": k,
        "epsilon": epsilon,
        "delta": delta,
        "n_samples": n_samples,
        "min_size": min_size,
        "max_size": max_size,
        "sampling": None if exact else sampling,
        "phi_power": phi_power if not exact and sampling == "phi" else None,
        "seed": seed,
        "certify_samples": certify_samples,
        "phi": str(phi_path),
    }
    diagnostics = {
        "seconds": seconds,
        "n_rounds": est.n_rounds_,
        "n_samples": getattr(est, "n_samples_", None),
        "rounds": est.diagnostics_,
    }
    extra: dict[str, Any] = {"certificate": certificates, "diagnostics": diagnostics}
    if sidecar is not None:
        extra["phi_metadata"] = sidecar
    layer = sidecar.get("layer") if isinstance(sidecar, dict) else None
    save_partition(
        out,
        est.coalitions_,
        method="hedonic-exact" if exact else "hedonic-pac",
        params=params,
        layer=layer,
        extra=extra,
    )
    return {"sizes": size_summary(est.coalitions_), "certificate": certificates, "seconds": seconds}


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
        exact: bool = typer.Option(False, "--exact", help="exact Top Covering instead of PAC sampling"),
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
    ) -> None:
        """Partition a layer's neurons into coalitions (PAC or exact Top Covering) and certify it."""
        check_solve(phi, out, k=k, certify_samples=certify_samples)
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
