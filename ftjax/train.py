"""The training loop: `run(config, workdir)` trains a config's plan and writes everything to workdir.

What a run does, in order: validate the config; refuse a workdir written by a different config;
load data, the pretrained model and its new head; assign parameter groups and resolve the plan
(every error so far happens before anything is written); print the group report and the plan;
resume from the newest readable checkpoint; train phase by phase with a progress bar, evaluating
on validation every `eval_every_steps` and at each phase end (`every_phase_end`; always at the
last step), keeping the best checkpoint;
evaluate the best checkpoint on test and write results.json.

Workdir layout: config.json, run.json (ftjax version, git commit), metrics.jsonl, tensorboard/,
checkpoints/ (resumable), best/ (best validation params), results.json. Checking and preparing
the workdir before anything loads: `ftjax.workdir`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from tqdm import tqdm

import ftjax
from ftjax import config as cfg_lib
from ftjax import feature_cache as feature_cache
from ftjax import inference, param_groups, phase_steps, sharding, tasks
from ftjax.checkpoint import Checkpoints
from ftjax.compress import distill, pruning, qat
from ftjax.compress.quantize import QuantizeError
from ftjax.data import Split, build_splits, load_records
from ftjax.errors import DiskFullError, TrainingError
from ftjax.metrics import MetricWriter
from ftjax.models.base import Model
from ftjax.models.base import packed as packed_model
from ftjax.phase_steps import FullModelPhase, PhaseRunner, PhaseSteps, TrainState
from ftjax.phases import ResolvedPlan, resolve_plan
from ftjax.pretrained.load import Pretrained, load_pretrained
from ftjax.workdir import (
    check_workdir,
    disk_full,
    disk_full_error,
    prepare_workdir,
    workdir_path,
    write_run_files,
)

__all__ = [
    "TrainingError",
    "DiskFullError",
    "Setup",
    "build",
    "groups_for",
    "plan_for",
    "evaluate",
    "run",
]


@dataclasses.dataclass
class Setup:
    """Everything a run needs, built before anything is written to the workdir."""

    splits: dict[str, Split]
    pretrained: Pretrained
    groups: param_groups.ParamGroups
    plan: ResolvedPlan
    phase_steps: PhaseSteps
    steps_per_epoch: int
    max_length: int | None = None  # text: the token length batches are padded to at most


def build(config: ml_collections.ConfigDict, task: tasks.Task | None = None) -> Setup:
    """Data, model, groups, plan and phase steps for `config` (validated first).

    `task` replaces the config's task (`tasks.from_config`) with a researcher's own object (a
    custom loss or metric); its `name` says how users' files' labels are read.
    """
    cfg_lib.validate(config)
    data_cfg = cfg_lib.data_config(config)
    # How users' files' labels are read: the task's kind where it is one of ftjax's, else the
    # config's (or inferred from the labels).
    kind = task.name if task is not None and task.name in cfg_lib.TASK_NAMES else None
    records = _load_records(data_cfg, kind or config.task.name or None)
    task = task or tasks.from_config(config, records)
    m = config.model
    pretrained = load_pretrained(
        m.source,
        task.output_size,
        arch=m.arch,
        dtype=m.dtype,
        pooling="tokens" if task.output_level == "token" else m.pooling,
        dropout=m.dropout,
        dont_load=tuple(m.dont_load),
        zero_init_head=m.zero_init_head,
        lora=cfg_lib.lora_spec(config.peft),
        keep_layers=tuple(m.keep_layers),
        image_size=config.data.image_size or None,
        rng=jax.random.PRNGKey(config.seed),
    )
    pretrained = _with_qat(pretrained, config.qat)
    splits = build_splits(
        data_cfg,
        pretrained.preprocessing,
        task,
        records=records,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        row_multiple=jax.local_device_count(),
    )
    groups = groups_for(config, pretrained.params, pretrained.model.layer_groups)
    steps_per_epoch = splits["train"].steps_per_epoch(config.train.batch_size)
    plan = plan_for(config, groups, steps_per_epoch)
    steps = PhaseSteps(
        _packed(pretrained.model) if data_cfg.pack else pretrained.model,
        groups,
        plan,
        cfg_lib.optim_config(config, plan.total_steps),
        task=task,
        mesh=sharding.make_mesh(cfg_lib.mesh_config(config)),
        skip_nonfinite=config.train.nan_policy == "skip",
        distill=_distillation(config.distill, task, pretrained.preprocessing),
    )
    return Setup(
        splits, pretrained, groups, plan, steps, steps_per_epoch, splits["train"].max_length
    )


def _packed(model: Model) -> Model:
    """The model reading packed batches (`data.pack`); its saved record stays unpacked."""
    try:
        return packed_model(model)
    except ValueError as e:
        raise cfg_lib.ConfigError(f"config.data.pack: {e}") from None


def _with_qat(pretrained: Pretrained, q: ml_collections.ConfigDict) -> Pretrained:
    """`pretrained` whose model trains through the int8 forward (`config.qat`), or as it is."""
    if not q.weights:
        return pretrained
    try:
        spec = qat.qat_spec(
            pretrained.params, q.weights, q.activations or None, q.pattern, q.embeddings
        )
    except QuantizeError as e:
        raise cfg_lib.ConfigError(f"config.qat: {e}") from None
    return dataclasses.replace(pretrained, model=qat.with_qat(pretrained.model, spec))


def _distillation(d: ml_collections.ConfigDict, task: tasks.Task, preprocessing: dict):
    """The run's teacher and loss mix, or None without `distill.teacher`."""
    if not d.teacher:
        return None
    teacher = distill.load_teacher(d.teacher, d.checkpoint, task, preprocessing)
    return distill.Distillation(teacher, temperature=d.temperature, alpha=d.alpha)


