"""Partitioners as scikit-learn estimators in one registry, and the one dispatch (issue 12)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.utils import estimator_checks as checks

from hedonic_neurons.artifacts import load_partition, save_partition, save_phi
from hedonic_neurons.baselines import Hierarchical, PhiCommunities, RandomPartition, SphericalKMeans
from hedonic_neurons.baselines.given import GivenPartition
from hedonic_neurons.config import GameConfig, load_config
from hedonic_neurons.errors import ConfigError
from hedonic_neurons.game import PACTopCover, TopCover
from hedonic_neurons.partition import LayerInputs, Partition, partition_layer
from hedonic_neurons.partitioner import PARTITIONERS, Partitioner, baseline_names, solver_names

N = 24


def block_phi(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(6), 4)
    phi = np.where(truth[:, None] == truth[None, :], 1.0, -0.3) + 0.2 * rng.normal(size=(N, N))
    phi = np.triu(phi, 1)
    return (phi + phi.T).astype(np.float32)


def example_input(requires):
    rng = np.random.default_rng(1)
    return {
        "phi": block_phi(),
        "rows": rng.normal(size=(N, 8)),
        "profiles": np.abs(rng.normal(size=(N, 10))),
        "sizes": [8, 6, 4, 3, 2, 1],
        None: np.empty((N, 0)),
    }[requires]


class Singletons(Partitioner):
    """The toy partitioner: every neuron alone (requires nothing but n)."""

    requires = None
    deterministic = True
    fits = 0

    def __init__(self, tag: str = "x"):
        self.tag = tag

    def fit(self, X, y=None):
        type(self).fits += 1
        self._set_result([[i] for i in range(len(X))], len(X))
        return self


def test_registry_holds_every_partitioner():
    assert solver_names() == ["exact", "pac"]
    assert baseline_names() == ["random", "kmeans", "hierarchical", "phi-communities", "given"]
    expected = {
        "exact": TopCover,
        "pac": PACTopCover,
        "random": RandomPartition,
        "kmeans": SphericalKMeans,
        "hierarchical": Hierarchical,
        "phi-communities": PhiCommunities,
        "given": GivenPartition,
    }
    assert dict(PARTITIONERS.items()) == expected
    assert {n: c.requires for n, c in expected.items()} == {
        "exact": "phi", "pac": "phi", "random": "sizes", "kmeans": "rows",
        "hierarchical": "profiles", "phi-communities": "phi", "given": None,
    }  # fmt: skip
    with pytest.raises(ConfigError, match="does not implement Partitioner"):
        PARTITIONERS.add("bogus", dict)


# 'given' reads a file (its contract: tests/test_given_partition.py)
@pytest.mark.parametrize("name", [name for name in PARTITIONERS.names() if name != "given"])
def test_scikit_learn_estimator_contract(name):
    cls = PARTITIONERS.get(name)
    est = cls()
    # scikit-learn's own checks of the parts of the contract that need no generic data
    checks.check_parameters_default_constructible(name, est)
    checks.check_no_attributes_set_in_init(name, cls())
    checks.check_get_params_invariance(name, cls())
    checks.check_set_params(name, cls())
    checks.check_estimator_cloneable(name, cls())
    checks.check_estimator_repr(name, cls())
    checks.check_mixin_order(name, cls())
    checks.check_do_not_raise_errors_in_init_or_set_params(name, cls())
    params = est.get_params()
    assert clone(est).get_params() == params
    assert repr(cls()) == f"{cls.__name__}()"
    # set_params round trip changes the parameter and repr shows it
    key = "k" if "k" in params else ("n_clusters" if "n_clusters" in params else "random_state")
    value = 3
    assert est.set_params(**{key: value}) is est and est.get_params()[key] == value
    assert f"{key}=3" in repr(est)
    # fit_predict == fit().labels_, and partition_ agrees
    X = example_input(cls.requires)
    seeded = {"random_state": 5} if "random_state" in params else {}
    a = cls(**seeded).fit_predict(X)
    fitted = cls(**seeded).fit(X)
    assert np.array_equal(a, fitted.labels_)
    assert isinstance(fitted.partition_, Partition)
    assert np.array_equal(fitted.partition_.labels, fitted.labels_)
    assert fitted.partition_.coalitions == fitted.coalitions_
    assert fitted.partition_.method == ("hedonic" if cls.hedonic else name)
    # a clone is unfitted and fits to the same partition
    twin = clone(fitted)
    assert not hasattr(twin, "labels_") and np.array_equal(twin.fit(X).labels_, fitted.labels_)


def test_validation_happens_in_fit_not_init():
    # __init__ stores even nonsense unchanged (scikit-learn contract); fit rejects it
    for est, X, match in [
        (TopCover(k=0), block_phi(), "k must be"),
        (PACTopCover(epsilon=2.0), block_phi(), "epsilon"),
        (RandomPartition([]), None, "at least one"),
        (SphericalKMeans(n_iter=0), example_input("rows"), "n_iter"),
        (Hierarchical(n_clusters=0), example_input("profiles"), "n_clusters"),
        (PhiCommunities(backend="igraph"), block_phi(), "backend"),
    ]:
        assert clone(est).get_params() == est.get_params()
        with pytest.raises(ConfigError, match=match):
            est.fit(X)


def fake_layer(tmp_path):
    phis = {"oca": block_phi(2), "pas": block_phi(3)}
    rng = np.random.default_rng(4)
    return phis, rng.normal(size=(N, 8)), np.abs(rng.normal(size=(N, 12)))


@pytest.mark.parametrize("solver", ["exact", "pac"])
def test_partition_layer_equals_the_estimators_it_dispatches_to(tmp_path, solver):
    phis, rows, profiles = fake_layer(tmp_path)
    calls = {"phi": [], "rows": 0, "profiles": 0}

    def phi(metric):
        calls["phi"].append(metric)
        return phis[metric]

    def count(kind, value):
        def get():
            calls[kind] += 1
            return value

        return get

    game = GameConfig(solver=solver)
    out = partition_layer(
        4,
        phi=phi,
        metrics=["oca", "pas"],
        baselines=[name for name in baseline_names() if name != "given"],  # given reads a file
        seeds=[0, 1],
        game=game,
        path=lambda method, seed: tmp_path / method / f"seed{seed}.json",
        rows=count("rows", rows),
        profiles=count("profiles", profiles),
        n_clusters=5,
    )
    assert sorted(calls["phi"]) == ["oca", "pas"] and calls["rows"] == 1 == calls["profiles"]
    for seed in (0, 1):
        for metric in ("oca", "pas"):
            est = TopCover(k=2) if solver == "exact" else PACTopCover(k=2, random_state=seed, phi_power=4.0)
            ref = est.fit(phis[metric])
            got = out[(f"hedonic-{metric}", seed)]
            assert got.coalitions == ref.coalitions_ and got.method == f"hedonic-{metric}"
            assert (
                got.params["solver"] == solver and got.params["phi"] == metric and got.params["seed"] == seed
            )
            assert got.extra["diagnostics"]["n_rounds"] == ref.n_rounds_
        sizes = out[("hedonic-pas", seed)].sizes
        assert out[("random", seed)].coalitions == RandomPartition(sizes, random_state=seed).fit().coalitions_
        assert out[("random", seed)].params["like"] == "hedonic-pas"
        km = SphericalKMeans(5, random_state=seed).fit(rows)
        assert out[("kmeans", seed)].coalitions == km.coalitions_
        assert out[("hierarchical", seed)].coalitions == Hierarchical(5).fit(profiles).coalitions_
        pc = PhiCommunities(random_state=seed).fit(phis["pas"])
        assert out[("phi-communities", seed)].coalitions == pc.coalitions_
        assert out[("phi-communities", seed)].extra["edges"] == pc.n_edges_
        for (method, s), part in out.items():
            if s == seed:
                assert (
                    load_partition(tmp_path / method / f"seed{seed}.json")["labels"] == part.labels.tolist()
                )
                assert part.layer == 4
    # a second call reads the files instead of recomputing (a killed stage resumes)
    again = partition_layer(
        4,
        phi=lambda m: pytest.fail("phi must not be read again"),
        metrics=["oca", "pas"],
        baselines=[name for name in baseline_names() if name != "given"],  # given reads a file
        seeds=[0, 1],
        game=game,
        path=lambda method, seed: tmp_path / method / f"seed{seed}.json",
        rows=lambda: pytest.fail("rows must not be read again"),
        profiles=lambda: pytest.fail("profiles must not be read again"),
    )
    assert again == out


def test_a_registered_toy_partitioner_runs_through_the_dispatch_the_cli_and_the_config(tmp_path, capsys):
    from hedonic_neurons.cli import main

    Singletons.fits = 0
    with PARTITIONERS.temporarily("singletons", Singletons):
        assert "singletons" in baseline_names()
        cfg = load_config(None, {"baselines": ["random", "singletons"]})
        assert cfg.baselines == ["random", "singletons"]
        # through partition_layer, next to a hedonic partition (n comes from the layer's inputs)
        out = partition_layer(
            2,
            phi=lambda m: block_phi(),
            metrics=["pas"],
            baselines=["singletons"],
            seeds=[0, 1, 2],
            game=GameConfig(),
            path=lambda method, seed: tmp_path / "run" / method / f"seed{seed}.json",
        )
        assert Singletons.fits == 1  # deterministic: fitted once, written for every seed
        for seed in (0, 1, 2):
            part = out[("singletons", seed)]
            assert part.coalitions == [[i] for i in range(N)] and part.method == "singletons"
            assert part.params == {"tag": "x", "seed": seed}
            assert load_partition(tmp_path / "run" / "singletons" / f"seed{seed}.json")["n_neurons"] == N
        # through `hedonic baseline` (cli.main): n from the --like partition
        save_partition(tmp_path / "like.json", [[0, 1, 2], [3, 4]], method="hedonic-pas", params={}, layer=7)
        with pytest.raises(SystemExit) as exc:
            main(["baseline", "--method", "singletons", "--like", str(tmp_path / "like.json"), "--out",
                  str(tmp_path / "s.json")])  # fmt: skip
        assert exc.value.code == 0
        doc = load_partition(tmp_path / "s.json")
        assert doc["method"] == "singletons" and doc["coalitions"] == [[0], [1], [2], [3], [4]]
        assert doc["layer"] == 7 and doc["like"] == str(tmp_path / "like.json")
        assert "singletons: 5 coalitions of 5 neurons" in capsys.readouterr().out
        # without any input that tells n: one line, exit 2
        with pytest.raises(SystemExit) as exc:
            main(["baseline", "--method", "singletons", "--out", str(tmp_path / "t.json")])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--like, --phi or MODEL and --layer" in err
    assert "singletons" not in baseline_names()
    with pytest.raises(ConfigError, match="unknown baseline 'singletons'"):
        load_config(None, {"baselines": ["singletons"]})
    with pytest.raises(SystemExit) as exc:
        main(["baseline", "--method", "singletons", "--out", str(tmp_path / "t.json")])
    assert exc.value.code == 2 and "singletons" in capsys.readouterr().err


def test_config_and_cli_choices_read_the_registry(capsys):
    from hedonic_neurons.cli import main

    with pytest.raises(ConfigError, match=r"unknown solver 'exactt' \(expected one of: exact, pac\)"):
        load_config(None, {"game": {"solver": "exactt"}})
    with pytest.raises(ConfigError, match="did you mean 'kmeans'"):
        load_config(None, {"baselines": ["kmean"]})

    class Greedy(TopCover):
        """A third solver of the game, registered from outside."""

    with PARTITIONERS.temporarily("greedy", Greedy):
        assert solver_names() == ["exact", "pac", "greedy"]
        assert load_config(None, {"game": {"solver": "greedy"}}).game.solver == "greedy"
        parts = partition_layer(
            0, phi=lambda m: block_phi(), metrics=["oca"], game={"solver": "greedy", "k": 2}
        )
        assert parts[("hedonic-oca", 0)].coalitions == TopCover(k=2).fit(block_phi()).coalitions_
        assert parts[("hedonic-oca", 0)].params["solver"] == "greedy"
        with pytest.raises(SystemExit):
            main(["baseline", "--method", "greedy", "--out", "x.json"])  # a solver is not a baseline
        assert (
            "--method 'greedy': expected one of random, kmeans, hierarchical, phi-communities"
            in capsys.readouterr().err
        )


def test_partition_layer_errors():
    with pytest.raises(ConfigError, match="game's settings"):
        partition_layer(0, phi=lambda m: block_phi(), metrics=["oca"])
    with pytest.raises(ConfigError, match="size-matched"):
        partition_layer(0, baselines=["random"], inputs=LayerInputs(n_neurons=N))
    with pytest.raises(ConfigError, match="no rows to partition: pass MODEL"):
        partition_layer(0, baselines=["kmeans"], inputs=LayerInputs(missing={"rows": "MODEL and --layer"}))
    with (
        pytest.raises(ConfigError, match="number of neurons is not known"),
        PARTITIONERS.temporarily("singletons", Singletons),
    ):
        partition_layer(0, baselines=["singletons"])


def test_solve_names_the_metric_and_the_solver(tmp_path, capsys):
    from hedonic_neurons.cli import main

    phi = block_phi(5)
    with_metric = save_phi(tmp_path / "phi_layer3.safetensors", phi, {"layer": 3, "metric": "pas"})
    bare = tmp_path / "bare" / "phi_layer0.safetensors"
    save_phi(bare, phi, {})
    bare.with_suffix(".json").unlink()  # a phi file without its sidecar
    for src, flag, method, solver in [
        (with_metric, "--exact", "hedonic-pas", "exact"),
        (bare, "--pac", "hedonic", "pac"),
    ]:
        out = tmp_path / f"{solver}.json"
        with pytest.raises(SystemExit) as exc:
            main(["solve", str(src), flag, "--out", str(out), "--certify-samples", "200"])
        assert exc.value.code == 0
        doc = json.loads(out.read_text())
        assert doc["method"] == method and doc["params"]["solver"] == solver
        est = TopCover(k=2) if solver == "exact" else PACTopCover(k=2, random_state=0, phi_power=4.0)
        assert doc["coalitions"] == est.fit(phi).coalitions_
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["solve", "--help"])
    help_text = capsys.readouterr().out
    (line,) = [ln for ln in help_text.splitlines() if "--exact" in ln]
    assert "--pac" in line and "<bool>" not in line  # a flag, shown without a value
