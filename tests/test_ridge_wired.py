"""The ridge ceiling and the per-position features are wired into ``hedonic run`` (issue 13, item 7).

A tiny run records the activations at three read positions (mean over all tokens, the readout
token, the mean over the query tokens), runs alignment and ridge at each, and puts the ceiling
(ridge on every neuron and on the top-K principal components, same folds) beside every method's
macro-feature ridge in evaluation.json, results.json and the report. The references are computed
here from scratch: a forward pre-hook on the down projection for the features, sklearn's
StandardScaler + Ridge over GroupKFold folds for the ceiling.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from sklearn.decomposition import PCA
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score
from sklearn.model_selection import GroupKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from hedonic_neurons.cli import main
from hedonic_neurons.config import load_config
from hedonic_neurons.errors import DataError, HedonicError
from hedonic_neurons.evaluate.extrinsic import (
    ExtrinsicData,
    ceiling_rows,
    position_tables,
    query_token_mask,
)
from hedonic_neurons.evaluate.regression import READ_POSITIONS, RIDGE_ALPHAS
from hedonic_neurons.models import load_model
from hedonic_neurons.models.adapters import mlp_modules
from hedonic_neurons.models.inputs import InputFormat
from hedonic_neurons.pipeline import Pipeline, load_split, task_values
from synergy_helpers import one_thread
from test_loading import make_adapter, save_tiny, tiny_tokenizer

LAYERS = [1, 3]  # more than tracking.horizon apart: nothing to track, the run stays short
TOP_K = 3


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


# ------------------------------------------------------------------------------ references


def sklearn_ceiling(x, y, groups, x_test, y_test, n_pcs=None):
    """(in-domain R², α, OOD R²) of ridge as the ceiling is specified, written with sklearn.

    α: the grid value with the least squared error summed over the GroupKFold folds of all
    training pairs (PCA, when used, fitted once on all of them); R²: out-of-fold predictions with
    that α over the same folds (PCA refitted on each training fold); OOD: fitted on all pairs.
    """
    x, x_test = np.asarray(x, dtype=np.float64), np.asarray(x_test, dtype=np.float64)
    codes = np.unique(groups, return_inverse=True)[1]
    cv = GroupKFold(n_splits=min(5, int(codes.max()) + 1))
    folds = list(cv.split(x, y, codes))
    feats = x if n_pcs is None else PCA(n_components=n_pcs).fit(x).transform(x)
    sse = [
        sum(
            ((make_pipeline(StandardScaler(), Ridge(alpha=a)).fit(feats[tr], y[tr]).predict(feats[te]) - y[te]) ** 2).sum()
            for tr, te in folds
        )
        for a in RIDGE_ALPHAS
    ]
    alpha = float(RIDGE_ALPHAS[int(np.argmin(sse))])

    def model():
        steps = [] if n_pcs is None else [PCA(n_components=n_pcs)]
        return make_pipeline(*steps, StandardScaler(), Ridge(alpha=alpha))

    oof = cross_val_predict(model(), x, y, groups=codes, cv=folds)
    return r2_score(y, oof), alpha, r2_score(y_test, model().fit(x, y).predict(x_test))


def neuron_inputs(nm, layer, batch):
    """(B, T, n) input of the layer's down projection, captured by a forward pre-hook."""
    got = {}

    def hook(module, args):
        got["a"] = args[0].detach().double()  # returns None: the input is left as it is

    handle = mlp_modules(nm.model, layer).down.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            nm.model(**batch)
    finally:
        handle.remove()
    return got["a"]


# ------------------------------------------------------------------------------ the run


def demo_words(max_train: int, max_test: int) -> list[str]:
    """Every word piece of the demo pairs the run reads (and of the template), for a tokenizer
    that knows them all: with mostly unknown tokens the query-token features of a causal model
    would be the same for many pairs."""
    from tokenizers import pre_tokenizers

    split = pre_tokenizers.Whitespace().pre_tokenize_str
    words = {"query", "document", ":"}
    for side, n_pairs in (("train", max_train), ("test", max_test)):
        for p in load_split("demo", side, n_pairs, 0, "cqtr")[0]:
            words.update(w for text in (p.query, p.passage) for w, _ in split(text))
    return sorted(words)


