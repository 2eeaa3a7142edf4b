"""Training runs through the CLI on a tiny BERT: exact resume after kill -9 (with no metrics
row logged twice), corrupt-latest fallback, config-mismatch refusal, a deleted best/ rebuilt,
and what a finished workdir holds (results.json, metrics.jsonl, config.json, run.json,
TensorBoard events).

One uninterrupted run (module fixture `baseline`) is the reference every resumed run must match
bit for bit; its compiled steps land in a session XLA cache, so the later runs skip compilation.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from train_fixtures import (  # noqa: F401  (pytest fixtures: data_dir, jax_cache, tiny_bert)
    PHASE_ENDS,
    assert_bitwise_equal,
    checkpoint_steps,
    data_dir,
    jax_cache,
    read_events,
    read_jsonl,
    read_meta,
    read_state,
    run_and_kill_when,
    run_cli,
    small_config,
    snapshot,
    tiny_bert,
    write_config,
)


@pytest.fixture(scope="module")
def config_file(tmp_path_factory, tiny_bert, data_dir) -> Path:
    return write_config(tmp_path_factory.mktemp("cfg") / "small.py", tiny_bert, data_dir)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, config_file, jax_cache) -> Path:
    """The workdir of the small run, never interrupted."""
    workdir = tmp_path_factory.mktemp("baseline") / "run"
    out = run_cli(config_file, workdir, jax_cache=jax_cache)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return workdir


def _row_keys(workdir: Path) -> list[tuple[int, str]]:
    return [(r["step"], r["split"]) for r in read_jsonl(workdir / "metrics.jsonl")]


def _assert_same_run(workdir: Path, baseline: Path) -> None:
    """Final train state (params, optimizer state, step, RNG), best params and test metrics match."""
    assert checkpoint_steps(workdir)[-1] == PHASE_ENDS[-1]
    assert_bitwise_equal(read_state(workdir), read_state(baseline), "final train state")
    assert checkpoint_steps(workdir, "best") == checkpoint_steps(baseline, "best")
    assert_bitwise_equal(
        read_state(workdir, kind="best"), read_state(baseline, kind="best"), "best params"
    )
    ours, theirs = (json.loads((w / "results.json").read_text()) for w in (workdir, baseline))
    assert ours["test"] == theirs["test"] and ours["best_step"] == theirs["best_step"]


def test_kill_at_phase_boundary_and_in_phase_two_then_resume_is_bitwise_exact(
    tmp_path, config_file, baseline, jax_cache
):
    workdir = tmp_path / "run"
    # Phase 'head' ends at step 4: kill as soon as its phase-end checkpoint is committed.
    run_and_kill_when(config_file, workdir, workdir / "checkpoints" / "4", jax_cache=jax_cache)
    assert 4 in checkpoint_steps(workdir)
    # Resume, and kill again inside phase 'top' (steps 4-10), right after the step-9 checkpoint.
    run_and_kill_when(config_file, workdir, workdir / "checkpoints" / "9", jax_cache=jax_cache)
    assert read_meta(workdir, 9)["phase"] == 1
    out = run_cli(config_file, workdir, jax_cache=jax_cache)
    assert out.returncode == 0, out.stderr[-5000:]
    assert "Resumed" in out.stdout and "(phase top)" in out.stdout, out.stdout[-3000:]
    _assert_same_run(workdir, baseline)
    assert _row_keys(workdir) == _row_keys(baseline)  # each row once, whatever the kills cut


def test_rows_logged_after_the_resumed_checkpoint_are_not_logged_twice(
    tmp_path, tiny_bert, data_dir, baseline, jax_cache
):
    # Checkpoints at phase ends only (4, 10, 16): killed right after the validation row of step
    # 6, the run resumes at step 4, and steps 5-6 are trained and logged again.
    config = write_config(
        tmp_path / "ends.py", tiny_bert, data_dir, train__checkpoint_every_steps=0
    )
    workdir = tmp_path / "run"
    metrics = workdir / "metrics.jsonl"

    def validated_step_6() -> bool:
        return metrics.exists() and '"step": 6, "split": "validation"' in metrics.read_text()

    run_and_kill_when(config, workdir, validated_step_6, jax_cache=jax_cache)
    assert checkpoint_steps(workdir) == [4], "step 10 was saved before the kill; nothing to test"
    assert (6, "validation") in _row_keys(workdir)
    out = run_cli(config, workdir, jax_cache=jax_cache)
    assert out.returncode == 0, out.stderr[-5000:]
    assert f"Resumed {workdir} at step 4 (phase head)" in out.stdout, out.stdout[-3000:]

    assert _row_keys(workdir) == _row_keys(baseline)
    ours = [r for r in read_jsonl(metrics) if r["split"] == "train"]
    theirs = [r for r in read_jsonl(baseline / "metrics.jsonl") if r["split"] == "train"]
    assert [r["loss"] for r in ours] == [r["loss"] for r in theirs]
    # TensorBoard: the resumed run's event file starts with a purge of the steps after 4.
    files = sorted((workdir / "tensorboard").iterdir(), key=lambda f: f.stat().st_mtime_ns)
    assert len(files) == 2
    starts = [e.step for e in read_events(files[-1]) if e.HasField("session_log")]
    assert starts == [5], starts
    assert not any(e.HasField("session_log") for e in read_events(files[0]))


def test_a_deleted_best_of_a_finished_run_is_rebuilt_from_the_final_checkpoint(
    tmp_path, config_file, baseline, jax_cache
):
    workdir = tmp_path / "run"
    shutil.copytree(baseline, workdir)
    shutil.rmtree(workdir / "best")
    best_step = json.loads((baseline / "results.json").read_text())["best_step"]
    out = run_cli(config_file, workdir, jax_cache=jax_cache)
    assert out.returncode == 0, out.stderr[-5000:]
    lost = f"the best validation step ({best_step}) can no longer be tested, so " * (
        best_step != PHASE_ENDS[-1]
    )
    assert (
        f"WARNING: {workdir / 'best'} holds no checkpoint (was it deleted?); {lost}the final "
        f"checkpoint (step {PHASE_ENDS[-1]}) was validated again and saved as best/"
    ) in out.stdout, out.stdout[-3000:]
    results = json.loads((workdir / "results.json").read_text())
    assert results["best_step"] == PHASE_ENDS[-1]
    assert checkpoint_steps(workdir, "best") == [PHASE_ENDS[-1]]
    final = [r for r in read_jsonl(baseline / "metrics.jsonl") if r["split"] == "validation"][-1]
    assert results["validation"]["accuracy"] == final["accuracy"]
    assert [k for k in _row_keys(workdir) if k[1] == "test"] == [(PHASE_ENDS[-1], "test")]

    again = run_cli(config_file, workdir, jax_cache=jax_cache)  # and every later rerun works
    assert again.returncode == 0 and "WARNING" not in again.stdout, again.stderr[-3000:]
    assert json.loads((workdir / "results.json").read_text())["test"] == results["test"]


@pytest.mark.slow
def test_kill_exactly_at_phase_boundary_with_phase_end_checkpoints_only(
    tmp_path, tiny_bert, data_dir, baseline, jax_cache
):
    config = write_config(
        tmp_path / "ends.py", tiny_bert, data_dir, train__checkpoint_every_steps=0
    )
    workdir = tmp_path / "run"
    run_and_kill_when(
        config, workdir, workdir / "checkpoints" / str(PHASE_ENDS[1]), jax_cache=jax_cache
    )
    assert set(checkpoint_steps(workdir)) <= set(PHASE_ENDS)
    out = run_cli(config, workdir, jax_cache=jax_cache)
    assert out.returncode == 0, out.stderr[-5000:]
    assert f"Resumed {workdir} at step {PHASE_ENDS[1]} (phase top)" in out.stdout, out.stdout[
        -3000:
    ]
    _assert_same_run(workdir, baseline)


def _corrupt_arrays(step_dir: Path) -> None:
    """Overwrite every array data file of a committed checkpoint step (metadata left alone)."""
    files = [
        f
        for f in (step_dir / "state").rglob("*")
        if f.is_file() and f.stat().st_size > 100 and "metadata" not in f.name.lower()
    ]
    assert files, f"no array files under {step_dir}"
    for f in files:
        f.write_bytes(b"\0" * 64)


def test_corrupt_latest_checkpoint_falls_back_to_previous_with_a_warning(
    tmp_path, config_file, baseline, jax_cache
):
    workdir = tmp_path / "run"
    shutil.copytree(baseline, workdir)
    (workdir / "results.json").unlink()
    latest, previous = checkpoint_steps(workdir)[-1], checkpoint_steps(workdir)[-2]
    _corrupt_arrays(workdir / "checkpoints" / str(latest))
    out = run_cli(config_file, workdir, jax_cache=jax_cache)
    assert out.returncode == 0, out.stderr[-5000:]
    assert f"state at step {latest} is unreadable; trying the previous one" in out.stderr, (
        out.stderr[-3000:]
    )
    assert f"Resumed {workdir} at step {previous}" in out.stdout, out.stdout[-3000:]
    _assert_same_run(workdir, baseline)


def test_a_different_config_refuses_to_resume_and_touches_nothing(
    config_file, baseline, tiny_bert, data_dir
):
    from ftjax import train

    before = snapshot(baseline)
    config = small_config(
        tiny_bert,
        data_dir,
        train__eval_every_steps=5,
        optim__weight_decay=0.01,
        train__compile_ahead=True,  # how a run compiles, never what: no change to refuse
    )
    with pytest.raises(train.TrainingError) as err:
        train.run(config, baseline)
    message = str(err.value)
    assert "train.eval_every_steps: workdir has 6, this run has 5" in message, message
    assert "optim.weight_decay" in message and "train.batch_size" not in message, message
    assert "compile_ahead" not in message, message
    assert snapshot(baseline) == before


def test_results_metrics_and_run_files(baseline, config_file):
    results = json.loads((baseline / "results.json").read_text())
    rows = read_jsonl(baseline / "metrics.jsonl")
    validation = [r for r in rows if r["split"] == "validation"]
    train_rows = [r for r in rows if r["split"] == "train"]
    test_rows = [r for r in rows if r["split"] == "test"]

    # Validation every 6 steps and at each phase end; train rows every 3 steps and at phase ends.
    assert [r["step"] for r in validation] == [4, 6, 10, 12, 16]
    assert [r["step"] for r in train_rows] == [3, 4, 6, 9, 10, 12, 15, 16]
    for r in train_rows:
        assert r["loss"] > 0 and r["examples_per_s"] > 0 and 0 <= r["accuracy"] <= 1, r
        assert any(k.startswith("lr/") and v > 0 for k, v in r.items()), r
    assert {k for k in train_rows[0] if k.startswith("lr/")} == {
        "lr/head"
    }  # phase 'head' trains the head only
    assert all(r["count"] == 64 for r in validation)

    # The best step is the first with the highest validation accuracy; test is evaluated there.
    top = max(r["accuracy"] for r in validation)
    best = next(r for r in validation if r["accuracy"] == top)
    assert (
        results["best_step"]
        == best["step"]
        == read_meta(baseline, results["best_step"], "best")["step"]
    )
    assert results["validation"]["accuracy"] == best["accuracy"]
    assert len(test_rows) == 1 and test_rows[0]["step"] == best["step"]
    assert (
        results["test"]["accuracy"] == test_rows[0]["accuracy"] and results["test"]["count"] == 64
    )
    assert (
        0 <= results["test"]["accuracy"] <= 1 and results["wall_s"] > 0 and results["steps"] == 16
    )

    saved = json.loads((baseline / "config.json").read_text())
    assert saved["train"]["eval_every_steps"] == 6 and saved["plan"]["phases"][1]["name"] == "top"
    run_info = json.loads((baseline / "run.json").read_text())
    assert run_info["ftjax_version"] and run_info["git_commit"] and run_info["jax_version"]
    events = list((baseline / "tensorboard").glob("events.out.tfevents.*"))
    assert events and all(e.stat().st_size > 100 for e in events)
