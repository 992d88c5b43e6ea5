"""φ validity on the real models this machine has: does PAS rank neuron pairs like the full-model Δ_ij?

For each model and layer this measures, in one run:

- PAS φ with the local readout (the model's head on the residual right after the layer), taylor
  mode, on ``--phi-inputs`` MS MARCO dev pairs (the demo corpus without ../shared);
- and, with ``--next-block-inputs`` > 0, PAS with the next-block readout (taylor) on that many of
  those pairs;
- the full-model Δ_ij = f(∅) − f({i}) − f({j}) + f({i, j}) (float64 passes,
  :func:`hedonic_neurons.evaluate.validity.full_model_deltas`) for ``--pairs`` neuron pairs (half
  the largest |φ_local|, half uniform: ``sample_pairs``), averaged over ``--test-inputs`` held-out
  pairs of other queries;
- how well each φ tracks Δ (``agreement``: Spearman, also within the top-|φ| and the uniform
  halves, sign agreement over pairs with |Δ| above rounding, slope of φ on Δ).

Models: MiniLM (BERT) with the CQTR adapter of ``runs/finetune/minilm-cqtr-s0`` when it exists
(reference ablation; otherwise zero ablation and MiniLM's random head), and SmolLM2-135M (LLaMA)
with the CQTR adapter of ``runs/finetune/smollm2-cqtr-docfirst`` when it exists (reference
ablation, its score head, its input template; otherwise zero ablation and the causal head, the
score token's logit). ``--no-adapter`` measures the base models even where an adapter exists.
These are the two architectures with trained weights on this machine; Mistral, Qwen2, GPT-NeoX
and GPT-2 are exercised by the tests on random tiny models, whose φ validity says nothing about a
trained model, so they are not rows here (every ``hedonic run`` reports its own ``phi_validity``).

Usage::

    python benchmarks/bench_validity.py [--models minilm,smollm2] [--no-adapter] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

# name: (adapter used when it exists, its row label, the base model's row label, zero ablation)
ADAPTERS = {
    "minilm": (
        Path("runs/finetune/minilm-cqtr-s0/adapter"), "MiniLM + CQTR adapter (seed 0)", "MiniLM, random head"
    ),
    "smollm2": (
        Path("runs/finetune/smollm2-cqtr-docfirst/adapter"), "SmolLM2-135M + CQTR adapter",
        "SmolLM2-135M, causal head",
    ),
}  # fmt: skip
SETUPS = {
    # name: (load kwargs, layers, pairs, phi inputs, test inputs)
    "minilm": ({}, [2, 3], 64, 64, 32),
    "smollm2": ({"head": "causal"}, [7, 14], 24, 16, 12),
}


def inputs(n_phi: int, n_test: int):
    """(φ inputs, held-out test inputs): whole queries of the MS MARCO dev subset (or the demo
    corpus), the test queries disjoint from the φ ones."""
    from hedonic_neurons.data import load_pairs
    from hedonic_neurons.errors import HedonicError

    try:
        pairs = load_pairs("msmarco-dev")
        source = "MS MARCO dev (../shared)"
    except HedonicError:  # no shared data: the offline demo corpus
        from hedonic_neurons.data import demo_corpus

        pairs = demo_corpus().split_pairs("train")
        source = "demo corpus"
    qids = sorted({p.qid for p in pairs})
    rng = np.random.default_rng(0)
    rng.shuffle(qids)
    half = set(qids[: len(qids) // 2])
    first = [p for p in pairs if p.qid in half][:n_phi]
    second = [p for p in pairs if p.qid not in half][:n_test]
    return first, second, source


def bench(name: str, next_block_inputs: int, no_adapter: bool = False) -> list[dict]:
    import hedonic_neurons as hn
    from hedonic_neurons.evaluate.validity import agreement, full_model_deltas, sample_pairs

    load_kw, layers, n_pairs, n_phi, n_test = SETUPS[name]
    adapter, what, base_what = ADAPTERS[name]
    if adapter.exists() and not no_adapter:
        nm, mode = hn.load_model(name, adapter=str(adapter)), "reference"
    else:
        nm, mode, what = hn.load_model(name, **load_kw), "zero", base_what
    phi_inputs, test_inputs, source = inputs(n_phi, n_test)
    rows = []
    for layer in layers:
        t0 = time.perf_counter()
        phis = {"local, taylor": hn.pas(nm, phi_inputs, layer, mode="taylor", readout="local", ablation=mode)}
        if next_block_inputs:
            phis["next-block, taylor"] = hn.pas(
                nm, phi_inputs[:next_block_inputs], layer, mode="taylor", readout="next-block", ablation=mode
            )
        t_phi = time.perf_counter() - t0
        pairs, top = sample_pairs(phis["local, taylor"], n_pairs, seed=[0, layer])
        t0 = time.perf_counter()
        per_input, floor = full_model_deltas(nm, test_inputs, layer, pairs, mode=mode)
        t_delta = time.perf_counter() - t0
        delta = per_input.mean(1)
        for readout, phi in phis.items():
            values = np.asarray(phi, dtype=np.float64)[pairs[:, 0], pairs[:, 1]]
            stats = agreement(delta, values, floor)
            rows.append(
                {
                    "model": what,
                    "family": nm.spec.family,
                    "layer": layer,
                    "ablation": mode,
                    "phi": readout,
                    "phi_inputs": len(phi_inputs) if readout.startswith("local") else next_block_inputs,
                    "pairs": len(pairs),
                    "test_inputs": len(test_inputs),
                    "spearman": stats["spearman"],
                    "spearman_top": agreement(delta[top], values[top])["spearman"],
                    "spearman_uniform": agreement(delta[~top], values[~top])["spearman"],
                    "sign_agreement": stats["sign_agreement"],
                    "signed_pairs": stats["signed_pairs"],
                    "slope": stats["slope"],
                    "seconds_phi": t_phi,
                    "seconds_delta": t_delta,
                    "data": source,
                }
            )
            print(
                f"{what} layer {layer} {readout}: Spearman {stats['spearman']:.2f} "
                f"(top {rows[-1]['spearman_top']:.2f}, uniform {rows[-1]['spearman_uniform']:.2f}), "
                f"signs {stats['sign_agreement']:.0%} of {stats['signed_pairs']}, slope {stats['slope']:.3g}; "
                f"φ {t_phi:.0f} s, Δ {t_delta:.0f} s",
                flush=True,
            )
    return rows


def table(rows: list[dict]) -> str:
    head = (
        "| model | layer | ablation | φ (readout, mode) | φ inputs | pairs | test inputs | Spearman | "
        "Spearman, top-|φ| half | Spearman, uniform half | sign agreement | slope of φ on Δ |\n"
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    body = "".join(
        f"| {r['model']} | {r['layer']} | {r['ablation']} | {r['phi']} | {r['phi_inputs']} | {r['pairs']} | "
        f"{r['test_inputs']} | {r['spearman']:.2f} | {r['spearman_top']:.2f} | {r['spearman_uniform']:.2f} | "
        f"{r['sign_agreement']:.0%} of {r['signed_pairs']} | {r['slope']:.3g} |\n"
        for r in rows
    )
    return head + body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="minilm,smollm2")
    parser.add_argument("--next-block-inputs", type=int, default=0, help="PAS next-block φ on this many inputs")
    parser.add_argument("--out", type=Path, default=None, help="also write the Markdown table here")
    parser.add_argument("--no-adapter", action="store_true", help="the base models, zero ablation")
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    for name in args.models.split(","):
        rows += bench(name.strip(), args.next_block_inputs, args.no_adapter)
    text = table(rows)
    print("\n" + text)
    if args.out is not None:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
