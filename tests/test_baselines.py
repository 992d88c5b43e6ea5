"""Baseline partitioners: determinism, covering, planted structure, input validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform
from sklearn.metrics import adjusted_rand_score

from hedonic_neurons.artifacts import labels_from_coalitions
from hedonic_neurons.baselines import (
    Hierarchical,
    PhiCommunities,
    RandomPartition,
    SphericalKMeans,
    coalitions_from_labels,
)
from hedonic_neurons.errors import ConfigError, DataError, PhiError


def planted(n_groups: int, per: int, dim: int, seed: int, noise: float = 0.05):
    """Rows pointing in one of ``n_groups`` random directions, random positive norms."""
    rng = np.random.default_rng(seed)
    dirs = rng.normal(size=(n_groups, dim))
    truth = np.repeat(np.arange(n_groups), per)
    X = dirs[truth] + noise * rng.normal(size=(truth.size, dim))
    X *= rng.uniform(0.1, 10.0, size=(truth.size, 1))  # norms must not matter
    perm = rng.permutation(truth.size)
    return X[perm], truth[perm]


def block_phi(sizes, seed: int):
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(len(sizes)), sizes)
    n = truth.size
    phi = np.where(truth[:, None] == truth[None, :], 1.0, -0.5) + 0.1 * rng.normal(size=(n, n))
    phi = np.triu(phi, 1)
    phi = phi + phi.T
    return phi, truth


def check_partition(est, n: int) -> None:
    """Every neuron exactly once, canonical order, labels_ index coalitions_."""
    coal = est.coalitions_
    assert labels_from_coalitions(coal, n).tolist() == est.labels_.tolist()
    assert all(c == sorted(c) for c in coal)
    assert [len(c) for c in coal] == sorted((len(c) for c in coal), reverse=True)
    assert sorted(i for c in coal for i in c) == list(range(n))
    assert est.n_neurons_ == n


def make(method: str, seed: int):
    X, _ = planted(6, 10, 12, seed=0, noise=0.8)
    phi, _ = block_phi([10, 8, 8, 6, 5, 3], seed=0)
    if method == "random":
        return RandomPartition([7, 5, 5, 3, 1], random_state=seed), None
    if method == "kmeans":
        return SphericalKMeans(random_state=seed), X
    if method == "hierarchical":
        return Hierarchical(7, random_state=seed), X
    return PhiCommunities(random_state=seed), phi


@pytest.mark.parametrize("method", ["random", "kmeans", "hierarchical", "phi"])
def test_deterministic_and_covering(method):
    est_a, data = make(method, 7)
    est_b, _ = make(method, 7)
    est_a.fit(data)
    est_b.fit(data)
    n = 21 if method == "random" else len(data)
    check_partition(est_a, n)
    assert est_a.coalitions_ == est_b.coalitions_
    assert est_a.labels_.tolist() == est_b.labels_.tolist()


def test_random_partition_is_size_matched_and_seed_dependent():
    reference = [[0, 3, 4], [1, 2], [5], [6, 7, 8, 9]]
    parts = [RandomPartition(reference, random_state=s).fit().coalitions_ for s in range(5)]
    for p in parts:
        assert [len(c) for c in p] == [4, 3, 2, 1]
    assert len({str(p) for p in parts}) > 1
    # sizes may be given directly; X only fixes n
    assert [len(c) for c in RandomPartition([2, 2], random_state=0).fit(np.zeros((4, 3))).coalitions_] == [
        2,
        2,
    ]
    with pytest.raises(DataError, match="rows"):
        RandomPartition([2, 2]).fit(np.zeros((5, 3)))
    with pytest.raises(ConfigError):  # validated by fit (the scikit-learn contract), not __init__
        RandomPartition([]).fit()
    with pytest.raises(ConfigError, match="sizes"):
        RandomPartition().fit()
    # without like, fit takes the sizes (what partition_layer passes: requires = "sizes")
    drawn = RandomPartition(random_state=4).fit([1, 3, 2])
    assert drawn.coalitions_ == RandomPartition([2, 1, 3], random_state=4).fit().coalitions_
    assert [len(c) for c in drawn.coalitions_] == [3, 2, 1]


def test_kmeans_recovers_directions_whatever_the_norms():
    X, truth = planted(8, 8, 20, seed=1)
    km = SphericalKMeans(8, random_state=0).fit(X)
    assert adjusted_rand_score(truth, km.labels_) == 1.0
    np.testing.assert_allclose(np.linalg.norm(km.cluster_centers_, axis=1), 1.0)
    # default k = ceil(sqrt(n))
    assert len(SphericalKMeans(random_state=0).fit(X).coalitions_) <= math.ceil(math.sqrt(64))
    assert SphericalKMeans(random_state=0).fit(X).cluster_centers_.shape[0] == 8


def test_hierarchical_equals_scipy_average_linkage_and_handles_dead_neurons():
    rng = np.random.default_rng(2)
    X = np.abs(rng.normal(size=(30, 9)))
    X[[4, 11]] = 0.0  # dead neurons: all-zero profiles
    h = Hierarchical(5).fit(X)
    check_partition(h, 30)
    # reference: scipy average linkage on the same cosine distances (zero rows at distance 1)
    norms = np.linalg.norm(X, axis=1)
    unit = X / np.where(norms > 0, norms, 1)[:, None]
    dist = np.clip(1 - unit @ unit.T, 0, 2)
    np.fill_diagonal(dist, 0)
    ref = fcluster(linkage(squareform(dist, checks=False), "average"), 5, criterion="maxclust")
    assert adjusted_rand_score(ref, h.labels_) == 1.0
    # planted profiles (scaled copies of 4 templates) are recovered exactly
    Xp, truth = planted(4, 6, 15, seed=3, noise=0.02)
    assert adjusted_rand_score(truth, Hierarchical(4).fit(Xp).labels_) == 1.0


def test_phi_communities_recover_planted_blocks():
    phi, truth = block_phi([12, 9, 7, 5], seed=4)
    pc = PhiCommunities(random_state=0).fit(phi)
    assert adjusted_rand_score(truth, pc.labels_) == 1.0
    sparse = PhiCommunities(max_partners=3, random_state=0).fit(phi)
    assert sparse.n_edges_ <= 33 * 3 < pc.n_edges_
    check_partition(sparse, 33)
    # a neuron without any positive partner is a singleton
    phi2 = phi.copy()
    phi2[0, :] = phi2[:, 0] = -1.0
    phi2[0, 0] = 0.0
    assert [0] in PhiCommunities(random_state=0).fit(phi2).coalitions_


def test_coalitions_from_labels():
    assert coalitions_from_labels([5, 2, 5, 9, 2, 5]) == [[0, 2, 5], [1, 4], [3]]


def test_bad_inputs_are_one_line_errors():
    X = np.ones((4, 3))
    with pytest.raises(ConfigError, match="n_clusters"):
        SphericalKMeans(5).fit(X)
    with pytest.raises(ConfigError, match="n_clusters"):
        Hierarchical(0).fit(X)
    X[1, 2] = np.nan
    with pytest.raises(DataError, match="non-finite"):
        SphericalKMeans(2).fit(X)
    with pytest.raises(DataError, match="2-d"):
        Hierarchical(2).fit(np.ones(4))
    with pytest.raises(PhiError, match="symmetric"):
        PhiCommunities().fit(np.array([[0.0, 1.0], [0.0, 0.0]]))
    with pytest.raises(ConfigError, match="resolution"):
        PhiCommunities(resolution=0).fit(np.zeros((2, 2)))


# ------------------------------------------------------------------------------------------ CLI


def run_cli(args: list[str]) -> int:
    from hedonic_neurons.cli import main

    try:
        main(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_cli_random_and_phi_communities(tmp_path, capsys):
    from hedonic_neurons.artifacts import load_partition, save_partition, save_phi

    ref = [[0, 3, 4, 9], [1, 2, 8], [5, 6], [7]]
    save_partition(tmp_path / "hedonic.json", ref, method="hedonic", params={}, layer=4)
    outs = []
    for name in ("r1.json", "r2.json"):
        assert (
            run_cli(
                [
                    "baseline",
                    "--method",
                    "random",
                    "--like",
                    str(tmp_path / "hedonic.json"),
                    "--out",
                    str(tmp_path / name),
                    "--seed",
                    "3",
                ]
            )
            == 0
        )
        outs.append(load_partition(tmp_path / name))
    assert outs[0]["coalitions"] == outs[1]["coalitions"]
    assert [len(c) for c in outs[0]["coalitions"]] == [4, 3, 2, 1]
    assert outs[0]["layer"] == 4 and outs[0]["method"] == "random" and outs[0]["params"]["random_state"] == 3

    phi, truth = block_phi([6, 5, 4], seed=9)
    save_phi(tmp_path / "phi_layer5.safetensors", phi, {"layer": 5})
    assert (
        run_cli(
            [
                "baseline",
                "--method",
                "phi-communities",
                "--phi",
                str(tmp_path / "phi_layer5.safetensors"),
                "--out",
                str(tmp_path / "pc.json"),
            ]
        )
        == 0
    )
    doc = load_partition(tmp_path / "pc.json")
    assert doc["layer"] == 5 and adjusted_rand_score(truth, doc["labels"]) == 1.0

    capsys.readouterr()
    assert run_cli(["baseline", "--method", "kmeans", "--out", str(tmp_path / "k.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "MODEL and --layer" in err and "\n" not in err
    assert run_cli(["baseline", "--method", "spectral", "--out", str(tmp_path / "k.json")]) == 2
