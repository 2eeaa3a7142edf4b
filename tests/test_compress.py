"""Compression end to end on a tiny BERT run: pruning during fine-tuning through the config,
`python -m ftjax.compress` for each method writing an ordinary run that evaluate and predict
read, its refusals, and the report script's table and plot."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from flax import traverse_util
from train_fixtures import (  # noqa: F401  (pytest fixtures: data_dir, tiny_bert)
    REPO,
    cli_env,
    data_dir,
    small_config,
    snapshot,
    tiny_bert,
)

from ftjax import inference, train
from ftjax.compress import pruning
from ftjax.evaluate import run_evaluation

PLAN = (
    dict(name="head", trainable="head", lr=1e-2, steps=4),
    dict(name="all", trainable="all", lr=5e-4),
)


@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory, tiny_bert, data_dir):
    """16 steps, pruned per tensor to 50% over steps 0-8 (masks every 2 steps)."""
    workdir = tmp_path_factory.mktemp("compress") / "pruned"
    config = small_config(
        tiny_bert,
        data_dir,
        plan__phases=PLAN,
        prune__sparsity=0.5,
        prune__end=0.5,
        prune__update_every=2,
    )
    train.run(config, workdir)
    return workdir


def _kernels(params):
    flat = traverse_util.flatten_dict(params, sep="/")
    return {
        k: np.asarray(v)
        for k, v in flat.items()
        if k.startswith("encoder/") and k.endswith("kernel")
    }


def test_a_run_pruned_during_fine_tuning_ends_at_its_sparsity(pruned_run):
    run = inference.load_run(pruned_run, "final", finished=True)
    kernels = _kernels(run.params)
    assert kernels
    for k, w in kernels.items():  # per tensor: exactly half of every kernel is zero
        assert (w == 0).sum() == round(0.5 * w.size), k
    assert pruning.sparsity_of(run.params) == pytest.approx(0.5, abs=1e-3)
    embeddings = traverse_util.flatten_dict(run.params, sep="/")
    assert all(
        (np.asarray(v) != 0).mean() > 0.99 for k, v in embeddings.items() if "embeddings" in k
    )
    results = json.loads((pruned_run / "results.json").read_text())
    assert 0 <= results["test"]["accuracy"] <= 1 and results["costs"]["sparsity"] == 0.5


def _compress(*flags):
    return subprocess.run(
        [sys.executable, "-m", "ftjax.compress", *flags],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=cli_env(),
        timeout=600,
    )


@pytest.mark.parametrize(
    "flags, check",
    [
        (["--method=int8"], "int8"),
        (["--method=magnitude", "--sparsity=0.7", "--scope=global"], "global"),
        (["--method=magnitude", "--n_m=2:4"], "2:4"),
        (["--method=structured", "--ffn_keep=0.5"], "ffn"),
    ],
    ids=["int8", "global70", "2of4", "ffn50"],
)
def test_each_method_writes_a_run_that_evaluates_and_predicts(pruned_run, tmp_path, flags, check):
    out = tmp_path / "variant"
    done = _compress(f"--workdir={pruned_run}", f"--out={out}", *flags)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "MB stored" in done.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["derived_from"]["workdir"] == str(pruned_run)
    run = inference.load_run(out, finished=True)
    source = inference.load_run(pruned_run, finished=True)
    kernels = _kernels(run.params)
    if check == "global":
        assert pruning.sparsity_of(run.params) == pytest.approx(0.7, abs=1e-3)
    elif check == "2:4":
        for k, w in kernels.items():  # 2 of every 4 consecutive inputs kept, per output
            groups = (w != 0).reshape(w.shape[0] // 4, 4, w.shape[1]).sum(1)
            assert (groups <= 2).all(), k
    elif check == "ffn":
        assert run.record["checkpoint_config"]["intermediate_size"] == (
            source.record["checkpoint_config"]["intermediate_size"] // 2
        )
    else:
        assert run.record["quantization"]["weights"] == "int8"
    _, evaluation = run_evaluation(out, {"name": "rotten_tomatoes", "split": "test"})
    assert 0 <= evaluation["metrics"]["accuracy"] <= 1 and evaluation["metrics"]["count"] == 2551
    (tmp_path / "new.csv").write_text("text\na fine film\nflat and dull\n")
    predictions = tmp_path / "predictions.jsonl"
    predicted = subprocess.run(
        [
            sys.executable,
            "-m",
            "ftjax.predict",
            f"--workdir={out}",
            f"--input={tmp_path / 'new.csv'}",
            f"--output={predictions}",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=cli_env(),
        timeout=600,
    )
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    assert [json.loads(line)["label"] in ("rotten", "fresh") for line in predictions.open()] == [
        True,
        True,
    ]


def test_bad_inputs_are_refused_and_nothing_on_disk_changes(pruned_run, tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    before = snapshot(pruned_run), snapshot(busy)
    cases = [
        ([f"--out={busy}", "--method=int8"], "is not empty; give a new or empty folder"),
        ([f"--out={tmp_path / 'a'}", "--method=magnitude", "--n_m=4"], "--n_m='4': give N:M"),
        ([f"--out={tmp_path / 'b'}", "--method=magnitude", "--sparsity=1.5"], "sparsity=1.5"),
    ]
    for flags, says in cases:
        done = _compress(f"--workdir={pruned_run}", *flags)
        assert done.returncode == 1 and says in done.stderr, done.stderr[-2000:]
    done = _compress(f"--workdir={tmp_path / 'none'}", f"--out={tmp_path / 'c'}", "--method=int8")
    assert done.returncode == 1 and "does not exist" in done.stderr
    assert (snapshot(pruned_run), snapshot(busy)) == before
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


@pytest.mark.slow
def test_the_report_tables_every_variant(pruned_run, tmp_path):
    out = tmp_path / "report"
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "experiments" / "compress_report.py"),
            f"--teacher={pruned_run}",
            f"--work={tmp_path / 'variants'}",
            f"--out={out}",
            "--sparsities=0.6",
            "--heads_keep=1",
            "--repeats=3",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=cli_env(),
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = json.loads((out / "results.json").read_text())["rows"]
    names = [r["variant"] for r in rows]
    assert names == [
        "teacher",
        "int8",
        "int8 + embeddings",
        "int8 w+a",
        "magnitude 60%",
        "magnitude 2:4",
        "FFN 50%",
        "heads 1",
    ]
    assert all(0 <= r["test"] <= 1 and r["b1_ms"] > 0 and r["b32_ex_s"] > 0 for r in rows)
    by = {r["variant"]: r for r in rows}
    assert (
        by["int8"]["bytes"] < by["teacher"]["bytes"]
        and by["FFN 50%"]["params"] < by["teacher"]["params"]
    )
    assert "| magnitude 60% |" in (out / "results.md").read_text()
    assert (out / "compress.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
