"""The plain data configuration an ml_collections config maps onto (`DataConfig(**config.data)`).

Values that can be checked without reading any data are checked here, when the config is built;
everything that needs the data (files, classes, the model's preprocessing) is checked where it is read.
"""

from __future__ import annotations

import dataclasses

__all__ = ["AUGMENTATIONS", "DataConfig"]

# Training-time image augmentation: a random crop of the resized image and/or a random
# horizontal flip. Evaluation always takes the center crop.
AUGMENTATIONS = ("crop_flip", "crop", "flip", "none")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which data to read and how to split it. Preprocessing comes from the checkpoint (see build_splits).

    name: 'rotten_tomatoes' or 'fashion_mnist' (offline builders); 'conll2003',
        'conll2003_entity_types' or 'lee_pairs' (read from installed data packages, packaged.py);
        users' files: 'csv' (a CSV/TSV/JSONL file), 'image_folder' (one subfolder per class),
        'conll' (CoNLL-style token/tag files), 'squad' (SQuAD v1.1 JSON); or any TFDS dataset
        name ('imdb_reviews', 'cifar10').
    data_dir: where TFDS datasets are prepared/read (default: TFDS's own default).
    path / validation_path / test_path: user files or folders; without validation/test paths the
        data is split with `test_fraction` and `validation_fraction` (stratified, fixed `seed`).
    text_key / image_key / label_key: column or feature names in the source; text_pair_key: the
        second text of sentence-pair data (None: single texts), tokenized as a pair with segment
        ids, truncation trimming the longer text first.
    label_separator: multi-label CSV/TSV cells name their labels joined by it ('PER,LOC').
    doc_stride: extractive QA: tokens of overlap between the windows of a long context.
    max_length: token length (default: the checkpoint's); length_buckets: optional shorter pad lengths for text batches.
    group_by_length: text training: sort each window of this many batches by token length, then
        shuffle the batches, so batches pad little (0: off; pair it with length_buckets).
    pack: text: pack several examples into each row of max_length tokens (`ftjax.data.packing`),
        segment-masked, positions restarting per example; replaces length_buckets and
        group_by_length. Example-level tasks on BERT-family encoders (not DeBERTa).
    image_size: side of the square crop fed to the model (default: the checkpoint's).
    augment: training-image augmentation, one of AUGMENTATIONS: 'crop_flip' (random crop of the
        resized image and a random horizontal flip, the default), 'crop', 'flip' or 'none' (the
        evaluation center crop). Use 'crop' or 'none' for digits and text, which a flip changes.
    train_examples / eval_examples: optional caps for quick runs (first N of each split).
    seed: shuffling, augmentation and user-data split seed.
    download: let TFDS download and prepare a catalogue dataset (needs the internet).
    validation_split / test_split: the catalogue's split names to use for validation and test; None
        carves validation from train (`validation_fraction`) / evaluates test on validation. GLUE's
        test labels are hidden, so GLUE configs set test_split='validation', validation_split=None.
    """

    name: str
    data_dir: str | None = None
    path: str | None = None
    validation_path: str | None = None
    test_path: str | None = None
    text_key: str = "text"
    image_key: str = "image"
    label_key: str = "label"
    text_pair_key: str | None = None
    label_separator: str = ","
    doc_stride: int = 128
    max_length: int | None = None
    length_buckets: tuple[int, ...] = ()
    group_by_length: int = 0
    pack: bool = False
    image_size: int | None = None
    augment: str = "crop_flip"
    train_examples: int | None = None
    eval_examples: int | None = None
    test_fraction: float = 0.2
    validation_fraction: float = 0.1
    seed: int = 0
    download: bool = False
    validation_split: str | None = "validation"
    test_split: str | None = "test"
    num_threads: int = 4
    prefetch_batches: int = 8

    def __post_init__(self):
        if self.pack and (self.length_buckets or self.group_by_length):
            raise ValueError(
                "config.data.pack: packing fills rows of max_length tokens, which replaces "
                f"length_buckets {tuple(self.length_buckets)} and group_by_length "
                f"{self.group_by_length}: set length_buckets=() and group_by_length=0, or pack=False"
            )
        if self.augment not in AUGMENTATIONS:
            raise ValueError(
                f"config.data.augment: is {self.augment!r}; use one of {list(AUGMENTATIONS)}"
            )
