"""ViT checkpoints (Hugging Face `ViTModel` keys): detection, build, key map, preprocessing.

Reads `ViTModel` files and the `vit.`-prefixed keys of `ViTForImageClassification` files. The
pooler (`pooler.dense.*`, unused: classification reads the CLS token after the final LayerNorm)
and the classifier (`classifier.*`) are ignored; the head is always new for the task.
Preprocessing is mean/std 0.5 (the ViT default) unless preprocessor_config.json says otherwise.

At another image size (`load_pretrained(image_size=...)`, a run's `data.image_size`) the model is
a ViT at that size: `at_image_size` sets the config's `image_size`, and the position-embedding
rule resamples the checkpoint's grid to the new one bicubically (`ftjax.pretrained.posemb`), as
transformers' `ViTModel(..., interpolate_pos_encoding=True)` does on every forward.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ftjax.models import vit
from ftjax.models.base import Model
from ftjax.pretrained.arch import Architecture, KeyRule, ModelOptions
from ftjax.pretrained.arch_resnet import image_preprocessing
from ftjax.pretrained.posemb import Resample

__all__ = ["detect", "build", "key_rules", "at_image_size", "side", "preprocessing", "ARCH"]

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


def side(config: Mapping[str, Any], key: str, default: int) -> int:
    """A config's square `image_size` / `patch_size` as one int (configs may give [h, w])."""
    value = config.get(key, default)
    return int(value[0] if isinstance(value, (list, tuple)) else value)


def at_image_size(
    config: Mapping[str, Any], size: int, *, default_patch: int = 16
) -> dict[str, Any]:
    """The checkpoint config of the same ViT taking `size` x `size` images."""
    patch = side(config, "patch_size", default_patch)
    if size % patch:
        raise ValueError(
            f"image size {size} is not a multiple of the checkpoint's patch_size {patch}: set "
            f"data.image_size to a multiple of {patch} (e.g. {max(1, round(size / patch)) * patch})"
        )
    return {**config, "image_size": int(size)}


def key_rules(config: Mapping[str, Any]) -> list[KeyRule]:
    grid = side(config, "image_size", 224) // side(config, "patch_size", 16)
    rules: list[KeyRule] = [
        (r"embeddings/cls_token", "embeddings.cls_token", "copy"),
        (r"embeddings/position_embeddings", "embeddings.position_embeddings", Resample(grid)),
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
    size = side(config, "image_size", 224)
    prep = image_preprocessing(
        folder, default_size=size, default_mean=(127.5,) * 3, default_std=(127.5,) * 3
    )
    # The checkpoint's own size by default, whatever the processor resizes to.
    return {**prep, "image_size": size}


ARCH = Architecture(
    name="vit",
    detect=detect,
    build=build,
    key_rules=key_rules,
    preprocessing=preprocessing,
    ignored_keys=(r"pooler\..*", r"classifier\..*"),
    key_prefixes=("", "vit."),
    at_image_size=at_image_size,
)
