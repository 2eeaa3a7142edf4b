"""The training loop with tasks other than classification: a sentence-pair regression on a user's
file keeps the checkpoint with the best Pearson correlation and writes every split's metrics in
results.json, resuming it continues exactly, and a researcher's own task object (a custom metric)
runs through `train.run` without editing ftjax."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from train_fixtures import data_dir, read_jsonl, small_config, tiny_bert  # noqa: F401  (pytest fixtures)

from ftjax import tasks, train

PHASES = (
    dict(name="head", trainable="head", lr=1e-2, steps=4),
    dict(name="all", trainable="all", lr=1e-3),
)


def _pairs_file(path, n=96):
    rng = np.random.default_rng(0)
    words = ["red", "blue", "green", "cat", "dog", "car", "sun", "rain"]
    rows = []
    for i in range(n):
        a, b = rng.choice(words, 4), rng.choice(words, 4)
        rows.append(
            {
                "s1": " ".join(a),
                "s2": " ".join(b),
                "score": round(len(set(a) & set(b)) / 4 + 0.01 * i, 3),
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _config(tiny_bert, tmp_path, **overrides):
    c = small_config(tiny_bert, tmp_path / "tfds", plan__phases=PHASES)
    c.data.name, c.data.path = "csv", _pairs_file(tmp_path / "pairs.jsonl")
    c.data.text_key, c.data.text_pair_key, c.data.label_key = "s1", "s2", "score"
    c.train.steps, c.train.eval_every_steps, c.train.checkpoint_every_steps = 10, 2, 4
    for key, value in overrides.items():
        node = c
        *parents, leaf = key.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def test_pair_regression_keeps_the_best_pearson_and_reports_every_split(tiny_bert, tmp_path):
    results = train.run(_config(tiny_bert, tmp_path), tmp_path / "run")
    assert results["task"] == "regression" and results["best_metric"] == "pearson"
    assert set(results["metrics"]) == {"validation", "test"}
    assert {"pearson", "spearman", "rmse", "mae", "loss"} <= set(results["metrics"]["test"])
    validation = [
        r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r["split"] == "validation"
    ]
    best = max(validation, key=lambda r: r["pearson"])
    assert results["best_step"] == best["step"]
    assert results["metrics"]["validation"]["pearson"] == best["pearson"]
    on_disk = json.loads((tmp_path / "run" / "results.json").read_text())
    assert on_disk["metrics"]["test"] == results["metrics"]["test"] == results["test"]


def test_pair_regression_resumes_exactly(tiny_bert, tmp_path):
    straight = train.run(_config(tiny_bert, tmp_path), tmp_path / "straight")
    stopped = _config(tiny_bert, tmp_path, train__steps=6)
    train.run(stopped, tmp_path / "resumed")
    resumed = train.run(
        _config(tiny_bert, tmp_path, train__resume_overrides=("train.steps",)), tmp_path / "resumed"
    )
    assert resumed["metrics"]["test"]["pearson"] == straight["metrics"]["test"]["pearson"]
    assert resumed["best_step"] == straight["best_step"]


@dataclasses.dataclass(frozen=True)
class CountErrors:
    """A user's task: classification whose best checkpoint makes the fewest errors."""

    base: tasks.Classification
    name: str = "count_errors"
    best_metric: str = "errors"
    higher_is_better: bool = False

    def __getattr__(self, key: str) -> Any:  # everything else as the base task does it
        return getattr(self.base, key)

    @property
    def metric_names(self) -> tuple[str, ...]:
        return (*self.base.metric_names, "errors")

    def eval_sums(self, logits, batch):
        sums = self.base.eval_sums(logits, batch)
        wrong = (jnp.argmax(logits, -1) != batch["label"]) * batch["mask"]
        return {**sums, "errors": jnp.sum(wrong.astype(jnp.float32))}

    def aggregate(self, sums: Mapping[str, float], rows, references=None) -> dict[str, float]:
        return {**self.base.aggregate(sums, rows, references), "errors": sums["errors"]}


def test_a_custom_task_object_runs_through_the_loop(tiny_bert, data_dir, tmp_path):
    config = small_config(tiny_bert, data_dir, plan__phases=PHASES, train__steps=8)
    task = CountErrors(tasks.Classification(2, label_names=("neg", "pos")))
    results = train.run(config, tmp_path / "run", task=task)
    assert results["task"] == "count_errors" and results["best_metric"] == "errors"
    test = results["metrics"]["test"]
    assert test["errors"] == round((1 - test["accuracy"]) * test["count"])
    validation = [
        r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r["split"] == "validation"
    ]
    assert results["best_step"] == min(validation, key=lambda r: r["errors"])["step"]
