"""Fixtures of the bad-input tier (helpers in bad_input_helpers.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bad_input_helpers, cases
from bad_input_helpers import World


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> World:
    from hedonic_neurons.artifacts import save_partition, save_phi
    from synergy_helpers import write_pairs
    from test_loading import make_adapter, save_tiny

    root = tmp_path_factory.mktemp("world")
    model = save_tiny(root / "llama", "llama", layers=3, n=24)
    make_adapter(model, root / "adapter", "llama", layers=(1, 2))
    gpt2 = save_tiny(root / "gpt2", "gpt2", layers=3, n=24)
    make_adapter(gpt2, root / "gpt2_adapter", "gpt2", layers=(1,))
    pairs = write_pairs(root / "pairs.tsv", rows=11)
    rng = np.random.default_rng(0)
    a = rng.normal(size=(24, 24)).astype(np.float32)
    phi = save_phi(root / "phi_layer1.safetensors", a + a.T - 2 * np.diag(np.diag(a)), {"layer": 1})
    coalitions = [list(range(i, i + 4)) for i in range(0, 24, 4)]
    part1 = save_partition(root / "parts" / "layer1.json", coalitions, method="test", params={}, layer=1)
    part2 = save_partition(root / "parts" / "layer2.json", coalitions, method="test", params={}, layer=2)
    return World(root, model, root / "adapter", gpt2, root / "gpt2_adapter", pairs, phi, part1, part2)
