import math

import numpy as np
import pytest
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score
from sklearn.model_selection import GroupKFold, KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from hedonic_neurons.data.heuristics import PASSAGE_FEATURES, QUERY_FEATURES, heuristic_features
from hedonic_neurons.data.loaders import Pair
from hedonic_neurons.data.metrics import ndcg_at_10, scores_by_query
from hedonic_neurons.data.text import terms
from hedonic_neurons.errors import ConfigError, DataError
from hedonic_neurons.evaluate import regression as rg

# ------------------------------------------------------------------------------ synthetic data


def _queries(n_q, per_q, rng, n_feat=6, query_effect=1.0):
    """Pairs grouped by query: features with a per-query offset plus per-pair variation."""
    groups = np.repeat(np.arange(n_q), per_q)
    x = rng.normal(size=(n_q * per_q, n_feat)) + query_effect * rng.normal(size=(n_q, n_feat))[groups]
    return x, groups


# ------------------------------------------------------------------------------ ridge


@pytest.mark.parametrize("shape", [(30, 80), (60, 5)])  # kernel form (n < p) and primal form
def test_ridge_path_is_sklearn_ridge_on_standardised_features(shape):
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape) * rng.uniform(0.1, 5, size=shape[1]) + 3.0
    x[:, 1] = 2.5  # a constant column: StandardScaler leaves its scale at 1
    y = x[:, 0] - 0.5 * x[:, 2] + rng.normal(size=shape[0])
    xe = rng.normal(size=(7, shape[1]))
    alphas = [0.01, 1.0, 30.0]
    got = rg.ridge_path(x, y, xe, alphas)
    for k, a in enumerate(alphas):
        want = make_pipeline(StandardScaler(), Ridge(alpha=a)).fit(x, y).predict(xe)
        np.testing.assert_allclose(got[k], want, rtol=1e-7, atol=1e-8)
    with pytest.raises(ConfigError, match="alphas="):
        rg.ridge_path(x, y, xe, [0.0])


def test_grouped_ridge_alpha_is_the_brute_force_grouped_choice():
    rng = np.random.default_rng(1)
    x, groups = _queries(12, 5, rng)
    y = x @ rng.normal(size=6) + 2 * rng.normal(size=60)
    alphas = np.logspace(-2, 3, 6)
    model = rg.GroupedRidgeCV(alphas, n_splits=4).fit(x, y, groups)
    sse = np.zeros(alphas.size)
    for tr, te in GroupKFold(4).split(x, y, groups):
        for k, a in enumerate(alphas):
            pred = make_pipeline(StandardScaler(), Ridge(alpha=a)).fit(x[tr], y[tr]).predict(x[te])
            sse[k] += ((pred - y[te]) ** 2).sum()
    np.testing.assert_allclose(model.cv_mse_, sse / 60, rtol=1e-8)
    assert model.alpha_ == alphas[np.argmin(sse)]
    want = make_pipeline(StandardScaler(), Ridge(alpha=model.alpha_)).fit(x, y).predict(x[:3])
    np.testing.assert_allclose(model.predict(x[:3]), want, rtol=1e-8)


def test_grouped_folds_keep_each_query_on_one_side():
    groups = np.array(["q3", "q1", "q1", "q2", "q3", "q4", "q2", "q1", "q5", "q5", "q6"])
    folds = rg.grouped_folds(groups, n_splits=3)
    assert len(folds) == 3
    seen = np.concatenate([te for _, te in folds])
    assert np.array_equal(np.sort(seen), np.arange(groups.size))  # every pair tested once
    for tr, te in folds:
        assert not set(groups[tr]) & set(groups[te])
        assert np.array_equal(np.sort(np.concatenate([tr, te])), np.arange(groups.size))
    assert len(rg.grouped_folds(groups[:4], n_splits=5)) == 3  # lowered to the 3 queries there
    with pytest.raises(DataError, match="at least 2 queries"):
        rg.grouped_folds(["a", "a", "a"])


def test_cv_predictions_never_see_their_own_query():
    rng = np.random.default_rng(2)
    x, groups = _queries(10, 6, rng)
    y = x[:, 0] + rng.normal(size=60)
    base = rg.cv_predictions(x, y, groups, n_splits=5)
    # changing every label of query 3 changes no prediction for query 3's pairs
    y2 = y.copy()
    y2[groups == 3] += rng.normal(size=6) * 50
    again = rg.cv_predictions(x, y2, groups, n_splits=5)
    np.testing.assert_allclose(again[groups == 3], base[groups == 3], rtol=1e-12)
    assert not np.allclose(again[groups != 3], base[groups != 3])  # the others did learn from it


