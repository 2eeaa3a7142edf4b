"""Where a run's numbers go: DIR/metrics.jsonl and TensorBoard event files (process 0 only).

TensorBoard files are written with tensorboardX, so `tensorboard --logdir DIR` reads them and
TensorFlow is not needed. DIR is a local folder or a bucket path (`gs://...`, through
`etils.epath`); a bucket file cannot be appended to, so there metrics.jsonl is rewritten whole at
each row.

A resumed run starts again from its checkpoint's step, so the rows logged after that step by the
run that was stopped would be logged twice: `MetricWriter(dir, start_step=N)` drops them (and the
'test' rows, which the end of the run writes anew) from metrics.jsonl, rewriting it atomically,
and opens TensorBoard with `purge_step=N + 1`, which hides the stopped run's events after step N.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import jax
from etils import epath

__all__ = ["MetricWriter", "is_remote"]

log = logging.getLogger(__name__)


def is_remote(path: str | os.PathLike) -> bool:
    """A bucket path (gs://, s3://, ...) rather than a local folder."""
    return "://" in str(path)


def _plain(value: Any) -> Any:
    """JSON-able Python scalars from numpy/jax scalars."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _summary_writer_class():
    """tensorboardX's SummaryWriter, imported without torch (it imports torch whenever it is
    installed, seconds of start-up that writing scalars never needs)."""
    if "torch" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None  # type: ignore[assignment]  # makes `import torch` fail fast
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


def _kept_rows(path: epath.Path, start_step: int) -> tuple[list[str], int]:
    """metrics.jsonl's lines up to `start_step` (no 'test' rows, no partial line of a killed
    write) and how many lines were dropped."""
    if not path.exists():
        return [], 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            keep = int(row["step"]) <= start_step and row.get("split") != "test"
        except (ValueError, KeyError, TypeError):
            keep = False
        if keep:
            kept.append(line)
        else:
            dropped += 1
    return kept, dropped


class MetricWriter:
    """Appends `{"step", "split", **metrics}` rows to metrics.jsonl and scalars to TensorBoard.

    `start_step`: the step the run starts from (a resumed checkpoint's, 0 for a fresh run); rows
    after it from an earlier, stopped run are dropped (see the module doc).
    """

    def __init__(self, workdir: str | os.PathLike, *, start_step: int = 0):
        self._enabled = jax.process_index() == 0
        self._jsonl = None
        self._tb = None
        self._lines: list[str] | None = None  # a bucket's metrics.jsonl, rewritten whole
        if not self._enabled:
            return
        SummaryWriter = _summary_writer_class()
        workdir = epath.Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        self.path = workdir / "metrics.jsonl"
        kept, dropped = _kept_rows(self.path, start_step)
        if dropped:
            log.info("metrics.jsonl: dropped %d rows after step %d", dropped, start_step)
        if is_remote(workdir):
            self._lines = kept
            if dropped:
                self.path.write_text("".join(line + "\n" for line in kept))
        else:
            if dropped:  # atomically: a kill now leaves the old file or the new one
                tmp = workdir / f"metrics.jsonl.tmp-{os.getpid()}"
                with open(Path(tmp), "w", encoding="utf-8") as f:
                    f.write("".join(line + "\n" for line in kept))
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(Path(tmp), Path(self.path))
            self._jsonl = open(Path(self.path), "a", encoding="utf-8")
        tb_dir = workdir / "tensorboard"
        resumed = tb_dir.exists() and any(tb_dir.iterdir())
        # A random suffix keeps a resume within the same second (the file name's timestamp) from
        # overwriting the stopped run's event file.
        self._tb = SummaryWriter(
            str(tb_dir),
            purge_step=start_step + 1 if resumed else None,
            filename_suffix=f".{uuid.uuid4().hex[:8]}",
        )

    def write(self, step: int, split: str, metrics: dict[str, Any]) -> None:
        if not self._enabled:
            return
        row = {"step": int(step), "split": split, **{k: _plain(v) for k, v in metrics.items()}}
        line = json.dumps(row)
        if self._lines is not None:
            self._lines.append(line)
            self.path.write_text("".join(x + "\n" for x in self._lines))
        else:
            self._jsonl.write(line + "\n")
            self._jsonl.flush()
        for key, value in row.items():
            if key not in ("step", "split") and isinstance(value, (int, float)):
                self._tb.add_scalar(f"{split}/{key}", value, int(step))

    def close(self) -> None:
        if self._enabled:
            if self._jsonl is not None:
                self._jsonl.close()
            self._tb.close()
