"""Distillation on a tiny BERT: the soft losses match numpy references, a student built from a
subset of the source's layers holds exactly those layers' weights, a distilled run trains with
the teacher's logits in its step (alpha=0 reproduces plain training bit for bit), resumes
exactly when killed, and a teacher that cannot teach the student is refused by name."""

from __future__ import annotations

import json
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from train_fixtures import (  # noqa: F401  (pytest fixtures: data_dir, jax_cache, tiny_bert)
    assert_bitwise_equal,
    data_dir,
    flat_arrays,
    jax_cache,
    read_state,
    run_and_kill_when,
    run_cli,
    small_config,
    tiny_bert,
    write_config,
)

from ftjax import train
from ftjax.compress import distill
from ftjax.config import ConfigError, validate
from ftjax.inference import load_run
from ftjax.pretrained.load import load_pretrained
from ftjax.tasks import Classification, MultiLabel, Regression, TokenClassification

PLAN = (
    dict(name="head", trainable="head", lr=1e-2, steps=4),
    dict(name="all", trainable="all", lr=5e-4),
)


def _softmax(x, axis=-1):
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def _kl(s, t, axis=-1):
    p, q = _softmax(t, axis), _softmax(s, axis)
    return (p * (np.log(p) - np.log(q))).sum(axis)


def test_soft_losses_match_numpy_references():
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(4, 3)).astype(np.float32)
    batch = {"label": jnp.array([0, 1, 2, 0]), "mask": jnp.ones(4)}
    got = distill.soft_loss(Classification(3), jnp.asarray(s), jnp.asarray(t), batch, 2.0)
    np.testing.assert_allclose(got, _kl(s / 2, t / 2), rtol=1e-5, atol=1e-7)
    assert (
        float(
            distill.soft_loss(Classification(3), jnp.asarray(t), jnp.asarray(t), batch, 2.0).max()
        )
        < 1e-6
    )

    target = 1 / (1 + np.exp(-t / 2))
    bce = -(
        target * np.log(1 / (1 + np.exp(-s / 2)))
        + (1 - target) * np.log(1 - 1 / (1 + np.exp(-s / 2)))
    )
    got = distill.soft_loss(MultiLabel(("a", "b", "c")), jnp.asarray(s), jnp.asarray(t), batch, 2.0)
    np.testing.assert_allclose(got, bce.mean(-1), rtol=1e-5)

    got = distill.soft_loss(Regression(), jnp.asarray(s[:, :1]), jnp.asarray(t[:, :1]), batch, 2.0)
    np.testing.assert_allclose(got, (s[:, 0] - t[:, 0]) ** 2, rtol=1e-6)

    # tagging: KL per scored token (tags != -100), averaged over the batch's scored tokens
    s3, t3 = (
        rng.normal(size=(2, 5, 3)).astype(np.float32),
        rng.normal(size=(2, 5, 3)).astype(np.float32),
    )
    tags = np.array([[0, 1, -100, 2, -100], [1, -100, -100, -100, -100]])
    task = TokenClassification(("O", "B-X", "I-X"))
    per_row = distill.soft_loss(
        task,
        jnp.asarray(s3),
        jnp.asarray(t3),
        {"tags": jnp.asarray(tags), "mask": jnp.ones(2)},
        1.0,
    )
    valid = tags != -100
    np.testing.assert_allclose(per_row.mean(), _kl(s3, t3)[valid].mean(), rtol=1e-5)


def test_the_mix_is_the_task_loss_at_alpha_0_and_scaled_by_t_squared():
    s, t = jnp.array([[2.0, -1.0]]), jnp.array([[0.5, 0.3]])
    batch = {"label": jnp.array([1]), "mask": jnp.ones(1)}
    task = Classification(2)
    mix = lambda a, temp: distill.Distillation(None, temp, a).loss(task, s, t, batch)
    np.testing.assert_array_equal(mix(0.0, 3.0), task.loss(s, batch))
    soft = distill.soft_loss(task, s, t, batch, 3.0)
    np.testing.assert_allclose(mix(1.0, 3.0), 9.0 * soft, rtol=1e-6)


def test_a_student_from_every_other_layer_holds_exactly_those_weights(tiny_bert):
    full = load_pretrained(tiny_bert, 2, pooling="mean")
    student = load_pretrained(tiny_bert, 2, pooling="mean", keep_layers=(1,))
    assert student.config["num_hidden_layers"] == 1 and full.config["num_hidden_layers"] == 2
    flat = lambda p: traverse_util.flatten_dict(p, sep="/")
    f, s = flat(full.params), flat(student.params)
    layer = [k for k in s if k.startswith("encoder/layer_0/")]
    assert layer and not any(k.startswith("encoder/layer_1/") for k in s)
    for k in layer:
        np.testing.assert_array_equal(s[k], f[k.replace("layer_0", "layer_1")])
    for k in (k for k in s if "embeddings" in k):
        np.testing.assert_array_equal(s[k], f[k])
    with pytest.raises(
        ValueError, match=r"keep_layers=\(2,\) must be increasing layer indices in \[0, 2\)"
    ):
        load_pretrained(tiny_bert, 2, keep_layers=(2,))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, tiny_bert, data_dir):
    workdir = tmp_path_factory.mktemp("distill") / "teacher"
    train.run(small_config(tiny_bert, data_dir, plan__phases=PLAN), workdir)
    return workdir


