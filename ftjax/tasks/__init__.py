"""Tasks: the targets, loss, metrics, head shape and best-checkpoint rule of what a model is
trained for.

`Task` (in `base`) is the protocol the steps, evaluation, the data pipeline and the loop call;
each kind of task is one module here:

  classification        softmax cross-entropy; accuracy, macro-F1, MCC, ROC-AUC (binary)
  multi_label           sigmoid cross-entropy; micro/macro F1, mean average precision, ROC-AUC
  regression            MSE or Huber on standardised targets; RMSE, MAE, Pearson, Spearman
  token_classification  per-token tags on first sub-tokens; entity precision/recall/F1 (seqeval)
  extractive_qa         start/end logits over context windows; SQuAD v1.1 exact match and F1

`from_config` builds the one a run config asks for (`config.task.name`, or the task the data's
labels describe). An experiment script may pass any object with `Task`'s members instead (a
custom loss or metric) to `ftjax.phase_steps.PhaseSteps` and `ftjax.data.build_splits`, or to
`ftjax.train.run(config, workdir, task=...)`.

Not here: models and their heads (`ftjax.models`), reading data (`ftjax.data`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ftjax.tasks.base import Task, is_better, masked_mean
from ftjax.tasks.classification import Classification, cross_entropy
from ftjax.tasks.extractive_qa import ExtractiveQA
from ftjax.tasks.multi_label import MultiLabel
from ftjax.tasks.regression import Regression
from ftjax.tasks.token_classification import TokenClassification

__all__ = [
    "TASKS",
    "Task",
    "Classification",
    "ExtractiveQA",
    "MultiLabel",
    "Regression",
    "TokenClassification",
    "cross_entropy",
    "describe",
    "from_config",
    "from_description",
    "is_better",
    "masked_mean",
]

TASKS = (
    "classification",
    "multi_label",
    "regression",
    "token_classification",
    "extractive_qa",
)


def _target_stats(records: Any) -> tuple[float, float]:
    """Mean and standard deviation of the train split's regression targets."""
    train = records.splits["train"]
    y = np.asarray([float(train[i]["label"]) for i in range(len(train))], np.float64)
    std = float(y.std())
    if not std > 0:
        raise ValueError(
            f"all {len(y)} training targets equal {y[0]:g}: nothing to regress on; check "
            "data.label_key, or set task.normalize_targets=False"
        )
    return float(y.mean()), std


def from_config(config: Any, records: Any) -> Task:
    """The task of a run config (`ftjax.config.defaults()` layout) over `records`
    (`ftjax.data.DatasetSplits`: its label names, the task its labels describe, and the train
    split's targets for regression statistics)."""
    t = config.task
    name = t.name or records.task
    if name != records.task:
        raise ValueError(
            f"config.task.name is {name!r} but data.name={config.data.name!r} holds "
            f"{records.task} data; set task.name={records.task!r} (or '' to take the data's)"
        )
    task = _build(name, config, records)
    best = config.train.best_metric
    if not best:
        return task
    if best not in task.metric_names:
        from ftjax.config import ConfigError  # ftjax.config imports ftjax.data, which imports tasks

        raise ConfigError(
            f"config.train.best_metric: is {best!r}; the {name} task reports "
            f"{list(task.metric_names)}: use one of them, or '' for its default ({task.best_metric!r})"
        )
    return _build(name, config, records, best_metric=best)


def _build(name: str, config: Any, records: Any, **best: str) -> Task:
    t, names = config.task, tuple(records.class_names)
    if name == "classification":
        return Classification(
            len(names), label_names=names, label_smoothing=config.train.label_smoothing, **best
        )
    if name == "multi_label":
        return MultiLabel(names, threshold=t.threshold, **best)
    if name == "regression":
        mean, std = _target_stats(records) if t.normalize_targets else (0.0, 1.0)
        return Regression(
            loss=t.loss, huber_delta=t.huber_delta, target_mean=mean, target_std=std, **best
        )
    if name == "token_classification":
        return TokenClassification(names, **best)
    return ExtractiveQA(max_answer_length=t.max_answer_length, n_best=t.n_best, **best)


_CLASSES = {
    "classification": Classification,
    "multi_label": MultiLabel,
    "regression": Regression,
    "token_classification": TokenClassification,
    "extractive_qa": ExtractiveQA,
}


def describe(task: Task) -> dict[str, Any]:
    """A JSON-able description of `task` that `from_description` rebuilds (ftjax's own tasks; a
    user's task is described by its name and label names only)."""
    out: dict[str, Any] = {"name": task.name, "label_names": list(task.label_names)}
    if type(task) is _CLASSES.get(task.name):
        params = {f.name: getattr(task, f.name) for f in dataclasses.fields(task)}
        if "loss_name" in params:  # Regression keeps its `loss` argument as `loss_name`
            params["loss"] = params.pop("loss_name")
        out["params"] = {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}
    return out


def from_description(description: dict[str, Any]) -> Task:
    """The task `describe` described."""
    name = description["name"]
    if name not in _CLASSES or "params" not in description:
        raise ValueError(
            f"task {name!r} is not one of ftjax's {list(_CLASSES)}: pass the task object itself"
        )
    params = {k: tuple(v) if isinstance(v, list) else v for k, v in description["params"].items()}
    return _CLASSES[name](**params)