def test_grouped_cv_does_not_memorise_queries():
    # the label is a per-query random constant and the features identify the query: a split
    # that puts one query on both sides memorises it, a query-grouped split cannot
    rng = np.random.default_rng(3)
    n_q, per_q = 20, 5
    groups = np.repeat(np.arange(n_q), per_q)
    x = rng.normal(size=(n_q, 40))[groups] + 0.01 * rng.normal(size=(n_q * per_q, 40))
    y = rng.normal(size=n_q)[groups]
    grouped = rg.ridge_evaluation(x, y, groups)["r2_cv"]
    assert grouped < 0.1
    leaky = np.empty_like(y)
    for tr, te in KFold(5, shuffle=True, random_state=0).split(x):
        leaky[te] = make_pipeline(StandardScaler(), Ridge(alpha=1e-3)).fit(x[tr], y[tr]).predict(x[te])
    assert r2_score(y, leaky) > 0.9  # what the leak would have reported


# ------------------------------------------------------------------------------ per-query labels


def test_standardise_per_query_by_hand():
    y = np.array([1.0, 2.0, 3.0, 5.0, 5.0, 0.0, 4.0])
    groups = np.array(["a", "a", "a", "b", "b", "c", "c"])
    s = math.sqrt(2 / 3)
    np.testing.assert_allclose(
        rg.standardise_per_query(y, groups), [-1 / s, 0, 1 / s, 0, 0, -1, 1], atol=1e-12
    )
    # a predictor constant within each query cannot score above 0
    z = rg.standardise_per_query(np.random.default_rng(0).normal(size=7), groups)
    codes = np.unique(groups, return_inverse=True)[1]
    for consts in ([0.0, 0.0, 0.0], [0.3, -1.0, 2.0], [1e-3, 0, 0]):
        assert r2_score(z, np.asarray(consts)[codes]) <= 1e-12
    with pytest.raises(DataError, match="one query id per pair"):
        rg.standardise_per_query(y, groups[:3])


def test_constant_within_groups():
    groups = np.array([0, 0, 1, 1, 1])
    x = np.array([[1.0, 1, 7], [1, 2, 7], [2, 3, 7], [2, 3, 7], [2, 4, 7]])
    assert rg.constant_within_groups(x, groups).tolist() == [True, False, True]


# ------------------------------------------------------------------------------ OOD refit


def test_refit_r2_recovers_an_affine_copy():
    rng = np.random.default_rng(4)
    groups = np.repeat(np.arange(10), 4)
    y = rng.normal(size=40)
    pred = y + 0.3 * rng.normal(size=40)
    plain = rg.refit_r2(y, pred, groups, seed=1)
    shifted = rg.refit_r2(5.0 + 2.0 * y, pred, groups, seed=1)
    # the refit absorbs an increasing affine change of the target: the same R², slope and
    # intercept follow
    assert shifted["r2_refit"] == pytest.approx(plain["r2_refit"], abs=1e-12)
    assert shifted["slope"] == pytest.approx(2 * plain["slope"])
    assert shifted["intercept"] == pytest.approx(5.0 + 2.0 * plain["intercept"])
    assert shifted["r2_eval"] < -4  # uncorrected, the shifted copy looks hopeless
    # by hand: least squares on the calibration queries, R² on the other ones
    calib = np.isin(groups, np.random.default_rng(1).permutation(10)[:5])
    slope, intercept = np.polyfit(pred[calib], y[calib], 1)
    assert (plain["slope"], plain["intercept"]) == pytest.approx((slope, intercept))
    assert plain["r2_refit"] == pytest.approx(r2_score(y[~calib], intercept + slope * pred[~calib]))
    assert plain["r2_eval"] == pytest.approx(r2_score(y[~calib], pred[~calib]))
    assert (plain["n_calib_queries"], plain["n_eval_queries"], plain["n_eval_pairs"]) == (5, 5, 20)
    # an exact affine copy is recovered exactly
    assert rg.refit_r2(3 * y + 1, y, groups)["r2_refit"] == pytest.approx(1.0, abs=1e-12)
    # a sign flip is not a scale: an anti-correlated prediction gets slope 0, no credit
    flipped = rg.refit_r2(y, -pred, groups, seed=1)
    assert flipped["slope"] == 0.0 and flipped["intercept"] == pytest.approx(y[calib].mean())
    assert flipped["r2_refit"] <= 0.05
    with pytest.raises(ConfigError, match="calib_fraction="):
        rg.refit_r2(y, pred, groups, calib_fraction=1.0)


