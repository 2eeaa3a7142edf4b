"""The classification task behind the `Task` seam: its loss, train metrics, evaluation sums, their
exact aggregation over a split, and the best-checkpoint rule."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ftjax import tasks
from ftjax.tasks import Classification, Task, is_better

LOGITS = jnp.asarray([[2.0, 0.0, -1.0], [0.0, 1.0, 0.5], [0.1, 0.2, 3.0], [1.0, 1.0, 0.0]])
LABELS = jnp.asarray([0, 2, 2, 1], jnp.int32)


def test_classification_is_a_task_reading_labels():
    task = Classification(3)
    assert isinstance(task, Task)
    assert (task.output_size, task.target_keys, task.best_metric) == (3, ("label",), "accuracy")
    assert task.higher_is_better and not Classification(3, best_metric="loss").higher_is_better


def test_loss_is_float32_cross_entropy_with_label_smoothing():
    batch = {"label": LABELS}
    loss = Classification(3, label_smoothing=0.1).loss(LOGITS, batch)
    targets = optax.smooth_labels(jnp.eye(3, dtype=jnp.float32)[LABELS], 0.1)
    np.testing.assert_allclose(loss, optax.softmax_cross_entropy(LOGITS, targets), rtol=1e-6)
    plain = Classification(3).loss(LOGITS, batch)
    expected = optax.softmax_cross_entropy_with_integer_labels(LOGITS, LABELS)
    np.testing.assert_allclose(plain, expected, rtol=1e-6)
    low = Classification(3).loss(LOGITS.astype(jnp.bfloat16), batch)
    assert low.dtype == jnp.float32 and low.shape == (4,)


def test_train_accuracy_counts_masked_in_rows_only():
    task = Classification(3)
    assert float(task.train_metrics(LOGITS, {"label": LABELS})["accuracy"]) == 0.5
    masked = {"label": LABELS, "mask": jnp.asarray([True, False, True, False])}
    assert float(task.train_metrics(LOGITS, masked)["accuracy"]) == 1.0
    assert float(tasks.masked_mean(jnp.arange(4.0), masked)) == 1.0


def test_split_metrics_are_sums_over_batches_divided_once():
    """Two batches of 3 and 1 real rows: accuracy is 2/4, not the mean of 2/3 and 0/1."""
    task = Classification(3)
    first = {"label": LABELS, "mask": jnp.asarray([True, True, True, False])}
    second = {"label": LABELS, "mask": jnp.asarray([False, False, False, True])}
    sums = [task.eval_sums(LOGITS, b) for b in (first, second)]
    assert {k: float(v) for k, v in sums[0].items()}.keys() == {"loss_sum", "correct", "count"}
    total = {k: float(sums[0][k] + sums[1][k]) for k in sums[0]}
    kept = [(task.eval_rows(LOGITS, b), np.asarray(b["mask"])) for b in (first, second)]
    rows = {k: [np.asarray(r[k])[m] for r, m in kept] for k in kept[0][0]}
    metrics = task.aggregate(total, rows)
    per_example = task.loss(LOGITS, {"label": LABELS})
    assert metrics["count"] == 4 and metrics["accuracy"] == 0.5
    np.testing.assert_allclose(metrics["loss"], float(jnp.mean(per_example)), rtol=1e-6)


def test_best_metric_direction():
    acc, loss = Classification(3), Classification(3, best_metric="loss")
    a, b = {"accuracy": 0.8, "loss": 0.5}, {"accuracy": 0.7, "loss": 0.4}
    assert is_better(acc, a, None) and is_better(acc, a, b) and not is_better(acc, b, a)
    assert is_better(loss, b, a) and not is_better(loss, a, b)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="best_metric is 'f1'"):
        Classification(3, best_metric="f1")
    with pytest.raises(ValueError, match="label_smoothing is 1.0"):
        Classification(3, label_smoothing=1.0)
