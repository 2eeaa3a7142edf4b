"""Per-phase compiled train steps, phase transitions and the eval step.

`Engine` ties a model (anything with `apply(params, state, batch, *, train, rng, frozen)`, see
`ftjax.models.base.Model`), its parameter groups, a resolved plan and optimizer settings to a
device mesh. Each phase gets its own train step, compiled once (ahead of time, on the first
batch's shapes) and cached: inside it the phase's trainable set is static, so `jax.grad` is
taken w.r.t. the trainable subtree only and frozen params enter as constants (their gradients
are never computed); the frozen set is also passed to `apply`, so frozen batch-norm layers use
their running statistics and leave them unchanged. LRs are traced functions of the step, so a
changing LR never recompiles.

Usage by a training loop (`step` is the loop's Python step counter):

    engine = Engine(model, groups, resolved_plan, OptimConfig(...), mesh=make_mesh(...))
    state = engine.init_state(params, model_state, rng)            # opt state for phase 0
    for step in range(resolved_plan.total_steps):
        phase = resolved_plan.phase_at(step)
        if step == phase.start and phase.index > 0:
            state = engine.enter_phase(state, phase.index, previous=phase.index - 1)
        state, metrics = engine.train_step(phase.index, state, batch)
    sums = engine.eval_step(state, eval_batch)   # {'loss_sum', 'correct', 'count'}

At a phase boundary `enter_phase` carries the optimizer state of groups that stay trainable
(unless the phase says reset_moments) and creates state, on the mesh, for groups that become
trainable; groups that become frozen drop theirs.

Public API:
  TrainState (pytree: params, opt_state, model_state, step, rng)
  Engine(model, groups, plan, optim, *, mesh=None, partition_rules=(), label_smoothing=0.0)
    .init_state / .enter_phase / .train_step / .eval_step / .compile_train_step / .precompile / .compiled_steps
    .compile_count / .opt_state_shapes(i) / .state_shardings(i)
  cross_entropy(logits, labels, label_smoothing) -> per-example loss
  compile_lowered(lowered, mesh, cpu_options) -> compiled with a model's XLA options on CPU
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import gc
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from ftjax import optim, param_groups, sharding
from ftjax.param_groups import ParamGroups
from ftjax.phases import PlanError, ResolvedPhase, ResolvedPlan

Metrics = dict[str, jax.Array]

_MALLOC_TRIM = getattr(ctypes.CDLL(None), "malloc_trim", None)  # glibc only


def compile_lowered(
    lowered: jax.stages.Lowered, mesh: Mesh, cpu_options: Sequence[tuple[str, Any]] = ()
) -> jax.stages.Compiled:
    """`lowered.compile()`, with the XLA options `cpu_options` when `mesh` is on CPU (a model's
    `Model.cpu_compiler_options`); an XLA that lacks one of them compiles with its defaults."""
    options = dict(cpu_options)
    if not options or mesh.devices.flat[0].platform != "cpu":
        return lowered.compile()
    try:
        return lowered.compile(options)
    except jax.errors.JaxRuntimeError as e:
        if "No such compile option" not in str(e):
            raise
        return lowered.compile()


def _release_compiler_memory() -> None:
    """Give back what tracing and compiling a step leave behind, before the step first runs.

    The Engine holds every step it compiled (train and eval), so JAX's tracing caches (a jaxpr
    per internal jit and shape seen while tracing a model: ~70 MiB for EfficientNet-Lite0) are
    dead weight; clearing them only makes other jitted functions retrace on their next call.
    XLA:CPU also compiles through hundreds of MiB of small allocations that glibc keeps mapped
    after they are freed, while a step's temporaries are fresh large mappings, so without the
    trim both count towards peak memory. Together: full-step peak RSS 1526 -> 1410 MiB for
    MiniLM, 1258 -> 989 MiB for Lite0 (benchmarks/vs_pytorch.py).
    """
    jax.clear_caches()
    gc.collect()
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


@flax.struct.dataclass
class TrainState:
    params: Any
    opt_state: Any
    model_state: Any
    step: jax.Array
    rng: jax.Array


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Per-example softmax cross-entropy with integer labels and optional label smoothing."""
    n = logits.shape[-1]
    targets = jax.nn.one_hot(labels, n, dtype=logits.dtype)
    if label_smoothing:
        targets = targets * (1.0 - label_smoothing) + label_smoothing / n
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets.astype(jnp.float32))


def _masked_mean(x: jax.Array, batch: Mapping[str, jax.Array]) -> jax.Array:
    if "mask" not in batch:
        return jnp.mean(x)
    w = batch["mask"].astype(jnp.float32)
    return jnp.sum(x * w) / jnp.maximum(jnp.sum(w), 1.0)


