"""The training loop: `run(config, workdir)` trains a config's plan and writes everything to workdir.

What a run does, in order: validate the config; refuse a workdir written by a different config;
load data, the pretrained model and its new head; assign parameter groups and resolve the plan
(every error so far happens before anything is written); print the group report and the plan;
resume from the newest readable checkpoint; train phase by phase with a progress bar, evaluating
on validation every `eval_every_steps` and at each phase end, keeping the best checkpoint;
evaluate the best checkpoint on test and write results.json.

Workdir layout: config.json, run.json (ftjax version, git commit), metrics.jsonl, tensorboard/,
checkpoints/ (resumable), best/ (best validation params), results.json.
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

import ftjax
from ftjax import config as cfg_lib
from ftjax import freeze, sharding
from ftjax.checkpoint import Checkpoints
from ftjax.data import Split, build_splits, load_records
from ftjax.metrics import MetricWriter
from ftjax.phases import ResolvedPlan, resolve_plan
from ftjax.pretrained.load import Pretrained, load_pretrained
from ftjax.step import Engine, TrainState


class TrainingError(RuntimeError):
    """The run cannot go on (diverged loss, a workdir of another config); the message says why."""


@dataclasses.dataclass
class Setup:
    """Everything a run needs, built before anything is written to the workdir."""

    splits: dict[str, Split]
    pretrained: Pretrained
    groups: freeze.ParamGroups
    plan: ResolvedPlan
    engine: Engine
    steps_per_epoch: int


def build(config: ml_collections.ConfigDict) -> Setup:
    """Data, model, groups, plan and engine for `config` (validated first)."""
    cfg_lib.validate(config)
    data_cfg = cfg_lib.data_config(config)
    records = _load_records(data_cfg)
    m = config.model
    pretrained = load_pretrained(
        m.source, len(records.class_names), arch=m.arch, dtype=m.dtype, pooling=m.pooling, dropout=m.dropout,
        dont_load=tuple(m.dont_load), zero_init_head=m.zero_init_head, rng=jax.random.PRNGKey(config.seed),
    )  # fmt: skip
    splits = build_splits(data_cfg, pretrained.preprocessing, records=records,
                          process_index=jax.process_index(), process_count=jax.process_count())  # fmt: skip
    patterns = [tuple(g) for g in config.groups] or list(pretrained.model.layer_groups)
    groups = freeze.assign_groups(pretrained.params, patterns)
    steps_per_epoch = splits["train"].steps_per_epoch(config.train.batch_size)
    total = config.train.steps or max(1, round(config.train.epochs * steps_per_epoch))
    plan = resolve_plan(cfg_lib.plan(config, groups.names), groups.names, total_steps=total,
                        steps_per_epoch=steps_per_epoch, batch_size=config.train.batch_size)  # fmt: skip
    mesh = sharding.make_mesh(cfg_lib.mesh_config(config))
    engine = Engine(pretrained.model, groups, plan, cfg_lib.optim_config(config), mesh=mesh,
                    label_smoothing=config.train.label_smoothing)  # fmt: skip
    return Setup(splits, pretrained, groups, plan, engine, steps_per_epoch)


def _load_records(data_cfg):
    """Process 0 loads first: offline datasets are prepared into data_dir on first use, and
    several processes preparing one shared data_dir at once would collide."""
    if jax.process_count() == 1:
        return load_records(data_cfg)
    from jax.experimental import multihost_utils

    records = load_records(data_cfg) if jax.process_index() == 0 else None
    multihost_utils.sync_global_devices("ftjax: data prepared by process 0")
    return records if records is not None else load_records(data_cfg)


# ----------------------------------------------------------------------------- workdir


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _config_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
    return json.loads(config.to_json_best_effort())


def check_workdir(workdir: Path, config: ml_collections.ConfigDict) -> None:
    """Refuses to resume a workdir whose saved config differs from `config` (reads only)."""
    saved_file = workdir / "config.json"
    if not saved_file.exists():
        return
    saved, now = _flat(json.loads(saved_file.read_text())), _flat(_config_json(config))
    diff = [f"  {k}: workdir has {saved.get(k, '<unset>')!r}, this run has {now.get(k, '<unset>')!r}"
            for k in sorted(saved.keys() | now.keys()) if saved.get(k) != now.get(k)]  # fmt: skip
    if diff:
        raise TrainingError(
            f"{workdir} holds a run of a different config, so it cannot be resumed:\n" + "\n".join(diff)
            + "\nUse a new --workdir, or rerun with the same config to resume."
        )


def _write_run_files(workdir: Path, config: ml_collections.ConfigDict) -> None:
    if jax.process_index() != 0:
        return
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(json.dumps(_config_json(config), indent=2, sort_keys=True))
    info = {"ftjax_version": ftjax.__version__, "git_commit": _git_commit(), "jax_version": jax.__version__,
            "devices": [str(d) for d in jax.devices()], "argv": sys.argv}  # fmt: skip
    (workdir / "run.json").write_text(json.dumps(info, indent=2))


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(ftjax.__file__).parent)  # fmt: skip
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# ----------------------------------------------------------------------------- evaluation


def evaluate(engine: Engine, state: TrainState, split: Split, batch_size: int) -> dict[str, float]:
    """Loss and accuracy over every example of `split` exactly once."""
    sums = None
    for batch in split.eval_batches(batch_size):
        out = engine.eval_step(state, batch)
        sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    sums = jax.tree.map(float, jax.device_get(sums))
    count = sums["count"]
    return {"accuracy": sums["correct"] / count, "loss": sums["loss_sum"] / count, "count": int(count)}


def _better(metric: str, new: dict[str, float], best: dict[str, float] | None) -> bool:
    if best is None:
        return True
    return new[metric] > best[metric] if metric == "accuracy" else new[metric] < best[metric]


# ----------------------------------------------------------------------------- the loop


def _abstract_state(engine: Engine, phase: int, params: Any, model_state: Any, rng: jax.Array) -> TrainState:
    shardings = engine.state_shardings(phase, params, model_state)
    shapes = TrainState(params=params, opt_state=engine.opt_state_shapes(phase, params), model_state=model_state,
                        step=jnp.zeros((), jnp.int32), rng=rng)  # fmt: skip
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(jnp.shape(x), x.dtype, sharding=s), shapes, shardings)


def _print(*lines: str) -> None:
    if jax.process_index() == 0:
        print(*lines, sep="\n", flush=True)


def _write(bar: tqdm, line: str) -> None:
    """A line above the progress bar, from process 0 only (tqdm.write prints even when the bar is disabled)."""
    if jax.process_index() == 0:
        bar.write(line)


def run(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Train `config` in `workdir` (resuming it if it holds checkpoints); returns results.json's content."""
    started = time.time()
    workdir = Path(workdir)
    cfg_lib.validate(config)
    check_workdir(workdir, config)
    setup = build(config)
    engine, plan, tc = setup.engine, setup.plan, config.train
    _print(f"ftjax {ftjax.__version__}: {config.model.source} on {config.data.name}, "
           f"{setup.splits['train'].num_examples} train examples, {setup.steps_per_epoch} steps per epoch",
           str(setup.pretrained.report), "Parameter groups:", setup.groups.report(), "Phase plan:", plan.table())  # fmt: skip
    _write_run_files(workdir, config)

    ckpts = Checkpoints(workdir, keep=tc.keep_checkpoints)
    writer = MetricWriter(workdir)
    rng = jax.random.PRNGKey(config.seed)
    params, model_state = setup.pretrained.params, setup.pretrained.state
    restored = ckpts.restore_latest(lambda meta: _abstract_state(engine, meta["phase"], params, model_state, rng))
    train_iter = setup.splits["train"].train_iterator(tc.batch_size, seed=config.seed)
    if restored is None:
        state, phase_index = engine.init_state(params, model_state, rng), 0
        best, wall_before = None, 0.0
    else:
        state, meta = restored
        phase_index, best, wall_before = meta["phase"], meta["best"], meta["wall_s"]
        train_iter.set_state(meta["data_state"])
        _print(f"Resumed {workdir} at step {int(state.step)} (phase {plan.phases[phase_index].name}).")
    del params

    def checkpoint(step: int) -> None:
        meta = {"phase": phase_index, "data_state": train_iter.get_state(), "best": best,
                "wall_s": wall_before + time.time() - started}  # fmt: skip
        ckpts.save(step, state, meta)

    def validate_now(step: int) -> None:
        nonlocal best
        metrics = evaluate(engine, state, setup.splits["validation"], tc.eval_batch_size)
        writer.write(step, "validation", metrics)
        if _better(tc.best_metric, metrics, best):
            best = {**metrics, "step": step}
            ckpts.save_best(step, {"params": state.params, "model_state": state.model_state}, best)
        _write(bar, f"step {step} [{plan.phase_at(step - 1).name}] validation: accuracy {metrics['accuracy']:.4f} "
                  f"loss {metrics['loss']:.4f} (best {best['accuracy']:.4f} at step {best['step']})")  # fmt: skip

    start = int(state.step)
    bar = tqdm(total=plan.total_steps, initial=start, unit="step", dynamic_ncols=True,
               disable=jax.process_index() != 0, file=sys.stdout)  # fmt: skip
    compiled: set[int] = set()
    window: list[dict[str, float]] = []
    window_start = time.time()
    for step in range(start, plan.total_steps):
        phase = plan.phase_at(step)
        if phase.index != phase_index:
            state = engine.enter_phase(state, phase.index, previous=phase_index)
            phase_index = phase.index
            _write(bar, f"phase {phase.index} '{phase.name}': training {', '.join(phase.trainable)}")
        if phase.index not in compiled:  # the first step of a phase in this process compiles it
            bar.set_description(f"compiling {phase.name}")
            compiled.add(phase.index)
        state, metrics = engine.train_step(phase.index, state, next(train_iter))
        metrics = jax.tree.map(float, jax.device_get(metrics))
        _check_finite(metrics, step, phase.name, tc.nan_policy, ckpts)
        window.append(metrics)
        done = step + 1
        bar.set_description(phase.name)
        bar.update(1)
        if done % tc.log_every_steps == 0 or done == phase.end:
            _log_train(writer, bar, window, done, tc.batch_size, time.time() - window_start)
            window, window_start = [], time.time()
        if (tc.eval_every_steps and done % tc.eval_every_steps == 0) or done == phase.end:
            validate_now(done)
        if (tc.checkpoint_every_steps and done % tc.checkpoint_every_steps == 0) or done == phase.end:
            checkpoint(done)
    bar.close()
    ckpts.wait()
    return _finish(setup, ckpts, writer, workdir, config, state, best, wall_before + time.time() - started)


