"""What tracking reads besides the partitions: settings built in one place, E|a_p| as one token
mean (checked against a pair-by-pair hand computation), and Recorder.take."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import typer

from hedonic_neurons.config import TrackingConfig
from hedonic_neurons.data import read_rerank_input
from hedonic_neurons.errors import ConfigError
from hedonic_neurons.models import load_model
from hedonic_neurons.neurons import record
from hedonic_neurons.tracking.run import TrackSettings, sample_pairs, track_inputs
from test_loading import save_tiny
from tiny import tiny_model


def test_settings_come_from_the_config_section_field_by_field():
    from hedonic_neurons.cli import app

    cfg_fields = set(TrackingConfig.model_fields)
    settings_fields = {f.name for f in dataclasses.fields(TrackSettings)}
    assert cfg_fields == settings_fields - {"seed", "block_size"}  # the run's seed; speed only
    cli = {p.name: p.default for p in typer.main.get_command(app).commands["track"].params}
    for name in cfg_fields:
        assert getattr(TrackingConfig(), name) == getattr(TrackSettings(), name) == cli[name], name
    tc = TrackingConfig(rule="matching", tau=0.4, min_size=3, horizon=2, flow_pairs=5, max_pairs=7)
    assert TrackSettings.from_config(tc, 11) == TrackSettings(
        rule="matching", tau=0.4, min_size=3, horizon=2, flow_pairs=5, max_pairs=7, seed=11
    )
    assert TrackSettings.from_config(TrackingConfig(), 0) == TrackSettings()
    with pytest.raises(ConfigError, match="max_pairs"):
        TrackSettings(max_pairs=0)


def test_recorder_take_returns_and_forgets_the_kept_activations():
    model = tiny_model("llama", layers=3, d=16, n=24)
    ids = torch.tensor([[5, 6, 7, 8], [0, 0, 9, 10]])
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    batch = {"input_ids": ids, "attention_mask": mask}
    with record(model, [0, 2], pooling="tokens", moments=False, keep=True) as ref:
        ref(batch)
        ref(batch)
        expected = {layer: torch.cat(ref.kept[layer]) for layer in (0, 2)}
    with record(model, [0, 2], pooling="tokens", moments=False, keep=True) as rec:
        rec(batch)
        rec(batch)
        for layer in (0, 2):
            got = rec.take(layer)
            assert got.shape == (12, 24)
            torch.testing.assert_close(got, expected[layer], rtol=0, atol=0)
            assert rec.kept[layer] == []
            assert rec.take(layer).shape == (0, 24)  # nothing new since
        with pytest.raises(ConfigError, match="layer 1 is not recorded"):
            rec.take(1)
    with record(model, [0], pooling="mean") as no_keep, pytest.raises(ConfigError, match="keep=True"):
        no_keep.take(0)


def test_track_inputs_is_the_token_mean_of_abs_activations_on_the_sampled_pairs(tmp_path):
    base = save_tiny(tmp_path / "base", "llama", layers=4, n=24)
    nm = load_model(str(base), device="cpu")
    tsv = tmp_path / "pairs.tsv"
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]
    tsv.write_text(
        "".join(f"q{i}\tp{i}\t{' '.join(words[: 2 + i % 3])}\t{' '.join(words[i % 4 :])}\n" for i in range(9))
    )
    pairs = read_rerank_input(tsv)
    settings = TrackSettings(horizon=1, max_pairs=6, flow_pairs=4, seed=2)
    inputs = track_inputs(nm, pairs, [0, 1, 3], settings, batch_size=4, data="pairs.tsv")
    assert sorted(inputs.mean_abs) == [0]  # the only source layer within horizon 1 (0 -> 1)
    assert inputs.activations == {"data": "pairs.tsv", "pairs": 6, "statistic": "E|a_p| over non-pad tokens"}
    assert inputs.flow is not None and sum(len(b["attention_mask"]) for b in inputs.flow.batches) == 4

    # by hand: every sampled pair alone (no padding), all its tokens, mean of |a|
    chosen = sample_pairs(pairs, 6, 2)
    with record(nm.model, [0], pooling="tokens", moments=False, keep=True) as rec:
        for p in chosen:
            rec(nm.encode([p.query], [p.passage]))
        per_pair = list(rec.kept[0])
    tokens = torch.cat(per_pair)
    torch.testing.assert_close(inputs.mean_abs[0], tokens.abs().mean(0), rtol=1e-6, atol=1e-7)
    # the other candidate definitions give other numbers here (inputs of different lengths)
    assert len({len(t) for t in per_pair}) > 1
    mean_of_means = torch.stack([t.abs().mean(0) for t in per_pair]).mean(0)
    abs_of_pooled = torch.stack([t.mean(0).abs() for t in per_pair]).mean(0)
    for other in (mean_of_means, abs_of_pooled):
        assert not torch.allclose(inputs.mean_abs[0], other, rtol=1e-4, atol=0)
