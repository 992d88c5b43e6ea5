"""Benchmark of the phi-communities baseline (Louvain on the graph of positive phi).

Speed (default): each measurement runs in a fresh subprocess, so its peak memory (``ru_maxrss``,
which includes phi) is its own. The subprocess builds a synthetic phi with planted structure
(float32, symmetric, zero diagonal, built in place: 784 MiB at n = 14,336): neurons in groups of
16..128, phi_ij = noise N(0, sigma^2) + mu if i and j share a group, so about half of all pairs
are positive (like a real phi) and the groups are what Louvain should find. Measured:

- ``phi``: only building phi (its peak is the floor of every other row);
- ``graph``: ``positive_partner_graph(phi, m)`` (time, peak, edges);
- ``fit``: the graph, then ``PhiCommunities(max_partners=m).fit(graph)`` (Louvain alone timed;
  peak of the whole process), with the number of communities and the ARI to the planted groups;

at n = 14,336 (LLaMA-3-8B MLP width) with the default ``max_partners``, and at n = 1,536 with
every positive edge side by side with the kNN graph; ``--networkx`` adds the same fits with the
networkx backend. Below the table, ratios: graph + Louvain time to the 60 s target, peak to the
4 GiB target, full graph over kNN graph at n = 1,536, networkx over scikit-network.

ARI study (``--ari PHI.safetensors ...``): on real phi files, Louvain on every positive edge
against kNN graphs of several ``max_partners``, a few seeds each: number of communities, ARI to
the full-graph partitions (every kNN seed against every full seed), Louvain's own seed-to-seed ARI
on the full graph as the yardstick, and the modularity of each partition on the full graph.

    python benchmarks/bench_baselines.py                       # speed table (about 1 minute)
    python benchmarks/bench_baselines.py --networkx            # + networkx rows (about 6 minutes)
    python benchmarks/bench_baselines.py --n 4096              # quicker speed table
    python benchmarks/bench_baselines.py --ari /tmp/phi-oca-l3/phi_layer3.safetensors  # ~1.5 min

Exit status 1 when the n = 14,336 run misses a target.
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import subprocess
import sys
import time

TARGET_SECONDS = 60.0
TARGET_PEAK_BYTES = 4 * 2**30
MIB = 2**20


def _peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def planted_phi(n: int, seed: int, mu: float = 0.3, sigma: float = 0.1):
    """Symmetric float32 phi (zero diagonal) with planted groups, built in place; returns (phi, truth).

    Group sizes are drawn from 16..128 and the members shuffled; phi_ij = sigma * z_ij (z standard
    normal, mirrored from the upper triangle) + mu when i and j share a group. Work space is a few
    MiB beyond phi.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    sizes: list[int] = []
    while sum(sizes) < n:
        sizes.append(int(rng.integers(16, 129)))
    sizes[-1] -= sum(sizes) - n
    truth = rng.permutation(np.repeat(np.arange(len(sizes)), sizes)).astype(np.int32)
    phi = np.empty((n, n), dtype=np.float32)
    rng.standard_normal(out=phi, dtype=np.float32)
    step = max(1, (1 << 21) // n)
    for a in range(0, n, step):  # mirror the upper triangle into the lower one, block by block
        b = min(a + step, n)
        phi[b:, a:b] = phi[a:b, b:].T
        block = phi[a:b, a:b]
        block[...] = np.triu(block) + np.triu(block, 1).T
    for a in range(0, n, step):  # scale, then add the planted term (symmetric by construction)
        b = min(a + step, n)
        rows = phi[a:b]
        rows *= np.float32(sigma)
        rows += np.float32(mu) * (truth[a:b, None] == truth[None, :])
    np.fill_diagonal(phi, 0.0)
    return phi, truth


def child(what: str, n: int, partners: int | None, backend: str, seed: int) -> None:
    """One measurement in this (fresh) process; prints one JSON line."""
    import networkx  # noqa: F401  (imported up front so that no timing below includes an import)
    import sknetwork.clustering  # noqa: F401
    from sklearn.metrics import adjusted_rand_score

    from hedonic_neurons.baselines import PhiCommunities
    from hedonic_neurons.baselines.partitioners import positive_partner_graph

    t0 = time.perf_counter()
    phi, truth = planted_phi(n, seed)
    out: dict = {"what": what, "n": n, "partners": partners, "backend": backend, "phi_bytes": phi.nbytes}
    out["phi_seconds"] = time.perf_counter() - t0
    out["peak_phi"] = _peak_bytes()
    if what != "phi":
        t0 = time.perf_counter()
        graph = positive_partner_graph(phi, partners)
        out["graph_seconds"] = time.perf_counter() - t0
        out["edges"] = graph.nnz // 2
        out["peak_graph"] = _peak_bytes()
    if what == "fit":
        t0 = time.perf_counter()
        est = PhiCommunities(max_partners=partners, backend=backend, random_state=seed).fit(graph)
        out["fit_seconds"] = time.perf_counter() - t0
        out["communities"] = len(est.coalitions_)
        out["ari_truth"] = adjusted_rand_score(truth, est.labels_)
        out["groups"] = int(truth.max()) + 1
    out["peak"] = _peak_bytes()
    print(json.dumps(out))


def _run_child(what: str, n: int, partners: int | None, backend: str, seed: int) -> dict:
    cmd = [sys.executable, __file__, "--child", what, "--n", str(n), "--seed", str(seed)]
    cmd += ["--partners", "none" if partners is None else str(partners), "--backends", backend]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"child {what} n={n} partners={partners} {backend} failed:\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def speed(n: int, small: int, partners: int, seed: int, with_networkx: bool) -> int:
    sk, nx = "sknetwork", "networkx"
    plan = [("phi", n, partners, sk), ("graph", n, partners, sk), ("fit", n, partners, sk)]
    if with_networkx:
        plan.append(("fit", n, partners, nx))
    plan += [("fit", small, None, sk), ("fit", small, partners, sk)]
    if with_networkx:
        plan += [("fit", small, None, nx), ("fit", small, partners, nx)]
    rows = [_run_child(*p, seed) for p in plan]
    print(
        f"synthetic phi with planted groups (16..128 neurons, mu = 0.3, noise sigma = 0.1), seed {seed}; "
        f"each row is a fresh process; peak = ru_maxrss of that process, phi included"
    )
    head = (
        f"{'n':>7} {'partners':>8} {'backend':>9} {'step':>5} {'edges':>11} {'graph s':>7} {'Louvain s':>9} "
        f"{'peak MiB':>8} {'peak/phi':>8} {'comms':>5} {'groups':>6} {'ARI truth':>9}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        cells = {
            "edges": f"{r['edges']:,}" if "edges" in r else "-",
            "graph": f"{r['graph_seconds']:.2f}" if "graph_seconds" in r else "-",
            "fit": f"{r['fit_seconds']:.2f}" if "fit_seconds" in r else "-",
            "ari": f"{r['ari_truth']:.3f}" if "ari_truth" in r else "-",
        }
        part = "all" if r["partners"] is None else str(r["partners"])
        backend = r["backend"] if r["what"] == "fit" else "-"
        print(
            f"{r['n']:>7,} {part:>8} {backend:>9} {r['what']:>5} {cells['edges']:>11} {cells['graph']:>7} "
            f"{cells['fit']:>9} {r['peak'] / MIB:>8,.0f} {r['peak'] / r['phi_bytes']:>8.2f} "
            f"{r.get('communities', '-')!s:>5} {r.get('groups', '-')!s:>6} {cells['ari']:>9}"
        )

    def find(what: str, size: int, m: int | None, backend: str) -> dict:
        return next(
            r for r in rows if (r["what"], r["n"], r["partners"], r["backend"]) == (what, size, m, backend)
        )

    phi_row, big = find("phi", n, partners, sk), find("fit", n, partners, sk)
    total = big["graph_seconds"] + big["fit_seconds"]
    t_ok, m_ok = total <= TARGET_SECONDS, big["peak"] <= TARGET_PEAK_BYTES
    print()
    print(
        f"n = {n:,}, max_partners = {partners}, sknetwork: graph {big['graph_seconds']:.2f} s + Louvain "
        f"{big['fit_seconds']:.2f} s = {total:.2f} s = {total / TARGET_SECONDS:.3f} x the {TARGET_SECONDS:.0f} s "
        f"target ({'ok' if t_ok else 'MISSED'}); peak {big['peak'] / MIB:,.0f} MiB = "
        f"{big['peak'] / TARGET_PEAK_BYTES:.2f} x the 4 GiB target ({'ok' if m_ok else 'MISSED'}); phi alone "
        f"peaks at {phi_row['peak'] / MIB:,.0f} MiB, so graph + Louvain add {(big['peak'] - phi_row['peak']) / MIB:,.0f} MiB"
    )
    if with_networkx:
        bnx = find("fit", n, partners, nx)
        print(
            f"n = {n:,}, max_partners = {partners}: networkx Louvain {bnx['fit_seconds']:.1f} s = "
            f"{bnx['fit_seconds'] / big['fit_seconds']:.0f} x sknetwork, peak {bnx['peak'] / MIB:,.0f} MiB"
        )
    for backend in [sk, nx] if with_networkx else [sk]:
        full, knn = find("fit", small, None, backend), find("fit", small, partners, backend)
        print(
            f"n = {small:,}, {backend}: every positive edge / max_partners = {partners}: "
            f"{full['edges'] / knn['edges']:.2f} x the edges, "
            f"{full['fit_seconds'] / knn['fit_seconds']:.2f} x the Louvain time, "
            f"{(full['peak'] - full['peak_phi']) / max(knn['peak'] - knn['peak_phi'], 1):.2f} x the memory above phi; "
            f"communities {full['communities']} vs {knn['communities']}, "
            f"ARI to planted {full['ari_truth']:.3f} vs {knn['ari_truth']:.3f}"
        )
    if with_networkx:
        f_sk, f_nx = find("fit", small, None, sk), find("fit", small, None, nx)
        print(
            f"n = {small:,}, every positive edge: networkx Louvain {f_nx['fit_seconds']:.2f} s = "
            f"{f_nx['fit_seconds'] / f_sk['fit_seconds']:.0f} x sknetwork ({f_sk['fit_seconds']:.2f} s)"
        )
    return 0 if t_ok and m_ok else 1


def modularity(graph, labels, resolution: float = 1.0) -> float:
    """Weighted modularity of ``labels`` on a symmetric sparse graph (networkx's definition)."""
    import numpy as np
    import scipy.sparse as sp

    g = sp.csr_array(graph)
    two_m = float(g.sum())
    deg = np.asarray(g.sum(axis=1)).ravel()
    coo = g.tocoo()
    same = labels[coo.row] == labels[coo.col]
    internal = np.bincount(labels[coo.row[same]], weights=coo.data[same], minlength=labels.max() + 1)
    tot = np.bincount(labels, weights=deg, minlength=labels.max() + 1)
    return float(internal.sum() / two_m - resolution * ((tot / two_m) ** 2).sum())


def ari_study(paths: list[str], partners: list[int], seeds: int, backends: list[str], ref_seeds: int) -> None:
    import numpy as np
    from sklearn.metrics import adjusted_rand_score as ari

    from hedonic_neurons.artifacts import load_phi
    from hedonic_neurons.baselines import PhiCommunities
    from hedonic_neurons.baselines.partitioners import positive_partner_graph

    def mean_ari(a: list, b: list | None = None) -> tuple[float, float]:
        pairs = itertools.combinations(a, 2) if b is None else itertools.product(a, b)
        vals = [ari(x, y) for x, y in pairs]
        return float(np.mean(vals)), float(np.min(vals))

    def runs(graph, m, backend: str, n_seeds: int) -> tuple[list, list, list, list]:
        labels, comms, nonsingle, secs = [], [], [], []
        for s in range(n_seeds):
            t0 = time.perf_counter()
            est = PhiCommunities(max_partners=m, backend=backend, random_state=s).fit(graph)
            secs.append(time.perf_counter() - t0)
            labels.append(est.labels_)
            comms.append(len(est.coalitions_))
            nonsingle.append(sum(len(c) > 1 for c in est.coalitions_))
        return labels, comms, nonsingle, secs

    head = (
        f"{'backend':>9} {'partners':>8} {'edges':>9} {'graph s':>7} {'fit s':>6} {'comms (min-max)':>15} "
        f"{'non-single':>10} {'ARI to ref':>10} {'(min)':>6} {'seed-seed':>9} {'Q on full':>9}"
    )
    for path in paths:
        phi = load_phi(path)
        full = positive_partner_graph(phi, None)
        print(
            f"\n{path}: n = {phi.shape[0]:,}; ref = networkx Louvain on every positive edge, seeds "
            f"0..{ref_seeds - 1}; other rows seeds 0..{seeds - 1}; ARI to ref = mean (min) over all "
            f"(seed, ref seed) pairs; Q = modularity on the full graph"
        )
        print(head)
        print("-" * len(head))
        ref: list = []
        rows = [("networkx", None)] + [(b, m) for b in backends for m in [None, *partners]]
        for i, (backend, m) in enumerate(rows):
            if i and backend == "networkx" and m is None:
                continue  # that is the reference, already the first row
            t0 = time.perf_counter()
            graph = full if m is None else positive_partner_graph(phi, m)
            g_s = time.perf_counter() - t0
            labels, comms, nonsingle, secs = runs(graph, m, backend, ref_seeds if i == 0 else seeds)
            if i == 0:
                ref, to_ref = labels, ("(ref)", "-")
            else:
                mean, low = mean_ari(labels, ref)
                to_ref = (f"{mean:.3f}", f"{low:.3f}")
            self_mean, _ = mean_ari(labels)
            q = np.mean([modularity(full, lab) for lab in labels])
            part = "all" if m is None else str(m)
            print(
                f"{backend:>9} {part:>8} {graph.nnz // 2:>9,} {g_s:>7.2f} {np.mean(secs):>6.2f} "
                f"{f'{np.mean(comms):.1f} ({min(comms)}-{max(comms)})':>15} {np.mean(nonsingle):>10.1f} "
                f"{to_ref[0]:>10} {to_ref[1]:>6} {self_mean:>9.3f} {q:>9.4f}"
            )


def main(argv: list[str] | None = None) -> int:
    from hedonic_neurons.baselines.partitioners import DEFAULT_MAX_PARTNERS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=14_336, help="speed: the large n")
    ap.add_argument("--small", type=int, default=1_536, help="speed: the n of the full-vs-kNN comparison")
    ap.add_argument(
        "--partners",
        default=str(DEFAULT_MAX_PARTNERS),
        help="speed: max_partners (default: the class default); --ari: comma list",
    )
    ap.add_argument("--networkx", action="store_true", help="speed: also time the networkx backend")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ari", nargs="+", metavar="PHI", help="run the ARI study on these phi files instead")
    ap.add_argument("--seeds", type=int, default=10, help="--ari: Louvain seeds per graph")
    ap.add_argument("--ref-seeds", type=int, default=5, help="--ari: seeds of the networkx reference")
    ap.add_argument("--backends", default="sknetwork", help="--ari: comma list of sknetwork, networkx")
    ap.add_argument("--child", choices=["phi", "graph", "fit"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        partners = None if args.partners == "none" else int(args.partners)
        child(args.child, args.n, partners, args.backends, args.seed)
        return 0
    if args.ari:
        plist = args.partners if "," in args.partners else "4,8,16,32,64,128,256,384,512"
        ari_study(
            args.ari, [int(p) for p in plist.split(",")], args.seeds, args.backends.split(","), args.ref_seeds
        )
        return 0
    return speed(args.n, args.small, int(args.partners), args.seed, args.networkx)


if __name__ == "__main__":
    sys.exit(main())
