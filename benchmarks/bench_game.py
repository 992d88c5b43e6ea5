"""Benchmark of the game solvers on a random symmetric phi (issue 5), and planted recovery.

Each solver runs in a fresh subprocess, so its peak memory (``ru_maxrss``) is its own: the
subprocess builds phi (float32, symmetric, zero diagonal; about 822 MB at n = 14,336) without
temporaries larger than a few MB, then times ``fit``. Printed per solver: wall time of ``fit``,
the process's peak resident memory, that peak divided by the size of phi (target <= 3), and the
partition's size summary.

    python benchmarks/bench_game.py                 # n = 14,336 (LLaMA-3-8B MLP width)
    python benchmarks/bench_game.py --n 2048        # quick run
    python benchmarks/bench_game.py --solvers pac --pac-sampling phi --phi-power 4

Targets (issue 5, 2-core machine): PACTopCover <= 30 s, TopCover <= 10 s, peak <= 3x phi.

``--recovery`` plants groups of 3 instead (phi = 1 within a group, plus symmetric Gaussian noise
of sd 0.1 everywhere, zero diagonal; n not divisible by 3 leaves one smaller group) and prints,
for TopCover(k), PACTopCover with uniform sampling and PACTopCover with phi-aware sampling
(one run per ``--phi-powers`` value), the adjusted Rand index against the planted labels, the
fit time (wall and CPU: on a shared machine the CPU time is the steadier figure) and the peak
memory (each in its own subprocess; phi is validated before the timer):

    python benchmarks/bench_game.py --recovery                      # n = 4,096 and 14,336
    python benchmarks/bench_game.py --recovery --recovery-n 1024 --phi-powers 1,4

Target: PACTopCover with phi-aware sampling reaches ARI >= 0.95.

``--noise-curve`` is the recovery curve of the thresholded game (issue 14, item 4): the planted
game of :func:`hedonic_neurons.game.planted.planted_game` (n = 2,000, 278 groups of 2-12,
strengths 0.2-1, Student-t noise with 5 degrees of freedom of scale sigma, se = sigma) at each
noise level, ARI of exact Top Covering and of PACTopCover (phi-aware sampling, phi_power 4) on
the plain game and on the thresholded one (only phi_ij > min_z * se_ij counts as a partner),
k = 2 and 3, as a Markdown table:

    python benchmarks/bench_game.py --noise-curve
    python benchmarks/bench_game.py --noise-curve --min-z 4,6 --sigmas 0,0.02
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

TARGET_SECONDS = {"pac": 30.0, "exact": 10.0}
TARGET_MEMORY_RATIO = 3.0
TARGET_RECOVERY_ARI = 0.95


def _peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def random_phi(n: int, seed: int):
    """Random symmetric float32 phi with zero diagonal, standard normal entries, built in place."""
    import numpy as np

    rng = np.random.default_rng(seed)
    phi = np.empty((n, n), dtype=np.float32)
    rng.standard_normal(out=phi, dtype=np.float32)
    step = max(1, (1 << 21) // n)
    for a in range(0, n, step):  # mirror the upper triangle into the lower one, block by block
        b = min(a + step, n)
        phi[b:, a:b] = phi[a:b, b:].T
        block = phi[a:b, a:b]
        block[...] = np.triu(block) + np.triu(block, 1).T
    np.fill_diagonal(phi, 0.0)
    return phi


def planted_phi(n: int, seed: int, noise: float = 0.1, size: int = 3):
    """Planted groups of ``size``: ``(phi, labels)``, phi = 1 within a group plus N(0, noise^2).

    The noise is symmetric with a zero diagonal (built in place as in :func:`random_phi`); the
    neurons are assigned to groups at random, ``n % size`` of them forming one smaller group.
    """
    import numpy as np

    phi = random_phi(n, seed)
    phi *= np.float32(noise)
    labels = np.random.default_rng(seed + 1).permutation(np.arange(n) // size)
    order = np.argsort(labels, kind="stable")
    full = order[: n // size * size].reshape(-1, size)
    rest = order[n // size * size :]
    for a in range(size):
        for b in range(size):
            if a != b:
                phi[full[:, a], full[:, b]] += np.float32(1.0)
                if b < rest.size and a < rest.size:
                    phi[rest[a], rest[b]] += np.float32(1.0)
    return phi, labels


def recovery_child(solver: str, n: int, k: int, epsilon: float, delta: float, seed: int) -> None:
    """Fit one solver on planted groups of 3; print one JSON line with its ARI and fit time."""
    from sklearn.metrics import adjusted_rand_score

    from hedonic_neurons.artifacts import validate_phi
    from hedonic_neurons.game import PACTopCover, TopCover

    phi, labels = planted_phi(n, seed)
    phi = validate_phi(phi)
    after_phi = _peak_bytes()
    if solver == "exact":
        est, name = TopCover(k), f"TopCover(k={k})"
    elif solver == "pac-uniform":
        est, name = PACTopCover(k, epsilon, delta, random_state=seed), "PACTopCover(uniform)"
    else:
        power = float(solver.split(":")[1])
        est = PACTopCover(k, epsilon, delta, random_state=seed, sampling="phi", phi_power=power)
        name = f"PACTopCover(phi, phi_power={power:g})"
    t0, c0 = time.perf_counter(), time.process_time()
    est.fit(phi)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    out = {
        "solver": name,
        "cpu_seconds": cpu,
        "n": n,
        "ari": float(adjusted_rand_score(labels, est.labels_)),
        "seconds": seconds,
        "rounds": est.n_rounds_,
        "samples": getattr(est, "n_samples_", None),
        "phi_bytes": phi.nbytes,
        "peak_bytes": _peak_bytes(),
        "peak_before_fit": after_phi,
    }
    print(json.dumps(out))


def recovery(args: argparse.Namespace) -> int:
    """The ``--recovery`` report: one subprocess per (n, solver)."""
    print(
        f"planted groups of 3 (phi = 1 within a group, symmetric N(0, 0.1^2) noise, zero diagonal), "
        f"k = {args.k}, epsilon = {args.epsilon}, delta = {args.delta}, seed = {args.seed}"
    )
    solvers = ["exact", "pac-uniform"] + [f"pac-phi:{p}" for p in args.phi_powers.split(",")]
    ok = True
    for n in (int(x) for x in args.recovery_n.split(",")):
        print(f"n = {n:,}: {n // 3:,} groups of 3" + (f" + 1 of {n % 3}" if n % 3 else ""))
        best_phi = 0.0
        for solver in solvers:
            cmd = [sys.executable, __file__, "--child-recovery", solver, "--n", str(n), "--k", str(args.k)]
            cmd += ["--epsilon", str(args.epsilon), "--delta", str(args.delta), "--seed", str(args.seed)]
            res = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if res.returncode != 0:
                print(f"  {solver}: failed\n{res.stderr}")
                ok = False
                continue
            r = json.loads(res.stdout.strip().splitlines()[-1])
            if solver.startswith("pac-phi"):
                best_phi = max(best_phi, r["ari"])
            samples = f", {r['samples']:,} samples" if r["samples"] is not None else ""
            print(
                f"  {r['solver']:<32} ARI {r['ari']:.4f}   fit {r['seconds']:6.2f} s "
                f"(cpu {r['cpu_seconds']:6.2f} s)   "
                f"{r['rounds']:>3} rounds{samples}; peak RSS {r['peak_bytes'] / r['phi_bytes']:.2f} x phi "
                f"(fit adds {(r['peak_bytes'] - r['peak_before_fit']) / r['phi_bytes']:.2f} x phi)"
            )
        hit = best_phi >= TARGET_RECOVERY_ARI
        ok &= hit
        print(
            f"  target: PACTopCover(phi) ARI >= {TARGET_RECOVERY_ARI} -> best {best_phi:.4f}: "
            f"{'ok' if hit else 'MISSED'}"
        )
    return 0 if ok else 1


def child(
    solver: str,
    n: int,
    k: int,
    epsilon: float,
    delta: float,
    seed: int,
    certify_samples: int,
    sampling: str = "uniform",
    phi_power: float = 1.0,
) -> None:
    """Run one solver (then, if asked, certify its partition); print one JSON line."""
    from hedonic_neurons.artifacts import size_summary
    from hedonic_neurons.game import PACTopCover, TopCover, certify

    base = _peak_bytes()
    phi = random_phi(n, seed)
    after_phi = _peak_bytes()
    if solver == "exact":
        est = TopCover(k)
    else:
        est = PACTopCover(k, epsilon, delta, random_state=seed, sampling=sampling, phi_power=phi_power)
    t0 = time.perf_counter()
    est.fit(phi)
    seconds = time.perf_counter() - t0
    peak = _peak_bytes()
    sizes = size_summary(est.coalitions_)
    out = {
        "solver": type(est).__name__,
        "n": n,
        "seconds": seconds,
        "phi_bytes": phi.nbytes,
        "peak_bytes": peak,
        "peak_before_fit": after_phi,
        "baseline_bytes": base,
        "rounds": est.n_rounds_,
        "samples": getattr(est, "n_samples_", None),
        "coalitions": sizes["count"],
        "largest": sizes["largest"],
        "singletons": sizes["singletons"],
        "median": sizes["median"],
        "p99": sizes["p99"],
    }
    if certify_samples:
        import scipy.stats  # noqa: F401  (its first import takes seconds; keep it out of the timing)

        for dist in ("uniform", "phi"):
            t0 = time.perf_counter()
            cert = certify(
                phi,
                est.coalitions_,
                k=k,
                n_samples=certify_samples,
                distribution=dist,
                delta=delta,
                random_state=seed,
            )
            out[f"certify_{dist}"] = {"seconds": time.perf_counter() - t0, **cert.to_dict()}
        out["peak_after_certify"] = _peak_bytes()
    print(json.dumps(out))


def noise_curve(args: argparse.Namespace) -> int:
    """The ``--noise-curve`` table (one process: the fits are small)."""
    from sklearn.metrics import adjusted_rand_score

    from hedonic_neurons.game import PACTopCover, TopCover
    from hedonic_neurons.game.planted import planted_game
    from hedonic_neurons.game.significance import DEFAULT_MIN_Z

    zs = [float(z) for z in args.min_z.split(",")] if args.min_z else [DEFAULT_MIN_Z]
    sigmas = [float(x) for x in args.sigmas.split(",")]
    games = ["plain"] + [f"min_z {z:g}" for z in zs]
    print("planted game: n = 2,000, 278 groups of 2-12, strengths 0.2-1, Student-t (df 5) noise x sigma")
    print(
        f"(default min_z = {DEFAULT_MIN_Z:g}; ARI against the planted groups; PAC: phi-aware, phi_power 4)\n"
    )
    print("| k | solver | game | " + " | ".join(f"sigma {x:g}" for x in sigmas) + " |")
    print("|---|---|---|" + "---|" * len(sigmas))
    planted = {x: planted_game(sigma=x, random_state=args.seed) for x in sigmas}
    for k in (2, 3):
        for solver in ("exact", "pac"):
            for game in games:
                cells = []
                for x in sigmas:
                    g = planted[x]
                    z = None if game == "plain" else float(game.split()[1])
                    est = (
                        TopCover(k, min_z=z)
                        if solver == "exact"
                        else PACTopCover(k, random_state=args.seed, sampling="phi", phi_power=4.0, min_z=z)
                    )
                    est.fit(g.phi, None if z is None else g.se)
                    cells.append(f"{adjusted_rand_score(g.labels, est.labels_):.3f}")
                print(f"| {k} | {solver} | {game} | " + " | ".join(cells) + " |", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=14_336)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--epsilon", type=float, default=0.05)
    ap.add_argument("--delta", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--solvers", default="pac,exact", help="comma list of pac, exact")
    ap.add_argument(
        "--certify-samples", type=int, default=0, help="also time certify() on each partition (0: skip)"
    )
    ap.add_argument(
        "--pac-sampling", choices=["uniform", "phi"], default="uniform", help="PACTopCover sampling"
    )
    ap.add_argument(
        "--phi-power", type=float, default=1.0, help="PACTopCover phi_power (with --pac-sampling phi)"
    )
    ap.add_argument(
        "--recovery", action="store_true", help="planted groups of 3: ARI and fit time of every solver"
    )
    ap.add_argument("--recovery-n", default="4096,14336", help="comma list of n for --recovery")
    ap.add_argument(
        "--phi-powers", default="1,2,4", help="comma list of phi_power values for PACTopCover(phi)"
    )
    ap.add_argument(
        "--noise-curve", action="store_true", help="recovery of the plain vs thresholded game as noise grows"
    )
    ap.add_argument("--sigmas", default="0,0.002,0.005,0.01,0.02,0.05", help="noise levels for --noise-curve")
    ap.add_argument(
        "--min-z", default="", help="comma list of min_z for --noise-curve (default: the library's)"
    )
    ap.add_argument("--child", choices=["pac", "exact"], help=argparse.SUPPRESS)
    ap.add_argument("--child-recovery", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(
            args.child,
            args.n,
            args.k,
            args.epsilon,
            args.delta,
            args.seed,
            args.certify_samples,
            args.pac_sampling,
            args.phi_power,
        )
        return 0
    if args.child_recovery:
        recovery_child(args.child_recovery, args.n, args.k, args.epsilon, args.delta, args.seed)
        return 0
    if args.recovery:
        return recovery(args)
    if args.noise_curve:
        return noise_curve(args)
    print(
        f"random symmetric phi (float32, N(0,1) entries), n = {args.n:,}, k = {args.k}, "
        f"epsilon = {args.epsilon}, delta = {args.delta}, seed = {args.seed}, "
        f"PAC sampling = {args.pac_sampling}"
        + (f" (phi_power = {args.phi_power:g})" if args.pac_sampling == "phi" else "")
    )
    ok = True
    for solver in args.solvers.split(","):
        cmd = [sys.executable, __file__, "--child", solver, "--n", str(args.n), "--k", str(args.k)]
        cmd += ["--epsilon", str(args.epsilon), "--delta", str(args.delta), "--seed", str(args.seed)]
        cmd += ["--certify-samples", str(args.certify_samples)]
        cmd += ["--pac-sampling", args.pac_sampling, "--phi-power", str(args.phi_power)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            print(f"{solver}: failed\n{res.stderr}")
            ok = False
            continue
        r = json.loads(res.stdout.strip().splitlines()[-1])
        ratio = r["peak_bytes"] / r["phi_bytes"]
        t_ok = r["seconds"] <= TARGET_SECONDS[solver]
        m_ok = ratio <= TARGET_MEMORY_RATIO
        ok &= t_ok and m_ok
        samples = f", {r['samples']:,} samples" if r["samples"] is not None else ""
        print(
            f"{r['solver']:>12}: fit {r['seconds']:6.2f} s (target <= {TARGET_SECONDS[solver]:.0f} s: "
            f"{'ok' if t_ok else 'MISSED'}), peak RSS {r['peak_bytes'] / 2**20:7.0f} MiB = "
            f"{ratio:.2f} x phi ({r['phi_bytes'] / 2**20:.0f} MiB; target <= {TARGET_MEMORY_RATIO:.0f}: "
            f"{'ok' if m_ok else 'MISSED'}); before fit {r['peak_before_fit'] / 2**20:.0f} MiB, so fit adds "
            f"{(r['peak_bytes'] - r['peak_before_fit']) / r['phi_bytes']:.2f} x phi"
        )
        print(
            f"{'':>14}{r['rounds']} rounds{samples}; {r['coalitions']:,} coalitions, largest "
            f"{r['largest']:,}, singletons {r['singletons']:,}, median {r['median']:g}, p99 {r['p99']:g}"
        )
        for dist in ("uniform", "phi"):
            c = r.get(f"certify_{dist}")
            if c:
                print(
                    f"{'':>14}certify({dist}, {c['n_samples']:,} samples): {c['seconds']:.2f} s, "
                    f"{c['n_blocking']} blocking, rate {c['rate']:.3g}, upper bound {c['upper_bound']:.3g}"
                )
        if "peak_after_certify" in r:
            print(f"{'':>14}peak RSS after certify {r['peak_after_certify'] / r['phi_bytes']:.2f} x phi")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
