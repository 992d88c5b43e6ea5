"""Benchmark of synergy collection (issue 4): time relative to a plain forward pass, peak memory.

For MiniLM (all-MiniLM-L6-v2, BERT, 1,536 neurons per layer) on the first N pairs of the MS MARCO
dev BM25 top-20 file, and SmolLM2-135M (LLaMA) on a smaller slice:

- the time of a plain forward pass (whole model, no hooks) over the pre-encoded batches;
- the ratio of each collection (one layer, ``OCACollector`` / ``PASCollector.update`` over the
  same batches) to it: OCA; PAS exact local (MiniLM: tanh pooler path; SmolLM2: Gram path);
  taylor; grad-outer;
- peak memory (ru_maxrss of a fresh process) at 1x and 4x the data (4x = the same batches four
  times, so batch shapes are equal and any growth would come from accumulating state);
- exact PAS on MiniLM (the tanh pooler path, O(n²·d_p) elementwise work per input) runs on a
  smaller slice (one batch of ``--n-exact`` inputs); its ratio is per input against the main
  slice's forward time. Rows: fp64 and fp32 per-pair arithmetic (the cancellation-free form of
  ``synergy.pas._exact_tanh``), and the direct fp64 evaluation of the four logits of every pair
  (``_exact_tanh_direct``, the reference: the path before the cancellation-free form);
- the agreement of the tanh rows with the reference, max |φ − φ_ref| / max |φ_ref| over pairs;
- the correlation over pairs between taylor and exact PAS on MiniLM.

``--tanh-only`` measures just the MiniLM forward pass (1x) and the tanh rows (1x) with their
agreement, e.g. ``python benchmarks/bench_synergy.py --tanh-only --n 32 --n-exact 4``.

The reference weights come from a random LoRA adapter on all MLP layers (B scaled so that the
MLP weights move by a few percent), written to a temporary folder. Every measurement runs in its
own subprocess. Usage::

    python benchmarks/bench_synergy.py [--n 64] [--n-exact 8] [--n-smol 16] [--layer 3] [--tanh-only]
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

DATA = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "ir" / "msmarco_dev" / "top20.bm25.dev600.tsv"
)


def make_adapter(name: str, folder: Path, b_scale: float) -> Path:
    """A random LoRA adapter (rank 8) on every MLP module of the built-in model ``name``."""
    import torch
    from peft import LoraConfig, get_peft_model

    from hedonic_neurons.models import load_model
    from hedonic_neurons.models.adapters import mlp_module_names

    nm = load_model(name, device="cpu")
    config = LoraConfig(
        r=8, lora_alpha=16, target_modules=list(mlp_module_names(nm.model)), init_lora_weights=False
    )
    torch.manual_seed(0)
    peft_model = get_peft_model(nm.model, config)
    with torch.no_grad():
        for pname, param in peft_model.named_parameters():
            if "lora_B" in pname:
                param.mul_(b_scale)
    peft_model.peft_config["default"].base_model_name_or_path = name
    peft_model.save_pretrained(folder, save_embedding_layers=False)
    return folder


def one(args: argparse.Namespace) -> dict:
    """One measurement in this process; returns seconds, peak RSS and (optionally) saves φ."""
    import numpy as np
    import torch

    from hedonic_neurons.data import load_pairs
    from hedonic_neurons.models import load_model
    from hedonic_neurons.synergy.collect import CollectSettings, OCACollector, PASCollector

    torch.manual_seed(0)
    nm = load_model(args.model, adapter=args.adapter, device="cpu")
    pairs = load_pairs(args.data)[: args.n]
    bs = args.batch_size
    batches = [
        nm.encode([p.query for p in pairs[k : k + bs]], [p.passage for p in pairs[k : k + bs]])
        for k in range(0, len(pairs), bs)
    ] * args.repeat
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    kind = args.one
    if kind == "forward":

        def step(batch, index):
            nm.model(**batch)

        collector = None
    elif kind == "oca":
        collector = OCACollector(nm, [args.layer], CollectSettings(metric="oca"))
    else:
        mode = kind.removeprefix("pas-")
        dtype = torch.float32 if args.pair_dtype == "float32" else torch.float64
        if args.tanh == "direct":
            from hedonic_neurons.synergy import pas

            pas._exact_tanh = pas._exact_tanh_direct  # the reference evaluation (this process only)
        collector = PASCollector(nm, args.layer, CollectSettings(metric="pas", mode=mode), pair_dtype=dtype)
    with torch.no_grad():
        nm.model(**batches[0])  # warm-up (lazy initialisation), not timed
        if collector is not None:
            collector.__enter__()
            step = collector.update
        start = time.perf_counter()
        for index, batch in enumerate(batches):
            step(batch, index)
        seconds = time.perf_counter() - start
        if collector is not None:
            if args.save:
                np.save(args.save, collector.result(args.layer)[0])
            collector.__exit__(None, None, None)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "kind": kind,
        "model": args.model,
        "n": len(pairs) * args.repeat,
        "tokens": tokens,
        "seconds": seconds,
        "peak_rss_mb": peak_mb,
        "head": getattr(collector, "head_kind", None),
    }


def measure(
    kind: str,
    model: str,
    adapter: Path,
    n: int,
    common: argparse.Namespace,
    save: str = "",
    pair_dtype: str = "float64",
    repeat: int = 1,
    batch_size: int | None = None,
    tanh: str = "stable",
) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--one",
        kind,
        "--model",
        model,
        "--adapter",
        str(adapter),
        "--n",
        str(n),
        "--layer",
        str(common.layer if model == "minilm" else common.smol_layer),
        "--batch-size",
        str(batch_size or common.batch_size),
        "--data",
        str(common.data),
        "--pair-dtype",
        pair_dtype,
        "--repeat",
        str(repeat),
        "--tanh",
        tanh,
    ]
    if save:
        cmd += ["--save", save]
    # glibc keeps freed large blocks mapped, so peak RSS would include allocator retention that
    # depends on the order of frees; a low mmap threshold returns them, and peak RSS then measures
    # what the code holds at once (docs/benchmarks.md shows the effect)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": os.environ.get("MALLOC_MMAP_THRESHOLD_", "65536")}
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{kind} on {model} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="MiniLM pairs (1x; 4x is also measured)")
    parser.add_argument("--n-exact", type=int, default=8, help="MiniLM pairs for exact PAS (tanh path)")
    parser.add_argument("--n-smol", type=int, default=16, help="SmolLM2 pairs")
    parser.add_argument("--layer", type=int, default=3)
    parser.add_argument("--smol-layer", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--b-scale", type=float, default=0.05)
    parser.add_argument(
        "--tanh-only", action="store_true", help="only the MiniLM forward pass and the exact tanh rows (1x)"
    )
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model", default="minilm", help=argparse.SUPPRESS)
    parser.add_argument("--adapter", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--save", default="", help=argparse.SUPPRESS)
    parser.add_argument("--pair-dtype", default="float64", help=argparse.SUPPRESS)
    parser.add_argument("--repeat", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--tanh", default="stable", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args)))
        return
    import numpy as np

    print(
        f"data: {args.data} (first pairs), batch size {args.batch_size}, CPU threads "
        f"{os.environ.get('OMP_NUM_THREADS', 'default')}, load average {os.getloadavg()[0]:.1f}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = []

        def report(label: str, res: dict, base: dict) -> None:
            per = res["seconds"] / res["n"]
            ratio = per / (base["seconds"] / base["n"])
            rows.append((label, res, ratio))
            print(
                f"{label:<40} n={res['n']:>4} tokens={res['tokens']:>6} {res['seconds']:8.2f} s "
                f"{per * 1000:9.1f} ms/input  ratio {ratio:7.2f}x forward  peak RSS {res['peak_rss_mb']:7.0f} MB"
                + (f"  [{res['head']}]" if res.get("head") else ""),
                flush=True,
            )

        mini = make_adapter("minilm", tmp / "minilm-lora", args.b_scale)
        print(f"\nMiniLM, layer {args.layer} (random LoRA adapter, B x {args.b_scale})")
        fwd = {}
        for mult in (1,) if args.tanh_only else (1, 4):
            fwd[mult] = measure("forward", "minilm", mini, args.n, args, repeat=mult)
            report(f"minilm forward {mult}x", fwd[mult], fwd[mult])
            if args.tanh_only:
                break
            for kind in ("oca", "pas-taylor", "pas-grad-outer"):
                report(
                    f"minilm {kind} {mult}x",
                    measure(kind, "minilm", mini, args.n, args, repeat=mult),
                    fwd[mult],
                )
        ne = args.n_exact
        tanh_rows = [  # (label, pair dtype, evaluation, file of φ)
            ("tanh, fp32", "float32", "stable", "exact32.npy"),
            ("tanh, fp64", "float64", "stable", "exact1.npy"),
            ("tanh, fp64 direct", "float64", "direct", "direct64.npy"),
        ]
        for label, pair_dtype, tanh, name in tanh_rows:
            res = measure(
                "pas-exact",
                "minilm",
                mini,
                ne,
                args,
                save=str(tmp / name),
                pair_dtype=pair_dtype,
                batch_size=ne,
                tanh=tanh,
            )
            report(f"minilm pas-exact ({label}) 1x", res, fwd[1])
        if not args.tanh_only:
            res = measure("pas-exact", "minilm", mini, ne, args, repeat=4, batch_size=ne)
            report("minilm pas-exact (tanh, fp64) 4x", res, fwd[1])
        ref = np.load(tmp / "direct64.npy")
        top = np.abs(ref).max()
        for label, _, tanh, name in tanh_rows:
            if tanh != "direct":
                rel = np.abs(np.load(tmp / name) - ref).max() / top
                print(f"agreement ({label} vs fp64 direct): max |phi - phi_ref| / max |phi_ref| = {rel:.2e}")
        if args.tanh_only:
            return
        measure("pas-taylor", "minilm", mini, ne, args, save=str(tmp / "taylor.npy"), batch_size=ne)
        exact, taylor = np.load(tmp / "exact1.npy"), np.load(tmp / "taylor.npy")
        iu = np.triu_indices(exact.shape[0], 1)
        corr = np.corrcoef(exact[iu], taylor[iu])[0, 1]
        sign = np.mean(np.sign(exact[iu]) == np.sign(taylor[iu]))
        print(
            f"taylor vs exact PAS on MiniLM layer {args.layer} ({args.n_exact} inputs, {iu[0].size} pairs): "
            f"Pearson r = {corr:.4f}, same sign {sign:.3f}"
        )

        smol = make_adapter("smollm2", tmp / "smol-lora", args.b_scale)
        print(f"\nSmolLM2-135M, layer {args.smol_layer} (random LoRA adapter, B x {args.b_scale})")
        for mult in (1, 4):
            base = measure("forward", "smollm2", smol, args.n_smol, args, repeat=mult)
            report(f"smollm2 forward {mult}x", base, base)
            for kind in ("pas-exact", "oca", "pas-taylor"):
                report(
                    f"smollm2 {kind} {mult}x",
                    measure(kind, "smollm2", smol, args.n_smol, args, repeat=mult),
                    base,
                )

        print("\npeak memory 4x / 1x:")
        by_label = {label: res for label, res, _ in rows}
        for label, res, _ in rows:
            other = by_label.get(label.replace(" 1x", " 4x")) if label.endswith(" 1x") else None
            if other:
                print(f"  {label.removesuffix(' 1x'):<40} {other['peak_rss_mb'] / res['peak_rss_mb']:.3f}")


if __name__ == "__main__":
    main()
