import pytest

from hedonic_neurons.config import check_layers, load_config
from hedonic_neurons.errors import ConfigError


def write(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_defaults_and_relative_paths(tmp_path):
    (tmp_path / "pairs.tsv").write_text("1\t2\tq\tp\n")
    cfg = load_config(write(tmp_path, "task: rm\ndata:\n  train: {rerank: pairs.tsv, qrels: pairs.tsv}\n"))
    assert cfg.task == "rm" and cfg.game.k == 2 and cfg.evaluate.seeds == [0, 1, 2]
    assert cfg.data.train.rerank == str(tmp_path / "pairs.tsv")
    assert cfg.data.test == "demo"
    # the cache key depends only on the named sections
    other = load_config(
        write(tmp_path, "task: rm\ngame: {k: 4}\ndata:\n  train: {rerank: pairs.tsv, qrels: pairs.tsv}\n")
    )
    assert cfg.section_key("data", "task") == other.section_key("data", "task")
    assert cfg.section_key("game") != other.section_key("game")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("modle: minilm\n", "unknown key 'modle'"),
        ("game: {k: two}\n", "'game.k'"),
        ("game: {kk: 2}\n", "unknown key 'game.kk'"),
        ("data: {train: {rerank: missing.tsv}}\n", "file not found"),
        ("layers: [1, 1]\n", "must not repeat"),
        ("task: rm\ndata: {train: {rerank: run.yaml}}\n", "needs data.train.qrels"),
        ("- a list\n", "mapping"),
        ("key: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_configs_fail_with_one_line(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message) as exc:
        load_config(write(tmp_path, text))
    assert "\n" not in str(exc.value)


def test_layer_range():
    cfg = load_config(None, {"layers": [2, 7]})
    with pytest.raises(ConfigError, match="layer 7 is out of range: model 'minilm' has 6 layers"):
        check_layers(cfg, 6)
    check_layers(load_config(None, {"layers": [0, 5]}), 6)


# ---------------------------------------------------------------------------- cache keys


def old_section_key(obj) -> str:
    """The hashing as written in RunConfig.section_key before cachekey.py (no default=str)."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def old_key(obj) -> str:
    """The hashing as written in Pipeline._model_key and synergy.collect._key before cachekey.py."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def test_cache_key_keeps_the_old_keys():
    from pathlib import Path
    from types import SimpleNamespace

    from hedonic_neurons.cachekey import cache_key
    from hedonic_neurons.pipeline import Pipeline
    from hedonic_neurons.synergy.collect import _key as collect_key

    # literal keys computed with the code before the change: existing run folders stay valid
    sections = {
        "data": {"train": "demo", "test": "demo", "max_train_pairs": 2000, "max_test_pairs": 1000},
        "task": "cqtr",
    }
    assert cache_key(sections) == "0e53bd41b72cac39"
    identity = [
        {"model": "minilm", "adapter_sha256": None, "path": Path("/x/y")},
        {"template": "query: {q} document: {d}", "max_length": 128},
        "0123456789abcdef",
    ]
    assert cache_key(identity) == "f29a21f14c8ccc8a"
    phi_identity = {
        "settings": {"metric": "oca", "seed": 0},
        "model": {"model": "minilm"},
        "data": {"spec": "demo", "pairs": 16},
        "dtype": "float32",
    }
    assert cache_key(phi_identity) == collect_key(phi_identity) == "378ef14a3cbda547"
    assert cache_key({"b": 1, "a": [1, 2]}) == cache_key({"a": [1, 2], "b": 1})  # key order free
    assert cache_key({"a": 1}) != cache_key({"a": 2}) and len(cache_key(None)) == 16

    # each call-site gives what its old code gave, on a config with every section changed
    cfg = load_config(None, {"task": "rm", "layers": [3, 1], "game": {"k": 3}, "tracking": {"horizon": 2}})
    dump = cfg.model_dump(mode="json")
    for names in (("data", "task"), ("game",), ("tracking", "seed", "layers")):
        assert cfg.section_key(*names) == old_section_key({n: dump[n] for n in names})
    pipe = Pipeline.__new__(Pipeline)
    pipe.cfg = cfg
    pipe.nm = SimpleNamespace(
        identity={"model": "m", "path": Path("/models/m")},
        input_format=SimpleNamespace(to_dict=lambda: {"template": "t", "max_length": 64}),
    )
    base = ("task", "seed", "max_length", "data", "layers")
    for sections in ((), ("phi",), ("phi", "game", "baselines", "evaluate", "tracking")):
        expected = old_key(
            [pipe.nm.identity, {"template": "t", "max_length": 64}, cfg.section_key(*base, *sections)]
        )
        assert pipe._model_key(*sections) == expected


# ------------------------------------------------------------------------- layer grammar


@pytest.mark.parametrize(
    ("spec", "n_layers", "expected"),
    [
        ("3", None, [3]),
        ("1,3,5", None, [1, 3, 5]),
        ("2-5", None, [2, 3, 4, 5]),
        (" 0, 4-6 ,-1", 8, [0, 4, 5, 6, 7]),
        ("5,1,1-2", None, [1, 2, 5]),  # sorted, each once
        ("-1", None, [-1]),  # unresolved without the layer count; check_layers resolves it
        ("-9", 8, [-9]),  # out of range: left for check_layers to report
        ("all", 3, [0, 1, 2]),
        ("ALL", 2, [0, 1]),
        ([4, -1, 2], 6, [2, 4, 5]),
        (3, None, [3]),
    ],
)
def test_parse_layers_grammar(spec, n_layers, expected):
    from hedonic_neurons.validation import parse_layers

    assert parse_layers(spec, n_layers) == expected


@pytest.mark.parametrize(
    ("spec", "n_layers", "message"),
    [
        ("x", 4, "layers= 'x': expected comma-separated layer indices or ranges"),
        ("1,,2", 4, "'' is not one"),
        ("1-", 4, "expected integers"),
        ("5-2", 8, "range 5-2 runs backwards"),
        ("all", None, "layer count is not known"),
        ("all", 0, "names no layer"),
        ([1, "2"], 4, "'2' is not a layer index"),
        ([True], 4, "True is not a layer index"),
    ],
)
def test_parse_layers_errors_name_the_value(spec, n_layers, message):
    from hedonic_neurons.validation import parse_layers

    with pytest.raises(ConfigError, match=message) as exc:
        parse_layers(spec, n_layers)
    assert "\n" not in str(exc.value)


def test_data_modules_import_downwards_only():
    """demo and splits both build on data/dataset.py; demo does not import splits (no cycle)."""
    import ast
    import importlib.util
    from pathlib import Path

    def imported(module: str) -> set[str]:
        path = Path(importlib.util.find_spec(module).origin)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}

    demo, splits, dataset = (imported(f"hedonic_neurons.data.{m}") for m in ("demo", "splits", "dataset"))
    assert "hedonic_neurons.data.splits" not in demo and "hedonic_neurons.data.dataset" in demo
    assert "hedonic_neurons.data.dataset" in splits
    assert not {"hedonic_neurons.data.splits", "hedonic_neurons.data.demo"} & dataset
    from hedonic_neurons.data import demo as demo_module
    from hedonic_neurons.data import splits as splits_module

    assert demo_module.IRDataset is splits_module.IRDataset  # still importable from splits