def test_run_has_ceiling_rows_and_three_positions_matching_direct_references(tmp_path, capsys):
    words = demo_words(60, 30)
    tokenizer = tiny_tokenizer("llama", words=words)
    base = save_tiny(tmp_path / "base", "llama", layers=4, n=24, vocab=len(tokenizer), tokenizer=tokenizer)
    make_adapter(base, tmp_path / "adapter", "llama", layers=tuple(LAYERS))
    config = tmp_path / "tiny.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "ridge-wired",
                "model": str(base),
                "adapter": str(tmp_path / "adapter"),
                "task": "cqtr",
                "layers": LAYERS,
                "max_length": 32,
                "baselines": ["random"],
                "data": {"train": "demo", "test": "demo", "max_train_pairs": 60, "max_test_pairs": 30},
                "phi": {"metrics": ["oca"], "batch_size": 8},
                "evaluate": {
                    "evaluations": ["effects"],
                    "top_k": TOP_K,
                    "selection": "largest",
                    "size_band": [2, 24],
                    "certify_samples": 200,
                    "bootstrap": 100,
                    "null_pairs": 8,
                    "synergy_pairs": 4,
                    "explorer_coalitions": 0,
                    "phi_resamples": 0,
                },
                "tracking": {"horizon": 1},
            }
        )
    )
    out = tmp_path / "run"
    try:
        main(["run", str(config), "--out", str(out), "--quiet"])
    except SystemExit as exc:
        assert exc.code in (0, None), capsys.readouterr().err
    cfg = load_config(config)
    pipe = Pipeline(cfg, out, progress=False)  # the run's file layout (nothing is run)
    methods = ["hedonic-oca", "random"]
    ceilings = ["ceiling: all neurons", f"ceiling: top {TOP_K} PCs"]
    positions = list(READ_POSITIONS)

    # results.json: the ridge table has every method and both ceilings at each position
    results = json.loads((out / "results.json").read_text())
    ridge = results["table_ridge"]
    assert [(r["position"], r["method"]) for r in ridge] == [(p, m) for p in positions for m in methods + ceilings]
    alignment = results["table_alignment"]
    assert [(r["position"], r["method"]) for r in alignment] == [(p, m) for p in positions for m in methods]
    assert all(r["alignment_r2"]["n"] == 3 for r in alignment)  # a mean over the 3 seeds
    report = (out / "report.md").read_text()
    assert "ceiling: all neurons | readout" in report and "Alignment with IR heuristics by read position" in report

    # the recorded features: mean, readout token and query tokens, against a hook on the full batch
    train, qrels, _ = load_split(cfg.data.train, "train", cfg.data.max_train_pairs, cfg.seed, cfg.task)
    test, test_qrels, _ = load_split(cfg.data.test, "test", cfg.data.max_test_pairs, cfg.seed, cfg.task)
    nm = load_model(str(base), adapter=str(tmp_path / "adapter"), input_format=InputFormat(max_length=32))
    batch = nm.encode([p.query for p in test], [p.passage for p in test])  # right padding, one batch
    mask = batch["attention_mask"].bool()
    length = mask.sum(1)
    tok = nm.tokenizer
    for layer in LAYERS:
        a = neuron_inputs(nm, layer, batch)
        want_mean = np.stack([a[b, : length[b]].mean(0).numpy() for b in range(len(test))])
        want_readout = np.stack([a[b, length[b] - 1].numpy() for b in range(len(test))])  # the EOS
        want_query = []
        for b, pair in enumerate(test):
            # "query : <query words> document : ...": the query's own tokens follow the first two
            m = len(tok(pair.query, add_special_tokens=False)["input_ids"])
            ids = batch["input_ids"][b].tolist()
            assert tok.convert_ids_to_tokens(ids[:2] + ids[2 + m : 3 + m]) == ["query", ":", "document"]
            want_query.append(a[b, 2 : 2 + m].mean(0).numpy())
        np.testing.assert_allclose(pipe.acts("test", layer), want_mean, atol=2e-5, rtol=0)
        np.testing.assert_allclose(pipe.acts("test", layer, "readout"), want_readout, atol=2e-5, rtol=0)
        np.testing.assert_allclose(pipe.acts("test", layer, "query"), np.stack(want_query), atol=2e-5, rtol=0)
        assert np.abs(want_readout - want_mean).max() > 1e-2 and np.abs(np.stack(want_query) - want_mean).max() > 1e-2

    # evaluation.json: each ceiling equals the sklearn computation on the same features and folds
    evaluation = json.loads((out / "evaluation.json").read_text())
    y, y_test = task_values(cfg.task, train, qrels), task_values(cfg.task, test, test_qrels)
    g = np.array([p.qid for p in train])
    rows = evaluation["ridge_ceiling"]
    assert [(r["layer"], r["method"]) for r in rows] == [(layer, c) for layer in LAYERS for c in ceilings]
    for row in rows:
        assert set(row["by_position"]) == set(positions)
        n_pcs = None if row["ceiling"] == "all_neurons" else TOP_K
        for pos, got in row["by_position"].items():
            x, x_test = pipe.acts("train", row["layer"], pos), pipe.acts("test", row["layer"], pos)
            r2, alpha, r2_ood = sklearn_ceiling(x, y, g, x_test, y_test, n_pcs)
            assert got["ridge_alpha"] == pytest.approx(alpha, rel=1e-12)
            assert got["ridge_r2"] == pytest.approx(r2, abs=1e-6)
            assert got["ridge_r2_ood"] == pytest.approx(r2_ood, abs=1e-6)
            assert got["n_features"] == (24 if n_pcs is None else TOP_K)
        assert row["ridge_r2"] == row["by_position"]["mean"]["ridge_r2"]
    # the report's ceiling row: the mean over layers of those numbers
    for r in ridge:
        if r["method"] in ceilings:
            want = np.mean([c["by_position"][r["position"]]["ridge_r2"] for c in rows if c["method"] == r["method"]])
            assert r["ridge_r2"]["mean"] == pytest.approx(want, abs=1e-12)
            assert "ridge_null_percentile" not in r
    # every method row of evaluation.json carries alignment and ridge at the three positions
    extrinsic = [r for r in evaluation["rows"] if "ridge_r2" in r]
    assert {r["method"] for r in extrinsic} == set(methods)
    for r in extrinsic:
        assert list(r["by_position"]) == positions
        assert r["ridge_r2"] == r["by_position"]["mean"]["ridge_r2"]
        assert {"alignment_r2", "ridge_r2_ood_refit", "ridge_null_percentile"} <= set(r["by_position"]["query"])


