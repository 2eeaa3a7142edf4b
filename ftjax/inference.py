"""What inference needs from a run, recorded in its workdir, and the run loaded back from it.

A run writes `<workdir>/inference/` before training: `inference.json` (the architecture and its
checkpoint config, the model options, the preprocessing, the data keys, the task with its label
names and parameters) and `tokenizer/` (a copy of the checkpoint's tokenizer files, for text
models). With `best/` (the best validation params) and `final/` (the params after the last step),
that is enough to rebuild the model without the pretrained source or the training data:

    run = load_run("runs/minilm_rt", checkpoint="best")
    logits, _ = run.model.apply(run.params, run.model_state, batch, train=False)

A record with `quantization` (a run written by `ftjax.compress.quantize`) rebuilds the model with
those Dense kernels int8 (`QuantizedModel`); one with `qat` (a quantisation-aware run,
`ftjax.compress.qat`) with its float params computing through the int8 forward (`QatModel`).

Not here: the command lines that use it (`ftjax.predict`, `ftjax.evaluate`, `ftjax.export`),
checkpoint I/O (`ftjax.checkpoint`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import ml_collections
from etils import epath

from ftjax import config as cfg_lib
from ftjax import tasks
from ftjax.checkpoint import CheckpointError, Checkpoints
from ftjax.lora import LoraSpec, with_lora
from ftjax.models.base import Model
from ftjax.pretrained import registry
from ftjax.pretrained.arch import ModelOptions
from ftjax.pretrained.load import Pretrained, example_batch
from ftjax.tasks import Task

__all__ = [
    "RECORD",
    "CHECKPOINTS",
    "Run",
    "InferenceError",
    "write_record",
    "read_record",
    "finished_record",
    "model_from_record",
    "load_run",
]

RECORD = "inference"  # the folder under the workdir
FORMAT = 1
CHECKPOINTS = ("best", "final")
_TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
)


class InferenceError(ValueError):
    """A workdir cannot be used for inference; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class Run:
    """A trained model loaded from a workdir, ready to apply."""

    workdir: Path
    model: Model
    params: Any
    model_state: Any
    task: Task
    preprocessing: dict[str, Any]
    record: dict[str, Any]  # inference.json
    checkpoint: str  # "best" or "final"
    step: int

    @property
    def arch(self) -> str:
        return self.record["arch"]

    @property
    def kind(self) -> str:
        """'text' or 'image': what the model reads."""
        return "text" if "tokenizer_file" in self.preprocessing else "image"


def _tokenizer_files(preprocessing: dict[str, Any]) -> list[Path]:
    path = Path(preprocessing["tokenizer_file"])
    folder = path.parent if path.is_file() else path
    return [folder / n for n in _TOKENIZER_FILES if (folder / n).is_file()]


def write_record(
    workdir: epath.Path,
    config: ml_collections.ConfigDict,
    pretrained: Pretrained,
    task: Task,
    max_length: int | None,
) -> None:
    """Writes `<workdir>/inference/` (process 0 only): see the module docstring."""
    if jax.process_index() != 0:
        return
    folder = workdir / RECORD
    folder.mkdir(parents=True, exist_ok=True)
    preprocessing = dict(pretrained.preprocessing)
    if "tokenizer_file" in preprocessing:
        (folder / "tokenizer").mkdir(exist_ok=True)
        files = _tokenizer_files(preprocessing)
        for f in files:
            (folder / "tokenizer" / f.name).write_bytes(f.read_bytes())
        preprocessing["tokenizer_file"] = f"tokenizer/{Path(preprocessing['tokenizer_file']).name}"
        if max_length:
            preprocessing["max_length"] = max_length
    elif config.data.image_size:  # the size the model was trained at, not the checkpoint's
        preprocessing["image_size"] = config.data.image_size
    d, m = config.data, config.model
    record = {
        "format": FORMAT,
        "source": m.source,
        "arch": pretrained.arch,
        "checkpoint_config": pretrained.config,
        "options": {
            "num_classes": task.output_size,
            "dtype": m.dtype,
            "pooling": "tokens" if task.output_level == "token" else m.pooling,
            "dropout": m.dropout,
        },
        "lora": lora.to_dict() if (lora := cfg_lib.lora_spec(config.peft)) else None,
        "qat": pretrained.model.spec.to_dict() if config.qat.weights else None,
        "input_keys": list(pretrained.model.input_keys),
        "preprocessing": preprocessing,
        "data": {
            "text_key": d.text_key,
            "text_pair_key": d.text_pair_key,
            "image_key": d.image_key,
            "label_key": d.label_key,
            "label_separator": d.label_separator,
            "doc_stride": d.doc_stride,
        },
        "task": tasks.describe(task),
    }
    (folder / "inference.json").write_text(json.dumps(record, indent=2, default=_json))


