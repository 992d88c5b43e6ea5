"""Alignment with IR heuristics and coalitions as macro-features (method A13).

Both take *coalition activations*: for each (query, passage) pair, the mean over a coalition's
neurons of the neuron's pooled activation (``mean`` pooling, A1). :func:`coalition_matrix` turns a
list of coalitions into the (n, K) averaging matrix, so a recorder can project pooled activations
batch by batch and never keep a pairs x neurons array for a large model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.linear_model import LinearRegression, RidgeCV
from sklearn.metrics import r2_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from hedonic_neurons.errors import HedonicError

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
    if np.var(y) == 0:  # a constant target has no variance to explain
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