# ------------------------------------------------------------------------------ label shift (done-when)


def _methods(rng, n_q=16, per_q=8):
    """Three 'methods': macro-features that carry all, half, or none of the signal."""
    x, groups = _queries(n_q, per_q, rng, n_feat=4, query_effect=0.5)
    signal = x @ np.array([1.0, -1.0, 0.5, 0.0])
    noise = rng.normal(size=(x.shape[0], 4))
    feats = {
        "good": np.column_stack([x[:, :3], noise[:, :1]]),
        "half": np.column_stack([x[:, :1], noise[:, :3]]),
        "none": noise,
    }
    return feats, signal + 0.3 * rng.normal(size=x.shape[0]), groups


def test_no_label_shift_artefact_in_ridge():
    rng = np.random.default_rng(5)
    train, y_tr, g_tr = _methods(rng)
    test, y_te, g_te = _methods(np.random.default_rng(6))
    shift = 7.0  # the OOD target is the training target moved by a constant
    old, plain, moved = {}, {}, {}
    for m in train:
        old[m] = rg.macro_feature_r2(train[m], y_tr, test[m], y_te + shift)[0]
        plain[m] = rg.ridge_evaluation(train[m], y_tr, g_tr, test[m], y_te, g_te)
        moved[m] = rg.ridge_evaluation(train[m], y_tr, g_tr, test[m], y_te + shift, g_te)
    # the artefact: uncorrected, every method scores like the constant predictor
    const = moved["good"]["r2_ood_constant"]
    assert const < -5
    assert all(abs(old[m] - const) < 0.2 * abs(const) for m in old)
    for m in train:
        assert moved[m]["r2_cv"] == plain[m]["r2_cv"]  # in-domain: untouched by the OOD shift
        assert moved[m]["r2_ood_refit"] == pytest.approx(plain[m]["r2_ood_refit"], abs=1e-10)
    # and the fair scores separate the methods in the right order
    for key in ("r2_cv", "r2_ood_refit"):
        assert moved["good"][key] > moved["half"][key] + 0.2 > moved["none"][key] + 0.2
    assert moved["good"]["r2_ood_refit"] > 0.8 and moved["none"]["r2_cv"] < 0.1


def test_no_per_query_shift_artefact_with_standardised_labels():
    rng = np.random.default_rng(7)
    train, y_tr, g_tr = _methods(rng)
    test, y_te, g_te = _methods(np.random.default_rng(8))
    q_shift = np.random.default_rng(9).normal(size=16)[g_te] * 5  # each test query moved by its own constant
    for m in train:
        plain = rg.ridge_evaluation(train[m], y_tr, g_tr, test[m], y_te, g_te, per_query=True)
        moved = rg.ridge_evaluation(train[m], y_tr, g_tr, test[m], y_te + q_shift, g_te, per_query=True)
        for key in ("r2_cv", "r2_ood", "r2_ood_refit", "r2_ood_constant"):
            assert moved[key] == pytest.approx(plain[key], abs=1e-10), (m, key)
        assert moved["r2_ood_constant"] == pytest.approx(0.0, abs=1e-12)


def test_no_activation_shift_artefact_in_alignment():
    rng = np.random.default_rng(10)
    n_q, per_q = 15, 6
    groups = np.repeat(np.arange(n_q), per_q)

    def data(seed):
        r = np.random.default_rng(seed)
        heur = r.normal(size=(n_q * per_q, 3))
        coal = np.column_stack(
            [heur @ [1.0, 0.5, 0], heur[:, 0] + r.normal(size=n_q * per_q), r.normal(size=n_q * per_q)]
        )
        return coal, heur

    c_tr, h_tr = data(11)
    c_te, h_te = data(12)
    plain = rg.alignment_evaluation(c_tr, h_tr, groups, c_te, h_te, groups)
    moved = rg.alignment_evaluation(c_tr, h_tr, groups, c_te * 3 + 4, h_te, groups)  # activations drift
    np.testing.assert_allclose(
        moved["r2_ood_refit_per_coalition"], plain["r2_ood_refit_per_coalition"], atol=1e-10
    )
    assert moved["r2_ood_per_coalition"][0] < 0 < 0.99 < plain["r2_ood_per_coalition"][0]
    r2 = plain["r2_cv_per_coalition"]
    assert r2[0] == pytest.approx(1.0) and 0.2 < r2[1] < 0.8 and r2[2] < 0.1
    assert plain["r2_cv"] == pytest.approx(np.mean(r2)) and plain["dropped"] == []
    del rng


