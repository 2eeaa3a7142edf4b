"""Each sweep run's phase plan, resolved without training, and its picture.

`Planner.plan(config)` returns the `ResolvedPlan` that `ftjax.train.build` would make for
`config`, through the same functions (`ftjax.train.groups_for`, `ftjax.train.plan_for`) over the
model's real parameter tree and the capped training split's steps per epoch. The model and data are loaded once per distinct
(model, data, groups, batch size), so resolving 30 runs of a sweep costs one model load.

`draw_plan` plots every group's learning rate over the run (zero while the group is frozen),
one panel per group, with the phase boundaries marked: a schedule can be checked by eye before
hours are spent on it.

Not here: running (experiments/sweep.py), results (experiments/sweep_report.py).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import ml_collections
import numpy as np

from ftjax import config as cfg_lib
from ftjax import param_groups
from ftjax.phases import ResolvedPlan

__all__ = ["ModelFacts", "Planner", "lr_table", "describe", "draw_plan"]


@dataclasses.dataclass(frozen=True)
class ModelFacts:
    """What plan resolution needs from the model and data: parameter paths, groups, epoch length."""

    param_paths: tuple[str, ...]
    groups: param_groups.ParamGroups
    steps_per_epoch: int


class Planner:
    """Resolves runs' plans, loading each distinct model/data combination once."""

    def __init__(self) -> None:
        self._loaded: dict[str, tuple[dict, tuple[tuple[str, str], ...], object]] = {}

    def facts(self, config: ml_collections.ConfigDict) -> ModelFacts:
        from ftjax import train  # jax and orbax load only once a plan is resolved

        params, natural_groups, train_split = self._load(config)
        groups = train.groups_for(config, params, natural_groups)
        paths = tuple("/".join(k) for k in _flat_keys(params))
        return ModelFacts(paths, groups, train_split.steps_per_epoch(config.train.batch_size))

    def _load(self, config: ml_collections.ConfigDict):
        """(param shapes, the model's natural groups, the train Split), cached per model and data."""
        key = json.dumps(
            [
                config.model.to_dict() | {"dont_load": None},
                config.data.to_dict(),
                config.peft.lora.to_dict(),
            ],
            sort_keys=True,
            default=str,
        )
        if key not in self._loaded:
            import jax

            from ftjax.data import build_splits, load_records
            from ftjax.pretrained.load import load_pretrained

            cfg_lib.validate(config)
            data_cfg = cfg_lib.data_config(config)
            records = load_records(data_cfg)
            m = config.model
            pre = load_pretrained(
                m.source,
                len(records.class_names),
                arch=m.arch,
                dtype=m.dtype,
                pooling=m.pooling,
                dropout=m.dropout,
                lora=cfg_lib.lora_spec(config.peft),
                rng=jax.random.PRNGKey(0),
            )
            splits = build_splits(data_cfg, pre.preprocessing, records=records)
            shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), pre.params)
            self._loaded[key] = (shapes, tuple(pre.model.layer_groups), splits["train"])
        return self._loaded[key]

    def plan(self, config: ml_collections.ConfigDict) -> ResolvedPlan:
        """The run's resolved plan, exactly as ftjax.train.build resolves it."""
        from ftjax import train

        facts = self.facts(config)
        return train.plan_for(config, facts.groups, facts.steps_per_epoch)

    def fitted_groups(self, config: ml_collections.ConfigDict) -> tuple[tuple[str, str], ...]:
        """config.groups without the patterns that match no parameter of the config's model.

        Lets a config written for MiniLM-L6 (layer_0..layer_5) run on a shallower BERT.
        """
        if not config.groups:
            return ()
        params, _, _ = self._load(config)
        paths = ["/".join(k) for k in _flat_keys(params)]
        return tuple(
            (n, rx)
            for n, rx in (tuple(g) for g in config.groups)
            if any(re.fullmatch(rx, p) for p in paths)
        )


def _flat_keys(tree: dict, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for k, v in tree.items():
        out += _flat_keys(v, (*prefix, k)) if isinstance(v, dict) else [(*prefix, k)]
    return out


# ----------------------------------------------------------------------------- learning rates


def lr_table(plan: ResolvedPlan) -> dict[str, np.ndarray]:
    """Every group's learning rate at every step of the run (0 where the group is frozen)."""
    lrs = {g: np.zeros(plan.total_steps) for g in plan.group_names}
    for phase in plan.phases:
        local = np.arange(phase.length, dtype=np.float32)
        for g in phase.trainable:
            lrs[g][phase.start : phase.end] = np.broadcast_to(
                np.asarray(phase.lr_fn(g)(local)), local.shape
            )
    return lrs


def describe(plan: ResolvedPlan, batch_size: int) -> str:
    """The plan table with the run length in steps and examples."""
    return (
        f"{plan.total_steps} steps x batch {batch_size} = {plan.total_steps * batch_size} examples, "
        f"{len(plan.phases)} phase(s), groups (depth order): {', '.join(plan.group_names)}\n{plan.table()}"
    )


def draw_plan(plan: ResolvedPlan, title: str, path: Path, batch_size: int) -> Path:
    """A PNG with one panel per group (head on top): its LR over the run, phase boundaries dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lrs = lr_table(plan)
    groups = list(reversed(plan.group_names))  # head first, like a network drawn top-down
    steps = np.arange(plan.total_steps + 1)  # step k's LR holds over [k, k+1)
    fig, axes = plt.subplots(
        len(groups), 1, sharex=True, figsize=(10, 0.9 * len(groups) + 1.6), squeeze=False
    )
    for ax, g in zip(axes[:, 0], groups):
        y = np.append(lrs[g], lrs[g][-1])
        for phase in plan.phases:
            if g not in phase.trainable:
                ax.axvspan(phase.start, phase.end, color="0.88", lw=0)
        ax.fill_between(steps, y, step="post", alpha=0.35, color="tab:blue")
        ax.step(steps, y, where="post", color="tab:blue", lw=1.2)
        ax.set_ylim(0, (y.max() or 1.0) * 1.15)
        ax.set_ylabel(g, rotation=0, ha="right", va="center", fontsize=9)
        ax.set_yticks([])
        peak = y.max()
        ax.text(
            1.005,
            0.5,
            f"peak {peak:.2g}" if peak else "frozen",
            transform=ax.transAxes,
            fontsize=8,
            va="center",
        )
        _mark_phases(ax, plan, label=False)
    _mark_phases(axes[0, 0], plan, label=True)
    axes[-1, 0].set_xlim(0, plan.total_steps)
    axes[-1, 0].set_xlabel(
        f"step (x {batch_size} = training examples; run: {plan.total_steps * batch_size} examples)"
    )
    fig.suptitle(f"{title}: learning rate per group (grey = frozen)", fontsize=11)
    fig.tight_layout(rect=(0, 0, 0.93, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _mark_phases(ax, plan: ResolvedPlan, *, label: bool) -> None:
    for phase in plan.phases[1:]:
        ax.axvline(phase.start, color="k", ls="--", lw=0.8, alpha=0.6)
    if label:
        for phase in plan.phases:
            ax.text(
                (phase.start + phase.end) / 2,
                1.02,
                phase.name,
                transform=ax.get_xaxis_transform(),
                ha="center",
                va="bottom",
                fontsize=7,
                rotation=30 if len(plan.phases) > 4 else 0,
            )
