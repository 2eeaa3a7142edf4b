"""Reading what `ftjax.predict` runs a trained model on: unlabelled inputs, each with its identity.

- texts: a .csv / .tsv / .jsonl (.json) file with a column of texts and optionally one of second
  texts (sentence pairs); other columns (a label, ids) are ignored. Item: {"index": row, "text",
  ["text_pair"]}, `index` counting data rows from 0.
- images: a folder (searched recursively, so one with class subfolders works as it is), a .txt
  file listing image paths one per line (relative paths are relative to the list's folder), or
  one image file. Item: {"path"}, as found or as listed.
- words: a CoNLL-style file, one word per line in the first column (any tag columns ignored),
  blank lines between sentences, -DOCSTART- lines skipped. Item: {"index": sentence, "words"}.
- questions: a SQuAD-format JSON file (`data[].paragraphs[].context`, `qas[].id/question`);
  answers may be absent. Item: {"id", "question", "context"}.

`read_inputs` picks the reader a run's model and task need and refuses inputs of the other kind
(an image folder for a text model, a table of texts for an image model). Every bad input is an
`InputError` naming the path and what is wrong, raised before anything is predicted or written.

Not here: the labelled training readers (`ftjax.data.user`, `conll`, `squad`), which need labels
and carve splits; tokenizing and image preprocessing (`ftjax.predict`, `ftjax.data`).
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any

from ftjax.data.files import read_utf8
from ftjax.data.images import check_image_file
from ftjax.data.user import IMAGE_SUFFIXES

__all__ = [
    "InputError",
    "TEXT_SUFFIXES",
    "read_images",
    "read_inputs",
    "read_questions",
    "read_texts",
    "read_words",
]

TEXT_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")
_SHOWN = 5  # bad rows / files named in one message
_COLUMNS = re.compile(r"[ \t]+")  # CoNLL columns; not str.split(), which splits other spaces
_DOCSTART = "-DOCSTART-"
_IMAGES = "/".join(sorted(IMAGE_SUFFIXES))

Item = dict[str, Any]


class InputError(ValueError):
    """An input file or folder cannot be predicted on; the message says why and what to do."""


def _some(items: list[Any]) -> str:
    head = ", ".join(str(x) for x in items[:_SHOWN])
    return head + (f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")


def _text(path: Path) -> str:
    """The file's UTF-8 text (a byte-order mark dropped); empty files are an error."""
    if not path.read_bytes().strip():
        raise InputError(f"input {path} is empty")
    try:
        return read_utf8(path)
    except ValueError as e:
        raise InputError(f"input {e}") from None


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _lists_images(path: Path) -> bool:
    """Whether a .txt file's first lines are all image paths (a list for an image model)."""
    if path.suffix.lower() != ".txt":
        return False
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [line.strip() for line, _ in zip(f, range(20)) if line.strip()]
    return bool(lines) and all(_is_image(Path(line)) for line in lines)


# ----------------------------------------------------------------------------- texts


def _missing_column(path: Path, key: str, flag: str, columns: list[str], where: str = "") -> None:
    raise InputError(
        f"{path}{where}: no column {key!r} (the run's data.{flag}; pass --{flag}=COLUMN to read "
        f"another); the columns are {columns}"
    )


def _delimited(path: Path, keys: dict[str, tuple[str, str]], delimiter: str) -> list[Item]:
    reader = csv.reader(io.StringIO(_text(path), newline=""), delimiter=delimiter)
    header = next(reader)
    for key, flag in keys.values():
        if key not in header:
            _missing_column(path, key, flag, header)
    at = {std: header.index(key) for std, (key, _) in keys.items()}
    items = []
    for row in reader:
        if not row:
            continue
        if len(row) != len(header):
            raise InputError(
                f"{path}, line {reader.line_num}: {len(row)} fields where the header has "
                f"{len(header)}; fix the row (quote fields that hold the delimiter)"
            )
        items.append({"index": len(items)} | {std: row[i] for std, i in at.items()})
    return items


def _jsonl(path: Path, keys: dict[str, tuple[str, str]]) -> list[Item]:
    items = []
    for line_no, line in enumerate(_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}, line {line_no}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise InputError(
                f"{path}, line {line_no}: expected a JSON object, got {type(obj).__name__}"
            )
        item: Item = {"index": len(items)}
        for std, (key, flag) in keys.items():
            if key not in obj:
                _missing_column(path, key, flag, sorted(obj), f", line {line_no}")
            if not isinstance(obj[key], (str, int, float)) or isinstance(obj[key], bool):
                raise InputError(
                    f"{path}, line {line_no}: {key!r} is {obj[key]!r}, not a text; give every "
                    "row a string"
                )
            item[std] = str(obj[key])
        items.append(item)
    return items


def read_texts(path: str | Path, text_key: str, text_pair_key: str | None = None) -> list[Item]:
    """The texts (and second texts) of a .csv, .tsv or .jsonl file, one item per data row."""
    path = _existing(path)
    keys = {"text": (text_key, "text_key")}
    if text_pair_key:
        keys["text_pair"] = (text_pair_key, "text_pair_key")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        items = _delimited(path, keys, "," if suffix == ".csv" else "\t")
    elif suffix in (".jsonl", ".json"):
        items = _jsonl(path, keys)
    else:
        raise InputError(
            f"input {path}: unsupported file type {suffix!r} for a text model; use "
            f"{', '.join(TEXT_SUFFIXES)}"
        )
    if not items:
        raise InputError(f"input {path} has no rows to predict on (only a header)")
    return items


# ----------------------------------------------------------------------------- images


