"""ResNet checkpoints (Hugging Face `ResNetModel` keys): detection, build, key map, preprocessing.

Reads `ResNetModel` files and the `resnet.`-prefixed keys of `ResNetForImageClassification`
files; their classifier (`classifier.1.*`) is ignored because the head is always new for the task.
Preprocessing is ImageNet mean/std at 224 px unless the folder's preprocessor_config.json says
otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ftjax.models import resnet
from ftjax.models.base import Model
from ftjax.pretrained.arch import Architecture, KeyRule, ModelOptions

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "detect",
    "build",
    "key_rules",
    "preprocessing",
    "image_preprocessing",
    "ARCH",
]

IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
_BN_LEAVES = (
    ("scale", "weight"),
    ("bias", "bias"),
    ("mean", "running_mean"),
    ("var", "running_var"),
)


def detect(config: Mapping[str, Any]) -> bool:
    archs = config.get("architectures") or []
    return config.get("model_type") == "resnet" or any(a.startswith("ResNet") for a in archs)


def build(config: Mapping[str, Any], options: ModelOptions) -> Model:
    return resnet.resnet_classifier(
        resnet.ResNetConfig.from_hf(config, num_classes=options.num_classes, dtype=options.dtype)
    )


def key_rules(config: Mapping[str, Any]) -> list[KeyRule]:
    del config  # the same names for every depth and layer type
    # A conv layer is `convolution` + `normalization`; the embedder's sits at embedder.embedder.
    conv_layers = (
        (r"embedder", "embedder.embedder"),
        (r"stages_(\d+)_layers_(\d+)/layer_(\d+)", r"encoder.stages.\1.layers.\2.layer.\3"),
        (r"stages_(\d+)_layers_(\d+)/shortcut", r"encoder.stages.\1.layers.\2.shortcut"),
    )
    rules: list[KeyRule] = []
    for flax, torch in conv_layers:
        rules.append((rf"{flax}/convolution/kernel", rf"{torch}.convolution.weight", "conv"))
        for leaf, torch_leaf in _BN_LEAVES:
            rules.append(
                (rf"{flax}/normalization/{leaf}", rf"{torch}.normalization.{torch_leaf}", "copy")
            )
    return rules


def preprocessing(config: Mapping[str, Any], folder: Any) -> dict[str, Any]:
    return image_preprocessing(
        folder, default_size=224, default_mean=IMAGENET_MEAN, default_std=IMAGENET_STD
    )


def image_preprocessing(
    folder: Any, *, default_size: int, default_mean, default_std
) -> dict[str, Any]:
    """image_size / mean / std in 0..255 pixel units, from preprocessor_config.json when present."""
    path = Path(folder) / "preprocessor_config.json" if folder is not None else None
    proc = json.loads(path.read_text()) if path is not None and path.is_file() else {}
    size = proc.get("crop_size") or proc.get("size") or default_size
    if isinstance(size, Mapping):
        size = size.get("height") or size.get("shortest_edge") or default_size
    scale = 255.0 if proc.get("do_rescale", True) else 1.0
    mean = (
        tuple(m * scale for m in proc["image_mean"])
        if "image_mean" in proc
        else tuple(default_mean)
    )
    std = tuple(s * scale for s in proc["image_std"]) if "image_std" in proc else tuple(default_std)
    return {"image_size": int(size), "mean": mean, "std": std}


ARCH = Architecture(
    name="resnet",
    detect=detect,
    build=build,
    key_rules=key_rules,
    preprocessing=preprocessing,
    ignored_keys=(r".*num_batches_tracked", r"classifier\..*"),
    key_prefixes=("", "resnet."),
)
