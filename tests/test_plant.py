"""Planted coalitions (``hedonic plant``): a model with a known answer, checked end to end.

Tier 1, a tiny random LLaMA (seconds): the planted checkpoint differs from the original only in
the planted neurons and the readers; Δ measured by brute-force weight surgery (not by the
library's ablation) is > 0 within AND groups and < 0 within OR groups; ``hedonic collect
--reference ORIGINAL --readout full`` gives the same signs and exactly zero φ off the planted
neurons; bad input is one line and exit code 2.

Tier 2, MiniLM (slow marker): PAS with the full readout on planted AND groups at layer 3
recovers them with exact Top Covering at the default k = 2 (ARI >= 0.9 on the planted neurons).
"""

from __future__ import annotations

import json
import random
import re

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from sklearn.metrics import adjusted_rand_score

from hedonic_neurons.artifacts import load_phi
from hedonic_neurons.cli import main
from hedonic_neurons.data import load_pairs
from hedonic_neurons.game import TopCover
from hedonic_neurons.models import load_model
from hedonic_neurons.models.adapters import mlp_modules
from hedonic_neurons.models.plant import PLANT_FORMAT, load_ground_truth, pair_deltas, plant
from hedonic_neurons.synergy.collect import phi_path
from synergy_helpers import one_thread, reverted
from test_loading import save_tiny

LAYER = 1


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def tiny_planted(tmp_path_factory):
    """A tiny random LLaMA (3 layers, d = 48, 64 neurons) with two AND groups (one co-active, one
    of independent members) and one OR group planted at layer 1."""
    root = tmp_path_factory.mktemp("plant")
    original = save_tiny(root / "original", "llama", layers=3, d=48, n=64)
    data = "demo"  # the built-in corpus; most of its words are unknown to the tiny tokenizer
    with one_thread():
        result = plant(
            original,
            root / "out",
            layer=LAYER,
            and_sizes=[3, 4],
            or_sizes=[3],
            calibration=256,
            verify=32,
            data=data,
        )
    return original, data, result


def _held_out(data, n=32):
    """Inputs planting did not see: it shuffles with its seed (0) and uses the first 256 + 32."""
    pairs = load_pairs(data)
    random.Random(0).shuffle(pairs)
    return pairs[288 : 288 + n]


def _surgery_delta(planted_model, original_model, batch, i, j) -> float:
    """E_x[ℓ − ℓ_{−i} − ℓ_{−j} + ℓ_{−ij}] with each ablation done by copying the original's
    weights into the planted model (no hooks)."""

    def logits(neurons) -> torch.Tensor:
        with reverted(planted_model, original_model, LAYER, neurons), torch.no_grad():
            return planted_model(**batch).logits[:, 0].double()

    return float((logits([]) - logits([i]) - logits([j]) + logits([i, j])).mean())


def test_ground_truth_file_describes_the_groups(tiny_planted):
    original, _, result = tiny_planted
    truth = load_ground_truth(result.ground_truth_path.parent)
    assert truth["format"] == PLANT_FORMAT
    assert truth["layer"] == LAYER and truth["reader_layer"] == LAYER + 1
    assert truth["reference"] == str(original.resolve())
    kinds = [(g["kind"], g["size"], g["coactive"]) for g in truth["groups"]]
    assert sorted(kinds) == sorted([("and", 3, kinds[0][2]), ("and", 4, not kinds[0][2]), ("or", 3, True)])
    members = [i for g in truth["groups"] for i in g["members"]]
    assert len(members) == len(set(members)) == 10
    assert truth["changed"] == {
        str(LAYER): sorted(members),
        str(LAYER + 1): sorted(g["reader"] for g in truth["groups"]),
    }
    assert f"--reference {original.resolve()}" in truth["collect"]
    for g in truth["groups"]:  # the construction's own check on held-out inputs
        assert g["verified"]["fraction_expected_sign"] == 1.0, g


