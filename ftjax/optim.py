"""The optax transform of one phase, and carrying its state across phase boundaries.

A phase's optimizer sees only the phase's *trainable* subtree of params (see
`ftjax.param_groups.split_params`): it is an optax `multi_transform` over the trainable groups, each
group getting its own chain (direction such as Adam, decoupled weight decay, its own LR). Groups
frozen in the phase are not in that subtree at all: the strict form of `set_to_zero`, so they
hold no optimizer state and no gradient is ever computed for them. Global-norm clipping runs
over the same subtree, i.e. over trainable parameters only (a full-tree clip would make XLA
compute the frozen gradients again). Gradient accumulation (`optax.MultiSteps`)
wraps this trainable transform.

Learning rates are traced functions of the phase-local step: `update(..., step=t)` passes it
(an extra argument) to every group's LR function, so a changing LR never recompiles and an
Adam state carried from an earlier phase does not shift the new phase's schedule.

Weight decay is off for 1-D parameters (biases, norm scales) unless `decay_1d=True`, and off for
paths fully matching `no_decay_pattern`.

Pruning (`prune`, `ftjax.compress.pruning.PruneSpec`): `magnitude_pruning` follows the
multi_transform, over the phase's whole trainable subtree (so a global threshold ranks all its
prunable weights), reading train step phase.start + step * accumulate_steps; phases without a
trainable prunable weight get none. `carry_state` carries its masks of leaves trainable in both
phases.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from ftjax.compress import pruning
from ftjax.phases import ResolvedPhase

__all__ = [
    "MultiTransformState",
    "OPTIMIZERS",
    "OptimConfigError",
    "OptimConfig",
    "make_optimizer",
    "scale_by_traced_lr",
    "group_states",
    "carry_state",
]

MultiTransformState = optax.MultiTransformState

OPTIMIZERS = ("adamw", "sgd", "lion", "adafactor")


class OptimConfigError(ValueError):
    """An optimizer setting is out of range."""


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Optimizer settings shared by all phases (LRs come from the plan)."""

    name: str = "adamw"
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    momentum: float = 0.9
    nesterov: bool = False
    clip_norm: float | None = None
    accumulate_steps: int = 1
    decay_1d: bool = False
    no_decay_pattern: str | None = None
    prune: pruning.PruneSpec | None = None

    def validate(self) -> None:
        if self.name not in OPTIMIZERS:
            raise OptimConfigError(
                f"unknown optimizer {self.name!r}; use one of {list(OPTIMIZERS)}"
            )
        if self.weight_decay < 0:
            raise OptimConfigError(f"weight_decay={self.weight_decay} must be >= 0")
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise OptimConfigError(
                f"clip_norm={self.clip_norm} must be > 0, or None to disable clipping"
            )
        if self.accumulate_steps < 1:
            raise OptimConfigError(
                f"accumulate_steps={self.accumulate_steps} must be >= 1 (1 means no accumulation)"
            )
        if self.prune is not None and not isinstance(self.prune, pruning.PruneSpec):
            raise OptimConfigError(
                f"prune={self.prune!r}: give a pruning.PruneSpec (from config.prune, not config.optim)"
            )
        if self.prune is not None:
            try:
                self.prune.validate()
            except pruning.PruneError as e:
                raise OptimConfigError(f"prune: {e}") from e


def make_optimizer(
    cfg: OptimConfig, phase: ResolvedPhase, labels: Mapping[str, Any]
) -> optax.GradientTransformationExtraArgs:
    """The phase's transform over its trainable subtree; `labels` gives each leaf's group name.

    Call `update(grads, state, params, step=phase_local_step)`.
    """
    cfg.validate()
    present = set(jax.tree.leaves(labels))
    missing = present - set(phase.trainable)
    if missing:
        raise OptimConfigError(
            f"labels hold group(s) {sorted(missing)} that phase {phase.name!r} does not train"
        )
    transforms = {g: _group_transform(cfg, phase, g) for g in phase.trainable if g in present}
    tx = optax.multi_transform(transforms, labels)
    if cfg.prune is not None and pruning.prunable_paths(labels, cfg.prune.pattern):
        prune = pruning.magnitude_pruning(
            cfg.prune, phase_start=phase.start, accumulate_steps=cfg.accumulate_steps
        )
        tx = optax.chain(tx, prune)
    if cfg.clip_norm is not None:
        tx = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), tx)
    if cfg.accumulate_steps > 1:
        multi = optax.MultiSteps(tx, every_k_schedule=cfg.accumulate_steps)
        return optax.GradientTransformationExtraArgs(
            multi.init, multi.update
        )  # keeps the step argument
    return optax.with_extra_args_support(tx)


