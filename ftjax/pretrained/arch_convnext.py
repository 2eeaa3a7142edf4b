"""ConvNeXt checkpoints (Hugging Face `ConvNextModel` keys): detection, build, key map, preprocessing.

Reads `ConvNextModel` files and the `convnext.`-prefixed keys of `ConvNextForImageClassification`
files (facebook/convnext-tiny-224 and the other sizes); their classifier (`classifier.*`) is
ignored because the head is always new for the task. ConvNeXt V2 (model_type "convnextv2", with
global response norm) is another layout and is not detected as this one.

A run's `model.dropout` sets the stochastic depth rate (`drop_path_rate`, the only dropout
ConvNeXt has); unset, the checkpoint's rate applies. Preprocessing is ImageNet mean/std (0..255
units, or preprocessor_config.json's) at the config's `image_size` (224 unless it says otherwise).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ftjax.models import convnext
from ftjax.models.base import Model
from ftjax.pretrained.arch import Architecture, KeyRule, ModelOptions
from ftjax.pretrained.arch_resnet import IMAGENET_MEAN, IMAGENET_STD, image_preprocessing

__all__ = ["MODEL_TYPE", "detect", "build", "key_rules", "preprocessing", "ARCH"]

MODEL_TYPE = "convnext"
_CLASSES = ("ConvNextModel", "ConvNextForImageClassification")
# A downsampling stage's LayerNorm and 2x2 conv: (Flax path, checkpoint name, transform).
_DOWNSAMPLING_LEAVES = (
    ("downsampling_layer_0/scale", "0.weight", "copy"),
    ("downsampling_layer_0/bias", "0.bias", "copy"),
    ("downsampling_layer_1/kernel", "1.weight", "conv"),
    ("downsampling_layer_1/bias", "1.bias", "copy"),
)
# Leaves of each layer: (Flax path, checkpoint name, transform).
_LAYER_LEAVES = (
    ("dwconv/kernel", "dwconv.weight", "conv"),
    ("dwconv/bias", "dwconv.bias", "copy"),
    ("layernorm/scale", "layernorm.weight", "copy"),
    ("layernorm/bias", "layernorm.bias", "copy"),
    ("pwconv1/kernel", "pwconv1.weight", "linear"),
    ("pwconv1/bias", "pwconv1.bias", "copy"),
    ("pwconv2/kernel", "pwconv2.weight", "linear"),
    ("pwconv2/bias", "pwconv2.bias", "copy"),
    ("layer_scale_parameter", "layer_scale_parameter", "copy"),
)


def detect(config: Mapping[str, Any]) -> bool:
    archs = config.get("architectures") or []
    return config.get("model_type") == MODEL_TYPE or any(a in _CLASSES for a in archs)


def build(config: Mapping[str, Any], options: ModelOptions) -> Model:
    task: dict[str, Any] = {"num_classes": options.num_classes, "dtype": options.dtype}
    if options.dropout is not None:
        task["drop_path_rate"] = options.dropout
    return convnext.convnext_classifier(convnext.ConvNextConfig.from_hf(config, **task))


def key_rules(config: Mapping[str, Any]) -> list[KeyRule]:
    del config  # the same names for every size; sizes come from the config
    stage = r"encoder/stages_(\d+)"
    rules: list[KeyRule] = [
        (r"embeddings/patch_embeddings/kernel", "embeddings.patch_embeddings.weight", "conv"),
        (r"embeddings/patch_embeddings/bias", "embeddings.patch_embeddings.bias", "copy"),
        (r"embeddings/layernorm/scale", "embeddings.layernorm.weight", "copy"),
        (r"embeddings/layernorm/bias", "embeddings.layernorm.bias", "copy"),
        (r"layernorm/scale", "layernorm.weight", "copy"),
        (r"layernorm/bias", "layernorm.bias", "copy"),
    ]
    for flax, torch, transform in _DOWNSAMPLING_LEAVES:
        rules.append(
            (rf"{stage}/{flax}", rf"encoder.stages.\1.downsampling_layer.{torch}", transform)
        )
    for flax, torch, transform in _LAYER_LEAVES:
        rules.append(
            (rf"{stage}/layers_(\d+)/{flax}", rf"encoder.stages.\1.layers.\2.{torch}", transform)
        )
    return rules


def preprocessing(config: Mapping[str, Any], folder: Any) -> dict[str, Any]:
    size = config.get("image_size") or 224
    size = size[0] if isinstance(size, (list, tuple)) else size
    prep = image_preprocessing(
        folder, default_size=size, default_mean=IMAGENET_MEAN, default_std=IMAGENET_STD
    )
    # The config's size, not the processor's resize target (its shortest_edge / crop_pct).
    return {**prep, "image_size": int(size)}


ARCH = Architecture(
    name=MODEL_TYPE,
    detect=detect,
    build=build,
    key_rules=key_rules,
    preprocessing=preprocessing,
    ignored_keys=(r"classifier\..*",),
    key_prefixes=("", "convnext."),
)