def _check_finite(metrics: dict[str, float], step: int, phase: str, policy: str, ckpts: Checkpoints) -> None:
    loss = metrics["loss"]
    if math.isfinite(loss):
        return
    ckpts.wait()
    last = ckpts.steps()[-1] if ckpts.steps() else None
    raise TrainingError(
        f"loss is {loss} at step {step + 1} in phase '{phase}'; stopping. The last good checkpoint "
        f"(step {last}) is intact. Lower the phase's learning rate or set optim.clip_norm."
    )


def _log_train(writer: MetricWriter, bar: tqdm, window: list[dict[str, float]], step: int, batch: int,
               seconds: float) -> None:  # fmt: skip
    mean = {k: float(np.mean([m[k] for m in window])) for k in window[0]}
    mean["examples_per_s"] = len(window) * batch / max(seconds, 1e-9)
    writer.write(step, "train", mean)
    lr = max(v for k, v in mean.items() if k.startswith("lr/"))
    bar.set_postfix(loss=f"{mean['loss']:.4f}", lr=f"{lr:.2e}", ex_s=f"{mean['examples_per_s']:.0f}")


def _finish(setup: Setup, ckpts: Checkpoints, writer: MetricWriter, workdir: Path, config, state: TrainState,
            best: dict[str, Any] | None, wall_s: float) -> dict[str, Any]:  # fmt: skip
    """Evaluates the best checkpoint on test and writes results.json."""
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                          {"params": state.params, "model_state": state.model_state})  # fmt: skip
    best_tree = ckpts.restore_best(target)
    best_state = state.replace(params=best_tree["params"], model_state=best_tree["model_state"])
    test = evaluate(setup.engine, best_state, setup.splits["test"], config.train.eval_batch_size)
    writer.write(best["step"], "test", test)
    writer.close()
    results = {"test": test, "validation": {k: v for k, v in best.items() if k != "step"}, "best_step": best["step"],
               "steps": setup.plan.total_steps, "wall_s": round(wall_s, 1),
               "compiles": setup.engine.compile_count}  # fmt: skip
    if jax.process_index() == 0:
        (workdir / "results.json").write_text(json.dumps(results, indent=2))
        _print(f"test accuracy {test['accuracy']:.4f} (best validation {best['accuracy']:.4f} at step "
               f"{best['step']}); results in {workdir / 'results.json'}")  # fmt: skip
    ckpts.close()
    return results