# ------------------------------------------------------------------------------ alignment details


def test_alignment_drops_query_level_regressors_and_explains_within_query():
    rng = np.random.default_rng(13)
    n_q, per_q = 12, 5
    groups = np.repeat(np.arange(n_q), per_q)
    bm25 = rng.normal(size=n_q * per_q)
    idf_sum = rng.normal(size=n_q)[groups]  # one value per query
    heur = np.column_stack([bm25, idf_sum])
    offset = 3 * rng.normal(size=n_q)[groups]  # the query part of the activation
    coal = (2 * bm25 + offset)[:, None]
    res = rg.alignment_evaluation(coal, heur, groups, feature_names=["bm25", "idf_sum"])
    assert res["dropped"] == ["idf_sum"] and res["features"] == ["bm25"]
    assert res["r2_cv"] < 0.5  # the query offsets are not explained by bm25
    within = rg.alignment_evaluation(coal, heur, groups, feature_names=["bm25", "idf_sum"], within_query=True)
    assert within["r2_cv"] == pytest.approx(1.0)  # between the passages of a query, bm25 is all of it
    kept = rg.alignment_evaluation(coal, heur, groups, drop_constant=False)
    assert kept["dropped"] == [] and kept["features"] == ["x0", "x1"]
    with pytest.raises(DataError, match="constant within each query"):
        rg.alignment_evaluation(coal, heur[:, 1:], groups, feature_names=["idf_sum"])


CORPUS = [
    Pair("1", "a", "fish fish night zebra", "Cats eat fish. Fish fear cats."),
    Pair("1", "b", "fish fish night zebra", "Dogs bark at night, every night, at the moon."),
    Pair("1", "c", "fish fish night zebra", "A fish swims at night."),
    Pair("2", "a", "cats dogs", "Cats eat fish. Fish fear cats."),
    Pair("2", "d", "cats dogs", "Birds sing in the morning and cats listen to the birds."),
    Pair("2", "e", "cats dogs", "Mice run."),
]


def test_passage_level_idf_features_by_hand():
    feats = heuristic_features(CORPUS)
    n = 5  # distinct pids a..e
    docs = {p.pid: set(terms(p.passage)) for p in CORPUS}

    def idf(term):
        df = sum(term in d for d in docs.values())
        return math.log(1 + (n - df + 0.5) / (df + 0.5))

    for i, pair in enumerate(CORPUS):
        q = sorted(set(terms(pair.query)))
        matched = sum(idf(t) for t in q if t in docs[pair.pid])
        assert feats["matched_idf_sum"][i] == pytest.approx(matched)
        assert feats["idf_coverage"][i] == pytest.approx(matched / sum(idf(t) for t in q))
    groups = [p.qid for p in CORPUS]
    const = rg.constant_within_groups(feats.matrix(QUERY_FEATURES + PASSAGE_FEATURES), groups)
    assert const.tolist() == [True] * 3 + [False] * 4
    assert feats.matrix().shape == (6, 5)  # the original five columns are unchanged


# ------------------------------------------------------------------------------ nDCG, ceiling, null


def test_ridge_predictions_scored_by_ndcg():
    rng = np.random.default_rng(14)
    n_q, per_q = 8, 6
    groups = np.repeat(np.arange(n_q), per_q)
    pairs = [Pair(f"q{g}", f"p{i}", "q", "p") for i, g in enumerate(groups)]
    grade = rng.integers(0, 3, size=groups.size)
    qrels = {f"q{g}": {} for g in range(n_q)}
    for p, lab in zip(pairs, grade):
        qrels[p.qid][p.pid] = int(lab)
    x = np.column_stack([grade + 0.5 * rng.normal(size=groups.size), rng.normal(size=groups.size)])
    res = rg.ridge_evaluation(
        x, grade / 2, groups, x, grade / 2, groups, per_query=True, test_pairs=pairs, test_qrels=qrels,
        train_pairs=pairs, train_qrels=qrels,
    )  # fmt: skip
    model = rg.GroupedRidgeCV().fit(x, rg.standardise_per_query(grade / 2, groups), groups)
    assert res["ndcg10_ood"] == pytest.approx(ndcg_at_10(scores_by_query(pairs, model.predict(x)), qrels))
    oof = rg.cv_predictions(x, rg.standardise_per_query(grade / 2, groups), groups)
    assert res["ndcg10_cv"] == pytest.approx(ndcg_at_10(scores_by_query(pairs, oof), qrels))
    assert res["ndcg10_ood"] > ndcg_at_10(scores_by_query(pairs, -model.predict(x)), qrels)


