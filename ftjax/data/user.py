"""Users' own data: a CSV / TSV / JSONL file of text and label, or a folder of images with one
subfolder per class. Without explicit validation/test files the data is split with a stratified
fixed-seed split (the scikit-learn-equivalent one in splits.py). Everything stays in memory (image
files are decoded lazily); nothing is written anywhere.

Bad inputs fail here, when the data are read and before any model is built: text files that are
not UTF-8 (a UTF-8 byte-order mark, as Excel writes, is fine), rows with an empty label, a single
class, unreadable image files (every file is opened and verified, cheaply, without decoding);
an empty class folder is dropped with a warning. Not here: TFDS sources (sources.py), splitting
arithmetic (splits.py), preprocessing (images.py, tokenize.py).
"""

from __future__ import annotations

import csv
import io
import json
import warnings
from pathlib import Path

import numpy as np

from ftjax.data.config import DataConfig
from ftjax.data.images import check_image_file
from ftjax.data.records import RecordView
from ftjax.data.sources import DatasetSplits
from ftjax.data.splits import stratified_split, train_validation_test

__all__ = ["IMAGE_SUFFIXES", "read_image_folder", "read_text_file", "user_splits"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
_SHOWN = 5  # bad rows / files named in one message


def _some(items: list, shown: int = _SHOWN) -> str:
    head = ", ".join(str(x) for x in items[:shown])
    return head + (f" and {len(items) - shown} more" if len(items) > shown else "")


def _read_utf8(path: Path) -> str:
    """The file's text; a UTF-8 byte-order mark (Excel's 'CSV UTF-8') is dropped."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ValueError(
            f"{path} is not UTF-8 text: byte 0x{data[e.start]:02x} on line {line} (byte offset "
            f"{e.start}) is not valid UTF-8 ({e.reason}); the file was probably saved in another "
            "encoding (e.g. Latin-1 or Windows-1252): re-save it as UTF-8 (in Excel: Save As "
            "'CSV UTF-8')"
        ) from None


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
                f"{path}: no column {key!r}; columns are {columns}. Set data.text_key / data.label_key to the right names"
            )


def _read_delimited(
    path: Path, text_key: str, label_key: str, delimiter: str
) -> list[tuple[str, str]]:
    rows, empty = [], []
    reader = csv.reader(io.StringIO(_read_utf8(path), newline=""), delimiter=delimiter)
    header = next(reader, None)
    if header is None:
        raise ValueError(
            f"{path} is empty: expected a header row with {text_key!r} and {label_key!r}"
        )
    _check_columns(path, header, [text_key, label_key])
    t, y = header.index(text_key), header.index(label_key)
    for row in reader:
        if not row:
            continue
        if len(row) != len(header):
            raise ValueError(
                f"{path}, line {reader.line_num}: {len(row)} fields where the header has {len(header)}; "
                "fix the row (quote fields that contain the delimiter)"
            )
        if not row[y].strip():
            empty.append(reader.line_num)
        rows.append((row[t], row[y].strip()))
    _check_labels(path, empty, len(rows))
    return rows


def _read_jsonl(path: Path, text_key: str, label_key: str) -> list[tuple[str, str]]:
    rows, empty = [], []
    for line_no, line in enumerate(_read_utf8(path).splitlines(), 1):
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
        _check_columns(path, sorted(obj), [text_key, label_key])
        label = "" if obj[label_key] is None else str(obj[label_key]).strip()
        if not label:
            empty.append(line_no)
        rows.append((str(obj[text_key]), label))
    _check_labels(path, empty, len(rows))
    return rows


def read_text_file(path: str | Path, text_key: str, label_key: str) -> list[tuple[str, str]]:
    """(text, label string) rows of a .csv, .tsv or .jsonl file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _read_delimited(path, text_key, label_key, ",")
    if suffix == ".tsv":
        return _read_delimited(path, text_key, label_key, "\t")
    if suffix in (".jsonl", ".json"):
        return _read_jsonl(path, text_key, label_key)
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


def _class_names(labels: list[str]) -> list[str]:
    names = sorted(set(labels))
    if all(n.lstrip("-").isdigit() for n in names):
        names.sort(key=int)  # "10" after "9", not after "1"
    return names


def _view(rows: list[tuple[str, int]], kind: str) -> RecordView:
    return RecordView(
        [{kind: x, "label": np.int64(y)} for x, y in rows], {kind: kind, "label": "label"}
    )


def user_splits(config: DataConfig) -> DatasetSplits:
    """Train/validation/test views of the user's file(s) or image folder(s)."""
    if config.path is None:
        raise ValueError(f"data.path is required for data.name={config.name!r}")
    kind = "image" if config.name == "image_folder" else "text"

    def read(path) -> list[tuple[str, str]]:
        if kind == "image":
            return read_image_folder(path)
        return read_text_file(path, config.text_key, config.label_key)

    raw = {"train": read(config.path)}
    paths = {"train": config.path, "validation": config.validation_path, "test": config.test_path}
    for split in ("validation", "test"):
        if paths[split] is not None:
            raw[split] = read(paths[split])
    class_names = _class_names([y for _, y in raw["train"]])
    if len(class_names) < 2:
        what = "class folder" if kind == "image" else f"label (column {config.label_key!r})"
        raise ValueError(
            f"{config.path}: all {len(raw['train'])} training examples have the same {what} "
            f"{class_names[0]!r}; a classifier needs at least 2 classes: add examples of the "
            "other classes"
            + ("" if kind == "image" else " or set data.label_key to the label column")
        )
    index = {name: i for i, name in enumerate(class_names)}
    for split, rows in raw.items():
        if not rows:
            raise ValueError(f"the {split} split ({paths[split]}) has no examples")
        unseen = sorted({y for _, y in rows} - set(index))
        if unseen:
            raise ValueError(
                f"labels {unseen} appear in the {split} split ({paths[split]}) but never in train ({config.path}); "
                "a model cannot learn them: add training examples or drop those rows"
            )
    encoded = {split: [(x, index[y]) for x, y in rows] for split, rows in raw.items()}
    views = {split: _view(rows, kind) for split, rows in encoded.items()}
    if len(views) < 3:
        views = _split_missing(views, config)
    return DatasetSplits(views, kind, class_names)


def _split_missing(views: dict[str, RecordView], config: DataConfig) -> dict[str, RecordView]:
    """Carve the missing validation and/or test split(s) from train, stratified, with config.seed."""
    train = views["train"]
    labels = train.labels()
    if "test" not in views and "validation" not in views:
        idx = train_validation_test(
            labels, config.test_fraction, config.validation_fraction, config.seed
        )
        return {split: train.subset(i) for split, i in idx.items()}
    missing = "test" if "test" not in views else "validation"
    fraction = config.test_fraction if missing == "test" else config.validation_fraction
    keep, carved = stratified_split(labels, fraction, config.seed)
    return {**views, "train": train.subset(keep), missing: train.subset(carved)}
