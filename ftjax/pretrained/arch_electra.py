"""ELECTRA checkpoints (Hugging Face `ElectraModel` keys): detection, build, key map, tokenizer.

Detects `model_type` "electra" (and `Electra*` architectures). Reads the bare model's keys and
the `electra.`-prefixed keys of `ElectraForPreTraining` (the published *-discriminator files),
`ElectraForMaskedLM` (the generators: same encoder layout) and
`ElectraForSequenceClassification` / `ElectraForTokenClassification` /
`ElectraForQuestionAnswering`; their heads (`discriminator_predictions`,
`generator_predictions`, `generator_lm_head`, `classifier`, `qa_outputs`) are ignored: the head
is always new.
The encoder's keys are BERT's (`arch_bert.layer_rules`); `embeddings_project` exists only when
embedding_size != hidden_size. The tokenizer is BERT's WordPiece (tokenizer.json, else vocab.txt).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ftjax.models import electra
from ftjax.models.base import Model
from ftjax.pretrained.arch import Architecture, KeyRule, ModelOptions, text_task_fields
from ftjax.pretrained.arch_bert import layer_rules, text_preprocessing

__all__ = ["ARCH", "detect", "build", "key_rules", "preprocessing"]


def detect(config: Mapping[str, Any]) -> bool:
    archs = config.get("architectures") or []
    return config.get("model_type") == "electra" or any(a.startswith("Electra") for a in archs)


def build(config: Mapping[str, Any], options: ModelOptions) -> Model:
    task = text_task_fields(options)
    return electra.electra_classifier(electra.ElectraConfig.from_hf(config, **task))


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
        (r"embeddings_project/kernel", "embeddings_project.weight", "linear"),
        (r"embeddings_project/bias", "embeddings_project.bias", "copy"),
    ]
    return rules + layer_rules(r"encoder/layer_(\d+)", r"encoder.layer.\1")


def preprocessing(config: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    """The checkpoint's tokenizer file and the longest input it was meant for."""
    return text_preprocessing(folder, int(config.get("max_position_embeddings", 512)))


ARCH = Architecture(
    name="electra",
    detect=detect,
    build=build,
    key_rules=key_rules,
    preprocessing=preprocessing,
    ignored_keys=(
        r"embeddings\.(position_ids|token_type_ids)",
        r"(discriminator_predictions|generator_predictions|generator_lm_head|classifier|qa_outputs)"
        r"\..*",
    ),
    key_prefixes=("", "electra."),
)
