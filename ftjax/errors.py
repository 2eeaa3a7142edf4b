"""The errors that stop a run, raised by the loop (`ftjax.train`) and the workdir checks
(`ftjax.workdir`); each message says what went wrong and what to do."""

from __future__ import annotations

__all__ = ["TrainingError", "DiskFullError"]


class TrainingError(RuntimeError):
    """The run cannot go on (diverged loss, a workdir of another config); the message says why."""


class DiskFullError(TrainingError):
    """The workdir's disk filled up mid-run; the message names the last complete checkpoint.

    orbax's writer threads have failed by then and print their own tracebacks while the
    interpreter shuts down, so the command line ends the process at once after printing this
    (`ftjax.main`): nothing is left to write.
    """
