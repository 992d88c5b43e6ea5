"""Benchmark of OCA collection precision (mixed vs float64 accumulation), side by side.

MiniLM (all-MiniLM-L6-v2, BERT, 6 layers x 1,536 neurons) with a random LoRA adapter, on the
first N pairs of the MS MARCO dev BM25 top-20 file (pre-encoded batches, as in
``bench_synergy.py``, whose data path and adapter helper this reuses). Every measurement runs in
its own subprocess (``MALLOC_MMAP_THRESHOLD_=65536``) and times ``--reps`` passes over the
batches, keeping the fastest, in wall-clock and in CPU time (the process's own, which other
processes on a shared machine disturb much less; with ``--threads 1`` it is the work done);
``--rounds`` repeats the whole set of subprocesses in turn, and the best per kind is reported:

- ``forward``: a plain forward pass (whole model, no hooks);
- ``oca-all-fp64``: ``OCACollector`` on all 6 layers in one pass, ``accumulate="fp64"``;
- ``oca-all-mixed``: the same with ``accumulate="mixed"`` (the default);
- ``oca-one-mixed``: one layer (``--layer``), mixed;
- ``hooks-all``: the collector's forward with recording and pooling but no accumulation
  (the cost of hooks, pooling copies and the early stop, without any product).

It prints each time, its ratio to the forward pass, the max relative φ difference mixed vs fp64
(max|Δφ| / max|φ| per layer) and whether every neuron keeps the same top-2 partners (the two
largest φ in its row), and with ``--breakdown`` where the accumulation time goes (in-process,
on activations recorded once). Usage::

    python benchmarks/bench_oca.py [--n 64] [--batch-size 16] [--reps 3] [--rounds 1] [--breakdown]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_synergy import DATA, make_adapter

KINDS = ("forward", "oca-all-fp64", "oca-all-mixed", "oca-one-mixed", "hooks-all")


def _setup(args: argparse.Namespace):
    import torch

    from hedonic_neurons.data import load_pairs
    from hedonic_neurons.models import load_model

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    nm = load_model("minilm", adapter=args.adapter, device="cpu")
    pairs = load_pairs(args.data)[: args.n]
    bs = args.batch_size
    batches = [
        nm.encode([p.query for p in pairs[k : k + bs]], [p.passage for p in pairs[k : k + bs]])
        for k in range(0, len(pairs), bs)
    ]
    return nm, batches


def one(args: argparse.Namespace) -> dict:
    """One measurement in this process: the fastest of ``reps`` passes; optionally saves φ."""
    import numpy as np
    import torch

    from hedonic_neurons.neurons import Moments
    from hedonic_neurons.synergy.collect import CollectSettings, OCACollector

    nm, batches = _setup(args)
    kind = args.one
    layers = [args.layer] if kind == "oca-one-mixed" else list(range(nm.n_layers))
    accumulate = "fp64" if kind == "oca-all-fp64" else "mixed"
    collector = None
    if kind == "forward":

        def step(batch, index):
            nm.model(**batch)

    else:
        collector = OCACollector(nm, layers, CollectSettings(metric="oca", accumulate=accumulate))
        step = collector.update
    times: list[float] = []
    cpus: list[float] = []
    with torch.no_grad():
        nm.model(**batches[0])  # warm-up (lazy initialisation), not timed
        if collector is not None:
            collector.__enter__()
            if kind == "hooks-all":
                for layer in layers:
                    collector.moments[layer].update = lambda a: None
        for _rep in range(args.reps):
            if collector is not None and kind != "hooks-all":  # fresh sums for every pass
                for layer in layers:
                    collector.moments[layer] = Moments(
                        nm.n_neurons, accumulate=accumulate, workspace=collector.workspace
                    )
                collector.rec.moments = collector.moments
            start, cpu = time.perf_counter(), time.process_time()
            for index, batch in enumerate(batches):
                step(batch, index)
            times.append(time.perf_counter() - start)
            cpus.append(time.process_time() - cpu)
        if collector is not None:
            if args.save and kind != "hooks-all":
                np.savez(args.save, **{str(layer): collector.result(layer)[0] for layer in layers})
            collector.__exit__(None, None, None)
    return {
        "kind": kind,
        "n": args.n,
        "tokens": sum(int(b["attention_mask"].sum()) for b in batches),
        "seconds": min(times),
        "cpu_seconds": min(cpus),
        "all": times,
    }


def breakdown(args: argparse.Namespace) -> None:
    """Where the accumulation time goes: the parts of the mixed update and the fp64 update, timed
    on activations recorded once (per pass over all layers and batches), against the forward; CPU
    time."""
    import torch

    from hedonic_neurons.neurons import Moments, record
    from hedonic_neurons.neurons import stats as st

    nm, batches = _setup(args)
    layers = list(range(nm.n_layers))
    with torch.no_grad():
        with record(nm.model, layers, moments=False, keep=True, dtype=torch.float32) as rec:
            for b in batches:
                rec(b)
        acts = [a for layer in layers for a in rec.kept[layer]]

        def best(fn) -> float:
            """Fastest CPU time of ``reps`` calls (robust to other processes on the machine)."""
            fn()
            out = []
            for _ in range(args.reps):
                start = time.process_time()
                fn()
                out.append(time.process_time() - start)
            return min(out)

        fwd = best(lambda: [nm.model(**b) for b in batches])
        n = nm.n_neurons
        strips = st._strips(n, st.STRIP)
        which = [layer for layer in layers for _ in rec.kept[layer]]
        ws: dict = {}
        mixed = {layer: Moments(n, accumulate="mixed", workspace=ws) for layer in layers}
        fp64 = {layer: Moments(n) for layer in layers}
        cs = [a.mean(0) for a in acts]
        xbuf = torch.empty(max(a.numel() for a in acts))
        xs = [a - c for a, c in zip(acts, cs)]
        x64 = [x.double() for x in xs]
        g32 = torch.empty(st.STRIP * n)
        g64 = torch.empty(st.STRIP * n, dtype=torch.float64)
        out = torch.zeros(n, n, dtype=torch.float64)
        two = torch.zeros(n, 2, dtype=torch.float64)

        def gemm_strips():
            for x in xs:
                for s, e in strips:
                    shape = (e - s, n - s)
                    torch.mm(x[:, s:e].T, x[:, s:], out=g32[: shape[0] * shape[1]].view(shape))

        def add_strips():
            for _ in xs:
                for s, e in strips:
                    shape = (e - s, n - s)
                    size = shape[0] * shape[1]
                    out[s:e, s:].add_(g64[:size].view(shape).copy_(g32[:size].view(shape)))

        parts = {
            "mixed update (all)": lambda: [mixed[k].update(a) for k, a in zip(which, acts)],
            "fp64 update (all)": lambda: [fp64[k].update(a) for k, a in zip(which, acts)],
            "  centring x = a - c": lambda: [
                torch.sub(a, c, out=xbuf[: a.numel()].view(a.shape)) for a, c in zip(acts, cs)
            ],
            "  sum of x (fp32)": lambda: [x.sum(0) for x in xs],
            "  fp32 GEMM, upper strips": gemm_strips,
            "  fp32 GEMM, full": lambda: [x.T @ x for x in xs],
            "  copy + add strips into fp64": add_strips,
            "  rank-2 fp64 correction": lambda: [
                [out[s:e, s:].addmm_(two[s:e], two.T[:, s:]) for s, e in strips] for _ in xs
            ],
            "  mirror (once per read)": lambda: mixed[0]._mirror(),
            "  fp64 GEMM, full (old path)": lambda: [out.addmm_(x.T, x) for x in x64],
        }
        print(f"\nbreakdown over {len(acts)} (layer, batch) products, forward {fwd * 1000:.0f} ms:")
        for label, fn in parts.items():
            t = best(fn)
            print(f"  {label:<32} {t * 1000:8.1f} ms  {t / fwd:6.3f}x forward")


def measure(kind: str, adapter: Path, args: argparse.Namespace, save: str = "") -> Any:
    cmd = [
        sys.executable,
        __file__,
        "--one",
        kind,
        "--adapter",
        str(adapter),
        "--n",
        str(args.n),
        "--layer",
        str(args.layer),
        "--batch-size",
        str(args.batch_size),
        "--reps",
        str(args.reps),
        "--threads",
        str(args.threads),
        "--data",
        str(args.data),
    ]
    if save:
        cmd += ["--save", save]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": os.environ.get("MALLOC_MMAP_THRESHOLD_", "65536")}
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{done.stderr[-3000:]}")
    if kind == "breakdown":
        return done.stdout
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(fp64_file: Path, mixed_file: Path) -> None:
    import numpy as np

    fp64, mixed = np.load(fp64_file), np.load(mixed_file)
    worst, same = 0.0, True
    for layer in sorted(fp64.files, key=int):
        a, b = fp64[layer].astype(np.float64), mixed[layer].astype(np.float64)
        rel = np.abs(a - b).max() / np.abs(a).max()
        top_a, top_b = np.argsort(-a, 1)[:, :2], np.argsort(-b, 1)[:, :2]
        kept = np.all(top_a == top_b, 1)
        worst, same = max(worst, rel), same and bool(kept.all())
        print(
            f"  layer {layer}: max|dphi|/max|phi| = {rel:.2e}; neurons keeping their top-2 partners "
            f"{int(kept.sum())}/{len(kept)}"
        )
    print(f"max relative phi difference mixed vs fp64: {worst:.2e}; same top-2 partners everywhere: {same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="MiniLM pairs")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--layer", type=int, default=3, help="the layer of the single-layer row")
    parser.add_argument("--reps", type=int, default=3, help="timed passes per measurement (fastest kept)")
    parser.add_argument("--rounds", type=int, default=1, help="repeats of the whole set of subprocesses")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--breakdown", action="store_true", help="also time the parts of the update")
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--b-scale", type=float, default=0.05)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--adapter", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--save", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one == "breakdown":
        breakdown(args)
        return
    if args.one:
        print(json.dumps(one(args)))
        return
    import torch

    print(
        f"data: {args.data} (first {args.n} pairs), batch size {args.batch_size}, torch threads "
        f"{args.threads or torch.get_num_threads()}, {args.reps} passes x {args.rounds} rounds (fastest kept), "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        adapter = make_adapter("minilm", tmp / "minilm-lora", args.b_scale)
        best: dict[str, dict] = {}
        for round_ in range(args.rounds):
            for kind in KINDS:
                save = str(tmp / f"{kind}.npz") if round_ == 0 and kind.startswith("oca-all") else ""
                res = measure(kind, adapter, args, save=save)
                if kind not in best or res["seconds"] < best[kind]["seconds"]:
                    best[kind] = res
        base, base_cpu = best["forward"]["seconds"], best["forward"]["cpu_seconds"]
        print(f"\nMiniLM, {best['forward']['tokens']} tokens (random LoRA adapter, B x {args.b_scale})")
        for kind in KINDS:
            res = best[kind]
            label = kind if kind != "oca-one-mixed" else f"oca-one-mixed (layer {args.layer})"
            print(
                f"  {label:<28} {res['seconds']:7.3f} s  ratio {res['seconds'] / base:5.2f}x forward  "
                f"(CPU time {res['cpu_seconds']:7.3f} s, ratio {res['cpu_seconds'] / base_cpu:5.2f}x; "
                f"passes: {', '.join(f'{t:.3f}' for t in res['all'])} s)"
            )
        mixed = best["oca-all-mixed"]
        print(
            f"target: oca-all-mixed <= 1.2x forward: {mixed['seconds'] / base:.2f}x wall clock, "
            f"{mixed['cpu_seconds'] / base_cpu:.2f}x CPU time"
        )
        compare(tmp / "oca-all-fp64.npz", tmp / "oca-all-mixed.npz")
        if args.breakdown:
            print(measure("breakdown", adapter, args), end="")


if __name__ == "__main__":
    main()
