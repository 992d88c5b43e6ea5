"""The README's Python blocks run as written, and do what the README says they do.

Every block marked ``<!-- tested: NAME -->`` in README.md is executed verbatim (``exec`` in a fresh
namespace, in a temporary working directory). The quickstart runs twice: as written (a tiny GPT-2
with LoRA) and with its ``config`` / ``lora`` assignments replaced by the README's ``gated`` block
(a tiny Qwen2 with LoRA). Its φ must equal what ``hedonic collect`` writes for the same model saved
to disk, its ablated output must differ from the plain one and equal ``hn.ablation_logits``, and
no hook may be left on the model. The extension recipes run on the quickstart's namespace, each
removed from its registry afterwards; each is checked against a brute-force reference.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as tf

import hedonic_neurons as hn
from hedonic_neurons.artifacts import load_phi, save_phi
from hedonic_neurons.cli import main
from hedonic_neurons.errors import HedonicError
from hedonic_neurons.neurons import record
from synergy_helpers import one_thread

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"<!-- tested: ([\w-]+) -->\n```python\n(.*?)```", re.S)
TESTED = {
    "quickstart",
    "gated",
    "minilm",
    "cli-files",
    "metric",
    "partitioner",
    "evaluation",
    "tracking-rule",
    "architecture",
}


def blocks() -> dict[str, str]:
    found: dict[str, str] = {}
    for name, code in BLOCK.findall(README.read_text(encoding="utf-8")):
        assert name not in found, f"two README blocks are marked {name!r}"
        found[name] = code
    return found


@contextlib.contextmanager
def working_dir(path: Path) -> Iterator[None]:
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def run_block(name: str, namespace: dict | None = None, code: str | None = None) -> dict:
    ns = {"__name__": f"readme_{name.replace('-', '_')}", **(namespace or {})}
    exec(compile(code if code is not None else blocks()[name], f"README.md:{name}", "exec"), ns)
    return ns


def swap_assignments(code: str, swap: str) -> str:
    """``code`` with each top-level assignment to a name that ``swap`` assigns replaced by
    ``swap``'s statement."""
    new = {}
    for node in ast.parse(swap).body:
        assert isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
        new[node.targets[0].id] = ast.get_source_segment(swap, node)
    lines = code.splitlines(keepends=True)
    hits = [
        node
        for node in ast.parse(code).body
        if isinstance(node, ast.Assign)
        and isinstance(node.targets[0], ast.Name)
        and node.targets[0].id in new
    ]
    assert sorted(n.targets[0].id for n in hits) == sorted(new)  # each swapped name assigned once
    for node in sorted(hits, key=lambda n: -n.lineno):
        lines[node.lineno - 1 : node.end_lineno] = [new[node.targets[0].id] + "\n"]
    return "".join(lines)


def cli(*argv: str) -> None:
    try:
        main([*argv])
    except SystemExit as exc:
        assert exc.code in (0, None), f"hedonic {' '.join(argv)} exited {exc.code}"


def saved_tokenizer(tokenizer):
    """A stand-in for ``AutoTokenizer.from_pretrained`` that returns (a copy of) the tokenizer the
    model was saved with. transformers 5 loads a word-level tokenizer saved next to a Qwen2 config
    as ``Qwen2Tokenizer`` (a byte-level BPE rebuilt from the vocabulary), which would give the
    command line other token ids than the quickstart's tokenizer; real Qwen2 checkpoints ship a
    Qwen2 tokenizer."""
    return lambda *args, **kwargs: copy.deepcopy(tokenizer)


def no_hooks(model: torch.nn.Module) -> bool:
    return not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in model.modules())


@pytest.fixture(scope="module")
def quickstarts(tmp_path_factory) -> dict[str, dict]:
    """The quickstart's namespace per family, each run in its own folder."""
    found = blocks()
    out = {}
    with one_thread():
        for family, code in (
            ("gpt2", found["quickstart"]),
            ("qwen2", swap_assignments(found["quickstart"], found["gated"])),
        ):
            folder = tmp_path_factory.mktemp(f"quickstart-{family}")
            with working_dir(folder):
                ns = run_block("quickstart", code=code)
            ns["folder"] = folder
            out[family] = ns
    return out


