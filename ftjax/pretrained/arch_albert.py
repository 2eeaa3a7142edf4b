"""ALBERT checkpoints (Hugging Face `AlbertModel` keys): detection, build, key map, tokenizer.

Detects `model_type` "albert" (and `Albert*` architectures). Reads the bare model's keys and the
`albert.`-prefixed keys of `AlbertForMaskedLM` / `AlbertForPreTraining` (the published
albert-*-v2 files), `AlbertForSequenceClassification`, `AlbertForTokenClassification` and
`AlbertForQuestionAnswering`; their heads (`predictions.*`, `sop_classifier.*`, `classifier.*`,
`qa_outputs.*`) are ignored: the head is always new, and so is a pooler the model does not have
(pooling "tokens"; one it has must be in the file). The layer rules map
ALBERT's shared-layer names (`encoder.albert_layer_groups.G.albert_layers.J.*`) onto the shared
BERT layout of `ftjax.models.transformer` (see `ftjax.models.albert` for how groups treat shared
layers). The tokenizer is the folder's tokenizer.json (SentencePiece Unigram; padding `<pad>`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ftjax.models import albert
from ftjax.models.base import Model
from ftjax.pretrained.arch import Architecture, KeyRule, ModelOptions, text_task_fields
from ftjax.pretrained.arch_bert import layer_rules, text_preprocessing

__all__ = ["ARCH", "detect", "build", "key_rules", "preprocessing"]

# (shared Flax sub-path, ALBERT checkpoint name) of each layer's Dense layers and LayerNorms.
_LAYER_DENSES = (
    ("attention/self/query", "attention.query"),
    ("attention/self/key", "attention.key"),
    ("attention/self/value", "attention.value"),
    ("attention/output/dense", "attention.dense"),
    ("intermediate/dense", "ffn"),
    ("output/dense", "ffn_output"),
)
_LAYER_NORMS = (
    ("attention/output/LayerNorm", "attention.LayerNorm"),
    ("output/LayerNorm", "full_layer_layer_norm"),
)


def detect(config: Mapping[str, Any]) -> bool:
    archs = config.get("architectures") or []
    return config.get("model_type") == "albert" or any(a.startswith("Albert") for a in archs)


def build(config: Mapping[str, Any], options: ModelOptions) -> Model:
    task = text_task_fields(options, classifier_dropout_key="classifier_dropout_prob")
    return albert.albert_classifier(albert.AlbertConfig.from_hf(config, **task))


def key_rules(config: Mapping[str, Any]) -> list[KeyRule]:
    del config  # sizes come from the config; names are the same for every size
    rules: list[KeyRule] = [
        (
            r"embeddings/(word|position|token_type)_embeddings/embedding",
            r"embeddings.\1_embeddings.weight",
            "copy",
        ),
        (r"embeddings/LayerNorm/scale", "embeddings.LayerNorm.weight", "copy"),
        (r"embeddings/LayerNorm/bias", "embeddings.LayerNorm.bias", "copy"),
        (
            r"encoder/embedding_hidden_mapping_in/kernel",
            "encoder.embedding_hidden_mapping_in.weight",
            "linear",
        ),
        (
            r"encoder/embedding_hidden_mapping_in/bias",
            "encoder.embedding_hidden_mapping_in.bias",
            "copy",
        ),
        (r"pooler/kernel", "pooler.weight", "linear"),
        (r"pooler/bias", "pooler.bias", "copy"),
    ]
    return rules + layer_rules(
        r"encoder/group_(\d+)/layer_(\d+)",
        r"encoder.albert_layer_groups.\1.albert_layers.\2",
        _LAYER_DENSES,
        _LAYER_NORMS,
    )


def preprocessing(config: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    """The checkpoint's tokenizer.json and the longest input it was meant for."""
    limit = int(config.get("max_position_embeddings", 512))
    return text_preprocessing(folder, limit, ("tokenizer.json",))


ARCH = Architecture(
    name="albert",
    detect=detect,
    build=build,
    key_rules=key_rules,
    preprocessing=preprocessing,
    ignored_keys=(
        r"embeddings\.(position_ids|token_type_ids)",
        r"pooler\..*",  # only when no param reads it: the pooler loads whenever the model has one
        r"(predictions|sop_classifier|classifier|qa_outputs)\..*",
    ),
    key_prefixes=("", "albert."),
)
