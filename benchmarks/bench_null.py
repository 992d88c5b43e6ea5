"""Benchmark of the random-set null's cost (issue 13): its forward passes against the rest of the
evaluation, measured side by side in one run of :func:`hedonic_neurons.evaluate.layer.evaluate_layer`.

The evaluation ablates, for each layer, (a) every evaluated coalition, the whole layer and nothing on
every test pair, and the single neurons on a small synergy subsample ("the rest"), and (b) ≥ 200 random
size-matched sets per log-size bin on a seeded subsample of whole test queries ("the null"). The
null's subsample is chosen so that the null forwards at most 2× the rest's sequences (above a floor of
16 pairs); this benchmark measures what that costs in seconds, which is what a user waits for.

Setup, like ``hedonic run configs/minilm-msmarco-cqtr.yaml``: MiniLM, the DL19 test side of that
config (every query × its BM25 top-30, 1,290 pairs; the demo corpus's test split when ``../shared``
is absent), one seed-0 partition per method with coalitions of the sizes that config's runs evaluate
(``--sizes``), ``top_k`` of them per method and ``--methods`` methods, zero ablation (no adapter
needed: the cost of a forward does not depend on the ablation mode). Prints per layer the seconds and
sequences of the null and of the rest, and their ratios. Usage::

    python benchmarks/bench_null.py [--layers 2,3] [--methods 7] [--pairs 1290]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "minilm-msmarco-cqtr.yaml"


def test_pairs(n_pairs: int):
    """The test side of configs/minilm-msmarco-cqtr.yaml (read from the YAML, so no adapter is needed)."""
    from types import SimpleNamespace

    import yaml

    from hedonic_neurons.pipeline import load_split, task_values

    test = yaml.safe_load(CONFIG.read_text())["data"]["test"]
    source = SimpleNamespace(
        rerank=str(CONFIG.parent / test["rerank"]), qrels=str(CONFIG.parent / test["qrels"]), depth=test["depth"]
    )
    if Path(source.rerank).exists():
        pairs, qrels, desc = load_split(source, "test", n_pairs, 0, "cqtr")
    else:  # ../shared absent: the demo corpus (same code path, other text)
        print(f"{source.rerank} not found; using the demo corpus")
        pairs, qrels, desc = load_split("demo", "test", n_pairs, 0, "cqtr")
    return pairs, task_values("cqtr", pairs, qrels), qrels, desc


def partitions(n: int, n_methods: int, sizes: list[int], seed: int = 0) -> dict[int, dict[str, list[list[int]]]]:
    """One partition per method: disjoint coalitions of ``sizes`` (the rest singletons)."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[list[int]]] = {}
    for m in range(n_methods):
        perm = rng.permutation(n).tolist()
        cs, at = [], 0
        for s in sizes:
            cs.append(sorted(perm[at : at + s]))
            at += s
        out[f"method{m}"] = cs + [[i] for i in perm[at:]]
    return {0: out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", default="2,3")
    ap.add_argument("--methods", type=int, default=7, help="methods evaluated (a run: 2 hedonic + 4 baselines + attribution)")
    ap.add_argument("--sizes", default="6,8,10,13,20", help="sizes of the evaluated coalitions (a run's top 5)")
    ap.add_argument("--pairs", type=int, default=1290)
    ap.add_argument("--seeds", type=int, default=1, help="partitions per method (a run: 3 seeds, shared null)")
    args = ap.parse_args()

    from hedonic_neurons.config import EvaluateConfig
    from hedonic_neurons.evaluate.layer import evaluate_layer
    from hedonic_neurons.models import load_model

    nm = load_model("minilm", device="cpu")
    pairs, y, qrels, desc = test_pairs(args.pairs)
    sizes = [int(s) for s in args.sizes.split(",")]
    cfg = EvaluateConfig(
        evaluations=["effects", "null", "synergy"], ablation_modes=["zero"], attribution=False,
        selection="largest", top_k=len(sizes),
    )  # fmt: skip
    parts = {s: partitions(nm.n_neurons, args.methods, sizes, seed=s)[0] for s in range(args.seeds)}
    print(f"MiniLM, {len(pairs)} test pairs ({desc}); {args.methods} methods x {args.seeds} seed(s) x "
          f"{len(sizes)} coalitions of sizes {sizes}; zero ablation; null: {cfg.null_sets} sets per bin, "
          f"null_pairs {cfg.null_pairs}, synergy_pairs {cfg.synergy_pairs}")
    print("layer | null s | rest s | null/rest (s) | null seqs | rest seqs | null/rest (seqs) | null pairs | wall s")
    for layer in (int(x) for x in args.layers.split(",")):
        t0 = time.perf_counter()
        _, ctx = evaluate_layer(
            nm, layer, parts, reference_method="method0", config=cfg, task="cqtr", test=pairs, y_test=y,
            qrels=qrels, seed=0, batch_size=16,
        )  # fmt: skip
        wall = time.perf_counter() - t0
        t = ctx.timing
        out0 = next(iter(ctx.outputs.values()))
        print(
            f"{layer} | {t['null']:.1f} | {t['rest']:.1f} | {t['null'] / t['rest']:.2f}x | {t['null_rows']} | "
            f"{t['rest_rows']} | {t['null_rows'] / t['rest_rows']:.2f}x | {out0.sub.size} | {wall:.1f}"
        )


if __name__ == "__main__":
    main()