@pytest.fixture(scope="module")
def on_disk(quickstarts, tmp_path_factory) -> dict[str, dict]:
    """Per family: the quickstart's base model and LoRA adapter saved to disk, a pairs TSV, and
    ``hedonic collect`` (OCA on layers 1 and 2, PAS taylor on layer 1) run on them."""
    out = {}
    with one_thread():
        for family, ns in quickstarts.items():
            root = tmp_path_factory.mktemp(f"disk-{family}")
            peft_model = ns["peft_model"]
            peft_model.save_pretrained(root / "adapter")
            copy.deepcopy(peft_model).unload().save_pretrained(root / "base")
            ns["tokenizer"].save_pretrained(root / "base")
            data = root / "pairs.tsv"
            data.write_text("".join(f"q{i}\tp{i}\t{q}\t{p}\n" for i, (q, p) in enumerate(ns["pairs"])))
            common = ["--adapter", str(root / "adapter"), "--data", str(data), "--no-progress"]
            with pytest.MonkeyPatch.context() as mp:
                if family == "qwen2":
                    mp.setattr(tf.AutoTokenizer, "from_pretrained", saved_tokenizer(ns["tokenizer"]))
                cli("collect", str(root / "base"), *common, "--layers", "1,2", "--metric", "oca",
                    "--out", str(root / "runs" / "phi-oca"), "--device", "cpu")  # fmt: skip
                cli("collect", str(root / "base"), *common, "--layers", "1", "--metric", "pas", "--mode",
                    "taylor", "--out", str(root / "runs" / "phi-pas"), "--device", "cpu")  # fmt: skip
            out[family] = {"root": root, "data": data}
    return out


def test_the_readme_marks_every_tested_block():
    assert set(blocks()) == TESTED


@pytest.mark.parametrize("family", ["gpt2", "qwen2"])
def test_quickstart_phi_equals_hedonic_collect_on_the_same_model_on_disk(quickstarts, on_disk, family):
    ns, root = quickstarts[family], on_disk[family]["root"]
    assert type(ns["nm"].model).__name__ == {"gpt2": "GPT2", "qwen2": "Qwen2"}[family] + (
        "ForSequenceClassification"
    )
    layer = ns["layer"]
    cli_oca = load_phi(root / "runs" / "phi-oca" / f"phi_layer{layer}.safetensors")
    assert ns["phi"].shape == (48, 48) and np.abs(ns["phi"]).max() > 0.1  # not a degenerate φ
    np.testing.assert_allclose(ns["phi"], cli_oca, atol=1e-6, rtol=0)
    cli_pas = load_phi(root / "runs" / "phi-pas" / f"phi_layer{layer}.safetensors")
    assert np.abs(ns["phi_pas"]).max() > 0
    np.testing.assert_allclose(ns["phi_pas"], cli_pas, atol=1e-6, rtol=1e-5)
    # the partition is Top Covering's on that φ
    part = ns["part"]
    assert isinstance(part, hn.Partition) and part.n_neurons == 48
    assert part.coalitions == hn.TopCover(k=2).fit(cli_oca).partition_.coalitions
    assert part.params["solver"] == "exact" and len(part[0]) >= 2