def _json(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    return str(value)


def read_record(workdir: str | Path) -> dict[str, Any]:
    workdir = Path(workdir)
    path = workdir / RECORD / "inference.json"
    if not workdir.is_dir():
        raise InferenceError(f"workdir {workdir} does not exist; pass the --workdir of a run")
    if not path.is_file():
        raise InferenceError(
            f"{workdir} holds no {RECORD}/inference.json: it is not an ftjax run, or it was "
            "written by an ftjax before inference records existed; rerun its training command "
            "in a new workdir"
        )
    record = json.loads(path.read_text())
    if record.get("format") != FORMAT:
        raise InferenceError(f"{path} has format {record.get('format')}; this ftjax reads {FORMAT}")
    return record


def model_from_record(record: dict[str, Any], folder: Path) -> tuple[Model, dict[str, Any]]:
    """The model an inference record describes (fresh params) and its preprocessing, with the
    tokenizer file found in `folder`, the folder holding the record's files."""
    family = registry.get(record["arch"])
    model = family.build(record["checkpoint_config"], ModelOptions(**record["options"]))
    if record.get("lora"):
        model = with_lora(model, LoraSpec(**record["lora"]))
    if record.get("quantization"):  # imported here: the quantize module reads runs through this one
        from ftjax.compress import quantize

        model = quantize.with_quantization(model, quantize.QuantSpec(**record["quantization"]))
    if record.get("qat"):
        from ftjax.compress import qat, quantize

        model = qat.with_qat(model, quantize.QuantSpec(**record["qat"]))
    preprocessing = dict(record["preprocessing"])
    if "tokenizer_file" in preprocessing:
        preprocessing["tokenizer_file"] = str(folder / preprocessing["tokenizer_file"])
    return model, preprocessing


def finished_record(workdir: str | Path) -> dict[str, Any]:
    """The inference record of a run that finished (wrote results.json); else InferenceError."""
    record = read_record(workdir)  # not a run at all: its own message
    if not (Path(workdir) / "results.json").is_file():
        raise InferenceError(
            f"{workdir} is not a finished run (no results.json): it is still training or it "
            "stopped early; finish it by rerunning its training command"
        )
    return record


def load_run(
    workdir: str | Path,
    checkpoint: str = "best",
    task: Task | None = None,
    *,
    finished: bool = False,
) -> Run:
    """The model of `workdir` with its `checkpoint`'s params ('best': the best validation step;
    'final': after the last training step). `task` replaces a user's own task, which the record
    cannot rebuild; `finished` refuses a run that has not written results.json."""
    if checkpoint not in CHECKPOINTS:
        raise InferenceError(f"checkpoint is {checkpoint!r}; use one of {list(CHECKPOINTS)}")
    workdir = Path(workdir).absolute()
    record = finished_record(workdir) if finished else read_record(workdir)
    model, preprocessing = model_from_record(record, workdir / RECORD)
    task = task or tasks.from_description(record["task"])
    params, model_state = jax.eval_shape(
        lambda: model.init(jax.random.key(0), example_batch(model, preprocessing))
    )
    target = {"params": params, "model_state": model_state}
    ckpts = Checkpoints(workdir, keep=2, read_only=True)
    try:
        found = ckpts.best() if checkpoint == "best" else ckpts.final()
        if found is None:
            raise InferenceError(
                f"{workdir} has no {checkpoint} checkpoint yet (is the run still training, or "
                f"did it stop early?); finish the run, or use --checkpoint="
                + ("final" if checkpoint == "best" else "best")
            )
        tree = ckpts.restore_best(target) if checkpoint == "best" else ckpts.restore_final(target)
    except CheckpointError as e:
        raise InferenceError(str(e)) from None
    finally:
        ckpts.close()
    return Run(
        workdir,
        model,
        tree["params"],
        tree["model_state"],
        task,
        preprocessing,
        record,
        checkpoint,
        found[0],
    )
