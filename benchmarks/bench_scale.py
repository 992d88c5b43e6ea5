"""Every stage at the paper's width, against its floor (issue 18).

Synthetic inputs of LLaMA-3.1-8B shape: n = 14,336 neurons per layer, d_model = 4,096. Each stage
runs in a fresh subprocess (so ``ru_maxrss`` is its own peak; inputs are built before the timer
starts) and is reported as wall time, peak resident memory and the ratio of its time to its
**floor**, measured on this machine in the same run:

- GEMM stages (OCA moments, OCA orthogonality, exact PAS Gram path, tracking mass): the stage's
  multiply-add count ÷ the measured matmul throughput (torch, square 4,096 matmul, the dtype the
  stage computes in);
- stages that only read φ (validation, the solvers, the partitions stage, Louvain): one read of
  φ (n² · 4 bytes) ÷ the measured memory bandwidth (a large numpy copy).
  No solver can be faster than reading φ once; how far above it a stage is says how much room is
  left, not that the floor is reachable.

The synthetic φ plants groups of 2–12 neurons (within-group φ = 1 ± 0.3) in Gaussian noise
(σ = 0.05), so the solvers meet structure rather than a random matrix. Activations and weights are
Gaussian. ``--device cuda`` runs the torch stages on the GPU (φ-only stages stay on the CPU, as in
the library) and adds a bf16 matmul probe.

    python benchmarks/bench_scale.py                   # n = 14,336, d = 4,096
    python benchmarks/bench_scale.py --n 2048 --d 512  # quick run
    python benchmarks/bench_scale.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STAGES = (
    "oca-moments",
    "oca-phi",
    "pas-gram",
    "validate",
    "solve",
    "pac-uniform",
    "pac-phi",
    "louvain",
    "partitions",
    "tracking-mass",
)


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def planted_phi(n: int, seed: int):
    """(φ, labels): float32 symmetric φ with a zero diagonal, groups of 2-12 neurons with
    within-group φ = 1 ± 0.3 in Gaussian noise of σ = 0.05; labels are the planted groups."""
    import numpy as np

    rng = np.random.default_rng(seed)
    phi = np.empty((n, n), dtype=np.float32)
    for start in range(0, n, 1024):  # noise in row blocks (no n x n float64 temporary)
        stop = min(start + 1024, n)
        phi[start:stop] = rng.standard_normal((stop - start, n), dtype=np.float32) * 0.05
    for bi in range(0, n, 256):  # symmetrise from the upper triangle, tile by tile
        blk = phi[bi : bi + 256, bi : bi + 256]
        blk[...] = np.triu(blk) + np.triu(blk, 1).T
        for bj in range(bi + 256, n, 256):
            phi[bj : bj + 256, bi : bi + 256] = phi[bi : bi + 256, bj : bj + 256].T
    labels = np.empty(n, dtype=np.int64)
    perm, pos, group = rng.permutation(n), 0, 0
    while pos < n:
        ids = perm[pos : pos + int(rng.integers(2, 13))]
        strength = (1.0 + 0.3 * rng.standard_normal((ids.size, ids.size))).astype(np.float32)
        phi[np.ix_(ids, ids)] = (strength + strength.T) / 2
        labels[ids] = group
        pos, group = pos + ids.size, group + 1
    np.fill_diagonal(phi, 0.0)
    return phi, labels


# --------------------------------------------------------------------------- probes (floors)


def probe(device: str) -> dict:
    """Measured matmul throughput (multiply-adds per second) per dtype, and memory bandwidth."""
    import numpy as np
    import torch

    out: dict = {"matmul": {}}
    dtypes = [torch.float32, torch.float64] + ([torch.bfloat16] if device == "cuda" else [])
    for dtype in dtypes:
        a = torch.randn(4096, 4096, device=device).to(dtype)
        b = torch.randn(4096, 4096, device=device).to(dtype)
        a @ b
        _sync(device)
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 1.5:
            a @ b
            _sync(device)
            reps += 1
        out["matmul"][str(dtype).replace("torch.", "")] = reps * 4096**3 / (time.perf_counter() - t0)
    x = np.ones(1 << 27, dtype=np.float32)  # 512 MiB
    y = np.empty_like(x)
    np.copyto(y, x)
    t0, reps = time.perf_counter(), 0
    while time.perf_counter() - t0 < 1.0:
        np.copyto(y, x)
        reps += 1
    out["read_bytes_per_s"] = 2 * x.nbytes * reps / (time.perf_counter() - t0)  # read + write
    return out


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


# ----------------------------------------------------------------------------------- stages


def run_stage(stage: str, args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    n, d, dev = args.n, args.d, args.device
    rng = np.random.default_rng(0)
    gen = torch.Generator(device="cpu").manual_seed(0)
    info: dict = {}

    def clock(fn) -> float:
        _sync(dev)
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        return time.perf_counter() - t0

    if stage == "oca-moments":
        from hedonic_neurons.neurons import Moments

        batches = [torch.randn(args.batch_tokens, n, generator=gen).to(dev) for _ in range(2)]
        mom = Moments(n, device=dev, accumulate="mixed")  # the collector's default
        n_batches = max(1, args.tokens // args.batch_tokens)

        def go():
            for i in range(n_batches):
                mom.update(batches[i % 2])

        seconds = clock(go)
        info.update(
            madds=n_batches * args.batch_tokens * n * n,
            dtype=_gemm_dtype(mom),
            tokens=n_batches * args.batch_tokens,
        )
    elif stage == "oca-phi":
        from hedonic_neurons.neurons import Moments
        from hedonic_neurons.synergy.oca import oca_phi

        mom = Moments(n, device=dev, accumulate="mixed")
        mom.update(torch.randn(512, n, generator=gen).to(dev))
        down = torch.randn(d, n, generator=gen).to(dev)
        seconds = clock(lambda: oca_phi(mom, down))
        info.update(madds=d * n * n, dtype="float64")  # the cosines are formed in float64
    elif stage == "pas-gram":
        from hedonic_neurons.synergy.heads import NormAffineHead
        from hedonic_neurons.synergy.pas import PairSums, exact_local_sum

        batch = 2
        r = torch.randn(batch, d, generator=gen, dtype=torch.float32).to(dev)
        shifts = (0.01 * torch.randn(batch, n, d, generator=gen)).to(dev)
        head = NormAffineHead("rms", 1e-6, torch.randn(d, generator=gen, dtype=torch.float64).to(dev), 0.0)
        sums = PairSums(n, device=dev)
        seconds = clock(lambda: exact_local_sum(r, shifts, head, sums.sum))
        info.update(madds=batch * n * n * d // 2, dtype="float32", inputs=batch)
    elif stage in ("validate", "solve", "pac-uniform", "pac-phi", "louvain", "partitions"):
        seconds = _phi_stage(stage, args, info)
    elif stage == "tracking-mass":
        from hedonic_neurons.tracking.mass import interaction_mass

        down = torch.randn(d, n, generator=gen).to(dev)
        up = torch.randn(n, d, generator=gen).to(dev)
        gate = torch.randn(n, d, generator=gen).to(dev)
        scale = torch.ones(d).to(dev)
        A = torch.rand(n, generator=gen).to(dev)
        perm = rng.permutation(n)
        sizes = rng.integers(2, 64, size=100)
        sizes = sizes[np.cumsum(sizes) <= n]  # 100 coalitions of 2-63 neurons (fewer if n is small)
        cuts = np.cumsum(sizes)
        src = [perm[a:b].tolist() for a, b in zip(np.r_[0, cuts[:-1]], cuts)]
        perm2 = rng.permutation(n)
        dst = [perm2[a:b].tolist() for a, b in zip(np.r_[0, cuts[:-1]], cuts)]
        seconds = clock(lambda: interaction_mass(down, up, gate, scale, A, src, dst, device=dev))
        tracked = int(sizes.sum())
        info.update(madds=2 * n * d * tracked, dtype="float32", coalitions=int(sizes.size), tracked=tracked)
    else:
        raise SystemExit(f"unknown stage {stage}")
    out = {"stage": stage, "seconds": seconds, "peak_mib": _peak_mib(), **info}
    if dev == "cuda":
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _gemm_dtype(mom) -> str:
    """The dtype the accumulator's per-batch product runs in (the library's setting, if any)."""
    acc = getattr(mom, "accumulate", None)
    if acc is not None:
        return "float32" if acc == "mixed" else "float64"
    return str(mom.dtype).replace("torch.", "")


def _phi_stage(stage: str, args: argparse.Namespace, info: dict) -> float:
    import numpy as np

    from hedonic_neurons.artifacts import load_phi, validate_phi

    path = Path(args.phi_file)
    n = args.n
    info["phi_bytes"] = n * n * 4
    if stage == "solve":  # `hedonic solve --exact`, end to end: read, solve, two certificates, write
        from hedonic_neurons.game.cli import solve_phi

        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            summary = solve_phi(
                path, Path(tmp) / "part.json", exact=True, certify_samples=100_000, progress=False
            )
            seconds = time.perf_counter() - t0
            from hedonic_neurons.artifacts import labels_from_coalitions, load_partition

            part = load_partition(Path(tmp) / "part.json")
            ari = _ari(labels_from_coalitions(part["coalitions"], n), args)
        info.update(solver_seconds=summary["seconds"], coalitions=summary["sizes"]["count"], ari=ari)
        return seconds
    if stage == "partitions":  # the pipeline's partitions stage for one layer, 3 seeds
        from hedonic_neurons.config import GameConfig
        from hedonic_neurons.pipeline import HEDONIC, partition_layer
        from hedonic_neurons.synergy.collect import phi_path

        rng = np.random.default_rng(1)
        rows = rng.standard_normal((n, args.d))
        profiles = rng.standard_normal((n, args.profile_pairs))
        timings: dict[str, float] = {}
        with tempfile.TemporaryDirectory() as tmp:
            phi_dir = Path(tmp) / "phi"
            phi_dir.mkdir()
            os.symlink(path, phi_path(phi_dir, 0))
            t0 = time.perf_counter()
            partition_layer(
                0,
                phi=lambda metric: load_phi(phi_path(phi_dir, 0)),
                metrics=["pas"],
                baselines=args.baselines.split(","),
                seeds=[0, 1, 2],
                game=GameConfig(),
                path=lambda method, seed: Path(tmp) / method / f"seed{seed}.json",
                rows=lambda: rows,
                profiles=lambda: profiles,
                n_clusters=int(np.ceil(np.sqrt(n))),
                timings=timings,
            )
            seconds = time.perf_counter() - t0
        info["steps"] = timings
        info["method"] = HEDONIC["pas"]
        return seconds
    phi = load_phi(path)
    if stage == "validate":
        fresh = np.array(phi)  # an untrusted copy: the full check runs
        t0 = time.perf_counter()
        validate_phi(fresh)
        return time.perf_counter() - t0
    if stage in ("pac-uniform", "pac-phi"):
        import inspect

        from hedonic_neurons.game import PACTopCover

        kind = stage.split("-")[1]
        if kind == "phi" and "sampling" not in inspect.signature(PACTopCover).parameters:
            info["skipped"] = "PACTopCover has no sampling parameter"
            return float("nan")
        kw = {"sampling": kind, "phi_power": 4.0} if kind == "phi" else {}  # the CLI's default power
        t0 = time.perf_counter()
        est = PACTopCover(random_state=0, **kw).fit(phi)
        seconds = time.perf_counter() - t0
        info.update(coalitions=len(est.coalitions_), ari=_ari(est.labels_, args))
        return seconds
    if stage == "louvain":
        from hedonic_neurons.baselines import PhiCommunities

        t0 = time.perf_counter()
        est = PhiCommunities(random_state=0).fit(phi)
        seconds = time.perf_counter() - t0
        info.update(communities=len(est.coalitions_), ari=_ari(est.labels_, args))
        return seconds
    raise SystemExit(stage)


def _ari(labels, args: argparse.Namespace) -> float:
    """ARI of a partition against the planted groups (saved beside the φ file)."""
    import numpy as np
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(np.load(Path(args.phi_file).with_suffix(".labels.npy")), labels))


# --------------------------------------------------------------------------------- the table


def floor_seconds(r: dict, floors: dict) -> float | None:
    if "madds" in r:
        return r["madds"] / floors["matmul"][r["dtype"]]
    if "phi_bytes" in r:
        return r["phi_bytes"] / floors["read_bytes_per_s"]
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=14_336)
    ap.add_argument("--d", type=int, default=4_096)
    ap.add_argument("--tokens", type=int, default=8_192, help="tokens for the OCA moments stage")
    ap.add_argument("--batch-tokens", type=int, default=1_024)
    ap.add_argument("--profile-pairs", type=int, default=512, help="train pairs of the hierarchical baseline")
    ap.add_argument("--baselines", default="random,kmeans,hierarchical,phi-communities")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--phi-file", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.probe:
        print(json.dumps(probe(args.device)))
        return 0
    if args.child:
        print(json.dumps(run_stage(args.child, args)))
        return 0
    stages = [s for s in args.stages.split(",") if s]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        ap.error(f"unknown stage(s) {unknown}; expected some of {', '.join(STAGES)}")
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    forwarded = ["--n", str(args.n), "--d", str(args.d), "--tokens", str(args.tokens)]
    forwarded += ["--batch-tokens", str(args.batch_tokens), "--profile-pairs", str(args.profile_pairs)]
    forwarded += ["--baselines", args.baselines, "--device", args.device, "--seed", str(args.seed)]

    def child(*extra: str) -> dict:
        res = subprocess.run(
            [sys.executable, __file__, *forwarded, *extra], capture_output=True, text=True, env=env
        )
        if res.returncode != 0:
            return {
                "error": res.stderr.strip().splitlines()[-1]
                if res.stderr.strip()
                else f"exit {res.returncode}"
            }
        return json.loads(res.stdout.strip().splitlines()[-1])

    load = os.getloadavg()[0]
    print(f"n = {args.n:,} neurons, d_model = {args.d:,}, device {args.device}, load average {load:.1f}")
    floors = child("--probe")
    mm = ", ".join(f"{k} {v / 1e9:.1f} G multiply-adds/s" for k, v in floors["matmul"].items())
    print(f"floors measured now: matmul {mm}; memory {floors['read_bytes_per_s'] / 1e9:.1f} GB/s")
    with tempfile.TemporaryDirectory() as tmp:
        import numpy as np

        from hedonic_neurons.artifacts import save_phi

        phi_file = Path(tmp) / "phi_layer0.safetensors"
        t0 = time.perf_counter()
        phi, labels = planted_phi(args.n, args.seed)
        save_phi(phi_file, phi, {"layer": 0, "synthetic": "planted groups 2-12"})
        np.save(phi_file.with_suffix(".labels.npy"), labels)
        del phi
        print(
            f"synthetic phi: {args.n * args.n * 4 / 2**20:,.0f} MiB, built in {time.perf_counter() - t0:.1f} s\n"
        )
        print(f"{'stage':<15} {'seconds':>9} {'floor s':>9} {'x floor':>8} {'peak RSS':>10}  notes")
        for stage in stages:
            r = child("--child", stage, "--phi-file", str(phi_file))
            if "error" in r:
                print(f"{stage:<15} failed: {r['error']}")
                continue
            fl = floor_seconds(r, floors)
            ratio = f"{r['seconds'] / fl:8.1f}" if fl and r["seconds"] == r["seconds"] else f"{'-':>8}"
            notes = {
                k: v for k, v in r.items() if k not in ("stage", "seconds", "peak_mib", "madds", "phi_bytes")
            }
            if "steps" in notes:
                notes["steps"] = {k: round(v, 2) for k, v in notes["steps"].items()}
            print(
                f"{stage:<15} {r['seconds']:9.2f} {fl if fl else float('nan'):9.3f} {ratio} "
                f"{r['peak_mib']:8,.0f} MiB  {json.dumps(notes)}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
