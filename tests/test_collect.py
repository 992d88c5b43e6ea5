"""``hedonic collect`` end to end on tiny saved models: files, sidecar, resume, errors, full readout."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from hedonic_neurons.artifacts import load_phi
from hedonic_neurons.cli import main
from hedonic_neurons.data import load_pairs
from hedonic_neurons.errors import ConfigError
from hedonic_neurons.models import load_model
from hedonic_neurons.synergy.collect import CollectSettings, collect, phi_path, sample_pairs
from hedonic_neurons.synergy.pas import PAS_SIGN
from synergy_helpers import one_thread, save_scaled_tiny, write_pairs
from test_loading import make_adapter


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("collect")
    base = save_scaled_tiny(root / "base", "llama")
    make_adapter(base, root / "adapter", "llama", layers=(1, 2))
    data = write_pairs(root / "pairs.tsv")
    return {"base": base, "adapter": root / "adapter", "data": data, "root": root}


def _nm(tiny):
    return load_model(tiny["base"], adapter=tiny["adapter"], device="cpu")


def _main(args):
    """``hedonic ...`` in process; a successful command exits 0 (typer), an error exits 2."""
    try:
        main(args)
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise


def _cli(tiny, out, *extra):
    return _main(
        [
            "collect",
            str(tiny["base"]),
            "--adapter",
            str(tiny["adapter"]),
            "--data",
            str(tiny["data"]),
            "--out",
            str(out),
            "--no-progress",
            "--device",
            "cpu",
            *extra,
        ]
    )


def test_cli_writes_phi_and_sidecar(tiny, tmp_path):
    _cli(tiny, tmp_path, "--layers", "1,2", "--metric", "pas", "--batch-size", "4")
    for layer in (1, 2):
        phi = load_phi(phi_path(tmp_path, layer))
        assert phi.shape == (24, 24) and np.abs(phi).max() > 1e-4
        meta = json.loads(phi_path(tmp_path, layer).with_suffix(".json").read_text())
        assert meta["settings"]["metric"] == "pas" and meta["settings"]["mode"] == "exact"
        assert meta["settings"]["readout"] == "local" and meta["settings"]["ablation"] == "reference"
        assert meta["n_inputs"] == 11 and meta["n_tokens"] > 11 and meta["head"] == "gram"
        assert meta["model"]["adapter"] and meta["input_format"]["template"]
        assert meta["dtype"] == "float32" and meta["layer"] == layer
        assert meta["provenance"]["version"] and "git_commit" in meta["provenance"]
        s = meta["summary"]
        assert s["finite"] and s["symmetric"] and s["zero_diagonal"] and not s["all_zero"]
        assert s["min"] <= s["quantiles"]["p50"] <= s["max"] and 0 < s["fraction_positive"] < 1


def test_batch_size_does_not_change_phi(tiny, tmp_path):
    nm = _nm(tiny)
    pairs = load_pairs(tiny["data"])
    out = {}
    for metric in ("pas", "oca"):
        for bs in (1, 4):
            settings = CollectSettings(metric=metric, batch_size=bs)
            (path,) = collect(nm, pairs, [1], settings, tmp_path / f"{metric}{bs}", progress=False)
            out[metric, bs] = load_phi(path)
        assert np.abs(out[metric, 1]).max() > 1e-3
        assert np.allclose(out[metric, 1], out[metric, 4], atol=1e-6)


def test_resume_after_a_kill_gives_the_same_phi(tiny, tmp_path):
    nm = _nm(tiny)
    pairs = load_pairs(tiny["data"])
    for metric, layers in (("pas", [1, 2]), ("oca", [1, 2])):
        settings = CollectSettings(metric=metric, batch_size=2)
        whole = collect(nm, pairs, layers, settings, tmp_path / f"{metric}-whole", progress=False)
        out = tmp_path / f"{metric}-killed"
        # "killed" after 3 batches of the first pass: 2 batches are in the checkpoint, 1 is lost
        collect(nm, pairs, layers, settings, out, progress=False, checkpoint_every=2, stop_after=3)
        assert not phi_path(out, 1).exists() and any((out / ".partial").iterdir())
        resumed = collect(nm, pairs, layers, settings, out, progress=False, checkpoint_every=2)
        for a, b in zip(whole, resumed):
            assert np.allclose(load_phi(a), load_phi(b), atol=1e-9)
            assert json.loads(b.with_suffix(".json").read_text())["n_inputs"] == len(pairs)
        assert not (out / ".partial").exists()  # the checkpoint and its emptied folder are gone
        # a finished layer is skipped: the file is not rewritten
        stamp = os.stat(resumed[0]).st_mtime_ns
        collect(nm, pairs, layers, settings, out, progress=False)
        assert os.stat(resumed[0]).st_mtime_ns == stamp
    with pytest.raises(ConfigError, match="different settings"):
        collect(nm, pairs, [1], CollectSettings(metric="pas", batch_size=3), tmp_path / "pas-whole")


def test_full_readout_on_requested_pairs(tiny, tmp_path):
    nm = _nm(tiny)
    pairs = load_pairs(tiny["data"])[:5]
    settings = CollectSettings(metric="pas", readout="full", max_pairs=6, seed=3, batch_size=5)
    (path,) = collect(nm, pairs, [2], settings, tmp_path, progress=False)
    phi = load_phi(path)
    requested = sample_pairs(nm.n_neurons, 6, 3)
    mask = np.zeros_like(phi, dtype=bool)
    mask[requested[:, 0], requested[:, 1]] = mask[requested[:, 1], requested[:, 0]] = True
    assert np.all(phi[~mask] == 0) and np.all(phi[mask] != 0)
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["pairs"]["requested"] == 6 and meta["summary"]["entries"] == 6
    # brute force: weight surgery on the whole model, the model's own output logit
    batch = nm.encode([p.query for p in pairs], [p.passage for p in pairs])
    ref = nm.reference_mlp_weights(2)
    cur = nm.mlp_weights(2)

    def logits(neurons):
        idx = list(neurons)
        saved = [t.detach().clone() for t in (cur.up, cur.gate, cur.down)]
        try:
            with torch.no_grad():
                cur.up[idx], cur.gate[idx], cur.down[:, idx] = ref.up[idx], ref.gate[idx], ref.down[:, idx]
                return nm.model(**batch).logits[:, 0].double()
        finally:
            with torch.no_grad():
                for t, old in zip((cur.up, cur.gate, cur.down), saved):
                    t.copy_(old)

    for i, j in requested:
        delta = (logits([]) - logits([i]) - logits([j]) + logits([i, j])).mean()
        assert phi[i, j] == pytest.approx(PAS_SIGN * float(delta), abs=1e-5)


def test_sample_pairs_inverts_the_triangle():
    for n in (2, 5, 24):
        total = n * (n - 1) // 2
        every = sample_pairs(n, None, 0)
        assert len(every) == total and np.all(every[:, 0] < every[:, 1])
        drawn = sample_pairs(n, total - 1, 1)
        assert len({tuple(p) for p in drawn}) == total - 1
        assert {tuple(p) for p in drawn} <= {tuple(p) for p in every}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--layers", "7"], "layer 7 is out of range"),
        (
            ["--layers", "1", "--metric", "pas", "--mode", "taylor", "--readout", "full"],
            "supports --mode exact",
        ),
        (["--layers", "x"], "expected integers"),
    ],
)
def test_one_line_errors(tiny, tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exc:
        _cli(tiny, tmp_path, *args)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_empty_data_and_nan_are_one_line_errors(tiny, tmp_path, capsys):
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    with pytest.raises(SystemExit) as exc:
        _main(
            [
                "collect",
                str(tiny["base"]),
                "--adapter",
                str(tiny["adapter"]),
                "--data",
                str(empty),
                "--layers",
                "1",
                "--out",
                str(tmp_path / "o"),
                "--no-progress",
            ]
        )
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error:")
    bad = save_scaled_tiny(tmp_path / "nan", "llama", nan_layer=1)
    capsys.readouterr()  # the progress output of saving it
    for metric in ("oca", "pas"):
        with pytest.raises(SystemExit) as exc:
            _main(
                [
                    "collect",
                    str(bad),
                    "--data",
                    str(tiny["data"]),
                    "--layers",
                    "1",
                    "--metric",
                    metric,
                    "--ablation",
                    "zero",
                    "--out",
                    str(tmp_path / metric),
                    "--no-progress",
                    "--batch-size",
                    "4",
                ]
            )
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip()
        assert "layer 1 in batch 0" in err and "non-finite" in err and "\n" not in err
