"""The freeze/unfreeze ablation sweep (experiments/freeze_ablation.py) on a tiny BERT.

Runs the real script as a subprocess, as a user would: --dry-run resolves and draws every plan
without training; a sweep killed with SIGKILL after its first run finished, then rerun with the
same command, finishes the rest without redoing the finished run and resumes the interrupted one
from its checkpoint; the full --quick sweep (slow) produces every output with sane numbers.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from train_fixtures import REPO, data_dir, tiny_bert  # noqa: F401  (pytest fixtures)

sys.path.insert(0, str(REPO / "experiments"))

import freeze_ablation  # noqa: E402
import sweep_plans  # noqa: E402

SCRIPT = REPO / "experiments" / "freeze_ablation.py"
TINY_GROUPS = (
    "embeddings",
    "layer_0",
    "layer_1",
    "head",
)  # MiniLM config's groups fitted to 2 layers


def sweep_command(sweep_dir: Path, source: Path, data: Path, *flags: str) -> list[str]:
    return [
        sys.executable,
        str(SCRIPT),
        "--quick",
        f"--sweep-dir={sweep_dir}",
        f"--model-source={source}",
        f"--set=data.data_dir={str(data)!r}",
        *flags,
    ]


def env() -> dict[str, str]:
    return {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}


def run_sweep(cmd: list[str], timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env())


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def assert_png(path: Path, min_side: int = 200) -> None:
    import matplotlib.image

    assert path.exists(), f"{path} was not written"
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and min(img.shape[:2]) >= min_side, (
        f"{path}: unexpected image shape {img.shape}"
    )
    assert img[..., :3].std() > 0.05, f"{path} is blank"


def processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line contains `text` (to prove a killed sweep left no run behind)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if text in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


# ----------------------------------------------------------------------------- plans


def test_lr_table_is_zero_while_frozen_and_the_schedule_while_trained():
    from ftjax import phases

    names = ("embeddings", "layer_0", "layer_1", "head")
    plan = phases.resolve_plan(
        phases.preset("gradual_unfreezing", names, lr=1e-3), names, total_steps=40
    )
    lrs = sweep_plans.lr_table(plan)
    assert set(lrs) == set(names) and all(v.shape == (40,) for v in lrs.values())
    for p in plan.phases:
        for g in names:
            got = lrs[g][p.start : p.end]
            if g in p.trainable:
                want = np.asarray(p.lr_fn(g)(np.arange(p.length, dtype=np.float32)))
                np.testing.assert_allclose(got, want, rtol=1e-6)
                assert got.min() > 0
            else:
                assert not got.any(), f"{g} is frozen in {p.name} but has a learning rate"
    assert (
        lrs["embeddings"][:30].max() == 0 and lrs["embeddings"][30:].min() > 0
    )  # unfrozen last, at step 30


def test_dry_run_prints_and_draws_every_plan_without_training(tmp_path, tiny_bert, data_dir):
    sweep_dir = tmp_path / "sweep"
    every = "--schedules=" + ",".join(freeze_ablation.SCHEDULES)  # the adapter ones too
    out = run_sweep(sweep_command(sweep_dir, tiny_bert, data_dir, "--dry-run", every))
    assert out.returncode == 0, out.stderr[-3000:]
    text = (sweep_dir / "plans.txt").read_text()
    assert out.stdout.startswith(text[:200])
    for name in freeze_ablation.SCHEDULES:
        assert f"== {name} (seeds 0, 1)" in text
        assert_png(sweep_dir / "plans" / f"{name}.png")
        assert not (sweep_dir / name / "seed_0" / "config.json").exists(), (
            "a dry run must not train"
        )
    assert f"groups (depth order): {', '.join(TINY_GROUPS)}" in text
    # gradual unfreezing over 4 groups: 4 phases, the last one training everything
    block = text.split("== gradual_discr_stlr")[1].split("==")[0]
    assert block.count("unfreeze_") == 4 and "18 steps x batch 8 = 144 examples" in block


def test_bad_arguments_fail_before_anything_runs(tmp_path):
    out = run_sweep(
        [
            sys.executable,
            str(SCRIPT),
            "--quick",
            f"--sweep-dir={tmp_path / 's'}",
            "--schedules=full,nope",
        ]
    )
    assert (
        out.returncode == 2
        and "unknown ['nope']" in out.stderr
        and "gradual_discr_stlr" in out.stderr
    )
    out = run_sweep(
        [sys.executable, str(SCRIPT), "--quick", f"--sweep-dir={tmp_path / 's'}", "--seeds=0,x"]
    )
    assert out.returncode == 2 and "--seeds" in out.stderr
    assert not (tmp_path / "s").exists()


def test_schedule_overrides_for_every_schedule():
    lrs = freeze_ablation.LRs()
    for s in freeze_ablation.SCHEDULES.values():
        o = s.overrides(TINY_GROUPS, lrs)
        assert bool(o["plan.preset"]) != bool(o["plan.phases"]), s.name
    scratch = freeze_ablation.SCHEDULES["scratch"].overrides(TINY_GROUPS, lrs)
    assert scratch["model.dont_load"] == (".*",)
    gradual = freeze_ablation.SCHEDULES["gradual_discr"].overrides(TINY_GROUPS, lrs)["plan.phases"]
    assert [p["trainable"] for p in gradual] == ["top:1", "top:2", "top:3", "top:4"]
    assert "fraction" not in gradual[-1] and gradual[0]["layerwise_decay"] == pytest.approx(1 / 2.6)


def test_shallow_bert_is_the_first_layers_of_the_checkpoint(tmp_path, tiny_bert):
    from safetensors.numpy import load_file

    from ftjax.pretrained.load import load_pretrained

    folder = freeze_ablation.shallow_bert(str(tiny_bert), tmp_path / "quick_model", layers=1)
    assert json.loads((folder / "config.json").read_text())["num_hidden_layers"] == 1
    cut, full = load_file(folder / "model.safetensors"), load_file(tiny_bert / "model.safetensors")
    assert set(cut) == {k for k in full if ".layer.1." not in k} and ".layer.1." not in str(
        sorted(cut)
    )
    for k in cut:
        np.testing.assert_array_equal(cut[k], full[k])
    assert (folder / "tokenizer.json").read_bytes() == (tiny_bert / "tokenizer.json").read_bytes()
    pre = load_pretrained(folder, 2, pooling="mean")
    assert sorted(pre.params["encoder"]) == ["layer_0"]
    assert all(p.startswith(("head/", "pooler/")) for p in pre.report.reinitialised), (
        pre.report.reinitialised
    )


# ----------------------------------------------------------------------------- running


def start_and_kill_after(
    cmd: list[str], first: Path, second_ckpts: Path, log: Path, timeout: float = 900
) -> None:
    """Starts the sweep; SIGKILLs it once `first` exists and the next run has written a checkpoint."""
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=env())
    deadline = time.time() + timeout
    try:
        while not (
            first.exists()
            and second_ckpts.exists()
            and any(p.name.isdigit() for p in second_ckpts.iterdir())
        ):
            assert proc.poll() is None, (
                f"sweep exited ({proc.returncode}) before the kill point:\n{log.read_text()[-3000:]}"
            )
            assert time.time() < deadline, (
                f"kill point not reached in {timeout}s:\n{log.read_text()[-3000:]}"
            )
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)  # no cleanup in the sweep process at all
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_killed_sweep_resumes_without_redoing_finished_runs(tmp_path, tiny_bert, data_dir):
    sweep_dir = tmp_path / "sweep"
    cmd = sweep_command(
        sweep_dir,
        tiny_bert,
        data_dir,
        "--schedules=linear_probe,gradual_discr_stlr",
        "--seeds=0",
        "--workers=1",
    )
    first, second = (
        sweep_dir / "linear_probe" / "seed_0",
        sweep_dir / "gradual_discr_stlr" / "seed_0",
    )
    start_and_kill_after(
        cmd, first / "results.json", second / "checkpoints", tmp_path / "killed.log"
    )
    time.sleep(1.0)
    assert not processes_mentioning(str(sweep_dir / "gradual_discr_stlr")), (
        "the killed sweep left its run training"
    )
    assert not (second / "results.json").exists(), (
        "the second run finished before the kill; the test proved nothing"
    )
    first_mtime = (first / "results.json").stat().st_mtime_ns
    first_log = (first / "train.log").read_text()

    out = run_sweep([*cmd, f"--publish={tmp_path / 'published'}"])
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "linear_probe/seed_0: already finished" in out.stdout
    assert (first / "results.json").stat().st_mtime_ns == first_mtime, "the finished run was redone"
    assert (first / "train.log").read_text() == first_log, "the finished run was started again"
    assert "Resumed" in (second / "train.log").read_text(), (
        "the interrupted run did not resume from its checkpoint"
    )
    for run in (first, second):
        assert len(list(run.rglob("results.json"))) == 1
        assert not (run / "checkpoints").exists(), "finished runs' checkpoints are removed"
        assert (run / "best").exists()
    rows = read_csv(sweep_dir / "results.csv")
    assert [(r["schedule"], r["seed"]) for r in rows] == [
        ("linear_probe", "0"),
        ("gradual_discr_stlr", "0"),
    ]
    for r in rows:
        assert 0 <= float(r["test_accuracy"]) <= 1 and r["steps"] == "18" and r["examples"] == "144"
    md = (sweep_dir / "results.md").read_text()
    assert "2 of 2 runs finished" in md and "Not finished" not in md
    published = tmp_path / "published"
    assert (published / "results.md").read_text() == md
    assert sorted(p.name for p in (published / "plans").iterdir()) == [
        "gradual_discr_stlr.png",
        "linear_probe.png",
    ]
    for png in ("val_curves.png", "test_accuracy.png"):
        assert_png(published / png)


@pytest.mark.slow
def test_quick_sweep_end_to_end(tmp_path, tiny_bert, data_dir):
    sweep_dir = tmp_path / "sweep"
    started = time.time()
    # The default schedules and one adapter schedule (LoRA on the quick model).
    names = [n for n in freeze_ablation.SCHEDULES if n not in freeze_ablation.ADAPTER_SCHEDULES]
    names.append("lora_r4")
    schedules = "--schedules=" + ",".join(names)
    out = run_sweep(sweep_command(sweep_dir, tiny_bert, data_dir, "--workers=2", schedules))
    print(f"--quick sweep: {time.time() - started:.0f} s")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = read_csv(sweep_dir / "results.csv")
    assert sorted((r["schedule"], r["seed"]) for r in rows) == sorted(
        (n, s) for n in names for s in ("0", "1")
    )
    for r in rows:
        assert 0 <= float(r["val_accuracy"]) <= 1 and 0 <= float(r["test_accuracy"]) <= 1, r
        assert float(r["test_loss"]) > 0 and float(r["wall_s"]) > 0 and r["steps"] == "18", r
    md = (sweep_dir / "results.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(table) == len(names) and sorted(
        line.split("|")[2].strip() for line in table
    ) == sorted(names)
    means = [float(line.split("|")[3].split("±")[0]) for line in table]
    assert means == sorted(means, reverse=True) and all("±" in line.split("|")[3] for line in table)
    for png in ("val_curves.png", "test_accuracy.png", *(f"plans/{n}.png" for n in names)):
        assert_png(sweep_dir / png)
    for n in names:  # every run logged a validation curve up to its last step
        for seed in (0, 1):
            curve = sweep_report_curve(sweep_dir / n / f"seed_{seed}")
            assert curve and curve[-1][0] == 18
    rerun = run_sweep(sweep_command(sweep_dir, tiny_bert, data_dir, schedules))
    assert rerun.returncode == 0 and rerun.stdout.count(": already finished") == 2 * len(names)


def sweep_report_curve(workdir: Path) -> list[tuple[int, float]]:
    import sweep_report

    return sweep_report.validation_curve(workdir / "metrics.jsonl")
