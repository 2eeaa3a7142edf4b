"""The task seam: what a model's outputs are trained on and judged by.

A task turns a batch's logits into a per-example loss, the train step's metrics, per-batch metric
sums for evaluation, and the sums over a whole split into that split's metrics; it also names the
metric that picks the best checkpoint. The step builders (`ftjax.steps`), evaluation
(`ftjax.train.evaluate`, the feature cache) and the best-checkpoint rule see only `Task`, so a new
kind of task (multi-label, regression, token classification, extractive QA) is one new module in
this package and nothing else changes.

How the pieces are used, so that a new task fits them:

- `target_keys` are the batch keys the task reads besides the model's inputs (labels, regression
  targets, per-token labels, answer spans). The feature cache stores exactly these next to the
  features, so a cached head phase sees the same targets.
- `loss(logits, batch)` is float32 and per example (shape [B]); the train step averages it over
  the rows `batch["mask"]` marks as real (all rows when there is no mask) with `masked_mean`.
  A task whose natural unit is smaller than an example (tokens) reduces within the example.
- `train_metrics(logits, batch)` are scalars for one training batch (logged as means over the
  logging window). The step adds `loss`, `grad_norm`, `nonfinite` and the LRs itself.
- `eval_sums(logits, batch)` are scalar *sums* over a global evaluation batch's real rows
  (`batch["mask"]`, always present in evaluation batches), with whatever counts the task divides
  by among them. Evaluation adds them up over every batch of a split; each is already a sum over
  the global batch (all processes), so the totals are exact and identical on every process, and
  `aggregate(totals)` divides them once: sums and counts, never a mean of batch means.
- `best_metric` and `higher_is_better` are the best-checkpoint rule (`is_better`).

Not here: the step functions themselves (`ftjax.steps`), model heads (`ftjax.models`), reading
labels from data sources (`ftjax.data`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import jax
import jax.numpy as jnp

__all__ = ["Task", "masked_mean", "is_better"]

Batch = Mapping[str, jax.Array]


@runtime_checkable
class Task(Protocol):
    """What the train and eval steps, evaluation and the best-checkpoint rule need of a task."""

    @property
    def output_size(self) -> int:
        """Width of the head's output (logits per example, or per token)."""
        ...

    @property
    def target_keys(self) -> tuple[str, ...]:
        """Batch keys the task reads besides the model's inputs."""
        ...

    @property
    def best_metric(self) -> str:
        """The key of `aggregate`'s result that picks the best checkpoint."""
        ...

    @property
    def higher_is_better(self) -> bool: ...

    def loss(self, logits: jax.Array, batch: Batch) -> jax.Array:
        """float32 loss per example, shape [B]."""
        ...

    def train_metrics(self, logits: jax.Array, batch: Batch) -> dict[str, jax.Array]:
        """Scalar metrics of one training batch (besides the loss)."""
        ...

    def eval_sums(self, logits: jax.Array, batch: Batch) -> dict[str, jax.Array]:
        """Scalar sums over the batch's real rows (`batch["mask"]`), counts included."""
        ...

    def aggregate(self, sums: Mapping[str, float]) -> dict[str, float]:
        """A split's metrics from its `eval_sums` added over every batch."""
        ...


def masked_mean(x: jax.Array, batch: Batch) -> jax.Array:
    """Mean of per-example `x` over the rows `batch["mask"]` marks real (all rows without a mask)."""
    if "mask" not in batch:
        return jnp.mean(x)
    w = batch["mask"].astype(jnp.float32)
    return jnp.sum(x * w) / jnp.maximum(jnp.sum(w), 1.0)


def is_better(task: Task, new: Mapping[str, float], best: Mapping[str, float] | None) -> bool:
    """Whether split metrics `new` beat `best` (None: nothing yet) on the task's best metric."""
    if best is None:
        return True
    key = task.best_metric
    return new[key] > best[key] if task.higher_is_better else new[key] < best[key]
