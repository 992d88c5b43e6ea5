"""Benchmark of the game solvers on a random symmetric phi (issue 5).

Each solver runs in a fresh subprocess, so its peak memory (``ru_maxrss``) is its own: the
subprocess builds phi (float32, symmetric, zero diagonal; about 822 MB at n = 14,336) without
temporaries larger than a few MB, then times ``fit``. Printed per solver: wall time of ``fit``,
the process's peak resident memory, that peak divided by the size of phi (target <= 3), and the
partition's size summary.

    python benchmarks/bench_game.py                 # n = 14,336 (LLaMA-3-8B MLP width)
    python benchmarks/bench_game.py --n 2048        # quick run

Targets (issue 5, 2-core machine): PACTopCover <= 30 s, TopCover <= 10 s, peak <= 3x phi.
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


def child(solver: str, n: int, k: int, epsilon: float, delta: float, seed: int, certify_samples: int) -> None:
    """Run one solver (then, if asked, certify its partition); print one JSON line."""
    from hedonic_neurons.artifacts import size_summary
    from hedonic_neurons.game import PACTopCover, TopCover, certify

    base = _peak_bytes()
    phi = random_phi(n, seed)
    after_phi = _peak_bytes()
    est = TopCover(k) if solver == "exact" else PACTopCover(k, epsilon, delta, random_state=seed)
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
    ap.add_argument("--child", choices=["pac", "exact"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child, args.n, args.k, args.epsilon, args.delta, args.seed, args.certify_samples)
        return 0
    print(
        f"random symmetric phi (float32, N(0,1) entries), n = {args.n:,}, k = {args.k}, "
        f"epsilon = {args.epsilon}, delta = {args.delta}, seed = {args.seed}"
    )
    ok = True
    for solver in args.solvers.split(","):
        cmd = [sys.executable, __file__, "--child", solver, "--n", str(args.n), "--k", str(args.k)]
        cmd += ["--epsilon", str(args.epsilon), "--delta", str(args.delta), "--seed", str(args.seed)]
        cmd += ["--certify-samples", str(args.certify_samples)]
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
