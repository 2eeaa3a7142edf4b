"""Regression on one number per example: squared-error or Huber loss on normalised targets, and
RMSE, MAE, Pearson and Spearman correlation in the targets' original units.

Records carry the number in 'label'; batches carry `target` (float32[B]) = (label - target_mean)
/ target_std, and the head outputs one logit per example, the prediction in those normalised units.
The caller chooses the normalisation (the train split's mean and standard deviation, or the
identity defaults). The loss is float32 and in normalised units: "mse" (whose batch mean is torch's
`MSELoss`, what transformers computes for `problem_type="regression"` with one label) or "huber"
(`optax.huber_loss` with `huber_delta`). The loss comes from sums over the split; the other
metrics from the kept per-row predictions, de-normalised (`ftjax.tasks.metrics`, equal to
scikit-learn's and scipy's).

Not here: computing the normalisation from data (the caller), several outputs per example,
classification (`classification`, `multi_label`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ftjax.tasks import metrics
from ftjax.tasks.base import Batch, Rows, check_best_metric, concat_rows, masked_mean

__all__ = ["Regression", "LOSSES"]

LOSSES = ("mse", "huber")
METRIC_NAMES = ("loss", "rmse", "mae", "pearson", "spearman", "count")
LOWER_IS_BETTER = ("loss", "rmse", "mae")


@dataclasses.dataclass(frozen=True, init=False)
class Regression:
    """Single-output regression (a `ftjax.tasks.Task`).

    The constructor's `loss` (the config's `task.loss`) is kept as `loss_name`: `loss` is the
    Task method."""

    loss_name: str
    huber_delta: float
    target_mean: float
    target_std: float
    best_metric: str

    name = "regression"
    output_size = 1
    output_level = "example"
    label_names = ()
    metric_names = METRIC_NAMES

    def __init__(
        self,
        loss: str = "mse",
        huber_delta: float = 1.0,
        target_mean: float = 0.0,
        target_std: float = 1.0,
        best_metric: str = "pearson",
    ):
        if loss not in LOSSES:
            raise ValueError(f"task.loss is {loss!r}; regression offers {list(LOSSES)}")
        if not huber_delta > 0:
            raise ValueError(f"task.huber_delta is {huber_delta}; use a positive number")
        if not (math.isfinite(target_std) and target_std > 0):
            raise ValueError(
                f"task.target_std is {target_std}; the targets' scale must be a positive number "
                "(constant train targets cannot be normalised)"
            )
        if not math.isfinite(target_mean):
            raise ValueError(f"task.target_mean is {target_mean}; use a finite number")
        check_best_metric(self.name, best_metric, METRIC_NAMES[:-1])  # not "count"
        values = (loss, float(huber_delta), float(target_mean), float(target_std), best_metric)
        for field, value in zip(self.__dataclass_fields__, values):
            object.__setattr__(self, field, value)

    @property
    def target_keys(self) -> tuple[str, ...]:
        return ("target",)

    @property
    def token_keys(self) -> Mapping[str, int]:
        return {}

    @property
    def higher_is_better(self) -> bool:
        return self.best_metric not in LOWER_IS_BETTER

    def targets(self, record: Mapping[str, Any], encoding: Any) -> dict[str, np.ndarray]:
        value = (float(record["label"]) - self.target_mean) / self.target_std
        return {"target": np.float32(value)}

    def _errors(self, logits: jax.Array, batch: Batch) -> jax.Array:
        """Prediction minus target per example, float32, in normalised units."""
        return logits[:, 0].astype(jnp.float32) - batch["target"].astype(jnp.float32)

    def loss(self, logits: jax.Array, batch: Batch) -> jax.Array:
        err = self._errors(logits, batch)
        if self.loss_name == "huber":
            return optax.huber_loss(err, delta=self.huber_delta)
        return err * err

    def train_metrics(self, logits: jax.Array, batch: Batch) -> dict[str, jax.Array]:
        abs_err = jnp.abs(self._errors(logits, batch)) * self.target_std
        return {"mae": masked_mean(abs_err, batch)}

    def eval_sums(self, logits: jax.Array, batch: Batch) -> dict[str, jax.Array]:
        w = batch["mask"].astype(jnp.float32)
        return {"loss_sum": jnp.sum(self.loss(logits, batch) * w), "count": jnp.sum(w)}

    def eval_rows(self, logits: jax.Array, batch: Batch) -> dict[str, jax.Array]:
        return {
            "pred": logits[:, 0].astype(jnp.float32),
            "target": batch["target"].astype(jnp.float32),
        }

    def denormalise(self, x: np.ndarray) -> np.ndarray:
        """Normalised values back in the targets' original units (float64)."""
        return np.asarray(x, np.float64) * self.target_std + self.target_mean

    def aggregate(
        self, sums: Mapping[str, float], rows: Rows, references: Any = None
    ) -> dict[str, float]:
        count = sums["count"]
        pred = self.denormalise(concat_rows(rows, "pred"))
        target = self.denormalise(concat_rows(rows, "target"))
        return {
            "loss": sums["loss_sum"] / count,
            "rmse": metrics.rmse(target, pred),
            "mae": metrics.mae(target, pred),
            "pearson": metrics.pearson(target, pred),
            "spearman": metrics.spearman(target, pred),
            "count": int(count),
        }
