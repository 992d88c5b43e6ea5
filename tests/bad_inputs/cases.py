"""The table of bad inputs: every case of issue 17 and more.

Each case builds its inputs in a fresh folder ``d`` (the shared tiny model, adapter, data, phi and
partitions are in ``w``, a :class:`conftest.World`) and returns the command line. Every case must
end with exit code 2, exactly one line on stderr that contains every string of ``expect`` (the
file or option at fault, and what went wrong), no traceback, and ``d`` exactly as it was before.
"""

from __future__ import annotations

import gzip
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from bad_input_helpers import World, json_dump, write_config

Build = Callable[[Path, World], list[str]]


@dataclass(frozen=True)
class Case:
    id: str
    build: Build
    expect: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    hold: str | None = None  # a path (relative to d) another process holds the lock of
    hold_kind: str = "dir"
    needs_non_root: bool = False  # file permissions do not stop root


CASES: list[Case] = []


def case(id: str, *expect: str, **kw):
    def register(build: Build) -> Build:
        CASES.append(Case(id, build, tuple(expect), **kw))
        return build

    return register


# ------------------------------------------------------------------------------------ helpers


def collect(
    w: World, out: Path | str, *extra: str, model: str | None = None, data: str | None = None
) -> list[str]:
    return [
        "collect", model or str(w.model), "--adapter", str(w.adapter), "--layers", "1",
        "--data", data or str(w.pairs), "--out", str(out), "--no-progress", "--device", "cpu", *extra,
    ]  # fmt: skip


def solve(phi: Path | str, out: Path | str, *extra: str) -> list[str]:
    return ["solve", str(phi), "--exact", "--out", str(out), "--certify-samples", "200", *extra]


def phi_file(path: Path, arr: np.ndarray, name: str = "phi") -> Path:
    from safetensors.numpy import save_file

    save_file({name: np.ascontiguousarray(arr)}, str(path))
    return path


def sym(n: int = 6, dtype=np.float32) -> np.ndarray:
    a = np.random.default_rng(1).normal(size=(n, n))
    out = a + a.T
    np.fill_diagonal(out, 0.0)
    return out.astype(dtype)


def partition_doc(w: World, layer: int = 1) -> dict:
    return json.loads((w.part1 if layer == 1 else w.part2).read_text())


def bad_partition(d: Path, w: World, change: Callable[[dict], None], name: str = "bad.json") -> Path:
    doc = partition_doc(w)
    change(doc)
    return json_dump(d / name, doc)


def copy_model(d: Path, w: World, name: str = "model") -> Path:
    return Path(shutil.copytree(w.model, d / name))


def copy_adapter(d: Path, w: World, name: str = "adapter") -> Path:
    return Path(shutil.copytree(w.adapter, d / name))


def baseline_random(like: Path, out: Path) -> list[str]:
    return ["baseline", "--method", "random", "--like", str(like), "--out", str(out)]


def track(w: World, parts: Path, out: Path, *extra: str) -> list[str]:
    return [
        "track", str(w.model), "--adapter", str(w.adapter), "--partitions", str(parts),
        "--out", str(out), "--device", "cpu", *extra,
    ]  # fmt: skip


def parts_with(d: Path, w: World, bad: Callable[[dict], None] | None = None, **files: dict) -> Path:
    """A partitions folder with the two good layers, optionally one damaged, plus extra files."""
    folder = d / "parts"
    folder.mkdir()
    shutil.copy(w.part1, folder / "layer1.json")
    shutil.copy(w.part2, folder / "layer2.json")
    if bad is not None:
        doc = partition_doc(w, 2)
        bad(doc)
        json_dump(folder / "layer2.json", doc)
    for name, doc in files.items():
        json_dump(folder / name, doc)
    return folder


def run_cfg(d: Path, w: World, *extra: str, **changes) -> list[str]:
    return [
        "run",
        str(write_config(d / "cfg.yaml", w, **changes)),
        "--out",
        str(d / "out"),
        "--quiet",
        *extra,
    ]


def finetune(w: World, out: Path, *extra: str, model: str | None = None) -> list[str]:
    return ["finetune", model or str(w.model), "--task", "cqtr", "--data", "demo", "--out", str(out), *extra]


def tsv(d: Path, text: str | bytes, name: str = "pairs.tsv") -> Path:
    path = d / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


GOOD_ROW = "q1\tp1\twhat is a cat\ta cat sat on the mat\n"


# ================================================================ the cases named in issue 17

# --- output location checked only after the work


@case("collect-out-is-a-file", "--out", "is a file")
def _(d, w):
    (d / "f").write_text("x\n")
    return [
        "collect",
        "minilm",
        "--layers",
        "1",
        "--data",
        "demo",
        "--max-inputs",
        "32",
        "--out",
        str(d / "f"),
    ]


