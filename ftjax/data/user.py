"""Users' own data: a CSV / TSV / JSONL file of text (or text pairs) and a label, a folder of
images with one subfolder per class, CoNLL-style `token ... tag` files, or SQuAD-format JSON.
A label is a class name, a list of names (multi-label: a JSON list, or names joined by
`data.label_separator`), or a number (regression); `labels.py` reads them as the task says (or
infers it). Without explicit validation/test files the data is split with a fixed-seed split,
stratified by class for classification (the scikit-learn-equivalent one in splits.py).
Everything stays in memory (image files are decoded lazily); nothing is written anywhere.

Bad inputs fail here, when the data are read and before any model is built: text files that are
not UTF-8 (a UTF-8 byte-order mark, as Excel writes, is fine), rows with an empty label, a single
class, unreadable image files (every file is opened and verified, cheaply, without decoding);
an empty class folder is dropped with a warning. Not here: TFDS sources (sources.py), splitting
arithmetic (splits.py), file formats of CoNLL and SQuAD (conll.py, squad.py), preprocessing
(images.py, tokenize.py).
"""

from __future__ import annotations

import csv
import io
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ftjax.data import conll, labels, squad
from ftjax.data.config import DataConfig
from ftjax.data.files import read_utf8
from ftjax.data.images import check_image_file
from ftjax.data.records import RecordView
from ftjax.data.sources import DatasetSplits
from ftjax.data.splits import stratified_split, train_validation_test

