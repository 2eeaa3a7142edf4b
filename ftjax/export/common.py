"""What every export format shares: the error, the summary, labels, preprocessing files, the out
folder.

The out folder is written as a sibling temporary folder and moved into place at the end, so a
failed export leaves no half-written folder behind, and `--overwrite` replaces an old export only
once the new one is complete.

Not here: the formats themselves (`hf.py`, `lite.py`, `torchvision_format.py`, `flax_format.py`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from ftjax.tasks import Task

__all__ = [
    "ExportError",
    "Summary",
    "lora_note",
    "quantization_note",
    "id2label",
    "problem_type",
    "labels_and_origin",
    "image_processor_config",
    "copy_tokenizer",
    "write_json",
    "write_safetensors",
    "check_out",
    "staged_folder",
]


# ftjax.data.images.RESIZE_RATIO (a test pins them equal; importing it would load the data layer).
_RESIZE_RATIO = 256 / 224


class ExportError(ValueError):
    """A run that cannot be exported as asked; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class Summary:
    """What an export wrote and how to load it (printed by the command line)."""

    out: Path
    format: str
    model_class: str
    files: tuple[str, ...]
    load: str  # a Python snippet
    notes: tuple[str, ...] = ()

    def __str__(self) -> str:
        lines = [f"exported {self.model_class} ({self.format}) to {self.out}:"]
        lines += [f"  {name}" for name in self.files]
        lines += ["load it with:", *(f"  {line}" for line in self.load.splitlines())]
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


def lora_note(record: Mapping[str, Any]) -> str | None:
    """What a merged export says of a LoRA run's adapters (None for a run without them)."""
    lora = record.get("lora")
    if not lora:
        return None
    return (
        f"this run trained LoRA adapters (targets {lora['targets']!r}, rank {lora['rank']}, "
        f"alpha {lora['alpha']:g}); they are merged into the weights (W + A B alpha / rank), so "
        "this is the plain architecture with no adapter to load. --format=peft exports the "
        "adapters alone, for peft.PeftModel"
    )


def _quantised_kinds(spec: Mapping[str, Any]) -> str:
    """'Dense kernels', or e.g. 'Dense, convolution and embedding weights'."""
    on = [k for k in ("convs", "embeddings") if spec.get(k)]
    kinds = ["Dense"] + [{"convs": "convolution", "embeddings": "embedding"}[k] for k in on]
    if len(kinds) == 1:
        return "Dense kernels"
    return ", ".join(kinds[:-1]) + f" and {kinds[-1]} weights"


def quantization_note(record: Mapping[str, Any]) -> str | None:
    """What a float export says of a quantised run (None for a run that is not)."""
    if record.get("qat"):
        return (
            "this run trained quantisation-aware (ftjax.compress.qat): this export holds its float "
            "weights, whose outputs differ slightly from the run's int8 forward; for the int8 "
            "model's, export the run that `python -m ftjax.compress --method=int8` makes of it"
        )
    spec = record.get("quantization")
    if not spec:
        return None
    acts = (
        ", and its int8 activations are not reproduced: outputs differ slightly from the "
        "quantised run's"
        if spec.get("activations")
        else ", which compute as the int8 model does"
    )
    return (
        f"this run's {_quantised_kinds(spec)} are {spec['weights']} (ftjax.compress.quantize, "
        f"Dense pattern {spec['pattern']!r}); transformers' classes hold float weights, so this export is the "
        f"dequantised float32 weights{acts}. It is not smaller than the float run's: "
        "--format=flax keeps the int8 kernels"
    )


_PROBLEM_TYPES = {
    "classification": "single_label_classification",
    "multi_label": "multi_label_classification",
    "regression": "regression",
}


def problem_type(task: Task) -> str | None:
    """transformers' `problem_type` of an example-level task (None at token level)."""
    return _PROBLEM_TYPES.get(task.name)


def id2label(task: Task, record: Mapping[str, Any]) -> dict[int, str]:
    """Output index -> name: the task's label names, the regression target's column, QA's
    start/end, else transformers' LABEL_i."""
    if task.name == "extractive_qa":
        names: tuple[str, ...] = ("start", "end")
    elif task.name == "regression":
        names = (record.get("data", {}).get("label_key") or "LABEL_0",)
    else:
        names = tuple(task.label_names)
    if len(names) != task.output_size:
        names = tuple(f"LABEL_{i}" for i in range(task.output_size))
    return dict(enumerate(names))