@case("solve-out-is-a-folder", "--out", "is a folder")
def _(d, w):
    (d / "existing").mkdir()
    return solve(w.phi, d / "existing")


@case("finetune-out-is-a-file", "--out", "is a file")
def _(d, w):
    (d / "f").write_text("x\n")
    return finetune(w, d / "f")


@case("run-out-is-a-file", "--out", "is a file")
def _(d, w):
    (d / "f").write_text("x\n")
    return ["run", str(write_config(d / "cfg.yaml", w)), "--out", str(d / "f")]


def _readonly(d: Path) -> Path:
    folder = d / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    return folder


@case("collect-out-unwritable", "--out", "not writable", needs_non_root=True)
def _(d, w):
    return collect(w, _readonly(d) / "phi")


@case("solve-out-unwritable", "--out", "not writable", needs_non_root=True)
def _(d, w):
    return solve(w.phi, _readonly(d) / "part.json")


@case("inspect-json-unwritable", "--json", "not writable", needs_non_root=True)
def _(d, w):
    return ["inspect", str(w.model), "--json", str(_readonly(d) / "info.json")]


@case("run-out-unwritable", "--out", "not writable", needs_non_root=True)
def _(d, w):
    return ["run", str(write_config(d / "cfg.yaml", w)), "--out", str(_readonly(d) / "run")]


# --- silent acceptance


@case("model-folder-without-tokenizer", "no tokenizer files")
def _(d, w):
    model = copy_model(d, w)
    for f in model.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")) or f.name in ("vocab.txt", "vocab.json"):
            f.unlink()
    return ["inspect", str(model)]


@case("finetune-model-without-tokenizer", "no tokenizer files")
def _(d, w):
    model = copy_model(d, w)
    (model / "tokenizer.json").unlink()
    return finetune(w, d / "ft", model=str(model))


@case("stop-after-misspelt", "--stop-after", "'phii'", "did you mean phi?")
def _(d, w):
    return run_cfg(d, w, "--stop-after", "phii")


@case("report-finished-with-stop-after", "--report-finished", "cannot be combined with --stop-after")
def _(d, w):
    return run_cfg(d, w, "--report-finished", "--stop-after", "phi")


@case("report-finished-nothing-finished", "nothing to report yet", "has finished its evaluation")
def _(d, w):
    return run_cfg(d, w, "--report-finished")


@case("phi-of-integers", "dtype I64", "floating-point")
def _(d, w):
    return solve(phi_file(d / "phi.safetensors", (sym() * 10).astype(np.int64)), d / "p.json")


@case("phi-of-booleans", "dtype BOOL", "floating-point")
def _(d, w):
    return solve(phi_file(d / "phi.safetensors", sym() > 0), d / "p.json")


# --- tracebacks


def _corrupt_adapter(d: Path, w: World) -> Path:
    adapter = copy_adapter(d, w)
    (adapter / "adapter_model.safetensors").write_bytes(b"\x00garbage" * 64)
    return adapter


def _truncated_adapter(d: Path, w: World) -> Path:
    adapter = copy_adapter(d, w)
    file = adapter / "adapter_model.safetensors"
    file.write_bytes(file.read_bytes()[:-100])
    return adapter


@case("inspect-corrupt-adapter", "adapter_model.safetensors is not readable")
def _(d, w):
    return ["inspect", str(w.model), "--adapter", str(_corrupt_adapter(d, w))]


@case("inspect-truncated-adapter", "adapter_model.safetensors is not readable", "not fully covered")
def _(d, w):
    return ["inspect", str(w.model), "--adapter", str(_truncated_adapter(d, w))]


@case("collect-corrupt-adapter", "adapter_model.safetensors is not readable")
def _(d, w):
    args = collect(w, d / "out")
    args[args.index("--adapter") + 1] = str(_corrupt_adapter(d, w))
    return args


@case("collect-truncated-adapter", "adapter_model.safetensors is not readable")
def _(d, w):
    args = collect(w, d / "out")
    args[args.index("--adapter") + 1] = str(_truncated_adapter(d, w))
    return args


@case("baseline-partition-without-coalitions", "bad.json", "missing field 'coalitions'")
def _(d, w):
    return baseline_random(bad_partition(d, w, lambda doc: doc.pop("coalitions")), d / "out.json")


@case("baseline-partition-without-n-neurons", "bad.json", "missing field 'n_neurons'")
def _(d, w):
    return baseline_random(bad_partition(d, w, lambda doc: doc.pop("n_neurons")), d / "out.json")


