"""Predictions of a finished run on new, unlabelled inputs: one JSON line per input.

    python -m ftjax.predict --workdir=W --input=PATH [--output=FILE] [--checkpoint=best|final]
        [--batch_size=64] [--text_key=COLUMN] [--text_pair_key=COLUMN]

reads the inputs (`ftjax.inputs`: a CSV/TSV/JSONL of texts or text pairs, an image folder or a
list of image paths, a CoNLL-style file of words, SQuAD-format questions), runs the run's model on
them in batches over every local device (data parallel; the last batch is padded and its padding
rows dropped; texts are batched longest first, each batch padded to a length bucket), and writes
one line per input, in input order: its identity ("index", the data row or sentence from 0;
"path" for images; "id" for questions) and what the task predicts, decoded to names:

  classification        {"label": name, "scores": {name: softmax probability}}
  multi_label           {"labels": [names whose sigmoid exceeds the task's threshold],
                         "scores": {name: sigmoid}}
  regression            {"prediction": value in the training targets' units}
  token_classification  {"words", "tags", "entities": [{"type", "text", "start", "end"}]}
  extractive_qa         {"answer": text, "start": its first character in the context, "score"}

A word's tag is the one predicted on its first sub-token; a word cut off by the run's max_length
gets tag null. Entities are word spans, `end` exclusive (`words[start:end]`). A QA answer is the
best span over all the question's windows by start + end logit (`score`), chosen as the task's
metrics choose it ("", null and null when no window has a valid span).

Only the workdir is needed (`inference/` and the checkpoint), no training data. With --output the
lines go to a temporary file beside it, renamed at the end, so a bad input or a failure leaves an
existing file as it was; without it they go to stdout after the last prediction. Errors (a bad
input, a workdir that is not a finished run) are one line on stderr and exit status 1.

Not here: reading the inputs (`ftjax.inputs`), rebuilding the model (`ftjax.inference`), metrics
on labelled data (`ftjax.evaluate`).
"""

from __future__ import annotations

import concurrent.futures
import functools
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from tqdm import tqdm  # noqa: E402

from ftjax import inference, inputs, sharding  # noqa: E402
from ftjax.data import squad  # noqa: E402
from ftjax.data.images import ImagePreprocessor  # noqa: E402
from ftjax.data.tokenize import TextEncoder  # noqa: E402
from ftjax.inference import InferenceError, Run  # noqa: E402
from ftjax.tasks import Task  # noqa: E402
from ftjax.tasks.entities import entities  # noqa: E402
from ftjax.tasks.extractive_qa import best_spans  # noqa: E402

__all__ = [
    "DECODERS",
    "check_output",
    "cli",
    "predict",
    "predict_file",
    "write_jsonl",
]

Item = dict[str, Any]
Part = tuple[np.ndarray, dict[str, Any]]  # one model row's logits and what decoding needs of it
_IDENTITY = ("index", "path", "id")
_BUCKETS = (16, 32, 64, 128, 256, 512)  # text batches pad to the smallest that fits
# Windowing needs a gold answer per question; predictions ignore the targets it makes.
_NO_ANSWER = {"text": "", "answer_start": 0}


# ----------------------------------------------------------------------------- the run


# ----------------------------------------------------------------------------- decoding


def _names(task: Task, n: int) -> list[str]:
    return list(task.label_names) if len(task.label_names) == n else [str(i) for i in range(n)]


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x.astype(np.float64) - x.max())
    return e / e.sum()


def _classification(task: Task, item: Item, parts: list[Part]) -> dict[str, Any]:
    ((logits, _),) = parts
    names = _names(task, len(logits))
    probs = _softmax(logits)
    return {"label": names[int(np.argmax(logits))], "scores": dict(zip(names, map(float, probs)))}


def _multi_label(task: Task, item: Item, parts: list[Part]) -> dict[str, Any]:
    ((logits, _),) = parts
    names = _names(task, len(logits))
    probs = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    threshold = getattr(task, "threshold", 0.5)
    return {
        "labels": [n for n, p in zip(names, probs) if p > threshold],
        "scores": dict(zip(names, map(float, probs))),
    }


def _regression(task: Task, item: Item, parts: list[Part]) -> dict[str, Any]:
    ((logits, _),) = parts
    denormalise = getattr(task, "denormalise", lambda x: np.asarray(x, np.float64))
    return {"prediction": float(denormalise(logits[:1])[0])}


