"""Unstructured magnitude pruning during fine-tuning, as an optax transform.

Which weights: the leaves whose '/'-joined path fully matches `pattern` (default the encoder's
Dense kernels: not embeddings, LayerNorms, biases, pooler or head). Which of them are zeroed:
the smallest |w|, either per tensor (`scope="tensor"`, each kernel at the target sparsity), over
all of them at once (`scope="global"`, one threshold), or N:M (`n_m=(2, 4)`: keep the N largest of
every M consecutive weights along axis -2, the input-feature axis of a Flax Dense kernel
(in, out) or Conv kernel (..., in, out): the contraction axis that sparse tensor cores group, a
PyTorch weight's rows). Exactly round(sparsity x size) weights are pruned; ties prune the lower
flat index first.

When: Zhu & Gupta's gradual schedule ("To prune, or not to prune", 2017), sparsity
s(t) = s_f + (s_i - s_f) (1 - p)^3 rising from `initial_sparsity` at `begin_step` to `sparsity`
at `end_step`, p stepping every `update_every` steps (0 before `begin_step`, 1 from `end_step`
on). Steps are the run's train steps (the loop's counter), so the schedule spans phases. N:M
masks apply from `begin_step`.

How: `magnitude_pruning` ends the optimizer chain. Its state holds the masks (bool, one per
prunable leaf), so they are checkpointed with the optimizer state; at each schedule step
(`lax.cond`: the sort runs on those steps only) and at a phase's first step it recomputes them
from |params + updates|, and on every step it returns updates that make the new params
(params + updates) * mask: kept weights move exactly as without pruning, pruned ones are set to
exactly 0. `ftjax.optim.make_optimizer` chains it after the per-group transforms, over the
phase's whole trainable subtree, so "global" ranks every trainable prunable weight together;
frozen weights are not touched (a pruned weight that a later phase freezes stays 0).

Config (`config.prune`, see `validate_config` and `from_config`): `sparsity` (0: off),
`initial_sparsity`, `scope`, `n_m`, `pattern` ('' = default), `begin` / `end` (fractions of the
run), `update_every` (steps).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

__all__ = [
    "DEFAULT_PATTERN",
    "SCOPES",
    "PruneError",
    "PruneSpec",
    "PruningState",
    "prunable_paths",
    "magnitude_mask",
    "sparsity_at",
    "refresh_due",
    "magnitude_pruning",
    "carry_masks",
    "sparsity_of",
    "pruned",
    "validate_config",
    "from_config",
]

DEFAULT_PATTERN = r"encoder/.*/kernel"
SCOPES = ("tensor", "global")


class PruneError(ValueError):
    """A pruning setting is out of range or does not fit the params."""


@dataclasses.dataclass(frozen=True)
class PruneSpec:
    """What to prune and when; steps are the run's train steps (see module doc)."""

    sparsity: float = 0.0
    initial_sparsity: float = 0.0
    scope: str = "tensor"
    n_m: tuple[int, int] | None = None
    pattern: str = DEFAULT_PATTERN
    begin_step: int = 0
    end_step: int = 0
    update_every: int = 10

    def validate(self) -> None:
        if self.n_m is not None:
            n, m = self.n_m
            if not 0 < n < m:
                raise PruneError(f"n_m={self.n_m}: need 0 < N < M, e.g. (2, 4)")
            if self.sparsity or self.initial_sparsity:
                raise PruneError("n_m fixes the sparsity at 1 - N/M; leave sparsity at 0")
        elif not 0 < self.sparsity < 1:
            raise PruneError(f"sparsity={self.sparsity} must be in (0, 1), or set n_m")
        if not 0 <= self.initial_sparsity <= max(self.sparsity, 0):
            raise PruneError(
                f"initial_sparsity={self.initial_sparsity} must be in [0, sparsity={self.sparsity}]"
            )
        if self.scope not in SCOPES:
            raise PruneError(f"scope={self.scope!r}; use one of {list(SCOPES)}")
        if not 0 <= self.begin_step <= self.end_step:
            raise PruneError(
                f"need 0 <= begin_step ({self.begin_step}) <= end_step ({self.end_step})"
            )
        if self.update_every < 1:
            raise PruneError(f"update_every={self.update_every} must be >= 1")
        try:
            re.compile(self.pattern)
        except re.error as e:
            raise PruneError(f"pattern {self.pattern!r} is not a valid regex ({e})") from e