# ------------------------------------------------------------------------------ query tokens


@pytest.mark.parametrize("padding", ["right", "left"])
def test_query_mask_text_formats_truncated_passage_either_side(padding):
    tok = tiny_tokenizer("llama")
    queries, passages = ["cat sat", "dog"], ["the big mat " * 6, "a fish"]
    for template, first in (("query: {query} document: {passage}", True), ("document: {passage} query: {query}", False)):
        fmt = InputFormat(template=template, max_length=12, padding_side=padding).resolve(tok, encoder=False)
        batch = fmt.encode(tok, queries, passages)
        mask = query_token_mask(fmt, tok, queries, passages, batch)
        real = batch["attention_mask"].bool()
        assert not (mask & ~real).any()
        for b, q in enumerate(queries):
            toks = tok.convert_ids_to_tokens(batch["input_ids"][b][real[b]])
            flags = mask[b][real[b]].tolist()
            n_q = len(q.split())
            # hand reference: "query : <q>" opens the input, or "query : <q> [EOS]" closes it
            start = 2 if first else len(toks) - 1 - n_q
            assert flags == [start <= i < start + n_q for i in range(len(toks))], (template, toks)
            assert toks[start - 2 : start] == ["query", ":"] and toks[-1] == "[EOS]"
        assert int(batch["attention_mask"][0].sum()) == 12  # the first passage was truncated


def test_query_mask_pair_format_is_the_first_sequence_without_special_tokens():
    from transformers import AutoTokenizer

    from hedonic_neurons.models.builtins import BUILTINS, package_folder

    tok = AutoTokenizer.from_pretrained(package_folder(BUILTINS["minilm"]))
    fmt = InputFormat(max_length=24).resolve(tok, encoder=True)
    queries = ["what is python", "how to sort a list in reverse order quickly in python"]
    passages = ["python is a programming language " * 10, "use sorted"]
    batch = fmt.encode(tok, queries, passages)
    mask = query_token_mask(fmt, tok, queries, passages, batch)
    special = torch.isin(batch["input_ids"], torch.tensor([tok.cls_token_id, tok.sep_token_id]))
    want = (batch["token_type_ids"] == 0) & batch["attention_mask"].bool() & ~special
    assert torch.equal(mask, want)
    assert mask.sum(1).tolist() == [3, len(tok(queries[1], add_special_tokens=False)["input_ids"])]


def test_query_mask_needs_a_fast_tokenizer():
    class Slow:
        is_fast = False

    fmt = InputFormat(kind="text", append_eos=False)
    batch = {"input_ids": torch.zeros((1, 3), dtype=torch.long), "attention_mask": torch.ones((1, 3))}
    with pytest.raises(HedonicError, match="fast tokenizer"):
        query_token_mask(fmt, Slow(), ["q"], ["p"], batch)


# ------------------------------------------------------------------------------ tables


