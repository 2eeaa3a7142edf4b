"""The build logic behind `ftjax.data.build_splits`: read the records, check that the data suit the
model (text data for a text model, images for an image model), turn each kind into per-example
functions (`ExampleFns`) and wrap every split in a grain `Split`.

Not here: reading sources (sources.py, user.py), image and token preprocessing themselves
(images.py, tokenize.py), batching and sharding (pipeline.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import grain
import numpy as np

from ftjax.data.config import DataConfig
from ftjax.data.images import ImagePreprocessor
from ftjax.data.pipeline import Split, stack
from ftjax.data.records import RecordView
from ftjax.data.sources import DatasetSplits, tfds_splits
from ftjax.data.tokenize import TextEncoder
from ftjax.data.user import user_splits

__all__ = ["ExampleFns", "build_splits", "load_records", "model_kind"]

Example = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class ExampleFns:
    """How the records of one kind of data become batches.

    train: (record, numpy Generator) -> example, with augmentation; eval: record -> example;
    collate: examples -> batch; lengths: a view's token lengths when padding choices need them,
    else None; pad_lengths: the padded lengths a batch may take (text length buckets), else ().
    """

    train: Callable[[dict[str, Any], np.random.Generator], Example]
    eval: Callable[[dict[str, Any]], Example]
    collate: Callable[[list[Example]], Example]
    lengths: Callable[[RecordView], np.ndarray | None]
    pad_lengths: tuple[int, ...]


def load_records(config: DataConfig) -> DatasetSplits:
    """The raw train/validation/test record views (before preprocessing and example limits)."""
    if config.name in ("csv", "image_folder"):
        return user_splits(config)
    return tfds_splits(config)


def model_kind(preprocessing: dict[str, Any]) -> str | None:
    """'text' for a model whose preprocessing is a tokenizer, 'image' for one with a pixel
    normalisation, None when the keys say neither."""
    if "tokenizer_file" in preprocessing:
        return "text"
    if {"mean", "std"} & set(preprocessing):
        return "image"
    return None


def _check_kind(config: DataConfig, data_kind: str, preprocessing: dict[str, Any]) -> None:
    kind = model_kind(preprocessing)
    if kind is None or kind == data_kind:
        return
    source = f"data.name={config.name!r}" + (f" ({config.path})" if config.path else "")
    if kind == "text":
        raise ValueError(
            f"the model is a text model but the data are images ({source}): use an image model "
            "(EfficientNet-Lite, ResNet, ViT) for model.source, or text data"
        )
    raise ValueError(
        f"the model is an image model but the data are text ({source}): use a text model "
        "(a BERT-family checkpoint) for model.source, or image data"
    )


def _limit(view: RecordView, limit: int | None, split: str) -> RecordView:
    if limit is None:
        return view
    if limit <= 0:
        raise ValueError(f"the example limit for {split} must be positive, got {limit}")
    return view.subset(np.arange(min(limit, len(view))))


def text_fns(config: DataConfig, preprocessing: dict[str, Any]) -> ExampleFns:
    """Tokenize 'text' to fixed (or bucketed) length; no augmentation."""
    if not preprocessing.get("tokenizer_file"):
        raise ValueError(
            "text data needs the checkpoint's tokenizer.json (preprocessing['tokenizer_file']); "
            "put tokenizer.json in the model folder"
        )
    if config.group_by_length < 0:
        raise ValueError(
            f"data.group_by_length must be >= 0 (batches per sorted window; 0 is off), got {config.group_by_length}"
        )
    max_length = config.max_length or preprocessing.get("max_length")
    if max_length is None:
        raise ValueError("set data.max_length (the checkpoint gave no max_length)")
    max_length = min(max_length, preprocessing.get("max_length") or max_length)
    encoder = TextEncoder(preprocessing["tokenizer_file"], max_length, config.length_buckets)

    def eval_fn(record):
        return encoder.encode(record["text"]) | {"label": np.int32(record["label"])}

    def lengths(view: RecordView) -> np.ndarray | None:
        # Only padding choices need them; the texts are read (and tokenized) once up front.
        if not (config.length_buckets or config.group_by_length):
            return None
        return encoder.lengths([view[i]["text"] for i in range(len(view))])

    return ExampleFns(
        train=lambda record, rng: eval_fn(record),
        eval=eval_fn,
        collate=encoder.collate,
        lengths=lengths,
        pad_lengths=encoder.buckets,
    )


def image_fns(config: DataConfig, preprocessing: dict[str, Any]) -> ExampleFns:
    """Resize, crop and normalise 'image'; training examples augmented as data.augment says."""
    missing = {"mean", "std"} - set(preprocessing)
    if missing:
        raise ValueError(
            f"image data needs the model's pixel normalisation (preprocessing keys {sorted(missing)} are missing)"
        )
    if config.group_by_length:
        raise ValueError("data.group_by_length applies to text only; set it to 0 for image data")
    size = config.image_size or preprocessing.get("image_size")
    if size is None:
        raise ValueError("set data.image_size (the checkpoint gave no image_size)")
    prep = ImagePreprocessor(size, preprocessing["mean"], preprocessing["std"], config.augment)

    def train_fn(record, rng):
        return {"image": prep.train(record["image"], rng), "label": np.int32(record["label"])}

    def eval_fn(record):
        return {"image": prep.eval(record["image"]), "label": np.int32(record["label"])}

    return ExampleFns(
        train=train_fn, eval=eval_fn, collate=stack, lengths=lambda view: None, pad_lengths=()
    )


def build_splits(
    config: DataConfig,
    preprocessing: dict[str, Any],
    *,
    records: DatasetSplits | None = None,
    process_index: int = 0,
    process_count: int = 1,
) -> dict[str, Split]:
    """{'train', 'validation', 'test'} -> Split, for this process of `process_count`.

    `records` is `load_records(config)` when the caller already has it (e.g. it needed the class
    names to build the model's head before the model's preprocessing was known).
    """
    data = records if records is not None else load_records(config)
    _check_kind(config, data.kind, preprocessing)
    fns = (text_fns if data.kind == "text" else image_fns)(config, preprocessing)
    options = grain.ReadOptions(
        num_threads=config.num_threads, prefetch_buffer_size=config.prefetch_batches
    )
    out = {}
    for split, view in data.splits.items():
        view = _limit(
            view, config.train_examples if split == "train" else config.eval_examples, split
        )
        if len(view) == 0:
            raise ValueError(f"the {split} split of {config.name} has no examples")
        out[split] = Split(
            view,
            train_fn=fns.train,
            eval_fn=fns.eval,
            collate=fns.collate,
            process_index=process_index,
            process_count=process_count,
            read_options=options,
            lengths=fns.lengths(view),
            group_by_length=config.group_by_length if split == "train" else 0,
            pad_lengths=fns.pad_lengths if config.length_buckets else (),
        )
    return out
