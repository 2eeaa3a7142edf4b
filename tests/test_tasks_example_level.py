"""The example-level tasks (Classification, MultiLabel, Regression) behind the `Task` seam: their
train loss equals the PyTorch loss transformers computes for a sequence-classification model with
the matching `problem_type`; a split's metrics aggregated over padded batches equal the metrics of
the concatenated real rows (scikit-learn, scipy); Regression reports in the original units; bad
settings are refused naming their key."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
import torch
from sklearn import metrics as skm
from transformers import BertConfig
from transformers.loss.loss_utils import ForSequenceClassificationLoss

from ftjax.tasks import Task, masked_mean
from ftjax.tasks.classification import Classification
from ftjax.tasks.multi_label import MultiLabel
from ftjax.tasks.regression import Regression

RNG = np.random.default_rng(0)
B = 8
# three evaluation batches: full, gappy, mostly padding (padding rows hold garbage targets)
MASKS = [np.ones(B, bool), np.arange(B) % 3 != 1, np.arange(B) < 3]
pytestmark = pytest.mark.filterwarnings("ignore:A single label was found")


def _hf_loss(logits: np.ndarray, labels: np.ndarray, problem_type: str) -> float:
    """The loss `BertForSequenceClassification` computes (transformers' shared sequence
    classification loss, which its forward inlines) on these logits and labels."""
    config = BertConfig(num_labels=logits.shape[-1], problem_type=problem_type)
    loss = ForSequenceClassificationLoss(torch.tensor(labels), torch.tensor(logits), config)
    return float(loss)


def _train_loss(task: Task, logits: np.ndarray, batch: dict) -> float:
    """The train step's loss: the task's per-example loss averaged over the real rows."""
    jbatch = {k: jnp.asarray(v) for k, v in batch.items()}
    per_example = task.loss(jnp.asarray(logits), jbatch)
    assert per_example.dtype == jnp.float32 and per_example.shape == (len(logits),)
    return float(masked_mean(per_example, jbatch))


def _evaluate(task: Task, batches: list[tuple[np.ndarray, dict]]) -> dict:
    """What evaluation does: jitted eval_sums/eval_rows per batch, sums added on device, rows
    kept on the host without their padding rows, one aggregate."""
    step = jax.jit(
        lambda logits, batch: (task.eval_sums(logits, batch), task.eval_rows(logits, batch))
    )
    sums, rows = None, {}
    for logits, batch in batches:
        out, batch_rows = step(jnp.asarray(logits), {k: jnp.asarray(v) for k, v in batch.items()})
        sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
        for k, v in batch_rows.items():
            rows.setdefault(k, []).append(np.asarray(v)[batch["mask"]])
    metrics = task.aggregate({k: float(v) for k, v in sums.items()}, rows, None)
    assert tuple(metrics) == task.metric_names and isinstance(metrics["count"], int)
    return metrics


def _check(metrics: dict, expected: dict, rel: float = 1e-6) -> None:
    assert metrics.keys() == expected.keys()
    for k, v in expected.items():
        assert math.isclose(metrics[k], v, rel_tol=rel, abs_tol=1e-7), (k, metrics[k], v)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# --- Classification ---------------------------------------------------------------------------


@pytest.mark.parametrize("k", [2, 4])
def test_classification_loss_is_transformers_cross_entropy(k):
    logits = RNG.normal(size=(B, k)).astype(np.float32)
    labels = RNG.integers(0, k, B).astype(np.int64)
    expected = _hf_loss(logits, labels, "single_label_classification")
    got = _train_loss(Classification(k), logits, {"label": labels.astype(np.int32)})
    assert abs(got - expected) < 1e-5
    smoothed = torch.nn.functional.cross_entropy(
        torch.tensor(logits), torch.tensor(labels), label_smoothing=0.1
    )
    got = _train_loss(Classification(k, 0.1), logits, {"label": labels.astype(np.int32)})
    assert abs(got - float(smoothed)) < 1e-5
    mask = np.arange(B) < 5  # the train mean covers real rows only
    expected = _hf_loss(logits[mask], labels[mask], "single_label_classification")
    got = _train_loss(Classification(k), logits, {"label": labels.astype(np.int32), "mask": mask})
    assert abs(got - expected) < 1e-5
    low = Classification(k).loss(jnp.asarray(logits, jnp.bfloat16), {"label": jnp.asarray(labels)})
    assert low.dtype == jnp.float32


@pytest.mark.parametrize("k", [2, 3])
def test_classification_split_metrics_equal_those_of_the_real_rows(k):
    task = Classification(k)
    batches = []
    for mask in MASKS:
        label = RNG.integers(0, k, B).astype(np.int32)
        logits = (RNG.normal(size=(B, k)) + 1.5 * np.eye(k)[label]).astype(np.float32)
        label[~mask] = RNG.integers(0, k, (~mask).sum())  # garbage under padding
        batches.append((logits, {"label": label, "mask": mask}))
    metrics = _evaluate(task, batches)

    logits = np.concatenate([b[0][b[1]["mask"]] for b in batches])
    label = np.concatenate([b[1]["label"][b[1]["mask"]] for b in batches])
    pred = logits.argmax(-1)
    expected = {
        "accuracy": skm.accuracy_score(label, pred),
        "loss": _hf_loss(logits, label.astype(np.int64), "single_label_classification"),
        "macro_f1": skm.f1_score(label, pred, average="macro", zero_division=0),
        "mcc": skm.matthews_corrcoef(label, pred),
    }
    if k == 2:
        expected["f1"] = skm.f1_score(label, pred, zero_division=0)
        expected["roc_auc"] = skm.roc_auc_score(label, _softmax(logits.astype(np.float64))[:, 1])
    expected["count"] = int(sum(m.sum() for m in MASKS))
    _check(metrics, expected)


def test_classification_members():
    two, three = Classification(2), Classification(3, 0.1, "loss", ("a", "b", "c"))
    assert isinstance(two, Task) and isinstance(three, Task)
    assert (two.name, two.output_level, two.output_size, two.target_keys) == (
        "classification",
        "example",
        2,
        ("label",),
    )
    assert two.metric_names == ("accuracy", "loss", "macro_f1", "mcc", "f1", "roc_auc", "count")
    assert three.metric_names == ("accuracy", "loss", "macro_f1", "mcc", "count")
    assert three.label_names == ("a", "b", "c") and two.label_names == () and two.token_keys == {}
    assert not three.higher_is_better
    assert all(Classification(2, best_metric=m).higher_is_better for m in ("mcc", "roc_auc", "f1"))
    target = two.targets({"label": 1, "text": "x"}, None)["label"]
    assert target.dtype == np.int32 and target == 1
    assert hash(Classification(3, label_names=["a", "b", "c"])) == hash(
        Classification(3, 0.0, "accuracy", ("a", "b", "c"))
    )


# --- MultiLabel -------------------------------------------------------------------------------


def _multi_hot(n: int, k: int) -> np.ndarray:
    labels = (RNG.random((n, k)) < 0.4).astype(np.float32)
    labels[0], labels[1] = 1.0, 0.0  # every label has positives and negatives
    return labels


def test_multi_label_loss_is_transformers_bce_with_logits():
    logits = RNG.normal(size=(B, 5)).astype(np.float32) * 3
    labels = _multi_hot(B, 5)
    task = MultiLabel(tuple("abcde"))
    expected = _hf_loss(logits, labels, "multi_label_classification")
    assert abs(_train_loss(task, logits, {"labels": labels}) - expected) < 1e-5
    mask = np.arange(B) % 2 == 0
    expected = _hf_loss(logits[mask], labels[mask], "multi_label_classification")
    assert abs(_train_loss(task, logits, {"labels": labels, "mask": mask}) - expected) < 1e-5
    low = task.loss(jnp.asarray(logits, jnp.bfloat16), {"labels": jnp.asarray(labels)})
    assert low.dtype == jnp.float32


@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_multi_label_split_metrics_equal_those_of_the_real_rows(threshold):
    k = 4
    task = MultiLabel(("w", "x", "y", "z"), threshold=threshold)
    batches = []
    for mask in MASKS:
        labels = _multi_hot(B, k)
        logits = (RNG.normal(size=(B, k)) + 2 * labels - 1).astype(np.float32)
        labels[~mask] = RNG.random(((~mask).sum(), k)) < 0.5
        batches.append((logits, {"labels": labels, "mask": mask}))
    metrics = _evaluate(task, batches)

    logits = np.concatenate([b[0][b[1]["mask"]] for b in batches])
    truth = np.concatenate([b[1]["labels"][b[1]["mask"]] for b in batches]).astype(int)
    probs = 1 / (1 + np.exp(-logits.astype(np.float64)))
    pred = (probs > threshold).astype(int)
    expected = {
        "loss": _hf_loss(logits, truth.astype(np.float32), "multi_label_classification"),
        "micro_f1": skm.f1_score(truth, pred, average="micro", zero_division=0),
        "macro_f1": skm.f1_score(truth, pred, average="macro", zero_division=0),
        "mean_average_precision": skm.average_precision_score(truth, probs, average="macro"),
        "roc_auc": skm.roc_auc_score(truth, probs, average="macro"),
        "subset_accuracy": skm.accuracy_score(truth, pred),
        "count": int(sum(m.sum() for m in MASKS)),
    }
    _check(metrics, expected)


def test_multi_label_members():
    task = MultiLabel(["toxic", "insult"], threshold=0.4, best_metric="roc_auc")
    assert isinstance(task, Task) and task.label_names == ("toxic", "insult")
    assert (task.name, task.output_level, task.output_size, task.target_keys) == (
        "multi_label",
        "example",
        2,
        ("labels",),
    )
    assert task.higher_is_better and not MultiLabel(("a",), best_metric="loss").higher_is_better
    target = task.targets({"label": [1, 0]}, None)["labels"]
    assert target.dtype == np.float32 and target.tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="shape \\(3,\\); .* its 2 labels"):
        task.targets({"label": [1, 0, 1]}, None)


# --- Regression -------------------------------------------------------------------------------


@pytest.mark.parametrize("loss", ["mse", "huber"])
def test_regression_loss_is_transformers_mse_or_torch_huber(loss):
    logits = RNG.normal(size=(B, 1)).astype(np.float32) * 2
    target = RNG.normal(size=B).astype(np.float32)
    task = Regression(loss, huber_delta=0.7)
    if loss == "mse":
        expected = _hf_loss(logits, target, "regression")
    else:
        huber = torch.nn.HuberLoss(delta=0.7)
        expected = float(huber(torch.tensor(logits[:, 0]), torch.tensor(target)))
    assert abs(_train_loss(task, logits, {"target": target}) - expected) < 1e-5
    mask = np.arange(B) >= 2
    if loss == "mse":
        expected = _hf_loss(logits[mask], target[mask], "regression")
        assert abs(_train_loss(task, logits, {"target": target, "mask": mask}) - expected) < 1e-5
    low = task.loss(jnp.asarray(logits, jnp.bfloat16), {"target": jnp.asarray(target)})
    assert low.dtype == jnp.float32 and low.shape == (B,)


def test_regression_normalises_targets_and_reports_original_units():
    values = RNG.normal(50.0, 12.0, size=3 * B)
    mean, std = float(values.mean()), float(values.std())
    task = Regression(target_mean=mean, target_std=std, best_metric="rmse")
    targets = np.array([task.targets({"label": v}, None)["target"] for v in values])
    assert targets.dtype == np.float32
    np.testing.assert_allclose(task.denormalise(targets), values, rtol=1e-6)
    noise = RNG.normal(scale=0.3, size=values.shape)
    noise[:4] = 0.0  # a few exact predictions: ties in the errors do not matter
    logits = (targets + noise).astype(np.float32)[:, None]
    batches = []
    for i, mask in enumerate(MASKS):
        t = targets[i * B : (i + 1) * B].copy()
        t[~mask] = 1e3  # garbage under padding
        batches.append((logits[i * B : (i + 1) * B], {"target": t, "mask": mask}))
    metrics = _evaluate(task, batches)

    real = np.concatenate(MASKS)
    y, pred = values[real], task.denormalise(logits[real, 0])
    expected = {
        "loss": float(np.mean((logits[real, 0].astype(np.float64) - targets[real]) ** 2)),
        "rmse": skm.root_mean_squared_error(y, pred),
        "mae": skm.mean_absolute_error(y, pred),
        "pearson": scipy.stats.pearsonr(y, pred).statistic,
        "spearman": scipy.stats.spearmanr(y, pred).statistic,
        "count": int(real.sum()),
    }
    _check(metrics, expected, rel=1e-5)
    # original units: the RMSE is the normalised one times std
    assert math.isclose(metrics["rmse"], math.sqrt(metrics["loss"]) * std, rel_tol=1e-4)
    assert not task.higher_is_better


def test_regression_members():
    task = Regression()
    assert isinstance(task, Task) and task.loss_name == "mse" and task.label_names == ()
    assert (task.name, task.output_level, task.output_size, task.target_keys) == (
        "regression",
        "example",
        1,
        ("target",),
    )
    assert task.metric_names == ("loss", "rmse", "mae", "pearson", "spearman", "count")
    assert task.higher_is_better and Regression(best_metric="spearman").higher_is_better
    assert not any(Regression(best_metric=m).higher_is_better for m in ("loss", "rmse", "mae"))
    assert Regression("huber", 2.0) == Regression(loss="huber", huber_delta=2.0)


# --- bad settings -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Classification(1), "num_classes is 1"),
        (
            lambda: Classification(3, best_metric="roc_auc"),
            "best_metric is 'roc_auc'.*train.best_metric",
        ),
        (lambda: Classification(2, best_metric="count"), "best_metric is 'count'"),
        (lambda: Classification(3, label_names=("a", "b")), "label_names has 2 names for 3"),
        (lambda: Classification(3, label_smoothing=1.0), "label_smoothing is 1.0"),
        (lambda: MultiLabel(("a",), threshold=0.0), "task.threshold is 0.0"),
        (lambda: MultiLabel(("a",), threshold=1.0), "task.threshold is 1.0"),
        (lambda: MultiLabel(()), "task.label_names is empty"),
        (lambda: MultiLabel(("a",), best_metric="accuracy"), "best_metric is 'accuracy'"),
        (lambda: Regression("mae"), "task.loss is 'mae'.*\\['mse', 'huber'\\]"),
        (lambda: Regression(huber_delta=0.0), "task.huber_delta is 0.0"),
        (lambda: Regression(target_std=0.0), "task.target_std is 0.0"),
        (lambda: Regression(target_std=float("nan")), "task.target_std is nan"),
        (lambda: Regression(target_mean=float("inf")), "task.target_mean is inf"),
        (lambda: Regression(best_metric="r2"), "best_metric is 'r2'"),
    ],
)
def test_bad_settings_name_their_key(make, message):
    with pytest.raises(ValueError, match=message):
        make()