# ----------------------------------------------------------------------------- masks


def _flat(tree: Mapping[str, Any]) -> dict[str, Any]:
    return {"/".join(k): v for k, v in traverse_util.flatten_dict(dict(tree)).items()}


def _unflat(flat: Mapping[str, Any]) -> dict[str, Any]:
    return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})


def prunable_paths(tree: Mapping[str, Any], pattern: str = DEFAULT_PATTERN) -> list[str]:
    """The '/'-joined paths of `tree`'s leaves that fully match `pattern`, sorted (optax's
    MaskedNode placeholders are not leaves)."""
    rx = re.compile(pattern)
    flat = _flat(tree)
    return sorted(
        p for p, v in flat.items() if not isinstance(v, optax.MaskedNode) and rx.fullmatch(p)
    )


def _check_n_m(flat: Mapping[str, Any], n_m: tuple[int, int]) -> None:
    m = n_m[1]
    bad = [f"{p} {tuple(v.shape)}" for p, v in flat.items() if v.ndim < 2 or v.shape[-2] % m]
    if bad:
        raise PruneError(
            f"N:M {n_m} groups {m} consecutive weights along axis -2 (inputs); these leaves have "
            f"no such axis of a multiple of {m}: {bad[:5]}; narrow the pattern"
        )


def _keep_largest(scores: jax.Array, sparsity: jax.Array) -> jax.Array:
    """1-D bool: False for the round(sparsity * n) smallest scores (ties: lower index first)."""
    n = scores.size
    n_prune = jnp.round(jnp.asarray(sparsity, jnp.float32) * n).astype(jnp.int32)
    order = jnp.argsort(scores, stable=True)
    ranks = jnp.zeros(n, jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
    return ranks >= n_prune


def _n_m_keep(x: jax.Array, n: int, m: int) -> jax.Array:
    """Keep the n largest |x| of every m consecutive entries along axis -2."""
    a = jnp.moveaxis(jnp.abs(x.astype(jnp.float32)), -2, -1)
    groups = a.reshape(*a.shape[:-1], a.shape[-1] // m, m)
    ranks = jnp.argsort(jnp.argsort(-groups, axis=-1, stable=True), axis=-1, stable=True)
    return jnp.moveaxis((ranks < n).reshape(a.shape), -1, -2)


def _flat_masks(flat: Mapping[str, jax.Array], sparsity, scope: str, n_m) -> dict[str, jax.Array]:
    if n_m is not None:
        return {p: _n_m_keep(v, *n_m) for p, v in flat.items()}
    scores = {p: jnp.abs(v.astype(jnp.float32)).ravel() for p, v in flat.items()}
    if scope == "tensor":
        return {p: _keep_largest(s, sparsity).reshape(flat[p].shape) for p, s in scores.items()}
    paths = sorted(scores)
    keep = _keep_largest(jnp.concatenate([scores[p] for p in paths]), sparsity)
    out, start = {}, 0
    for p in paths:
        size = scores[p].size
        out[p] = keep[start : start + size].reshape(flat[p].shape)
        start += size
    return out


def magnitude_mask(
    params: Mapping[str, Any],
    sparsity: float | jax.Array,
    *,
    scope: str = "tensor",
    n_m: tuple[int, int] | None = None,
    pattern: str = DEFAULT_PATTERN,
) -> dict[str, Any]:
    """Keep-masks of the prunable leaves: a nested dict (params' paths, prunable leaves only) of
    bool arrays, True where the weight stays. `sparsity` may be traced; with `n_m` it is unused."""
    if scope not in SCOPES:
        raise PruneError(f"scope={scope!r}; use one of {list(SCOPES)}")
    every = _flat(params)
    flat = {p: every[p] for p in prunable_paths(params, pattern)}
    if n_m is not None:
        _check_n_m(flat, n_m)
    return _unflat(_flat_masks(flat, sparsity, scope, n_m))


def pruned(run, sparsity: float, scope: str = "tensor", n_m: tuple[int, int] | None = None):
    """One-shot pruning of a finished `ftjax.inference.Run` (no retraining): the run with the
    smallest prunable weights at exactly 0, per tensor, globally, or N:M."""
    PruneSpec(sparsity=0.0 if n_m else sparsity, scope=scope, n_m=n_m).validate()
    if not prunable_paths(run.params):
        raise PruneError(
            f"{run.workdir} has no weight magnitude pruning takes (paths matching "
            f"{DEFAULT_PATTERN!r}, an encoder's Dense kernels): it is for transformer encoders"
        )
    masks = _flat(magnitude_mask(run.params, sparsity, scope=scope, n_m=n_m))
    flat = _flat(run.params)
    flat.update({p: jnp.where(keep, flat[p], 0) for p, keep in masks.items()})
    return dataclasses.replace(run, params=jax.device_get(_unflat(flat)))


def sparsity_of(params: Mapping[str, Any], pattern: str = DEFAULT_PATTERN) -> float:
    """The fraction of exact zeros over the prunable leaves."""
    flat = _flat(params)
    leaves = [flat[p] for p in prunable_paths(params, pattern)]
    total = sum(x.size for x in leaves)
    return sum(int((x == 0).sum()) for x in leaves) / max(total, 1)


# ----------------------------------------------------------------------------- schedule


def _grid_index(spec: PruneSpec, t: jax.Array) -> jax.Array:
    """Which schedule step `t` is past: -1 before begin_step, floor((t - begin) / update_every)
    until end_step, and from end_step on one more than any before (end_step is a step too)."""
    span = spec.end_step - spec.begin_step
    last = math.ceil(span / spec.update_every)
    k = jnp.floor_divide(t - spec.begin_step, spec.update_every)
    return jnp.where(t < spec.begin_step, -1, jnp.where(t >= spec.end_step, last, k))


def sparsity_at(spec: PruneSpec, t: jax.Array | int) -> jax.Array:
    """The target sparsity at train step `t` (traced: a changing sparsity never recompiles)."""
    t = jnp.asarray(t, jnp.int32)
    started = t >= spec.begin_step
    if spec.n_m is not None:
        return jnp.where(started, 1 - spec.n_m[0] / spec.n_m[1], 0.0).astype(jnp.float32)
    span = spec.end_step - spec.begin_step
    if span == 0:
        progress = jnp.float32(1.0)
    else:
        steps = jnp.maximum(_grid_index(spec, t), 0) * spec.update_every
        progress = jnp.where(t >= spec.end_step, 1.0, steps / span)
    s_i, s_f = spec.initial_sparsity, spec.sparsity
    s = s_f + (s_i - s_f) * (1 - progress) ** 3
    return jnp.where(started, s, 0.0).astype(jnp.float32)


def refresh_due(spec: PruneSpec, t: jax.Array | int, window: int = 1) -> jax.Array:
    """Whether a schedule step falls in (t - window, t]: the masks are recomputed at `t`."""
    t = jnp.asarray(t, jnp.int32)
    return _grid_index(spec, t) > _grid_index(spec, t - window)


# ----------------------------------------------------------------------------- the transform


class PruningState(NamedTuple):
    """Keep-masks (bool) of the prunable leaves, as a nested dict of their paths."""

    masks: Any


def magnitude_pruning(
    spec: PruneSpec, *, phase_start: int = 0, accumulate_steps: int = 1
) -> optax.GradientTransformationExtraArgs:
    """Gradual magnitude pruning; chain it last. Call `update(updates, state, params, step=i)`
    with `i` the phase-local optimizer step: train step t = phase_start + i * accumulate_steps
    is what the schedule reads. Masks are recomputed when a schedule step falls in the
    accumulation window and at i == 0 (a phase's first step) once t >= begin_step."""
    spec.validate()

    def prunable(tree) -> dict[str, Any]:
        flat = _flat(tree)
        return {p: flat[p] for p in prunable_paths(tree, spec.pattern)}

    def init(params):
        flat = prunable(params)
        if spec.n_m is not None:
            _check_n_m(flat, spec.n_m)
        return PruningState(_unflat({p: jnp.ones(v.shape, jnp.bool_) for p, v in flat.items()}))

    def update(updates, state, params=None, *, step, **extra):
        del extra
        if params is None:
            raise PruneError("magnitude_pruning needs params: call update(updates, state, params)")
        step = jnp.asarray(step, jnp.int32)
        t = phase_start + step * accumulate_steps
        p_flat, u_flat = prunable(params), _flat(updates)
        due = refresh_due(spec, t, accumulate_steps) | ((step == 0) & (t >= spec.begin_step))

        def recompute(p, u):
            new = {k: (p[k] + u[k]).astype(p[k].dtype) for k in p}
            return _flat_masks(new, sparsity_at(spec, t), spec.scope, spec.n_m)

        old = _flat(state.masks)
        masks = jax.lax.cond(
            due, recompute, lambda p, u: old, p_flat, {k: u_flat[k] for k in p_flat}
        )
        for k, keep in masks.items():
            u = u_flat[k]
            u_flat[k] = jnp.where(keep, u, -p_flat[k].astype(u.dtype))
        return _unflat(u_flat), PruningState(_unflat(masks))

    return optax.GradientTransformationExtraArgs(init, update)


def carry_masks(old_state: Any, new_state: Any) -> Any:
    """`new_state` with every PruningState's masks taken from `old_state`'s where both hold the
    same leaf (a leaf trainable in both phases); other masks stay fresh."""
    is_ps = lambda x: isinstance(x, PruningState)
    found: list[PruningState] = []
    jax.tree.map(lambda x: found.append(x) if is_ps(x) else None, old_state, is_leaf=is_ps)
    if not found:
        return new_state
    old = _flat(found[0].masks)

    def replace(node):
        if not is_ps(node):
            return node
        flat = _flat(node.masks)
        for k, m in flat.items():
            if k in old and jnp.shape(old[k]) == jnp.shape(m):
                flat[k] = old[k]
        return PruningState(_unflat(flat))

    return jax.tree.map(replace, new_state, is_leaf=is_ps)


# ----------------------------------------------------------------------------- config


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def validate_config(p: Any, fail: Callable[[str, str], None]) -> None:
    """Checks `config.prune`; `fail(key, message)` raises (ftjax.config's ConfigError)."""
    for key in ("sparsity", "initial_sparsity", "begin", "end"):
        if not _number(p[key]):
            fail(f"prune.{key}", f"is {p[key]!r}; it must be a number")
    if not 0 <= p.sparsity < 1:
        fail("prune.sparsity", f"is {p.sparsity}; a fraction in [0, 1) (0: no pruning)")
    if not 0 <= p.initial_sparsity <= max(p.sparsity, 0.0):
        fail(
            "prune.initial_sparsity",
            f"is {p.initial_sparsity}; it must be in [0, prune.sparsity={p.sparsity}]",
        )
    if p.scope not in SCOPES:
        fail("prune.scope", f"is {p.scope!r}; use one of {list(SCOPES)}")
    n_m = tuple(p.n_m)
    if n_m and not (
        len(n_m) == 2
        and all(isinstance(x, int) and not isinstance(x, bool) for x in n_m)
        and 0 < n_m[0] < n_m[1]
    ):
        fail("prune.n_m", f"is {n_m!r}; give (N, M) with 0 < N < M, e.g. (2, 4), or () for none")
    if n_m and (p.sparsity or p.initial_sparsity):
        fail("prune.n_m", f"is {n_m} with prune.sparsity set; N:M fixes the sparsity at 1 - N/M")
    if p.pattern:
        try:
            re.compile(p.pattern)
        except re.error as e:
            fail("prune.pattern", f"is {p.pattern!r}, not a valid regex ({e})")
    if not 0 <= p.begin <= p.end <= 1:
        fail("prune.begin", f"and prune.end are {p.begin}, {p.end}; need 0 <= begin <= end <= 1")
    if (
        isinstance(p.update_every, bool)
        or not isinstance(p.update_every, int)
        or p.update_every < 1
    ):
        fail("prune.update_every", f"is {p.update_every!r}; a whole number of steps >= 1")


def from_config(p: Any, total_steps: int) -> PruneSpec | None:
    """The PruneSpec of `config.prune` for a run of `total_steps` train steps; None when off."""
    n_m = tuple(p.n_m) or None
    if not (p.sparsity > 0 or n_m):
        return None
    return PruneSpec(
        sparsity=float(p.sparsity),
        initial_sparsity=float(p.initial_sparsity),
        scope=p.scope,
        n_m=n_m,
        pattern=p.pattern or DEFAULT_PATTERN,
        begin_step=round(p.begin * total_steps),
        end_step=round(p.end * total_steps),
        update_every=int(p.update_every),
    )
