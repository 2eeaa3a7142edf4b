"""Knowledge distillation: a finished run's model teaches a student inside the student's steps.

    config.distill.teacher = "runs/minilm_rt"     # a finished ftjax workdir (its best checkpoint)
    config.model.keep_layers = (0, 2, 4)          # e.g. a 3-layer student from every other layer

The teacher is a frozen model: its variables ride in the train state (`TrainState.teacher`,
never checkpointed: a resumed run loads them again), every train step runs its forward in
inference mode under `stop_gradient`, and the step's loss becomes

    (1 - alpha) * task loss  +  alpha * T^2 * soft loss(student / T, teacher / T)

(Hinton et al. 2015; the T^2 keeps the soft term's gradient scale independent of T). The soft
loss is the task's own kind of match: KL(teacher || student) over classes (classification, per
token for tagging), over positions for extractive-QA start/end, per-label sigmoid cross-entropy
on the teacher's probabilities (multi-label), squared difference of outputs (regression: T is
not applied). A user's own task supplies `soft_loss(student, teacher, batch, temperature)`.
Evaluation, checkpoints and exports see the student only.

Not here: the train step that calls this (`ftjax.steps`), loading layer subsets
(`ftjax.pretrained.load`, `keep_layers`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ftjax import inference
from ftjax.models.base import Model
from ftjax.tasks import Task
from ftjax.tasks.token_classification import IGNORE

__all__ = ["DistillError", "Teacher", "Distillation", "load_teacher", "soft_loss"]

Batch = Mapping[str, jax.Array]


class DistillError(ValueError):
    """A teacher cannot teach this student; the message says why and what to change."""


@dataclasses.dataclass(frozen=True)
class Teacher:
    """A frozen model: `variables` = {"params": ..., "state": ...} travel in the train state."""

    model: Model
    variables: dict[str, Any]
    workdir: Path
    # (scale, shift) per channel taking the student's normalised images to the teacher's, when
    # the two models normalise pixels differently (e.g. MobileNetV2 teaching from EfficientNet).
    image_affine: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    def logits(self, variables: dict[str, Any], batch: Batch) -> jax.Array:
        if self.image_affine is not None:
            scale, shift = (jnp.asarray(v, jnp.float32) for v in self.image_affine)
            batch = {**batch, "image": batch["image"] * scale + shift}
        out, _ = self.model.apply(variables["params"], variables["state"], batch, train=False)
        return jax.lax.stop_gradient(out.astype(jnp.float32))


@dataclasses.dataclass(frozen=True)
class Distillation:
    """How a step mixes the teacher into its loss."""

    teacher: Teacher
    temperature: float = 2.0
    alpha: float = 0.5

    def loss(self, task: Task, logits: jax.Array, teacher_logits: jax.Array, batch: Batch):
        """Per-example loss [B]: the task's loss mixed with the temperature-scaled soft loss."""
        t = self.temperature
        soft = soft_loss(task, logits.astype(jnp.float32), teacher_logits, batch, t)
        scale = 1.0 if task.name == "regression" else t * t
        return (1 - self.alpha) * task.loss(logits, batch) + self.alpha * scale * soft


def load_teacher(workdir: str | Path, checkpoint: str, task: Task, preprocessing: dict) -> Teacher:
    """The finished run at `workdir` as a teacher for a student of `task` reading
    `preprocessing`'s inputs; a teacher trained for another task or on other inputs is refused."""
    try:
        run = inference.load_run(workdir, checkpoint, finished=True)
    except inference.InferenceError as e:
        raise DistillError(f"config.distill.teacher: {e}") from None
    _check_compatible(run, task, preprocessing)
    variables = {"params": run.params, "state": run.model_state}
    return Teacher(run.model, variables, run.workdir, _image_affine(preprocessing, run))


