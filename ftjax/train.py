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
import functools
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
from ftjax import feature_cache as feature_cache
from ftjax import param_groups, sharding
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
    groups: param_groups.ParamGroups
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
        m.source,
        len(records.class_names),
        arch=m.arch,
        dtype=m.dtype,
        pooling=m.pooling,
        dropout=m.dropout,
        dont_load=tuple(m.dont_load),
        zero_init_head=m.zero_init_head,
        rng=jax.random.PRNGKey(config.seed),
    )
    splits = build_splits(
        data_cfg,
        pretrained.preprocessing,
        records=records,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    patterns = [tuple(g) for g in config.groups] or list(pretrained.model.layer_groups)
    groups = param_groups.assign_groups(pretrained.params, patterns)
    steps_per_epoch = splits["train"].steps_per_epoch(config.train.batch_size)
    total = config.train.steps or max(1, round(config.train.epochs * steps_per_epoch))
    plan = resolve_plan(
        cfg_lib.plan(config, groups.names),
        groups.names,
        total_steps=total,
        steps_per_epoch=steps_per_epoch,
        batch_size=config.train.batch_size,
    )
    mesh = sharding.make_mesh(cfg_lib.mesh_config(config))
    engine = Engine(
        pretrained.model,
        groups,
        plan,
        cfg_lib.optim_config(config),
        mesh=mesh,
        label_smoothing=config.train.label_smoothing,
        skip_nonfinite=config.train.nan_policy == "skip",
    )
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
    diff = [
        f"  {k}: workdir has {saved.get(k, '<unset>')!r}, this run has {now.get(k, '<unset>')!r}"
        for k in sorted(saved.keys() | now.keys())
        if saved.get(k) != now.get(k)
    ]
    if diff:
        raise TrainingError(
            f"{workdir} holds a run of a different config, so it cannot be resumed:\n"
            + "\n".join(diff)
            + "\nUse a new --workdir, or rerun with the same config to resume."
        )


def _write_run_files(workdir: Path, config: ml_collections.ConfigDict) -> None:
    if jax.process_index() != 0:
        return
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(json.dumps(_config_json(config), indent=2, sort_keys=True))
    info = {
        "ftjax_version": ftjax.__version__,
        "git_commit": _git_commit(),
        "jax_version": jax.__version__,
        "devices": [str(d) for d in jax.devices()],
        "argv": sys.argv,
    }
    (workdir / "run.json").write_text(json.dumps(info, indent=2))


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=Path(ftjax.__file__).parent,
        )
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
    return {
        "accuracy": sums["correct"] / count,
        "loss": sums["loss_sum"] / count,
        "count": int(count),
    }


def _better(metric: str, new: dict[str, float], best: dict[str, float] | None) -> bool:
    if best is None:
        return True
    return new[metric] > best[metric] if metric == "accuracy" else new[metric] < best[metric]


# ----------------------------------------------------------------------------- the loop


def _abstract_state(
    engine: Engine, phase: int, params: Any, model_state: Any, rng: jax.Array
) -> TrainState:
    shardings = engine.state_shardings(phase, params, model_state)
    shapes = TrainState(
        params=params,
        opt_state=engine.opt_state_shapes(phase, params),
        model_state=model_state,
        step=jnp.zeros((), jnp.int32),
        rng=rng,
    )
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(jnp.shape(x), x.dtype, sharding=s), shapes, shardings
    )


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
    _print(
        f"ftjax {ftjax.__version__}: {config.model.source} on {config.data.name}, "
        f"{setup.splits['train'].num_examples} train examples, {setup.steps_per_epoch} steps per epoch",
        str(setup.pretrained.report),
        "Parameter groups:",
        setup.groups.report(),
        "Phase plan:",
        setup.plan.table(),
    )
    _write_run_files(workdir, config)
    loop = _Loop(config, setup, workdir, started)
    loop.train()
    return loop.finish()


class _EngineSteps:
    """A phase's steps through the full model: one `Engine.train_step` per training batch."""

    def __init__(self, engine: Engine, index: int, state: TrainState, train_iter, variants=()):
        self.engine, self.index, self.state, self.train_iter = engine, index, state, train_iter
        engine.precompile(index, state, variants)  # every batch shape of the phase, two at a time

    def step(self) -> dict[str, jax.Array]:
        self.state, metrics = self.engine.train_step(self.index, self.state, next(self.train_iter))
        return metrics

    def full_state(self) -> TrainState:
        return self.state

    def data_state(self) -> dict[str, Any]:
        return self.train_iter.get_state()


