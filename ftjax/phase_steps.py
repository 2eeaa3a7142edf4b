"""A plan's phases as compiled, sharded steps on a device mesh, and the protocol that runs them.

`PhaseSteps` ties a model (anything with `apply(params, state, batch, *, train, rng, frozen)`,
see `ftjax.models.base.Model`), its parameter groups, a resolved plan, optimizer settings and a
task (`ftjax.tasks`) to a mesh: it places the train state, builds each phase's optimizer, moves
optimizer state across phase boundaries, and runs each phase's train step and the eval step,
compiled once per batch shape (ahead of time when asked) and cached: one compiled step per
phase, plus what moves the state from one phase's step to the next. It is not a trainer:
evaluation schedules, checkpoints and logging are the loop's (`ftjax.train`).

Usage by a training loop (`step` is the loop's Python step counter):

    steps = PhaseSteps(model, groups, resolved_plan, OptimConfig(...), task=Classification(2),
                       mesh=make_mesh(...))
    state = steps.init_state(params, model_state, rng)            # opt state for phase 0
    for step in range(resolved_plan.total_steps):
        phase = resolved_plan.phase_at(step)
        if step == phase.start and phase.index > 0:
            state = steps.enter_phase(state, phase.index, previous=phase.index - 1)
        state, metrics = steps.train_step(phase.index, state, batch)
    split_metrics = evaluate(steps, state, eval_batches)       # the task's aggregate

At a phase boundary `enter_phase` carries the optimizer state of groups that stay trainable
(unless the phase says reset_moments) and creates state, on the mesh, for groups that become
trainable; groups that become frozen drop theirs.

`PhaseRunner` is what the loop drives for one phase, one step at a time: `FullModelPhase` (here,
the full model through `PhaseSteps.train_step`) and `ftjax.feature_cache.CachedHeadPhase` (the
head on cached features) both implement it.

Not here: what a step computes (`ftjax.steps`), the loss and metrics (`ftjax.tasks`), compiling
and memory release (`ftjax.compile`), the training loop (`ftjax.train`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from ftjax import optim, param_groups, sharding
from ftjax.compile import StepCache
from ftjax.param_groups import ParamGroups
from ftjax.phases import PlanError, ResolvedPlan
from ftjax.steps import Metrics, TrainState, eval_step_fn, train_step_fn
from ftjax.tasks import Task

__all__ = [
    "PhaseSteps",
    "PhaseRunner",
    "FullModelPhase",
    "TrainState",
    "Metrics",
    "evaluate",
    "evaluate_with",
    "run_plan",
]

Batch = Mapping[str, Any]


def _shapes_key(batch: Batch) -> tuple:
    return tuple(sorted((k, tuple(v.shape), str(v.dtype)) for k, v in batch.items()))


def _abstract(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), x.dtype), tree)


def _check_accumulation(plan: ResolvedPlan, k: int) -> None:
    bad = [f"{p.name}@{p.start}" for p in plan.phases if p.start % k] + (
        [f"end@{plan.total_steps}"] if plan.total_steps % k else []
    )
    if bad:
        raise PlanError(
            f"with accumulate_steps={k}, phase boundaries {bad} fall inside an accumulation window; "
            f"make every phase length a multiple of {k}"
        )


class PhaseSteps:
    """Compiled, sharded train/eval steps for every phase of a plan (see module doc).

    `skip_nonfinite`: a step whose loss, gradient norm or updated params are not finite leaves
    the state as it was (see `ftjax.steps`). `distill` (`ftjax.compress.distill.Distillation`):
    every train step also runs its frozen teacher, whose variables `init_state` places in the
    state's `teacher` field.
    """

    def __init__(
        self,
        model: Any,
        groups: ParamGroups,
        plan: ResolvedPlan,
        optim_cfg: optim.OptimConfig,
        *,
        task: Task,
        mesh: Mesh | None = None,
        partition_rules: sharding.Rules = (),
        skip_nonfinite: bool = False,
        distill: Any = None,
    ):
        optim_cfg.validate()
        groups.check_known(plan.group_names, what="the plan")
        _check_accumulation(plan, optim_cfg.accumulate_steps)
        self.model, self.groups, self.plan, self.optim_cfg = model, groups, plan, optim_cfg
        self.task = task
        self.mesh = mesh if mesh is not None else sharding.make_mesh(devices=jax.devices()[:1])
        self.partition_rules = tuple(partition_rules)
        self.skip_nonfinite = skip_nonfinite
        self.distill = distill
        self._specs = None  # param PartitionSpecs, set by init_state
        self._train = StepCache(model.cpu_compiler_options)  # (phase, batch shapes) -> step
        self._eval = StepCache(model.cpu_compiler_options)  # (batch shapes, layout) -> step

    @property
    def compile_count(self) -> int:
        """Train steps compiled so far (one per phase and batch shape)."""
        return self._train.count

    @property
    def eval_compile_count(self) -> int:
        return self._eval.count

    # ------------------------------------------------------------------ per-phase pieces

    def trainable_paths(self, index: int) -> frozenset[str]:
        return self.groups.paths(self.plan.phases[index].trainable)

    def frozen_paths(self, index: int) -> frozenset[str]:
        return self.groups.paths(self.groups.names) - self.trainable_paths(index)

    def optimizer(self, index: int) -> optax.GradientTransformationExtraArgs:
        labels, _ = param_groups.split_params(self.groups.labels, self.trainable_paths(index))
        return optim.make_optimizer(self.optim_cfg, self.plan.phases[index], labels)

    def opt_state_shapes(self, index: int, params: Any) -> Any:
        """Shapes of phase `index`'s optimizer state (e.g. to restore a checkpoint into)."""
        trainable, _ = param_groups.split_params(params, self.trainable_paths(index))
        return jax.eval_shape(self.optimizer(index).init, trainable)

    def state_shardings(self, index: int, params: Any, model_state: Any) -> TrainState:
        specs = self._param_specs(params)
        rep = sharding.replicated(self.mesh)
        return TrainState(
            params=sharding.shardings_like(params, specs, self.mesh),
            opt_state=sharding.shardings_like(
                self.opt_state_shapes(index, params), specs, self.mesh
            ),
            model_state=jax.tree.map(lambda _: rep, model_state),
            step=rep,
            rng=rep,
            teacher=self._teacher_shardings(),
        )

    def _teacher_shardings(self) -> Any:
        if self.distill is None:
            return None
        variables = self.distill.teacher.variables
        specs = sharding.param_specs(variables["params"], self.mesh, self.partition_rules)
        rep = sharding.replicated(self.mesh)
        return {
            "params": sharding.shardings_like(variables["params"], specs, self.mesh),
            "state": jax.tree.map(lambda _: rep, variables["state"]),
        }

    def place_teacher(self, state: TrainState) -> TrainState:
        """`state` with the distillation teacher's variables on the mesh (None without one)."""
        if self.distill is None:
            return state
        shard = self._teacher_shardings()
        # A copy: the train step donates the state, and the teacher's own arrays must survive it.
        copy = jax.jit(lambda t: jax.tree.map(jnp.copy, t), out_shardings=shard)
        return state.replace(teacher=copy(jax.device_put(self.distill.teacher.variables, shard)))

    def _param_specs(self, params: Any) -> Any:
        if self._specs is None:
            self._specs = sharding.param_specs(params, self.mesh, self.partition_rules)
        return self._specs

    # ------------------------------------------------------------------ state

    def init_state(
        self, params: Any, model_state: Any, rng: jax.Array, phase: int = 0
    ) -> TrainState:
        """A TrainState on the mesh at the start of `phase` with fresh optimizer state.

        The inputs are copied (never aliased), so the train step's buffer donation leaves the
        caller's arrays intact.
        """
        start = self.plan.phases[phase].start
        shard = self.state_shardings(phase, params, model_state)
        # device_put may hand back the caller's own buffers; a jitted copy never does.
        copy = jax.jit(
            lambda *t: jax.tree.map(jnp.copy, t),
            out_shardings=(shard.params, shard.model_state, shard.rng),
        )
        placed = jax.device_put(
            (params, model_state, rng), (shard.params, shard.model_state, shard.rng)
        )
        params, model_state, rng = copy(*placed)
        state = TrainState(
            params=params,
            opt_state=self._fresh_opt_state(phase, params),
            model_state=model_state,
            step=jax.device_put(jnp.asarray(start, jnp.int32), shard.step),
            rng=rng,
        )
        return self.place_teacher(state)

    def _fresh_opt_state(self, index: int, params: Any) -> Any:
        trainable, _ = param_groups.split_params(params, self.trainable_paths(index))
        out = sharding.shardings_like(
            self.opt_state_shapes(index, params), self._param_specs(params), self.mesh
        )
        return jax.jit(self.optimizer(index).init, out_shardings=out)(trainable)

    def enter_phase(self, state: TrainState, index: int, previous: int) -> TrainState:
        """State for phase `index` from a state whose optimizer state belongs to phase `previous`."""
        new = self.plan.phases[index]
        old = self.plan.phases[previous]
        fresh = self._fresh_opt_state(index, state.params)
        keep = () if new.reset_moments else tuple(g for g in new.trainable if g in old.trainable)
        return state.replace(
            opt_state=optim.carry_state(state.opt_state, fresh, keep) if keep else fresh
        )

    # ------------------------------------------------------------------ train step

    def train_step(self, index: int, state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        """One step of phase `index` (compiled on first use per batch shape, then reused).

        Donates `state`. Metrics: see `ftjax.steps`.
        """
        batch = sharding.shard_batch(batch, self.mesh)
        key = (index, _shapes_key(batch))
        if key not in self._train:
            self._train.finish_ahead()  # it may be compiling this very step
        if key not in self._train:
            self._train.compile(key, self._lower_train(index, state, batch), self.mesh)
        return self._train[key](state, batch)

    def compile_train_step(self, index: int, state: TrainState, batch: Batch) -> None:
        """Compile phase `index`'s step ahead of time for these params/model-state and batch shapes
        (text with length buckets compiles once per bucket).

        `state` may belong to any phase (only its params, model state, step and rng shapes are
        used), so every phase can be compiled before training starts.
        """
        batch = sharding.shard_batch(batch, self.mesh)  # the dtypes and layout train_step will see
        key = (index, _shapes_key(batch))
        self._train.compile(key, self._lower_train(index, state, batch), self.mesh)

    def precompile(
        self, index: int, state: TrainState, batches: Sequence[Batch], threads: int = 2
    ) -> int:
        """Compile phase `index`'s step for each batch shape not compiled yet, `threads` at a time
        (XLA compiles on one core, so this overlaps them), after waiting for `compile_ahead`'s
        work; returns how many were compiled here."""
        return self._train.compile_many(self._todo(index, state, batches), self.mesh, threads)

    def compile_ahead(self, index: int, state: TrainState, batches: Sequence[Batch]) -> None:
        """Trace phase `index`'s steps (as `precompile` would) and compile them on a background
        thread: the loop calls it for the next phase, which then compiles while this one trains.
        `precompile` and `train_step` wait for it where they need its steps."""
        self._train.compile_ahead(self._todo(index, state, batches), self.mesh)

    def _todo(
        self, index: int, state: TrainState, batches: Sequence[Batch]
    ) -> list[tuple[tuple, Callable[[], jax.stages.Lowered]]]:
        """(key, lowering thunk) for each of `batches`' shapes phase `index` has not compiled;
        `state` is read now, for its shapes only."""
        todo = {}
        for batch in batches:
            batch = sharding.shard_batch(batch, self.mesh)
            key = (index, _shapes_key(batch))
            if key not in self._train and key not in todo:
                todo[key] = self._lower_train(index, state, batch)
        return list(todo.items())

    def compiled_steps(self, index: int) -> list[jax.stages.Compiled]:
        """Phase `index`'s compiled steps, one per batch shape seen (for cost and memory analysis)."""
        return [c for (i, _), c in self._train.items() if i == index]

    def _lower_train(
        self, index: int, state: TrainState, batch: Batch
    ) -> Callable[[], jax.stages.Lowered]:
        """A thunk lowering phase `index`'s jitted step for `state`'s and `batch`'s shapes."""
        shard = self.state_shardings(index, state.params, state.model_state)
        abstract = _abstract(state.replace(opt_state=self.opt_state_shapes(index, state.params)))
        batch_sh = {k: sharding.batch_sharding(self.mesh) for k in batch}
        abstract_batch = _abstract(batch)

        def lower() -> jax.stages.Lowered:
            jitted = jax.jit(
                self._train_fn(index),
                in_shardings=(shard, batch_sh),
                out_shardings=(shard, sharding.replicated(self.mesh)),
                donate_argnums=(0,),
            )
            return jitted.lower(abstract, abstract_batch)

        return lower

    def _train_fn(self, index: int) -> Callable:
        return train_step_fn(
            self.model,
            self.task,
            self.plan.phases[index],
            trainable_paths=self.trainable_paths(index),
            frozen_paths=self.frozen_paths(index),
            tx=self.optimizer(index),
            accumulate_steps=self.optim_cfg.accumulate_steps,
            skip_nonfinite=self.skip_nonfinite,
            distill=self.distill,
        )

    # ------------------------------------------------------------------ eval step

    def eval_step(self, state: TrainState, batch: Batch) -> tuple[Metrics, Metrics]:
        """The task's metric sums over the batch's masked-in examples and its per-row outputs
        (with the batch's `mask`), compiled once per batch shape and parameter layout."""
        if "mask" not in batch:
            raise KeyError("eval batches need a 'mask' key marking real (non-padding) examples")
        batch = sharding.shard_batch(batch, self.mesh)
        args = (state.params, state.model_state, batch)
        key = (
            _shapes_key(batch),
            tuple(getattr(x, "sharding", None) for x in jax.tree.leaves(args[:2])),
        )
        if key not in self._eval:
            jitted = jax.jit(
                eval_step_fn(self.model, self.task), out_shardings=sharding.replicated(self.mesh)
            )
            self._eval.compile(key, lambda: jitted.lower(*args), self.mesh)
        return self._eval[key](*args)


def evaluate(
    steps: PhaseSteps, state: TrainState, batches: Iterable[Batch], references: Any = None
) -> dict[str, float]:
    """The task's metrics over `batches` (every example of a split once) with `steps`' eval step."""
    return evaluate_with(lambda b: steps.eval_step(state, b), steps.task, batches, references)


def evaluate_with(
    eval_step: Callable[[Batch], tuple[Metrics, Metrics]],
    task: Task,
    batches: Iterable[Batch],
    references: Any = None,
) -> dict[str, float]:
    """The task's metrics over `batches`: `eval_step(batch) -> (sums, rows)` (an
    `ftjax.steps.eval_step_fn`, jitted) summed over all batches, per-row outputs kept on the host
    without their padding rows, then aggregated once. `references` is what the split carries for
    the task beyond its batches."""
    sums, rows = None, {}
    for batch in batches:
        out, batch_rows = eval_step(batch)
        sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
        if batch_rows:
            batch_rows = jax.device_get(batch_rows)
            real = np.asarray(batch_rows.pop("mask"), bool)
            for k, v in batch_rows.items():
                rows.setdefault(k, []).append(np.asarray(v)[real])
    if sums is None:
        raise ValueError("no evaluation batches: the split is empty")
    return task.aggregate(jax.tree.map(float, jax.device_get(sums)), rows, references)


@runtime_checkable
class PhaseRunner(Protocol):
    """Runs one phase's training steps for the loop, one at a time.

    `step()` trains on the next batch and returns that step's metrics (device arrays);
    `full_state()` is the full model's TrainState now (valid after further steps);
    `data_state()` is the training iterator's state now (what a checkpoint stores).
    """

    def step(self) -> Metrics: ...

    def full_state(self) -> TrainState: ...

    def data_state(self) -> dict[str, Any]: ...


class FullModelPhase:
    """Phase `index` through the full model: one `PhaseSteps.train_step` per training batch.

    Every batch shape in `variants` (length buckets) is compiled before the first step.
    """

    def __init__(
        self,
        steps: PhaseSteps,
        index: int,
        state: TrainState,
        train_iter: Iterator[Batch],
        variants: Sequence[Batch] = (),
    ):
        self.steps, self.index, self.state, self.train_iter = steps, index, state, train_iter
        steps.precompile(index, state, variants)

    def step(self) -> Metrics:
        self.state, metrics = self.steps.train_step(self.index, self.state, next(self.train_iter))
        return metrics

    def full_state(self) -> TrainState:
        return self.state

    def data_state(self) -> dict[str, Any]:
        return self.train_iter.get_state()


def run_plan(
    steps: PhaseSteps,
    state: TrainState,
    batches: Sequence[Batch] | Callable[[int], Batch],
) -> tuple[TrainState, list[Metrics]]:
    """Run every step of the plan; `batches(step)` or `batches[step]` gives the batch.

    The minimal loop (phase selection, transitions); the training loop adds eval, logging and
    checkpoints around the same calls.
    """
    get = batches if callable(batches) else batches.__getitem__
    history = []
    for step in range(int(state.step), steps.plan.total_steps):
        phase = steps.plan.phase_at(step)
        if step == phase.start and phase.index > 0:
            state = steps.enter_phase(state, phase.index, previous=phase.index - 1)
        state, metrics = steps.train_step(phase.index, state, get(step))
        history.append(metrics)
    return state, history