def test_checkpoint_differs_only_in_planted_rows_and_columns(tiny_planted):
    original, _, result = tiny_planted
    truth = result.ground_truth
    before = load_file(str(original / "model.safetensors"))
    after = load_file(str(result.model_dir / "model.safetensors"))
    assert set(before) == set(after)
    changed = {
        LAYER: np.array(truth["changed"][str(LAYER)]),
        LAYER + 1: np.array(truth["changed"][str(LAYER + 1)]),
    }
    seen = set()
    for key in before:
        a, b = before[key], after[key]
        layer = next((lay for lay in changed if f"layers.{lay}.mlp." in key), None)
        if layer is None:
            assert np.array_equal(a, b), key
            continue
        idx = changed[layer]
        keep = np.ones(a.shape[0] if "down_proj" not in key else a.shape[1], dtype=bool)
        keep[idx] = False
        if "down_proj" in key:  # (d, n): the neurons are columns
            assert np.array_equal(a[:, keep], b[:, keep]), key
            assert np.all(np.any(a[:, idx] != b[:, idx], axis=0)), key
        else:  # gate_proj / up_proj (n, d): the neurons are rows
            assert np.array_equal(a[keep], b[keep]), key
            assert np.all(np.any(a[idx] != b[idx], axis=1)), key
        seen.add(key)
    assert len(seen) == 6  # gate, up, down at the planting layer and at the readers' layer


def test_and_groups_are_complements_and_or_groups_substitutes_by_weight_surgery(tiny_planted):
    original, data, result = tiny_planted
    planted_nm = load_model(result.model_dir, device="cpu")
    original_nm = load_model(original, device="cpu")
    batch = planted_nm.encode(*zip(*[(p.query, p.passage) for p in _held_out(data)]))
    groups = result.groups
    within = {}
    with one_thread():
        for g in groups:
            within[g["index"]] = [
                _surgery_delta(planted_nm.model, original_nm.model, batch, i, j)
                for a, i in enumerate(g["members"])
                for j in g["members"][a + 1 :]
            ]
        cross = [
            _surgery_delta(planted_nm.model, original_nm.model, batch, a["members"][0], b["members"][0])
            for k, a in enumerate(groups)
            for b in groups[k + 1 :]
        ]
    for g in groups:
        vals = np.array(within[g["index"]])
        if g["kind"] == "and":
            assert np.all(vals > 0), (g, vals)
        else:
            assert np.all(vals < 0), (g, vals)
    # no pair across groups is as complementary as the weakest pair inside an AND group
    weakest = min(min(within[g["index"]]) for g in groups if g["kind"] == "and")
    assert max(cross) < 0.5 * weakest, (cross, weakest)


def test_collect_full_readout_with_the_original_as_reference(tiny_planted, tmp_path, capsys):
    original, data, result = tiny_planted
    # held-out demo inputs, the 48 shortest of 2,000 (every pair of the 64 neurons is ablated)
    short = sorted(_held_out(data, 2000), key=lambda p: len(p.query) + len(p.passage))[:48]
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("".join(f"{p.qid}\t{p.pid}\t{p.query}\t{p.passage}\n" for p in short))
    argv = [
        "collect",
        str(result.model_dir),
        "--reference",
        str(original),
        "--layers",
        str(LAYER),
        "--metric",
        "pas",
        "--readout",
        "full",
        "--data",
        str(tsv),
        "--out",
        str(tmp_path / "phi"),
        "--no-progress",
        "--device",
        "cpu",
    ]
    with one_thread():
        code, _, err = run(argv, capsys)
    assert code == 0, err
    phi = load_phi(phi_path(tmp_path / "phi", LAYER))
    planted = sorted(i for g in result.groups for i in g["members"])
    off = np.ones(len(phi), dtype=bool)
    off[planted] = False
    # an unplanted neuron equals its reference, so ablating it changes nothing (up to rounding)
    within = [abs(phi[i, j]) for g in result.groups for i in g["members"] for j in g["members"] if i < j]
    assert np.abs(phi[off]).max() < 1e-2 * np.median(within)
    for g in result.groups:
        m = g["members"]
        vals = phi[np.ix_(m, m)][np.triu_indices(len(m), 1)]
        assert np.all(np.sign(vals) == g["expected_sign"]), (g["kind"], vals)


def test_probe_features_for_coactive_groups(tiny_planted, tmp_path):
    original, data, _ = tiny_planted
    with one_thread():
        result = plant(
            original,
            tmp_path / "out",
            layer=LAYER,
            and_sizes=[3, 4],
            or_sizes=[3],
            independent=0.0,
            features="probe",
            calibration=256,
            verify=32,
            data=data,
        )
    features = [g["feature"] for g in result.groups]
    assert features == ["probe:overlap", "probe:passage_length", "probe:query_length"]
    for g in result.groups:
        assert isinstance(g["calibration"]["probe_cv_r2"], float)
        assert g["verified"]["fraction_expected_sign"] == 1.0, g