def _token_classification(task: Task, item: Item, parts: list[Part]) -> dict[str, Any]:
    ((logits, meta),) = parts
    words, names = item["words"], _names(task, logits.shape[-1])
    tags: list[str | None] = [None] * len(words)
    for token, word in enumerate(meta["word_ids"]):
        if word is not None and tags[word] is None:  # the word's first sub-token
            tags[word] = names[int(np.argmax(logits[token]))]
    spans = [
        {"type": kind, "text": " ".join(words[a : b + 1]), "start": a, "end": b + 1}
        for kind, a, b in entities([t or "O" for t in tags])
    ]
    return {"words": words, "tags": tags, "entities": spans}


def _extractive_qa(task: Task, item: Item, parts: list[Part]) -> dict[str, Any]:
    best = None
    for logits, meta in parts:  # the question's windows in order: ties keep the earlier one
        scores, chars = best_spans(
            logits[None, :, 0],
            logits[None, :, 1],
            meta["offset_start"][None],
            meta["offset_end"][None],
            task.n_best,
            task.max_answer_length,
        )
        if best is None or scores[0] > best[0]:
            best = (float(scores[0]), int(chars[0, 0]), int(chars[0, 1]))
    score, lo, hi = best
    if not np.isfinite(score):
        return {"answer": "", "start": None, "score": None}
    return {"answer": item["context"][lo:hi], "start": lo, "score": score}


# task name -> (task, input item, its model rows) -> the prediction's fields
DECODERS: dict[str, Callable[[Task, Item, list[Part]], dict[str, Any]]] = {
    "classification": _classification,
    "multi_label": _multi_label,
    "regression": _regression,
    "token_classification": _token_classification,
    "extractive_qa": _extractive_qa,
}


# ----------------------------------------------------------------------------- model inputs


class _TextRows:
    """Token arrays of every model row, the item each came from and what decoding needs."""

    def __init__(
        self,
        encoder: TextEncoder,
        arrays: list[dict[str, np.ndarray]],
        item_of: Sequence[int],
        meta: list[dict[str, Any]],
        input_keys: Sequence[str],
    ):
        self.encoder, self.arrays, self.item_of, self.meta = encoder, arrays, item_of, meta
        self.input_keys = tuple(input_keys)
        self.lengths = np.asarray([len(a["input_ids"]) for a in arrays])

    def order(self) -> np.ndarray:
        return np.argsort(-self.lengths, kind="stable")  # longest first: little padding

    def batch(self, rows: Sequence[int]) -> dict[str, np.ndarray]:
        batch = self.encoder.collate([self.arrays[r] for r in rows])
        return {k: batch[k] for k in self.input_keys}


class _ImageRows:
    """Image paths, preprocessed a batch at a time on threads (decoding releases the GIL)."""

    def __init__(self, paths: list[str], prep: ImagePreprocessor):
        self.paths, self.prep = paths, prep
        self.item_of = range(len(paths))
        self.meta = [{}] * len(paths)
        self.lengths = None

    def order(self) -> np.ndarray:
        return np.arange(len(self.paths))

    def batch(self, rows: Sequence[int]) -> dict[str, np.ndarray]:
        with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
            images = list(pool.map(self.prep.eval, [self.paths[r] for r in rows]))
        return {"image": np.stack(images)}


def _text_rows(run: Run, items: list[Item]) -> _TextRows:
    p = run.preprocessing
    if not p.get("max_length"):
        raise InferenceError(f"{run.workdir}'s inference record gives no max_length for the text")
    encoder = TextEncoder(p["tokenizer_file"], p["max_length"], _BUCKETS)
    tok = encoder.tokenizer
    if run.task.name == "extractive_qa":
        examples = [{**it, "answers": [_NO_ANSWER]} for it in items]
        stride = run.record["data"]["doc_stride"]
        windows, _ = squad.windows(examples, tok, encoder.max_length, stride)
        arrays = [{k: w[k] for k in ("input_ids", "token_type_ids")} for w in windows]
        meta = [{k: w[k] for k in ("offset_start", "offset_end")} for w in windows]
        item_of = [int(w["example_index"]) for w in windows]
        return _TextRows(encoder, arrays, item_of, meta, run.model.input_keys)
    if "words" in items[0]:
        encodings = tok.encode_batch([it["words"] for it in items], is_pretokenized=True)
    elif "text_pair" in items[0]:
        encodings = tok.encode_batch([(it["text"], it["text_pair"]) for it in items])
    else:
        encodings = tok.encode_batch([it["text"] for it in items])
    arrays = [TextEncoder.arrays(e) for e in encodings]
    words = "words" in items[0]  # decoding maps tokens back to words
    meta = [{"word_ids": e.word_ids} if words else {} for e in encodings]
    return _TextRows(encoder, arrays, range(len(items)), meta, run.model.input_keys)


