"""`import hedonic_neurons as hn`: the working set, one import away, without importing torch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import hedonic_neurons as hn
from test_loading import save_tiny

PENDING: set[str] = set()  # exports whose module is not written yet (must stay empty at release)


@pytest.mark.parametrize("name", sorted(set(hn.__all__) - PENDING))
def test_every_export_resolves(name):
    assert getattr(hn, name) is not None
    assert name in dir(hn)


def test_import_is_light_and_unknown_names_are_attribute_errors():
    code = "import sys, hedonic_neurons as hn; hn.Partition; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        hn.nope  # noqa: B018


def test_track_equals_the_library_path_hedonic_track_uses(tmp_path):
    from hedonic_neurons.data import load_pairs
    from hedonic_neurons.tracking.run import TrackSettings, track_inputs, track_with_settings

    nm = hn.load(save_tiny(tmp_path / "m", "llama", layers=3, n=24))
    pairs = load_pairs("demo")[:24]
    rng = np.random.default_rng(0)
    parts = {layer: hn.Partition.from_labels(rng.integers(0, 6, 24)) for layer in (0, 1)}
    settings = {"null_draws": 20, "flow_pairs": 4, "max_pairs": 16, "horizon": 1}

    ours = hn.track(nm, parts, pairs, batch_size=4, **settings)

    opts = TrackSettings(**settings)
    coal = {layer: p.coalitions for layer, p in parts.items()}
    inputs = track_inputs(nm, pairs, [0, 1], opts, batch_size=4)
    theirs = track_with_settings(nm.model, coal, inputs.mean_abs, opts, inputs.flow)
    assert [r.to_dict() for r in ours] == [r.to_dict() for r in theirs]
    assert len(ours) == 1 and (ours[0].source_layer, ours[0].target_layer) == (0, 1)


def test_track_refuses_unknown_settings_naming_them(tmp_path):
    with pytest.raises(hn.HedonicError, match="unknown setting 'horizn'"):
        hn.track(None, {0: [[0]]}, [], horizn=2)