def test_plant_on_a_lora_adapter_writes_the_merged_original_as_reference(tiny_planted, tmp_path):
    from test_loading import make_adapter

    original, data, _ = tiny_planted
    make_adapter(original, tmp_path / "adapter", "llama", layers=(LAYER,))
    with one_thread():
        result = plant(
            original,
            tmp_path / "out",
            layer=LAYER,
            adapter=tmp_path / "adapter",
            and_sizes=[3],
            or_groups=0,
            calibration=128,
            verify=0,
            data=data,
        )
    merged_dir = tmp_path / "out" / "original"
    assert result.reference == str(merged_dir.resolve())
    merged = load_file(str(merged_dir / "model.safetensors"))
    base = load_file(str(original / "model.safetensors"))
    planted = load_file(str(result.model_dir / "model.safetensors"))
    key = f"model.layers.{LAYER}.mlp.up_proj.weight"
    members = result.groups[0]["members"]
    rest = np.setdiff1d(np.arange(64), members)
    assert not np.allclose(merged[key], base[key])  # the reference is the fine-tuned model...
    assert np.array_equal(planted[key][rest], merged[key][rest])  # ...and only the members changed
    assert not np.array_equal(planted[key][members], merged[key][members])
    nm = load_model(result.model_dir, reference=result.reference, device="cpu")
    ref = nm.reference_mlp_weights(LAYER)
    assert np.array_equal(ref.up.numpy(), merged[key])


def test_plant_command_writes_checkpoint_and_ground_truth(tiny_planted, tmp_path, capsys):
    original, data, _ = tiny_planted
    argv = [
        "plant",
        str(original),
        "--layer",
        str(LAYER),
        "--out",
        str(tmp_path / "o"),
        "--and-sizes",
        "3,4",
        "--or-sizes",
        "3",
        "--data",
        data,
        "--calibration",
        "256",
        "--verify",
        "8",
        "--seed",
        "3",
    ]
    with one_thread():
        code, out, err = run(argv, capsys)
    assert code == 0, err
    truth = load_ground_truth(tmp_path / "o" / "ground_truth.json")
    assert [g["size"] for g in truth["groups"]] == [3, 4, 3] and truth["settings"]["seed"] == 3
    assert (tmp_path / "o" / "model" / "model.safetensors").is_file()
    assert f"wrote {tmp_path / 'o' / 'model'}" in out and f"next: {truth['collect']}" in out
    assert out.count("group ") == 3 and "AND of 4" in out and "OR of 3" in out


def test_bad_inputs_exit_2_with_one_line(tiny_planted, tmp_path, capsys):
    import transformers as tf

    original, data, _ = tiny_planted
    tf.T5Config(vocab_size=32, d_model=8, d_ff=16, num_layers=1, num_heads=1, d_kv=4).save_pretrained(
        tmp_path / "t5"
    )
    base = ["--out", str(tmp_path / "o"), "--data", str(data), "--calibration", "32", "--verify", "0"]
    cases = [
        ([str(original), "--layer", "5", *base], r"layer 5 is out of range: this model has 3 layers"),
        ([str(original), "--layer", "2", *base], r"layer 2 is the last layer.*plant at 0\.\.1"),
        (
            [str(original), "--layer", "1", "--and-sizes", "65", *base],
            r"group of 65 neurons is larger than the layer \(64",
        ),
        (
            [str(original), "--layer", "1", "--and-groups", "11", "--or-groups", "0", "--sizes", "6", *base],
            r"need 66 neurons in total",
        ),
        ([str(tmp_path / "t5"), "--layer", "0", *base], r"unknown architecture 't5'"),
        ([str(original), "--layer", "1", "--sizes", "1-3", *base], r"expected 2 <= min_size"),
        ([str(original), "--layer", "1", "--features", "pca", *base], r"unknown features 'pca'"),
    ]
    for args, pattern in cases:
        code, _, err = run(["plant", *args], capsys)
        assert code == 2, (args, err)
        assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
        assert re.search(pattern, err), (pattern, err)
    assert not (tmp_path / "o").exists()


