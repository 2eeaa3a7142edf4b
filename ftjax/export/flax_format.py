"""`--format=flax`: the run's params in one safetensors file beside its inference record, and
`load_flax_export`, which rebuilds the model from them without the workdir or orbax.

    python -m ftjax.export --workdir=runs/minilm_rt --out=exports/minilm_rt_flax --format=flax
    run = load_flax_export("exports/minilm_rt_flax")
    logits, _ = run.model.apply(run.params, run.model_state, batch, train=False)

Layout: `params.safetensors` (keys `params/<path>` and `<collection>/<path>` for model state such
as batch-norm statistics, paths '/'-joined; metadata: format, checkpoint, step),
`inference.json` (the run's record, unchanged), `tokenizer/` (text models), README.md. Values are
as trained: a regression head still outputs standardised targets, and the task in
inference.json denormalises them, as with `load_run`. A LoRA run keeps its adapters as params
(`kernel_lora_a` / `kernel_lora_b`), and its record's `lora` rebuilds the model with them. A
quantised run (`ftjax.compress.quantize`) keeps its int8 kernels (`.../kernel/qvalue` int8,
`.../kernel/scale` float32), and its record's `quantization` rebuilds the int8 model.

Not here: the PyTorch formats (`hf.py`, `lite.py`, `torchvision_format.py`), the record itself (`ftjax.inference`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from safetensors import safe_open

from ftjax import inference, tasks
from ftjax.export.common import ExportError, Summary, write_json, write_safetensors
from ftjax.inference import Run
from ftjax.pretrained.load import example_batch
from ftjax.tasks import Task

__all__ = ["FORMAT", "PARAMS_FILE", "RECORD_FILE", "export_flax", "load_flax_export"]

FORMAT = "ftjax-flax-1"
PARAMS_FILE = "params.safetensors"
RECORD_FILE = "inference.json"
_PARAMS = "params"


def _flat_arrays(run: Run) -> dict[str, np.ndarray]:
    trees = {_PARAMS: run.params, **run.model_state}
    return {
        "/".join((collection, *keys)): np.asarray(value)
        for collection, tree in trees.items()
        for keys, value in traverse_util.flatten_dict(dict(tree)).items()
    }


def export_flax(run: Run, stage: Path, out: Path) -> Summary:
    """Writes `run`'s Flax export into `stage` (which becomes `out`)."""
    metadata = {"format": FORMAT, "checkpoint": run.checkpoint, "step": str(run.step)}
    write_safetensors(stage / PARAMS_FILE, _flat_arrays(run), metadata)
    write_json(stage / RECORD_FILE, run.record)
    files = [PARAMS_FILE, RECORD_FILE]
    if run.kind == "text":
        folder = Path(run.preprocessing["tokenizer_file"]).parent
        (stage / "tokenizer").mkdir()
        for f in sorted(p for p in folder.iterdir() if p.is_file()):
            (stage / "tokenizer" / f.name).write_bytes(f.read_bytes())
            files.append(f"tokenizer/{f.name}")
    load = (
        "from ftjax.export import load_flax_export\n"
        f'run = load_flax_export("{out}")\n'
        "logits, _ = run.model.apply(run.params, run.model_state, batch, train=False)"
    )
    summary = Summary(
        out, "flax", run.model.module.__class__.__name__, tuple(sorted([*files, "README.md"])), load
    )
    extra = (
        " The head outputs standardised targets: `run.task.denormalise` gives the target's units."
        if run.task.name == "regression"
        else ""
    )
    if run.record.get("lora"):
        extra += " Its LoRA adapters are separate params, and `load_flax_export` rebuilds them."
    if run.record.get("quantization"):
        extra += (
            " Its quantised kernels are int8 (`kernel/qvalue`, with a float32 `kernel/scale` per "
            "output channel; embedding tables per row), and `load_flax_export` rebuilds the int8 "
            "model."
        )
    (stage / "README.md").write_text(
        f"# ftjax Flax export\n\nThe {run.checkpoint} checkpoint (step {run.step}) of an ftjax "
        f"run: architecture `{run.arch}`, task `{run.task.name}`.{extra}\n\n"
        f"```python\n{load}\n```\n"
    )
    return summary


def _read_record(folder: Path) -> dict[str, Any]:
    path = folder / RECORD_FILE
    if not (folder / PARAMS_FILE).is_file() or not path.is_file():
        raise ExportError(
            f"{folder} is not an ftjax Flax export (it needs {PARAMS_FILE} and {RECORD_FILE}); "
            "write one with python -m ftjax.export --format=flax"
        )
    record = json.loads(path.read_text())
    if record.get("format") != inference.FORMAT:
        raise ExportError(
            f"{path} has record format {record.get('format')}; this ftjax reads {inference.FORMAT}"
        )
    return record


def _read_arrays(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    with safe_open(str(path), "np") as f:
        metadata = f.metadata() or {}
        arrays = {k: f.get_tensor(k) for k in f.keys()}
    if metadata.get("format") != FORMAT:
        raise ExportError(
            f"{path} has format {metadata.get('format')!r}; this ftjax reads {FORMAT!r}"
        )
    return arrays, metadata


def _check_against(arrays: dict[str, np.ndarray], expected: dict[str, Any], path: Path) -> None:
    """The file holds exactly the model's leaves, each with the model's shape."""
    missing = sorted(set(expected) - set(arrays))
    extra = sorted(set(arrays) - set(expected))
    shapes = [
        f"{k}: file {arrays[k].shape}, model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in arrays and arrays[k].shape != tuple(v.shape)
    ]
    if missing or extra or shapes:
        raise ExportError(
            f"{path} does not fit the model its {RECORD_FILE} describes: missing {missing[:10]}, "
            f"unexpected {extra[:10]}, shape mismatches {shapes[:10]}"
        )


def load_flax_export(folder: str | Path, task: Task | None = None) -> Run:
    """The model of a `--format=flax` export with its params, as `ftjax.inference.load_run`
    returns it (`task` replaces a user's own task, which the record cannot rebuild)."""
    folder = Path(folder).absolute()
    record = _read_record(folder)
    model, preprocessing = inference.model_from_record(record, folder)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), example_batch(model, preprocessing))
    )
    expected = {
        "/".join((c, *k)): v
        for c, tree in {_PARAMS: shapes[0], **shapes[1]}.items()
        for k, v in traverse_util.flatten_dict(dict(tree)).items()
    }
    arrays, metadata = _read_arrays(folder / PARAMS_FILE)
    _check_against(arrays, expected, folder / PARAMS_FILE)
    trees: dict[str, dict] = {}
    for key, array in arrays.items():
        collection, path = key.split("/", 1)
        trees.setdefault(collection, {})[tuple(path.split("/"))] = jnp.asarray(array)
    params = traverse_util.unflatten_dict(trees.pop(_PARAMS))
    state = {c: traverse_util.unflatten_dict(flat) for c, flat in trees.items()}
    return Run(
        folder,
        model,
        params,
        state,
        task or tasks.from_description(record["task"]),
        preprocessing,
        record,
        metadata.get("checkpoint", ""),
        int(metadata.get("step", 0)),
    )
