"""Benchmark of model loading (issue 2): the built-in models from their installed packages.

Each load runs in a fresh subprocess with networking disabled (``HF_HUB_OFFLINE=1``), so library
imports are paid once per process and timed separately from ``load_model``; each process then
loads the model a second time ("again": nothing left to import lazily). SmolLM2 runs in two
processes sharing an empty cache folder: the first converts the GGUF file and writes the float32
cache, the second reads the cache. Printed: seconds per load, and cached / first for SmolLM2
(target: the cached load "well under a second").

    python benchmarks/bench_loading.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

TARGET_CACHED_SECONDS = 1.0

CODE = """
import json, time
t0 = time.perf_counter()
from hedonic_neurons.models import load_model
import transformers, peft  # noqa: F401  (imports are not part of the load)
t1 = time.perf_counter()
nm = load_model({name!r})
t2 = time.perf_counter()
load_model({name!r})
t3 = time.perf_counter()
print(json.dumps({{"import_s": t1 - t0, "load_s": t2 - t1, "again_s": t3 - t2, "layers": nm.n_layers,
                  "neurons": nm.n_neurons}}))
"""


def timed_load(name: str, cache: str) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HEDONIC_CACHE_DIR": cache}
    proc = subprocess.run(
        [sys.executable, "-c", CODE.format(name=name)], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    with tempfile.TemporaryDirectory() as cache:
        minilm = timed_load("minilm", cache)
        first = timed_load("smollm2", cache)
        cached = timed_load("smollm2", cache)
    print(
        f"minilm   load {minilm['load_s']:.2f} s, again {minilm['again_s']:.2f} s  ({minilm['layers']} layers x {minilm['neurons']})"
    )
    print(f"smollm2  first load (GGUF -> cache) {first['load_s']:.2f} s")
    print(
        f"smollm2  cached load {cached['load_s']:.2f} s in a fresh process, again {cached['again_s']:.2f} s "
        f"({cached['layers']} layers x {cached['neurons']}); cached / first = {cached['load_s'] / first['load_s']:.3f}; "
        f"target < {TARGET_CACHED_SECONDS:.0f} s: {'met' if cached['load_s'] < TARGET_CACHED_SECONDS else 'NOT met'}"
    )
    print(f"(imports per process, not counted: {cached['import_s']:.2f} s)")


if __name__ == "__main__":
    main()