def _checked(files: list[Path], source: Path) -> list[Item]:
    bad = [(f, why) for f in files if (why := check_image_file(f))]
    if bad:
        raise InputError(
            f"{source}: {len(bad)} of {len(files)} image files cannot be read: "
            + "; ".join(f"{f} ({why})" for f, why in bad[:_SHOWN])
            + (f"; and {len(bad) - _SHOWN} more" if len(bad) > _SHOWN else "")
        )
    return [{"path": str(f)} for f in files]


def _image_list(path: Path) -> list[Path]:
    lines = [(n, line.strip()) for n, line in enumerate(_text(path).split("\n"), 1)]
    entries = [(n, line) for n, line in lines if line]
    if not entries:
        raise InputError(f"input {path} lists no image paths")
    not_images = [f"line {n}: {line!r}" for n, line in entries if not _is_image(Path(line))]
    if not_images:
        raise InputError(
            f"{path} should list image files ({_IMAGES}) one per line, but "
            f"{_some(not_images)} {'is' if len(not_images) == 1 else 'are'} not"
        )
    files = [Path(line) if Path(line).is_absolute() else path.parent / line for _, line in entries]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise InputError(
            f"{path} lists {len(missing)} image files that do not exist: {_some(missing)} "
            "(relative paths are read from the list's folder)"
        )
    return files


def read_images(path: str | Path) -> list[Item]:
    """The image files of a folder (recursively), a .txt list of image paths, or one image."""
    path = _existing(path)
    if path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.is_file() and _is_image(f))
        if not files:
            raise InputError(
                f"image folder {path} holds no {_IMAGES} files, in it or in its subfolders"
            )
    elif _is_image(path):
        files = [path]
    elif path.suffix.lower() == ".txt":
        files = _image_list(path)
    else:
        raise InputError(
            f"input {path} is a {path.suffix or 'suffix-less'} file, but the run's model is an "
            "image model: give a folder of images, a .txt file listing image paths or an image"
        )
    return _checked(files, path)


# ----------------------------------------------------------------------------- words


def read_words(path: str | Path) -> list[Item]:
    """The sentences of a CoNLL-style file: the first column's words, sentence by sentence."""
    path = _existing(path)
    sentences: list[list[str]] = []
    words: list[str] = []
    # split("\n"), not splitlines(): those also split on \x85, \u2028 and such inside tokens
    for line in [*_text(path).split("\n"), ""]:
        fields = [f for f in _COLUMNS.split(line.rstrip("\r")) if f]
        if fields and fields[0] != _DOCSTART:
            words.append(fields[0])
        elif words:  # a blank line or a document boundary ends the sentence
            sentences.append(words)
            words = []
    if not sentences:
        raise InputError(f"input {path} holds no sentences (only -DOCSTART- lines)")
    return [{"index": i, "words": w} for i, w in enumerate(sentences)]


# ----------------------------------------------------------------------------- questions


def _field(obj: Any, key: str, kind: type, where: str) -> Any:
    if not isinstance(obj, dict):
        raise InputError(f"{where} is a {type(obj).__name__}, expected an object")
    if key not in obj:
        raise InputError(f"{where} lacks {key!r} (has {sorted(obj)})")
    if not isinstance(obj[key], kind):
        raise InputError(
            f"{where}: {key!r} is a {type(obj[key]).__name__}, expected a {kind.__name__}"
        )
    return obj[key]


def read_questions(path: str | Path) -> list[Item]:
    """The questions of a SQuAD-format JSON file with their contexts, in file order."""
    path = _existing(path)
    try:
        data = json.loads(_text(path))
    except json.JSONDecodeError as e:
        raise InputError(f"input {path} is not JSON ({e}); give a SQuAD-format file") from None
    items: list[Item] = []
    seen: set[str] = set()
    for a, article in enumerate(_field(data, "data", list, f"{path}: the top level")):
        for p, paragraph in enumerate(_field(article, "paragraphs", list, f"{path}: data[{a}]")):
            where = f"{path}: data[{a}].paragraphs[{p}]"
            context = _field(paragraph, "context", str, where)
            for q, qa in enumerate(_field(paragraph, "qas", list, where)):
                qid = _field(qa, "id", str, f"{where}.qas[{q}]")
                if qid in seen:
                    raise InputError(
                        f"{path}: question id {qid!r} appears twice; ids must be unique"
                    )
                seen.add(qid)
                question = _field(qa, "question", str, f"{path}: question {qid!r}")
                items.append({"id": qid, "question": question, "context": context})
    if not items:
        raise InputError(f"input {path} holds no questions (data[].paragraphs[].qas[])")
    return items


# ----------------------------------------------------------------------------- dispatch


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise InputError(f"input {path} does not exist")
    return path


def read_inputs(
    path: str | Path,
    *,
    kind: str,
    task: str,
    text_key: str = "text",
    text_pair_key: str | None = None,
) -> list[Item]:
    """The items of `path` for a model that reads `kind` ('text' or 'image') trained for `task`
    (a task name): images for image models, words for token classification, questions for
    extractive QA, else texts read from columns `text_key` (and `text_pair_key`)."""
    path = _existing(path)
    if kind == "image":
        return read_images(path)
    if path.is_dir() or _is_image(path) or _lists_images(path):
        what = (
            "a folder" if path.is_dir() else "an image" if _is_image(path) else "a list of images"
        )
        raise InputError(
            f"input {path} is {what}, but the run's model is a text model: give "
            + {
                "token_classification": "a CoNLL-style file of words",
                "extractive_qa": "a SQuAD-format JSON file of questions",
            }.get(task, f"a {', '.join(TEXT_SUFFIXES)} file of texts")
        )
    if task == "token_classification":
        return read_words(path)
    if task == "extractive_qa":
        return read_questions(path)
    return read_texts(path, text_key, text_pair_key)
