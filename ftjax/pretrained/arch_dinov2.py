"""DINOv2 checkpoints (Hugging Face `Dinov2Model` keys): detection, build, key map, preprocessing.

Reads `Dinov2Model` files (facebook/dinov2-small ... giant) and the `dinov2.`-prefixed keys of
`Dinov2ForImageClassification` files, with the plain MLP (`mlp.fc1`/`fc2`) or SwiGLU
(`mlp.weights_in`/`weights_out`, the giant model). The pre-training `embeddings.mask_token` and
the classifier (`classifier.*`) are ignored: the head is always new for the task, and reads
concat(CLS, mean of patch tokens) as `Dinov2ForImageClassification` does. DINOv2 with registers
is `arch_dinov2_with_registers.py`, the same functions with `registers=True`.

Image size: the model is built at the run's size (`data.image_size`, else preprocessor_config.json's
crop size, else the config's `image_size`; hub checkpoints say 518 but are fine-tuned at 224),
and the checkpoint's position embeddings are resampled to that patch grid as they load
(`ftjax.pretrained.posemb`), as transformers does on every forward: bicubic, antialiased for the
registers variant. A run's `model.dropout` sets the stochastic depth rate (`drop_path_rate`, the
regulariser DINOv2 fine-tuning uses); unset, the checkpoint's rate applies. Preprocessing is
ImageNet mean/std (0..255 units, or preprocessor_config.json's).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from ftjax.models import dinov2
from ftjax.models.base import Model
from ftjax.pretrained.arch import Architecture, KeyRule, ModelOptions
from ftjax.pretrained.arch_resnet import IMAGENET_MEAN, IMAGENET_STD, image_preprocessing
from ftjax.pretrained.arch_vit import at_image_size, side
from ftjax.pretrained.posemb import Resample

__all__ = ["detect", "build", "key_rules", "preprocessing", "architecture", "ARCH"]

_PATCH = 14  # the patch size of every DINOv2 checkpoint, when a config does not say
_REGISTERS = 4  # transformers' default num_register_tokens
# Dense layers of each encoder layer: (Flax path, checkpoint name).
_ATTENTION_DENSES = (
    ("attention/attention/query", "attention.attention.query"),
    ("attention/attention/key", "attention.attention.key"),
    ("attention/attention/value", "attention.attention.value"),
    ("attention/output/dense", "attention.output.dense"),
)
_MLP = ("mlp/fc1", "mlp/fc2")
_SWIGLU = ("mlp/weights_in", "mlp/weights_out")


def detect(config: Mapping[str, Any], *, registers: bool = False) -> bool:
    model_type = "dinov2_with_registers" if registers else "dinov2"
    archs = config.get("architectures") or []
    named = [a for a in archs if a.startswith("Dinov2")]
    with_registers = any(a.startswith("Dinov2WithRegisters") for a in named)
    return config.get("model_type") == model_type or (
        bool(named) and "model_type" not in config and with_registers == registers
    )


def _registers(config: Mapping[str, Any], registers: bool) -> int:
    return int(config.get("num_register_tokens", _REGISTERS)) if registers else 0


def build(config: Mapping[str, Any], options: ModelOptions, *, registers: bool = False) -> Model:
    task: dict[str, Any] = {
        "num_classes": options.num_classes,
        "dtype": options.dtype,
        "num_register_tokens": _registers(config, registers),
    }
    if options.dropout is not None:
        task["drop_path_rate"] = options.dropout
    return dinov2.dinov2_classifier(dinov2.Dinov2Config.from_hf(config, **task))


def key_rules(config: Mapping[str, Any], *, registers: bool = False) -> list[KeyRule]:
    grid = side(config, "image_size", 224) // side(config, "patch_size", _PATCH)
    rules: list[KeyRule] = [
        (r"embeddings/cls_token", "embeddings.cls_token", "copy"),
        (
            r"embeddings/position_embeddings",
            "embeddings.position_embeddings",
            Resample(grid, antialias=registers),
        ),
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
    if registers:
        rules.append((r"embeddings/register_tokens", "embeddings.register_tokens", "copy"))
    mlp = _SWIGLU if config.get("use_swiglu_ffn") else _MLP
    for flax, torch in (*_ATTENTION_DENSES, *((m, m.replace("/", ".")) for m in mlp)):
        rules.append(
            (rf"encoder/layer_(\d+)/{flax}/kernel", rf"encoder.layer.\1.{torch}.weight", "linear")
        )
        rules.append(
            (rf"encoder/layer_(\d+)/{flax}/bias", rf"encoder.layer.\1.{torch}.bias", "copy")
        )
    for norm in ("norm1", "norm2"):
        rules.append(
            (rf"encoder/layer_(\d+)/{norm}/scale", rf"encoder.layer.\1.{norm}.weight", "copy")
        )
        rules.append(
            (rf"encoder/layer_(\d+)/{norm}/bias", rf"encoder.layer.\1.{norm}.bias", "copy")
        )
    for scale in ("layer_scale1", "layer_scale2"):
        rules.append(
            (
                rf"encoder/layer_(\d+)/{scale}/lambda1",
                rf"encoder.layer.\1.{scale}.lambda1",
                "copy",
            )
        )
    return rules


def preprocessing(config: Mapping[str, Any], folder: Any) -> dict[str, Any]:
    return image_preprocessing(
        folder,
        default_size=side(config, "image_size", 224),
        default_mean=IMAGENET_MEAN,
        default_std=IMAGENET_STD,
    )


def architecture(*, registers: bool) -> Architecture:
    """DINOv2's Architecture, or with `registers` DINOv2 with registers'."""
    name = "dinov2_with_registers" if registers else "dinov2"
    return Architecture(
        name=name,
        detect=functools.partial(detect, registers=registers),
        build=functools.partial(build, registers=registers),
        key_rules=functools.partial(key_rules, registers=registers),
        preprocessing=preprocessing,
        ignored_keys=(r"embeddings\.mask_token", r"classifier\..*"),
        key_prefixes=("", f"{name}."),
        at_image_size=functools.partial(at_image_size, default_patch=_PATCH),
    )


ARCH = architecture(registers=False)