@case("baseline-partition-string-member", "bad.json", "field 'coalitions[0][1]'", "'one'")
def _(d, w):
    return baseline_random(
        bad_partition(d, w, lambda doc: doc["coalitions"][0].__setitem__(1, "one")), d / "o.json"
    )


@case("baseline-partition-not-utf8", "bad.json", "not UTF-8")
def _(d, w):
    (d / "bad.json").write_bytes(b'{"format": "\xff\xfe"}')
    return baseline_random(d / "bad.json", d / "out.json")


@case("track-partition-without-coalitions", "layer2.json", "missing field 'coalitions'")
def _(d, w):
    return track(w, parts_with(d, w, lambda doc: doc.pop("coalitions")), d / "out")


@case("track-partition-without-n-neurons", "layer2.json", "missing field 'n_neurons'")
def _(d, w):
    return track(w, parts_with(d, w, lambda doc: doc.pop("n_neurons")), d / "out")


@case("track-partition-string-member", "layer2.json", "field 'coalitions[2][0]'")
def _(d, w):
    return track(w, parts_with(d, w, lambda doc: doc["coalitions"][2].__setitem__(0, "8")), d / "out")


@case("track-partition-not-utf8", "layer2.json", "not UTF-8")
def _(d, w):
    parts = parts_with(d, w)
    (parts / "layer2.json").write_bytes(b"\xff\xfe\x00{")
    return track(w, parts, d / "out")


@case("collect-stale-list-sidecar", "phi_layer1.json", "not a phi sidecar")
def _(d, w):
    (d / "out").mkdir()
    shutil.copy(w.phi, d / "out" / "phi_layer1.safetensors")
    json_dump(d / "out" / "phi_layer1.json", [1, 2, 3])
    return collect(w, d / "out")


@case("collect-garbage-checkpoint", ".partial", "not a readable checkpoint")
def _(d, w):
    (d / "out" / ".partial").mkdir(parents=True)
    (d / "out" / ".partial" / "oca-layers1.rank0.safetensors").write_bytes(b"\x10\x00\x00\x00garbage")
    return collect(w, d / "out")


# --- unclear messages


@case("finetune-data-tsv", "--data", "a file", "named dataset")
def _(d, w):
    args = finetune(w, d / "ft")
    args[args.index("--data") + 1] = str(w.pairs)
    return args


@case("collect-unknown-dataset", "--data msmarco-train", "did you mean msmarco-dev?")
def _(d, w):
    return collect(w, d / "out", data="msmarco-train")


@case("collect-mean-pooling-one-input", "--max-inputs", "--pooling mean", "at least 2")
def _(d, w):
    return collect(w, d / "out", "--pooling", "mean", "--max-inputs", "1")


@case("usage-missing-option", "hedonic solve", "Missing option '--out'")
def _(d, w):
    return ["solve", str(w.phi)]


@case("usage-not-an-integer", "hedonic solve", "'--k'")
def _(d, w):
    return ["solve", str(w.phi), "--k", "two", "--out", str(d / "p.json")]


@case("usage-unknown-option", "hedonic collect", "No such option: --layer")
def _(d, w):
    return ["collect", str(w.model), "--layer", "1", "--out", str(d / "o")]


@case("usage-unknown-command", "No such command 'colect'")
def _(d, w):
    return ["colect", str(w.model)]


# --- two runs, one --out (a second run is refused while the first holds the folder)


@case("collect-folder-in-use", "in use by another run", "hedonic test-holder", hold="out")
def _(d, w):
    (d / "out").mkdir()
    return collect(w, d / "out")


@case("run-folder-in-use", "in use by another run", "pid ", hold="out")
def _(d, w):
    (d / "out").mkdir()
    return run_cfg(d, w)


@case("solve-file-in-use", "in use by another run", hold="p.json", hold_kind="file")
def _(d, w):
    return solve(w.phi, d / "p.json")


@case("lock-of-another-machine", "locked by a run on another machine", "elsewhere-host", ".hedonic.lock")
def _(d, w):
    (d / "out").mkdir()
    json_dump(d / "out" / ".hedonic.lock", {"pid": 1, "host": "elsewhere-host", "command": "hedonic collect"})
    return collect(w, d / "out")


# --- slow failures: now immediate


@case("collect-misspelt-model", "unknown model 'minilmm'", "did you mean minilm?")
def _(d, w):
    return collect(w, d / "out", model="minilmm")


@case("run-config-misspelt-model", "cfg.yaml", "'model'", "did you mean minilm?")
def _(d, w):
    return run_cfg(d, w, model="minilmm", adapter=None)


