"""DeBERTa-v2 / v3 checkpoints (Hugging Face `DebertaV2Model` keys): detection, build, key map,
tokenizer.

Detects `model_type` "deberta-v2" (and `DebertaV2*` architectures; DeBERTa v1, "deberta", is
another attention and is not read). Reads the bare model's keys and the `deberta.`-prefixed keys
of `DebertaV2ForMaskedLM` (the published files), `DebertaV2ForSequenceClassification`,
`DebertaV2ForTokenClassification` and `DebertaV2ForQuestionAnswering`. Their heads (`cls.*`,
`lm_predictions.*`, `mask_predictions.*`, `classifier.*`, `qa_outputs.*`) are ignored: the head is
always new. The ContextPooler of the classification files (`pooler.dense`, beside `deberta.`, not
under it) loads as `pooler/dense` when the model has one (see `ftjax.models.deberta_v2`) and is
ignored otherwise; so is the `embeddings.position_embeddings` table v3 files carry although
`position_biased_input` is false (transformers ignores it too).

The encoder layers map onto the shared BERT layout (`attention/self/query` is
`attention.self.query_proj`), the disentangled attention's own projections, the relative
embeddings and the ConvLayer keep their names. The tokenizer is the folder's tokenizer.json
(DeBERTa-v3's SentencePiece Unigram; the published folders ship only `spm.model`, which the data
layer does not read: save the tokenizer once with transformers to get a tokenizer.json).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ftjax.models import deberta_v2
from ftjax.models.base import Model
from ftjax.pretrained.arch import Architecture, KeyRule, ModelOptions, text_task_fields
from ftjax.pretrained.arch_bert import layer_rules, text_preprocessing

__all__ = ["ARCH", "detect", "build", "key_rules", "preprocessing", "Conv1d", "conv1d"]

# (shared Flax sub-path, DeBERTa checkpoint name) of each layer's Dense layers and LayerNorms.
_LAYER_DENSES = (
    ("attention/self/query", "attention.self.query_proj"),
    ("attention/self/key", "attention.self.key_proj"),
    ("attention/self/value", "attention.self.value_proj"),
    ("attention/self/pos_key_proj", "attention.self.pos_key_proj"),
    ("attention/self/pos_query_proj", "attention.self.pos_query_proj"),
    ("attention/output/dense", "attention.output.dense"),
    ("intermediate/dense", "intermediate.dense"),
    ("output/dense", "output.dense"),
)
_LAYER_NORMS = (
    ("attention/output/LayerNorm", "attention.output.LayerNorm"),
    ("output/LayerNorm", "output.LayerNorm"),
)


class Conv1d:
    """Key-rule transform: torch Conv1d (out, in / groups, k) -> Flax Conv (k, in / groups, out);
    `inverse` is the way back, which `ftjax.export` takes."""

    def __call__(self, w: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(w.transpose(2, 1, 0))

    def inverse(self, w: np.ndarray) -> np.ndarray:
        return w.transpose(2, 1, 0)


conv1d = Conv1d()


def detect(config: Mapping[str, Any]) -> bool:
    archs = config.get("architectures") or []
    return config.get("model_type") == "deberta-v2" or any(a.startswith("DebertaV2") for a in archs)


def build(config: Mapping[str, Any], options: ModelOptions) -> Model:
    task = text_task_fields(options, classifier_dropout_key="cls_dropout")
    return deberta_v2.deberta_v2_classifier(deberta_v2.DebertaV2Config.from_hf(config, **task))


def key_rules(config: Mapping[str, Any]) -> list[KeyRule]:
    del config  # sizes come from the config; names are the same for every size
    rules: list[KeyRule] = [
        (
            r"embeddings/(word|position|token_type)_embeddings/embedding",
            r"embeddings.\1_embeddings.weight",
            "copy",
        ),
        (r"embeddings/embed_proj/kernel", "embeddings.embed_proj.weight", "linear"),
        (r"embeddings/LayerNorm/scale", "embeddings.LayerNorm.weight", "copy"),
        (r"embeddings/LayerNorm/bias", "embeddings.LayerNorm.bias", "copy"),
        (r"encoder/rel_embeddings/embedding", "encoder.rel_embeddings.weight", "copy"),
        (r"encoder/LayerNorm/scale", "encoder.LayerNorm.weight", "copy"),
        (r"encoder/LayerNorm/bias", "encoder.LayerNorm.bias", "copy"),
        (r"encoder/conv/conv/kernel", "encoder.conv.conv.weight", conv1d),
        (r"encoder/conv/conv/bias", "encoder.conv.conv.bias", "copy"),
        (r"encoder/conv/LayerNorm/scale", "encoder.conv.LayerNorm.weight", "copy"),
        (r"encoder/conv/LayerNorm/bias", "encoder.conv.LayerNorm.bias", "copy"),
        # Read as `deberta.pooler.*` (the alias below): the one prefix the loader strips.
        (r"pooler/dense/kernel", "pooler.dense.weight", "linear"),
        (r"pooler/dense/bias", "pooler.dense.bias", "copy"),
    ]
    return rules + layer_rules(
        r"encoder/layer_(\d+)", r"encoder.layer.\1", _LAYER_DENSES, _LAYER_NORMS
    )


def preprocessing(config: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    """The checkpoint's tokenizer.json and the longest input it was meant for (its
    max_position_embeddings: the absolute positions of v2, the pre-training length of v3)."""
    limit = int(config.get("max_position_embeddings", 512))
    return text_preprocessing(folder, limit, ("tokenizer.json",))


ARCH = Architecture(
    name="deberta_v2",
    detect=detect,
    build=build,
    key_rules=key_rules,
    preprocessing=preprocessing,
    # Each ignored only when no param reads it.
    ignored_keys=(
        r"embeddings\.(position_ids|position_embeddings\.weight)",
        r"pooler\..*",
        r"(cls|lm_predictions|mask_predictions|classifier|qa_outputs)\..*",
    ),
    key_prefixes=("", "deberta."),
    # The classification classes keep their pooler beside the base model (`pooler.dense`, not
    # `deberta.pooler.dense`); named under the prefix, it loads with the rest.
    key_aliases=((r"pooler\.(.*)", r"deberta.pooler.\1"),),
)
