"""BERT-family checkpoints (Hugging Face `BertModel` keys): detection, build, key map, tokenizer.

Reads `BertModel` files (MiniLM, sentence-transformers) and the `bert.`-prefixed keys of
`BertForSequenceClassification` / `BertForPreTraining` / `BertForTokenClassification` /
`BertForQuestionAnswering` files; their task heads (`classifier.*`, `cls.*`, `qa_outputs.*`) are
ignored because the head is always new for the task. A pooler the model does not have (pooling
"tokens") is ignored too; one it has must be in the file. The original files'
`LayerNorm.gamma` / `LayerNorm.beta` names load as `LayerNorm.weight` / `LayerNorm.bias`. The
tokenizer is the folder's tokenizer.json, or its vocab.txt when that is all it ships.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ftjax.models import bert
from ftjax.models.base import Model
from ftjax.pretrained.arch import Architecture, KeyRule, ModelOptions, text_task_fields

__all__ = [
    "detect",
    "build",
    "key_rules",
    "layer_rules",
    "preprocessing",
    "text_preprocessing",
    "ARCH",
]

# Sub-layers of each encoder layer: (Flax path, checkpoint name) of the Dense layers and LayerNorms.
_LAYER_DENSES = (
    ("attention/self/query", "attention.self.query"),
    ("attention/self/key", "attention.self.key"),
    ("attention/self/value", "attention.self.value"),
    ("attention/output/dense", "attention.output.dense"),
    ("intermediate/dense", "intermediate.dense"),
    ("output/dense", "output.dense"),
)
_LAYER_NORMS = (
    ("attention/output/LayerNorm", "attention.output.LayerNorm"),
    ("output/LayerNorm", "output.LayerNorm"),
)


# Tried in this order; the same list as ftjax.data.tokenize.TOKENIZER_FILES (not imported: the
# loader does not import the input pipeline).
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")


def detect(config: Mapping[str, Any]) -> bool:
    archs = config.get("architectures") or []
    return config.get("model_type") == "bert" or any(a.startswith("Bert") for a in archs)


def build(config: Mapping[str, Any], options: ModelOptions) -> Model:
    task = text_task_fields(options)
    return bert.bert_classifier(bert.BertConfig.from_hf(config, **task))


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
        (r"pooler/dense/kernel", "pooler.dense.weight", "linear"),
        (r"pooler/dense/bias", "pooler.dense.bias", "copy"),
    ]
    return rules + layer_rules(r"encoder/layer_(\d+)", r"encoder.layer.\1")


def layer_rules(
    flax_layer: str,
    torch_layer: str,
    denses: Sequence[tuple[str, str]] = _LAYER_DENSES,
    norms: Sequence[tuple[str, str]] = _LAYER_NORMS,
) -> list[KeyRule]:
    """Rules for the shared post-LN layer (`ftjax.models.transformer.PostLNLayer`) at Flax path
    regex `flax_layer`, read from checkpoint prefix `torch_layer` (a template of its groups).

    `denses` / `norms` pair the layer's Flax sub-paths with the checkpoint's names; BERT's names
    are the default, other architectures (DistilBERT, ALBERT) pass theirs.
    """
    rules: list[KeyRule] = []
    for flax, torch in denses:
        rules.append((rf"{flax_layer}/{flax}/kernel", rf"{torch_layer}.{torch}.weight", "linear"))
        rules.append((rf"{flax_layer}/{flax}/bias", rf"{torch_layer}.{torch}.bias", "copy"))
    for flax, torch in norms:
        rules.append((rf"{flax_layer}/{flax}/scale", rf"{torch_layer}.{torch}.weight", "copy"))
        rules.append((rf"{flax_layer}/{flax}/bias", rf"{torch_layer}.{torch}.bias", "copy"))
    return rules


def preprocessing(config: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    """The checkpoint's tokenizer file and the longest input it was meant for.

    The tokenizer file is its tokenizer.json, else its WordPiece vocab.txt (the data layer builds
    the fast tokenizer from it, `ftjax.data.tokenize.wordpiece_tokenizer`), else the folder
    itself: the weights still load, and the data layer's error names the folder and the files it
    looked for.
    """
    limit = int(config.get("max_position_embeddings", 512))
    return text_preprocessing(folder, limit)


def text_preprocessing(
    folder: Path, limit: int, tokenizer_files: Sequence[str] = _TOKENIZER_FILES
) -> dict[str, Any]:
    """The first of `tokenizer_files` in `folder` (else the folder, so the data layer's error
    names it) and the longest input: `_max_length` capped at `limit` positions."""
    folder = Path(folder)
    found = [folder / name for name in tokenizer_files if (folder / name).is_file()]
    return {
        "tokenizer_file": str(found[0] if found else folder),
        "max_length": _max_length(folder, limit),
    }


def _max_length(folder: Path, limit: int) -> int:
    """sentence-transformers' max_seq_length, else the tokenizer's model_max_length, capped by positions."""
    for name, key in (
        ("sentence_bert_config.json", "max_seq_length"),
        ("tokenizer_config.json", "model_max_length"),
    ):
        path = folder / name
        if path.is_file():
            value = json.loads(path.read_text()).get(key)
            if isinstance(value, int) and 0 < value <= limit:
                return value
    return limit


ARCH = Architecture(
    name="bert",
    detect=detect,
    build=build,
    key_rules=key_rules,
    preprocessing=preprocessing,
    # Ignored only when no param reads them: the pooler loads whenever the model has one.
    ignored_keys=(
        r"embeddings\.position_ids",
        r"pooler\..*",
        r"classifier\..*",
        r"cls\..*",
        r"qa_outputs\..*",
    ),
    key_prefixes=("", "bert."),
    # The original TensorFlow-converted files (bert-base-uncased's pytorch_model.bin) name the
    # LayerNorm scale and shift gamma and beta, as transformers still accepts.
    key_aliases=((r"(.*LayerNorm)\.gamma", r"\1.weight"), (r"(.*LayerNorm)\.beta", r"\1.bias")),
)