def groups_for(
    config: ml_collections.ConfigDict, params: Any, natural_groups: Sequence[tuple[str, str]]
) -> param_groups.ParamGroups:
    """The run's parameter groups: `config.groups`' patterns, or the model's natural groups."""
    return param_groups.assign_groups(params, cfg_lib.group_patterns(config, natural_groups))


def plan_for(
    config: ml_collections.ConfigDict, groups: param_groups.ParamGroups, steps_per_epoch: int
) -> ResolvedPlan:
    """The run's resolved plan: its length from `train.steps` or `train.epochs`, its phases from
    `config.plan` over `groups`."""
    total = config.train.steps or max(1, round(config.train.epochs * steps_per_epoch))
    return resolve_plan(
        cfg_lib.plan(config, groups.names),
        groups.names,
        total_steps=total,
        steps_per_epoch=steps_per_epoch,
        batch_size=config.train.batch_size,
    )


def _load_records(data_cfg, task_name: str | None):
    """Process 0 loads first: offline datasets are prepared into data_dir on first use, and
    several processes preparing one shared data_dir at once would collide."""
    if jax.process_count() == 1:
        return load_records(data_cfg, task_name)
    from jax.experimental import multihost_utils

    records = load_records(data_cfg, task_name) if jax.process_index() == 0 else None
    multihost_utils.sync_global_devices("ftjax: data prepared by process 0")
    return records if records is not None else load_records(data_cfg, task_name)


# ----------------------------------------------------------------------------- evaluation


def evaluate(
    steps: PhaseSteps, state: TrainState, split: Split, batch_size: int
) -> dict[str, float]:
    """The task's metrics over every example of `split` exactly once."""
    return phase_steps.evaluate(steps, state, split.eval_batches(batch_size), split.references)


# ----------------------------------------------------------------------------- the loop


def trained_paths(groups: param_groups.ParamGroups, plan) -> frozenset[str]:
    """Paths of the params some phase of `plan` trains: all a resume checkpoint must hold (the
    rest equals the pretrained load, which a resumed run makes again)."""
    return groups.paths(sorted({g for p in plan.phases for g in p.trainable}))


def _abstract_state(
    steps: PhaseSteps, phase: int, params: Any, model_state: Any, rng: jax.Array, trained=None
) -> TrainState:
    """The checkpointed state's shapes and shardings at `phase`; with `trained`, its params hold
    those paths only (a checkpoint written with `trained_paths`)."""
    shardings = steps.state_shardings(phase, params, model_state).replace(teacher=None)
    shapes = TrainState(
        params=params,
        opt_state=steps.opt_state_shapes(phase, params),
        model_state=model_state,
        step=jnp.zeros((), jnp.int32),
        rng=rng,
    )
    full = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(jnp.shape(x), x.dtype, sharding=s), shapes, shardings
    )
    if trained is None:
        return full
    return full.replace(params=param_groups.split_params(full.params, trained)[0])


def _print(*lines: str) -> None:
    if jax.process_index() == 0:
        print(*lines, sep="\n", flush=True)


