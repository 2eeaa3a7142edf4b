"""Orbax checkpoints of a run: the train state, where the run is, and its best params.

Two managers under the workdir:
  checkpoints/  the resumable state (params, optimizer state, model state, step, RNG) plus a
                JSON `meta` item (phase index, data-iterator state, whatever the loop needs);
                the last few are kept so a corrupt latest one falls back to the one before.
  best/         params and model state of the best validation step, with its metric.

The optimizer state's structure depends on the phase (frozen groups hold no state), so restoring
reads `meta` first and asks the caller for the matching abstract state. Restoring into a
different structure is an error naming the paths that differ, never silent `None` leaves.

The workdir is a local folder or a bucket path (`gs://...`), through `etils.epath`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

__all__ = ["CheckpointError", "Checkpoints", "committed_steps", "structure_diff"]

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used: the message says which and why."""


def _key(k: Any) -> str:
    # Orbax metadata is dicts and lists all the way down, while the run's state has dataclass and
    # namedtuple nodes (`.params`, `.count`): compare every path in the `['params'][0]` form.
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return f"[{getattr(k, attr)!r}]"
    return str(k)


def _tree_paths(tree: Any) -> dict[str, tuple]:
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return {"".join(_key(k) for k in p): tuple(getattr(x, "shape", ())) for p, x in leaves}


def structure_diff(saved: Any, target: Any, limit: int = 20) -> list[str]:
    """Human-readable differences between two pytrees' paths and leaf shapes."""
    a, b = _tree_paths(saved), _tree_paths(target)
    diff = [f"only in checkpoint: {p}" for p in sorted(a.keys() - b.keys())]
    diff += [f"only in the run: {p}" for p in sorted(b.keys() - a.keys())]
    diff += [
        f"shape {p}: checkpoint {a[p]} vs run {b[p]}"
        for p in sorted(a.keys() & b.keys())
        if a[p] != b[p]
    ]
    return diff[:limit] + ([f"... and {len(diff) - limit} more"] if len(diff) > limit else [])


def committed_steps(workdir: str | os.PathLike) -> list[int]:
    """The resumable steps complete on disk in workdir/checkpoints, read from the folder (for
    messages after a failed save, when a manager's own list may name the step that failed)."""
    try:  # orbax writes a step under a temporary name and renames it once complete
        folder = epath.Path(workdir) / "checkpoints"
        return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())
    except Exception:  # noqa: BLE001 - best effort: this only feeds a message
        return []


def _handlers() -> dict[str, ocp.CheckpointHandler]:
    return {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}


