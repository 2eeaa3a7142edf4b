"""TFDS builder for Fashion-MNIST from the Debian package `dataset-fashion-mnist`, prepared offline.

Source: the IDX files in /usr/share/datasets/fashion-mnist/. Splits: the official 10,000-image test
set, and the official 60,000-image train set carved into 55,000 train and 5,000 validation images
by `np.random.RandomState(0).permutation(60000)` (first 5,000 indices, sorted, are validation).
Images are stored raw as uint8[28, 28, 1] (a Tensor feature: TFDS's Image feature needs TensorFlow
to encode PNGs, raw bytes do not).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

__all__ = [
    "INSTALL_HINT",
    "SOURCE_DIR",
    "FILES",
    "CLASS_NAMES",
    "VALIDATION_SIZE",
    "SEED",
    "source_files",
    "read_idx",
    "validation_indices",
    "FashionMnist",
]

INSTALL_HINT = "apt-get install -y dataset-fashion-mnist"
SOURCE_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
CLASS_NAMES = [
    "t-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
]
VALIDATION_SIZE = 5000
SEED = 0


def source_files() -> dict[str, Path]:
    """The four IDX files, or a clear error naming the missing one and the install command."""
    paths = {key: SOURCE_DIR / name for key, name in FILES.items()}
    for path in paths.values():
        if not path.is_file():
            raise FileNotFoundError(
                f"fashion_mnist needs {path}, which is missing; install it with: {INSTALL_HINT}"
            )
    return paths


def read_idx(path: Path) -> np.ndarray:
    """Read a gzipped IDX array (unsigned bytes), checking its header against its size."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    if data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise ValueError(
            f"{path} is not an unsigned-byte IDX file (header {data[:4]!r}); reinstall: {INSTALL_HINT}"
        )
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(
            f"{path} holds {body.size} bytes, its header says {shape}; reinstall: {INSTALL_HINT}"
        )
    return body.reshape(shape)


def validation_indices(num_train: int = 60000) -> np.ndarray:
    """Sorted indices of the official train set that form the validation carve."""
    return np.sort(np.random.RandomState(SEED).permutation(num_train)[:VALIDATION_SIZE])


class FashionMnist(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Fashion-MNIST: 28x28 grey images of 10 clothing classes."""

    # Not "fashion_mnist": that name belongs to TFDS's own (online, PNG-encoded) builder.
    name = "fashion_mnist_offline"
    # Nothing is downloaded. Setting this also skips TFDS's checksum-file lookup, whose code_path
    # resolution imports `importlib_resources` (not installed, not needed on Python 3.11).
    url_infos = None
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Official 60k/10k; 5k validation carved from train with seed 0."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(names=CLASS_NAMES),
                }
            ),
            supervised_keys=("image", "label"),
            disable_shuffling=True,  # keep the official order
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Everything is local: nothing is downloaded.
        paths = source_files()
        print(f"fashion_mnist: reading {paths['train_images'].parent}", flush=True)
        arrays = {key: read_idx(path) for key, path in paths.items()}
        is_val = np.zeros(len(arrays["train_labels"]), bool)
        is_val[validation_indices(len(is_val))] = True
        train_idx, val_idx = np.flatnonzero(~is_val), np.flatnonzero(is_val)
        test_idx = np.arange(len(arrays["test_labels"]))
        print(
            f"fashion_mnist: train {len(train_idx)}, validation {len(val_idx)}, test {len(test_idx)}",
            flush=True,
        )
        train_images, train_labels = arrays["train_images"], arrays["train_labels"]
        return {
            "train": self._generate_examples(train_images, train_labels, train_idx),
            "validation": self._generate_examples(train_images, train_labels, val_idx),
            "test": self._generate_examples(arrays["test_images"], arrays["test_labels"], test_idx),
        }

    def _generate_examples(self, images: np.ndarray, labels: np.ndarray, indices: np.ndarray):
        for position, i in enumerate(indices):
            yield position, {"image": images[i][:, :, None], "label": int(labels[i])}
