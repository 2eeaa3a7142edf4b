"""Any TFDS dataset (offline builder or catalogue name) as train/validation/test `RecordView`s.

`rotten_tomatoes` and `fashion_mnist` come from ftjax's offline builders (prepared on first use);
any other name goes through `tfds.data_source` (array_record, no TensorFlow needed to read), and
is downloaded and prepared by TFDS only when `config.download` is set. A dataset without a
validation split gets one carved from train with a fixed seed.

Reading a prepared dataset needs no TensorFlow, but many catalogue builders (cifar10 among them)
use it to prepare theirs: without TensorFlow installed that is an error saying so, raised before
anything is downloaded. Not here: users' own files (user.py), preprocessing, batching.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import re
from dataclasses import dataclass

import numpy as np
import tensorflow_datasets as tfds

from ftjax.data.builders import OFFLINE_BUILDERS, load_builder
from ftjax.data.config import DataConfig
from ftjax.data.records import RecordView

__all__ = ["DatasetSplits", "builder_needs_tensorflow", "default_data_dir", "tfds_splits"]

# `import tensorflow as tf`, TFDS's lazy `from ...lazy_imports_utils import tensorflow as tf`,
# `import tensorflow.compat.v2 as tf`; not `import tensorflow_datasets`.
_IMPORTS_TF = re.compile(r"^\s*(from\s+\S+\s+)?import\s+tensorflow\b(?!_)", re.MULTILINE)


@dataclass
class DatasetSplits:
    """The three splits as record views, what they hold ('text' or 'image'), the label names
    (classes, multi-label names or tags; empty for regression and QA) and the task the labels
    describe ('classification', 'multi_label', 'regression', 'token_classification',
    'extractive_qa')."""

    splits: dict[str, RecordView]
    kind: str
    class_names: list[str]
    task: str = "classification"


def _feature_keys(info: tfds.core.DatasetInfo, config: DataConfig) -> tuple[str, str, str]:
    """(kind, input key, label key): config keys if the dataset has them, else its supervised keys."""
    features = info.features
    names = set(features.keys())
    label_key = config.label_key
    for kind, key in (("text", config.text_key), ("image", config.image_key)):
        if key in names and label_key in names:
            return kind, key, label_key
    if info.supervised_keys and len(info.supervised_keys) == 2:
        key, label_key = info.supervised_keys
        kind = (
            "image"
            if isinstance(features[key], (tfds.features.Image, tfds.features.Tensor))
            else "text"
        )
        return kind, key, label_key
    raise ValueError(
        f"dataset {info.name} has features {sorted(names)}; set data.text_key or data.image_key and "
        f"data.label_key (now {config.text_key!r}/{config.image_key!r}/{config.label_key!r}) to existing ones"
    )


def _to_str(record: dict) -> dict:
    for key in ("text", "text_pair"):
        if isinstance(record.get(key), bytes):
            record[key] = record[key].decode("utf-8")
    return record


def _carve_validation(
    train: RecordView, fraction: float, seed: int
) -> tuple[RecordView, RecordView]:
    order = np.random.RandomState(seed).permutation(len(train))
    n_val = int(round(fraction * len(train)))
    return train.subset(np.sort(order[n_val:])), train.subset(np.sort(order[:n_val]))


def builder_needs_tensorflow(builder: tfds.core.DatasetBuilder) -> bool:
    """Whether the module defining this TFDS builder imports TensorFlow (to prepare the data)."""
    try:
        source = inspect.getsource(inspect.getmodule(type(builder)))
    except (OSError, TypeError):
        return False
    return bool(_IMPORTS_TF.search(source))


def _check_can_prepare(builder: tfds.core.DatasetBuilder, config: DataConfig) -> None:
    if builder.is_prepared() or not config.download:
        return
    if builder_needs_tensorflow(builder) and importlib.util.find_spec("tensorflow") is None:
        raise ImportError(
            f"TFDS prepares dataset {config.name!r} with TensorFlow, which is not installed: "
            "pip install tensorflow (only preparing needs it; ftjax reads the prepared "
            "array_record files without it), or prepare the dataset on a machine that has "
            "TensorFlow (tfds build --file_format=array_record) and point data.data_dir at it"
        )


def _not_prepared(builder: tfds.core.DatasetBuilder, config: DataConfig) -> ValueError:
    return ValueError(
        f"TFDS dataset {config.name!r} is not prepared in {builder.data_dir} (array_record "
        "format); set data.download=True to download and prepare it (needs the internet), or "
        "point data.data_dir at a folder where it is prepared"
    )


def default_data_dir() -> str:
    """TFDS's own default: $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
    return os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))


def tfds_splits(config: DataConfig) -> DatasetSplits:
    """Train/validation/test record views of a TFDS dataset."""
    if config.name in OFFLINE_BUILDERS:
        builder = load_builder(config.name, config.data_dir or default_data_dir())
        read = builder.as_data_source
    else:
        builder = tfds.builder(config.name, data_dir=config.data_dir)
        _check_can_prepare(builder, config)

        def read(split):
            try:
                return tfds.data_source(
                    config.name, split=split, data_dir=config.data_dir, download=config.download
                )
            except (NotImplementedError, FileNotFoundError, AssertionError) as e:
                if config.download or builder.is_prepared():
                    raise
                raise _not_prepared(builder, config) from e

    info = builder.info
    kind, key, label_key = _feature_keys(info, config)
    rename = {key: kind, label_key: "label"}
    if config.text_pair_key:
        if config.text_pair_key not in info.features:
            raise ValueError(
                f"dataset {info.name} has no feature data.text_pair_key={config.text_pair_key!r}; "
                f"its features are {sorted(info.features.keys())}"
            )
        rename[config.text_pair_key] = "text_pair"
    available = set(info.splits.keys())
    views = {}
    for split, source_split in (
        ("train", "train"),
        ("validation", config.validation_split),
        ("test", config.test_split),
    ):
        if source_split is None or (available and source_split not in available):
            continue
        views[split] = RecordView(read(source_split), rename, convert=_to_str)
    if "train" not in views:
        raise ValueError(
            f"dataset {config.name} has no 'train' split (splits: {sorted(available)})"
        )
    if "validation" not in views:
        views["train"], views["validation"] = _carve_validation(
            views["train"], config.validation_fraction, config.seed
        )
    if "test" not in views:
        views["test"] = views["validation"]
    label_feature = info.features[label_key]
    if isinstance(label_feature, tfds.features.ClassLabel):
        return DatasetSplits(views, kind, list(label_feature.names))
    if np.issubdtype(np.dtype(label_feature.dtype), np.floating):  # e.g. GLUE's STS-B scores
        return DatasetSplits(views, kind, [], "regression")
    return DatasetSplits(views, kind, [])
