"""End-to-end smoke runs of every shipped experiment config with its `:quick` argument (a few
steps on a data subset) through the CLI, as CI runs them. Slow: real pretrained models."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
from train_fixtures import REPO, data_dir, jax_cache, read_jsonl, run_cli  # noqa: F401  (pytest fixtures)

from ftjax.config import data_config, validate
from ftjax.data import load_records

CONFIGS = (
    "minilm_rotten_tomatoes",
    "effnet_lite0_fashion_mnist",
    "mobilenet_v2_fashion_mnist",
    "minilm_conll2003_ner",
    "minilm_conll2003_entity_types",
    "minilm_lee_pairs",
    "minilm_squad_fixture",
    "minilm_rotten_tomatoes_lora",
)
TASKS = {
    "minilm_conll2003_ner": "token_classification",
    "minilm_conll2003_entity_types": "multi_label",
    "minilm_lee_pairs": "regression",
    "minilm_squad_fixture": "extractive_qa",
}


def _load(path):
    spec = importlib.util.spec_from_file_location(f"{path.stem}_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.py")), ids=lambda p: p.stem)
def test_every_shipped_config_validates(path):
    """The online-only configs (BERT-base SST-2, ViT-B/16 CIFAR-10) cannot run here, but they must
    stay valid against the schema; their docstrings carry the command."""
    module = _load(path)
    validate(module.get_config())
    assert "python -m ftjax.main --config=configs/" + path.name in module.__doc__


@pytest.mark.slow
@pytest.mark.parametrize("name", CONFIGS)
def test_quick_config_runs_end_to_end(name, tmp_path, data_dir, jax_cache):
    path = REPO / "configs" / f"{name}.py"
    config = _load(path).get_config("quick")
    config.data.data_dir = str(data_dir)
    load_records(data_config(config))  # prepare the data outside the run
    workdir = tmp_path / "run"
    out = run_cli(
        f"{path}:quick",
        workdir,
        f"--config.data.data_dir={data_dir}",
        jax_cache=jax_cache,
        timeout=900,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    results = json.loads((workdir / "results.json").read_text())
    key = results["best_metric"]
    assert "Phase plan:" in out.stdout and f"test {key} " in out.stdout
    assert results["task"] == TASKS.get(name, "classification")
    assert results["metrics"]["test"] == results["test"] and results["test"]["count"] > 0
    assert math.isfinite(results["test"][key]) and math.isfinite(results["test"]["loss"])
    rows = read_jsonl(workdir / "metrics.jsonl")
    assert results["steps"] == max(r["step"] for r in rows if r["split"] == "train")
    assert [r["step"] for r in rows if r["split"] == "test"] == [results["best_step"]]
    assert (workdir / "config.json").exists() and (workdir / "run.json").exists()


@pytest.mark.slow
def test_image_folder_quick_config_runs_end_to_end(tmp_path, jax_cache):
    """configs/effnet_lite0_image_folder.py:quick:FOLDER on a small digit folder (20 per class)
    written by scripts/make_digit_folder.py."""
    make = _load(REPO / "scripts" / "make_digit_folder.py")
    assert make.write_folder(tmp_path / "digits", per_class=20) == {"train": 160, "test": 40}
    workdir = tmp_path / "run"
    path = REPO / "configs" / "effnet_lite0_image_folder.py"
    out = run_cli(f"{path}:quick:{tmp_path / 'digits'}", workdir, jax_cache=jax_cache, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    results = json.loads((workdir / "results.json").read_text())
    assert results["test"]["count"] == 32 and results["steps"] == 6


@pytest.mark.slow
@pytest.mark.parametrize(
    "teacher_config,student_config,layers",
    [
        ("minilm_rotten_tomatoes", "minilm_rotten_tomatoes_distill", 3),
        ("effnet_lite0_fashion_mnist", "mobilenet_v2_fashion_mnist_distill", None),
    ],
    ids=["minilm-3L", "effnet-to-mobilenet"],
)
def test_distill_quick_configs_run_with_their_teachers_quick_run(
    teacher_config, student_config, layers, tmp_path, data_dir, jax_cache
):
    """A distill config's :quick, taught by its teacher config's :quick run: the 3-layer MiniLM
    student of the default experiment, and MobileNetV2 taught by EfficientNet-Lite0 (which
    normalises pixels differently). The teacher's logits are in every step."""
    data = f"--config.data.data_dir={data_dir}"
    teacher = tmp_path / "teacher"
    out = run_cli(
        f"{REPO / 'configs' / teacher_config}.py:quick",
        teacher,
        data,
        jax_cache=jax_cache,
        timeout=900,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    student = tmp_path / "student"
    path = REPO / "configs" / f"{student_config}.py"
    out = run_cli(
        f"{path}:quick",
        student,
        data,
        f"--config.distill.teacher={teacher}",
        jax_cache=jax_cache,
        timeout=900,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    record = json.loads((student / "inference" / "inference.json").read_text())
    assert record["checkpoint_config"].get("num_hidden_layers") == layers
    rows = [r for r in read_jsonl(student / "metrics.jsonl") if r["split"] == "train"]
    assert rows and all("task_loss" in r and r["task_loss"] != r["loss"] for r in rows)
