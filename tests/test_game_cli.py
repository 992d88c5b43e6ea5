"""``hedonic solve`` end to end on a small phi file (issue 5)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hedonic_neurons.artifacts import load_partition, save_phi
from hedonic_neurons.cli import main
from hedonic_neurons.game import PACTopCover, TopCover, certify
from test_game import planted


def run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


@pytest.fixture
def phi_file(tmp_path):
    phi, _ = planted(8, 3, 0.2, seed=0)
    path = save_phi(tmp_path / "phi_layer3.safetensors", phi, {"layer": 3, "metric": "oca", "model": "test"})
    return path, phi.astype(np.float32)


def test_solve_pac_writes_partition_and_certificates(phi_file, tmp_path, capsys):
    path, phi = phi_file
    out = tmp_path / "part.json"
    code, stdout, _ = run(
        ["solve", str(path), "--out", str(out), "--seed", "3", "--certify-samples", "2000"], capsys
    )
    assert code == 0
    doc = load_partition(out)
    expected = PACTopCover(k=2, random_state=3).fit(phi)
    assert doc["method"] == "hedonic-oca" and doc["layer"] == 3 and doc["n_neurons"] == 24
    assert doc["params"]["solver"] == "pac"
    assert doc["coalitions"] == expected.coalitions_ and doc["labels"] == expected.labels_.tolist()
    assert doc["params"]["k"] == 2 and doc["params"]["epsilon"] == 0.05 and doc["params"]["seed"] == 3
    assert doc["phi_metadata"]["metric"] == "oca" and doc["phi_metadata"]["layer"] == 3
    assert doc["diagnostics"]["n_rounds"] == expected.n_rounds_
    assert doc["diagnostics"]["n_samples"] == expected.n_samples_
    assert len(doc["diagnostics"]["rounds"]) == expected.n_rounds_
    certs = doc["certificate"]
    assert set(certs) == {"uniform", "phi"}
    for dist, cert in certs.items():
        again = certify(
            phi,
            doc["coalitions"],
            n_samples=2000,
            distribution=dist,
            random_state=np.random.default_rng([3, 1 if dist == "uniform" else 2]),
        )
        assert cert == json.loads(json.dumps(again.to_dict()))
    assert doc["sizes"]["count"] == len(expected.coalitions_)
    s = doc["sizes"]
    assert f"{s['count']:,} coalitions of 24 neurons" in stdout
    assert f"largest {s['largest']:,}, singletons {s['singletons']:,}" in stdout
    assert "p90" in stdout and "p99" in stdout and "certificate (uniform)" in stdout
    assert "certificate (phi)" in stdout and f"wrote {out}" in stdout


def test_solve_exact(phi_file, tmp_path, capsys):
    path, phi = phi_file
    out = tmp_path / "exact.json"
    code, _, _ = run(
        ["solve", str(path), "--exact", "--k", "2", "--out", str(out), "--certify-samples", "500"], capsys
    )
    assert code == 0
    doc = json.loads(out.read_text())
    assert doc["method"] == "hedonic-oca" and doc["params"]["solver"] == "exact"
    assert doc["coalitions"] == TopCover(k=2).fit(phi).coalitions_
    assert doc["certificate"]["uniform"]["n_blocking"] == 0 == doc["certificate"]["phi"]["n_blocking"]


def test_solve_bad_inputs_exit_2_with_one_line(tmp_path, capsys):
    asym = np.zeros((4, 4), dtype=np.float32)
    asym[0, 1] = 1.0
    bad = save_phi(tmp_path / "phi_bad.safetensors", asym, {})
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a tensor file")
    good = save_phi(tmp_path / "phi_ok.safetensors", np.ones((4, 4), dtype=np.float32) - np.eye(4), {})
    out = str(tmp_path / "o.json")
    for argv, match in [
        (["solve", str(bad), "--out", out], "not symmetric"),
        (["solve", str(junk), "--out", out], "junk.safetensors"),
        (["solve", str(tmp_path / "missing.safetensors"), "--out", out], "not found"),
        (["solve", str(good), "--k", "4", "--out", out], "k must be"),
        (["solve", str(good), "--epsilon", "1.5", "--out", out], "epsilon"),
        (["solve", str(good), "--certify-samples", "0", "--out", out], "certify_samples"),
    ]:
        code, _, err = run(argv, capsys)
        assert code == 2
        assert err.startswith("error: ") and err.count("\n") == 1 and match in err
    assert not (tmp_path / "o.json").exists()


def test_solve_with_phi_aware_sampling(phi_file, tmp_path, capsys):
    path, phi = phi_file
    out = tmp_path / "part.json"
    argv = ["solve", str(path), "--out", str(out), "--seed", "2", "--certify-samples", "500"]
    code, _, _ = run([*argv, "--sampling", "phi", "--phi-power", "2"], capsys)
    assert code == 0
    doc = load_partition(out)
    expected = PACTopCover(k=2, random_state=2, sampling="phi", phi_power=2.0).fit(phi)
    assert doc["coalitions"] == expected.coalitions_
    assert doc["params"]["sampling"] == "phi" and doc["params"]["phi_power"] == 2.0
    code, _, err = run([*argv, "--sampling", "smart"], capsys)
    assert code == 2 and "sampling" in err and len(err.strip().splitlines()) == 1