def _student(tiny_bert, data_dir, teacher, **more):
    return small_config(
        tiny_bert,
        data_dir,
        plan__phases=PLAN,
        model__keep_layers=(0,),
        distill__teacher=str(teacher),
        **more,
    )


def test_a_distilled_student_trains_on_the_teachers_logits(tmp_path, tiny_bert, data_dir, teacher):
    results = train.run(_student(tiny_bert, data_dir, teacher, distill__alpha=0.7), tmp_path / "s")
    rows = [
        json.loads(line) for line in (tmp_path / "s" / "metrics.jsonl").read_text().splitlines()
    ]
    logged = [r for r in rows if "task_loss" in r.get("metrics", r)]
    assert logged, "distilled steps log the task loss beside the mixed loss"
    assert 0 <= results["test"]["accuracy"] <= 1
    record = json.loads((tmp_path / "s" / "inference" / "inference.json").read_text())
    assert record["checkpoint_config"]["num_hidden_layers"] == 1

    # alpha=0: the teacher runs in the step but the loss is the task's, so training follows
    # plain training (to float rounding: XLA fuses the two programs differently)
    plain_cfg = small_config(tiny_bert, data_dir, plan__phases=PLAN, model__keep_layers=(0,))
    train.run(plain_cfg, tmp_path / "p")
    train.run(_student(tiny_bert, data_dir, teacher, distill__alpha=0.0), tmp_path / "z")
    losses = lambda w: [r["loss"] for r in _rows(tmp_path / w) if r.get("split") == "train"]
    np.testing.assert_allclose(losses("z"), losses("p"), rtol=1e-5)
    zero, plain = (flat_arrays(read_state(tmp_path / w)["params"]) for w in ("z", "p"))
    for k in plain:
        np.testing.assert_allclose(zero[k], plain[k], rtol=1e-4, atol=1e-6, err_msg=k)
    # alpha > 0: the logged loss is the mix, not the task's loss
    taught = [r for r in _rows(tmp_path / "s") if r.get("split") == "train"]
    assert all(abs(r["loss"] - r["task_loss"]) > 1e-3 for r in taught)


def _rows(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_a_killed_distilled_run_resumes_exactly(tmp_path, tiny_bert, data_dir, teacher, jax_cache):
    config = write_config(
        tmp_path / "student.py",
        tiny_bert,
        data_dir,
        plan__phases=PLAN,
        model__keep_layers=(1,),
        model__dropout=0.1,
        distill__teacher=str(teacher),
    )
    baseline, resumed = tmp_path / "baseline", tmp_path / "resumed"
    out = run_cli(config, baseline, jax_cache=jax_cache)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    run_and_kill_when(config, resumed, resumed / "checkpoints" / "9", jax_cache=jax_cache)
    out = run_cli(config, resumed, jax_cache=jax_cache)
    assert out.returncode == 0 and "Resumed" in out.stdout, out.stdout[-3000:]
    state = read_state(resumed)
    assert "teacher" not in state or not jax.tree.leaves(state["teacher"])
    assert_bitwise_equal(state, read_state(baseline), "final train state")


def test_a_teacher_that_cannot_teach_is_refused(tmp_path, tiny_bert, data_dir, teacher):
    with pytest.raises(distill.DistillError, match="config.distill.teacher: .* holds no inference"):
        train.build(_student(tiny_bert, data_dir, tmp_path))  # not a run: no inference record
    pre = load_pretrained(tiny_bert, 3).preprocessing
    with pytest.raises(distill.DistillError, match="trained for classification with 2 outputs"):
        distill.load_teacher(teacher, "best", Classification(3), pre)
    other_vocab = {**pre, "tokenizer_file": str(tmp_path)}
    (tmp_path / "vocab.txt").write_text("[PAD]\nhello\n")
    with pytest.raises(distill.DistillError, match="must read the same token ids"):
        distill.load_teacher(teacher, "best", load_run(teacher).task, other_vocab)
    bad = _student(tiny_bert, data_dir, teacher, distill__alpha=1.5)
    with pytest.raises(ConfigError, match=r"config.distill.alpha: is 1.5"):
        validate(bad)
    cached = _student(tiny_bert, data_dir, teacher, train__cache_features=True)
    with pytest.raises(ConfigError, match="config.train.cache_features"):
        validate(cached)


def test_a_teacher_that_normalises_pixels_differently_sees_its_own_inputs():
    """A MobileNetV2 student (ImageNet mean/std) taught by EfficientNet-Lite ((x - 127) / 128):
    the teacher must see the pixels as its own preprocessing would have given them."""
    student = {"image_size": 8, "mean": (123.7, 116.3, 103.5), "std": (58.4, 57.1, 57.4)}
    theirs = {"image_size": 8, "mean": (127.0, 127.0, 127.0), "std": (128.0, 128.0, 128.0)}
    run = types.SimpleNamespace(preprocessing=theirs, workdir="runs/teacher")
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3))
    scale, shift = distill._image_affine(student, run)
    seen = (pixels - student["mean"]) / student["std"] * scale + np.asarray(shift)
    np.testing.assert_allclose(seen, (pixels - theirs["mean"]) / theirs["std"], atol=1e-12)
    assert distill._image_affine(dict(theirs), run) is None  # same normalisation: untouched
    with pytest.raises(distill.DistillError, match="reads 8 px images, the student 16 px"):
        distill._image_affine(dict(student, image_size=16), run)
