"""ftjax input pipelines: TFDS (offline builders or any catalogue name) or users' own files, read
with grain into fixed-shape numpy batches, sharded per process, resumable mid-epoch.

API (what the training loop calls)::

    from ftjax.data import DataConfig, build_splits
    splits = build_splits(DataConfig(name="rotten_tomatoes", data_dir=...), preprocessing,
                          process_index=jax.process_index(), process_count=jax.process_count())
    train = splits["train"]                       # also "validation", "test": ftjax.data.Split
    train.num_examples                            # whole split, all processes
    train.steps_per_epoch(batch_size)             # remainder dropped; batch_size is global
    it = train.train_iterator(batch_size, seed=0) # endless; next(it) -> batch dict
    state = it.get_state(); it.set_state(state)   # exact mid-epoch restore (a small dict)
    for batch in splits["validation"].eval_batches(batch_size): ...  # one pass, batch["mask"]

`preprocessing` comes from the pretrained loader: for text `{"tokenizer_file": path, "max_length": n}`,
for images `{"image_size": n, "mean": (r, g, b), "std": (r, g, b)}` in 0..255 pixel units.
Batches: text 'input_ids', 'attention_mask', 'token_type_ids' int32[B, L] and 'label' int32[B];
images 'image' float32[B, H, W, 3] (normalised) and 'label' int32[B]; eval batches add 'mask' bool[B].
B is the per-process share of the global batch size. `DataConfig` documents the data fields.

Offline datasets: 'rotten_tomatoes' (9,180 / 1,021 / 2,551) and 'fashion_mnist' (55,000 / 5,000 /
10,000), prepared into `data_dir` on first use (builders/). Not here: models, training, metrics.
"""

from __future__ import annotations

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

__all__ = ["DataConfig", "Split", "build_splits", "load_records"]


def load_records(config: DataConfig) -> DatasetSplits:
    """The raw train/validation/test record views (before preprocessing and example limits)."""
    if config.name in ("csv", "image_folder"):
        return user_splits(config)
    return tfds_splits(config)


def _limit(view: RecordView, limit: int | None, split: str) -> RecordView:
    if limit is None:
        return view
    if limit <= 0:
        raise ValueError(f"the example limit for {split} must be positive, got {limit}")
    return view.subset(np.arange(min(limit, len(view))))


def _text_fns(config: DataConfig, preprocessing: dict[str, Any]):
    if "tokenizer_file" not in preprocessing:
        raise ValueError(
            f"text data needs preprocessing['tokenizer_file'] (the checkpoint's tokenizer.json); got {sorted(preprocessing)}"
        )
    max_length = config.max_length or preprocessing.get("max_length")
    if max_length is None:
        raise ValueError("set data.max_length (the checkpoint gave no max_length)")
    max_length = min(max_length, preprocessing.get("max_length", max_length))
    encoder = TextEncoder(preprocessing["tokenizer_file"], max_length, config.length_buckets)

    def eval_fn(record):
        return encoder.encode(record["text"]) | {"label": np.int32(record["label"])}

    def lengths(view: RecordView) -> np.ndarray | None:
        # Only padding choices need them; the texts are read (and tokenized) once up front.
        if not (config.length_buckets or config.group_by_length):
            return None
        return encoder.lengths([view[i]["text"] for i in range(len(view))])

    return (lambda record, rng: eval_fn(record)), eval_fn, encoder.collate, lengths, encoder.buckets


def _image_fns(config: DataConfig, preprocessing: dict[str, Any]):
    missing = {"mean", "std"} - set(preprocessing)
    if missing:
        raise ValueError(
            f"image data needs preprocessing keys {sorted(missing)} (the model's normalisation)"
        )
    size = config.image_size or preprocessing.get("image_size")
    if size is None:
        raise ValueError("set data.image_size (the checkpoint gave no image_size)")
    prep = ImagePreprocessor(size, preprocessing["mean"], preprocessing["std"])

    def train_fn(record, rng):
        return {"image": prep.train(record["image"], rng), "label": np.int32(record["label"])}

    def eval_fn(record):
        return {"image": prep.eval(record["image"]), "label": np.int32(record["label"])}

    if config.group_by_length:
        raise ValueError("data.group_by_length applies to text only; set it to 0 for image data")
    return train_fn, eval_fn, stack, lambda view: None, ()


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
    make = _text_fns if data.kind == "text" else _image_fns
    if config.group_by_length < 0:
        raise ValueError(
            f"data.group_by_length must be >= 0 (batches per sorted window; 0 is off), got {config.group_by_length}"
        )
    train_fn, eval_fn, collate, lengths, pad_lengths = make(config, preprocessing)
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
            train_fn=train_fn,
            eval_fn=eval_fn,
            collate=collate,
            process_index=process_index,
            process_count=process_count,
            read_options=options,
            lengths=lengths(view),
            group_by_length=config.group_by_length if split == "train" else 0,
            pad_lengths=pad_lengths if config.length_buckets else (),
        )
    return out