def labels_and_origin(run: Any) -> dict[str, Any]:
    """The config.json entries every non-transformers export shares: the labels, transformers'
    `problem_type`, and the `ftjax` provenance of the `ftjax.inference.Run` exported."""
    labels = id2label(run.task, run.record)
    return {
        "num_labels": len(labels),
        "id2label": {str(i): n for i, n in labels.items()},
        "label2id": {n: i for i, n in labels.items()},
        "problem_type": problem_type(run.task),
        "ftjax": {
            "arch": run.arch,
            "source": run.record.get("source"),
            "task": run.task.name,
            "checkpoint": run.checkpoint,
            "step": run.step,
        },
    }


def image_processor_config(preprocessing: Mapping[str, Any]) -> dict[str, Any]:
    """A preprocessor_config.json that AutoImageProcessor reads as ftjax's evaluation
    preprocessing: resize the shorter side to image_size * 256/224 (bilinear), centre-crop
    image_size, scale to 0..1, normalise. ftjax's mean/std are in 0..255 pixel units,
    transformers' in 0..1. (transformers floors the longer side where ftjax rounds it, so a few
    aspect ratios land one pixel apart.)"""
    size = preprocessing["image_size"]
    size = size if isinstance(size, int) else size[0]
    return {
        "image_processor_type": "BitImageProcessor",
        "do_convert_rgb": True,
        "do_resize": True,
        "size": {"shortest_edge": round(size * _RESIZE_RATIO)},
        "resample": 2,  # PIL bilinear, as ftjax resizes
        "do_center_crop": True,
        "crop_size": {"height": size, "width": size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [m / 255 for m in preprocessing["mean"]],
        "image_std": [s / 255 for s in preprocessing["std"]],
    }


def copy_tokenizer(preprocessing: Mapping[str, Any], dest: Path) -> list[str]:
    """Copies the run's tokenizer files (its `inference/tokenizer/` folder) into `dest`, with
    tokenizer_config.json's model_max_length set to the run's max_length; returns the names."""
    path = Path(preprocessing["tokenizer_file"])
    folder = path if path.is_dir() else path.parent
    files = sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
    if not files:
        raise ExportError(
            f"the run's tokenizer folder {folder} is missing or empty; restore it from the "
            "checkpoint's tokenizer files (or rerun the training command in a new workdir)"
        )
    dest.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copy(f, dest / f.name)
    names = {f.name for f in files}
    if "max_length" in preprocessing:
        names.add("tokenizer_config.json")
        config_path = dest / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        config["model_max_length"] = int(preprocessing["max_length"])
        write_json(config_path, config)
    return sorted(names)


def readme(title: str, intro: str, summary: Summary, closing: str) -> str:
    """The README.md an export writes: title, what the run was, the load snippet, the notes."""
    notes = [f"- {note}" for note in summary.notes]
    lines = [f"# {title}", "", intro, "", "```python", summary.load, "```", "", *notes, "", closing]
    return "\n".join(lines) + "\n"


def write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n")


def write_safetensors(
    path: Path, arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str]
) -> None:
    """numpy arrays to safetensors (C-contiguous, as the format needs; 0-d arrays stay 0-d)."""
    save_file(
        {k: np.require(v, requirements="C") for k, v in arrays.items()}, str(path), dict(metadata)
    )


def check_out(out: Path, overwrite: bool) -> Path:
    """`out` as an absolute path, if it may be written: new, an empty folder, or `overwrite`."""
    out = Path(out).absolute()
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ExportError(
            f"--out {out} exists and is not empty; choose another folder, or pass --overwrite "
            "to replace it"
        )
    return out


@contextlib.contextmanager
def staged_folder(out: Path, overwrite: bool) -> Iterator[Path]:
    """A fresh temporary folder beside `out` to write into, moved to `out` when the block ends
    without error (replacing `out` only with `overwrite`); removed on error."""
    out = check_out(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield stage
        if out.exists():
            old = out.with_name(f"{stage.name}.old")
            out.rename(old)
            stage.rename(out)
            shutil.rmtree(old)
        else:
            stage.rename(out)
    finally:
        if stage.exists():
            shutil.rmtree(stage)
