"""DistilBERT checkpoints (Hugging Face `DistilBertModel` keys): detection, build, key map,
tokenizer.

Detects `model_type` "distilbert" (and `DistilBert*` architectures). Reads the bare model's keys
and the `distilbert.`-prefixed keys of `DistilBertForMaskedLM` (the published
distilbert-base-* files), `DistilBertForSequenceClassification`,
`DistilBertForTokenClassification` and `DistilBertForQuestionAnswering`; the MLM head
(`vocab_*`) and the task heads (`pre_classifier`, `classifier`, `qa_outputs`) are ignored: the
head is always new. The layer
rules map DistilBERT's names onto the shared BERT layout of `ftjax.models.transformer`. The
tokenizer is BERT's (tokenizer.json, else vocab.txt).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ftjax.models import distilbert
from ftjax.models.base import Model
from ftjax.pretrained.arch import Architecture, KeyRule, ModelOptions, text_task_fields
from ftjax.pretrained.arch_bert import layer_rules, text_preprocessing

__all__ = ["ARCH", "detect", "build", "key_rules", "preprocessing"]

# (shared Flax sub-path, DistilBERT checkpoint name) of each layer's Dense layers and LayerNorms.
_LAYER_DENSES = (
    ("attention/self/query", "attention.q_lin"),
    ("attention/self/key", "attention.k_lin"),
    ("attention/self/value", "attention.v_lin"),
    ("attention/output/dense", "attention.out_lin"),
    ("intermediate/dense", "ffn.lin1"),
    ("output/dense", "ffn.lin2"),
)
_LAYER_NORMS = (
    ("attention/output/LayerNorm", "sa_layer_norm"),
    ("output/LayerNorm", "output_layer_norm"),
)


def detect(config: Mapping[str, Any]) -> bool:
    archs = config.get("architectures") or []
    return config.get("model_type") == "distilbert" or any(
        a.startswith("DistilBert") for a in archs
    )


def build(config: Mapping[str, Any], options: ModelOptions) -> Model:
    task = text_task_fields(options)
    return distilbert.distilbert_classifier(distilbert.DistilBertConfig.from_hf(config, **task))


def key_rules(config: Mapping[str, Any]) -> list[KeyRule]:
    del config  # the same rules for every size
    rules: list[KeyRule] = [
        (
            r"embeddings/(word|position)_embeddings/embedding",
            r"embeddings.\1_embeddings.weight",
            "copy",
        ),
        (r"embeddings/LayerNorm/scale", "embeddings.LayerNorm.weight", "copy"),
        (r"embeddings/LayerNorm/bias", "embeddings.LayerNorm.bias", "copy"),
    ]
    return rules + layer_rules(
        r"encoder/layer_(\d+)", r"transformer.layer.\1", _LAYER_DENSES, _LAYER_NORMS
    )


def preprocessing(config: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    """The checkpoint's tokenizer file and the longest input it was meant for."""
    return text_preprocessing(folder, int(config.get("max_position_embeddings", 512)))


ARCH = Architecture(
    name="distilbert",
    detect=detect,
    build=build,
    key_rules=key_rules,
    preprocessing=preprocessing,
    ignored_keys=(
        r"embeddings\.position_ids",
        r"vocab_(transform|layer_norm|projector)\..*",
        r"(pre_classifier|classifier|qa_outputs)\..*",
    ),
    key_prefixes=("", "distilbert."),
)
