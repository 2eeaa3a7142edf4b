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

from ftjax.data import squad
from ftjax.data.config import DataConfig
from ftjax.data.images import ImagePreprocessor
from ftjax.data.packaged import PACKAGED, packaged_splits
from ftjax.data.packing import Packing
from ftjax.data.pipeline import Split, stack
from ftjax.data.records import RecordView
from ftjax.data.sources import DatasetSplits, tfds_splits
from ftjax.data.tokenize import TextEncoder
from ftjax.data.user import squad_splits, user_splits
from ftjax.tasks.base import Task
from ftjax.tasks.classification import Classification

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


def load_records(config: DataConfig, task: str | None = None) -> DatasetSplits:
    """The raw train/validation/test record views (before preprocessing and example limits).

    `task` (a `config.task.name`; None infers it) says how users' files' labels are read.
    """
    if config.name in ("csv", "image_folder", "conll"):
        return user_splits(config, task)
    if config.name == "squad":
        return squad_splits(config)
    if config.name in PACKAGED:
        return packaged_splits(config)
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


def text_encoder(config: DataConfig, preprocessing: dict[str, Any]) -> TextEncoder:
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
    return TextEncoder(preprocessing["tokenizer_file"], max_length, config.length_buckets)


def text_fns(encoder: TextEncoder, config: DataConfig, task: Task) -> ExampleFns:
    """Tokenize 'text' (and 'text_pair'; or a list of words) to fixed or bucketed length, add the
    task's targets; records that are already token arrays (QA windows) pass through. No
    augmentation."""

    def eval_fn(record):
        if "input_ids" in record:
            return encoder.pre_tokenized(record) | task.targets(record, None)
        encoding = encoder.encoding(record["text"], record.get("text_pair"))
        return encoder.arrays(encoding) | task.targets(record, encoding)

    def lengths(view: RecordView) -> np.ndarray | None:
        # Only padding choices need them; the texts are read (and tokenized) once up front.
        if not (config.length_buckets or config.group_by_length or config.pack):
            return None
        records = [view[i] for i in range(len(view))]
        if "input_ids" in records[0]:
            return np.asarray([len(r["input_ids"]) for r in records], np.int32)
        pairs = [r["text_pair"] for r in records] if "text_pair" in records[0] else None
        return encoder.lengths([r["text"] for r in records], pairs)

    token_pad = dict(task.token_keys)
    return ExampleFns(
        train=lambda record, rng: eval_fn(record),
        eval=eval_fn,
        collate=lambda examples: encoder.collate(examples, token_pad),
        lengths=lengths,
        pad_lengths=encoder.buckets,
    )


def packing_for(
    config: DataConfig, encoder: TextEncoder | None, task: Task, row_multiple: int
) -> Packing | None:
    """The splits' packing under `data.pack` (rows of max_length tokens), else None."""
    if not config.pack:
        return None
    if encoder is None:
        raise ValueError("data.pack packs text examples; the data are images: set pack=False")
    if task.output_level != "example":
        raise ValueError(
            f"data.pack gives one output per example; the {task.name} task has one per token: "
            "set pack=False (token-level tasks pad instead)"
        )
    return Packing(encoder.max_length, encoder.pad_id, row_multiple)


def image_fns(config: DataConfig, preprocessing: dict[str, Any], task: Task) -> ExampleFns:
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

    if task.output_level != "example":
        raise ValueError(
            f"the {task.name} task puts its head on every token; image models have no tokens: "
            "use a text model and text data"
        )

    def train_fn(record, rng):
        return {"image": prep.train(record["image"], rng)} | task.targets(record, None)

    def eval_fn(record):
        return {"image": prep.eval(record["image"])} | task.targets(record, None)

    return ExampleFns(
        train=train_fn, eval=eval_fn, collate=stack, lengths=lambda view: None, pad_lengths=()
    )


def build_splits(
    config: DataConfig,
    preprocessing: dict[str, Any],
    task: Task | None = None,
    *,
    records: DatasetSplits | None = None,
    process_index: int = 0,
    process_count: int = 1,
    row_multiple: int = 1,
) -> dict[str, Split]:
    """{'train', 'validation', 'test'} -> Split, for this process of `process_count`.

    `task` (`ftjax.tasks`) turns each record's label into the batch's targets (None:
    single-label classification over the data's classes). `records` is
    `load_records(config)` when the caller already has it (e.g. it needed the label names to build
    the model's head before the model's preprocessing was known). Extractive-QA questions become
    windows over their context here, once the tokenizer is known; each split's `references` then
    holds the contexts and answers its metrics need. Packed batches (`data.pack`) have a
    multiple of `row_multiple` rows (the process's devices, which split them).
    """
    data = records if records is not None else load_records(config, task.name if task else None)
    if task is None:
        if data.task != "classification":
            raise ValueError(
                f"{config.name} holds {data.task} data: pass its task (ftjax.tasks) to build_splits"
            )
        task = Classification(len(data.class_names), label_names=tuple(data.class_names))
    _check_kind(config, data.kind, preprocessing)
    encoder = text_encoder(config, preprocessing) if data.kind == "text" else None
    fns = text_fns(encoder, config, task) if encoder else image_fns(config, preprocessing, task)
    packing = packing_for(config, encoder, task, row_multiple)
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
        references = None
        if data.task == "extractive_qa":
            windows, references = squad.windows(
                [view[i] for i in range(len(view))],
                encoder.tokenizer,
                encoder.max_length,
                config.doc_stride,
            )
            view = RecordView(windows, {k: k for k in windows[0]})
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
            references=references,
            max_length=encoder.max_length if encoder else None,
            packing=packing,
        )
    return out
