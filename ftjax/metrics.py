"""Where a run's numbers go: DIR/metrics.jsonl and TensorBoard event files (process 0 only).

TensorBoard files are written with tensorboardX, so `tensorboard --logdir DIR` reads them and
TensorFlow is not needed.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import jax


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


class MetricWriter:
    """Appends `{"step", "split", **metrics}` rows to metrics.jsonl and scalars to TensorBoard."""

    def __init__(self, workdir: str | Path):
        self._enabled = jax.process_index() == 0
        self._jsonl = None
        self._tb = None
        if self._enabled:
            SummaryWriter = _summary_writer_class()
            workdir = Path(workdir)
            workdir.mkdir(parents=True, exist_ok=True)
            self._jsonl = open(workdir / "metrics.jsonl", "a", encoding="utf-8")
            self._tb = SummaryWriter(str(workdir / "tensorboard"))

    def write(self, step: int, split: str, metrics: dict[str, Any]) -> None:
        if not self._enabled:
            return
        row = {"step": int(step), "split": split, **{k: _plain(v) for k, v in metrics.items()}}
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        for key, value in row.items():
            if key not in ("step", "split") and isinstance(value, (int, float)):
                self._tb.add_scalar(f"{split}/{key}", value, int(step))

    def close(self) -> None:
        if self._enabled:
            self._jsonl.close()
            self._tb.close()