class Checkpoints:
    """Resumable checkpoints and the best checkpoint of one workdir."""

    def __init__(self, workdir: str | os.PathLike, *, keep: int = 2, read_only: bool = False):
        workdir = epath.Path(workdir)
        if "://" not in str(workdir):  # absolute() would turn gs://b into ./gs:/b
            workdir = workdir.absolute()
        create = not read_only  # readers (inference, export) create no folders
        opts = ocp.CheckpointManagerOptions(max_to_keep=max(keep, 2), create=create)
        self._latest = ocp.CheckpointManager(
            workdir / "checkpoints", options=opts, item_handlers=_handlers()
        )
        one = ocp.CheckpointManagerOptions(max_to_keep=1, create=create)
        self._best = ocp.CheckpointManager(workdir / "best", options=one, item_handlers=_handlers())
        # The params after the last step, for inference and export (`ftjax.inference`).
        self._final = ocp.CheckpointManager(
            workdir / "final", options=one, item_handlers=_handlers()
        )

    def steps(self) -> list[int]:
        return sorted(self._latest.all_steps())

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """Saves (asynchronously) the train state and its JSON-able meta at `step`."""
        if step in self._latest.all_steps():
            return
        # The meta names the best step, so that best checkpoint must be on disk before this one
        # can be: two async managers commit in either order, and a kill between the two commits
        # would leave a resumable run whose best checkpoint never landed.
        self._best.wait_until_finished()
        self._latest.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
        )

    def restore_latest(
        self, abstract_state_for: Callable[[dict[str, Any]], Any]
    ) -> tuple[Any, dict[str, Any]] | None:
        """The newest restorable (state, meta), falling back past corrupt ones; None if there are none.

        `abstract_state_for(meta)` returns the `jax.ShapeDtypeStruct` tree (with shardings) the
        state must have at that meta's phase.
        """
        errors = []
        for step in reversed(self.steps()):
            try:
                meta = self._latest.restore(
                    step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
                )["meta"]
                target = abstract_state_for(meta)
            except Exception as e:  # noqa: BLE001 - any unreadable step is skipped, and said so
                errors.append(f"step {step}: {type(e).__name__}: {e}")
                log.warning(
                    "checkpoint at step %d is unreadable (%s); trying the previous one", step, e
                )
                continue
            state = self._restore_state(self._latest, step, target)
            if state is None:
                errors.append(f"step {step}: state unreadable")
                log.warning(
                    "checkpoint state at step %d is unreadable; trying the previous one", step
                )
                continue
            self._drop_newer(step)
            return state, meta
        if errors:
            raise CheckpointError(
                "no checkpoint in "
                f"{self._latest.directory} could be restored:\n  "
                + "\n  ".join(errors)
                + "\nMove that folder away to start the run afresh."
            )
        return None

    def _drop_newer(self, step: int) -> None:
        """Deletes the unreadable steps after `step`, so the resumed run can save those steps anew."""
        for bad in [s for s in self.steps() if s > step]:
            log.warning("deleting unreadable checkpoint %s/%d", self._latest.directory, bad)
            self._latest.delete(bad)

    def _restore_state(self, manager: ocp.CheckpointManager, step: int, target: Any) -> Any | None:
        try:
            saved = manager.item_metadata(step)["state"]
        except Exception:  # noqa: BLE001
            return None
        if saved is None:
            return None
        diff = structure_diff(saved, target)
        if diff:
            raise CheckpointError(
                f"checkpoint {manager.directory}/{step} does not fit this run's state:\n  "
                + "\n  ".join(diff)
                + "\nThe run's model, groups or plan differ from the ones that wrote it; use a new --workdir."
            )
        try:
            return manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
            )["state"]
        except Exception as e:  # noqa: BLE001 - truncated or corrupt array files
            log.warning("restoring step %d failed: %s", step, e)
            return None

    def save_best(self, step: int, tree: Any, metrics: dict[str, Any]) -> None:
        # max_to_keep=1 drops the previous best only once this one is written.
        if step not in self._best.all_steps():
            self._best.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(metrics)
                ),
            )

    def best(self) -> tuple[int, dict[str, Any]] | None:
        """(step, metrics) of the best checkpoint, or None (best/ is empty or was deleted)."""
        self._best.wait_until_finished()
        self._best.reload()  # best/ may have been deleted since the manager listed it
        steps = self._best.all_steps()
        if not steps:
            return None
        step = max(steps)
        return step, self._best.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))[
            "meta"
        ]

    def restore_best(self, target: Any) -> Any:
        found = self.best()
        if found is None:
            raise CheckpointError(
                f"no best checkpoint in {self._best.directory} (was it deleted?); rerunning the "
                "run's command re-validates its final checkpoint and saves it there"
            )
        state = self._restore_state(self._best, found[0], target)
        if state is None:
            raise CheckpointError(
                f"best checkpoint {self._best.directory}/{found[0]} is unreadable"
            )
        return state

    def save_final(self, step: int, tree: Any) -> None:
        """{'params', 'model_state'} after the last training step."""
        if step not in self._final.all_steps():
            self._final.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave({"step": step})
                ),
            )

    def final(self) -> tuple[int, dict[str, Any]] | None:
        """(step, meta) of the final checkpoint, or None (the run has not finished)."""
        self._final.wait_until_finished()
        self._final.reload()
        steps = self._final.all_steps()
        return (max(steps), {"step": max(steps)}) if steps else None

    def restore_final(self, target: Any) -> Any:
        found = self.final()
        if found is None:
            raise CheckpointError(f"no final checkpoint in {self._final.directory}")
        state = self._restore_state(self._final, found[0], target)
        if state is None:
            raise CheckpointError(
                f"final checkpoint {self._final.directory}/{found[0]} is unreadable"
            )
        return state

    def wait(self) -> None:
        self._latest.wait_until_finished()
        self._best.wait_until_finished()
        self._final.wait_until_finished()

    def close(self) -> None:
        """Closes every manager (each waits for its writes), even when an earlier one's failed."""
        errors = []
        for manager in (self._latest, self._best, self._final):
            try:
                manager.close()
            except Exception as e:  # noqa: BLE001 - re-raised below, after the other closed
                errors.append(e)
        if errors:
            raise errors[0]
