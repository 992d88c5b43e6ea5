"""The ``given`` baseline: a fixed partition read from a file (a partition JSON or a plant ground
truth), its checks, its run-config field and its way through ``hedonic run``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from hedonic_neurons.baselines.given import PLANT_FORMAT, GivenPartition, check_given, read_given
from hedonic_neurons.cli import main
from hedonic_neurons.config import load_config
from hedonic_neurons.errors import ConfigError, DataError, HedonicError
from hedonic_neurons.partition import Partition
from hedonic_neurons.partitioner import PARTITIONERS

N = 24


@pytest.fixture(autouse=True)
def _registered():
    # the same entry the library registers by default (a no-op replacement once it does)
    with PARTITIONERS.temporarily("given", GivenPartition):
        yield


def ground_truth(path, *, layer=1, n=N, groups=((3, 7, 11), (0, 5)), kinds=("and", "or")):
    """A minimal plant ground truth (the fields the baseline reads) written to ``path``."""
    doc = {
        "format": PLANT_FORMAT,
        "layer": layer,
        "n_neurons": n,
        "groups": [{"kind": k, "members": list(g)} for k, g in zip(kinds, groups, strict=True)],
    }
    path.write_text(json.dumps(doc))
    return path


def partition_file(path, coalitions, *, layer=1, n=N):
    return Partition.from_coalitions(coalitions, n, method="mine", layer=layer).save(path)


def test_plant_format_is_the_one_plant_writes():
    from hedonic_neurons.models.plant import PLANT_FORMAT as written

    assert written == PLANT_FORMAT


def test_ground_truth_gives_its_groups_and_every_other_neuron_alone(tmp_path):
    path = ground_truth(tmp_path / "gt.json")
    part = read_given(path)
    want = [[3, 7, 11], [0, 5]] + [[i] for i in range(N) if i not in {0, 3, 5, 7, 11}]
    assert part.coalitions == want  # canonical: largest first, ties by smallest member
    assert part.layer == 1 and part.n_neurons == N
    assert part.extra["planted_groups"] == [
        {"kind": "and", "members": [3, 7, 11]},
        {"kind": "or", "members": [0, 5]},
    ]
    est = GivenPartition(path=path, layer=1).fit(np.empty((N, 0)))
    assert est.coalitions_ == want
    assert est.labels_[3] == est.labels_[7] == est.labels_[11] == 0 and est.labels_[5] == 1
    assert est.partition_.method == "given" and est.partition_.params["path"] == str(path)
    assert est.diagnostics()["planted_groups"] == part.extra["planted_groups"]


def test_partition_file_is_returned_exactly(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, size=N)
    path = Partition.from_labels(labels, method="kmeans", layer=2).save(tmp_path / "p.json")
    want = Partition.from_labels(labels).coalitions
    est = GivenPartition(path=path).fit(np.empty((N, 0)))
    assert est.coalitions_ == want and len(want) == len(set(labels.tolist()))
    for members in want:  # every member of a coalition shares its label in the file
        assert len(set(labels[members].tolist())) == 1
    assert est.diagnostics() == {"source": str(path), "source_method": "kmeans"}
    # deterministic: random_state changes nothing
    assert GivenPartition(path=path, random_state=3).fit(np.empty((N, 0))).coalitions_ == want


def test_scikit_learn_estimator_contract(tmp_path):
    from sklearn.base import clone
    from sklearn.utils import estimator_checks as checks

    for check in (
        checks.check_parameters_default_constructible,
        checks.check_no_attributes_set_in_init,
        checks.check_get_params_invariance,
        checks.check_set_params,
        checks.check_estimator_cloneable,
        checks.check_estimator_repr,
        checks.check_mixin_order,
        checks.check_do_not_raise_errors_in_init_or_set_params,
    ):
        check("given", GivenPartition())
    assert repr(GivenPartition()) == "GivenPartition()"
    path = ground_truth(tmp_path / "gt.json")
    X = np.empty((N, 0))
    fitted = GivenPartition(path=path).fit(X)
    assert np.array_equal(GivenPartition(path=path).fit_predict(X), fitted.labels_)
    assert fitted.partition_.coalitions == fitted.coalitions_
    twin = clone(fitted)
    assert not hasattr(twin, "labels_") and np.array_equal(twin.fit(X).labels_, fitted.labels_)


@pytest.mark.parametrize(
    "write, match",
    [
        (lambda p: None, "file not found"),
        (lambda p: p.write_text("[1, 2]"), "neither a partition file nor a plant ground truth"),
        (lambda p: p.write_text('{"format": "x"}'), "format 'x'"),
        (lambda p: ground_truth(p, groups=((1, 2), (2, 3))), "a neuron is in two planted groups"),
        (lambda p: ground_truth(p, groups=((1, 2), (3, N))), f"planted neuron {N} is outside"),
        (
            lambda p: p.write_text(json.dumps({"format": PLANT_FORMAT, "layer": 1, "n_neurons": 4})),
            "'groups'",
        ),
    ],
)
def test_bad_file_is_one_error_naming_it(tmp_path, write, match):
    path = tmp_path / "bad.json"
    write(path)
    with pytest.raises(HedonicError, match=match) as info:
        GivenPartition(path=path).fit(np.empty((N, 0)))
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_wrong_number_of_neurons_or_layer_or_no_path(tmp_path):
    path = ground_truth(tmp_path / "gt.json")
    with pytest.raises(ConfigError, match=f"has {N} neurons, but the layer has 30"):
        GivenPartition(path=path).fit(np.empty((30, 0)))
    with pytest.raises(ConfigError, match="is of layer 1, not layer 2"):
        GivenPartition(path=path, layer=2).fit(np.empty((N, 0)))
    with pytest.raises(ConfigError, match="needs a partition file: pass path="):
        GivenPartition().fit(np.empty((N, 0)))
    bad = partition_file(tmp_path / "p.json", [list(range(N))])
    doc = json.loads(bad.read_text())
    doc["coalitions"] = [[0, 1], [1, 2]] + [[i] for i in range(3, N)]
    bad.write_text(json.dumps(doc))
    with pytest.raises(DataError, match="coalitions"):
        read_given(bad)


def test_check_given_maps_files_to_layers(tmp_path):
    a = ground_truth(tmp_path / "a.json", layer=1)
    b = partition_file(tmp_path / "b.json", [list(range(N))], layer=2)
    nolayer = partition_file(tmp_path / "c.json", [list(range(N))], layer=None)
    assert check_given([a, b], [1, 2]) == {1: str(a), 2: str(b)}
    assert check_given([nolayer], [4]) == {4: str(nolayer)}
    assert check_given([nolayer, a], None) == {1: str(a)}
    for paths, layers, n, match in [
        ([a], [1, 2], None, "no partition for layer 2"),
        ([a], [2], None, "is of layer 1, which the run does not analyse"),
        ([a, ground_truth(tmp_path / "d.json", layer=1)], [1], None, "are both of layer 1"),
        ([nolayer], [1, 2], None, "names no layer"),
        ([a], [1], 1536, f"has {N} neurons, but the model's layers have 1536"),
    ]:
        with pytest.raises(ConfigError, match=match):
            check_given(paths, layers, n)


def write_config(tmp_path, **fields):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"layers": [1], **fields}))
    return path


def test_config_field_resolves_checks_and_keys_the_files(tmp_path):
    (tmp_path / "gt").mkdir()
    ground_truth(tmp_path / "gt" / "truth.json")
    path = write_config(tmp_path, baselines=["given", "random"], given="gt/truth.json")
    cfg = load_config(path)
    assert cfg.given == [str((tmp_path / "gt" / "truth.json").resolve())]  # relative to the config
    assert cfg.baseline_settings(1) == {"given": {"path": cfg.given[0], "layer": 1}}
    assert load_config(write_config(tmp_path, layers=[1])).baseline_settings(1) == {}
    # the baselines' cache key stands for the file's contents too
    key = cfg.section_key("baselines")
    ground_truth(tmp_path / "gt" / "truth.json", groups=((3, 7), (0, 5)))
    assert cfg.section_key("baselines") != key
    assert cfg.section_key("phi") == load_config(path).section_key("phi")
    for fields, match in [
        ({"baselines": ["given"]}, "baselines lists 'given' but no file is set"),
        ({"given": "gt/truth.json"}, "'given' is not in baselines"),
        ({"baselines": ["given"], "given": "gt/nope.json"}, "given: file not found"),
        ({"baselines": ["given"], "given": "gt/truth.json", "layers": [2]}, "is of layer 1, which the run"),
    ]:
        with pytest.raises(ConfigError, match=match):
            load_config(write_config(tmp_path, **fields))


def test_bad_given_file_is_one_line_exit_2(tmp_path, capsys):
    ground_truth(tmp_path / "truth.json", layer=0)
    path = write_config(tmp_path, baselines=["given"], given="truth.json")
    with pytest.raises(SystemExit) as info:
        main(["run", str(path), "--out", str(tmp_path / "out")])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is of layer 0, which the run does not analyse" in err
    assert not (tmp_path / "out").exists()


def test_wrong_number_of_neurons_is_one_line_exit_2_before_any_work(tmp_path, capsys):
    from test_loading import save_tiny

    model = save_tiny(tmp_path / "model", "llama", seed=1)  # 24 neurons per layer
    ground_truth(tmp_path / "truth.json", n=30)
    capsys.readouterr()  # saving the model's progress bar
    config = write_config(
        tmp_path, model=str(model), reference=str(model), baselines=["given"], given="truth.json"
    )
    with pytest.raises(SystemExit) as info:
        main(["run", str(config), "--out", str(tmp_path / "out"), "--quiet"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines()[-1].endswith(
        "has 30 neurons, but the model's layers have 24; expected a partition of this model's neurons"
    )
    assert len(err.splitlines()) == 1 and not (tmp_path / "out").exists()


def test_given_partition_is_a_method_of_a_tiny_run(tmp_path, capsys):
    from synergy_helpers import one_thread
    from test_loading import save_tiny

    with one_thread():
        reference = save_tiny(tmp_path / "reference", "llama", seed=0)
        model = save_tiny(tmp_path / "model", "llama", seed=1)  # the "fine-tuned" checkpoint
        coalitions = [[0, 4, 8, 12], [1, 2, 3], [5, 9]] + [[i] for i in (6, 7, 10, 11, *range(13, N))]
        partition_file(tmp_path / "mine.json", coalitions, layer=1)
        config = write_config(
            tmp_path,
            model=str(model),
            reference=str(reference),
            max_length=32,
            baselines=["given", "random"],
            given="mine.json",
            data={"max_train_pairs": 40, "max_test_pairs": 20},
            phi={"metrics": ["oca"], "batch_size": 8},
            evaluate={
                "evaluations": ["effects"],
                "seeds": [0, 1, 2],
                "top_k": 3,
                "selection": "largest",
                "size_band": [2, N],
                "certify_samples": 200,
                "bootstrap": 100,
                "null_pairs": 8,
                "synergy_pairs": 4,
                "attribution": False,
                "explorer_coalitions": 0,
                "phi_resamples": 3,  # the given partition, the reference, sets each resample's targets
            },
        )
        out = tmp_path / "run"
        try:
            main(["run", str(config), "--out", str(out), "--quiet"])
        except SystemExit as exc:
            assert exc.code in (0, None), capsys.readouterr().err
    for seed in (0, 1, 2):
        doc = json.loads((out / "partitions" / "given" / f"seed{seed}" / "layer1.json").read_text())
        assert doc["coalitions"] == Partition.from_coalitions(coalitions).coalitions
    results = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in results["table_extrinsic"]] == ["hedonic-oca", "given", "random"]
    assert results["sizes"]["given"]["1"]["all_sizes"] == sorted(map(len, coalitions), reverse=True)
    evaluation = json.loads((out / "evaluation.json").read_text())
    effects = {r["method"]: r for r in evaluation["evaluations"]["effects"]}
    assert effects["given"]["coalitions"] == 3 * 3  # its three coalitions of size >= 2, every seed
    # φ resampling with a given reference: the hedonic row gets its interval over (resample, query)
    assert effects["hedonic-oca"]["rms_phi"]["n_resamples"] >= 1 and "rms_phi" not in effects["given"]
    chosen = evaluation["phi_resampling"]["layers"][0]["chosen"]
    assert all(sorted(map(len, c["given"])) == [2, 3, 4] for c in chosen)  # largest 3: the given ones