def _group_transform(
    cfg: OptimConfig, phase: ResolvedPhase, group: str
) -> optax.GradientTransformation:
    parts = [_direction(cfg)]
    if cfg.weight_decay:
        parts.append(
            optax.add_decayed_weights(cfg.weight_decay, mask=lambda p: _decay_mask(cfg, p))
        )
    parts.append(scale_by_traced_lr(phase.lr_fn(group)))
    return optax.chain(*parts)


def _direction(cfg: OptimConfig) -> optax.GradientTransformation:
    if cfg.name == "adamw":
        return optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
    if cfg.name == "sgd":
        return optax.trace(decay=cfg.momentum, nesterov=cfg.nesterov)
    if cfg.name == "lion":
        return optax.scale_by_lion(b1=cfg.b1, b2=cfg.b2)
    return optax.scale_by_factored_rms()


def _decay_mask(cfg: OptimConfig, params: Any) -> Any:
    rx = re.compile(cfg.no_decay_pattern) if cfg.no_decay_pattern else None

    def decays(path, x) -> bool:
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        return (cfg.decay_1d or x.ndim >= 2) and not (rx and rx.fullmatch(name))

    return jax.tree_util.tree_map_with_path(decays, params)


def scale_by_traced_lr(lr_fn) -> optax.GradientTransformationExtraArgs:
    """Scale updates by -lr_fn(step), `step` being the extra argument passed to `update`."""

    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params=None, *, step, **extra):
        del params, extra
        lr = lr_fn(step)
        return jax.tree.map(lambda u: (-lr * u).astype(u.dtype), updates), state

    return optax.GradientTransformationExtraArgs(init, update)


def group_states(state: Any) -> dict[str, Any]:
    """{group: its optimizer state} from a phase optimizer's state (the first multi_transform)."""
    found: list[MultiTransformState] = []
    is_mts = lambda x: isinstance(x, MultiTransformState)
    jax.tree.map(lambda x: found.append(x) if is_mts(x) else None, state, is_leaf=is_mts)
    if len(found) != 1:
        raise ValueError(
            f"expected one multi_transform state in the optimizer state, found {len(found)}"
        )
    return dict(found[0].inner_states)


def carry_state(old_state: Any, new_state: Any, groups: Iterable[str]) -> Any:
    """`new_state` with the state of `groups` replaced by theirs from `old_state`.

    A group's state covers the same leaves in both phases, in the same order (the trainable
    subtrees are both restrictions of one sorted params tree), so its arrays move as they are.
    Pruning masks move for every leaf trainable in both phases (`pruning.carry_masks`).
    """
    old = group_states(old_state)
    groups = tuple(groups)
    is_mts = lambda x: isinstance(x, MultiTransformState)

    def replace(node):
        if not is_mts(node):
            return node
        inner = dict(node.inner_states)
        for g in groups:
            inner[g] = _transplant(old[g], inner[g], g)
        return MultiTransformState(inner)

    return pruning.carry_masks(old_state, jax.tree.map(replace, new_state, is_leaf=is_mts))


def _transplant(old: Any, new: Any, group: str) -> Any:
    old_leaves = jax.tree.leaves(old)
    new_leaves, treedef = jax.tree.flatten(new)
    shapes = lambda ls: [(jnp.shape(x), jnp.result_type(x)) for x in ls]
    if shapes(old_leaves) != shapes(new_leaves):
        raise ValueError(
            f"optimizer state of group {group!r} changed shape between phases; cannot carry it"
        )
    return jax.tree.unflatten(treedef, old_leaves)
