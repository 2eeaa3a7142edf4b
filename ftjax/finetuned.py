"""A fine-tuned model from Python: `load_finetuned(path)` and its `predict`.

    import ftjax

    model = ftjax.load_finetuned("runs/minilm_rt")  # a finished run's workdir
    model = ftjax.load_finetuned("exports/minilm_rt_flax")  # or a --format=flax export
    model.label_names  # ('neg', 'pos')
    model.predict(["a gripping, funny film", "dull and far too long"])
    # [{'index': 0, 'label': 'pos', 'scores': {'neg': 0.08, 'pos': 0.92}}, {'index': 1, ...}]
    model.predict("new_reviews.csv")  # a file or folder, read as `python -m ftjax.predict` reads it

`predict` returns the dicts `python -m ftjax.predict` writes (the decoding is
`ftjax.predict.predict`'s). What it takes depends on the model and its task:

  text classification, multi_label, regression   ["a text", ...]
  the same, trained on sentence pairs            [("first text", "second text"), ...]
  token_classification                           [["John", "lives", "in", "Paris"], ...]
  extractive_qa                                  [("question", "context"), ...]
  an image model                                 ["cat.png", Path("dog.jpg"), ...]

or dicts as `ftjax.inputs` makes them ({"text"}, {"text", "text_pair"}, {"words"},
{"question", "context"[, "id"]}, {"path"}), or one path (str or Path) to a file or folder. A bare
string is always a path: wrap one text in a list. Inputs of the wrong kind (an image for a text
model, a single text for a pair model, a sentence as one string for a tagger) are an
`ftjax.inputs.InputError` naming the input; a path that is neither a finished run nor a Flax
export is an `ftjax.inference.InferenceError`.

Not here: the model and its params (`ftjax.inference.load_run`, `ftjax.export.load_flax_export`),
reading files (`ftjax.inputs`), decoding logits (`ftjax.predict`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from ftjax import inference, inputs, predict
from ftjax.data.images import check_image_file
from ftjax.data.user import IMAGE_SUFFIXES
from ftjax.export import flax_format
from ftjax.inference import InferenceError, Run
from ftjax.inputs import InputError
from ftjax.tasks import Task

__all__ = ["Finetuned", "load_finetuned", "to_items"]

Item = dict[str, Any]
_SHOWN = 5  # bad inputs named in one message


def load_finetuned(
    path: str | os.PathLike, checkpoint: str | None = None, task: Task | None = None
) -> Finetuned:
    """The model of a finished run's workdir or of a `--format=flax` export folder.

    `checkpoint`: for a workdir, "best" (the default: the best validation step) or "final" (after
    the last step); an export holds the one it was written from, and asking for the other is an
    error. `task` replaces a user's own task, which the record cannot rebuild.
    """
    path = Path(path)
    if not path.exists():
        raise InferenceError(
            f"{path} does not exist; pass a finished run's workdir or a --format=flax export"
        )
    if (path / inference.RECORD / "inference.json").is_file():
        return Finetuned(inference.load_run(path, checkpoint or "best", task, finished=True))
    if (path / flax_format.PARAMS_FILE).is_file() and (path / flax_format.RECORD_FILE).is_file():
        return Finetuned(_load_export(path, checkpoint, task))
    raise InferenceError(
        f"{path} is neither a finished ftjax run (a workdir with {inference.RECORD}/"
        f"inference.json) nor a --format=flax export ({flax_format.PARAMS_FILE} and "
        f"{flax_format.RECORD_FILE}){_hf_hint(path)}"
    )


def _load_export(path: Path, checkpoint: str | None, task: Task | None) -> Run:
    if checkpoint is not None and checkpoint not in inference.CHECKPOINTS:
        raise InferenceError(
            f"checkpoint is {checkpoint!r}; use one of {list(inference.CHECKPOINTS)}"
        )
    run = flax_format.load_flax_export(path, task)
    if checkpoint is not None and checkpoint != run.checkpoint:
        raise InferenceError(
            f"{path} holds the {run.checkpoint} checkpoint, not {checkpoint}; export that one "
            f"from the run's workdir (python -m ftjax.export --checkpoint={checkpoint})"
        )
    return run


def _hf_hint(path: Path) -> str:
    if path.is_dir() and (path / "config.json").is_file():
        return (
            "; it holds config.json, like a --format=hf export, which is for transformers "
            "(AutoModelFor*.from_pretrained or pipeline), not for load_finetuned"
        )
    return ""


class Finetuned:
    """A fine-tuned model ready to predict: `load_finetuned`'s result (see the module docstring).

    Attributes:
      run: the loaded `ftjax.inference.Run` (model, params, task, preprocessing, record).
      task: the run's `ftjax.tasks.Task` (`task.name` is e.g. "classification").
      label_names: the names of the head's outputs (classes or tags; empty for regression).
      kind: "text" or "image", what the model reads.
    """

    def __init__(self, run: Run):
        self.run = run

    @property
    def task(self) -> Task:
        return self.run.task

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(self.run.task.label_names)

    @property
    def kind(self) -> str:
        return self.run.kind

    def __repr__(self) -> str:  # not the params
        names = f" over {list(self.label_names)}" if self.label_names else ""
        return (
            f"Finetuned({self.task.name}{names}, {self.run.arch}, {self.run.checkpoint} step "
            f"{self.run.step} of {self.run.workdir})"
        )

    def predict(
        self,
        inputs: str | os.PathLike | Iterable[Any],
        *,
        batch_size: int = 64,
        progress: bool = False,
        text_key: str | None = None,
        text_pair_key: str | None = None,
    ) -> list[dict[str, Any]]:
        """One prediction per input, in order, as `python -m ftjax.predict` writes them.

        `inputs`: a list of inputs or one path (see the module docstring); `text_key` and
        `text_pair_key` name a file's text columns (default: the run's own data keys).
        """
        items = to_items(self.run, inputs, text_key=text_key, text_pair_key=text_pair_key)
        return predict.predict(self.run, items, batch_size=batch_size, progress=progress)


# ----------------------------------------------------------------------------- inputs -> items


def to_items(
    run: Run,
    values: str | os.PathLike | Iterable[Any],
    *,
    text_key: str | None = None,
    text_pair_key: str | None = None,
) -> list[Item]:
    """`values` as the items `ftjax.predict.predict` takes for `run`, checked to fit its model."""
    if isinstance(values, (str, os.PathLike)):
        return _read_path(run, Path(values), text_key, text_pair_key)
    if isinstance(values, Mapping):
        raise InputError("predict takes a list of inputs, not one dict: pass [item]")
    try:
        values = list(values)
    except TypeError:
        raise InputError(
            f"predict takes a list of inputs or a path, not a {type(values).__name__}"
        ) from None
    if not values:
        raise InputError("no inputs to predict on: the list is empty")
    convert = _converter(run)
    items = [convert(i, v) for i, v in enumerate(values)]
    if run.kind == "image":
        _check_images([it["path"] for it in items])
    return items


def _read_path(run: Run, path: Path, text_key: str | None, text_pair_key: str | None) -> list[Item]:
    if not path.exists() and run.kind == "text":
        raise InputError(
            f"input {path} does not exist (a string is read as a path; to predict on one text, "
            f"pass a list: predict([{str(path)[:40]!r}]))"
        )
    data = run.record["data"]
    if text_pair_key and not data.get("text_pair_key"):
        raise InputError(f"text_pair_key={text_pair_key!r}: the run was trained on single texts")
    return inputs.read_inputs(
        path,
        kind=run.kind,
        task=run.task.name,
        text_key=text_key or data.get("text_key") or "text",
        text_pair_key=text_pair_key or data.get("text_pair_key"),
    )


def _converter(run: Run) -> Callable[[int, Any], Item]:
    """The function making the item of input number i, for what the run's model reads."""
    if run.kind == "image":
        return _image_item
    if run.task.name == "token_classification":
        return _words_item
    if run.task.name == "extractive_qa":
        return _question_item
    return _pair_item if run.record["data"].get("text_pair_key") else _text_item


