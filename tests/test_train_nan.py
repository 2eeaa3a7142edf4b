"""A diverging run stops with a message naming the step and phase, and its last good checkpoint
stays intact and restorable (tiny BERT, through the CLI)."""

from __future__ import annotations

import re

import numpy as np
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
    tiny_bert,
    write_config,
)


def test_nan_loss_stops_naming_step_and_phase_and_keeps_the_last_good_checkpoint(
    tmp_path, tiny_bert, data_dir, jax_cache
):
    # Adam moves every trainable weight by ~lr per step: at 3e38 the pooler and head weights reach
    # float32's limit after one step of phase 'top', and the next logits overflow to inf/nan.
    diverging = tuple(dict(p, lr=3e38) if p["name"] == "top" else p for p in PHASES)
    config = write_config(
        tmp_path / "nan.py",
        tiny_bert,
        data_dir,
        plan__phases=diverging,
        train__checkpoint_every_steps=0,
    )
    workdir = tmp_path / "run"
    out = run_cli(config, workdir, jax_cache=jax_cache)

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


def test_skip_policy_skips_nonfinite_steps_and_leaves_params_as_they_were(
    tmp_path, tiny_bert, data_dir, jax_cache
):
    # Same divergence, with nan_policy='skip': every step of 'top' whose loss is not finite is
    # dropped in-graph, so the run finishes and 'top' leaves no non-finite value behind.
    diverging = tuple(dict(p, lr=3e38) if p["name"] == "top" else p for p in PHASES)
    config = write_config(
        tmp_path / "skip.py",
        tiny_bert,
        data_dir,
        plan__phases=diverging,
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
