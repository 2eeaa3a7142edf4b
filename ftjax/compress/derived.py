"""A compressed model written as an ordinary ftjax workdir, so every command works on it.

    run = inference.load_run("runs/minilm_rt", finished=True)
    smaller = structured.prune_run(run, ffn_keep=0.5)        # any Run -> Run transform
    write_run(run, smaller, "runs/minilm_rt_ffn50", {"structured": {"ffn_keep": 0.5}})
    python -m ftjax.evaluate --workdir=runs/minilm_rt_ffn50 --data.name=rotten_tomatoes

The new workdir holds `inference/` (the derived run's record: the source's, with what the
method changed, e.g. a smaller `checkpoint_config` or a `quantization` entry; the tokenizer),
`best/` and `final/` (both the derived params, at the source's step), the source's config.json
and run.json (evaluate reads its data settings there) and results.json: the source's task keys,
`derived_from` (workdir, checkpoint, step, the method and its settings) and the source's own
metrics as `source_metrics` (a derived run has no `metrics` of its own: evaluate it). `out` must
be new or an empty folder; it is written as a temporary sibling folder and renamed into place,
so a failure leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ftjax import inference
from ftjax.checkpoint import Checkpoints
from ftjax.inference import Run

__all__ = ["DerivedRunError", "check_out", "write_run"]

_COPIED = ("config.json", "run.json")  # workdir files the new run keeps
_RESULT_KEYS = ("task", "best_metric", "higher_is_better", "label_names", "steps")


class DerivedRunError(ValueError):
    """The folder a derived run would be written to cannot take it."""


def check_out(out: str | os.PathLike, source: str | os.PathLike) -> Path:
    """`out` as an absolute path, if it is new or an empty folder (checked before slow work)."""
    out = Path(out).absolute()
    if out.exists() and not out.is_dir():
        raise DerivedRunError(f"out {out} is a file; give a new or empty folder")
    if out.is_dir() and any(out.iterdir()):
        what = "the source run itself" if out == Path(source).absolute() else "not empty"
        raise DerivedRunError(f"out {out} is {what}; give a new or empty folder")
    return out


def _results(source: Run, derived: Run, method: dict[str, Any]) -> dict[str, Any]:
    saved = json.loads((source.workdir / "results.json").read_text())
    return {
        **{k: saved[k] for k in _RESULT_KEYS if k in saved},
        "best_step": derived.step,
        "derived_from": {
            "workdir": str(source.workdir),
            "checkpoint": source.checkpoint,
            "step": source.step,
            **method,
        },
        "source_metrics": saved.get("metrics"),
    }


def _write(stage: Path, source: Run, derived: Run, results: dict[str, Any]) -> None:
    shutil.copytree(source.workdir / inference.RECORD, stage / inference.RECORD)
    (stage / inference.RECORD / "inference.json").write_text(json.dumps(derived.record, indent=2))
    for name in _COPIED:
        if (source.workdir / name).is_file():
            shutil.copy(source.workdir / name, stage / name)
    tree = {"params": derived.params, "model_state": derived.model_state}
    ckpts = Checkpoints(stage, keep=2)
    try:
        ckpts.save_best(
            derived.step, tree, {"step": derived.step, "derived_from": str(source.workdir)}
        )
        ckpts.save_final(derived.step, tree)
    finally:
        ckpts.close()
    (stage / "results.json").write_text(json.dumps(results, indent=2))


def write_run(source: Run, derived: Run, out: str | os.PathLike, method: dict[str, Any]) -> Path:
    """Writes `derived` (a Run made from `source`) as the workdir `out`; `method` (JSON-able)
    says how it was made. Returns `out` as an absolute path."""
    out = check_out(out, source.workdir)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        stage.chmod(0o755)  # mkdtemp's 0o700 would become the run's
        _write(stage, source, derived, _results(source, derived, method))
        check_out(out, source.workdir)  # still new or empty: rename replaces an empty folder only
        stage.rename(out)
    finally:
        if stage.exists():
            shutil.rmtree(stage)
    return out
