"""Phase plans: which groups train when, and at what learning rate.

A `Plan` is a sequence of `Phase`s run one after another. A phase has a duration (exactly one of
`steps`, `epochs`, `examples` or `fraction` of the run; the last phase may leave all unset to take
the rest of the run), the groups it trains, a base learning rate with a `Schedule` (constant,
linear warmup then cosine or linear decay, or ULMFiT's slanted triangular), per-group multipliers
or a layer-wise decay factor over the groups' depth order, and whether optimizer moments of groups
that stay trainable are reset at its start (kept by default).

`resolve_plan` turns a plan into `ResolvedPlan`: every duration in steps, every group's peak LR,
all checked against the groups and the run length; each mistake is one `PlanError` naming the
phase, the offending keys and the fix. `preset` expands named recipes (linear probe, full
fine-tune, LP-FT, ULMFiT gradual unfreezing, chain-thaw, layer-wise LR decay) into plans.
All values are plain Python so an ml_collections config maps onto them field by field.

Not here: which parameter is in which group (`ftjax.param_groups`), the optax transform (`ftjax.optim`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence

import jax.numpy as jnp

from ftjax.tables import format_table

__all__ = [
    "SCHEDULES",
    "PlanError",
    "Schedule",
    "Phase",
    "Plan",
    "ResolvedPhase",
    "ResolvedPlan",
    "make_schedule",
    "resolve_plan",
    "linear_probe",
    "full_finetune",
    "lp_ft",
    "gradual_unfreezing",
    "chain_thaw",
    "layerwise_lr_decay",
    "PRESETS",
    "preset",
]

SCHEDULES = ("constant", "warmup_cosine", "warmup_linear", "stlr")


class PlanError(ValueError):
    """A phase plan is inconsistent with the groups or the run."""


@dataclasses.dataclass(frozen=True)
class Schedule:
    """The LR shape within a phase, peaking at the phase's (per-group) LR.

    kind: 'constant' | 'warmup_cosine' | 'warmup_linear' (linear warmup over `warmup_steps` or
      `warmup_fraction` of the phase, then cosine / linear decay to `end_factor` x peak) |
      'stlr' (ULMFiT slanted triangular: rise for `cut_frac` of the phase, fall after; the lowest
      LR is peak / `ratio`).
    """

    kind: str = "constant"
    warmup_steps: int | None = None
    warmup_fraction: float = 0.0
    end_factor: float = 0.0
    cut_frac: float = 0.1
    ratio: float = 32.0


@dataclasses.dataclass(frozen=True)
class Phase:
    """One phase of a plan. Set at most one of steps/epochs/examples/fraction (see module doc)."""

    name: str
    trainable: tuple[str, ...]
    lr: float
    steps: int | None = None
    epochs: float | None = None
    examples: int | None = None
    fraction: float | None = None
    schedule: Schedule = Schedule()
    lr_mults: Mapping[str, float] = dataclasses.field(default_factory=dict)
    layerwise_decay: float | None = None
    reset_moments: bool = False

    def duration_fields(self) -> dict[str, float]:
        units = {
            "steps": self.steps,
            "epochs": self.epochs,
            "examples": self.examples,
            "fraction": self.fraction,
        }
        return {k: v for k, v in units.items() if v is not None}


@dataclasses.dataclass(frozen=True)
class Plan:
    phases: tuple[Phase, ...]


@dataclasses.dataclass(frozen=True)
class ResolvedPhase:
    """A phase with its step range [start, end) and every trainable group's peak LR."""

    index: int
    name: str
    start: int
    end: int
    trainable: tuple[str, ...]
    group_lrs: Mapping[str, float]
    schedule: Schedule
    reset_moments: bool

    @property
    def length(self) -> int:
        return self.end - self.start

    def lr_fn(self, group: str) -> Callable[[jnp.ndarray], jnp.ndarray]:
        """LR of `group` as a traced function of the phase-local step (0 at the phase start)."""
        return make_schedule(self.schedule, self.group_lrs[group], self.length)


@dataclasses.dataclass(frozen=True)
class ResolvedPlan:
    phases: tuple[ResolvedPhase, ...]
    group_names: tuple[str, ...]

    @property
    def total_steps(self) -> int:
        return self.phases[-1].end

    def phase_at(self, step: int) -> ResolvedPhase:
        """The phase that step `step` (0-based) belongs to."""
        for p in self.phases:
            if p.start <= step < p.end:
                return p
        raise PlanError(f"step {step} is outside the plan's {self.total_steps} steps")

    def table(self) -> str:
        """The plan as a table: steps, trained groups, LRs, schedule, moments."""
        rows = [_phase_row(p, self.group_names) for p in self.phases]
        return format_table(("#", "phase", "steps", "trainable", "lr", "schedule", "moments"), rows)