def _bad(i: int, value: Any, wanted: str) -> InputError:
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    return InputError(f"input {i} is {shown} ({type(value).__name__}); the model takes {wanted}")


def _is_texts(value: Any, n: int | None = None) -> bool:
    return (
        isinstance(value, (list, tuple))
        and (n is None or len(value) == n)
        and all(isinstance(v, str) for v in value)
    )


def _dict_item(i: int, value: Mapping, keys: tuple[str, ...], wanted: str) -> Item:
    missing = [k for k in keys if not isinstance(value.get(k), str if k != "words" else list)]
    if missing:
        raise InputError(f"input {i} (a dict with keys {sorted(value)}) lacks {missing}: {wanted}")
    return dict(value)


_TEXT = "texts (str); a path is read as a file only when passed alone, not in a list"
_PAIR = "text pairs (first, second), as the run was trained on sentence pairs"
_WORDS = "sentences as lists of words (['John', 'lives', 'in', 'Paris']; text.split() gives one)"
_QUESTION = "(question, context) pairs or {'question', 'context'} dicts"
_IMAGE = "image file paths (str or Path)"


def _text_item(i: int, value: Any) -> Item:
    if isinstance(value, str):
        return {"index": i, "text": value}
    if isinstance(value, Mapping) and "text_pair" not in value:
        return _dict_item(i, value, ("text",), _TEXT)
    if _is_texts(value, 2) or isinstance(value, Mapping):
        raise InputError(f"input {i} is a text pair, but the run was trained on single texts")
    raise _bad(i, value, _TEXT)


