"""Multi-label classification: one sigmoid per label, binary cross-entropy, and F1, ROC-AUC and
average precision over the labels.

Records carry a multi-hot vector in 'label' (one 0/1 per name in `label_names`); batches carry it
as `labels` (float32[B, K]) and the head outputs K logits per example. The loss of an example is
the mean over its labels of the float32 sigmoid cross-entropy, so the train step's batch mean is
torch's `BCEWithLogitsLoss` (what transformers computes for `problem_type=
"multi_label_classification"`). A label is predicted when its probability exceeds `threshold`.
The loss comes from sums over the split; the rest from the kept per-row probabilities
(`ftjax.tasks.metrics`, equal to scikit-learn's; ROC-AUC and average precision skip the labels on
which they are undefined).

Not here: single-label classification (`classification`), tuning the threshold, label names'
reading from data (`ftjax.data`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ftjax.tasks import metrics
from ftjax.tasks.base import Batch, Rows, check_best_metric, concat_rows, masked_mean

__all__ = ["MultiLabel", "sigmoid_cross_entropy"]

METRIC_NAMES = (
    "loss",
    "micro_f1",
    "macro_f1",
    "mean_average_precision",
    "roc_auc",
    "subset_accuracy",
    "count",
)


def sigmoid_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example float32 binary cross-entropy with logits, averaged over the labels: [B]."""
    per_label = optax.sigmoid_binary_cross_entropy(
        logits.astype(jnp.float32), labels.astype(jnp.float32)
    )
    return jnp.mean(per_label, -1)


@dataclasses.dataclass(frozen=True)
class MultiLabel:
    """Multi-label classification over `label_names` (a `ftjax.tasks.Task`)."""

    label_names: tuple[str, ...]
    threshold: float = 0.5
    best_metric: str = "micro_f1"

    name = "multi_label"
    output_level = "example"
    metric_names = METRIC_NAMES

    def __post_init__(self):
        object.__setattr__(self, "label_names", tuple(self.label_names))  # hashable as a list too
        if not self.label_names:
            raise ValueError("task.label_names is empty; a multi-label task needs at least 1 label")
        if not 0 < self.threshold < 1:
            raise ValueError(f"task.threshold is {self.threshold}; use a probability in (0, 1)")
        check_best_metric(self.name, self.best_metric, METRIC_NAMES[:-1])  # not "count"

    @property
    def output_size(self) -> int:
        return len(self.label_names)

    @property
    def target_keys(self) -> tuple[str, ...]:
        return ("labels",)

    @property
    def token_keys(self) -> Mapping[str, int]:
        return {}

    @property
    def higher_is_better(self) -> bool:
        return self.best_metric != "loss"

    def targets(self, record: Mapping[str, Any], encoding: Any) -> dict[str, np.ndarray]:
        labels = np.asarray(record["label"], np.float32)
        if labels.shape != (self.output_size,):
            raise ValueError(
                f"a record's label has shape {labels.shape}; the multi-label task expects a "
                f"multi-hot vector of its {self.output_size} labels"
            )
        return {"labels": labels}

    def _predicted(self, logits: jax.Array) -> jax.Array:
        return jax.nn.sigmoid(logits.astype(jnp.float32)) > self.threshold

    def loss(self, logits: jax.Array, batch: Batch) -> jax.Array:
        return sigmoid_cross_entropy(logits, batch["labels"])

    def train_metrics(self, logits: jax.Array, batch: Batch) -> dict[str, jax.Array]:
        exact = jnp.all(self._predicted(logits) == (batch["labels"] > 0.5), -1)
        return {"subset_accuracy": masked_mean(exact.astype(jnp.float32), batch)}

    def eval_sums(self, logits: jax.Array, batch: Batch) -> dict[str, jax.Array]:
        w = batch["mask"].astype(jnp.float32)
        return {"loss_sum": jnp.sum(self.loss(logits, batch) * w), "count": jnp.sum(w)}

    def eval_rows(self, logits: jax.Array, batch: Batch) -> dict[str, jax.Array]:
        return {
            "probs": jax.nn.sigmoid(logits.astype(jnp.float32)),
            "labels": batch["labels"] > 0.5,
        }

    def aggregate(
        self, sums: Mapping[str, float], rows: Rows, references: Any = None
    ) -> dict[str, float]:
        count = sums["count"]
        probs, truth = concat_rows(rows, "probs"), concat_rows(rows, "labels").astype(bool)
        pred = probs > self.threshold
        return {
            "loss": sums["loss_sum"] / count,
            "micro_f1": metrics.multilabel_micro_f1(truth, pred),
            "macro_f1": metrics.multilabel_macro_f1(truth, pred),
            "mean_average_precision": metrics.mean_average_precision(truth, probs),
            "roc_auc": metrics.macro_roc_auc(truth, probs),
            "subset_accuracy": float(np.mean(np.all(pred == truth, axis=1))),
            "count": int(count),
        }
