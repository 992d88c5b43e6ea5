"""φ of a real model: MiniLM with a small random LoRA adapter, through ``hedonic collect`` (slow)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from hedonic_neurons.artifacts import load_phi
from hedonic_neurons.cli import main
from hedonic_neurons.synergy.collect import phi_path

LAYER = 3


@pytest.fixture(scope="module")
def minilm_adapter(tmp_path_factory):
    """A rank-4 LoRA adapter on MiniLM's MLP at LAYER with small random B (a stand-in fine-tune)."""
    from peft import LoraConfig, get_peft_model

    from hedonic_neurons.models import load_model
    from hedonic_neurons.models.adapters import mlp_module_names

    try:
        nm = load_model("minilm", device="cpu")
    except Exception as exc:  # the optional model package is not installed
        pytest.skip(f"MiniLM not available: {exc}")
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=list(mlp_module_names(nm.model, [LAYER])), init_lora_weights=False
    )
    torch.manual_seed(0)
    peft_model = get_peft_model(nm.model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.mul_(0.05)
    peft_model.peft_config["default"].base_model_name_or_path = "minilm"
    folder = tmp_path_factory.mktemp("minilm") / "adapter"
    peft_model.save_pretrained(folder, save_embedding_layers=False)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize(("metric", "inputs"), [("pas", 1), ("oca", 4)])
def test_minilm_phi_is_a_valid_nonzero_matrix(minilm_adapter, tmp_path, metric, inputs):
    try:
        main(
            [
                "collect",
                "minilm",
                "--adapter",
                str(minilm_adapter),
                "--layers",
                str(LAYER),
                "--metric",
                metric,
                "--data",
                "demo",
                "--max-inputs",
                str(inputs),
                "--out",
                str(tmp_path),
                "--no-progress",
                "--device",
                "cpu",
            ]
        )
    except SystemExit as exc:
        assert exc.code in (0, None)
    path = phi_path(tmp_path, LAYER)
    phi = load_phi(path)  # validated: square, finite, symmetric
    assert phi.shape == (1536, 1536)
    raw = load_file(str(path))["phi"]
    assert raw.dtype == np.float32 and np.array_equal(raw, raw.T) and np.all(np.diagonal(raw) == 0)
    assert np.isfinite(raw).all() and np.abs(raw).max() > 0
    meta = json.loads(path.with_suffix(".json").read_text())
    summary = meta["summary"]
    assert summary["finite"] and summary["symmetric"] and summary["zero_diagonal"] and not summary["all_zero"]
    assert meta["n_inputs"] == inputs
    if metric == "pas":
        assert meta["head"] == "tanh"
    else:
        assert np.abs(raw).max() <= 1.0
