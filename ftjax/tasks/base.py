"""The task seam: what a model's outputs are trained on and judged by.

A task reads its targets from the data's records, turns a batch's logits into a per-example loss
and the train step's metrics, computes per-batch statistics for evaluation, and turns those of a
whole split into the split's metrics; it names the metric that picks the best checkpoint. The step
builders (`ftjax.steps`), evaluation (`ftjax.phase_steps.evaluate`, the feature cache), the data
pipeline's example functions and the best-checkpoint rule see only `Task`, so a new kind of task is
one new module in this package (or a user's own object with these members).

How the pieces are used, so that a new task fits them:

- `output_size` is the head's width and `output_level` where it sits: "example" (logits
  [B, output_size], on the pooled encoder output or the image features) or "token" (logits
  [B, L, output_size], the head on every token's hidden state).
- `targets(record, encoding)` turns one standard data record (`ftjax.data`: 'label' holds a class
  id, a multi-hot vector, a number or per-word tag ids) into the example's target arrays; for text
  `encoding` is the tokenizer's view of the example (`word_ids`: the word each token came from,
  None for special tokens), for images None. `target_keys` are those arrays' batch keys: the feature
  cache stores exactly these next to the features. `token_keys` maps the per-token ones to the value
  the collate pads them with (e.g. `{"tags": -100}`).
- `loss(logits, batch)` is float32 and per example (shape [B]); the train step averages it over
  the rows `batch["mask"]` marks as real (all rows when there is no mask) with `masked_mean`.
  A task whose natural unit is smaller than an example (tokens) reduces within the example.
- `train_metrics(logits, batch)` are scalars for one training batch (logged as means over the
  logging window). The step adds `loss`, `grad_norm`, `nonfinite` and the LRs itself.
- `eval_sums(logits, batch)` are scalar *sums* over a global evaluation batch's real rows
  (`batch["mask"]`, always present in evaluation batches), with the counts the task divides by.
- `eval_rows(logits, batch)` are per-row arrays ([B, ...]) for metrics that sums cannot give
  (ROC-AUC, correlations, entity F1, QA spans); `{}` when the sums suffice. Evaluation keeps the
  real rows of every batch, in split order, on the host.
- `aggregate(sums, rows, references)`: the split's metrics. `sums` are `eval_sums` added over
  every batch; `rows` maps each `eval_rows` key to the list of its per-batch arrays (padding rows
  dropped; shapes may differ between batches, e.g. token lengths); `references` is what the split
  carries beyond its batches (extractive QA: the contexts and answers), else None. Every eval
  output is a global batch (all processes), so the metrics are exact and identical on every
  process: sums and counts, never a mean of batch means.
- `best_metric` (one of `metric_names`) and `higher_is_better` are the best-checkpoint rule.
- `label_names` are the names of the head's outputs where they have names (classes, tags).

Not here: the step functions themselves (`ftjax.steps`), model heads (`ftjax.models`), reading
records from files (`ftjax.data`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Task", "Rows", "masked_mean", "is_better", "check_best_metric", "concat_rows"]

Batch = Mapping[str, jax.Array]
Rows = Mapping[str, Sequence[np.ndarray]]


@runtime_checkable
class Task(Protocol):
    """What the steps, evaluation, the data pipeline and the best-checkpoint rule need of a task."""

    @property
    def name(self) -> str:
        """The task kind, as `config.task.name` spells it ('classification', ...)."""
        ...

    @property
    def output_size(self) -> int:
        """Width of the head's output (logits per example, or per token)."""
        ...

    @property
    def output_level(self) -> str:
        """'example' (logits [B, K]) or 'token' (logits [B, L, K])."""
        ...

    @property
    def target_keys(self) -> tuple[str, ...]:
        """Batch keys the task reads besides the model's inputs."""
        ...

    @property
    def token_keys(self) -> Mapping[str, int]:
        """The per-token target keys and the value padding positions get."""
        ...

    @property
    def label_names(self) -> tuple[str, ...]:
        """Names of the head's outputs (classes, tags); () where they have none."""
        ...

    @property
    def metric_names(self) -> tuple[str, ...]:
        """The keys `aggregate` reports."""
        ...

    @property
    def best_metric(self) -> str:
        """The key of `aggregate`'s result that picks the best checkpoint."""
        ...

    @property
    def higher_is_better(self) -> bool: ...

    def targets(self, record: Mapping[str, Any], encoding: Any) -> dict[str, np.ndarray]:
        """One example's target arrays (keys `target_keys`) from its standard record."""
        ...

    def loss(self, logits: jax.Array, batch: Batch) -> jax.Array:
        """float32 loss per example, shape [B]."""
        ...

    def train_metrics(self, logits: jax.Array, batch: Batch) -> dict[str, jax.Array]:
        """Scalar metrics of one training batch (besides the loss)."""
        ...

    def eval_sums(self, logits: jax.Array, batch: Batch) -> dict[str, jax.Array]:
        """Scalar sums over the batch's real rows (`batch["mask"]`), counts included."""
        ...

    def eval_rows(self, logits: jax.Array, batch: Batch) -> dict[str, jax.Array]:
        """Per-row arrays [B, ...] that non-decomposable metrics need; {} when none."""
        ...

    def aggregate(
        self, sums: Mapping[str, float], rows: Rows, references: Any = None
    ) -> dict[str, float]:
        """A split's metrics from its summed `eval_sums` and its kept `eval_rows`."""
        ...


def masked_mean(x: jax.Array, batch: Batch) -> jax.Array:
    """Mean of per-example `x` over the rows `batch["mask"]` marks real (all rows without a mask)."""
    if "mask" not in batch:
        return jnp.mean(x)
    w = batch["mask"].astype(jnp.float32)
    return jnp.sum(x * w) / jnp.maximum(jnp.sum(w), 1.0)


def concat_rows(rows: Rows, key: str) -> np.ndarray:
    """One `eval_rows` key's per-batch arrays as one array (they must agree beyond axis 0)."""
    parts = rows.get(key, ())
    return np.concatenate(parts) if len(parts) else np.zeros((0,))


def check_best_metric(task_name: str, best_metric: str, metric_names: Sequence[str]) -> None:
    if best_metric not in metric_names:
        raise ValueError(
            f"best_metric is {best_metric!r}; the {task_name} task reports {list(metric_names)}: "
            "set train.best_metric to one of them"
        )


def is_better(task: Task, new: Mapping[str, float], best: Mapping[str, float] | None) -> bool:
    """Whether split metrics `new` beat `best` (None: nothing yet) on the task's best metric."""
    if best is None:
        return True
    key = task.best_metric
    return new[key] > best[key] if task.higher_is_better else new[key] < best[key]