@pytest.mark.parametrize("family", ["gpt2", "qwen2"])
def test_quickstart_ablation_changes_the_output_as_ablation_logits_says(quickstarts, family):
    ns = quickstarts[family]
    nm, batch, layer, part = ns["nm"], ns["batch"], ns["layer"], ns["part"]
    plain, ablated = ns["plain"], ns["ablated"]
    assert (ablated - plain).abs().max() > 1e-4  # the coalition matters
    want = hn.ablation_logits(nm, batch, layer, [part[0]])[0]
    torch.testing.assert_close(ablated, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(plain, hn.ablation_logits(nm, batch, layer, [[]])[0], atol=1e-5, rtol=1e-5)
    # after the block nothing is left on the model (nor on the user's peft object)
    assert no_hooks(nm.model) and no_hooks(ns["peft_model"])
    torch.testing.assert_close(nm.model(**batch).logits[:, 0], plain)
    # LoRA on every layer's MLP, and the base weights kept as the reference
    assert nm.has_reference and nm.lora["layers"] == [0, 1, 2]
    assert (ns["folder"] / "phi_heatmap.png").stat().st_size > 1000


def test_cli_files_block_reads_what_hedonic_solve_wrote(on_disk, tmp_path):
    root = on_disk["gpt2"]["root"]
    with working_dir(root), one_thread():
        cli("solve", "runs/phi-oca/phi_layer2.safetensors", "--exact", "--certify-samples", "2000",
            "--out", "runs/part/hedonic-l2.json")  # fmt: skip
        ns = run_block("cli-files")
    phi, se = load_phi(root / "runs" / "phi-oca" / "phi_layer2.safetensors", with_se=True)
    np.testing.assert_array_equal(ns["phi"], phi)
    assert ns["se"].shape == phi.shape and (ns["se"][~np.eye(48, dtype=bool)] > 0).all()
    part = ns["part"]
    assert part.params["solver"] == "exact" and part.layer == 2
    assert part.coalitions == hn.TopCover(k=2).fit(phi).partition_.coalitions
    assert ns["robust"].coalitions == hn.TopCover(k=2, min_z=6).fit(phi, se).partition_.coalitions
    doc = json.loads((root / "runs" / "part" / "hedonic-l2.json").read_text())
    assert doc["phi_metadata"]["settings"]["metric"] == "oca"


def test_a_solved_partition_is_named_after_its_metric(on_disk):
    root = on_disk["gpt2"]["root"]
    out = root / "runs" / "part" / "named.json"
    with one_thread():
        cli("solve", str(root / "runs" / "phi-oca" / "phi_layer2.safetensors"), "--exact",
            "--certify-samples", "200", "--out", str(out))  # fmt: skip
    assert hn.Partition.load(out).method == "hedonic-oca"


@pytest.mark.slow
def test_minilm_block(quickstarts):
    pairs = quickstarts["gpt2"]["pairs"]
    with one_thread():
        ns = run_block("minilm", {"hn": hn, "pairs": pairs})
        nm, phi, part = ns["nm"], ns["phi"], ns["part"]
        assert nm.spec.family == "bert" and nm.n_neurons == 1536 and phi.shape == (1536, 1536)
        np.testing.assert_allclose(phi, hn.oca(nm, pairs, 3), atol=1e-6, rtol=0)
    assert np.abs(phi).max() <= 1 and np.allclose(phi, phi.T) and not phi.diagonal().any()
    assert part.n_neurons == 1536 and 1 < len(part) < 1536
    assert part.coalitions == hn.TopCover(k=2).fit(phi).partition_.coalitions


# ----------------------------------------------------------------------------- extension recipes


def recipe(quickstarts, name: str) -> dict:
    ns = quickstarts["gpt2"]
    keep = ("nm", "pairs", "layer", "phi", "tokenizer", "hn")
    with one_thread():
        return run_block(name, {k: ns[k] for k in keep})


def test_synergy_metric_recipe(quickstarts, tmp_path, on_disk):
    from hedonic_neurons.synergy import METRICS

    ns = quickstarts["gpt2"]
    nm, pairs, layer = ns["nm"], ns["pairs"], ns["layer"]
    try:
        out = recipe(quickstarts, "metric")
        assert METRICS.get("coactivation") is out["CoActivation"]
        # brute force: every non-pad token's activations in one batch
        with record(nm.model, [layer], moments=False, keep=True) as rec:
            rec(nm.encode([q for q, _ in pairs], [p for _, p in pairs]))
        a = rec.take(layer).double()
        want = (a.T @ a / a.shape[0]).numpy()
        np.fill_diagonal(want, 0.0)
        assert a.shape[0] == int(ns["batch"]["attention_mask"].sum()) and np.abs(want).max() > 0.01
        np.testing.assert_allclose(out["phi_co"], want, atol=1e-6, rtol=1e-6)
        # and through hedonic collect (two layers in one pass, batches of 3 pairs)
        root = on_disk["gpt2"]["root"]
        with one_thread():
            cli("collect", str(root / "base"), "--adapter", str(root / "adapter"), "--data",
                str(on_disk["gpt2"]["data"]), "--layers", "1,2", "--metric", "coactivation", "--batch-size",
                "3", "--out", str(tmp_path), "--no-progress", "--device", "cpu")  # fmt: skip
        np.testing.assert_allclose(load_phi(tmp_path / f"phi_layer{layer}.safetensors"), want, atol=1e-6)
        sidecar = json.loads((tmp_path / f"phi_layer{layer}.json").read_text())
        assert sidecar["n_tokens"] == a.shape[0] and sidecar["settings"]["metric"] == "coactivation"
    finally:
        METRICS.remove("coactivation")
    assert "coactivation" not in METRICS


def components_by_hand(phi: np.ndarray, threshold: float) -> list[list[int]]:
    n, seen, out = len(phi), set(), []
    for start in range(n):
        if start in seen:
            continue
        stack, comp = [start], []
        seen.add(start)
        while stack:
            i = stack.pop()
            comp.append(i)
            for j in range(n):
                if j not in seen and (phi[i, j] > threshold or phi[j, i] > threshold):
                    seen.add(j)
                    stack.append(j)
        out.append(sorted(comp))
    return sorted(out, key=lambda c: (-len(c), c[0]))


def test_partitioner_recipe(quickstarts, tmp_path):
    from hedonic_neurons.partitioner import PARTITIONERS, baseline_names

    phi = quickstarts["gpt2"]["phi"]
    want = components_by_hand(phi, 0.5)
    assert 1 < len(want) < 48 and len(want[0]) >= 2  # a non-trivial case
    try:
        out = recipe(quickstarts, "partitioner")
        assert "phi-components" in baseline_names() and "phi-components" in hn.partition.PARTITIONERS
        assert out["components"].coalitions == want and out["components"].method == "phi-components"
        assert out["components"].params == {"threshold": 0.5}
        for seed in (0, 1):
            got = out["by_seed"][("phi-components", seed)]
            assert got.coalitions == want and got.method == "phi-components"
        # and through hedonic baseline, reading φ from a file
        save_phi(tmp_path / "phi_layer1.safetensors", phi, {"layer": 1, "settings": {"metric": "oca"}})
        cli("baseline", "--method", "phi-components", "--phi", str(tmp_path / "phi_layer1.safetensors"),
            "--out", str(tmp_path / "part.json"))  # fmt: skip
        assert hn.Partition.load(tmp_path / "part.json").coalitions == want
    finally:
        PARTITIONERS.remove("phi-components")
    assert "phi-components" not in PARTITIONERS


def test_evaluation_recipe(quickstarts):
    from pydantic import ValidationError

    from hedonic_neurons.config import EvaluateConfig
    from hedonic_neurons.data.loaders import Pair
    from hedonic_neurons.evaluate.base import EVALUATIONS
    from hedonic_neurons.evaluate.layer import evaluate_layer

    ns = quickstarts["gpt2"]
    nm, phi, layer, part = ns["nm"], ns["phi"], ns["layer"], ns["part"]
    test = [Pair(f"q{i // 2}", f"p{i}", q, p) for i, (q, p) in enumerate(ns["pairs"])]
    rng = np.random.default_rng(0)
    cuts = np.cumsum(part.sizes)[:-1]  # a random partition with the hedonic one's sizes, per seed
    partitions = {
        seed: {
            "hedonic-oca": part.coalitions,
            "random": [sorted(c.tolist()) for c in np.split(rng.permutation(48), cuts)],
        }
        for seed in (0, 1)
    }
    try:
        recipe(quickstarts, "evaluation")
        cfg = EvaluateConfig(evaluations=["internal-phi"], selection="largest", size_band=(2, 64), top_k=3,
                             attribution=False, null_pairs=8, synergy_pairs=4, bootstrap=100)  # fmt: skip
        with one_thread():
            rows, ctx = evaluate_layer(
                nm, layer, partitions, reference_method="hedonic-oca", config=cfg, task="cqtr", test=test,
                y_test=rng.normal(size=len(test)), phi=phi, reference=nm.reference_mlp_weights(layer),
            )  # fmt: skip
        got = {r["method"]: r for r in rows["internal-phi"]}
        assert set(got) == {"hedonic-oca", "random"}
        for method, row in got.items():
            chosen = [c for s in (0, 1) for c in ctx.chosen[(s, method)]]
            assert row["coalitions"] == len(chosen) == 2 * 3
            by_hand = [np.mean([phi[i, j] for i in c for j in c if i != j]) for c in chosen]
            assert row["mean_phi"] == pytest.approx(np.mean(by_hand), abs=1e-6)
    finally:
        EVALUATIONS.remove("internal-phi")
    with pytest.raises(ValidationError, match="unknown evaluation 'internal-phi'"):
        EvaluateConfig(evaluations=["internal-phi"])


def test_tracking_rule_recipe(quickstarts):
    from hedonic_neurons.tracking import TRACKING_RULES

    try:
        out = recipe(quickstarts, "tracking-rule")
        result = out["transition"]
        mass = np.asarray(result.mass)
        by_hand = [
            (i, j)
            for i in range(mass.shape[0])
            for j in range(mass.shape[1])
            if mass[i, j] > 0 and mass[i, j] == mass[i].max() == mass[:, j].max()
        ]
        assert result.rule == "reciprocal" and mass.shape[0] >= 2 and by_hand
        assert [(i, j) for i, j, _ in result.matches] == by_hand
        assert (result.source_layer, result.target_layer) == (0, 1)
    finally:
        TRACKING_RULES.remove("reciprocal")
    assert "reciprocal" not in TRACKING_RULES


def test_architecture_recipe(quickstarts):
    from hedonic_neurons.models import adapters

    ns = quickstarts["gpt2"]
    tokenizer, pairs = ns["tokenizer"], ns["pairs"]
    torch.manual_seed(0)
    cfg = tf.Qwen3Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16, num_labels=1,
                         pad_token_id=0)  # fmt: skip
    model = tf.AutoModelForSequenceClassification.from_config(cfg).eval()
    with torch.no_grad():  # larger weights than the initialiser's, so that φ is far from zero
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(1.6 * torch.randn(p.shape) / p.shape[1] ** 0.5)
    with pytest.raises(HedonicError, match="unknown architecture 'qwen3'"):
        adapters.get_spec(model)
    try:
        out = recipe(quickstarts, "architecture")
        assert adapters.get_spec(model) is out["qwen3"] and "qwen3" in adapters.supported_model_types()
        nm = hn.NeuronModel.from_hf(model, tokenizer)
        mlp = model.model.layers[1].mlp
        w = nm.mlp_weights(1)
        assert torch.equal(w.up, mlp.up_proj.weight) and torch.equal(w.gate, mlp.gate_proj.weight)
        assert torch.equal(w.down, mlp.down_proj.weight)
        # zero-ablating every neuron of layer 1 = the model with that MLP's output removed
        batch = nm.encode([q for q, _ in pairs], [p for _, p in pairs])
        got = hn.ablation_logits(nm, batch, 1, [list(range(48))], mode="zero")[0]
        cut = copy.deepcopy(model)
        with torch.no_grad():
            cut.model.layers[1].mlp.down_proj.weight.zero_()
            want = cut(**batch).logits[:, 0]
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        assert (got - model(**batch).logits[:, 0]).abs().max() > 1e-3
        assert np.isfinite(hn.oca(nm, pairs, 1)).all()
        # PAS through the registered paths (the local head reads the final norm) = its definition
        phi = hn.pas(nm, pairs, 1, mode="exact", ablation="zero")
        strongest = np.argsort(-np.abs(phi), axis=None)[:6:2]  # three pairs (each is there twice)
        assert np.abs(phi).max() > 1e-3
        for i, j in zip(*np.unravel_index(strongest, phi.shape)):
            full, no_i, no_j, no_ij = hn.ablation_logits(
                nm, batch, 1, [[], [i], [j], [i, j]], mode="zero", readout="local"
            ).double()
            want_ij = float((full - no_i - no_j + no_ij).mean())
            assert phi[i, j] == pytest.approx(want_ij, rel=1e-3, abs=1e-6)
    finally:
        adapters.ARCHITECTURES.remove("qwen3")
    with pytest.raises(HedonicError, match="unknown architecture 'qwen3'"):
        adapters.get_spec(model)