def _check_compatible(run: inference.Run, task: Task, preprocessing: dict) -> None:
    where = f"config.distill.teacher {run.workdir}"
    if run.task.name != task.name or run.task.output_size != task.output_size:
        raise DistillError(
            f"{where} was trained for {run.task.name} with {run.task.output_size} outputs; the "
            f"student's task is {task.name} with {task.output_size}: distil from a run of this task"
        )
    if tuple(run.task.label_names) != tuple(task.label_names):
        raise DistillError(
            f"{where} names its outputs {list(run.task.label_names)[:6]}, the student's data "
            f"{list(task.label_names)[:6]}: the label orders must match"
        )
    mine, theirs = preprocessing.get("tokenizer_file"), run.preprocessing.get("tokenizer_file")
    if (mine is None) != (theirs is None):
        raise DistillError(f"{where} reads {'text' if theirs else 'images'}; the student does not")
    if mine is not None and _vocab(mine) != _vocab(theirs):
        raise DistillError(
            f"{where} tokenizes with {theirs}, which differs from the student's {mine}: both must "
            "read the same token ids (pick a student of the teacher's family)"
        )


def _image_affine(student: dict, run: inference.Run):
    """Per-channel (scale, shift) with teacher input = student input * scale + shift, or None
    for text or when both normalise alike: each model sees (pixel - mean) / std in its own units."""
    teacher = run.preprocessing
    if "mean" not in student:
        return None
    if _pair(student["image_size"]) != _pair(teacher["image_size"]):
        raise DistillError(
            f"config.distill.teacher {run.workdir} reads {teacher['image_size']} px images, the "
            f"student {student['image_size']} px: set data.image_size to the teacher's"
        )
    s_mean, s_std, t_mean, t_std = (
        np.asarray(v, np.float64)
        for v in (student["mean"], student["std"], teacher["mean"], teacher["std"])
    )
    if np.array_equal(s_mean, t_mean) and np.array_equal(s_std, t_std):
        return None
    return tuple((s_std / t_std).tolist()), tuple(((s_mean - t_mean) / t_std).tolist())


def _pair(size) -> tuple[int, int]:
    return (int(size), int(size)) if np.ndim(size) == 0 else tuple(int(v) for v in size)


def _vocab(tokenizer_file: str) -> bytes:
    path = Path(tokenizer_file)
    folder = path.parent if path.is_file() else path
    return b"".join(
        (folder / n).read_bytes() for n in ("tokenizer.json", "vocab.txt") if (folder / n).is_file()
    )


def soft_loss(
    task: Task, student: jax.Array, teacher: jax.Array, batch: Batch, temperature: float
) -> jax.Array:
    """Per-example [B] match of the student's logits to the teacher's (see module doc)."""
    own = getattr(task, "soft_loss", None)
    if own is not None:
        return own(student, teacher, batch, temperature)
    if task.name == "classification":
        return _kl(student / temperature, teacher / temperature, axis=-1)
    if task.name == "token_classification":
        return _token_kl(student / temperature, teacher / temperature, batch)
    if task.name == "extractive_qa":
        kl = _kl(student / temperature, teacher / temperature, axis=1)  # over positions
        return kl.mean(-1)  # start and end
    if task.name == "multi_label":
        target = jax.nn.sigmoid(teacher / temperature)
        return optax.sigmoid_binary_cross_entropy(student / temperature, target).mean(-1)
    if task.name == "regression":
        return jnp.mean((student - teacher) ** 2, -1)
    raise DistillError(
        f"task {task.name!r} has no soft loss: give it a soft_loss(student, teacher, batch, "
        "temperature) method returning a per-example loss"
    )


def _kl(student: jax.Array, teacher: jax.Array, axis: int) -> jax.Array:
    """KL(softmax(teacher) || softmax(student)) along `axis`."""
    log_p = jax.nn.log_softmax(teacher, axis)
    return jnp.sum(jnp.exp(log_p) * (log_p - jax.nn.log_softmax(student, axis)), axis)


def _token_kl(student: jax.Array, teacher: jax.Array, batch: Batch) -> jax.Array:
    """Per-token KL on the tokens the task scores, normalised as the task's own loss (the batch's
    token mean once `masked_mean` averages the rows)."""
    rows = batch["mask"] > 0 if "mask" in batch else jnp.ones(student.shape[0], bool)
    valid = ((batch["tags"] != IGNORE) & rows[:, None]).astype(jnp.float32)
    kl = _kl(student, teacher, axis=-1) * valid
    return jnp.sum(kl, -1) * jnp.sum(rows.astype(jnp.float32)) / jnp.maximum(jnp.sum(valid), 1.0)