def _few(names: Sequence[str], most: int = 3) -> str:
    """'a, b' or 'a, b, c and 4 more'."""
    more = len(names) - most
    return ", ".join(names[:most]) + (f" and {more} more" if more > 0 else "")


def _write(bar: tqdm, line: str) -> None:
    """A line above the progress bar, from process 0 only (tqdm.write prints even when the bar is disabled)."""
    if jax.process_index() == 0:
        bar.write(line)


def run(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    task: tasks.Task | None = None,
) -> dict[str, Any]:
    """Train `config` in `workdir` (resuming it if it holds checkpoints); returns results.json's
    content. `task` replaces the config's task with a researcher's own (see `build`)."""
    started = time.time()
    workdir = workdir_path(workdir)
    cfg_lib.validate(config)
    prepare_workdir(workdir)
    changes = check_workdir(workdir, config)
    setup = build(config, task)
    _print(
        f"ftjax {ftjax.__version__}: {config.model.source} on {config.data.name}, "
        f"{setup.splits['train'].num_examples} train examples, {setup.steps_per_epoch} steps per epoch",
        str(setup.pretrained.report),
        "Parameter groups:",
        setup.groups.report(),
        "Phase plan:",
        setup.plan.table(),
    )
    loop = None
    try:
        write_run_files(workdir, config, changes)
        inference.write_record(
            workdir, config, setup.pretrained, setup.phase_steps.task, setup.max_length
        )
        loop = _Loop(config, setup, workdir, started)
        if changes:
            _print(
                f"Resuming {workdir} at step {loop.step} with config changes allowed by "
                "train.resume_overrides (logged in run.json and metrics.jsonl):",
                *(f"  {k}: {a!r} -> {b!r}" for k, (a, b) in changes.items()),
            )
            loop.writer.write(
                loop.step, "config_change", {"changes": {k: list(v) for k, v in changes.items()}}
            )
        loop.train()
        return loop.finish()
    except Exception as e:
        detail = disk_full(e)
        if detail is None:
            raise
        # Not closing the checkpoint managers: their writer threads have failed, and closing them
        # prints each failure again.
        raise disk_full_error(workdir, detail) from None


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
    leaves = [
        jnp.isfinite(x).all() for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)
    ]
    return jnp.stack(leaves).all() if leaves else jnp.array(True)


