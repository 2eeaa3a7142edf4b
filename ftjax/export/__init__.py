"""Export a finished run's model: for PyTorch/transformers, as a PEFT adapter, or as Flax params.

    python -m ftjax.export --workdir=runs/minilm_rt --out=exports/minilm_rt --format=hf
    python -m ftjax.export --workdir=runs/minilm_rt --out=exports/minilm_rt_flax --format=flax \\
        --checkpoint=final

or from Python, `export(workdir, out, format="hf")`, which returns the printed `Summary`.

  hf    a folder transformers' Auto classes and `pipeline` load in PyTorch (`hf.py`);
        EfficientNet-Lite and MobileNetV2, which transformers lacks, in the state-dict layout
        of efficientnet-lite-pytorch (`lite.py`) and torchvision (`torchvision_format.py`). A
        LoRA run's adapters are merged into the weights.
  peft  a LoRA run's adapters (and the modules it trained whole) as a peft adapter folder for
        `peft.PeftModel.from_pretrained`; `load_peft_adapter` reads such folders, peft's own
        too, back into ftjax (`peft_format.py`)
  flax  the params as one safetensors file with the run's inference record, loaded back by
        `load_flax_export` (`flax_format.py`); LoRA adapters stay separate params

A quantised run (`ftjax.compress.quantize`) keeps its int8 kernels in `flax`; `hf` writes them
dequantised to float32 (transformers has no int8 Dense), with a note that it is not smaller.

The run is read with `ftjax.inference.load_run` (`best/` or `final/`) and must have finished
(written results.json). The out folder must be new or empty, unless `overwrite`; it is written
aside and moved into place complete.

Not here: the inference record (`ftjax.inference`), prediction (`ftjax.predict`).
"""

from __future__ import annotations

from pathlib import Path

from ftjax import inference
from ftjax.export.common import ExportError, Summary, check_out, staged_folder
from ftjax.export.flax_format import export_flax, load_flax_export
from ftjax.export.hf import export_hf
from ftjax.export.lite import export_lite
from ftjax.export.peft_format import check_lora, export_peft, load_peft_adapter
from ftjax.export.torchvision_format import export_torchvision
from ftjax.inference import Run
from ftjax.tasks import Task

__all__ = [
    "FORMATS",
    "ExportError",
    "Summary",
    "export",
    "export_run",
    "export_hf",
    "export_lite",
    "export_torchvision",
    "export_flax",
    "load_flax_export",
    "export_peft",
    "load_peft_adapter",
]

FORMATS = ("hf", "flax", "peft")
# --format=hf of the architectures transformers has no class for: their own packages' layouts.
_NOT_TRANSFORMERS = {"efficientnet_lite": export_lite, "mobilenet_v2": export_torchvision}


def export_run(run: Run, out: str | Path, format: str = "hf", overwrite: bool = False) -> Summary:
    """Writes `run` (as `load_run` returns it) to the folder `out` in `format`."""
    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}; use one of {list(FORMATS)}")
    out = Path(out).absolute()
    with staged_folder(out, overwrite) as stage:
        if format == "flax":
            return export_flax(run, stage, out)
        if format == "peft":
            return export_peft(run, stage, out)
        return _NOT_TRANSFORMERS.get(run.arch, export_hf)(run, stage, out)


def export(
    workdir: str | Path,
    out: str | Path,
    format: str = "hf",
    checkpoint: str = "best",
    overwrite: bool = False,
    task: Task | None = None,
) -> Summary:
    """Exports the `checkpoint` ("best" or "final") of the finished run in `workdir` to `out`;
    `task` replaces a user's own task, which the run's record cannot rebuild (as in `load_run`;
    the hf format exports ftjax's tasks only)."""
    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}; use one of {list(FORMATS)}")
    check_out(out, overwrite)  # before the (slow) load
    try:
        if format == "peft":  # before the (slow) load too
            check_lora(inference.finished_record(workdir), workdir)
        run = inference.load_run(workdir, checkpoint, task, finished=True)
    except ValueError as e:  # InferenceError, or a user's task that the record cannot rebuild
        raise ExportError(str(e)) from None
    return export_run(run, out, format, overwrite)
