"""What each supported architecture tells the loader: how to build it and how its keys map.

A key rule is `(flax_regex, torch_template, transform)`: the regex fully matches a '/'-joined
Flax param path, `re.sub`-style groups (\\1) fill the template to name the checkpoint key, and the
transform turns the checkpoint array into the Flax layout. Rules are listed in plain sight in
each `arch_*.py`, so a reader can check a mapping without running anything.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ftjax.models.base import Model
from ftjax.models.transformer import POOLINGS

__all__ = [
    "Transform",
    "linear",
    "conv",
    "copy",
    "TRANSFORMS",
    "KeyRule",
    "ModelOptions",
    "text_task_fields",
    "Architecture",
]

Transform = Callable[[np.ndarray], np.ndarray]


def linear(w: np.ndarray) -> np.ndarray:
    """torch Linear (out, in) -> Flax Dense (in, out)."""
    return np.ascontiguousarray(w.T)


def conv(w: np.ndarray) -> np.ndarray:
    """torch Conv2d (out, in, kh, kw) -> Flax Conv (kh, kw, in, out)."""
    return np.ascontiguousarray(w.transpose(2, 3, 1, 0))


def copy(w: np.ndarray) -> np.ndarray:
    return w


TRANSFORMS: dict[str, Transform] = {"copy": copy, "linear": linear, "conv": conv}

KeyRule = tuple[str, str, "str | Transform"]


@dataclasses.dataclass(frozen=True)
class ModelOptions:
    """Task-side choices the checkpoint does not make.

    `pooling` is what a text encoder's head reads: "cls" (the architecture's pooler or first
    token), "mean" (masked mean of the tokens), or "tokens" (no pooling: the head, one Dense, on
    every token, logits [B, L, num_classes], for token classification and extractive QA). Image
    models pool their own way and ignore it, except "tokens", which `load_pretrained` refuses.
    """

    num_classes: int
    dtype: str = "float32"  # compute dtype; params stay float32 ("bfloat16" on accelerators)
    pooling: str = "cls"  # one of ftjax.models.transformer.POOLINGS
    dropout: float | None = None  # None keeps the checkpoint's rate

    def __post_init__(self):
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling {self.pooling!r} is not one of {POOLINGS}")


def text_task_fields(
    options: ModelOptions, classifier_dropout_key: str = "classifier_dropout"
) -> dict[str, Any]:
    """The task-side fields of a text encoder's config: head size, pooling, dtype and, when the run
    sets `options.dropout`, that one rate for the hidden, attention and classifier dropouts
    (`classifier_dropout_key` is the config's name for the last, e.g. ALBERT's
    `classifier_dropout_prob`)."""
    task: dict[str, Any] = {
        "num_classes": options.num_classes,
        "pooling": options.pooling,
        "dtype": options.dtype,
    }
    if options.dropout is not None:
        task.update(
            hidden_dropout_prob=options.dropout,
            attention_probs_dropout_prob=options.dropout,
            **{classifier_dropout_key: options.dropout},
        )
    return task


@dataclasses.dataclass(frozen=True)
class Architecture:
    """How to build one architecture family from its checkpoint config and map its keys.

    Attributes:
      name: "bert", "efficientnet_lite", "resnet", "vit".
      detect: True when a checkpoint config (config.json as a dict) describes this family.
      build: (checkpoint config, options) -> Model with a new `num_classes` head.
      key_rules: checkpoint config -> the rules mapping every backbone Flax path to a checkpoint key.
      ignored_keys: regexes of checkpoint keys that are not parameters (buffers such as
        `embeddings.position_ids`, `num_batches_tracked`); never reported as unexpected.
      key_prefixes: prefixes a checkpoint may put before every key ("bert." in a
        BertForSequenceClassification file); the loader strips the one that fits.
      key_aliases: other names checkpoints give the same parameter, as (regex fully matching a
        checkpoint key, `re.sub` template of the name the key rules use) pairs: the original BERT
        files' `LayerNorm.gamma` is `LayerNorm.weight`. Keys are renamed before matching; a file
        holding both names of one parameter is an error.
      preprocessing: (checkpoint config, folder) -> settings the input pipeline needs
        (tokenizer file and max length, or image size / mean / std).
      config_for_weights: for families whose checkpoints ship no config.json (the
        efficientnet-lite packages): weights file -> its built-in config, or None if not recognised.
      at_image_size: for image families whose params fix the input size (ViT's position
        embeddings): (checkpoint config, image side) -> the config of the same model at that size,
        whose key rules fit the checkpoint's arrays to it (`ftjax.pretrained.posemb`). None: the
        model takes any image size as it is (CNNs).
    """

    name: str
    detect: Callable[[Mapping[str, Any]], bool]
    build: Callable[[Mapping[str, Any], ModelOptions], Model]
    key_rules: Callable[[Mapping[str, Any]], list[KeyRule]]
    preprocessing: Callable[[Mapping[str, Any], Any], dict[str, Any]]
    ignored_keys: tuple[str, ...] = ()
    key_prefixes: tuple[str, ...] = ("",)
    key_aliases: tuple[tuple[str, str], ...] = ()
    config_for_weights: Callable[[Any], dict[str, Any] | None] | None = None
    at_image_size: Callable[[Mapping[str, Any], int], dict[str, Any]] | None = None
