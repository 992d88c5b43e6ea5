import json

import numpy as np
import pytest

from hedonic_neurons.artifacts import (
    load_partition,
    load_phi,
    save_partition,
    save_phi,
    size_summary,
    validate_phi,
)
from hedonic_neurons.cli import main
from hedonic_neurons.errors import DataError, PhiError


def test_validate_phi_rejects_bad_input():
    with pytest.raises(PhiError, match="square"):
        validate_phi(np.zeros((2, 3)))
    nan = np.zeros((3, 3))
    nan[0, 1] = nan[1, 0] = np.nan
    with pytest.raises(PhiError, match="non-finite"):
        validate_phi(nan)
    asym = np.zeros((3, 3))
    asym[0, 1] = 1.0
    with pytest.raises(PhiError, match="not symmetric"):
        validate_phi(asym)
    ok = validate_phi(np.array([[5.0, 1.0], [1.0, 7.0]]))
    assert ok.tolist() == [[0.0, 1.0], [1.0, 0.0]]


def test_phi_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 5)).astype(np.float32)
    phi = a + a.T
    np.fill_diagonal(phi, 0)
    path = save_phi(tmp_path / "phi_layer3.safetensors", phi, {"layer": 3})
    np.testing.assert_array_equal(load_phi(path), phi.astype(np.float64))
    side = json.loads(path.with_suffix(".json").read_text())
    assert side["layer"] == 3 and side["provenance"]["package"] == "hedonic-neurons"
    (tmp_path / "junk.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(DataError, match="junk.safetensors"):
        load_phi(tmp_path / "junk.safetensors")


def test_partition_roundtrip_and_checks(tmp_path):
    path = save_partition(tmp_path / "p.json", [[3, 1], [0], [2, 4, 5]], method="test", params={"k": 2})
    doc = load_partition(path)
    assert doc["coalitions"] == [[2, 4, 5], [1, 3], [0]]
    assert doc["labels"] == [2, 1, 0, 1, 0, 0]
    assert doc["sizes"]["largest"] == 3 and doc["sizes"]["singletons"] == 1
    with pytest.raises(DataError, match="repeats"):
        save_partition(tmp_path / "q.json", [[0, 1], [1]], method="test", params={})


def test_size_summary_histogram():
    s = size_summary([[0], [1, 2], list(range(3, 20))])
    assert s["count"] == 3 and s["neurons"] == 20 and s["largest"] == 17
    assert s["histogram"]["1"] == 1 and s["histogram"]["2"] == 1 and s["histogram"]["11-50"] == 1


def test_cli_user_error_is_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2


def test_write_json_turns_nan_into_null(tmp_path):
    from hedonic_neurons.artifacts import write_json

    path = write_json(
        tmp_path / "x.json", {"a": float("nan"), "b": [1.0, np.float32("inf")], "c": np.array([np.nan, 2.0])}
    )
    assert json.loads(path.read_text()) == {"a": None, "b": [1.0, None], "c": [None, 2.0]}


def _count_validation_passes(monkeypatch) -> list[int]:
    """Count full validation passes (each walks the upper tiles once)."""
    import hedonic_neurons.artifacts as artifacts

    calls = [0]
    tiles = artifacts._upper_tiles

    def counting(n, tile=256):
        calls[0] += 1
        return tiles(n, tile)

    monkeypatch.setattr(artifacts, "_upper_tiles", counting)
    return calls


def test_validated_phi_is_trusted_once_and_read_only(monkeypatch):
    from hedonic_neurons.artifacts import is_validated_phi

    calls = _count_validation_passes(monkeypatch)
    rng = np.random.default_rng(0)
    a = rng.normal(size=(40, 40)).astype(np.float32)
    phi = validate_phi(a + a.T)
    assert calls[0] == 1 and is_validated_phi(phi)
    assert validate_phi(phi) is phi and calls[0] == 1  # no second pass
    with pytest.raises(ValueError):
        phi[0, 1] = 5.0  # what was checked cannot change through the trusted view
    # anything else is checked in full: a copy, a slice, the caller's own array
    validate_phi(np.array(phi))
    assert calls[0] == 2
    with pytest.raises(PhiError):
        validate_phi(phi[:, :39])
    bad = np.array(phi)
    bad[3, 4] = np.nan
    with pytest.raises(PhiError, match="non-finite"):
        validate_phi(bad)
    assert not is_validated_phi(bad) and not is_validated_phi(phi[:10, :10])


def test_solve_validates_phi_once(tmp_path, monkeypatch):
    from hedonic_neurons.game.cli import solve_phi

    rng = np.random.default_rng(1)
    a = rng.normal(size=(60, 60)).astype(np.float32)
    path = save_phi(tmp_path / "phi_layer0.safetensors", (a + a.T) / 2, {"layer": 0})
    calls = _count_validation_passes(monkeypatch)
    solve_phi(path, tmp_path / "part.json", exact=True, certify_samples=2000, progress=False)
    assert calls[0] == 1  # load_phi; the solver and both certificates trust it


def test_provenance_does_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys; from hedonic_neurons.artifacts import provenance; p = provenance(); "
        "assert 'torch' not in sys.modules, 'torch imported'; print(p['torch'])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    import torch

    assert out.stdout.strip() == torch.__version__
