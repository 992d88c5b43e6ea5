"""``hedonic inspect``: the report on tiny checkpoints, MiniLM with a LoRA adapter, SmolLM2, and the
one-line errors (exit code 2, no traceback)."""

from __future__ import annotations

import json
import re

import pytest
import torch
import transformers as tf
from peft import LoraConfig, get_peft_model

from hedonic_neurons.cli import main
from hedonic_neurons.models import adapters, load_model
from test_loading import make_adapter, save_tiny, smollm2_cache, tiny_model, tiny_tokenizer

__all__ = ["smollm2_cache"]  # the session fixture, shared with test_loading


def run(argv: list[str]) -> int:
    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def assert_one_line_error(capsys, argv: list[str], pattern: str) -> str:
    capsys.readouterr()  # drop what the test's own setup printed
    code = run(argv)
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    assert re.search(pattern, err), err
    return err


def test_inspect_two_checkpoints_table_and_json(tmp_path, capsys):
    save_tiny(tmp_path / "ref", "gpt2")
    tuned = tiny_model("gpt2")
    with torch.no_grad():
        adapters.mlp_modules(tuned, 1).down.weight.mul_(2.0)  # down = 2 * reference: change = |W_down|
    tuned.save_pretrained(tmp_path / "ft")
    tiny_tokenizer("gpt2").save_pretrained(tmp_path / "ft")
    out = tmp_path / "inspect.json"
    argv = ["inspect", str(tmp_path / "ft"), "--reference", str(tmp_path / "ref"), "--layers", "0-1,-1"]
    assert run([*argv, "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert (
        "architecture   gpt2" in text and "layers         3" in text and "24 per layer (d_model 16)" in text
    )
    info = json.loads(out.read_text())
    assert info["provenance"]["command"] == "inspect" and info["reference"].endswith("ref")
    rows = info["weight_change"]
    assert [r["layer"] for r in rows] == [0, 1, 2]
    down = adapters.mlp_weights(tiny_model("gpt2"), 1).down.double()
    assert rows[1]["down"] == pytest.approx(float(torch.linalg.vector_norm(down)), rel=1e-9)
    assert rows[1]["up"] == 0.0 and rows[1]["gate"] is None and rows[0]["total"] == rows[2]["total"] == 0.0
    ref_total = torch.linalg.vector_norm(
        torch.cat([w.flatten() for w in (down, adapters.mlp_weights(tiny_model("gpt2"), 1).up.double())])
    )
    assert rows[1]["relative"] == pytest.approx(rows[1]["total"] / float(ref_total), rel=1e-9)
    table_row = next(line for line in text.splitlines() if line.split()[:1] == ["1"])
    assert f"{rows[1]['down']:.4g}" in table_row


def test_inspect_errors_are_one_line(tmp_path, capsys):
    tf.T5Config(vocab_size=32, d_model=8, d_ff=16, num_layers=1, num_heads=1, d_kv=4).save_pretrained(
        tmp_path / "t5"
    )
    assert_one_line_error(
        capsys,
        ["inspect", str(tmp_path / "t5")],
        r"unknown architecture 't5': add an ArchSpec .*adapters\.py",
    )
    llama = save_tiny(tmp_path / "llama", "llama")
    assert_one_line_error(
        capsys,
        ["inspect", str(llama), "--layers", "7"],
        r"layer 7 is out of range: this model has 3 layers \(0\.\.2\)",
    )
    assert_one_line_error(
        capsys, ["inspect", str(llama), "--layers", "one"], r"--layers 'one': expected comma-separated"
    )
    gpt2 = save_tiny(tmp_path / "gpt2", "gpt2")
    make_adapter(llama, tmp_path / "ad", "llama")
    assert_one_line_error(
        capsys,
        ["inspect", str(gpt2), "--adapter", str(tmp_path / "ad")],
        r"adapter .*ad was made for .*llama \(llama, .*but was given .*gpt2 \(gpt2, ",
    )
    assert_one_line_error(
        capsys, ["inspect", str(tmp_path / "missing")], r"model folder .*missing does not exist"
    )


@pytest.mark.slow
def test_inspect_minilm_with_lora(tmp_path, capsys):
    base = load_model("minilm").model  # a fresh copy: peft wraps it in place
    adapted = [1, 4]
    config = LoraConfig(
        r=8,
        lora_alpha=16,
        target_modules=list(adapters.mlp_module_names(base, adapted)),
        modules_to_save=["classifier"],
        init_lora_weights=False,
    )
    torch.manual_seed(0)
    get_peft_model(base, config).save_pretrained(tmp_path / "ad", save_embedding_layers=False)
    recorded = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert recorded == "minilm"
    out = tmp_path / "inspect.json"
    assert run(["inspect", "minilm", "--adapter", str(tmp_path / "ad"), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "layers         6" in text and "1,536 per layer (d_model 384)" in text
    assert "rank 8, alpha 16; MLP layers adapted: 1, 4" in text
    info = json.loads(out.read_text())
    assert (info["n_layers"], info["n_neurons"], info["family"]) == (6, 1536, "bert")
    assert info["lora"]["layers"] == adapted and info["lora"]["head_from_adapter"]
    assert [row["layer"] for row in info["weight_change"] if row["total"] > 0] == adapted
    assert all(row["up"] > 0 and row["down"] > 0 for row in info["weight_change"] if row["layer"] in adapted)
    # an adapter made for another model is refused on MiniLM
    save_tiny(tmp_path / "llama", "llama")
    make_adapter(tmp_path / "llama", tmp_path / "ad_llama", "llama")
    assert_one_line_error(
        capsys,
        ["inspect", "minilm", "--adapter", str(tmp_path / "ad_llama")],
        r"was made for .*llama \(llama, 3 layers.*but was given minilm \(bert, 6 layers, d_model 384, 1536",
    )


@pytest.mark.slow
def test_inspect_smollm2(smollm2_cache, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HEDONIC_CACHE_DIR", str(smollm2_cache))
    out = tmp_path / "inspect.json"
    assert run(["inspect", "smollm2", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert (
        "architecture   llama" in text
        and "layers         30" in text
        and "1,536 per layer (d_model 576)" in text
    )
    info = json.loads(out.read_text())
    assert (info["n_layers"], info["n_neurons"], info["model"]) == (30, 1536, "smollm2")
    assert info["weight_change"] is None and info["input_format"]["append_eos"]
