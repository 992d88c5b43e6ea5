"""Alignment with IR heuristics and coalitions as macro-features, without label-shift artefacts.

Both take *coalition activations*: for each (query, passage) pair, the mean over a coalition's
neurons of the neuron's pooled activation, read at one position (the all-token mean, the
readout token or the query tokens: the caller records them and passes one array per position,
:func:`by_position` runs an evaluation for each). :func:`coalition_matrix` turns a list of
coalitions into the (n, K) averaging matrix, so a recorder can project pooled activations batch
by batch and never keep a pairs x neurons array for a large model.

Measured on real runs, a score fitted on MS MARCO and computed on TREC DL mostly measures the
shift of the target between the two sets (a constant predictor at the training mean scores
R² = -0.93 on DL19 relevance, and so does every method). So the evaluations here report:

- **in-domain R² under query-grouped cross-validation** (the primary number): folds are
  ``sklearn.model_selection.GroupKFold`` over query ids, so no query has pairs on both sides of
  a split, and the ridge α is chosen by a second grouped cross-validation inside each
  training fold (:class:`GroupedRidgeCV`);
- **OOD R²** beside **OOD R² with intercept and scale refitted** on a held-out slice of
  the OOD queries (:func:`refit_r2`), both on the remaining queries;
- for relevance, labels **standardised per query** (:func:`standardise_per_query`), so a
  predictor that is constant within a query cannot score above 0, and the predictions scored
  by **nDCG@10** as well;
- a **ceiling** (ridge on all neurons, and on the top principal components:
  :func:`ridge_ceiling`) and a **random-set null** (random disjoint size-matched coalitions:
  :func:`random_set_null`).

Every evaluation returns a plain dict of floats (and lists of floats), ready for results.json.
:func:`alignment_r2` and :func:`macro_feature_r2` are the earlier train-on-MS-MARCO /
test-on-DL scores, kept for comparison.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.linear_model import LinearRegression, RidgeCV
from sklearn.metrics import r2_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from hedonic_neurons.data.loaders import Pair
from hedonic_neurons.data.metrics import ndcg_at_10, scores_by_query
from hedonic_neurons.errors import ConfigError, DataError, HedonicError, arg

RIDGE_ALPHAS = np.logspace(-3, 3, 13)


def coalition_matrix(coalitions: Sequence[Sequence[int]], n: int) -> np.ndarray:
    """(n, K) matrix whose column k averages the neurons of coalition k."""
    mat = np.zeros((n, len(coalitions)), dtype=np.float64)
    for k, members in enumerate(coalitions):
        if len(members) == 0:
            raise HedonicError(f"coalition {k} is empty; expected at least one neuron")
        mat[np.asarray(members, dtype=np.int64), k] = 1.0 / len(members)
    return mat


def _check(x: np.ndarray, y: np.ndarray, what: str) -> None:
    if x.ndim != 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise HedonicError(
            f"{what}: expected X (pairs, features) and y (pairs,), got {x.shape} and {y.shape}"
        )
    if x.shape[0] < 3:
        raise HedonicError(f"{what}: needs at least 3 pairs, got {x.shape[0]}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise HedonicError(f"{what}: non-finite values in the inputs")


def alignment_r2(
    coal_train: np.ndarray, heur_train: np.ndarray, coal_test: np.ndarray, heur_test: np.ndarray
) -> np.ndarray:
    """Out-of-domain R² of each coalition's activation regressed on the IR heuristics.

    ``coal_*``: (pairs, K) coalition activations; ``heur_*``: (pairs, F) heuristic features (BM25,
    IDF statistics, coverage). A linear regression per coalition is fitted on the training pairs
    (MS MARCO) and scored on the test pairs (TREC DL). Returns (K,) R² values (can be negative).
    """
    coal_train, coal_test = np.asarray(coal_train, float), np.asarray(coal_test, float)
    heur_train, heur_test = np.asarray(heur_train, float), np.asarray(heur_test, float)
    out = np.empty(coal_train.shape[1])
    for k in range(coal_train.shape[1]):
        _check(heur_train, coal_train[:, k], "alignment (train)")
        _check(heur_test, coal_test[:, k], "alignment (test)")
        model = make_pipeline(StandardScaler(), LinearRegression()).fit(heur_train, coal_train[:, k])
        out[k] = _r2(coal_test[:, k], model.predict(heur_test))
    return out


def _r2(y: np.ndarray, pred: np.ndarray) -> float:
    """R² of ``pred`` against ``y``; NaN for a target with no variance to explain.

    A target counts as constant when its range is at most 1e-6 of its largest magnitude: the
    variance of values equal up to float32 rounding (a query-level feature repeated for each of
    the query's passages, say: ``np.var`` of ten copies of 0.3 is 3e-33, not 0) is rounding
    error, and R² against it would be any huge number.
    """
    y = np.asarray(y, dtype=np.float64)
    if y.size == 0 or np.ptp(y) <= 1e-6 * np.abs(y).max():
        return float("nan")
    return float(r2_score(y, pred))


def macro_feature_r2(
    coal_train: np.ndarray, y_train: np.ndarray, coal_test: np.ndarray, y_test: np.ndarray, cv: int = 5
) -> tuple[float, float]:
    """Ridge regression of the task target on standardised coalition activations (macro-features).

    α is chosen by ``cv``-fold cross-validation on the training pairs over ``RIDGE_ALPHAS``; the
    returned pair is (out-of-domain R² on the test pairs, chosen α).
    """
    coal_train, coal_test = np.asarray(coal_train, float), np.asarray(coal_test, float)
    y_train, y_test = np.asarray(y_train, float), np.asarray(y_test, float)
    _check(coal_train, y_train, "macro-features (train)")
    _check(coal_test, y_test, "macro-features (test)")
    model = make_pipeline(StandardScaler(), RidgeCV(alphas=RIDGE_ALPHAS, cv=min(cv, len(y_train))))
    model.fit(coal_train, y_train)
    return _r2(y_test, model.predict(coal_test)), float(model[-1].alpha_)


# ------------------------------------------------------------------------------ query groups


def _matrix(x: Any, name: str, rows: int | None = None) -> np.ndarray:
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{arg(name)} must be a numeric array (pairs, columns)") from None
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DataError(f"{arg(name)} must be a non-empty (pairs, columns) array, got shape {arr.shape}")
    if rows is not None and arr.shape[0] != rows:
        raise DataError(f"{arg(name)} has {arr.shape[0]} rows; expected one per pair ({rows})")
    if not np.isfinite(arr).all():
        raise DataError(f"{arg(name)} has {int((~np.isfinite(arr)).sum())} non-finite values")
    return arr


def _vector(y: Any, name: str, rows: int | None = None) -> np.ndarray:
    arr = _matrix(y, name, rows)
    if arr.shape[1] != 1:
        raise DataError(f"{arg(name)} must be one value per pair, got shape {np.shape(y)}")
    return arr[:, 0]


def _codes(groups: Any, n: int, name: str = "groups") -> np.ndarray:
    """Query ids as integer codes 0..G-1, one per pair."""
    g = np.asarray(groups)
    if g.ndim != 1 or g.size != n:
        raise DataError(f"{arg(name)} must give one query id per pair ({n}), got shape {g.shape}")
    return np.unique(g, return_inverse=True)[1].ravel()


def grouped_folds(groups: Any, n_splits: int = 5) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) index arrays of ``sklearn.model_selection.GroupKFold`` over query ids.

    Every pair of a query is on the same side of every split. ``n_splits`` is lowered to the
    number of distinct queries when there are fewer; at least 2 queries are needed.
    """
    from sklearn.model_selection import GroupKFold

    g = np.asarray(groups)
    if g.ndim != 1:
        raise DataError(f"{arg('groups')} must be a 1-d array of query ids, got shape {g.shape}")
    codes = _codes(g, g.size)
    n_groups = int(codes.max()) + 1 if codes.size else 0
    if isinstance(n_splits, bool) or not isinstance(n_splits, (int, np.integer)) or n_splits < 2:
        raise ConfigError(f"{arg('n_splits')} must be an integer >= 2, got {n_splits!r}")
    if n_groups < 2:
        raise DataError(f"query-grouped cross-validation needs pairs from at least 2 queries, got {n_groups}")
    cv = GroupKFold(n_splits=min(int(n_splits), n_groups))
    return [(tr, te) for tr, te in cv.split(np.zeros((codes.size, 1)), groups=codes)]


def standardise_per_query(y: Any, groups: Any) -> np.ndarray:
    """Labels centred and scaled within each query: (y - query mean) / query sd (ddof 0).

    A query whose labels are all equal gets 0 for each of its pairs (it carries no ranking
    information). Afterwards every query has mean 0, so a predictor that is constant within
    each query scores R² <= 0 against these labels: sum over a query of (y - c)² =
    sum of y² + m c² >= sum of y² for any constant c (m the number of pairs of the query).
    """
    y = _vector(y, "y")
    codes = _codes(groups, y.size)
    count = np.bincount(codes).astype(np.float64)
    mean = np.bincount(codes, weights=y) / count
    dev = y - mean[codes]
    sd = np.sqrt(np.bincount(codes, weights=dev**2) / count)
    scale = np.where(sd > 1e-12 * (1.0 + np.abs(mean)), sd, np.inf)
    return dev / scale[codes]


def constant_within_groups(x: Any, groups: Any, *, rtol: float = 1e-9) -> np.ndarray:
    """One bool per column of ``x``: True when the column takes a single value within every query.

    Such a regressor (the query's IDF statistics, for instance) can only move a whole query up
    or down; it says nothing about which passage of the query is which. Equality is up to
    ``rtol`` times the column's largest magnitude.
    """
    arr = _matrix(x, "x")
    codes = _codes(groups, arr.shape[0])
    order = np.argsort(codes, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(codes[order]) != 0])
    srt = arr[order]
    spread = np.maximum.reduceat(srt, starts, axis=0) - np.minimum.reduceat(srt, starts, axis=0)
    return spread.max(axis=0) <= rtol * np.maximum(np.abs(arr).max(axis=0), 1e-300)


