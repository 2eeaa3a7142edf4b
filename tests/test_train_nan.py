"""A diverging run stops with a message naming the step and phase, and its last good checkpoint
stays intact and restorable (tiny BERT, through the CLI); the message's flags resume it with
lower learning rates; a step whose update makes the parameters non-finite is never
checkpointed; and nan_policy='skip' gives up after train.max_skipped_steps skipped steps."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from train_fixtures import (  # noqa: F401  (pytest fixtures: data_dir, jax_cache, tiny_bert)
    PHASES,
    checkpoint_steps,
    data_dir,
    flat_arrays,
    jax_cache,
    read_jsonl,
    read_meta,
    read_state,
    run_cli,
    small_config,
    snapshot,
    tiny_bert,
    write_config,
)

# Adam moves every trainable weight by ~lr per step: at 3e38 the pooler and head weights reach
# float32's limit after one step of phase 'top', and the next logits overflow to inf/nan.
DIVERGING = tuple(dict(p, lr=3e38) if p["name"] == "top" else p for p in PHASES)


@pytest.fixture(scope="module")
def nan_stopped(tmp_path_factory, tiny_bert, data_dir, jax_cache):
    """(config file, workdir, CLI output) of the run that stops on a non-finite loss in 'top'."""
    folder = tmp_path_factory.mktemp("nan")
    config = write_config(
        folder / "nan.py",
        tiny_bert,
        data_dir,
        plan__phases=DIVERGING,
        train__checkpoint_every_steps=0,
    )
    workdir = folder / "run"
    return config, workdir, run_cli(config, workdir, jax_cache=jax_cache)


def test_nan_loss_stops_naming_step_and_phase_and_keeps_the_last_good_checkpoint(nan_stopped):
    _, workdir, out = nan_stopped

    assert out.returncode != 0
    found = re.search(
        r"TrainingError: loss is (\S+) at step (\d+) in phase 'top'; stopping", out.stderr
    )
    assert found, out.stderr[-3000:]
    assert found.group(1) in ("nan", "inf", "-inf") and 5 <= int(found.group(2)) <= 10
    assert "The last good checkpoint (step 4) is intact" in out.stderr
    assert not (workdir / "results.json").exists()

    # Only the phase-end checkpoint of 'head' was written, and it restores to finite params.
    assert checkpoint_steps(workdir) == [4]
    assert read_meta(workdir, 4)["phase"] == 0
    state = read_state(workdir, 4)
    assert int(state["step"]) == 4
    params = flat_arrays(state["params"])
    assert params and all(np.isfinite(x).all() for x in params.values())


def test_the_nan_message_gives_the_flags_that_resume_with_lower_lrs(
    nan_stopped, tmp_path, tiny_bert, data_dir, jax_cache
):
    config, stopped, out = nan_stopped
    assert (
        "To resume from it, rerun the same command with --config.plan.lr_scale=0.1 "
        "--config.train.resume_overrides=plan.lr_scale (10x lower learning rates in every "
        "phase; the change is logged in run.json)."
    ) in out.stderr, out.stderr[-3000:]

    # The same flags with a factor that tames 3e38 (to 3e-3) resume step 4 and finish.
    workdir = tmp_path / "run"
    shutil.copytree(stopped, workdir)
    flags = ("--config.plan.lr_scale=1e-41", "--config.train.resume_overrides=plan.lr_scale")
    resumed = run_cli(config, workdir, *flags, jax_cache=jax_cache)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resumed {workdir} at step 4 (phase head)" in resumed.stdout
    assert "config changes allowed by train.resume_overrides" in resumed.stdout
    assert "  plan.lr_scale: 1.0 -> 1e-41" in resumed.stdout, resumed.stdout[-3000:]
    assert (workdir / "results.json").exists()

    change = json.loads((workdir / "run.json").read_text())["config_changes"][-1]
    assert change["changes"] == {"plan.lr_scale": {"from": 1.0, "to": 1e-41}}
    assert "--config.plan.lr_scale=1e-41" in change["argv"]
    rows = [r for r in read_jsonl(workdir / "metrics.jsonl") if r["split"] == "config_change"]
    assert rows == [
        {"step": 4, "split": "config_change", "changes": {"plan.lr_scale": [1.0, 1e-41]}}
    ]
    assert json.loads((workdir / "config.json").read_text())["plan"]["lr_scale"] == 1e-41
    final = flat_arrays(read_state(workdir)["params"])
    assert all(np.isfinite(x).all() for x in final.values())

    # Without the override the change is refused, naming the flag that would allow it.
    from ftjax import train

    before = snapshot(workdir)
    original = small_config(
        tiny_bert, data_dir, plan__phases=DIVERGING, train__checkpoint_every_steps=0
    )
    with pytest.raises(train.TrainingError) as err:
        train.run(original, workdir)
    message = str(err.value)
    assert "plan.lr_scale: workdir has 1e-41, this run has 1.0" in message, message
    assert "--config.train.resume_overrides=plan.lr_scale" in message
    assert snapshot(workdir) == before


def test_nonfinite_params_after_a_finite_loss_are_never_checkpointed(
    tmp_path, tiny_bert, data_dir, jax_cache
):
    # An LR beyond float32 (1e39 is inf there) makes the first update of 'top' (step 5) inf/nan
    # while its loss, computed before the update, is finite: checkpointing every step, step 5
    # must not be saved as the "last good" checkpoint.
    phases = tuple(dict(p, lr=1e39) if p["name"] == "top" else p for p in PHASES)
    config = write_config(
        tmp_path / "inf.py",
        tiny_bert,
        data_dir,
        plan__phases=phases,
        train__checkpoint_every_steps=1,
    )
    workdir = tmp_path / "run"
    out = run_cli(config, workdir, jax_cache=jax_cache)
    assert out.returncode != 0
    found = re.search(
        r"TrainingError: (parameters are not finite after step 5 in phase 'top' \(its loss was "
        r"finite\)|loss is \S+ but the updated parameters are not finite at step 5 in phase "
        r"'top'); stopping",
        out.stderr,
    )
    assert found, out.stderr[-3000:]
    assert "The last good checkpoint (step 4) is intact" in out.stderr
    assert checkpoint_steps(workdir)[-1] == 4
    for step in checkpoint_steps(workdir):
        assert all(np.isfinite(x).all() for x in flat_arrays(read_state(workdir, step)).values())


def test_skip_policy_skips_nonfinite_steps_and_leaves_params_as_they_were(
    tmp_path, tiny_bert, data_dir, jax_cache
):
    # Same divergence, with nan_policy='skip': every step of 'top' whose loss is not finite is
    # dropped in-graph, so the run finishes and 'top' leaves no non-finite value behind.
    config = write_config(
        tmp_path / "skip.py",
        tiny_bert,
        data_dir,
        plan__phases=DIVERGING,
        train__checkpoint_every_steps=0,
        train__nan_policy="skip",
    )
    workdir = tmp_path / "run"
    out = run_cli(config, workdir, jax_cache=jax_cache)

    assert out.returncode == 0, out.stderr[-3000:]
    assert "step skipped" in out.stdout + out.stderr
    assert (workdir / "results.json").exists()
    rows = [r for r in read_jsonl(workdir / "metrics.jsonl") if r["split"] == "train"]
    assert any(r.get("skipped", 0) > 0 for r in rows)
    final = flat_arrays(read_state(workdir)["params"])
    assert all(np.isfinite(x).all() for x in final.values())


def test_skip_policy_stops_after_max_skipped_steps_in_a_row(
    tmp_path, tiny_bert, data_dir, jax_cache
):
    config = write_config(
        tmp_path / "skip3.py",
        tiny_bert,
        data_dir,
        plan__phases=DIVERGING,
        train__checkpoint_every_steps=0,
        train__nan_policy="skip",
        train__max_skipped_steps=3,
    )
    workdir = tmp_path / "run"
    out = run_cli(config, workdir, jax_cache=jax_cache)

    assert out.returncode != 0 and not (workdir / "results.json").exists()
    found = re.search(
        r"TrainingError: loss is \S+ at step (\d+) in phase 'top': 3 steps in a row were skipped "
        r"\(steps (\d+)-(\d+)\), train.max_skipped_steps=3; stopping, as the run no longer trains",
        out.stderr,
    )
    assert found, out.stderr[-3000:]
    assert found.group(1) == found.group(3) and int(found.group(3)) - int(found.group(2)) == 2
    assert "The last good checkpoint (step 4) is intact" in out.stderr
    assert "--config.plan.lr_scale=0.1 --config.train.resume_overrides=plan.lr_scale" in out.stderr
    assert "or allow more skipped steps with --config.train.max_skipped_steps=N." in out.stderr
    assert (out.stdout + out.stderr).count("step skipped") == 3
