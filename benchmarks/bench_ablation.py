"""Benchmark of batched ablation (issue 7): the replayed prefix against recomputing every block.

``ablation_logits`` runs the blocks below the ablated layer once per batch and replays their output
for every neuron set (``reuse_prefix=True``, the default), instead of running them once per set.
For each model and layer this prints, side by side in one run:

- the time of one plain forward pass of the batch (whole model, no hooks);
- the time per neuron set with every block recomputed, with the blocks below the layer replayed
  and the ablated block run per set, and with the ablated block also run once and its output
  rebuilt per set (the default), each as a multiple of that forward pass, and the speed-up of
  the last over the first;
- the largest difference between the results (they compute the same thing, up to float rounding).

Zero ablation of random sets of 10 neurons, so no adapter or reference weights are needed; the
inputs are demo-corpus pairs (no shared data needed). Usage::

    python benchmarks/bench_ablation.py [--pairs 16] [--sets 24] [--smollm2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench(name: str, layers: list[int], n_pairs: int, n_sets: int) -> None:
    from hedonic_neurons.data import demo_corpus
    from hedonic_neurons.models import load_model
    from hedonic_neurons.neurons import ablation_logits

    nm = load_model(name, device="cpu")
    pairs = demo_corpus().split_pairs("test")[:n_pairs]
    batch = nm.encode([p.query for p in pairs], [p.passage for p in pairs])
    rng = np.random.default_rng(0)
    sets = [rng.choice(nm.n_neurons, 10, replace=False).tolist() for _ in range(n_sets)]
    with torch.no_grad():
        forward = best_of(lambda: nm.model(**batch))
    print(f"\n{name}: {nm.n_layers} layers, {n_pairs} pairs x {n_sets} sets of 10 neurons (zero ablation)")
    print(f"plain forward pass: {forward * 1000:.0f} ms")
    print(
        "layer | per set, recomputed | replayed, block per set | replayed, block rebuilt "
        "| speed-up (rebuilt vs recomputed) | max |difference|"
    )
    results: dict[tuple[int, str], torch.Tensor] = {}

    def run(layer: int, how: str) -> None:
        results[layer, how] = ablation_logits(
            nm.model, batch, layer, sets, mode="zero", max_batch=4 * n_pairs,
            reuse_prefix=how != "recomputed", rebuild_layer=how == "rebuilt",
        )  # fmt: skip

    for layer in layers:
        cost = {
            how: best_of(lambda: run(layer, how), 2) / n_sets / forward  # noqa: B023 (called at once)
            for how in ("recomputed", "per set", "rebuilt")
        }
        diff = max(float((results[layer, how] - results[layer, "recomputed"]).abs().max()) for how in cost)
        print(
            f"{layer:5d} | {cost['recomputed']:19.2f}x | {cost['per set']:23.2f}x | {cost['rebuilt']:23.2f}x "
            f"| {cost['recomputed'] / cost['rebuilt']:32.2f}x | {diff:.1e}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--sets", type=int, default=24)
    parser.add_argument("--smollm2", action="store_true", help="also SmolLM2-135M (LLaMA, 30 layers)")
    args = parser.parse_args()
    torch.manual_seed(0)
    bench("minilm", [1, 2, 3, 5], args.pairs, args.sets)
    if args.smollm2:
        bench("smollm2", [7, 14, 22], args.pairs, args.sets)


if __name__ == "__main__":
    main()
