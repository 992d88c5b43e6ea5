"""``hedonic collect`` under torchrun (2 processes, gloo on CPU) gives the same φ as 1 process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from hedonic_neurons.artifacts import load_phi
from hedonic_neurons.data import load_pairs
from hedonic_neurons.models import load_model
from hedonic_neurons.synergy.collect import CollectSettings, collect, phi_path
from synergy_helpers import save_scaled_tiny, write_pairs
from test_loading import make_adapter


def _run(prefix, base, adapter, data, out, metric):
    args = [
        *prefix,
        "-m",
        "hedonic_neurons",
        "collect",
        str(base),
        "--adapter",
        str(adapter),
        "--data",
        str(data),
        "--layers",
        "1,2",
        "--metric",
        metric,
        "--batch-size",
        "2",
        "--out",
        str(out),
        "--device",
        "cpu",
        "--no-progress",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
    base = save_scaled_tiny(tmp_path / "base", "llama")
    make_adapter(base, tmp_path / "adapter", "llama", layers=(1, 2))
    data = write_pairs(tmp_path / "pairs.tsv", rows=13)  # 7 batches: uneven split over 2 ranks
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    nm = load_model(base, adapter=tmp_path / "adapter", device="cpu")
    for metric in ("pas", "oca"):  # one process in this one; two under torchrun
        collect(
            nm,
            load_pairs(data),
            [1, 2],
            CollectSettings(metric=metric, batch_size=2),
            tmp_path / f"{metric}1",
            data=str(data),
            progress=False,
        )
        _run(torchrun, base, tmp_path / "adapter", data, tmp_path / f"{metric}2", metric)
        for layer in (1, 2):
            one, two = phi_path(tmp_path / f"{metric}1", layer), phi_path(tmp_path / f"{metric}2", layer)
            phi1, phi2 = load_phi(one), load_phi(two)
            assert np.abs(phi1).max() > 1e-3
            assert np.allclose(phi1, phi2, atol=1e-6, rtol=0)
            se1, se2 = load_phi(one, with_se=True)[1], load_phi(two, with_se=True)[1]  # reduced too
            assert se1.max() > 0 and np.allclose(se1, se2, atol=1e-6, rtol=0)
            meta1, meta2 = (json.loads(p.with_suffix(".json").read_text()) for p in (one, two))
            assert meta1["n_inputs"] == meta2["n_inputs"] == 13
            assert meta1["n_tokens"] == meta2["n_tokens"]
        assert not any((tmp_path / f"{metric}2" / ".partial").glob("*"))
