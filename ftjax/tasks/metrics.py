"""Split metrics in plain numpy: F1, Matthews correlation, ROC-AUC, average precision, Pearson and
Spearman correlation, RMSE and MAE.

Each function takes a whole split's host arrays (what a task's `aggregate` gathers from its
`eval_rows`), truth first as scikit-learn orders them, and returns a Python float equal to the
scikit-learn or scipy function its docstring names on the same inputs, computed in float64
(`tests/test_task_metrics.py` checks each against its reference). Where a metric is undefined
(ROC-AUC with one class present, average precision without positives, a correlation with a
constant input) the result is nan: it is never the best value, and it says so in the logs, where
the references warn and return 0 or nan.

Not here: what a task keeps per row and how it turns rows into these metrics (the task modules),
span- and entity-level metrics of token tasks.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "binary_f1",
    "macro_f1",
    "matthews_corrcoef",
    "roc_auc",
    "average_precision",
    "multilabel_micro_f1",
    "multilabel_macro_f1",
    "macro_roc_auc",
    "mean_average_precision",
    "pearson",
    "spearman",
    "rmse",
    "mae",
]

NAN = float("nan")


def _f1(tp, fp, fn) -> np.ndarray:
    """F1 = 2tp / (2tp + fp + fn), 0 where nothing was true or predicted (zero_division=0)."""
    tp, fp, fn = (np.asarray(v, np.float64) for v in (tp, fp, fn))
    denom = 2 * tp + fp + fn
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1.0), 0.0)


def binary_f1(y_true, y_pred, pos_label=1) -> float:
    """F1 of class `pos_label`: `sklearn.metrics.f1_score(average="binary", zero_division=0)`."""
    t, p = np.asarray(y_true) == pos_label, np.asarray(y_pred) == pos_label
    return float(_f1(np.sum(t & p), np.sum(~t & p), np.sum(t & ~p)))


def macro_f1(y_true, y_pred, labels=None) -> float:
    """Unweighted mean of per-class F1 from class ids: `sklearn.metrics.f1_score(average="macro",
    zero_division=0)`; the classes are `labels`, by default (as sklearn's) those present in either
    array."""
    t, p = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
    labels = np.union1d(t, p) if labels is None else np.asarray(labels)
    if labels.size == 0:
        return NAN
    t1, p1 = t[:, None] == labels, p[:, None] == labels  # one-hot over `labels`: [N, C]
    return multilabel_macro_f1(t1, p1)


def matthews_corrcoef(y_true, y_pred) -> float:
    """Multiclass Matthews correlation from class ids: `sklearn.metrics.matthews_corrcoef`
    (0 where a marginal is constant, as sklearn)."""
    t, p = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
    _, idx = np.unique(np.concatenate([t, p]), return_inverse=True)
    k, n = int(idx.max(initial=-1)) + 1, t.size
    cm = np.bincount(idx[:n] * k + idx[n:], minlength=k * k).reshape(k, k).astype(np.float64)
    true_sum, pred_sum, correct = cm.sum(1), cm.sum(0), np.trace(cm)
    cov_tp = correct * n - true_sum @ pred_sum
    cov_pp, cov_tt = n * n - pred_sum @ pred_sum, n * n - true_sum @ true_sum
    if cov_pp * cov_tt == 0:
        return 0.0
    return float(cov_tp / np.sqrt(cov_tt * cov_pp))


def _average_ranks(x) -> np.ndarray:
    """1-based ranks, ties given their mean rank: `scipy.stats.rankdata(method="average")`."""
    x = np.asarray(x, np.float64).ravel()
    order = np.argsort(x, kind="stable")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], xs.size]
    ranks = np.empty(xs.size)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def roc_auc(y_true, scores) -> float:
    """Binary ROC-AUC from 0/1 truth and scores, ties counted half (the Mann-Whitney statistic):
    `sklearn.metrics.roc_auc_score`; nan when only one class is present (sklearn raises)."""
    y = np.asarray(y_true).ravel().astype(bool)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return NAN
    rank_sum = _average_ranks(scores)[y].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(y_true, scores) -> float:
    """Average precision, sum over score thresholds of (recall step) x precision, not
    interpolated: `sklearn.metrics.average_precision_score`; nan without positives (sklearn warns
    and returns 0)."""
    y = np.asarray(y_true).ravel().astype(bool)
    if not y.any():
        return NAN
    s = np.asarray(scores, np.float64).ravel()
    order = np.argsort(-s, kind="stable")
    y, s = y[order], s[order]
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), s.size - 1]  # each tied group is one threshold
    tp = np.cumsum(y)[last]
    precision, recall = tp / (last + 1), tp / tp[-1]
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def _counts(y_true, y_pred, axis):
    t, p = np.asarray(y_true).astype(bool), np.asarray(y_pred).astype(bool)
    return np.sum(t & p, axis), np.sum(~t & p, axis), np.sum(t & ~p, axis)


def multilabel_micro_f1(y_true, y_pred) -> float:
    """F1 of every (example, label) decision pooled, from 0/1 matrices [N, K]:
    `sklearn.metrics.f1_score(average="micro", zero_division=0)`."""
    return float(_f1(*_counts(y_true, y_pred, None)))


def multilabel_macro_f1(y_true, y_pred) -> float:
    """Unweighted mean over all K labels of each label's F1, from 0/1 matrices [N, K]:
    `sklearn.metrics.f1_score(average="macro", zero_division=0)`."""
    return float(np.mean(_f1(*_counts(y_true, y_pred, 0))))


def _mean_defined(values) -> float:
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else NAN


def macro_roc_auc(y_true, scores) -> float:
    """Mean of each label's ROC-AUC over the labels that have both positives and negatives, from
    [N, K] truth and scores: `sklearn.metrics.roc_auc_score(average="macro")` on those labels
    (sklearn raises if any label lacks a class); nan if no label has both."""
    t, s = np.asarray(y_true), np.asarray(scores)
    return _mean_defined(roc_auc(t[:, k], s[:, k]) for k in range(t.shape[1]))


def mean_average_precision(y_true, scores) -> float:
    """Mean of each label's average precision over the labels with at least one positive, from
    [N, K] truth and scores: `sklearn.metrics.average_precision_score(average="macro")` on those
    labels (sklearn scores a label without positives 0); nan if no label has a positive."""
    t, s = np.asarray(y_true), np.asarray(scores)
    return _mean_defined(average_precision(t[:, k], s[:, k]) for k in range(t.shape[1]))


def pearson(x, y) -> float:
    """Pearson correlation: `scipy.stats.pearsonr(x, y).statistic`; nan for a constant input or
    fewer than 2 points."""
    x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    if x.size < 2:
        return NAN
    dx, dy = x - x.mean(), y - y.mean()
    denom = np.sqrt(np.sum(dx * dx) * np.sum(dy * dy))
    if denom == 0:
        return NAN
    return float(np.clip(np.sum(dx * dy) / denom, -1.0, 1.0))


def spearman(x, y) -> float:
    """Spearman rank correlation, ties given average ranks: `scipy.stats.spearmanr(x, y)
    .statistic`; nan for a constant input."""
    return pearson(_average_ranks(x), _average_ranks(y))


def rmse(y_true, y_pred) -> float:
    """Root mean squared error: `sklearn.metrics.root_mean_squared_error`."""
    d = np.asarray(y_pred, np.float64).ravel() - np.asarray(y_true, np.float64).ravel()
    return float(np.sqrt(np.mean(d * d)))


def mae(y_true, y_pred) -> float:
    """Mean absolute error: `sklearn.metrics.mean_absolute_error`."""
    d = np.asarray(y_pred, np.float64).ravel() - np.asarray(y_true, np.float64).ravel()
    return float(np.mean(np.abs(d)))