def _pair_item(i: int, value: Any) -> Item:
    if _is_texts(value, 2):
        return {"index": i, "text": value[0], "text_pair": value[1]}
    if isinstance(value, Mapping):
        return _dict_item(i, value, ("text", "text_pair"), _PAIR)
    raise _bad(i, value, _PAIR)


def _words_item(i: int, value: Any) -> Item:
    if _is_texts(value) and value:
        return {"index": i, "words": list(value)}
    if isinstance(value, Mapping):
        return _dict_item(i, value, ("words",), _WORDS)
    raise _bad(i, value, _WORDS)


def _question_item(i: int, value: Any) -> Item:
    if _is_texts(value, 2):
        return {"id": str(i), "question": value[0], "context": value[1]}
    if isinstance(value, Mapping):
        return {"id": str(i), **_dict_item(i, value, ("question", "context"), _QUESTION)}
    raise _bad(i, value, _QUESTION)


def _image_item(i: int, value: Any) -> Item:
    if isinstance(value, (str, os.PathLike)):
        return {"path": str(value)}
    if isinstance(value, Mapping) and isinstance(value.get("path"), (str, os.PathLike)):
        return {**value, "path": str(value["path"])}
    raise _bad(i, value, _IMAGE)


def _check_images(paths: list[str]) -> None:
    """Every path an existing, readable image file; else one error naming the bad ones."""
    bad = []
    for i, p in enumerate(paths):
        if Path(p).suffix.lower() not in IMAGE_SUFFIXES:
            bad.append(f"input {i} ({p}) is not an image file ({'/'.join(sorted(IMAGE_SUFFIXES))})")
        elif not Path(p).is_file():
            bad.append(f"input {i} ({p}) does not exist")
        elif why := check_image_file(p):
            bad.append(f"input {i} ({p}) cannot be read: {why}")
    if bad:
        more = f"; and {len(bad) - _SHOWN} more" if len(bad) > _SHOWN else ""
        raise InputError("; ".join(bad[:_SHOWN]) + more)
