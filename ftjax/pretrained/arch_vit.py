"""ViT checkpoints (Hugging Face `ViTModel` keys): detection, build, key map, preprocessing.

Reads `ViTModel` files and the `vit.`-prefixed keys of `ViTForImageClassification` files. The
pooler (`pooler.dense.*`, unused: classification reads the CLS token after the final LayerNorm)
and the classifier (`classifier.*`) are ignored; the head is always new for the task.
Preprocessing is mean/std 0.5 (the ViT default) unless preprocessor_config.json says otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ftjax.models import vit
from ftjax.models.base import Model
from ftjax.pretrained.arch import Architecture, KeyRule, ModelOptions
from ftjax.pretrained.arch_resnet import image_preprocessing

__all__ = ["detect", "build", "key_rules", "preprocessing", "ARCH"]

# Dense layers of each encoder layer: (Flax path, checkpoint name).
_LAYER_DENSES = (
    ("attention/attention/query", "attention.attention.query"),
    ("attention/attention/key", "attention.attention.key"),
    ("attention/attention/value", "attention.attention.value"),
    ("attention/output/dense", "attention.output.dense"),
    ("intermediate/dense", "intermediate.dense"),
    ("output/dense", "output.dense"),
)


def detect(config: Mapping[str, Any]) -> bool:
    archs = config.get("architectures") or []
    return config.get("model_type") == "vit" or any(a.startswith("ViT") for a in archs)


def build(config: Mapping[str, Any], options: ModelOptions) -> Model:
    task: dict[str, Any] = {"num_classes": options.num_classes, "dtype": options.dtype}
    if options.dropout is not None:
        task.update(
            hidden_dropout_prob=options.dropout, attention_probs_dropout_prob=options.dropout
        )
    return vit.vit_classifier(vit.ViTConfig.from_hf(config, **task))


def key_rules(config: Mapping[str, Any]) -> list[KeyRule]:
    del config  # the same rules for every size
    rules: list[KeyRule] = [
        (r"embeddings/cls_token", "embeddings.cls_token", "copy"),
        (r"embeddings/position_embeddings", "embeddings.position_embeddings", "copy"),
        (
            r"embeddings/patch_embeddings/projection/kernel",
            "embeddings.patch_embeddings.projection.weight",
            "conv",
        ),
        (
            r"embeddings/patch_embeddings/projection/bias",
            "embeddings.patch_embeddings.projection.bias",
            "copy",
        ),
        (r"layernorm/scale", "layernorm.weight", "copy"),
        (r"layernorm/bias", "layernorm.bias", "copy"),
    ]
    for flax, torch in _LAYER_DENSES:
        rules.append(
            (rf"encoder/layer_(\d+)/{flax}/kernel", rf"encoder.layer.\1.{torch}.weight", "linear")
        )
        rules.append(
            (rf"encoder/layer_(\d+)/{flax}/bias", rf"encoder.layer.\1.{torch}.bias", "copy")
        )
    for norm in ("layernorm_before", "layernorm_after"):
        rules.append(
            (rf"encoder/layer_(\d+)/{norm}/scale", rf"encoder.layer.\1.{norm}.weight", "copy")
        )
        rules.append(
            (rf"encoder/layer_(\d+)/{norm}/bias", rf"encoder.layer.\1.{norm}.bias", "copy")
        )
    return rules


def preprocessing(config: Mapping[str, Any], folder: Any) -> dict[str, Any]:
    size = config.get("image_size", 224)
    size = size[0] if isinstance(size, (list, tuple)) else size
    prep = image_preprocessing(
        folder, default_size=size, default_mean=(127.5,) * 3, default_std=(127.5,) * 3
    )
    # The position embeddings fix the input size: the checkpoint's, whatever the processor resizes to.
    return {**prep, "image_size": int(size)}


ARCH = Architecture(
    name="vit",
    detect=detect,
    build=build,
    key_rules=key_rules,
    preprocessing=preprocessing,
    ignored_keys=(r"pooler\..*", r"classifier\..*"),
    key_prefixes=("", "vit."),
)