class _Loop:
    """One run's progress: the train state, its phase, the best validation so far, and its outputs."""

    def __init__(
        self, config: ml_collections.ConfigDict, setup: Setup, workdir: Path, started: float
    ):
        self.config, self.setup, self.workdir, self.started = config, setup, workdir, started
        self.tc, self.engine, self.plan = config.train, setup.engine, setup.plan
        self.ckpts = Checkpoints(workdir, keep=self.tc.keep_checkpoints)
        self.writer = MetricWriter(workdir)
        self.train_iter = setup.splits["train"].train_iterator(self.tc.batch_size, seed=config.seed)
        self._restore_or_init()
        self.bar = tqdm(
            total=self.plan.total_steps,
            initial=self.step,
            unit="step",
            dynamic_ncols=True,
            disable=jax.process_index() != 0,
            file=sys.stdout,
        )
        self.window: list[dict[str, float]] = []
        self.window_start = time.time()

    def _restore_or_init(self) -> None:
        params, model_state = self.setup.pretrained.params, self.setup.pretrained.state
        rng = jax.random.PRNGKey(self.config.seed)
        restored = self.ckpts.restore_latest(
            lambda meta: _abstract_state(self.engine, meta["phase"], params, model_state, rng)
        )
        if restored is None:
            self.state, self.phase_index = self.engine.init_state(params, model_state, rng), 0
            self.best, self.wall_before = None, 0.0
        else:
            self.state, meta = restored
            self.phase_index, self.best, self.wall_before = (
                meta["phase"],
                meta["best"],
                meta["wall_s"],
            )
            self.train_iter.set_state(meta["data_state"])
            _print(
                f"Resumed {self.workdir} at step {int(self.state.step)} "
                f"(phase {self.plan.phases[self.phase_index].name})."
            )
        self.step = int(
            self.state.step
        )  # a host copy: reading state.step would wait for the device

    def train(self) -> None:
        while self.step < self.plan.total_steps:
            phase = self.plan.phase_at(self.step)
            if phase.index != self.phase_index:
                self.state = self.engine.enter_phase(
                    self.state, phase.index, previous=self.phase_index
                )
                self.phase_index = phase.index
                _write(
                    self.bar,
                    f"phase {phase.index} '{phase.name}': training {', '.join(phase.trainable)}",
                )
            self._run_phase(phase, self._steps_for(phase))
        self.bar.close()
        self.ckpts.wait()

    def _steps_for(self, phase):
        """Cached-feature steps for a head-only phase when the config asks and the phase allows it."""
        if self.tc.cache_features:
            try:
                self.bar.set_description(f"caching features for {phase.name}")
                cache = feature_cache.cache_splits(
                    self.engine,
                    self.state,
                    phase.index,
                    self.setup.splits,
                    batch_size=self.tc.eval_batch_size,
                    names=("train",),
                )
                order = functools.partial(
                    self.setup.splits["train"].permutation, self.tc.batch_size, self.config.seed
                )
                return feature_cache.CachedHeadPhase(
                    self.engine,
                    phase.index,
                    self.state,
                    cache["train"],
                    batch_size=self.tc.batch_size,
                    seed=self.config.seed,
                    data_state=self.train_iter.get_state(),
                    permutation=order,
                )
            except feature_cache.FeatureCacheError as e:
                _write(self.bar, f"phase {phase.name}: training without cached features ({e})")
        self.bar.set_description(f"compiling {phase.name}")
        variants = self.setup.splits["train"].batch_variants(self.tc.batch_size)
        return _EngineSteps(self.engine, phase.index, self.state, self.train_iter, variants)

    def _run_phase(self, phase, steps) -> None:
        self.bar.set_description(f"compiling {phase.name}")
        for step in range(self.step, phase.end):
            metrics = jax.tree.map(float, jax.device_get(steps.step()))
            self._check_finite(metrics, step, phase.name)
            self.step = done = step + 1
            self.window.append(metrics)
            self.bar.set_description(phase.name)
            self.bar.update(1)
            if done % self.tc.log_every_steps == 0 or done == phase.end:
                self._log_train(done)
            eval_due = (
                self.tc.eval_every_steps and done % self.tc.eval_every_steps == 0
            ) or done == phase.end
            ckpt_due = (
                self.tc.checkpoint_every_steps and done % self.tc.checkpoint_every_steps == 0
            ) or done == phase.end
            if eval_due or ckpt_due:
                self.state = steps.full_state()
            if eval_due:
                self._validate(done, phase.name)
            if ckpt_due:
                self._checkpoint(done, steps.data_state())
        self.state = steps.full_state()
        self.train_iter.set_state(steps.data_state())

    def _check_finite(self, metrics: dict[str, float], step: int, phase: str) -> None:
        if math.isfinite(metrics["loss"]):
            return
        if self.tc.nan_policy == "skip":  # the engine left the state as it was
            _write(
                self.bar,
                f"loss is {metrics['loss']} at step {step + 1} in phase '{phase}'; step skipped",
            )
            return
        self.ckpts.wait()
        last = self.ckpts.steps()[-1] if self.ckpts.steps() else None
        raise TrainingError(
            f"loss is {metrics['loss']} at step {step + 1} in phase '{phase}'; stopping. The last good "
            f"checkpoint (step {last}) is intact. Lower the phase's learning rate or set optim.clip_norm."
        )

    def _log_train(self, step: int) -> None:
        mean = {k: float(np.nanmean([m[k] for m in self.window])) for k in self.window[0]}
        mean["examples_per_s"] = (
            len(self.window) * self.tc.batch_size / max(time.time() - self.window_start, 1e-9)
        )
        self.writer.write(step, "train", mean)
        lr = max(v for k, v in mean.items() if k.startswith("lr/"))
        self.bar.set_postfix(
            loss=f"{mean['loss']:.4f}", lr=f"{lr:.2e}", ex_s=f"{mean['examples_per_s']:.0f}"
        )
        self.window, self.window_start = [], time.time()

    def _validate(self, step: int, phase: str) -> None:
        metrics = evaluate(
            self.engine, self.state, self.setup.splits["validation"], self.tc.eval_batch_size
        )
        self.writer.write(step, "validation", metrics)
        if _better(self.tc.best_metric, metrics, self.best):
            self.best = {**metrics, "step": step}
            self.ckpts.save_best(
                step,
                {"params": self.state.params, "model_state": self.state.model_state},
                self.best,
            )
        _write(
            self.bar,
            f"step {step} [{phase}] validation: accuracy {metrics['accuracy']:.4f} loss "
            f"{metrics['loss']:.4f} (best {self.best['accuracy']:.4f} at step {self.best['step']})",
        )
        self.window_start = time.time()  # examples/s counts training only

    def _checkpoint(self, step: int, data_state: dict[str, Any]) -> None:
        meta = {
            "phase": self.phase_index,
            "data_state": data_state,
            "best": self.best,
            "wall_s": self.wall_s(),
        }
        self.ckpts.save(step, self.state, meta)

    def wall_s(self) -> float:
        return self.wall_before + time.time() - self.started

    def finish(self) -> dict[str, Any]:
        return _finish(
            self.setup,
            self.ckpts,
            self.writer,
            self.workdir,
            self.config,
            self.state,
            self.best,
            self.wall_s(),
        )


def _finish(
    setup: Setup,
    ckpts: Checkpoints,
    writer: MetricWriter,
    workdir: Path,
    config,
    state: TrainState,
    best: dict[str, Any] | None,
    wall_s: float,
) -> dict[str, Any]:
    """Evaluates the best checkpoint on test and writes results.json."""
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
        {"params": state.params, "model_state": state.model_state},
    )
    best_tree = ckpts.restore_best(target)
    best_state = state.replace(params=best_tree["params"], model_state=best_tree["model_state"])
    test = evaluate(setup.engine, best_state, setup.splits["test"], config.train.eval_batch_size)
    writer.write(best["step"], "test", test)
    writer.close()
    results = {
        "test": test,
        "validation": {k: v for k, v in best.items() if k != "step"},
        "best_step": best["step"],
        "steps": setup.plan.total_steps,
        "wall_s": round(wall_s, 1),
        "compiles": setup.engine.compile_count,
    }
    if jax.process_index() == 0:
        (workdir / "results.json").write_text(json.dumps(results, indent=2))
        _print(
            f"test accuracy {test['accuracy']:.4f} (best validation {best['accuracy']:.4f} at step "
            f"{best['step']}); results in {workdir / 'results.json'}"
        )
    ckpts.close()
    return results
