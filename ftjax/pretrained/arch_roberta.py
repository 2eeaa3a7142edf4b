"""RoBERTa and XLM-R checkpoints (Hugging Face `RobertaModel` / `XLMRobertaModel` keys):
detection, build, key map, tokenizer.

Detects `model_type` "roberta" and "xlm-roberta" (and `Roberta*` / `XLMRoberta*` architectures).
Reads the bare model's keys and the `roberta.`-prefixed keys of `RobertaForMaskedLM` (the
published roberta-base / xlm-roberta-base files), `RobertaForSequenceClassification`,
`RobertaForTokenClassification` and `RobertaForQuestionAnswering`; the pooler (untrained in
those files), the LM head (`lm_head.*`) and the task heads (`classifier.*`, `qa_outputs.*`) are
ignored: the head is always new for the task (see `ftjax.models.roberta`). The key layout of the encoder
is BERT's, so the layer rules are `arch_bert.layer_rules`.

The tokenizer is the folder's tokenizer.json (byte-level BPE for RoBERTa, SentencePiece
Unigram for XLM-R; the data layer pads with its `<pad>`, which is `pad_token_id`). The longest
input is max_position_embeddings - pad_token_id - 1 (512 for the published models).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ftjax.models import roberta
from ftjax.models.base import Model
from ftjax.pretrained.arch import Architecture, KeyRule, ModelOptions, text_task_fields
from ftjax.pretrained.arch_bert import layer_rules, text_preprocessing

__all__ = ["ARCH", "MODEL_TYPES", "detect", "build", "key_rules", "preprocessing"]

MODEL_TYPES = ("roberta", "xlm-roberta")


def detect(config: Mapping[str, Any]) -> bool:
    archs = config.get("architectures") or []
    return config.get("model_type") in MODEL_TYPES or any(
        a.startswith(("Roberta", "XLMRoberta")) for a in archs
    )


def build(config: Mapping[str, Any], options: ModelOptions) -> Model:
    task = text_task_fields(options)
    return roberta.roberta_classifier(roberta.RobertaConfig.from_hf(config, **task))


def key_rules(config: Mapping[str, Any]) -> list[KeyRule]:
    del config  # the same rules for every size
    rules: list[KeyRule] = [
        (
            r"embeddings/(word|position|token_type)_embeddings/embedding",
            r"embeddings.\1_embeddings.weight",
            "copy",
        ),
        (r"embeddings/LayerNorm/scale", "embeddings.LayerNorm.weight", "copy"),
        (r"embeddings/LayerNorm/bias", "embeddings.LayerNorm.bias", "copy"),
    ]
    return rules + layer_rules(r"encoder/layer_(\d+)", r"encoder.layer.\1")


def preprocessing(config: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    """The checkpoint's tokenizer.json and the longest input its positions hold."""
    limit = int(config.get("max_position_embeddings", 514)) - int(config.get("pad_token_id", 1)) - 1
    return text_preprocessing(folder, limit, ("tokenizer.json",))


ARCH = Architecture(
    name="roberta",
    detect=detect,
    build=build,
    key_rules=key_rules,
    preprocessing=preprocessing,
    ignored_keys=(
        r"embeddings\.(position_ids|token_type_ids)",
        r"pooler\..*",
        r"lm_head\..*",
        r"classifier\..*",
        r"qa_outputs\..*",
    ),
    key_prefixes=("", "roberta."),
)