def _state(nm) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in nm.model.state_dict().items()}


def test_plant_a_neuron_model_returns_the_planted_model_and_leaves_the_callers_untouched(
    tiny_planted, tmp_path
):
    """hn.plant(NeuronModel, out): the same planting as from the folder (same seed, same inputs),
    the caller's model unchanged and written as the reference, the planted model returned with
    the unplanted weights as its reference."""
    original, data, from_folder = tiny_planted
    nm = load_model(original, device="cpu")
    before = _state(nm)
    with one_thread():
        result = plant(
            nm, tmp_path / "out", layer=LAYER, and_sizes=[3, 4], or_sizes=[3], calibration=256, verify=32,
            data=data,
        )  # fmt: skip
    after = _state(nm)
    assert all(torch.equal(before[k], after[k]) for k in before)  # the caller's model as it was
    planted = result.model
    assert planted is not nm and planted.model is not nm.model
    assert [g["members"] for g in result.groups] == [g["members"] for g in from_folder.groups]
    written = load_file(str(from_folder.model_dir / "model.safetensors"))
    for key, value in planted.model.state_dict().items():  # what the folder's planting wrote
        np.testing.assert_allclose(value.numpy(), written[key], rtol=1e-5, atol=1e-6, err_msg=key)
    # the reference of the returned model is the unplanted one, at both changed layers
    for layer in (LAYER, LAYER + 1):
        ref, mine = planted.reference_mlp_weights(layer), nm.mlp_weights(layer)
        assert torch.equal(ref.up, mine.up) and torch.equal(ref.down, mine.down)
    assert not torch.equal(planted.mlp_weights(LAYER).up, nm.mlp_weights(LAYER).up)
    # written: the planted checkpoint, and the caller's (unplanted) model as the reference
    assert result.reference == str((tmp_path / "out" / "original").resolve())
    ref_files = load_file(str(tmp_path / "out" / "original" / "model.safetensors"))
    assert all(np.array_equal(ref_files[k], before[k].numpy()) for k in ref_files)
    assert result.ground_truth["collect"].startswith(f"hedonic collect {result.model_dir} --reference ")
    assert load_ground_truth(tmp_path / "out")["groups"] == result.groups


def test_plant_without_out_writes_nothing(tiny_planted, tmp_path, monkeypatch):
    original, data, _ = tiny_planted
    monkeypatch.chdir(tmp_path)
    with one_thread():
        result = plant(original, layer=LAYER, and_sizes=[3], or_groups=0, calibration=32, verify=0, data=data)
    assert list(tmp_path.iterdir()) == []
    assert result.model_dir is None and result.ground_truth_path is None
    assert result.ground_truth["collect"] is None and result.ground_truth["model"] is None
    members = result.groups[0]["members"]
    nm = result.model
    ref, cur = nm.reference_mlp_weights(LAYER), nm.mlp_weights(LAYER)
    rest = np.setdiff1d(np.arange(64), members)
    assert torch.equal(ref.up[rest], cur.up[rest]) and not torch.equal(ref.up[members], cur.up[members])
    assert torch.equal(ref.up, load_model(original, device="cpu").mlp_weights(LAYER).up)


def test_python_bad_inputs_one_error_each_before_any_weight_is_touched(tiny_planted, tmp_path):
    from hedonic_neurons.errors import ConfigError, HedonicError, ModelError

    original, data, _ = tiny_planted
    nm = load_model(original, device="cpu")
    before = _state(nm)
    out = tmp_path / "o"
    base = {"calibration": 32, "verify": 0, "data": data}
    cases = [
        ({"layer": 5}, ModelError, r"layer 5 is out of range: this model has 3 layers \(0\.\.2\)"),
        ({"layer": 2}, ModelError, r"layer 2 is the last layer.*plant at 0\.\.1"),
        ({"layer": 1, "and_sizes": [65], "or_groups": 0}, ModelError, r"group of 65 neurons is larger"),
        (
            {"layer": 1, "and_sizes": [40, 30], "or_groups": 0},
            ModelError,
            r"the groups need 70 neurons in total, but layer 1 has 64",
        ),
        ({"layer": 1, "seed": -1}, ConfigError, r"^seed= -1: expected an integer >= 0$"),
        ({"layer": 1, "and_groups": 2.5}, ConfigError, r"^and_groups= 2\.5: expected a non-negative integer$"),
        ({"layer": 1, "and_sizes": ["3"]}, ConfigError, r"^and_sizes= \('3',\): expected a list of integer"),
        ({"layer": 1, "calibration": 10**6}, ConfigError, r"demo has \d+ \(query, passage\) pairs"),
    ]
    for kwargs, kind, pattern in cases:
        for model in (nm, original):
            with pytest.raises(kind, match=pattern) as exc:
                plant(model, out, **{**base, **kwargs})
            assert isinstance(exc.value, HedonicError) and "\n" not in str(exc.value)
    after = _state(nm)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not out.exists()


