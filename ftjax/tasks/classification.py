"""Single-label classification: softmax cross-entropy (with label smoothing) and accuracy.

Batches carry integer class ids in `label` (int32[B]); the head outputs `num_classes` logits.
The loss is computed in float32 whatever the model's dtype. The best checkpoint is the one with
the highest validation accuracy (`best_metric="accuracy"`) or the lowest loss (`"loss"`).

Not here: multi-label (sigmoid) classification, regression, token-level tasks; label names and
their reading from data (`ftjax.data`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import optax

from ftjax.tasks.base import Batch, masked_mean

__all__ = ["BEST_METRICS", "Classification", "cross_entropy"]

BEST_METRICS = ("accuracy", "loss")


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Per-example float32 softmax cross-entropy with integer labels and optional label smoothing."""
    n = logits.shape[-1]
    targets = jax.nn.one_hot(labels, n, dtype=logits.dtype)
    if label_smoothing:
        targets = targets * (1.0 - label_smoothing) + label_smoothing / n
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets.astype(jnp.float32))


def _correct(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return (jnp.argmax(logits, -1) == labels).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class Classification:
    """`num_classes`-way single-label classification (a `ftjax.tasks.Task`)."""

    num_classes: int
    label_smoothing: float = 0.0
    best_metric: str = "accuracy"

    def __post_init__(self):
        if self.best_metric not in BEST_METRICS:
            raise ValueError(
                f"best_metric is {self.best_metric!r}; classification offers {list(BEST_METRICS)}"
            )
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing is {self.label_smoothing}; use a value in [0, 1)")

    @property
    def output_size(self) -> int:
        return self.num_classes

    @property
    def target_keys(self) -> tuple[str, ...]:
        return ("label",)

    @property
    def higher_is_better(self) -> bool:
        return self.best_metric == "accuracy"

    def loss(self, logits: jax.Array, batch: Batch) -> jax.Array:
        return cross_entropy(logits, batch["label"], self.label_smoothing)

    def train_metrics(self, logits: jax.Array, batch: Batch) -> dict[str, jax.Array]:
        return {"accuracy": masked_mean(_correct(logits, batch["label"]), batch)}

    def eval_sums(self, logits: jax.Array, batch: Batch) -> dict[str, jax.Array]:
        w = batch["mask"].astype(jnp.float32)
        loss = self.loss(logits, batch)
        correct = _correct(logits, batch["label"])
        return {"loss_sum": jnp.sum(loss * w), "correct": jnp.sum(correct * w), "count": jnp.sum(w)}

    def aggregate(self, sums: Mapping[str, float]) -> dict[str, float]:
        count = sums["count"]
        return {
            "accuracy": sums["correct"] / count,
            "loss": sums["loss_sum"] / count,
            "count": int(count),
        }
