"""Tasks: the loss, metrics, head size and best-checkpoint rule of what a model is trained for.

`Task` (in `base`) is the protocol the steps, evaluation and the loop call; each kind of task is
one module here. `from_config` picks the task a run config asks for.

Not here: models and their heads (`ftjax.models`), data reading (`ftjax.data`).
"""

from __future__ import annotations

from typing import Any

from ftjax.tasks.base import Task, is_better, masked_mean
from ftjax.tasks.classification import Classification, cross_entropy

__all__ = ["Task", "Classification", "cross_entropy", "from_config", "is_better", "masked_mean"]


def from_config(config: Any, num_classes: int) -> Task:
    """The task of a run config (`ftjax.config.defaults()` layout) over `num_classes` labels.

    Every config is single-label classification today; `train.label_smoothing` and
    `train.best_metric` configure it.
    """
    return Classification(
        num_classes,
        label_smoothing=config.train.label_smoothing,
        best_metric=config.train.best_metric,
    )
