"""The noise-robust game end to end: ``hedonic solve --min-z``, ``GameConfig.min_z`` and the
one dispatch (``partition_layer`` fits the hedonic solvers with φ's standard errors).

The planted game (n = 400, 56 groups of 2-12, strengths 0.2-1, Student-t noise of scale
σ = 0.02 with 5 degrees of freedom, se = σ; ``random_state=0``) was measured with exact Top
Covering, k = 2: noise-free ARI 0.796; with the noise 0.780 at min_z = 6 and 0.574 without it
(PAC Top Covering with the φ-aware sampling gives the same labels here). Over random_state 0-5
min_z = 6 stays within 0.07 of the noise-free ARI and the plain game loses 0.04-0.27, so the
thresholds below (within 0.05 of noise-free, and at least 0.15 above the plain game) hold
with room at this seed and fail if the threshold is not applied (the plain game's 0.574).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from hedonic_neurons.artifacts import load_partition, save_phi
from hedonic_neurons.cli import main
from hedonic_neurons.config import GameConfig
from hedonic_neurons.errors import ConfigError
from hedonic_neurons.game import PACTopCover, TopCover
from hedonic_neurons.game.certify import certificates
from hedonic_neurons.game.planted import planted_game
from hedonic_neurons.game.significance import significant_phi
from hedonic_neurons.partition import LayerInputs, partition_layer

PLANT = {"n": 400, "n_groups": 56, "random_state": 0}


def run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


@pytest.fixture(scope="module")
def noisy():
    game = planted_game(sigma=0.02, **PLANT)
    return game, game.phi.astype(np.float32), game.se.astype(np.float32)


@pytest.fixture(scope="module")
def clean_ari():
    clean = planted_game(sigma=0.0, **PLANT)
    return adjusted_rand_score(clean.labels, TopCover(2).fit(clean.phi).labels_)


@pytest.fixture
def phi_files(tmp_path, noisy):
    _, phi, se = noisy
    meta = {"layer": 2, "metric": "pas", "model": "planted"}
    with_se = save_phi(tmp_path / "se" / "phi_layer2.safetensors", phi, meta, se=se)
    old = save_phi(tmp_path / "old" / "phi_layer2.safetensors", phi, meta)
    return with_se, old


@pytest.mark.parametrize("solver", [["--exact"], []], ids=["exact", "pac"])  # []: the default, PAC
def test_solve_min_z_recovers_the_planted_groups_the_plain_game_chains(
    solver, phi_files, noisy, clean_ari, tmp_path, capsys
):
    game, phi, se = noisy
    path, _ = phi_files
    common = ["solve", str(path), *solver, "--sampling", "phi", "--certify-samples", "500"]
    code, _, err = run([*common, "--out", str(tmp_path / "plain.json")], capsys)
    assert code == 0, err
    code, _, err = run([*common, "--min-z", "6", "--out", str(tmp_path / "z6.json")], capsys)
    assert code == 0, err
    plain = load_partition(tmp_path / "plain.json")
    z6 = load_partition(tmp_path / "z6.json")
    ari_plain = adjusted_rand_score(game.labels, plain["labels"])
    ari_z6 = adjusted_rand_score(game.labels, z6["labels"])
    assert ari_z6 >= clean_ari - 0.05  # measured 0.780 against 0.796 noise-free
    assert ari_z6 >= ari_plain + 0.15  # measured 0.574 without the threshold
    assert plain["params"]["min_z"] is None and z6["params"]["min_z"] == 6.0
    # the file holds the thresholded game's partition, exactly as the solver computes it
    if solver:
        est = TopCover(2, min_z=6)
    else:
        est = PACTopCover(2, min_z=6, sampling="phi", phi_power=4.0, random_state=0)
    assert z6["labels"] == est.fit(phi, se).labels_.tolist()
    # the certificate is of the game that was solved (the thresholded φ), not of the raw φ
    kw = {"k": 2, "n_samples": 500, "min_size": 2, "max_size": 10, "delta": 0.05, "random_state": 0}
    expected = certificates(significant_phi(phi, se, 6.0), z6["coalitions"], **kw)
    assert z6["certificate"] == {dist: cert.to_dict() for dist, cert in expected.items()}


def test_partition_layer_with_game_min_z_is_the_thresholded_solver(noisy):
    _, phi, se = noisy
    calls = {"phi": 0, "phi_se": 0}

    def read_phi(metric):
        calls["phi"] += 1
        return phi

    def read_phi_se(metric):
        calls["phi_se"] += 1
        return phi, se

    out = partition_layer(
        2,
        inputs=LayerInputs(phi=read_phi, phi_se=read_phi_se, n_neurons=phi.shape[0]),
        metrics=["pas"],
        baselines=["phi-communities"],
        seeds=[0, 1],
        game=GameConfig(solver="exact", min_z=6),
    )
    direct = TopCover(2, min_z=6).fit(phi, se)
    for seed in (0, 1):
        part = out[("hedonic-pas", seed)]
        assert np.array_equal(part.labels, direct.labels_)
        assert part.params["min_z"] == 6.0 and part.params["solver"] == "exact"
    assert not np.array_equal(direct.labels_, TopCover(2).fit(phi).labels_)  # the threshold matters
    # φ and its standard errors read once for the layer; the baseline reuses that φ (no SE)
    assert calls == {"phi": 0, "phi_se": 1}
    assert "min_z" not in out[("phi-communities", 0)].params

    # without min_z the standard errors are never read
    calls.update(phi=0, phi_se=0)
    plain = partition_layer(
        2,
        inputs=LayerInputs(phi=read_phi, phi_se=read_phi_se, n_neurons=phi.shape[0]),
        metrics=["pas"],
        seeds=[0],
        game=GameConfig(solver="exact"),
    )
    assert calls == {"phi": 1, "phi_se": 0}
    assert np.array_equal(plain[("hedonic-pas", 0)].labels, TopCover(2).fit(phi).labels_)
    assert plain[("hedonic-pas", 0)].params["min_z"] is None

    # a layer whose standard errors nobody can provide: one error that says what to pass
    with pytest.raises(ConfigError, match="min_z needs the standard errors of phi: pass phi_se"):
        partition_layer(
            2, phi=read_phi, metrics=["pas"], seeds=[0], game=GameConfig(solver="exact", min_z=6)
        )


def test_game_config_min_z_is_validated():
    assert GameConfig().min_z is None
    assert GameConfig(min_z=0).min_z == 0.0
    for bad in (-1, float("nan"), float("inf"), "six"):
        with pytest.raises(ValueError, match="min_z"):
            GameConfig(min_z=bad)


def test_min_z_bad_input_exit_2_with_one_line(phi_files, tmp_path, capsys):
    with_se, old = phi_files
    out = tmp_path / "o.json"
    for argv, match in [
        (["solve", str(old), "--exact", "--min-z", "6", "--out", str(out)], "no standard errors of phi"),
        (["solve", str(with_se), "--exact", "--min-z", "-1", "--out", str(out)], "--min-z -1.0"),
    ]:
        code, _, err = run(argv, capsys)
        assert code == 2
        assert err.startswith("error: ") and err.count("\n") == 1 and match in err
    assert not out.exists()
    # the old file still solves without --min-z
    code, _, _ = run(["solve", str(old), "--exact", "--certify-samples", "200", "--out", str(out)], capsys)
    assert code == 0 and json.loads(out.read_text())["params"]["min_z"] is None
