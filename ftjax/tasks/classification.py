"""Single-label classification: softmax cross-entropy (with label smoothing), accuracy, macro F1,
Matthews correlation, and for two classes the positive class's F1 and ROC-AUC.

Records carry a class id in 'label'; batches carry them as `label` (int32[B]) and the head outputs
`num_classes` logits per example. The loss is computed in float32 whatever the model's dtype.
Accuracy and loss come from sums over the split; F1, MCC and ROC-AUC from the kept per-row
predictions (`ftjax.tasks.metrics`, equal to scikit-learn's). Any reported metric but `count` can
pick the best checkpoint; only `loss` is lower-is-better.

Not here: multi-label (sigmoid) classification (`multi_label`), regression (`regression`),
token-level tasks; reading label names from data (`ftjax.data`).
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

__all__ = ["Classification", "cross_entropy"]


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
    label_names: tuple[str, ...] = ()

    name = "classification"
    output_level = "example"

    def __post_init__(self):
        object.__setattr__(self, "label_names", tuple(self.label_names))  # hashable as a list too
        if self.num_classes < 2:
            raise ValueError(f"num_classes is {self.num_classes}; classification needs at least 2")
        if self.label_names and len(self.label_names) != self.num_classes:
            raise ValueError(
                f"label_names has {len(self.label_names)} names for {self.num_classes} classes"
            )
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing is {self.label_smoothing}; use a value in [0, 1)")
        check_best_metric(self.name, self.best_metric, self.metric_names[:-1])  # not "count"

    @property
    def binary(self) -> bool:
        return self.num_classes == 2

    @property
    def output_size(self) -> int:
        return self.num_classes

    @property
    def target_keys(self) -> tuple[str, ...]:
        return ("label",)

    @property
    def token_keys(self) -> Mapping[str, int]:
        return {}

    @property
    def metric_names(self) -> tuple[str, ...]:
        binary = ("f1", "roc_auc") if self.binary else ()
        return ("accuracy", "loss", "macro_f1", "mcc", *binary, "count")

    @property
    def higher_is_better(self) -> bool:
        return self.best_metric != "loss"

    def targets(self, record: Mapping[str, Any], encoding: Any) -> dict[str, np.ndarray]:
        return {"label": np.int32(record["label"])}

    def loss(self, logits: jax.Array, batch: Batch) -> jax.Array:
        return cross_entropy(logits, batch["label"], self.label_smoothing)

    def train_metrics(self, logits: jax.Array, batch: Batch) -> dict[str, jax.Array]:
        return {"accuracy": masked_mean(_correct(logits, batch["label"]), batch)}

    def eval_sums(self, logits: jax.Array, batch: Batch) -> dict[str, jax.Array]:
        w = batch["mask"].astype(jnp.float32)
        loss = self.loss(logits, batch)
        correct = _correct(logits, batch["label"])
        return {"loss_sum": jnp.sum(loss * w), "correct": jnp.sum(correct * w), "count": jnp.sum(w)}

    def eval_rows(self, logits: jax.Array, batch: Batch) -> dict[str, jax.Array]:
        rows = {
            "pred": jnp.argmax(logits, -1).astype(jnp.int32),
            "label": batch["label"].astype(jnp.int32),
        }
        if self.binary:  # ROC-AUC ranks the positive class's probability
            rows["score"] = jax.nn.softmax(logits.astype(jnp.float32), -1)[:, 1]
        return rows

    def aggregate(
        self, sums: Mapping[str, float], rows: Rows, references: Any = None
    ) -> dict[str, float]:
        count = sums["count"]
        label, pred = concat_rows(rows, "label"), concat_rows(rows, "pred")
        out = {
            "accuracy": sums["correct"] / count,
            "loss": sums["loss_sum"] / count,
            "macro_f1": metrics.macro_f1(label, pred),
            "mcc": metrics.matthews_corrcoef(label, pred),
        }
        if self.binary:
            out["f1"] = metrics.binary_f1(label, pred)
            out["roc_auc"] = metrics.roc_auc(label, concat_rows(rows, "score"))
        out["count"] = int(count)
        return out
