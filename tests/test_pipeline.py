"""hedonic run end to end on a tiny model: stages, caching, resume after a kill, config errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hedonic_neurons.cli import main
from hedonic_neurons.config import load_config
from hedonic_neurons.errors import ConfigError
from hedonic_neurons.pipeline import DEMO_CONFIG
from test_loading import make_adapter, save_tiny

REPO = Path(__file__).resolve().parents[1]


def tiny_run_config(tmp_path: Path) -> Path:
    base = save_tiny(tmp_path / "base", "llama", layers=4, n=24)
    make_adapter(base, tmp_path / "adapter", "llama", layers=(1, 2))
    cfg = {
        "name": "tiny",
        "model": str(base),
        "adapter": str(tmp_path / "adapter"),
        "task": "cqtr",
        "layers": [1, 2],
        "max_length": 32,
        "data": {"train": "demo", "test": "demo", "max_train_pairs": 60, "max_test_pairs": 30},
        "phi": {"metrics": ["oca", "pas"], "max_inputs": 96, "batch_size": 4},
        "evaluate": {"top_k": 3, "seeds": [0, 1, 2], "certify_samples": 2000},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


# Runs the CLI, but the process SIGKILLs itself at the 15th PAS batch (after the checkpoint
# written every 10 batches): a real kill at a reproducible point of the phi stage.
KILL_DURING_PAS = """
import os, signal, sys
from hedonic_neurons.synergy import collect
update, calls = collect.PASCollector.update, [0]
def killing_update(self, batch, index):
    calls[0] += 1
    if calls[0] == 15:
        os.kill(os.getpid(), signal.SIGKILL)
    return update(self, batch, index)
collect.PASCollector.update = killing_update
from hedonic_neurons.cli import main
main(sys.argv[1:])
"""


def run_cli(*args: str, kill_during_pas: bool = False) -> subprocess.Popen:
    entry = ["-c", KILL_DURING_PAS] if kill_during_pas else ["-m", "hedonic_neurons"]
    return subprocess.Popen(
        [sys.executable, *entry, *args],
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def results_without_provenance(folder: Path) -> dict:
    doc = json.loads((folder / "results.json").read_text())
    doc.pop("provenance")
    return doc


@pytest.mark.slow
def test_run_resumes_after_kill_with_identical_results(tmp_path):
    cfg = tiny_run_config(tmp_path)
    # uninterrupted reference run
    ref = run_cli("run", str(cfg), "--out", str(tmp_path / "ref"), "--quiet")
    out, err = ref.communicate(timeout=600)
    assert ref.returncode == 0, err
    assert "report:" in out
    # a second run, killed during the phi stage
    victim = run_cli("run", str(cfg), "--out", str(tmp_path / "resumed"), "--quiet", kill_during_pas=True)
    victim.communicate(timeout=600)
    assert victim.returncode == -signal.SIGKILL
    partials = list((tmp_path / "resumed" / "phi" / "pas").glob("*/.partial/*"))
    assert partials, "no PAS checkpoint was left by the killed run"
    assert not (tmp_path / "resumed" / "report.html").exists()
    again = run_cli("run", str(cfg), "--out", str(tmp_path / "resumed"), "--quiet")
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    a, b = results_without_provenance(tmp_path / "ref"), results_without_provenance(tmp_path / "resumed")
    assert a == b
    # the report has both tables and every method
    methods = [row["method"] for row in a["table_extrinsic"]]
    assert methods == ["hedonic-oca", "hedonic-pas", "random", "kmeans", "hierarchical", "phi-communities"]
    assert all(
        row["ood_drop"]["n"] == 3 for row in a["table_extrinsic"] if row["method"].startswith("hedonic")
    )
    for name in (
        "report.md",
        "report.html",
        "figures/methods.png",
        "figures/sizes.png",
        "figures/transitions.png",
    ):
        assert (tmp_path / "ref" / name).is_file(), name
    # a third run finds every stage cached and does no work
    cached = run_cli("run", str(cfg), "--out", str(tmp_path / "ref"), "--quiet")
    _, err = cached.communicate(timeout=300)
    assert cached.returncode == 0, err
    assert "fine-tuning" not in err and "partitions of layer" not in err and "recording pooled" not in err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("modle: minilm\n", "unknown key 'modle'"),
        ("data: {train: {rerank: nowhere.tsv}}\n", "file not found"),
        ("layers: [2, 9]\n", "layer 9 is out of range: model 'minilm' has 6 layers"),
    ],
)
def test_run_config_errors_exit_2_with_one_line(tmp_path, capsys, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    t0 = time.time()
    with pytest.raises(SystemExit) as exc:
        main(["run", str(path), "--out", str(tmp_path / "out"), "--quiet"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert time.time() - t0 < 30  # fails at once, before any work
    assert not (tmp_path / "out" / "finetune").exists()


def test_demo_config_file_matches_builtin():
    from_file = load_config(REPO / "configs" / "demo.yaml")
    assert from_file == load_config(None, DEMO_CONFIG)


def test_test_depth_keeps_each_querys_first_candidates(shared_ir):
    """data.test.depth: rerank a first stage's top-N; whole queries are still drawn."""
    from collections import Counter

    from hedonic_neurons.config import PairSource
    from hedonic_neurons.data import read_rerank_input
    from hedonic_neurons.pipeline import load_split

    rerank = shared_ir / "dl19" / "rerank_input.bm25_top100.tsv.gz"
    source = PairSource(rerank=str(rerank), qrels=str(shared_ir / "dl19" / "qrels.txt"), depth=20)
    pairs, _, desc = load_split(source, "test", 100, 0, "rm")
    counts = Counter(p.qid for p in pairs)
    assert len(counts) == 5 and set(counts.values()) == {20} and "top 20 per query" in desc
    full = read_rerank_input(rerank)
    for qid in counts:
        assert [p.pid for p in pairs if p.qid == qid] == [p.pid for p in full if p.qid == qid][:20]


def test_config_keeps_depth_and_resolves_paths(tmp_path):
    (tmp_path / "pairs.tsv").write_text("q1\tp1\tquery\tpassage\n")
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  test: {rerank: pairs.tsv, depth: 20}\n")
    cfg = load_config(path)
    assert cfg.data.test.depth == 20 and cfg.data.test.rerank == str(tmp_path / "pairs.tsv")


def test_run_uses_the_template_the_adapter_was_trained_with(tmp_path):
    """An adapter's finetune.json records its input template; hedonic run formats inputs with it,
    and without a record (or without an adapter) uses the default template."""
    from hedonic_neurons.models.inputs import DEFAULT_TEMPLATE
    from hedonic_neurons.pipeline import Pipeline

    cfg = load_config(tiny_run_config(tmp_path))
    run = Pipeline(cfg, tmp_path / "out", progress=False)
    assert run._input_format(cfg.adapter).template == DEFAULT_TEMPLATE
    assert run._input_format(None).template == DEFAULT_TEMPLATE
    doc_first = "document: {passage} query: {query}"
    record = {"input_format": {"template": doc_first, "max_length": 64}}
    (Path(cfg.adapter).parent / "finetune.json").write_text(json.dumps(record))
    fmt = run._input_format(cfg.adapter)
    assert (fmt.template, fmt.max_length) == (doc_first, 32)  # max_length: the run config's
    (Path(cfg.adapter).parent / "finetune.json").write_text(json.dumps({"input_format": None}))
    with pytest.raises(ConfigError, match="input_format.template"):
        run._input_format(cfg.adapter)
