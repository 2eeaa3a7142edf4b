"""Pure builders of the train and eval step functions: what is differentiated, the loss, metrics.

`train_step_fn` returns the function one training step of a phase computes, `(state, batch) ->
(state, metrics)`; `eval_step_fn` returns `(params, model_state, batch) -> (metric sums, rows)`. Both are
plain traceable functions: jit, shardings, donation and compile caching are the caller's
(`ftjax.phase_steps`, `ftjax.compile`). Inside a train step the phase's trainable set is static:
`jax.grad` is taken w.r.t. the trainable subtree only and frozen params enter as constants (their
gradients are never computed), and the frozen set is passed to `Model.apply`, so frozen
batch-norm layers use their running statistics and leave them unchanged. Learning rates are traced
functions of the phase-local step, so a changing LR never recompiles.

Train-step metrics: `loss` (the masked mean of the task's per-example loss), `grad_norm` (over
trainable params only), the task's `train_metrics` (e.g. `accuracy`), `lr/<group>` per trainable
group, and `nonfinite`: 1.0 when the loss, the gradient norm or any updated trainable param is
not finite, else 0.0. With `skip_nonfinite`, a step whose `nonfinite` is 1 keeps the old
trainable params, optimizer state and model state (the step counter still advances) and reports
`skipped` (equal to `nonfinite`).

Distillation (`distill`, a `ftjax.compress.distill.Distillation`): the teacher's variables ride
in `TrainState.teacher`; its logits are computed in the step, frozen, and the loss becomes the
distillation mix; metrics add `task_loss` (the task's loss alone).

Not here: the loss and metrics themselves (`ftjax.tasks`), compiling and caching steps
(`ftjax.compile`), state placement and phase transitions (`ftjax.phase_steps`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from ftjax import param_groups
from ftjax.phases import ResolvedPhase
from ftjax.tasks import Task, masked_mean

__all__ = ["Metrics", "TrainState", "TrainFn", "EvalFn", "train_step_fn", "eval_step_fn"]

Metrics = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
    params: Any
    opt_state: Any
    model_state: Any
    step: jax.Array
    rng: jax.Array
    teacher: Any = None  # distillation: the frozen teacher's variables (never checkpointed)


TrainFn = Callable[[TrainState, Mapping[str, jax.Array]], tuple[TrainState, Metrics]]
EvalFn = Callable[[Any, Any, Mapping[str, jax.Array]], tuple[Metrics, Metrics]]


def _all_finite(tree: Any) -> jax.Array:
    """True when every element of every leaf of `tree` is finite (one pass, no overflow)."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def _keep_if(ok: jax.Array, new: Any, old: Any) -> Any:
    return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)


def train_step_fn(
    model: Any,
    task: Task,
    phase: ResolvedPhase,
    *,
    trainable_paths: frozenset[str],
    frozen_paths: frozenset[str],
    tx: optax.GradientTransformationExtraArgs,
    accumulate_steps: int = 1,
    skip_nonfinite: bool = False,
    distill: Any = None,
) -> TrainFn:
    """One training step of `phase`: differentiate the trainable subtree, update it with `tx`."""
    lr_fns = {g: phase.lr_fn(g) for g in phase.trainable}

    def train_fn(state: TrainState, batch: Mapping[str, jax.Array]) -> tuple[TrainState, Metrics]:
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
            if distill is None:
                return masked_mean(task.loss(logits, batch), batch), (logits, new_ms)
            taught = distill.loss(task, logits, distill.teacher.logits(state.teacher, batch), batch)
            return masked_mean(taught, batch), (logits, new_ms)

        (loss, (logits, new_ms)), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
        local_step = (state.step - phase.start) // accumulate_steps
        updates, opt_state = tx.update(grads, state.opt_state, trainable, step=local_step)
        new_trainable = optax.apply_updates(trainable, updates)
        grad_norm = optax.tree.norm(grads)
        metrics = {
            "loss": loss,
            **task.train_metrics(logits, batch),
            "grad_norm": grad_norm,
            **({"task_loss": masked_mean(task.loss(logits, batch), batch)} if distill else {}),
            **{f"lr/{g}": fn(local_step) for g, fn in lr_fns.items()},
        }
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & _all_finite(new_trainable)
        metrics["nonfinite"] = 1.0 - ok.astype(jnp.float32)
        if skip_nonfinite:
            new_trainable = _keep_if(ok, new_trainable, trainable)
            opt_state = _keep_if(ok, opt_state, state.opt_state)
            new_ms = _keep_if(ok, new_ms, state.model_state)
            metrics["skipped"] = metrics["nonfinite"]
        new_state = state.replace(
            params=param_groups.merge_params(new_trainable, frozen),
            opt_state=opt_state,
            model_state=new_ms,
            step=state.step + 1,
        )
        return new_state, metrics

    return train_fn


def eval_step_fn(model: Any, task: Task) -> EvalFn:
    """The task's metric sums and per-row outputs of one evaluation batch, the model in inference
    mode: `(sums, rows)`; `rows` holds the task's `eval_rows` and the batch's `mask`, so the caller
    can drop padding rows."""

    def eval_fn(
        params: Any, model_state: Any, batch: Mapping[str, jax.Array]
    ) -> tuple[Metrics, Metrics]:
        logits, _ = model.apply(params, model_state, batch, train=False)
        rows = task.eval_rows(logits, batch)
        return task.eval_sums(logits, batch), {**rows, "mask": batch["mask"]} if rows else {}

    return eval_fn