def _shapes_key(batch: Mapping[str, Any]) -> tuple:
    return tuple(sorted((k, tuple(v.shape), str(v.dtype)) for k, v in batch.items()))


class Engine:
    """Compiled, sharded train/eval steps for every phase of a plan (see module doc)."""

    def __init__(
        self,
        model: Any,
        groups: ParamGroups,
        plan: ResolvedPlan,
        optim_cfg: optim.OptimConfig,
        *,
        mesh: Mesh | None = None,
        partition_rules: sharding.Rules = (),
        label_smoothing: float = 0.0,
        skip_nonfinite: bool = False,
    ):
        optim_cfg.validate()
        groups.check_known(plan.group_names, what="the plan")
        self._check_accumulation(plan, optim_cfg.accumulate_steps)
        self.model, self.groups, self.plan, self.optim_cfg = model, groups, plan, optim_cfg
        self.mesh = mesh if mesh is not None else sharding.make_mesh(devices=jax.devices()[:1])
        self.partition_rules = tuple(partition_rules)
        self.label_smoothing = label_smoothing
        self.skip_nonfinite = (
            skip_nonfinite  # a non-finite loss or gradient leaves the state as it was
        )
        self._specs = None  # param PartitionSpecs, set by init_state
        self._train: dict[tuple[int, Any], Any] = {}  # (phase, batch shapes) -> compiled step
        self._eval: dict[Any, Any] = {}  # (batch shapes, param shardings) -> compiled eval step
        self.compile_count = 0
        self.eval_compile_count = 0
        self._compile_lock = threading.Lock()

    @staticmethod
    def _check_accumulation(plan: ResolvedPlan, k: int) -> None:
        bad = [f"{p.name}@{p.start}" for p in plan.phases if p.start % k] + (
            [f"end@{plan.total_steps}"] if plan.total_steps % k else []
        )
        if bad:
            raise PlanError(
                f"with accumulate_steps={k}, phase boundaries {bad} fall inside an accumulation window; "
                f"make every phase length a multiple of {k}"
            )

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
        )

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
        return state

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

    def train_step(
        self, index: int, state: TrainState, batch: Mapping[str, Any]
    ) -> tuple[TrainState, Metrics]:
        """One step of phase `index` (compiled on first use per batch shape, then reused). Donates `state`."""
        batch = sharding.shard_batch(batch, self.mesh)
        key = (index, _shapes_key(batch))
        if key not in self._train:
            self.compile_train_step(index, state, batch)
            _release_compiler_memory()
        return self._train[key](state, batch)

    def compile_train_step(self, index: int, state: TrainState, batch: Mapping[str, Any]) -> None:
        """Compile phase `index`'s step ahead of time for these params/model-state and batch shapes
        (text with length buckets compiles once per bucket).

        `state` may belong to any phase (only its params, model state, step and rng shapes are
        used), so every phase can be compiled before training starts.
        """
        batch = sharding.shard_batch(batch, self.mesh)  # the dtypes and layout train_step will see
        shard = self.state_shardings(index, state.params, state.model_state)
        shapes = lambda t: jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), x.dtype), t)
        state = state.replace(opt_state=self.opt_state_shapes(index, state.params))
        state = shapes(state)
        batch_sh = {k: sharding.batch_sharding(self.mesh) for k in batch}
        jitted = jax.jit(
            self._make_train_fn(self.plan.phases[index]),
            in_shardings=(shard, batch_sh),
            out_shardings=(shard, sharding.replicated(self.mesh)),
            donate_argnums=(0,),
        )
        compiled = compile_lowered(
            jitted.lower(state, shapes(batch)), self.mesh, self.model.cpu_compiler_options
        )
        with self._compile_lock:  # `precompile` runs this from several threads
            self._train[(index, _shapes_key(batch))] = compiled
            self.compile_count += 1

    def compiled_steps(self, index: int) -> list[Any]:
        """Phase `index`'s compiled steps, one per batch shape seen (for cost and memory analysis)."""
        return [c for (i, _), c in self._train.items() if i == index]

    def precompile(
        self, index: int, state: TrainState, batches: Sequence[Mapping[str, Any]], threads: int = 2
    ) -> int:
        """Compile phase `index`'s step for each batch shape not compiled yet, `threads` at a time
        (XLA compiles on one core, so this overlaps them); returns how many were compiled."""
        todo = {}
        for batch in batches:
            batch = sharding.shard_batch(batch, self.mesh)
            todo.setdefault((index, _shapes_key(batch)), batch)
        todo = [b for k, b in todo.items() if k not in self._train]
        with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
            list(pool.map(lambda b: self.compile_train_step(index, state, b), todo))
        if todo:
            _release_compiler_memory()
        return len(todo)

    def _make_train_fn(self, phase: ResolvedPhase) -> Callable:
        trainable_paths = self.trainable_paths(phase.index)
        frozen_paths = self.frozen_paths(phase.index)
        tx = self.optimizer(phase.index)
        k = self.optim_cfg.accumulate_steps
        lr_fns = {g: phase.lr_fn(g) for g in phase.trainable}
        model, smoothing, skip_nonfinite = self.model, self.label_smoothing, self.skip_nonfinite

        def train_fn(state: TrainState, batch):
            trainable, frozen = param_groups.split_params(state.params, trainable_paths)
            rng = jax.random.fold_in(state.rng, state.step)

            def loss_fn(tp):
                logits, new_ms = model.apply(
                    param_groups.merge_params(tp, frozen),
                    state.model_state,
                    batch,
                    train=True,
                    rng=rng,
                    frozen=frozen_paths,
                )
                loss = _masked_mean(cross_entropy(logits, batch["label"], smoothing), batch)
                return loss, (logits, new_ms)

            (loss, (logits, new_ms)), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
            local_step = (state.step - phase.start) // k
            updates, opt_state = tx.update(grads, state.opt_state, trainable, step=local_step)
            new_trainable = optax.apply_updates(trainable, updates)
            grad_norm = optax.tree.norm(grads)
            metrics = {
                "loss": loss,
                "accuracy": _masked_mean(
                    (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32), batch
                ),
                "grad_norm": grad_norm,
                **{f"lr/{g}": fn(local_step) for g, fn in lr_fns.items()},
            }
            if (
                skip_nonfinite
            ):  # keep the old trainable params, moments and BN stats; the step still counts
                ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
                keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
                new_trainable = keep(new_trainable, trainable)
                opt_state, new_ms = (
                    keep(opt_state, state.opt_state),
                    keep(new_ms, state.model_state),
                )
                metrics["skipped"] = 1.0 - ok.astype(jnp.float32)
            params = param_groups.merge_params(new_trainable, frozen)
            new_state = state.replace(
                params=params, opt_state=opt_state, model_state=new_ms, step=state.step + 1
            )
            return new_state, metrics

        return train_fn

    # ------------------------------------------------------------------ eval step

    def eval_step(self, state: TrainState, batch: Mapping[str, Any]) -> Metrics:
        """Sums over masked-in examples: {'loss_sum', 'correct', 'count'} (compiled once per batch
        shape and parameter layout)."""
        if "mask" not in batch:
            raise KeyError("eval batches need a 'mask' key marking real (non-padding) examples")
        batch = sharding.shard_batch(batch, self.mesh)
        args = (state.params, state.model_state, batch)
        key = (
            _shapes_key(batch),
            tuple(getattr(x, "sharding", None) for x in jax.tree.leaves(args[:2])),
        )
        if key not in self._eval:
            jitted = jax.jit(self._eval_fn, out_shardings=sharding.replicated(self.mesh))
            self._eval[key] = compile_lowered(
                jitted.lower(*args), self.mesh, self.model.cpu_compiler_options
            )
            self.eval_compile_count += 1
            _release_compiler_memory()
        return self._eval[key](*args)

    def _eval_fn(self, params, model_state, batch) -> Metrics:
        logits, _ = self.model.apply(params, model_state, batch, train=False)
        w = batch["mask"].astype(jnp.float32)
        loss = cross_entropy(logits, batch["label"], self.label_smoothing)
        correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
        return {"loss_sum": jnp.sum(loss * w), "correct": jnp.sum(correct * w), "count": jnp.sum(w)}


def run_plan(
    engine: Engine,
    state: TrainState,
    batches: Sequence[Mapping[str, Any]] | Callable[[int], Mapping[str, Any]],
) -> tuple[TrainState, list[Metrics]]:
    """Run every step of the engine's plan; `batches(step)` or `batches[step]` gives the batch.

    The minimal loop (phase selection, transitions); the training loop adds eval, logging and
    checkpoints around the same calls.
    """
    get = batches if callable(batches) else batches.__getitem__
    history = []
    for step in range(int(state.step), engine.plan.total_steps):
        phase = engine.plan.phase_at(step)
        if step == phase.start and phase.index > 0:
            state = engine.enter_phase(state, phase.index, previous=phase.index - 1)
        state, metrics = engine.train_step(phase.index, state, get(step))
        history.append(metrics)
    return state, history
