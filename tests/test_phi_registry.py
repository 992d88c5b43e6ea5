"""The synergy-metric registry: a metric defined and registered in a test runs through
``hedonic collect`` like the built-in ones (issue 12)."""

from __future__ import annotations

import json
from contextlib import ExitStack

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from hedonic_neurons.artifacts import load_phi
from hedonic_neurons.cli import main
from hedonic_neurons.config import PhiConfig
from hedonic_neurons.data import load_pairs
from hedonic_neurons.errors import ConfigError
from hedonic_neurons.models import load_model
from hedonic_neurons.neurons import Moments, record
from hedonic_neurons.synergy import METRICS, SynergyMetric
from hedonic_neurons.synergy.collect import CollectSettings, collect, phi_path
from synergy_helpers import one_thread, save_scaled_tiny, write_pairs


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


class AbsCorr(SynergyMetric):
    """φ = |ρ(a_i, a_j)|, from the same streaming Moments as OCA (a toy metric)."""

    name = "abs-corr"
    settings_fields = ("pooling",)
    multi_layer = True

    def __init__(self, nm, layers, settings):
        self.nm, self.layers, self.settings = nm, list(layers), settings
        self.moments = {layer: Moments(nm.n_neurons) for layer in self.layers}

    def __enter__(self):
        self._stack = ExitStack()
        self.rec = self._stack.enter_context(
            record(self.nm.model, self.layers, pooling=self.settings.pooling, stop_after=True)
        )
        self.rec.moments = self.moments
        return self

    def __exit__(self, *exc):
        self._stack.close()

    def update(self, batch, index):
        self.rec(batch)

    def state_dict(self):
        return {f"{layer}.{k}": v for layer, m in self.moments.items() for k, v in m.state_dict().items()}

    def load_state_dict(self, state):
        for layer in self.layers:
            part = {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith(f"{layer}.")}
            self.moments[layer] = Moments.from_state_dict(part)

    def all_reduce(self):
        for m in self.moments.values():
            m.all_reduce()

    def result(self, layer):
        phi = self.moments[layer].corr().abs()
        phi.fill_diagonal_(0.0)
        return phi.to(torch.float32).numpy(), {"n_samples": int(self.moments[layer].count)}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("registry")
    return {"base": save_scaled_tiny(root / "base", "llama"), "data": write_pairs(root / "pairs.tsv")}


def _collect(tiny, out, metric, *extra):
    try:
        main(
            [
                "collect",
                str(tiny["base"]),
                "--data",
                str(tiny["data"]),
                "--layers",
                "1,2",
                "--metric",
                metric,
                "--batch-size",
                "4",
                "--out",
                str(out),
                "--no-progress",
                "--device",
                "cpu",
                *extra,
            ]
        )
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise


def test_a_registered_metric_runs_through_hedonic_collect(tiny, tmp_path):
    with METRICS.temporarily("abs-corr", AbsCorr):
        _collect(tiny, tmp_path, "abs-corr")
        assert "abs-corr" in PhiConfig(metrics=["oca", "abs-corr"]).metrics
    # brute force: every non-pad token's activations, recorded in one batch, and numpy
    nm = load_model(tiny["base"], device="cpu")
    pairs = load_pairs(tiny["data"])
    batch = nm.encode([p.query for p in pairs], [p.passage for p in pairs])
    with record(nm.model, [1, 2], pooling="tokens", moments=False, keep=True) as rec:
        rec(batch)
    for layer in (1, 2):
        acts = torch.cat(rec.kept[layer]).double().numpy()
        assert acts.shape == (int(batch["attention_mask"].sum()), nm.n_neurons)
        want = np.abs(np.corrcoef(acts, rowvar=False))
        np.fill_diagonal(want, 0.0)
        got = load_phi(phi_path(tmp_path, layer))
        assert want.max() > 0.3 and want.min() < 0.05  # not a degenerate case
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
        meta = json.loads(phi_path(tmp_path, layer).with_suffix(".json").read_text())
        assert meta["settings"] == {
            "metric": "abs-corr",
            "batch_size": 4,
            "max_inputs": None,
            "seed": 0,
            "pooling": "tokens",
        }
        assert meta["n_samples"] == acts.shape[0]
    assert "abs-corr" not in METRICS  # the temporary registration is gone


def test_the_registry_is_what_collect_config_and_cli_read(tiny, tmp_path, capsys):
    assert METRICS.names()[:2] == ["oca", "pas"]
    with pytest.raises(ConfigError, match=r"unknown synergy metric 'abs-corr' \(expected one of: oca, pas\)"):
        CollectSettings(metric="abs-corr").check()
    with pytest.raises(ValidationError, match="unknown synergy metric 'abs-corr'"):
        PhiConfig(metrics=["abs-corr"])  # (the config loader turns this into one ConfigError line)
    with pytest.raises(SystemExit) as exc:
        _collect(tiny, tmp_path / "x", "abs-corr")
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "unknown synergy metric 'abs-corr'" in err and "\n" not in err
    with METRICS.temporarily("abs-corr", AbsCorr):
        CollectSettings(metric="abs-corr").check()
        # a multi-layer metric makes one pass for all layers: one accumulator for [1, 2]
        made = []
        original = AbsCorr.__init__

        def spy(self, nm, layers, settings):
            made.append(list(layers))
            original(self, nm, layers, settings)

        AbsCorr.__init__ = spy
        try:
            nm = load_model(tiny["base"], device="cpu")
            settings = CollectSettings(metric="abs-corr", batch_size=4)
            collect(nm, load_pairs(tiny["data"]), [2, 1], settings, tmp_path / "y", progress=False)
        finally:
            AbsCorr.__init__ = original
        assert made == [[1, 2]]
    with pytest.raises(ConfigError, match="does not implement SynergyMetric"):
        METRICS.add("not-a-metric", dict)


def test_pas_settings_checks_come_from_the_metric():
    with pytest.raises(ConfigError, match="readout= full supports mode= exact only"):
        CollectSettings(metric="pas", readout="full", mode="taylor").check()
    CollectSettings(metric="oca", readout="full", mode="taylor").check()  # irrelevant to OCA
    pas = CollectSettings(metric="pas", readout="full", max_pairs=5).to_dict()
    assert pas["pooling"] == "readout" and pas["max_pairs"] == 5 and "statistic" not in pas
    assert set(CollectSettings().to_dict()) == {
        "metric",
        "batch_size",
        "max_inputs",
        "seed",
        "pooling",
        "statistic",
    }