def test_ceiling_sees_what_the_coalitions_miss():
    rng = np.random.default_rng(15)
    acts, groups = _queries(12, 6, rng, n_feat=40, query_effect=0.3)
    y = acts[:, 30] - acts[:, 31] + 0.2 * rng.normal(size=acts.shape[0])
    coalitions = [[0, 1, 2], [3, 4], [5, 6, 7, 8]]  # none contains neurons 30 or 31
    macro = acts @ rg.coalition_matrix(coalitions, 40)
    method = rg.ridge_evaluation(macro, y, groups)["r2_cv"]
    ceil = rg.ridge_ceiling(acts, y, groups, n_pcs=(5,))
    assert set(ceil) == {"all_neurons", "pcs_5"} and ceil["pcs_5"]["n_features"] == 5
    assert ceil["all_neurons"]["r2_cv"] > 0.7 > 0.2 > method


def test_random_set_null():
    rng_sizes = [3, 2]
    seen = []

    def score(coalitions):
        assert sorted(map(len, coalitions), reverse=True) == rng_sizes
        members = [i for c in coalitions for i in c]
        assert len(set(members)) == 5 and max(members) < 10  # disjoint, inside the layer
        seen.append(coalitions)
        return float(sum(members))

    res = rg.random_set_null(score, rng_sizes, 10, n_sets=30, seed=2, observed=30.0)
    rng = np.random.default_rng(2)
    want = [float(sum(rng.permutation(10)[:5])) for _ in range(30)]
    assert res["values"] == want and res["mean"] == pytest.approx(np.mean(want))
    assert res["percentile"] == pytest.approx(
        (np.sum(np.array(want) < 30) + 0.5 * np.sum(np.array(want) == 30)) / 30
    )
    assert res["z"] == pytest.approx((30 - np.mean(want)) / np.std(want, ddof=1))
    with pytest.raises(ConfigError, match="fit into 4 neurons"):
        rg.random_set_null(score, [3, 2], 4)


def test_by_position_runs_each_read_position():
    rng = np.random.default_rng(16)
    heur, groups = _queries(8, 5, rng, n_feat=2)
    acts = {"mean": heur @ [[1.0], [2.0]], "readout": rng.normal(size=(40, 1))}
    res = rg.by_position(rg.alignment_evaluation, acts, heur_train=heur, groups_train=groups)
    assert set(res) == {"mean", "readout"}
    assert res["mean"]["r2_cv"] == pytest.approx(1.0)
    assert res["readout"] == rg.alignment_evaluation(acts["readout"], heur, groups)
    with pytest.raises(DataError, match="same positions"):
        rg.by_position(rg.alignment_evaluation, acts, {"mean": acts["mean"]}, heur_train=heur)


def test_a_neuron_off_on_every_training_input_cannot_blow_up_ood_ridge():
    """Neurons off on every training input vary only by float32 rounding (~1e-10) and are on
    out of domain: standardised to unit variance, that would put the OOD rows 10⁸ standard
    deviations out (R² about −1e15 before). They count as constant: the OOD R² stays that of a
    model without them, and a real feature beside them is still used."""
    from hedonic_neurons.evaluate.regression import ridge_evaluation

    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(20), 5)
    y = rng.normal(size=100)
    off = -1e-7 + 1e-10 * rng.normal(size=(100, 2))
    real = y + rng.normal(scale=0.5, size=100)
    y_ood = rng.normal(size=40)
    x_ood = np.column_stack([rng.uniform(0, 0.5, size=(40, 2)), y_ood + rng.normal(scale=0.5, size=40)])
    got = ridge_evaluation(np.column_stack([off, real]), y, groups, x_ood, y_ood, groups[:40], seed=0)
    alone = ridge_evaluation(real[:, None], y, groups, x_ood[:, 2:], y_ood, groups[:40], seed=0)
    assert got["r2_ood"] == pytest.approx(alone["r2_ood"], abs=1e-9)
    assert got["r2_cv"] == pytest.approx(alone["r2_cv"], abs=1e-9)
    assert got["r2_ood"] > 0.5
