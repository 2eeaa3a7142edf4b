"""The numpy split metrics of `ftjax.tasks.metrics` against the scikit-learn and scipy functions
they name: random fixtures, heavy ties (scores rounded to a few values), perfect and constant
predictions, and the undefined cases that give nan."""

import math
import warnings

import numpy as np
import pytest
import scipy.stats
from sklearn import metrics as skm

from ftjax.tasks import metrics as m

RNG = np.random.default_rng(0)
# sklearn's confusion matrix warns when one class is all it sees; those are cases under test
pytestmark = pytest.mark.filterwarnings("ignore:A single label was found")


def _close(a: float, b: float) -> None:
    assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12), (a, b)


def _classes(n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    true = RNG.integers(0, k, n)
    pred = np.where(RNG.random(n) < 0.6, true, RNG.integers(0, k, n))  # better than chance
    return true, pred


def _binary_scores(n: int, tied: bool) -> tuple[np.ndarray, np.ndarray]:
    y = RNG.integers(0, 2, n)
    s = y * 0.5 + RNG.random(n)
    return y, (np.round(s, 1) if tied else s)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_f1_and_mcc_match_sklearn(k):
    for n in (1, 7, 200):
        true, pred = _classes(n, k)
        _close(m.macro_f1(true, pred), skm.f1_score(true, pred, average="macro", zero_division=0))
        _close(m.matthews_corrcoef(true, pred), skm.matthews_corrcoef(true, pred))
        labels = list(range(k))
        expected = skm.f1_score(true, pred, labels=labels, average="macro", zero_division=0)
        _close(m.macro_f1(true, pred, labels=labels), expected)
        if k == 2:
            _close(m.binary_f1(true, pred), skm.f1_score(true, pred, zero_division=0))


def test_f1_and_mcc_perfect_constant_and_empty_cases():
    true = np.array([0, 1, 2, 2, 1])
    assert m.macro_f1(true, true) == 1.0 and m.matthews_corrcoef(true, true) == 1.0
    zeros = np.zeros(5, int)
    for pred in (zeros, true):  # one constant side: sklearn's 0 (MCC) and zero_division=0 (F1)
        _close(m.matthews_corrcoef(true * 0, pred), skm.matthews_corrcoef(true * 0, pred))
    _close(m.matthews_corrcoef(true, zeros), skm.matthews_corrcoef(true, zeros))
    _close(m.binary_f1(zeros, zeros), skm.f1_score(zeros, zeros, zero_division=0))
    _close(m.binary_f1(zeros + 1, zeros), 0.0)
    _close(m.macro_f1(true, zeros), skm.f1_score(true, zeros, average="macro", zero_division=0))
    assert math.isnan(m.macro_f1([], []))


@pytest.mark.parametrize("tied", [False, True])
def test_roc_auc_and_average_precision_match_sklearn(tied):
    for n in (2, 9, 300):
        y, s = _binary_scores(n, tied)
        y[:2] = [0, 1]  # both classes present
        _close(m.roc_auc(y, s), skm.roc_auc_score(y, s))
        _close(m.average_precision(y, s), skm.average_precision_score(y, s))


def test_roc_auc_and_average_precision_edge_cases():
    y = np.array([0, 0, 1, 1, 0, 1])
    perfect = y * 2.0 + 0.1
    assert m.roc_auc(y, perfect) == 1.0 and m.average_precision(y, perfect) == 1.0
    assert m.roc_auc(y, -perfect) == 0.0
    constant = np.full(6, 0.3)  # every pair tied: AUC 1/2, AP the positive rate
    _close(m.roc_auc(y, constant), skm.roc_auc_score(y, constant))
    _close(m.average_precision(y, constant), skm.average_precision_score(y, constant))
    assert math.isnan(m.roc_auc(np.ones(4), RNG.random(4)))  # sklearn raises: one class only
    assert math.isnan(m.roc_auc(np.zeros(4), RNG.random(4)))
    assert math.isnan(m.average_precision(np.zeros(4), RNG.random(4)))  # sklearn warns, gives 0
    all_pos = RNG.random(4)
    _close(
        m.average_precision(np.ones(4), all_pos), skm.average_precision_score(np.ones(4), all_pos)
    )


def _multilabel(n: int, k: int, tied: bool) -> tuple[np.ndarray, np.ndarray]:
    truth = (RNG.random((n, k)) < 0.3).astype(int)
    scores = truth * 0.4 + RNG.random((n, k))
    return truth, (np.round(scores, 1) if tied else scores)


@pytest.mark.parametrize("tied", [False, True])
def test_multilabel_metrics_match_sklearn(tied):
    truth, scores = _multilabel(120, 6, tied)
    pred = (scores > 0.6).astype(int)
    for avg, fn in (("micro", m.multilabel_micro_f1), ("macro", m.multilabel_macro_f1)):
        _close(fn(truth, pred), skm.f1_score(truth, pred, average=avg, zero_division=0))
    _close(m.macro_roc_auc(truth, scores), skm.roc_auc_score(truth, scores, average="macro"))
    _close(
        m.mean_average_precision(truth, scores),
        skm.average_precision_score(truth, scores, average="macro"),
    )


def test_multilabel_skips_undefined_labels():
    truth, scores = _multilabel(50, 5, False)
    truth[:, 1] = 0  # no positives: skipped by both
    truth[:, 3] = 1  # no negatives: skipped by ROC-AUC, AP 1 (defined)
    auc_cols, ap_cols = [0, 2, 4], [0, 2, 3, 4]
    expected_auc = skm.roc_auc_score(truth[:, auc_cols], scores[:, auc_cols], average="macro")
    _close(m.macro_roc_auc(truth, scores), expected_auc)
    expected_ap = skm.average_precision_score(truth[:, ap_cols], scores[:, ap_cols])
    _close(m.mean_average_precision(truth, scores), expected_ap)
    assert math.isnan(m.macro_roc_auc(np.ones((4, 2)), RNG.random((4, 2))))
    assert math.isnan(m.mean_average_precision(np.zeros((4, 2)), RNG.random((4, 2))))
    # no label predicted or true anywhere: sklearn's zero_division=0 for every label
    empty = np.zeros((4, 3), int)
    _close(
        m.multilabel_macro_f1(empty, empty),
        skm.f1_score(empty, empty, average="macro", zero_division=0),
    )
    _close(m.multilabel_micro_f1(empty, empty), 0.0)


@pytest.mark.parametrize("tied", [False, True])
def test_correlations_and_errors_match_scipy_and_sklearn(tied):
    for n in (2, 10, 500):
        x = RNG.normal(size=n)
        y = 0.7 * x + RNG.normal(size=n)
        if tied:
            x, y = np.round(x), np.round(y)
            if np.ptp(x) == 0 or np.ptp(y) == 0:
                x[0], y[0] = x[0] + 1, y[0] + 1
        _close(m.pearson(x, y), scipy.stats.pearsonr(x, y).statistic)
        _close(m.spearman(x, y), scipy.stats.spearmanr(x, y).statistic)
        _close(m.rmse(x, y), skm.root_mean_squared_error(x, y))
        _close(m.mae(x, y), skm.mean_absolute_error(x, y))


def test_correlations_perfect_and_constant():
    x = RNG.normal(size=20)
    _close(m.pearson(x, 3 * x + 1), 1.0)
    _close(m.spearman(x, np.exp(x)), 1.0)  # monotone, not linear
    _close(m.spearman(x, -x), -1.0)
    assert m.rmse(x, x) == 0.0 and m.mae(x, x) == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on a constant input and returns nan
        assert math.isnan(scipy.stats.pearsonr(x, np.ones(20)).statistic)
    assert math.isnan(m.pearson(x, np.ones(20))) and math.isnan(m.spearman(np.ones(20), x))
    assert math.isnan(m.pearson([1.0], [2.0]))