def _rows(run: Run, items: list[Item]) -> _TextRows | _ImageRows:
    if run.kind == "text":
        return _text_rows(run, items)
    p = run.preprocessing
    prep = ImagePreprocessor(p["image_size"], p["mean"], p["std"], augment="none")
    return _ImageRows([it["path"] for it in items], prep)


# ----------------------------------------------------------------------------- running the model


class _Model:
    """The run's model in inference mode, data parallel over the local devices."""

    def __init__(self, run: Run):
        self.mesh = sharding.make_mesh(devices=jax.local_devices())
        self.devices = self.mesh.devices.size
        placed = jax.device_put((run.params, run.model_state), sharding.replicated(self.mesh))
        self.params, self.state = placed
        self.model = run.model

    def __call__(self, batch: Mapping[str, np.ndarray]) -> np.ndarray:
        batch = sharding.shard_batch(batch, self.mesh)
        logits = _apply(self.model, self.params, self.state, batch)
        return np.asarray(jax.device_get(logits), np.float32)


# The model is a static (hashable) argument, so repeated predict calls on one run (the Python
# API in a loop) reuse the compiled forward pass instead of compiling it again.
@functools.partial(jax.jit, static_argnums=0)
def _apply(model: Any, params: Any, state: Any, batch: Mapping[str, jax.Array]) -> jax.Array:
    return model.apply(params, state, batch, train=False)[0]