def _demean(x: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Subtract each query's column means."""
    count = np.bincount(codes).astype(np.float64)
    means = np.stack([np.bincount(codes, weights=col) / count for col in x.T], axis=1)
    return x - means[codes]


# ------------------------------------------------------------------------------ ridge


#: A feature whose standard deviation over the training rows is below this (relative to
#: max(1, |mean|)) counts as constant. The features are float32 activations or sums of them: a
#: neuron that is off on every training input varies only by float32 rounding (~1e-10), and
#: standardising that noise to unit variance turns the neuron's real values on other inputs into
#: shifts of 10⁸ standard deviations (out-of-domain ridge R² of −6e9 was seen on a planted
#: MiniLM whose planted neurons are off at the query tokens of MS MARCO and on at DL19's).
CONSTANT_FEATURE_SCALE = 1e-6


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column means and scales as ``StandardScaler`` computes them (ddof 0), except that a
    feature constant up to float32 rounding (:data:`CONSTANT_FEATURE_SCALE`) gets scale ∞: it
    standardises to 0 on every row, so the ridge cannot use it."""
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < CONSTANT_FEATURE_SCALE * np.maximum(1.0, np.abs(mean))] = np.inf
    return mean, scale


def ridge_path(x_train: Any, y_train: Any, x_eval: Any, alphas: Sequence[float] = RIDGE_ALPHAS) -> np.ndarray:
    """Predictions on ``x_eval`` of ridge fitted on ``(x_train, y_train)``, for every α at once.

    The same model as ``make_pipeline(StandardScaler(), Ridge(alpha))``: features standardised
    on the training rows, unpenalised intercept. One symmetric eigendecomposition serves the
    whole α grid (:func:`ridge_coefficients`). Returns (len(alphas), eval rows).
    """
    xe = _matrix(x_eval, "x_eval")
    mean, scale, coef, ybar = ridge_coefficients(x_train, y_train, alphas)
    if xe.shape[1] != mean.size:
        raise DataError(f"x_eval has {xe.shape[1]} columns; expected {mean.size} like x_train")
    return (((xe - mean) / scale) @ coef).T + ybar


def ridge_coefficients(
    x_train: Any, y_train: Any, alphas: Sequence[float] = RIDGE_ALPHAS
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """``(mean, scale, coef, intercept)`` of ridge on standardised features for every α:
    a prediction is ``((x - mean) / scale) @ coef + intercept``, coef (features, len(alphas)).

    One symmetric eigendecomposition serves the whole α grid: of the Gram matrix X Xᵀ when there
    are fewer rows than features (all neurons of a layer), of Xᵀ X otherwise. A constant feature
    has scale ∞ (it contributes nothing).
    """
    xt = _matrix(x_train, "x_train")
    yt = _vector(y_train, "y_train", xt.shape[0])
    a = np.asarray(alphas, dtype=np.float64).ravel()
    if a.size == 0 or not (np.isfinite(a).all() and (a > 0).all()):
        raise ConfigError(f"{arg('alphas')} must be positive finite ridge penalties, got {list(a)}")
    mean, scale = _standardise(xt)
    xs = (xt - mean) / scale
    ybar = float(yt.mean())
    yc = yt - ybar
    if xs.shape[0] <= xs.shape[1]:  # kernel form: coef = Xᵀ U diag(1 / (λ + α)) Uᵀ y
        lam, u = np.linalg.eigh(xs @ xs.T)
        lam = np.clip(lam, 0.0, None)
        coef = xs.T @ (u @ ((u.T @ yc)[:, None] / (lam[:, None] + a[None, :])))
    else:  # primal form: coef = V diag(1 / (λ + α)) Vᵀ Xᵀ y
        lam, v = np.linalg.eigh(xs.T @ xs)
        lam = np.clip(lam, 0.0, None)
        coef = v @ ((v.T @ (xs.T @ yc))[:, None] / (lam[:, None] + a[None, :]))
    return mean, scale, coef, ybar


class GroupedRidgeCV:
    """Ridge on standardised features with α chosen by query-grouped cross-validation.

    ``fit(x, y, groups)`` scores every α in ``alphas`` by the summed squared error over the
    folds of :func:`grouped_folds` (one :func:`ridge_path` per fold), keeps the best (the
    smallest α among equal errors) as ``alpha_`` and refits on all rows. ``cv_mse_`` holds the
    mean squared error of each α; ``predict(x)`` applies the refitted model (its coefficients
    ``coef_``, ``intercept_`` and standardisation ``mean_``, ``scale_`` are kept at fit).
    """

    def __init__(self, alphas: Sequence[float] = RIDGE_ALPHAS, n_splits: int = 5) -> None:
        self.alphas = alphas
        self.n_splits = n_splits

    def fit(self, x: Any, y: Any, groups: Any) -> GroupedRidgeCV:
        x = _matrix(x, "x")
        y = _vector(y, "y", x.shape[0])
        alphas = np.asarray(self.alphas, dtype=np.float64).ravel()
        if alphas.size > 1:
            sse = np.zeros(alphas.size)
            for tr, te in grouped_folds(groups, self.n_splits):
                sse += ((ridge_path(x[tr], y[tr], x[te], alphas) - y[te]) ** 2).sum(axis=1)
            self.cv_mse_ = sse / y.size
            self.alpha_ = float(alphas[int(np.argmin(self.cv_mse_))])
        else:
            _codes(groups, x.shape[0])
            self.cv_mse_ = np.full(alphas.size, np.nan)
            self.alpha_ = float(alphas[0])
        self.mean_, self.scale_, coef, self.intercept_ = ridge_coefficients(x, y, [self.alpha_])
        self.coef_ = coef[:, 0]
        return self

    def predict(self, x: Any) -> np.ndarray:
        x = _matrix(x, "x")
        if x.shape[1] != self.coef_.size:
            raise DataError(f"x has {x.shape[1]} columns; the ridge was fitted on {self.coef_.size}")
        return ((x - self.mean_) / self.scale_) @ self.coef_ + self.intercept_


def _oof(fit_predict: Callable[..., np.ndarray], y: np.ndarray, folds: list) -> np.ndarray:
    """Out-of-fold predictions: each query's pairs predicted by a model fitted without that query."""
    out = np.empty_like(y)
    for tr, te in folds:
        out[te] = fit_predict(tr, te)
    return out


def _r2_columns(y: np.ndarray, pred: np.ndarray) -> list[float]:
    return [_r2(y[:, k], pred[:, k]) for k in range(y.shape[1])]


def refit_r2(y: Any, pred: Any, groups: Any, *, calib_fraction: float = 0.5, seed: int = 0) -> dict[str, Any]:
    """OOD R² as it is and with intercept and scale refitted on a held-out slice of the OOD queries.

    The OOD queries are shuffled with ``numpy.random.default_rng(seed)``; the first
    ``round(calib_fraction * queries)`` (at least 1, at most all but 1) are the calibration
    slice, on which ``y ~ intercept + slope * pred`` is fitted by least squares with
    ``slope >= 0`` (a scale, not a sign flip: a negative least-squares slope becomes 0, and the
    intercept the calibration mean). Both scores are on the remaining (evaluation) queries:
    ``r2_eval`` of ``pred`` itself and ``r2_refit`` of the refitted prediction. The refit
    removes an increasing affine change of the target between the training and the OOD set (a
    shift of the labels, a change of scale) and nothing else.
    """
    y = _vector(y, "y")
    pred = _vector(pred, "pred", y.size)
    codes = _codes(groups, y.size)
    n_q = int(codes.max()) + 1
    if n_q < 2:
        raise DataError(
            f"the refit needs OOD pairs from at least 2 queries (calibration, evaluation), got {n_q}"
        )
    if (
        isinstance(calib_fraction, bool)
        or not isinstance(calib_fraction, (int, float))
        or not 0 < calib_fraction < 1
    ):
        raise ConfigError(f"{arg('calib_fraction')} must be in (0, 1), got {calib_fraction!r}")
    n_cal = min(max(round(calib_fraction * n_q), 1), n_q - 1)
    calib = np.isin(codes, np.random.default_rng(seed).permutation(n_q)[:n_cal])
    pc, yc = pred[calib], y[calib]
    var = np.var(pc)
    slope = max(float(np.mean((pc - pc.mean()) * (yc - yc.mean())) / var), 0.0) if var > 0 else 0.0
    intercept = float(yc.mean() - slope * pc.mean())
    ev = ~calib
    return {
        "r2_eval": _r2(y[ev], pred[ev]),
        "r2_refit": _r2(y[ev], intercept + slope * pred[ev]),
        "intercept": intercept,
        "slope": slope,
        "n_calib_queries": n_cal,
        "n_eval_queries": n_q - n_cal,
        "n_calib_pairs": int(calib.sum()),
        "n_eval_pairs": int(ev.sum()),
    }


def ranking_ndcg(pairs: Sequence[Pair], scores: Any, qrels: dict[str, dict[str, int]]) -> float:
    """nDCG@10 (trec_eval ``ndcg_cut_10``) of ranking each query's passages by ``scores``."""
    s = _vector(scores, "scores", len(pairs))
    return ndcg_at_10(scores_by_query(pairs, s.tolist()), qrels)


def _check_pcs(n_pcs: Any) -> None:
    if n_pcs is not None and (
        isinstance(n_pcs, bool) or not isinstance(n_pcs, (int, np.integer)) or n_pcs < 1
    ):
        raise ConfigError(f"{arg('n_pcs')} must be a positive integer or None, got {n_pcs!r}")


def _fit_ridge(
    x: np.ndarray, y: np.ndarray, codes: np.ndarray, alphas: Any, n_splits: int, n_pcs: int | None, seed: int
) -> tuple[Callable[[np.ndarray], np.ndarray], GroupedRidgeCV]:
    """Fit (PCA, then) :class:`GroupedRidgeCV` on these rows; the predictor and the ridge model."""
    reduce = None
    if n_pcs is not None:
        from sklearn.decomposition import PCA

        with np.errstate(invalid="ignore", divide="ignore"):  # constant features: no variance ratio
            reduce = PCA(n_components=min(int(n_pcs), *x.shape), random_state=seed).fit(x)
        x = reduce.transform(x)
    model = GroupedRidgeCV(alphas, n_splits).fit(x, y, codes)
    return (lambda xb: model.predict(reduce.transform(xb) if reduce is not None else xb)), model


def cv_predictions(
    x: Any,
    y: Any,
    groups: Any,
    *,
    alphas: Sequence[float] = RIDGE_ALPHAS,
    n_splits: int = 5,
    n_pcs: int | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Out-of-fold ridge predictions under query-grouped cross-validation.

    The folds are :func:`grouped_folds` of ``groups``; each fold's pairs are predicted by a
    :class:`GroupedRidgeCV` (α chosen by a grouped cross-validation inside the training fold;
    with ``n_pcs``, on the top principal components of the training fold) fitted on the other
    folds' queries only, so a pair's prediction never depends on any label of its own query.
    """
    x = _matrix(x, "x")
    y = _vector(y, "y", x.shape[0])
    codes = _codes(groups, x.shape[0])
    _check_pcs(n_pcs)
    return _oof(
        lambda tr, te: _fit_ridge(x[tr], y[tr], codes[tr], alphas, n_splits, n_pcs, seed)[0](x[te]),
        y,
        grouped_folds(codes, n_splits),
    )


def ridge_evaluation(
    coal_train: Any,
    y_train: Any,
    groups_train: Any,
    coal_test: Any = None,
    y_test: Any = None,
    groups_test: Any = None,
    *,
    per_query: bool = False,
    n_pcs: int | None = None,
    nested: bool = True,
    alphas: Sequence[float] = RIDGE_ALPHAS,
    n_splits: int = 5,
    calib_fraction: float = 0.5,
    seed: int = 0,
    train_pairs: Sequence[Pair] | None = None,
    train_qrels: dict[str, dict[str, int]] | None = None,
    test_pairs: Sequence[Pair] | None = None,
    test_qrels: dict[str, dict[str, int]] | None = None,
    predictions: bool = False,
) -> dict[str, Any]:
    """Ridge regression of the task target on macro-features (coalition activations), scored fairly.

    ``coal_*``: (pairs, K) features (coalition activations, or every neuron for a ceiling);
    ``y_*``: the target per pair; ``groups_*``: the query id of each pair. ``per_query=True``
    (for relevance) standardises the labels within each query first
    (:func:`standardise_per_query`), on both sets. ``n_pcs``: ridge on the top ``n_pcs``
    principal components of the features instead (``sklearn.decomposition.PCA`` fitted on each
    training fold's rows only). The model is :class:`GroupedRidgeCV` (standardised features,
    α from ``alphas`` by query-grouped ``n_splits``-fold cross-validation). ``nested=False``
    chooses α once on all training pairs and keeps it in every fold of ``r2_cv`` (about
    2 n_splits + 1 fits instead of (n_splits + 1)²; ``r2_cv`` is then optimistic by the choice of
    that one number).

    Returns ``r2_cv`` (the primary number: R² of the out-of-fold predictions over all
    training pairs, the folds grouped by query and α chosen inside each training fold),
    with ``predictions=True`` also ``cv_predictions`` and ``cv_targets`` (the out-of-fold
    predictions and the targets they are scored against, per training pair: for a query
    bootstrap of ``r2_cv``),
    ``alpha`` (chosen on all training pairs), ``alpha_nested``, ``n_splits``,
    ``n_train_queries``, ``n_features``, ``per_query``; with a test set also ``r2_ood`` (fit on
    all training pairs, R² on all test pairs), ``r2_ood_constant`` (the training mean as the
    prediction: what label shift alone scores), ``r2_ood_eval`` / ``r2_ood_refit`` /
    ``ood_intercept`` / ``ood_slope`` and the slice sizes from :func:`refit_r2`,
    ``n_test_queries``; with pairs and qrels, ``ndcg10_cv`` (out-of-fold predictions on the
    training queries) and ``ndcg10_ood`` (test predictions) from :func:`ranking_ndcg`.
    """
    x = _matrix(coal_train, "coal_train")
    y = _vector(y_train, "y_train", x.shape[0])
    codes = _codes(groups_train, x.shape[0], "groups_train")
    if per_query:
        y = standardise_per_query(y, codes)
    _check_pcs(n_pcs)
    folds = grouped_folds(codes, n_splits)
    predict, model = _fit_ridge(x, y, codes, alphas, n_splits, n_pcs, seed)
    fold_alphas = alphas if nested else [model.alpha_]
    oof = cv_predictions(x, y, codes, alphas=fold_alphas, n_splits=n_splits, n_pcs=n_pcs, seed=seed)
    out: dict[str, Any] = {
        "r2_cv": _r2(y, oof),
        "alpha": model.alpha_,
        "alpha_nested": bool(nested),
        "n_splits": len(folds),
        "n_train_queries": int(codes.max()) + 1,
        "n_features": int(x.shape[1]) if n_pcs is None else min(int(n_pcs), *x.shape),
        "per_query": bool(per_query),
    }
    if predictions:
        out["cv_predictions"], out["cv_targets"] = oof, y
    if train_pairs is not None and train_qrels is not None:
        out["ndcg10_cv"] = ranking_ndcg(train_pairs, oof, train_qrels)
    if coal_test is not None:
        xt = _matrix(coal_test, "coal_test")
        if xt.shape[1] != x.shape[1]:
            raise DataError(f"coal_test has {xt.shape[1]} columns; expected {x.shape[1]} like coal_train")
        yt = _vector(y_test, "y_test", xt.shape[0])
        ct = _codes(groups_test, xt.shape[0], "groups_test")
        if per_query:
            yt = standardise_per_query(yt, ct)
        pred = predict(xt)
        out["r2_ood"] = _r2(yt, pred)
        out["r2_ood_constant"] = _r2(yt, np.full_like(yt, y.mean()))
        refit = refit_r2(yt, pred, ct, calib_fraction=calib_fraction, seed=seed)
        out["r2_ood_eval"], out["r2_ood_refit"] = refit.pop("r2_eval"), refit.pop("r2_refit")
        out.update({f"ood_{k}": v for k, v in refit.items()})
        out["n_test_queries"] = int(ct.max()) + 1
        if test_pairs is not None and test_qrels is not None:
            out["ndcg10_ood"] = ranking_ndcg(test_pairs, pred, test_qrels)
    return out


# ------------------------------------------------------------------------------ alignment


def alignment_evaluation(
    coal_train: Any,
    heur_train: Any,
    groups_train: Any,
    coal_test: Any = None,
    heur_test: Any = None,
    groups_test: Any = None,
    *,
    feature_names: Sequence[str] | None = None,
    drop_constant: bool = True,
    within_query: bool = False,
    n_splits: int = 5,
    calib_fraction: float = 0.5,
    seed: int = 0,
    predictions: bool = False,
) -> dict[str, Any]:
    """How well the IR heuristics explain each coalition's activation, in and out of domain.

    ``coal_*``: (pairs, K) coalition activations; ``heur_*``: (pairs, F) heuristic features;
    ``groups_*``: the query id of each pair. One linear regression per coalition (least squares
    on the heuristics, with intercept). Heuristics that are constant within every training query
    (:func:`constant_within_groups`: query-level IDF statistics, say) are dropped with
    ``drop_constant`` and named in ``dropped``: they can only shift a whole query.
    ``within_query=True`` subtracts each query's mean from activations and heuristics first, so
    only the variation between the passages of a query is explained.

    Returns ``r2_cv`` (mean over coalitions of the R² of out-of-fold predictions under
    query-grouped cross-validation: the primary number), ``r2_cv_per_coalition``,
    with ``predictions=True`` ``cv_predictions`` and ``cv_targets`` ((pairs, K) out-of-fold
    predictions and activations); with a
    test set, fitted on all training pairs: ``r2_ood`` (R² on all test pairs),
    ``r2_ood_eval`` and ``r2_ood_refit`` (:func:`refit_r2`, per coalition, on the same
    evaluation queries), each a mean over coalitions with a ``*_per_coalition`` list; and
    ``features``, ``dropped``, ``n_splits``, ``n_coalitions``, ``within_query``. Means skip
    coalitions whose activation is constant (R² undefined).
    """
    from sklearn.linear_model import LinearRegression

    h = _matrix(heur_train, "heur_train")
    c = _matrix(coal_train, "coal_train", h.shape[0])
    codes = _codes(groups_train, h.shape[0], "groups_train")
    names = [f"x{j}" for j in range(h.shape[1])] if feature_names is None else list(feature_names)
    if len(names) != h.shape[1]:
        raise DataError(f"{len(names)} feature names for {h.shape[1]} heuristic columns; expected one each")
    if within_query:
        h, c = _demean(h, codes), _demean(c, codes)
    keep = ~constant_within_groups(h, codes) if drop_constant else np.ones(h.shape[1], dtype=bool)
    if not keep.any():
        raise DataError(
            f"every heuristic ({', '.join(names)}) is constant within each query; expected at least one "
            "that varies between the passages of a query (bm25, coverage)"
        )
    h = h[:, keep]

    def fit(rows: np.ndarray) -> LinearRegression:
        return LinearRegression().fit(h[rows], c[rows])

    folds = grouped_folds(codes, n_splits)
    oof = _oof(lambda tr, te: fit(tr).predict(h[te]).reshape(len(te), -1), c, folds)
    per = _r2_columns(c, oof)
    out: dict[str, Any] = {
        "r2_cv": _nanmean(per),
        "r2_cv_per_coalition": per,
        "features": [n for n, k in zip(names, keep) if k],
        "dropped": [n for n, k in zip(names, keep) if not k],
        "n_splits": len(folds),
        "n_coalitions": int(c.shape[1]),
        "within_query": bool(within_query),
    }
    if predictions:
        out["cv_predictions"], out["cv_targets"] = oof, c
    if coal_test is not None:
        ht = _matrix(heur_test, "heur_test")
        if ht.shape[1] != len(names):
            raise DataError(f"heur_test has {ht.shape[1]} columns; expected {len(names)} like heur_train")
        ct = _matrix(coal_test, "coal_test", ht.shape[0])
        if ct.shape[1] != c.shape[1]:
            raise DataError(f"coal_test has {ct.shape[1]} coalitions; expected {c.shape[1]} like coal_train")
        gt = _codes(groups_test, ht.shape[0], "groups_test")
        if within_query:
            ht, ct = _demean(ht, gt), _demean(ct, gt)
        pred = fit(np.arange(h.shape[0])).predict(ht[:, keep]).reshape(ct.shape)
        refits = [
            refit_r2(ct[:, k], pred[:, k], gt, calib_fraction=calib_fraction, seed=seed)
            for k in range(ct.shape[1])
        ]
        for key, vals in (
            ("r2_ood", _r2_columns(ct, pred)),
            ("r2_ood_eval", [r["r2_eval"] for r in refits]),
            ("r2_ood_refit", [r["r2_refit"] for r in refits]),
        ):
            out[key], out[f"{key}_per_coalition"] = _nanmean(vals), vals
    return out


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


# ------------------------------------------------------------------------------ ceiling and null


def ridge_ceiling(
    acts_train: Any,
    y_train: Any,
    groups_train: Any,
    acts_test: Any = None,
    y_test: Any = None,
    groups_test: Any = None,
    *,
    n_pcs: Sequence[int] = (10, 50),
    nested: bool = False,
    **kwargs: Any,
) -> dict[str, dict[str, Any]]:
    """What any choice of macro-features could reach: :func:`ridge_evaluation` on every neuron.

    ``acts_*``: (pairs, n) pooled activations of all n neurons of the layer. Returns
    ``{"all_neurons": ..., "pcs_<k>": ...}``, the second for each k in ``n_pcs`` (ridge on the
    top k principal components, fitted per training fold). ``kwargs`` go to
    :func:`ridge_evaluation` (``per_query``, pairs and qrels for nDCG@10, ...). Each fit costs
    one eigendecomposition of the pairs x pairs Gram matrix for the whole α grid; by default
    (``nested=False``) α is chosen once on all training pairs, which keeps the all-neuron
    ceiling to 2 n_splits + 1 such fits (800 pairs x 14,336 neurons, 80 queries: 33 s on a busy
    2-core machine, against 65 s nested).
    """

    def run(k: int | None) -> dict[str, Any]:
        return ridge_evaluation(
            acts_train,
            y_train,
            groups_train,
            acts_test,
            y_test,
            groups_test,
            n_pcs=k,
            nested=nested,
            **kwargs,
        )

    out = {"all_neurons": run(None)}
    for k in n_pcs:
        out[f"pcs_{int(k)}"] = run(int(k))
    return out


def random_coalitions(sizes: Sequence[int], n: int, rng: np.random.Generator) -> list[list[int]]:
    """Disjoint random coalitions of the given sizes from neurons 0..n-1 (one permutation, cut)."""
    sizes = [int(s) for s in sizes]
    if not sizes or min(sizes) < 1 or sum(sizes) > n:
        raise ConfigError(
            f"random coalitions need sizes >= 1 that fit into {n} neurons together, got {sizes}"
        )
    perm = rng.permutation(n)
    return [sorted(p.tolist()) for p in np.split(perm[: sum(sizes)], np.cumsum(sizes)[:-1])]


def random_set_null(
    score: Callable[[list[list[int]]], float],
    sizes: Sequence[int],
    n: int,
    *,
    n_sets: int = 20,
    seed: int = 0,
    observed: float | None = None,
) -> dict[str, Any]:
    """The score of random size-matched coalitions: what a method's number must beat.

    ``score(coalitions) -> float`` is the evaluation to repeat (for instance the ``r2_cv`` of
    :func:`ridge_evaluation` on ``acts @ coalition_matrix(coalitions, n)``); each of ``n_sets``
    draws is a set of disjoint random coalitions with the method's ``sizes``
    (:func:`random_coalitions`, generator ``numpy.random.default_rng(seed)``). Returns ``mean``,
    ``sd`` (ddof 1), ``q05``, ``q50``, ``q95``, ``n_sets``, ``values``; with ``observed`` also
    ``percentile`` (fraction of the null below it, ties counting half) and ``z``. NaN scores are
    dropped from the summary (``n_sets`` counts the finite ones).
    """
    if isinstance(n_sets, bool) or not isinstance(n_sets, (int, np.integer)) or n_sets < 2:
        raise ConfigError(f"{arg('n_sets')} must be an integer >= 2, got {n_sets!r}")
    rng = np.random.default_rng(seed)
    values = [float(score(random_coalitions(sizes, n, rng))) for _ in range(int(n_sets))]
    finite = np.array([v for v in values if np.isfinite(v)])
    if finite.size < 2:
        raise DataError(f"only {finite.size} of {n_sets} random coalition sets gave a finite score")
    out: dict[str, Any] = {
        "mean": float(finite.mean()),
        "sd": float(finite.std(ddof=1)),
        "q05": float(np.quantile(finite, 0.05)),
        "q50": float(np.quantile(finite, 0.5)),
        "q95": float(np.quantile(finite, 0.95)),
        "n_sets": int(finite.size),
        "values": values,
    }
    if observed is not None:
        obs = float(observed)
        out["percentile"] = float(((finite < obs).sum() + 0.5 * (finite == obs).sum()) / finite.size)
        sd = out["sd"]
        out["z"] = float((obs - out["mean"]) / sd) if sd > 0 else float("nan")
    return out


# ------------------------------------------------------------------------------ read positions

#: where a pair's activations are read: the mean over all its tokens, the token the model's head
#: reads (the last non-pad token of a decoder, [CLS] of an encoder), the mean over its query tokens
READ_POSITIONS = ("mean", "readout", "query")


def by_position(
    evaluation: Callable[..., dict[str, Any]],
    coal_train: Mapping[str, Any],
    coal_test: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> dict[str, dict[str, Any]]:
    """Run ``evaluation`` (:func:`alignment_evaluation` or :func:`ridge_evaluation`) per read position.

    ``coal_train`` / ``coal_test``: {position: (pairs, K) activations}, e.g. ``"mean"`` (all
    tokens), ``"readout"`` (the token the score is read from), ``"query"`` (the query tokens);
    the test mapping, if given, must have the same positions. ``kwargs`` are the evaluation's
    other arguments by name (``heur_train=``, ``groups_train=``, ...), the same for every
    position. Returns {position: result}.
    """
    if coal_test is not None and set(coal_test) != set(coal_train):
        raise DataError(
            f"test activations are read at {sorted(coal_test)} but training ones at {sorted(coal_train)}; "
            "expected the same positions"
        )
    return {
        pos: evaluation(coal_train=x, coal_test=None if coal_test is None else coal_test[pos], **kwargs)
        for pos, x in coal_train.items()
    }
