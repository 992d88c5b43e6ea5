"""The Partition type and the one partition file format (issue 12; issue 16's save_partition)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hedonic_neurons.artifacts import PARTITION_FORMAT, load_partition, save_partition
from hedonic_neurons.errors import DataError
from hedonic_neurons.evaluate.stats import top_coalitions
from hedonic_neurons.partition import HEDONIC, Partition, coalitions_from_labels, hedonic_method


def brute_canonical(labels):
    """Coalitions by brute force: group equal labels, sort members, largest first, ties by first."""
    groups = {}
    for i, lab in enumerate(labels):
        groups.setdefault(lab, []).append(i)
    return sorted(groups.values(), key=lambda c: (-len(c), c[0]))


@pytest.mark.parametrize("seed", range(5))
def test_from_labels_is_canonical_and_renumbered(seed):
    rng = np.random.default_rng(seed)
    raw = rng.integers(3, 40, size=50) * 7  # arbitrary, sparse, non-contiguous ids
    p = Partition.from_labels(raw)
    coal = brute_canonical(raw.tolist())
    assert p.coalitions == coal
    assert p.labels.dtype == np.int64 and not p.labels.flags.writeable
    assert all(p.labels[i] == c for c, members in enumerate(coal) for i in members)
    assert p.n_neurons == 50 and len(p) == len(coal) and p.sizes == [len(c) for c in coal]
    assert list(p) == coal and p[0] == coal[0] and p[-1] == coal[-1]
    # same partition from its coalitions in any order, with shuffled members
    shuffled = [list(rng.permutation(c)) for c in reversed(coal)]
    assert Partition.from_coalitions(shuffled) == p
    assert Partition(p.labels) == p  # canonical labels are a fixed point


def test_top_k_matches_the_evaluation_helper():
    p = Partition.from_coalitions([[0], [1, 2], [3, 4, 5], [6, 7], [8, 9, 10, 11], [12]])
    for k in range(0, 6):
        for min_size in (1, 2, 3, 5):
            assert p.top_k(k, min_size) == top_coalitions(p.coalitions, k, min_size)
    assert p.top_k(2) == [[8, 9, 10, 11], [3, 4, 5]]
    assert p.top_k(10, min_size=2) == [[8, 9, 10, 11], [3, 4, 5], [1, 2], [6, 7]]


def test_repr_and_metadata():
    p = Partition.from_labels([1, 1, 0], method="kmeans", layer=3, params={"seed": 0})
    assert repr(p) == "Partition(method='kmeans', layer=3, n_neurons=3, coalitions=2, largest=2)"
    assert p.method == "kmeans" and p.layer == 3 and p.params == {"seed": 0} and p.provenance is None


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Partition.from_labels([]), "non-empty"),
        (lambda: Partition.from_labels([[0, 1]]), "1-d"),
        (lambda: Partition.from_labels([0.0, 1.0]), "integers"),
        (lambda: Partition.from_labels([0, -1, 0]), r"-1 at neuron 1"),
        (lambda: Partition.from_labels("abc"), "sequence of integers"),
        (lambda: Partition.from_coalitions([[0, 1], [1, 2]]), "repeats"),
        (lambda: Partition.from_coalitions([[0, 1], [3]]), "outside"),
        (lambda: Partition.from_coalitions([[0, 1]], n_neurons=3), "in no coalition"),
        (lambda: Partition.from_coalitions([]), "non-empty"),
        (lambda: Partition.from_labels([0, 1], layer=-2), "layer"),
        (lambda: Partition.from_labels([0, 1], extra={"labels": [0]}), "extra must not hold"),
    ],
)
def test_bad_partitions_are_one_line_data_errors(make, match):
    with pytest.raises(DataError, match=match) as exc:
        make()
    assert "\n" not in str(exc.value)


def test_save_load_round_trip(tmp_path):
    p = Partition.from_coalitions(
        [[4, 0], [1], [2, 3, 5]],
        method="hedonic-pas",
        params={"solver": "exact", "k": np.int64(2)},
        layer=1,
        extra={"certificate": {"uniform": {"n_blocking": 0}}},
    )
    path = p.save(tmp_path / "p.json")
    doc = json.loads(path.read_text())
    assert list(doc)[:6] == ["format", "method", "layer", "n_neurons", "params", "sizes"]
    assert list(doc)[-3:] == ["coalitions", "labels", "provenance"]
    assert doc["format"] == PARTITION_FORMAT and doc["coalitions"] == [[2, 3, 5], [0, 4], [1]]
    assert doc["labels"] == [1, 2, 0, 0, 1, 0] and doc["params"] == {"solver": "exact", "k": 2}
    assert doc["sizes"]["largest"] == 3 and doc["certificate"] == {"uniform": {"n_blocking": 0}}
    again = Partition.load(path)
    assert again == p and again.provenance == doc["provenance"] == p.provenance
    assert again.to_dict() == doc  # loading and saving again writes the same document
    assert load_partition(path) == doc


def test_a_file_of_the_old_writer_loads(tmp_path):
    # written by save_partition before Partition existed (release 0.x); no labels field
    old = {
        "format": "hedonic-neurons/partition/v1",
        "method": "hedonic-pac",
        "layer": 2,
        "n_neurons": 4,
        "params": {"solver": "PACTopCover", "k": 2},
        "sizes": {"count": 2},
        "certificate": {"uniform": {"rate": 0.0}},
        "coalitions": [[1, 3], [0, 2]],
        "provenance": {"package": "hedonic-neurons"},
    }
    (tmp_path / "old.json").write_text(json.dumps(old))
    p = Partition.load(tmp_path / "old.json")
    assert p.coalitions == [[0, 2], [1, 3]] and p.labels.tolist() == [0, 1, 0, 1]
    assert (
        p.method == "hedonic-pac" and p.layer == 2 and p.extra == {"certificate": {"uniform": {"rate": 0.0}}}
    )


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda d: d.pop("format"), "not a partition file \\(no 'format' field"),
        (lambda d: d.update(format="other/v2"), "format 'other/v2'"),
        (lambda d: d.pop("coalitions"), "missing field 'coalitions'"),
        (lambda d: d.update(n_neurons=0), "field 'n_neurons'"),
        (lambda d: d.update(labels=[0, 0, 0]), "field 'labels' disagrees with 'coalitions' at neuron 2"),
        (lambda d: d.update(coalitions=[[0, 1], [1]]), "field 'coalitions' with n_neurons 3"),
    ],
)
def test_load_keeps_the_validation_errors(tmp_path, edit, match):
    doc = Partition.from_coalitions([[0, 1], [2]], method="random").to_dict()
    edit(doc)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    for load in (Partition.load, load_partition):
        with pytest.raises(DataError, match=match) as exc:
            load(path)
        assert str(exc.value).startswith(str(path))


def test_save_partition_takes_labels_coalitions_or_a_partition(tmp_path):
    coal = [[0, 3], [1, 2, 4], [5]]
    labels = np.array([7, 2, 2, 7, 2, 9], dtype=np.int64)  # the array that used to fail (issue 16)
    part = Partition.from_coalitions(coal, method="pre", params={"a": 1}, layer=0)
    docs = []
    for name, value in (("labels", labels), ("list", labels.tolist()), ("coal", coal), ("part", part)):
        path = save_partition(tmp_path / f"{name}.json", value, method="kmeans", params={"seed": 1}, layer=5)
        docs.append(load_partition(path))
    for doc in docs:
        assert doc["coalitions"] == [[1, 2, 4], [0, 3], [5]] and doc["labels"] == [1, 0, 0, 1, 0, 2]
        assert doc["method"] == "kmeans" and doc["params"] == {"seed": 1} and doc["layer"] == 5
    kept = load_partition(save_partition(tmp_path / "kept.json", part))  # a Partition keeps its own
    assert kept["method"] == "pre" and kept["params"] == {"a": 1} and kept["layer"] == 0
    with pytest.raises(DataError, match="repeats"):
        save_partition(tmp_path / "bad.json", [[0, 1], [1]], method="x", params={})


def test_method_vocabulary():
    assert HEDONIC == {"oca": "hedonic-oca", "pas": "hedonic-pas"}
    assert hedonic_method("pas") == "hedonic-pas" and hedonic_method(None) == "hedonic"
    assert coalitions_from_labels([5, 2, 5, 9, 2, 5]) == [[0, 2, 5], [1, 4], [3]]


def test_partition_works_where_coalitions_are_expected():
    from hedonic_neurons.evaluate.stats import size_matched

    p = Partition.from_labels([0, 0, 1, 1, 1, 2])
    assert [list(c) for c in p] == p.coalitions
    matched, skipped = size_matched([2], p, np.random.default_rng(0))
    assert skipped == 0 and len(matched) == 1 and len(matched[0]) == 2