def test_position_tables_average_layers_then_seeds_and_put_ceilings_after_methods():
    def row(method, layer, seed, mean, readout):
        return {
            "method": method, "layer": layer, "seed": seed, "ridge_r2": mean,
            "by_position": {"mean": {"ridge_r2": mean}, "readout": {"ridge_r2": readout}},
        }  # fmt: skip

    rows = [row("a", layer, seed, 0.1 * seed + layer, -layer) for seed in (0, 1, 2) for layer in (1, 3)]
    ceilings = [
        {"method": "ceiling: all neurons", "ceiling": "all_neurons", "layer": layer,
         "by_position": {"mean": {"ridge_r2": 0.5 * layer}, "readout": {"ridge_r2": 0.25 * layer}}}
        for layer in (1, 3)
    ]  # fmt: skip
    ridge, alignment = position_tables(rows, ["a"], [0, 1, 2], ceilings, ridge_columns=("ridge_r2",))
    assert [(r["position"], r["method"]) for r in ridge] == [
        ("mean", "a"), ("mean", "ceiling: all neurons"), ("readout", "a"), ("readout", "ceiling: all neurons")
    ]  # fmt: skip
    # a: per seed the mean over layers 1 and 3 (2 + 0.1 seed), then the mean over seeds
    assert ridge[0]["ridge_r2"]["mean"] == pytest.approx(2.1)
    assert ridge[0]["ridge_r2"]["values"] == pytest.approx([2.0, 2.1, 2.2])
    assert ridge[2]["ridge_r2"]["mean"] == pytest.approx(-2.0)
    assert ridge[1]["ridge_r2"]["mean"] == pytest.approx(1.0) and ridge[1]["ridge_r2"]["n"] == 1
    assert ridge[3]["ridge_r2"]["mean"] == pytest.approx(0.5)
    assert [(r["position"], r["method"]) for r in alignment] == [("mean", "a"), ("readout", "a")]
    # rows written before positions existed: only the flat (mean) keys
    flat = [{"method": "a", "layer": 1, "seed": s, "ridge_r2": float(s)} for s in (0, 1, 2)]
    old, _ = position_tables(flat, ["a"], [0, 1, 2], ridge_columns=("ridge_r2",))
    assert [r["position"] for r in old] == ["mean"] and old[0]["ridge_r2"]["mean"] == pytest.approx(1.0)


def test_ceiling_rows_equal_sklearn_on_a_target_with_signal():
    """Where α is inside the grid (the tiny run's random features choose its largest value)."""
    rng = np.random.default_rng(0)
    train, test = load_split("demo", "train", 120, 0, "cqtr")[0], load_split("demo", "test", 40, 0, "cqtr")[0]
    n = 30
    w = np.zeros(n)
    w[:4] = [1.0, -0.5, 0.25, 0.8]
    acts = {
        pos: (rng.normal(size=(len(train), n)), rng.normal(size=(len(test), n))) for pos in ("mean", "readout")
    }
    x, x_test = acts["mean"]
    y, y_test = x @ w + rng.normal(size=len(train)), x_test @ w + 1.0 + rng.normal(size=len(test))
    data = ExtrinsicData.build("cqtr", train, test, y, y_test, {})
    rows = ceiling_rows(
        2, data, {p: a for p, (a, _) in acts.items()}, {p: b for p, (_, b) in acts.items()}, n_pcs=5
    )
    assert [r["method"] for r in rows] == ["ceiling: all neurons", "ceiling: top 5 PCs"]
    for row, n_pcs in zip(rows, (None, 5)):
        for pos, (a, b) in acts.items():
            r2, alpha, r2_ood = sklearn_ceiling(a, y, data.groups_train, b, y_test, n_pcs)
            got = row["by_position"][pos]
            assert got["ridge_alpha"] == pytest.approx(alpha)
            assert pos != "mean" or RIDGE_ALPHAS[0] < alpha < RIDGE_ALPHAS[-1]  # noise: the largest α
            assert got["ridge_r2"] == pytest.approx(r2, abs=1e-9)
            assert got["ridge_r2_ood"] == pytest.approx(r2_ood, abs=1e-9)
    assert rows[0]["by_position"]["mean"]["ridge_r2"] > 0.5  # the signal is there
    assert rows[0]["by_position"]["readout"]["ridge_r2"] < 0.1  # and only there
    with pytest.raises(DataError, match="'mean' included"):
        ceiling_rows(1, data, {"readout": x}, {"readout": x_test}, n_pcs=2)


def test_r2_of_a_target_constant_up_to_rounding_is_nan():
    """Query-token features of a causal model are one value per query: on a slice of one query the
    refit has no variance to explain (np.var of ten copies of 0.3 is 3e-33, not 0)."""
    from hedonic_neurons.evaluate.regression import refit_r2

    y = np.r_[np.full(10, 0.3), np.full(10, 0.7)]
    pred = np.linspace(0.0, 1.0, 20)
    groups = np.repeat(["a", "b"], 10)
    assert np.var(y[:10]) > 0  # rounding: what the check must not mistake for variance
    got = refit_r2(y, pred, groups)
    assert got["n_eval_queries"] == 1 and np.isnan(got["r2_eval"]) and np.isnan(got["r2_refit"])
    varied = refit_r2(y + np.tile(np.linspace(0.0, 0.01, 10), 2), pred, groups)  # varies in each query
    assert np.isfinite(varied["r2_eval"]) and np.isfinite(varied["r2_refit"])