@case("hub-id-offline", "'someone/some-model'", "HF_HUB_OFFLINE")
def _(d, w):
    return ["inspect", "someone/some-model"]


@case(
    "hub-unreachable",
    "'someone/some-model'",
    "unreachable",
    env={"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"},
)
def _(d, w):
    return ["inspect", "someone/some-model"]


@case("inspect-layer-out-of-range", "--layers", "layer 7 is out of range", "3 layers")
def _(d, w):
    return ["inspect", str(w.model), "--layers", "7"]


@case("collect-layer-out-of-range", "--layers", "layer 5 is out of range")
def _(d, w):
    args = collect(w, d / "out")
    args[args.index("--layers") + 1] = "1,5"
    return args


@case("run-layer-out-of-range", "cfg.yaml", "layer 9 is out of range", "has 3 layers")
def _(d, w):
    return run_cfg(d, w, layers=[1, 9])


# ============================================================================== more cases

# --- malformed pairs TSV (hedonic collect --data)


@case("tsv-three-fields", "pairs.tsv:2", "4 tab-separated fields", "3 field(s)")
def _(d, w):
    return collect(w, d / "out", data=str(tsv(d, GOOD_ROW + "q2\tp2\tonly three\n")))


@case("tsv-empty-field", "pairs.tsv:1", "an empty field")
def _(d, w):
    return collect(w, d / "out", data=str(tsv(d, "q1\t\tquery\tpassage\n")))


@case("tsv-duplicate-pair", "pairs.tsv:2", "appears twice")
def _(d, w):
    return collect(w, d / "out", data=str(tsv(d, GOOD_ROW + GOOD_ROW)))


@case("tsv-not-utf8", "pairs.tsv", "not UTF-8")
def _(d, w):
    return collect(w, d / "out", data=str(tsv(d, b"q1\tp1\tcaf\xe9\tpassage\n")))