# ------------------------------------------------------------------------------------- MiniLM


@pytest.fixture(scope="module")
def minilm_planted(tmp_path_factory):
    try:
        nm = load_model("minilm", device="cpu")
    except Exception as exc:  # the optional model package is not installed
        pytest.skip(f"MiniLM not available: {exc}")
    del nm
    result = plant(
        "minilm",
        tmp_path_factory.mktemp("minilm") / "out",
        layer=3,
        and_sizes=[3, 4, 5],
        or_sizes=[3],
        calibration=128,
        verify=0,
    )
    return result


@pytest.mark.slow
def test_minilm_pas_full_readout_recovers_the_and_groups(minilm_planted):
    result = minilm_planted
    truth = result.ground_truth
    layer = truth["layer"]
    nm = load_model(result.model_dir, reference=truth["reference"], device="cpu")
    # 24 short demo inputs that planting did not see (it used the first 128 after its shuffle)
    pairs = load_pairs("demo")
    random.Random(0).shuffle(pairs)
    chunk = sorted(pairs[1000:3000], key=lambda p: len(p.query) + len(p.passage))[:24]
    batch = nm.encode([p.query for p in chunk], [p.passage for p in chunk])
    planted = sorted(i for g in truth["groups"] for i in g["members"])
    todo = [(i, j) for a, i in enumerate(planted) for j in planted[a + 1 :]]
    values = pair_deltas(nm, [batch], layer, nm.reference_mlp_weights(layer), todo)
    phi = np.zeros((nm.n_neurons, nm.n_neurons), dtype=np.float32)
    for (i, j), v in zip(todo, values):
        phi[i, j] = phi[j, i] = v
    for g in truth["groups"]:  # A4's sign: AND > 0, OR < 0, on average and for most pairs
        m = g["members"]
        vals = phi[np.ix_(m, m)][np.triu_indices(len(m), 1)]
        assert np.sign(vals.mean()) == g["expected_sign"], (g["kind"], vals)
        assert np.mean(np.sign(vals) == g["expected_sign"]) >= 0.8, (g["kind"], vals)
    labels = TopCover(k=2).fit(phi).labels_
    ands = [g for g in truth["groups"] if g["kind"] == "and"]
    neurons = [i for g in ands for i in g["members"]]
    true = [g["index"] for g in ands for _ in g["members"]]
    ari = adjusted_rand_score(true, labels[neurons])
    assert ari >= 0.9, (ari, labels[neurons], true)


@pytest.mark.slow
def test_minilm_checkpoint_loads_with_the_builtin_as_reference(minilm_planted):
    truth = minilm_planted.ground_truth
    assert truth["reference"] == "minilm"
    nm = load_model(minilm_planted.model_dir, reference="minilm", device="cpu")
    original = load_model("minilm", device="cpu")
    layer = truth["layer"]
    ref = nm.reference_mlp_weights(layer)
    orig_mods = mlp_modules(original.model, layer)
    assert torch.equal(ref.up, orig_mods.up.weight) and torch.equal(ref.down, orig_mods.down.weight)
    cur = nm.mlp_weights(layer)
    members = truth["changed"][str(layer)]
    rest = np.setdiff1d(np.arange(nm.n_neurons), members)
    assert torch.equal(cur.up[rest], ref.up[rest]) and not torch.equal(cur.up[members], ref.up[members])
    meta = json.loads(minilm_planted.ground_truth_path.read_text())
    assert meta["collect"].startswith(f"hedonic collect {minilm_planted.model_dir} --reference minilm")