def _phase_row(p: ResolvedPhase, names: tuple[str, ...]) -> tuple[str, ...]:
    lrs = [p.group_lrs[g] for g in p.trainable]
    lr = f"{lrs[0]:.3g}" if min(lrs) == max(lrs) else f"{min(lrs):.3g}..{max(lrs):.3g}"
    trainable = "all" if set(p.trainable) == set(names) else ",".join(p.trainable)
    return (
        str(p.index),
        p.name,
        f"{p.start}-{p.end} ({p.length})",
        trainable,
        lr,
        p.schedule.kind,
        "reset" if p.reset_moments else "keep",
    )


# --------------------------------------------------------------------------- schedules


def make_schedule(s: Schedule, peak: float, length: int) -> Callable[[jnp.ndarray], jnp.ndarray]:
    """A traced LR function of the phase-local step for a phase of `length` steps."""
    if s.kind == "constant":
        return lambda t: jnp.full((), peak, jnp.float32)
    if s.kind == "stlr":
        cut = max(1, math.floor(length * s.cut_frac))

        def stlr(t):
            t = jnp.asarray(t, jnp.float32)
            p = jnp.where(
                t < cut, t / cut, 1.0 - (t - cut) / max(1.0, cut * (1.0 / s.cut_frac - 1.0))
            )
            return peak * (1.0 + jnp.clip(p, 0.0, 1.0) * (s.ratio - 1.0)) / s.ratio

        return stlr
    warmup = (
        s.warmup_steps if s.warmup_steps is not None else math.floor(length * s.warmup_fraction)
    )
    decay = max(1, length - warmup)
    end = peak * s.end_factor

    def warmup_decay(t):
        t = jnp.asarray(t, jnp.float32)
        up = peak * (t + 1.0) / max(1, warmup)
        frac = jnp.clip((t - warmup) / decay, 0.0, 1.0)
        if s.kind == "warmup_cosine":
            down = end + (peak - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
        else:
            down = peak + (end - peak) * frac
        return jnp.where(t < warmup, up, down)

    return warmup_decay


# --------------------------------------------------------------------------- resolving


def resolve_plan(
    plan: Plan,
    group_names: Sequence[str],
    *,
    total_steps: int | None = None,
    steps_per_epoch: int | None = None,
    batch_size: int | None = None,
) -> ResolvedPlan:
    """Check `plan` against the groups and the run, and put every phase on the step axis.

    `total_steps` is the run length; when None it is the sum of the phases' durations (then no
    phase may use `fraction` or leave its duration open).
    """
    names = tuple(group_names)
    if not plan.phases:
        raise PlanError("the plan has no phases; give at least one Phase (or use a preset)")
    _check_unique_phase_names(plan)
    lengths = [
        _phase_length(p, i, len(plan.phases), total_steps, steps_per_epoch, batch_size)
        for i, p in enumerate(plan.phases)
    ]
    lengths = _fill_open_phase(plan, lengths, total_steps)
    resolved, start = [], 0
    for i, (phase, n) in enumerate(zip(plan.phases, lengths)):
        _check_phase(phase, names)
        _check_schedule(phase, n)
        lrs = _group_lrs(phase, names)
        resolved.append(
            ResolvedPhase(
                i,
                phase.name,
                start,
                start + n,
                _in_depth_order(phase.trainable, names),
                lrs,
                phase.schedule,
                phase.reset_moments,
            )
        )
        start += n
    return ResolvedPlan(tuple(resolved), names)


def _check_unique_phase_names(plan: Plan) -> None:
    names = [p.name for p in plan.phases]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise PlanError(
            f"phase name(s) {dupes} are used more than once; give every phase a unique name"
        )


def _phase_length(
    p: Phase, i: int, n_phases: int, total: int | None, spe: int | None, batch: int | None
) -> int | None:
    units = p.duration_fields()
    if len(units) > 1:
        raise PlanError(
            f"phase {p.name!r} sets several durations {units}; set exactly one of steps/epochs/examples/fraction"
        )
    if not units:
        if i != n_phases - 1:
            raise PlanError(
                f"phase {p.name!r} has no duration but is not the last phase; give it steps, epochs, "
                "examples or fraction (only the last phase may take the rest of the run)"
            )
        if total is None:
            raise PlanError(
                f"phase {p.name!r} takes the rest of the run, but total_steps is not given; pass total_steps"
            )
        return None
    ((unit, value),) = units.items()
    if not value > 0:
        raise PlanError(
            f"phase {p.name!r}: {unit}={value} must be positive; give the phase a positive duration"
        )
    if unit == "steps":
        steps = value
    elif unit == "epochs":
        if not spe:
            raise PlanError(
                f"phase {p.name!r} is given in epochs but steps_per_epoch is unknown; pass steps_per_epoch"
            )
        steps = round(value * spe)
    elif unit == "examples":
        if not batch:
            raise PlanError(
                f"phase {p.name!r} is given in examples but batch_size is unknown; pass batch_size"
            )
        steps = math.ceil(value / batch)
    else:
        if total is None:
            raise PlanError(
                f"phase {p.name!r} is a fraction of the run but total_steps is not given; pass total_steps"
            )
        if value > 1:
            raise PlanError(
                f"phase {p.name!r}: fraction={value} exceeds 1; a fraction is of the whole run, in (0, 1]"
            )
        steps = round(value * total)
    if int(steps) != steps or steps < 1:
        raise PlanError(
            f"phase {p.name!r}: {unit}={value} resolves to {steps} steps; give it a duration of a whole number >= 1 of steps"
        )
    return int(steps)


def _fill_open_phase(plan: Plan, lengths: list[int | None], total: int | None) -> list[int]:
    fixed = sum(n for n in lengths if n is not None)
    if total is None:
        return lengths  # every length is set (checked in _phase_length)
    if fixed > total:
        detail = ", ".join(f"{p.name}={n}" for p, n in zip(plan.phases, lengths) if n is not None)
        raise PlanError(
            f"the plan is longer than the run: its phases take {fixed} steps ({detail}) but the run has "
            f"{total}; shorten phases or raise total_steps"
        )
    if lengths[-1] is None:
        if fixed == total:
            raise PlanError(
                f"the last phase {plan.phases[-1].name!r} takes the rest of the run, but nothing is left "
                f"({fixed} of {total} steps used); shorten the earlier phases"
            )
        return [*lengths[:-1], total - fixed]
    if fixed < total:
        raise PlanError(
            f"the plan covers {fixed} of the run's {total} steps; lengthen a phase, or leave the last "
            "phase's duration unset so it takes the rest"
        )
    return lengths


def _check_phase(p: Phase, names: tuple[str, ...]) -> None:
    if not p.trainable:
        raise PlanError(
            f"phase {p.name!r} trains no group; name at least one group in trainable (groups: {list(names)})"
        )
    if isinstance(p.trainable, str):
        raise PlanError(
            f"phase {p.name!r}: trainable={p.trainable!r} is a string; give a tuple of group names"
        )
    for what, keys in (("trainable", p.trainable), ("lr_mults", tuple(p.lr_mults))):
        unknown = [g for g in keys if g not in names]
        if unknown:
            raise PlanError(
                f"phase {p.name!r}: unknown group(s) {unknown} in {what}; use names from the groups {list(names)}"
            )
    dupes = sorted({g for g in p.trainable if p.trainable.count(g) > 1})
    if dupes:
        raise PlanError(
            f"phase {p.name!r} lists group(s) {dupes} more than once in trainable; list each once"
        )
    if not (math.isfinite(p.lr) and p.lr > 0):
        raise PlanError(
            f"phase {p.name!r}: lr={p.lr} must be a positive finite number; a zero learning rate is not a "
            "way to freeze: leave the group out of trainable instead"
        )
    if p.lr_mults and p.layerwise_decay is not None:
        raise PlanError(
            f"phase {p.name!r} sets both lr_mults and layerwise_decay; use one way to scale group LRs"
        )
    if p.layerwise_decay is not None and not 0 < p.layerwise_decay <= 1:
        raise PlanError(
            f"phase {p.name!r}: layerwise_decay={p.layerwise_decay} must be in (0, 1]; use e.g. 0.75, or 1/2.6 as in ULMFiT"
        )
    bad = {
        g: m for g, m in p.lr_mults.items() if g in p.trainable and not (math.isfinite(m) and m > 0)
    }
    if bad:
        raise PlanError(
            f"phase {p.name!r}: lr_mults {bad} give trainable group(s) a zero, negative or non-finite LR; "
            "use a positive multiplier, or leave the group out of trainable to freeze it"
        )


def _check_schedule(p: Phase, length: int) -> None:
    s = p.schedule
    if s.kind not in SCHEDULES:
        raise PlanError(
            f"phase {p.name!r}: unknown schedule kind {s.kind!r}; use one of {list(SCHEDULES)}"
        )
    if s.kind == "stlr" and not (0 < s.cut_frac < 1 and s.ratio >= 1):
        raise PlanError(
            f"phase {p.name!r}: stlr needs 0 < cut_frac < 1 and ratio >= 1, got cut_frac={s.cut_frac}, ratio={s.ratio}; use e.g. cut_frac=0.1, ratio=32"
        )
    if s.kind.startswith("warmup"):
        if s.warmup_steps is not None and s.warmup_fraction:
            raise PlanError(f"phase {p.name!r}: set warmup_steps or warmup_fraction, not both")
        warm = s.warmup_steps if s.warmup_steps is not None else length * s.warmup_fraction
        if not 0 <= warm < length:
            raise PlanError(
                f"phase {p.name!r}: warmup of {warm} steps does not fit in the phase's {length} steps; shorten the warmup"
            )
        if not 0 <= s.end_factor <= 1:
            raise PlanError(
                f"phase {p.name!r}: end_factor={s.end_factor} must be in [0, 1] (final LR / peak LR)"
            )


def _group_lrs(p: Phase, names: tuple[str, ...]) -> dict[str, float]:
    if p.layerwise_decay is not None:
        depth = {g: len(names) - 1 - i for i, g in enumerate(names)}  # head (last group) is depth 0
        return {g: p.lr * p.layerwise_decay ** depth[g] for g in p.trainable}
    return {g: p.lr * p.lr_mults.get(g, 1.0) for g in p.trainable}


def _in_depth_order(groups: Sequence[str], names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(g for g in names if g in groups)


# --------------------------------------------------------------------------- presets


def linear_probe(
    names: Sequence[str], *, lr: float, schedule: Schedule = Schedule("constant")
) -> Plan:
    """Train the head (the last group) only, for the whole run."""
    return Plan((Phase("probe", (names[-1],), lr, schedule=schedule),))


def full_finetune(names: Sequence[str], *, lr: float, warmup_fraction: float = 0.1) -> Plan:
    """Train every group at one LR, warmup then cosine decay."""
    return Plan(
        (
            Phase(
                "full",
                tuple(names),
                lr,
                schedule=Schedule("warmup_cosine", warmup_fraction=warmup_fraction),
            ),
        )
    )


def lp_ft(
    names: Sequence[str], *, lr: float, head_lr: float | None = None, probe_fraction: float = 0.5
) -> Plan:
    """LP-FT (Kumar et al. 2022): a linear probe, then full fine-tuning from the probed head."""
    return Plan(
        (
            Phase("probe", (names[-1],), head_lr or 10 * lr, fraction=probe_fraction),
            Phase(
                "finetune",
                tuple(names),
                lr,
                schedule=Schedule("warmup_cosine", warmup_fraction=0.1),
            ),
        )
    )


def gradual_unfreezing(
    names: Sequence[str],
    *,
    lr: float,
    factor: float = 2.6,
    cut_frac: float = 0.1,
    ratio: float = 32.0,
) -> Plan:
    """ULMFiT: one more group per phase from the top, LRs divided by `factor` per group, STLR."""
    if factor < 1:
        raise PlanError(
            f"gradual_unfreezing: factor={factor} must be >= 1 (each lower group's LR is divided by it)"
        )
    n = len(names)
    stlr = Schedule("stlr", cut_frac=cut_frac, ratio=ratio)
    phases = [
        Phase(
            f"unfreeze_{k}",
            tuple(names[n - k :]),
            lr,
            fraction=1.0 / n if k < n else None,
            schedule=stlr,
            layerwise_decay=1.0 / factor,
        )
        for k in range(1, n + 1)
    ]
    return Plan(tuple(phases))


def chain_thaw(names: Sequence[str], *, lr: float, head_lr: float | None = None) -> Plan:
    """Chain-thaw (Felbo et al. 2017): the head, then each group alone from the input side, then all."""
    n = len(names)
    frac = 1.0 / (n + 1)
    phases = [Phase("head", (names[-1],), head_lr or lr, fraction=frac)]
    phases += [Phase(f"thaw_{g}", (g,), lr, fraction=frac) for g in names[:-1]]
    phases += [Phase("all", tuple(names), lr)]
    return Plan(tuple(phases))


def layerwise_lr_decay(
    names: Sequence[str], *, lr: float, decay: float = 0.75, warmup_fraction: float = 0.1
) -> Plan:
    """Train all groups, each group's LR `decay` x that of the group above it (head at `lr`)."""
    sched = Schedule("warmup_cosine", warmup_fraction=warmup_fraction)
    return Plan((Phase("llrd", tuple(names), lr, schedule=sched, layerwise_decay=decay),))


PRESETS: dict[str, Callable[..., Plan]] = {
    "linear_probe": linear_probe,
    "full_finetune": full_finetune,
    "lp_ft": lp_ft,
    "gradual_unfreezing": gradual_unfreezing,
    "chain_thaw": chain_thaw,
    "layerwise_lr_decay": layerwise_lr_decay,
}


def preset(name: str, group_names: Sequence[str], **kwargs) -> Plan:
    """The named recipe expanded over `group_names` (depth order, head last) into a Plan."""
    if name not in PRESETS:
        raise PlanError(f"unknown preset {name!r}; use one of {sorted(PRESETS)}")
    if len(group_names) < 2 and name not in ("linear_probe", "full_finetune"):
        raise PlanError(
            f"preset {name!r} needs at least two groups (a body and the head), got {list(group_names)}"
        )
    return PRESETS[name](tuple(group_names), **kwargs)