class _Loop:
    """One run's progress: the train state, its phase, the best validation so far, and its outputs."""

    def __init__(
        self, config: ml_collections.ConfigDict, setup: Setup, workdir: epath.Path, started: float
    ):
        self.config, self.setup, self.workdir, self.started = config, setup, workdir, started
        self.tc, self.phase_steps, self.plan = config.train, setup.phase_steps, setup.plan
        self.ckpts = Checkpoints(workdir, keep=self.tc.keep_checkpoints)
        self.train_iter = setup.splits["train"].train_iterator(self.tc.batch_size, seed=config.seed)
        self._restore_or_init()
        # Rows a stopped run logged after the resumed step are dropped: they are logged again.
        self.writer = MetricWriter(workdir, start_step=self.step)
        self.skipped: list[int] = []  # the current run of consecutive skipped steps
        self._finite_at: int | None = None  # the last step whose params were checked finite
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
        self.step_times: dict[str, list[float]] = {}  # phase -> seconds of its train steps

    def _restore_or_init(self) -> None:
        params, model_state = self.setup.pretrained.params, self.setup.pretrained.state
        rng = jax.random.PRNGKey(self.config.seed)
        self.trained = trained_paths(self.setup.groups, self.plan)

        def target(meta):
            trained = self.trained if meta.get("params") == "trained" else None
            return _abstract_state(
                self.phase_steps, meta["phase"], params, model_state, rng, trained
            )

        restored = self.ckpts.restore_latest(target)
        if restored is None:
            self.state, self.phase_index = self.phase_steps.init_state(params, model_state, rng), 0
            self.best, self.wall_before = None, 0.0
        else:
            self.state, meta = restored
            if meta.get("params") == "trained":
                self.state = self._with_untrained(self.state, meta["phase"])
            self.state = self.phase_steps.place_teacher(self.state)
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
                self.state = self.phase_steps.enter_phase(
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

    def _steps_for(self, phase) -> PhaseRunner:
        """Cached-feature steps for a head-only phase when the config asks and the phase allows it."""
        cached = self._cached_steps(phase) if self.tc.cache_features else None
        variants = self.setup.splits["train"].batch_variants(
            self.tc.batch_size, seed=self.config.seed
        )
        if cached is None:
            self.bar.set_description(f"compiling {phase.name}")
            steps = FullModelPhase(
                self.phase_steps, phase.index, self.state, self.train_iter, variants
            )
        self._compile_next(phase.index + 1, variants)
        return cached if cached is not None else steps

    def _compile_next(self, index: int, variants) -> None:
        """Phase `index`'s full-model steps compile on a background thread while this phase
        trains (`train.compile_ahead`), unless it will train on cached features instead."""
        ahead = self.tc.compile_ahead
        if ahead is None:
            ahead = self.phase_steps.mesh.devices.flat[0].platform != "cpu"
        if not ahead or index >= len(self.plan.phases):
            return
        if self.tc.cache_features and not feature_cache.backbone_groups(self.phase_steps, index):
            return
        self.phase_steps.compile_ahead(index, self.state, variants)

    def _cached_steps(self, phase) -> feature_cache.CachedHeadPhase | None:
        train = self.setup.splits["train"]
        try:
            self.bar.set_description(f"caching features for {phase.name}")
            cache = feature_cache.cache_splits(
                self.phase_steps,
                self.state,
                phase.index,
                {"train": train},
                batch_size=self.tc.eval_batch_size,
                names=("train",),
            )
            steps = feature_cache.CachedHeadPhase(
                self.phase_steps,
                phase.index,
                self.state,
                cache["train"],
                order=train.train_order(self.tc.batch_size, seed=self.config.seed),
                data_state=self.train_iter.get_state(),
            )
        except feature_cache.FeatureCacheError as e:
            backbone = feature_cache.backbone_groups(self.phase_steps, phase.index)
            why = f"it trains backbone groups {_few(backbone)}" if backbone else str(e)
            _write(self.bar, f"phase {phase.name}: training without cached features ({why})")
            return None
        if feature_cache.train_preprocessing_differs(train):
            _write(
                self.bar,
                f"phase {phase.name}: augmentation is off for the cached phase (its features "
                "come from the evaluation preprocessing)",
            )
        return steps

    def _run_phase(self, phase, steps: PhaseRunner) -> None:
        self.bar.set_description(f"compiling {phase.name}")
        times, first = self.step_times.setdefault(phase.name, []), self.step
        for step in range(first, phase.end):
            started = time.perf_counter()
            metrics = jax.tree.map(float, jax.device_get(steps.step()))
            if step > first:  # this process's first step of the phase also compiles it
                times.append(time.perf_counter() - started)
            self._check_finite(metrics, step, phase.name)
            self.step = done = step + 1
            self.window.append(metrics)
            self.bar.set_description(phase.name)
            self.bar.update(1)
            if done % self.tc.log_every_steps == 0 or done == phase.end:
                self._log_train(done)
            milestone = done == self.plan.total_steps or (
                self.tc.every_phase_end and done == phase.end
            )
            eval_due = (
                self.tc.eval_every_steps and done % self.tc.eval_every_steps == 0
            ) or milestone
            ckpt_due = (
                self.tc.checkpoint_every_steps and done % self.tc.checkpoint_every_steps == 0
            ) or milestone
            if eval_due or ckpt_due:
                self.state = steps.full_state()
            if eval_due:
                self._validate(done, phase.name)
            if ckpt_due:
                self._checkpoint(done, steps.data_state())
        self.state = steps.full_state()
        self.train_iter.set_state(steps.data_state())

    def _check_finite(self, metrics: dict[str, float], step: int, phase: str) -> None:
        """Stops at a step whose loss, gradient norm or updated parameters are not finite (the
        step's `nonfinite` metric flags the parameters where the steps report it), before that
        step can be checkpointed; under nan_policy='skip' a step the phase steps dropped is counted
        instead, and `train.max_skipped_steps` of them in a row stop the run."""
        loss, grad_norm = metrics["loss"], metrics.get("grad_norm", 0.0)
        if (
            math.isfinite(loss)
            and math.isfinite(grad_norm)
            and not metrics.get("nonfinite", 0.0) > 0
        ):
            self.skipped = []
            return
        if not math.isfinite(loss):
            what = f"loss is {loss}"
        elif not math.isfinite(grad_norm):
            what = f"gradient norm is {grad_norm}"
        else:
            what = f"loss is {loss:.4g} but the updated parameters are not finite"
        where = f"at step {step + 1} in phase '{phase}'"
        if self.tc.nan_policy == "skip" and metrics.get("skipped", 0.0) > 0:
            # the step left the state as it was
            self.skipped.append(step + 1)
            _write(self.bar, f"{what} {where}; step skipped")
            if len(self.skipped) < self.tc.max_skipped_steps:
                return
            raise TrainingError(
                self._diverged(
                    f"{what} {where}: {len(self.skipped)} steps in a row were skipped (steps "
                    f"{self.skipped[0]}-{self.skipped[-1]}), train.max_skipped_steps="
                    f"{self.tc.max_skipped_steps}; stopping, as the run no longer trains",
                    "or allow more skipped steps with --config.train.max_skipped_steps=N",
                )
            )
        raise TrainingError(self._diverged(f"{what} {where}; stopping"))

    def _diverged(self, head: str, *more: str) -> str:
        """`head`, then which checkpoint is good and the exact flags to resume it with lower LRs."""
        self.ckpts.wait()
        steps = self.ckpts.steps()
        keys = ",".join(dict.fromkeys((*cfg_lib.resume_overrides(self.config), "plan.lr_scale")))
        scale = f"{self.config.plan.lr_scale * 0.1:g}"
        fixes = [
            f"rerun the same command with --config.plan.lr_scale={scale} "
            f"--config.train.resume_overrides={keys} (10x lower learning rates in every phase; "
            "the change is logged in run.json)"
        ]
        if not self.config.optim.clip_norm:
            fixes.append(
                "clip gradients with --config.optim.clip_norm=1.0, adding optim.clip_norm to "
                "train.resume_overrides"
            )
        fixes += more
        if steps:
            kept = f"The last good checkpoint (step {steps[-1]}) is intact. To resume from it, "
        else:
            kept = "No checkpoint was written yet. To train again, "
        return f"{head}. {kept}" + "; or ".join(fixes) + "."

    def _check_params_finite(self, step: int) -> None:
        """No checkpoint (resumable or best) holds non-finite parameters, whichever steps ran."""
        if self._finite_at == step:
            return
        if not bool(_all_finite(self.state.params)):
            phase = self.plan.phases[self.phase_index].name
            raise TrainingError(
                self._diverged(
                    f"parameters are not finite after step {step} in phase '{phase}' (its loss "
                    "was finite); stopping before they are checkpointed"
                )
            )
        self._finite_at = step

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
        self._check_params_finite(step)
        metrics = evaluate(
            self.phase_steps, self.state, self.setup.splits["validation"], self.tc.eval_batch_size
        )
        self.writer.write(step, "validation", metrics)
        if tasks.is_better(self.phase_steps.task, metrics, self.best):
            self.best = {**metrics, "step": step}
            self.ckpts.save_best(
                step,
                {"params": self.state.params, "model_state": self.state.model_state},
                self.best,
            )
        key = self.phase_steps.task.best_metric
        others = f" loss {metrics['loss']:.4f}" if key != "loss" and "loss" in metrics else ""
        _write(
            self.bar,
            f"step {step} [{phase}] validation: {key} {metrics[key]:.4f}{others} "
            f"(best {self.best[key]:.4f} at step {self.best['step']})",
        )
        self.window_start = time.time()  # examples/s counts training only

    def _with_untrained(self, state: TrainState, phase: int) -> TrainState:
        """`state` (trained params only, as restored) completed with the params no phase trains,
        from the pretrained load, placed like the rest (copied: the train step donates them)."""
        params = self.setup.pretrained.params
        shardings = self.phase_steps.state_shardings(phase, params, self.setup.pretrained.state)
        untrained = param_groups.split_params(params, self.trained)[1]
        where = param_groups.split_params(shardings.params, self.trained)[1]
        # As PhaseSteps.init_state places params: device_put, then a jitted copy (never aliased).
        copy = jax.jit(lambda t: jax.tree.map(jnp.copy, t), out_shardings=where)
        placed = copy(jax.device_put(untrained, where))
        return state.replace(params=param_groups.merge_params(state.params, placed))

    def _checkpoint(self, step: int, data_state: dict[str, Any]) -> None:
        """A resume checkpoint: the params some phase trains (a LoRA run's adapters and head, not
        its frozen base), optimizer and model state, and where to find the rest."""
        self._check_params_finite(step)
        meta = {
            "phase": self.phase_index,
            "data_state": data_state,
            "best": self.best,
            "wall_s": self.wall_s(),
            "params": "trained",  # the others are the pretrained load of `base`
            "base": self.config.model.source,
        }
        trained = param_groups.split_params(self.state.params, self.trained)[0]
        # The teacher is not saved: a resumed run loads it again from distill.teacher.
        self.ckpts.save(step, self.state.replace(params=trained, teacher=None), meta)

    def _rebuild_best(self) -> None:
        """best/ holds no checkpoint (deleted by hand): the final state is validated again and
        saved there, so a finished run can still be tested instead of failing on every rerun."""
        lost = self.best["step"] if self.best else None
        self._check_params_finite(self.step)
        metrics = evaluate(
            self.phase_steps, self.state, self.setup.splits["validation"], self.tc.eval_batch_size
        )
        gone = (
            f"the best validation step ({lost}) can no longer be tested, so "
            if lost is not None and lost != self.step
            else ""
        )
        _print(
            f"WARNING: {self.workdir / 'best'} holds no checkpoint (was it deleted?); {gone}the "
            f"final checkpoint (step {self.step}) was validated again and saved as best/, and the "
            "test results are for it. Validation: "
            + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
            + "."
        )
        self.best = {**metrics, "step": self.step}
        self.ckpts.save_best(
            self.step,
            {"params": self.state.params, "model_state": self.state.model_state},
            self.best,
        )
        self.ckpts.wait()

    def wall_s(self) -> float:
        return self.wall_before + time.time() - self.started

    def finish(self) -> dict[str, Any]:
        if self.ckpts.best() is None:
            self._rebuild_best()
        return _finish(
            self.setup,
            self.ckpts,
            self.writer,
            self.workdir,
            self.config,
            self.state,
            self.best,
            self.wall_s(),
            self._costs(),
        )

    def _costs(self) -> dict[str, Any]:
        """What the run cost, for comparing plans (LoRA vs full fine-tuning): per phase, its
        trainable parameter count and median train-step seconds (compilation excluded); the
        process's peak resident memory."""
        sizes = self.setup.groups.sizes
        phases = {
            p.name: {
                "trainable_params": sum(sizes[g] for g in p.trainable),
                "step_s": round(float(np.median(t)), 5)
                if (t := self.step_times.get(p.name))
                else None,
            }
            for p in self.plan.phases
        }
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        out = {"phases": phases, "peak_rss_mb": round(rss, 1)}
        if (prune := self.phase_steps.optim_cfg.prune) is not None:  # of the final params
            params = jax.device_get(self.state.params)
            out["sparsity"] = round(pruning.sparsity_of(params, prune.pattern), 4)
        return out


def _finish(
    setup: Setup,
    ckpts: Checkpoints,
    writer: MetricWriter,
    workdir: Path,
    config,
    state: TrainState,
    best: dict[str, Any] | None,
    wall_s: float,
    costs: dict[str, Any],
) -> dict[str, Any]:
    """Evaluates the best checkpoint on test and writes results.json."""
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
        {"params": state.params, "model_state": state.model_state},
    )
    ckpts.save_final(
        setup.plan.total_steps, {"params": state.params, "model_state": state.model_state}
    )
    best_tree = ckpts.restore_best(target)
    best_state = state.replace(params=best_tree["params"], model_state=best_tree["model_state"])
    test = evaluate(
        setup.phase_steps, best_state, setup.splits["test"], config.train.eval_batch_size
    )
    writer.write(best["step"], "test", test)
    writer.close()
    task = setup.phase_steps.task
    validation = {k: v for k, v in best.items() if k != "step"}
    results = {
        "task": task.name,
        "best_metric": task.best_metric,
        "higher_is_better": task.higher_is_better,
        "label_names": list(task.label_names),
        "metrics": {"validation": validation, "test": test},
        "test": test,
        "validation": validation,
        "best_step": best["step"],
        "steps": setup.plan.total_steps,
        "wall_s": round(wall_s, 1),
        "compiles": setup.phase_steps.compile_count,
        "costs": costs,
    }
    if jax.process_index() == 0:
        (workdir / "results.json").write_text(json.dumps(results, indent=2))
        key = task.best_metric
        _print(
            f"test {key} {test[key]:.4f} (best validation {best[key]:.4f} at step "
            f"{best['step']}); results in {workdir / 'results.json'}"
        )
    ckpts.close()
    return results