__all__ = ["IMAGE_SUFFIXES", "read_image_folder", "read_text_file", "squad_splits", "user_splits"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
_SHOWN = 5  # bad rows / files named in one message
# The tasks each kind of user data can serve (the first is the default when there is one).
_TASKS_OF = {
    "csv": ("classification", "multi_label", "regression"),
    "image_folder": ("classification",),
    "conll": ("token_classification",),
}


def _some(items: list, shown: int = _SHOWN) -> str:
    head = ", ".join(str(x) for x in items[:shown])
    return head + (f" and {len(items) - shown} more" if len(items) > shown else "")


def _check_labels(path: Path, empty_lines: list[int], n_rows: int) -> None:
    if empty_lines:
        raise ValueError(
            f"{path}: {len(empty_lines)} of {n_rows} rows have an empty label "
            f"({'line' if len(empty_lines) == 1 else 'lines'} {_some(empty_lines)}); fill in "
            "their labels or delete those rows"
        )


def _check_columns(path: Path, columns: list[str], wanted: list[str]) -> None:
    for key in wanted:
        if key not in columns:
            raise ValueError(
                f"{path}: no column {key!r}; columns are {columns}. Set data.text_key / "
                "data.text_pair_key / data.label_key to the right names"
            )


def _empty(label: Any) -> bool:
    return label is None or (isinstance(label, str) and not label.strip())


def _read_delimited(path: Path, columns: dict[str, str], delimiter: str) -> list[dict[str, Any]]:
    rows, empty = [], []
    reader = csv.reader(io.StringIO(read_utf8(path), newline=""), delimiter=delimiter)
    header = next(reader, None)
    if header is None:
        raise ValueError(
            f"{path} is empty: expected a header row with {' and '.join(map(repr, columns.values()))}"
        )
    _check_columns(path, header, list(columns.values()))
    at = {std: header.index(src) for std, src in columns.items()}
    for row in reader:
        if not row:
            continue
        if len(row) != len(header):
            raise ValueError(
                f"{path}, line {reader.line_num}: {len(row)} fields where the header has {len(header)}; "
                "fix the row (quote fields that contain the delimiter)"
            )
        if _empty(row[at["label"]]):
            empty.append(reader.line_num)
        rows.append({std: row[i] for std, i in at.items()} | {"line": reader.line_num})
    _check_labels(path, empty, len(rows))
    return rows


def _read_jsonl(path: Path, columns: dict[str, str]) -> list[dict[str, Any]]:
    rows, empty = [], []
    for line_no, line in enumerate(read_utf8(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}, line {line_no}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise ValueError(
                f"{path}, line {line_no}: expected a JSON object, got {type(obj).__name__}"
            )
        _check_columns(path, sorted(obj), list(columns.values()))
        row = {std: obj[src] for std, src in columns.items()}
        for key in ("text", "text_pair"):
            if key in row:
                row[key] = str(row[key])
        if _empty(row["label"]):
            empty.append(line_no)
        rows.append(row | {"line": line_no})
    _check_labels(path, empty, len(rows))
    return rows


def read_text_file(
    path: str | Path, text_key: str, label_key: str, text_pair_key: str | None = None
) -> list[dict[str, Any]]:
    """Rows of a .csv, .tsv or .jsonl file as {'text', ['text_pair'], 'label' (raw), 'line'}."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    columns = {"text": text_key, **({"text_pair": text_pair_key} if text_pair_key else {})}
    columns["label"] = label_key
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _read_delimited(path, columns, ",")
    if suffix == ".tsv":
        return _read_delimited(path, columns, "\t")
    if suffix in (".jsonl", ".json"):
        return _read_jsonl(path, columns)
    raise ValueError(f"{path}: unsupported file type {suffix!r}; use .csv, .tsv or .jsonl")


def read_image_folder(path: str | Path, *, verify: bool = True) -> list[tuple[str, str]]:
    """(image file, class name) pairs of a folder with one subfolder per class.

    A subfolder without image files is left out with a warning naming it; with `verify`, every
    file is opened and verified with PIL and unreadable ones are an error naming them.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"image folder {path} does not exist")
    rows, empty = [], []
    for sub in sorted(p for p in path.iterdir() if p.is_dir()):
        files = [f for f in sorted(sub.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
        if not files:
            empty.append(sub.name)
        rows.extend((str(f), sub.name) for f in files)
    if not rows:
        raise ValueError(
            f"image folder {path} has no images: expected one subfolder per class holding "
            f"{'/'.join(sorted(IMAGE_SUFFIXES))} files"
        )
    if empty:
        warnings.warn(
            f"image folder {path}: class folder(s) {_some(empty)} hold no "
            f"{'/'.join(sorted(IMAGE_SUFFIXES))} files and are left out (no class for them); "
            "add images or remove the folders",
            UserWarning,
            stacklevel=2,
        )
    if verify:
        bad = [(f, why) for f, _ in rows if (why := check_image_file(f))]
        if bad:
            raise ValueError(
                f"image folder {path}: {len(bad)} of {len(rows)} image files cannot be read: "
                + "; ".join(f"{f} ({why})" for f, why in bad[:_SHOWN])
                + (f"; and {len(bad) - _SHOWN} more" if len(bad) > _SHOWN else "")
                + ". Replace or delete those files (re-export them as PNG or JPEG)"
            )
    return rows


def _read(config: DataConfig, path: str) -> list[dict[str, Any]]:
    """Raw rows {input keys..., 'label', 'line'} of one user file or folder."""
    if config.name == "image_folder":
        return [{"image": f, "label": y} for f, y in read_image_folder(path)]
    if config.name == "conll":
        return [
            {"text": words, "label": tags, "line": i + 1}
            for i, (words, tags) in enumerate(conll.read_conll(path))
        ]
    return read_text_file(path, config.text_key, config.label_key, config.text_pair_key)


def _encode_labels(
    raw: dict[str, list[dict[str, Any]]], task: str, config: DataConfig, paths: dict[str, Any]
) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
    """Each split's rows with 'label' in the task's standard form, and the label names."""

    def where(split, row):
        return f"{paths[split]}, line {row['line']}" if "line" in row else str(paths[split])

    def strip(row, label):
        return {k: v for k, v in row.items() if k != "line"} | {"label": label}

    if task == "regression":
        return {
            split: [
                strip(r, np.float32(labels.parse_number(r["label"], where(split, r)))) for r in rows
            ]
            for split, rows in raw.items()
        }, []
    if task == "multi_label":
        parsed = {
            split: [labels.parse_multi_label(r["label"], config.label_separator) for r in rows]
            for split, rows in raw.items()
        }
        names = sorted({n for row in parsed["train"] for n in row})
        for split, rows in parsed.items():
            labels.check_known(split, paths[split], {n for r in rows for n in r}, names, "labels")
        index = {n: i for i, n in enumerate(names)}
        return {
            split: [strip(r, labels.multi_hot(y, index)) for r, y in zip(rows, parsed[split])]
            for split, rows in raw.items()
        }, names
    if task == "token_classification":
        names = labels.tag_names([r["label"] for r in raw["train"]])
        index = {n: i for i, n in enumerate(names)}
        for split, rows in raw.items():
            labels.check_known(
                split, paths[split], {t for r in rows for t in r["label"]}, names, "tags"
            )
        return {
            split: [strip(r, np.asarray([index[t] for t in r["label"]], np.int32)) for r in rows]
            for split, rows in raw.items()
        }, names
    names = labels.class_names([str(r["label"]).strip() for r in raw["train"]])
    if len(names) < 2:
        what = (
            "class folder"
            if config.name == "image_folder"
            else f"label (column {config.label_key!r})"
        )
        raise ValueError(
            f"{config.path}: all {len(raw['train'])} training examples have the same {what} "
            f"{names[0]!r}; a classifier needs at least 2 classes: add examples of the "
            "other classes"
            + (
                ""
                if config.name == "image_folder"
                else " or set data.label_key to the label column"
            )
        )
    for split, rows in raw.items():
        labels.check_known(
            split, paths[split], {str(r["label"]).strip() for r in rows}, names, "labels"
        )
    index = {n: i for i, n in enumerate(names)}
    return {
        split: [strip(r, np.int64(index[str(r["label"]).strip()])) for r in rows]
        for split, rows in raw.items()
    }, names


def _view(rows: list[dict[str, Any]]) -> RecordView:
    return RecordView(rows, {k: k for k in rows[0]})


def user_splits(config: DataConfig, task: str | None = None) -> DatasetSplits:
    """Train/validation/test views of the user's file(s) or image folder(s); `task` (None: infer
    from the labels) says how labels are read."""
    if config.path is None:
        raise ValueError(f"data.path is required for data.name={config.name!r}")
    kind = "image" if config.name == "image_folder" else "text"
    paths = {"train": config.path, "validation": config.validation_path, "test": config.test_path}
    raw = {split: _read(config, p) for split, p in paths.items() if p is not None}
    for split, rows in raw.items():
        if not rows:
            raise ValueError(f"the {split} split ({paths[split]}) has no examples")
    allowed = _TASKS_OF[config.name]
    task = task or (
        allowed[0] if len(allowed) == 1 else labels.infer_task([r["label"] for r in raw["train"]])
    )
    if task not in allowed:
        raise ValueError(
            f"task.name={task!r} does not read labels from {config.name!r} data, which serve "
            f"{' or '.join(allowed)}; set task.name to one of them or '' (data.name='conll' is "
            "for token tags, 'squad' for extractive QA)"
        )
    encoded, names = _encode_labels(raw, task, config, paths)
    views = {split: _view(rows) for split, rows in encoded.items()}
    if len(views) < 3:
        views = _split_missing(views, config, stratify=task == "classification")
    return DatasetSplits(views, kind, names, task)


def squad_splits(config: DataConfig) -> DatasetSplits:
    """SQuAD v1.1-format JSON file(s) as question records (windowed later, with the tokenizer)."""
    if config.path is None:
        raise ValueError("data.path is required for data.name='squad' (a SQuAD v1.1 JSON file)")
    paths = {"train": config.path, "validation": config.validation_path, "test": config.test_path}
    views = {split: _view(squad.read_squad(p)) for split, p in paths.items() if p is not None}
    if len(views) < 3:
        views = _split_missing(views, config, stratify=False)
    return DatasetSplits(views, "text", [], "extractive_qa")


def _split_missing(
    views: dict[str, RecordView], config: DataConfig, *, stratify: bool
) -> dict[str, RecordView]:
    """Carve the missing validation and/or test split(s) from train with config.seed (stratified
    by class for classification)."""
    train = views["train"]
    strata = train.labels() if stratify else np.zeros(len(train), np.int64)
    if "test" not in views and "validation" not in views:
        idx = train_validation_test(
            strata, config.test_fraction, config.validation_fraction, config.seed
        )
        return {split: train.subset(i) for split, i in idx.items()}
    missing = "test" if "test" not in views else "validation"
    fraction = config.test_fraction if missing == "test" else config.validation_fraction
    keep, carved = stratified_split(strata, fraction, config.seed)
    return {**views, "train": train.subset(keep), missing: train.subset(carved)}