@case("tsv-gz-corrupt", "pairs.tsv.gz", "cannot read")
def _(d, w):
    data = gzip.compress((GOOD_ROW * 50).encode())
    return collect(w, d / "out", data=str(tsv(d, data[: len(data) // 2], "pairs.tsv.gz")))


@case("tsv-empty-file", "pairs.tsv", "file is empty")
def _(d, w):
    return collect(w, d / "out", data=str(tsv(d, "\n\n")))


@case("tsv-only-a-header", "pairs.tsv", "only a header row")
def _(d, w):
    return collect(w, d / "out", data=str(tsv(d, "qid\tpid\tquery\tpassage\n")))


@case("tsv-is-a-folder", "--data", "is a folder")
def _(d, w):
    (d / "data").mkdir()
    return collect(w, d / "out", data=str(d / "data"))


@case("tsv-missing", "--data", "no such file", "msmarco-dev")
def _(d, w):
    return collect(w, d / "out", data=str(d / "nowhere.tsv"))


@case("tsv-unreadable", "--data", "not readable", needs_non_root=True)
def _(d, w):
    path = tsv(d, GOOD_ROW)
    path.chmod(0o000)
    return collect(w, d / "out", data=str(path))


# --- malformed qrels and rerank files through a run config


def _rm_config(d: Path, w: World, qrels: str | bytes, *, rerank: str = GOOD_ROW * 1) -> list[str]:
    rows = "".join(f"q{i}\tp{i}\twhat is a cat\ta cat sat on the mat {i}\n" for i in range(12))
    tsv(d, rerank if rerank != GOOD_ROW else rows, "rerank.tsv")
    tsv(d, qrels, "qrels.txt")
    source = {"rerank": "rerank.tsv", "qrels": "qrels.txt"}
    return run_cfg(
        d, w, task="rm", data={"train": source, "test": source, "max_train_pairs": 10, "max_test_pairs": 10}
    )


@case("qrels-three-fields", "qrels.txt:1", "4 fields", "3 field(s)")
def _(d, w):
    return _rm_config(d, w, "q1 0 p1\n")


@case("qrels-grade-not-integer", "qrels.txt:2", "integer relevance grade", "'high'")
def _(d, w):
    return _rm_config(d, w, "q1 0 p1 1\nq2 0 p2 high\n")


@case("qrels-judged-twice", "qrels.txt:2", "judged twice")
def _(d, w):
    return _rm_config(d, w, "q1 0 p1 1\nq1 0 p1 0\n")


@case("qrels-empty", "qrels.txt", "file is empty")
def _(d, w):
    return _rm_config(d, w, "")


@case("rerank-malformed-in-config", "rerank.tsv:2", "4 tab-separated fields")
def _(d, w):
    return _rm_config(d, w, "q1 0 p1 1\n", rerank="q1\tp1\tquery\tpassage\nq2 p2 spaces not tabs\n")


# --- a config with every kind of mistake


@case("config-unknown-key", "cfg.yaml", "unknown key 'modle'")
def _(d, w):
    return run_cfg(d, w, modle="minilm")


@case("config-wrong-type", "cfg.yaml", "'max_length'", "'long'")
def _(d, w):
    return run_cfg(d, w, max_length="long")


@case("config-out-of-range-value", "cfg.yaml", "'phi.max_inputs'", "greater than or equal to 8")
def _(d, w):
    return run_cfg(d, w, phi={"metrics": ["oca"], "max_inputs": 0})


@case("config-layer-twice-after-normalising", "cfg.yaml", "'layers'", "given twice")
def _(d, w):
    return run_cfg(d, w, layers=[-1, 2])


@case("config-data-file-missing", "cfg.yaml", "data.train.rerank", "file not found")
def _(d, w):
    return run_cfg(d, w, data={"train": {"rerank": "nowhere.tsv"}})


@case("config-rm-without-qrels", "cfg.yaml", "task 'rm' needs data.train.qrels")
def _(d, w):
    tsv(d, GOOD_ROW, "rerank.tsv")
    return run_cfg(d, w, task="rm", data={"train": {"rerank": "rerank.tsv"}, "test": "demo"})


@case("config-adapter-missing", "cfg.yaml", "adapter", "file not found")
def _(d, w):
    return run_cfg(d, w, adapter="no-such-adapter")


@case("config-adapter-and-reference", "cfg.yaml", "either 'adapter' or 'reference'")
def _(d, w):
    return run_cfg(d, w, reference=str(w.model))


@case("config-unknown-baseline", "cfg.yaml", "'baselines.0'", "'kmean'")
def _(d, w):
    return run_cfg(d, w, baselines=["kmean"])


@case("config-unknown-metric", "cfg.yaml", "'phi.metrics.0'", "'ocaa'")
def _(d, w):
    return run_cfg(d, w, phi={"metrics": ["ocaa"]})


@case("config-too-few-seeds", "cfg.yaml", "'evaluate.seeds'", "at least 3")
def _(d, w):
    return run_cfg(d, w, evaluate={"seeds": [0, 1]})


@case("config-yaml-syntax", "cfg.yaml", "not valid YAML at line 3")
def _(d, w):
    (d / "cfg.yaml").write_text("name: x\nlayers: [1, 2\nmodel: y\n")
    return ["run", str(d / "cfg.yaml"), "--out", str(d / "out")]


@case("config-top-level-list", "cfg.yaml", "expected a mapping")
def _(d, w):
    (d / "cfg.yaml").write_text("- model\n- layers\n")
    return ["run", str(d / "cfg.yaml"), "--out", str(d / "out")]


@case("config-not-utf8", "cfg.yaml", "not UTF-8")
def _(d, w):
    (d / "cfg.yaml").write_bytes(b"name: caf\xe9\n")
    return ["run", str(d / "cfg.yaml"), "--out", str(d / "out")]


@case("config-is-a-folder", "cfg.yaml", "is a folder")
def _(d, w):
    (d / "cfg.yaml").mkdir()
    return ["run", str(d / "cfg.yaml"), "--out", str(d / "out")]


@case("config-missing", "nowhere.yaml", "config file not found")
def _(d, w):
    return ["run", str(d / "nowhere.yaml"), "--out", str(d / "out")]


@case("config-finetune-layers-out-of-range", "cfg.yaml", "'finetune.layers'", "layer 4 is out of range")
def _(d, w):
    return run_cfg(d, w, adapter=None, finetune={"layers": [1, 4]})


@case("config-foreign-data-without-adapter", "cfg.yaml", "fine-tunes only on the demo corpus")
def _(d, w):
    tsv(d, GOOD_ROW, "rerank.tsv")
    return run_cfg(d, w, adapter=None, data={"train": {"rerank": "rerank.tsv"}})


@case("config-hub-model-offline", "cfg.yaml", "'model'", "HF_HUB_OFFLINE")
def _(d, w):
    return run_cfg(d, w, model="someone/some-model", adapter=None)


# --- models and adapters


@case("wrong-architecture", "unknown architecture 't5'", "adapters.py")
def _(d, w):
    folder = copy_model(d, w)
    doc = json.loads((folder / "config.json").read_text())
    json_dump(folder / "config.json", {**doc, "model_type": "t5"})
    return ["inspect", str(folder)]


@case("model-without-config", "has no config.json")
def _(d, w):
    folder = copy_model(d, w)
    (folder / "config.json").unlink()
    return collect(w, d / "out", model=str(folder))


@case("model-config-not-json", "config.json is not readable JSON")
def _(d, w):
    folder = copy_model(d, w)
    (folder / "config.json").write_text("{model_type: llama")
    return ["inspect", str(folder)]


@case("model-without-weights", "has no weights", "model.safetensors")
def _(d, w):
    folder = copy_model(d, w)
    (folder / "model.safetensors").unlink()
    return ["inspect", str(folder)]


@case("model-weights-corrupt", "weights file", "model.safetensors", "not readable")
def _(d, w):
    folder = copy_model(d, w)
    (folder / "model.safetensors").write_bytes(b"\xff" * 64)
    return ["inspect", str(folder)]


@case("model-is-a-file", "MODEL", "is a file")
def _(d, w):
    (d / "model.bin").write_bytes(b"x")
    return ["inspect", str(d / "model.bin")]


@case("model-folder-missing", "model folder ./nope does not exist")
def _(d, w):
    return ["inspect", "./nope"]


@case("adapter-for-another-base", "adapter", "was made for", "(gpt2,", "but was given")
def _(d, w):
    return ["inspect", str(w.model), "--adapter", str(w.gpt2_adapter)]


@case("adapter-beyond-the-layers", "adapter", "layer 5", "another base model")
def _(d, w):
    adapter = copy_adapter(d, w)
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    save_file(
        {k.replace(".layers.2.", ".layers.5."): v for k, v in tensors.items()},
        str(adapter / "adapter_model.safetensors"),
    )
    doc = json.loads((adapter / "adapter_config.json").read_text())
    json_dump(adapter / "adapter_config.json", {**doc, "base_model_name_or_path": None})
    return ["inspect", str(w.model), "--adapter", str(adapter)]


@case("adapter-config-not-json", "adapter_config.json is not readable JSON")
def _(d, w):
    adapter = copy_adapter(d, w)
    (adapter / "adapter_config.json").write_text("{r: 4")
    return ["inspect", str(w.model), "--adapter", str(adapter)]


@case("adapter-not-lora", "is a PREFIX_TUNING adapter", "only LoRA")
def _(d, w):
    adapter = copy_adapter(d, w)
    doc = json.loads((adapter / "adapter_config.json").read_text())
    json_dump(adapter / "adapter_config.json", {**doc, "peft_type": "PREFIX_TUNING"})
    return ["inspect", str(w.model), "--adapter", str(adapter)]


@case("adapter-folder-missing", "adapter", "no-adapter", "no adapter_config.json")
def _(d, w):
    return ["inspect", str(w.model), "--adapter", str(d / "no-adapter")]


@case("adapter-without-weights", "no adapter_model.safetensors or adapter_model.bin")
def _(d, w):
    adapter = copy_adapter(d, w)
    (adapter / "adapter_model.safetensors").unlink()
    return ["inspect", str(w.model), "--adapter", str(adapter)]


@case("adapter-and-reference", "either --adapter", "not both")
def _(d, w):
    return ["inspect", str(w.model), "--adapter", str(w.adapter), "--reference", str(w.model)]


@case("reference-other-architecture", "reference", "is a gpt2 model", "same architecture")
def _(d, w):
    return ["inspect", str(w.model), "--reference", str(w.gpt2)]


@case("dtype-unknown", "--dtype", "'float8'")
def _(d, w):
    return ["inspect", str(w.model), "--dtype", "float8"]


@case("device-unknown", "--device", "'gpu'")
def _(d, w):
    return [*collect(w, d / "out")[:-1], "gpu"]


@case("head-unknown", "--head", "'regression'", "classification")
def _(d, w):
    return ["inspect", str(w.model), "--head", "regression"]


@case("inspect-json-is-a-folder", "--json", "is a folder")
def _(d, w):
    (d / "info").mkdir()
    return ["inspect", str(w.model), "--json", str(d / "info")]


# --- phi files (hedonic solve)


@case("phi-nan", "phi.safetensors", "non-finite")
def _(d, w):
    arr = sym()
    arr[1, 2] = arr[2, 1] = np.nan
    return solve(phi_file(d / "phi.safetensors", arr), d / "p.json")


@case("phi-inf", "phi.safetensors", "non-finite")
def _(d, w):
    arr = sym()
    arr[0, 3] = arr[3, 0] = np.inf
    return solve(phi_file(d / "phi.safetensors", arr), d / "p.json")


@case("phi-not-square", "phi.safetensors", "shape (3, 4)", "square")
def _(d, w):
    return solve(phi_file(d / "phi.safetensors", np.zeros((3, 4), np.float32)), d / "p.json")


@case("phi-one-dimensional", "phi.safetensors", "shape (5,)")
def _(d, w):
    return solve(phi_file(d / "phi.safetensors", np.zeros(5, np.float32)), d / "p.json")


@case("phi-asymmetric", "phi.safetensors", "not symmetric")
def _(d, w):
    arr = sym()
    arr[0, 1] += 1.0
    return solve(phi_file(d / "phi.safetensors", arr), d / "p.json")


@case("phi-wrong-tensor-name", "phi.safetensors", "no tensor named 'phi'", "'weights'")
def _(d, w):
    return solve(phi_file(d / "phi.safetensors", sym(), name="weights"), d / "p.json")


@case("phi-not-safetensors", "phi.safetensors", "not a readable safetensors file")
def _(d, w):
    (d / "phi.safetensors").write_text("phi = [[0, 1], [1, 0]]\n")
    return solve(d / "phi.safetensors", d / "p.json")


@case("phi-missing", "PHI", "file not found")
def _(d, w):
    return solve(d / "nowhere.safetensors", d / "p.json")


@case("solve-k-not-below-n", "--k 6", "1 <= k < n = 6")
def _(d, w):
    return solve(phi_file(d / "phi.safetensors", sym()), d / "p.json", "--k", "6")


@case("solve-k-zero", "--k 0", "1 <= k < n")
def _(d, w):
    return solve(w.phi, d / "p.json", "--k", "0")


@case("solve-no-certificate-samples", "certify_samples", ">= 1")
def _(d, w):
    return [*solve(w.phi, d / "p.json")[:-1], "0"]


@case("solve-out-under-a-file", "--out", "is a file, not a folder")
def _(d, w):
    (d / "f").write_text("x")
    return solve(w.phi, d / "f" / "p.json")


@case("solve-stale-list-sidecar", "phi.json", "not a phi sidecar")
def _(d, w):
    phi = phi_file(d / "phi.safetensors", sym())
    json_dump(d / "phi.json", ["stale"])
    return solve(phi, d / "p.json")


# --- baselines


@case("baseline-method-misspelt", "--method", "'kmean'", "did you mean kmeans?")
def _(d, w):
    return ["baseline", str(w.model), "--method", "kmean", "--layer", "1", "--out", str(d / "o.json")]


@case("baseline-random-without-like", "--method random needs --like")
def _(d, w):
    return ["baseline", "--method", "random", "--out", str(d / "o.json")]


@case("baseline-phi-communities-int-phi", "phi.safetensors", "dtype I32")
def _(d, w):
    phi = phi_file(d / "phi.safetensors", (sym() * 3).astype(np.int32))
    return ["baseline", "--method", "phi-communities", "--phi", str(phi), "--out", str(d / "o.json")]


@case("baseline-kmeans-without-layer", "--method kmeans needs MODEL and --layer")
def _(d, w):
    return ["baseline", str(w.model), "--method", "kmeans", "--out", str(d / "o.json")]


@case("baseline-kmeans-layer-out-of-range", "--layer", "layer 3 is out of range")
def _(d, w):
    return ["baseline", str(w.model), "--method", "kmeans", "--layer", "3", "--out", str(d / "o.json")]


@case("baseline-like-wrong-format", "bad.json", "not a partition file", "'something/else'")
def _(d, w):
    return baseline_random(
        bad_partition(d, w, lambda doc: doc.__setitem__("format", "something/else")), d / "o.json"
    )


@case("baseline-like-repeated-neuron", "bad.json", "'coalitions'", "repeats a neuron")
def _(d, w):
    return baseline_random(
        bad_partition(d, w, lambda doc: doc["coalitions"][1].__setitem__(0, 0)), d / "o.json"
    )


@case("baseline-like-neuron-out-of-range", "bad.json", "outside 0..23")
def _(d, w):
    return baseline_random(bad_partition(d, w, lambda doc: doc["coalitions"][0].append(99)), d / "o.json")


@case("baseline-like-labels-disagree", "bad.json", "field 'labels' disagrees", "neuron 0")
def _(d, w):
    return baseline_random(bad_partition(d, w, lambda doc: doc["labels"].__setitem__(0, 5)), d / "o.json")


@case("baseline-like-boolean-member", "bad.json", "field 'coalitions[0][0]'", "True")
def _(d, w):
    return baseline_random(
        bad_partition(d, w, lambda doc: doc["coalitions"][0].__setitem__(0, True)), d / "o.json"
    )


@case("baseline-like-a-json-list", "bad.json", "not a partition file", "list")
def _(d, w):
    return baseline_random(json_dump(d / "bad.json", [[0, 1], [2]]), d / "o.json")


# --- tracking


@case("track-partitions-missing", "--partitions", "folder not found")
def _(d, w):
    return track(w, d / "nowhere", d / "out")


@case("track-partitions-is-a-file", "--partitions", "is a file")
def _(d, w):
    shutil.copy(w.part1, d / "p.json")
    return track(w, d / "p.json", d / "out")


@case("track-partition-layer-out-of-range", "layer2.json", "field 'layer'", "layer 7 is out of range")
def _(d, w):
    return track(w, parts_with(d, w, lambda doc: doc.__setitem__("layer", 7)), d / "out")


@case("track-partition-neuron-count", "layer2.json", "10 neurons", "24 per layer")
def _(d, w):
    def ten(doc):
        doc["n_neurons"], doc["coalitions"], doc["labels"] = 10, [list(range(10))], [0] * 10

    return track(w, parts_with(d, w, ten), d / "out")


@case("track-no-layers-within-horizon", "--partitions", "no two layers within --horizon 1", "[0, 2]")
def _(d, w):
    parts = parts_with(d, w)
    doc = json.loads((parts / "layer2.json").read_text())
    json_dump(parts / "layer2.json", {**doc, "layer": 0})
    doc = json.loads((parts / "layer1.json").read_text())
    json_dump(parts / "layer1.json", {**doc, "layer": 2})
    return track(w, parts, d / "out", "--horizon", "1")


@case("track-duplicate-layer", "both partitions of layer 1")
def _(d, w):
    return track(w, parts_with(d, w, lambda doc: doc.__setitem__("layer", 1)), d / "out")


@case("track-names-the-bad-file-among-many", "layer2.json", "field 'coalitions'")
def _(d, w):
    others = {f"other{i}.json": {"note": "not a partition"} for i in range(3)}
    return track(w, parts_with(d, w, lambda doc: doc.__setitem__("coalitions", "0-23"), **others), d / "out")


@case("track-out-is-a-file", "--out", "is a file")
def _(d, w):
    (d / "out").write_text("x")
    return track(w, parts_with(d, w), d / "out")


@case("track-rule-unknown", "--rule", "'matchin'", "did you mean matching?")
def _(d, w):
    return track(w, parts_with(d, w), d / "out", "--rule", "matchin")


@case("track-tau-out-of-range", "--tau 2.0", "(0, 1]")
def _(d, w):
    return track(w, parts_with(d, w), d / "out", "--rule", "matching", "--tau", "2")


# --- fine-tuning


@case("finetune-task-misspelt", "--task", "'cqtrr'", "did you mean cqtr?")
def _(d, w):
    args = finetune(w, d / "ft")
    args[args.index("--task") + 1] = "cqtrr"
    return args


@case("finetune-unknown-dataset", "--data", "'msmarco'", "did you mean msmarco-dev?")
def _(d, w):
    args = finetune(w, d / "ft")
    args[args.index("--data") + 1] = "msmarco"
    return args


@case("finetune-research-data-absent", "shared IR data folder not found")
def _(d, w):
    args = finetune(w, d / "ft")
    args[args.index("--data") + 1] = "msmarco-dev"
    return args


@case("finetune-layers-out-of-range", "--layers", "layers 0..2", "[9]")
def _(d, w):
    return finetune(w, d / "ft", "--layers", "1,9")


@case("finetune-learning-rate-zero", "lr", "must be > 0")
def _(d, w):
    return finetune(w, d / "ft", "--lr", "0")


@case("finetune-misspelt-model", "unknown model 'minilmx'", "did you mean minilm?")
def _(d, w):
    return finetune(w, d / "ft", model="minilmx")


# --- more of collect


@case("collect-layers-not-integers", "--layers 'x'", "expected integers")
def _(d, w):
    args = collect(w, d / "out")
    args[args.index("--layers") + 1] = "x"
    return args


@case("collect-checkpoint-every-zero", "--checkpoint-every", "positive")
def _(d, w):
    return collect(w, d / "out", "--checkpoint-every", "0")


@case("collect-partial-is-a-file", ".partial", "is a file")
def _(d, w):
    (d / "out").mkdir()
    (d / "out" / ".partial").write_text("x")
    return collect(w, d / "out")


@case("collect-unknown-metric", "metric", "'pass'")
def _(d, w):
    return collect(w, d / "out", "--metric", "pass")


@case("collect-other-settings-in-folder", "phi_layer1.safetensors", "different settings")
def _(d, w):
    (d / "out").mkdir()
    shutil.copy(w.phi, d / "out" / "phi_layer1.safetensors")
    json_dump(d / "out" / "phi_layer1.json", {"key": "0123456789abcdef", "layer": 1})
    return collect(w, d / "out")


assert len({c.id for c in CASES}) == len(CASES), "case ids repeat"
