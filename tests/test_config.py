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