def _logits(
    model: _Model, rows: _TextRows | _ImageRows, batch_size: int, token_level: bool, progress: bool
) -> list[np.ndarray]:
    """Every row's logits ([K], or [its tokens, K] for token-level tasks), in row order."""
    order = rows.order()
    # Every batch has the same number of rows (a multiple of the devices): one compile per length.
    size = min(-(-batch_size // model.devices), -(-len(order) // model.devices)) * model.devices
    out: list[np.ndarray] = [None] * len(order)
    with tqdm(total=len(order), unit="row", file=sys.stderr, disable=not progress) as bar:
        for start in range(0, len(order), size):
            chunk = order[start : start + size]
            padded = np.concatenate([chunk, np.full(size - len(chunk), chunk[-1])])
            logits = model(rows.batch(padded))
            for k, r in enumerate(chunk):  # padding rows (k >= len(chunk)) are dropped
                out[r] = logits[k, : rows.lengths[r]] if token_level else logits[k]
            bar.update(len(chunk))
    return out


def predict(
    run: Run, items: list[Item], *, batch_size: int = 64, progress: bool = False
) -> list[dict[str, Any]]:
    """One prediction per item (`ftjax.inputs`' items), in order: the item's identity and the
    task's decoded prediction (see the module docstring)."""
    decode = DECODERS.get(run.task.name)
    if decode is None:
        raise InferenceError(
            f"no prediction decoder for task {run.task.name!r}; ftjax decodes {list(DECODERS)}"
        )
    if not items:
        raise ValueError("no inputs to predict on")
    if batch_size < 1:
        raise ValueError(f"batch_size is {batch_size}; it must be >= 1")
    rows = _rows(run, items)
    token_level = run.task.output_level == "token"
    logits = _logits(_Model(run), rows, batch_size, token_level, progress)
    parts: list[list[Part]] = [[] for _ in items]
    for r, (row_logits, meta) in enumerate(zip(logits, rows.meta)):
        parts[rows.item_of[r]].append((row_logits, meta))
    return [
        {**{k: item[k] for k in _IDENTITY if k in item}, **decode(run.task, item, p)}
        for item, p in zip(items, parts)
    ]


# ----------------------------------------------------------------------------- output


def check_output(output: str | os.PathLike | None) -> Path | None:
    """`output` as a path whose folder exists (checked before any work), or None (stdout)."""
    if output is None:
        return None
    path = Path(output)
    if path.is_dir():
        raise ValueError(f"--output={path} is a folder; name a file to write the predictions to")
    if not path.absolute().parent.is_dir():
        raise ValueError(f"--output={path}: its folder {path.absolute().parent} does not exist")
    return path


def _file_mode(path: Path) -> int:
    """The mode a plain `open(path, "w")` would leave (mkstemp's files are private)."""
    if path.exists():
        return path.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_jsonl(rows: Iterable[Mapping[str, Any]], output: str | os.PathLike | None) -> None:
    """One JSON line per row to `output` (a temporary file renamed at the end), or stdout."""
    lines = (json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if output is None:
        sys.stdout.writelines(lines)
        sys.stdout.flush()
        return
    output = Path(output)
    fd, tmp = tempfile.mkstemp(dir=output.absolute().parent, prefix=f".{output.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.writelines(lines)
        os.chmod(tmp, _file_mode(output))
        os.replace(tmp, output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------- command line


def _define_flags() -> None:
    # Defined by the command only: tests import this module and ftjax.evaluate side by side.
    flags.DEFINE_string("workdir", None, "the workdir of a finished run")
    flags.DEFINE_string(
        "input",
        None,
        "what to predict on: a CSV/TSV/JSONL of texts, an image folder or a .txt list of image "
        "paths, a CoNLL-style file of words (token classification), SQuAD-format JSON (QA)",
    )
    flags.DEFINE_string("output", None, "JSON lines file to write (default: stdout)")
    flags.DEFINE_enum(
        "checkpoint", "best", list(inference.CHECKPOINTS), "best validation step, or final"
    )
    flags.DEFINE_integer("batch_size", 64, "inputs per batch (over all devices)", lower_bound=1)
    flags.DEFINE_string("text_key", None, "column of the texts (default: the run's data.text_key)")
    flags.DEFINE_string(
        "text_pair_key", None, "column of the second texts (default: the run's data.text_pair_key)"
    )
    flags.mark_flags_as_required(["workdir", "input"])


def _text_keys(
    record: Mapping[str, Any], text_key: str | None, text_pair_key: str | None
) -> tuple[str, str | None]:
    data = record["data"]
    if text_pair_key and not data.get("text_pair_key"):
        raise ValueError(
            f"--text_pair_key={text_pair_key}: the run was trained on single texts, not pairs"
        )
    return text_key or data["text_key"], text_pair_key or data.get("text_pair_key")


def predict_file(
    workdir: str | os.PathLike,
    path: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    checkpoint: str = "best",
    batch_size: int = 64,
    text_key: str | None = None,
    text_pair_key: str | None = None,
    progress: bool = False,
) -> int:
    """What the command does: `workdir`'s predictions on the inputs at `path`, written to
    `output` (None: stdout) once every input is predicted; the keys name other text columns.
    Returns the number of predictions."""
    output = check_output(output)
    record = inference.finished_record(workdir)
    text_key, text_pair_key = _text_keys(record, text_key, text_pair_key)
    # The inputs are read before the params: a bad input fails at once.
    kind = "text" if "tokenizer_file" in record["preprocessing"] else "image"  # as Run.kind
    items = inputs.read_inputs(
        path, kind=kind, task=record["task"]["name"], text_key=text_key, text_pair_key=text_pair_key
    )
    run = inference.load_run(workdir, checkpoint)
    write_jsonl(predict(run, items, batch_size=batch_size, progress=progress), output)
    return len(items)


def _main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    from ftjax import compile as compile_lib

    compile_lib.own_process()  # every jitted function in this process is ftjax's
    logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
    f = flags.FLAGS
    try:
        count = predict_file(
            f.workdir,
            f.input,
            f.output,
            checkpoint=f.checkpoint,
            batch_size=f.batch_size,
            text_key=f.text_key,
            text_pair_key=f.text_pair_key,
            progress=True,
        )
    except (ValueError, OSError) as e:  # InferenceError and InputError are ValueErrors
        sys.exit(f"FATAL: {e}")
    if f.output:
        print(f"{count} predictions written to {f.output}", file=sys.stderr, flush=True)


def cli() -> None:
    _define_flags()
    app.run(_main)


if __name__ == "__main__":
    cli()
