"""ResNet in Hugging Face `ResNetModel` layout (resnet-18/34/50/101 and other depths via config).

Param paths mirror the checkpoint keys (`stages_1_layers_0/layer_2/convolution/kernel` is
`encoder.stages.1.layers.0.layer.2.convolution.weight`, `embedder/...` is `embedder.embedder...`), so `pretrained/arch_resnet.py` reads as
a rename. The classifier is a Dense `head` on the globally average-pooled last stage, as in
`ResNetForImageClassification`.

Images are NHWC float32, already normalised. Compute dtype: `dtype="bfloat16"` runs convolutions
in bfloat16 with float32 params; batch-norm statistics and the logits stay float32.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ftjax.models import layers
from ftjax.models.base import Model
from ftjax.models.layers import BatchNorm

__all__ = [
    "LAYER_TYPES",
    "ResNetConfig",
    "ConvLayer",
    "ResidualLayer",
    "ResNetClassifier",
    "layer_groups",
    "resnet_classifier",
]

_ACTIVATIONS = layers.ACTIVATIONS
LAYER_TYPES = ("basic", "bottleneck")
# torch BatchNorm2d defaults: momentum 0.1 (Flax 0.9), eps 1e-5.
_BN_MOMENTUM = 0.9
_BN_EPSILON = 1e-5


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
    """ResNet sizes (Hugging Face config.json names) and the task head."""

    num_classes: int
    embedding_size: int = 64
    hidden_sizes: tuple[int, ...] = (256, 512, 1024, 2048)
    depths: tuple[int, ...] = (3, 4, 6, 3)
    layer_type: str = "bottleneck"
    hidden_act: str = "relu"
    downsample_in_first_stage: bool = False
    downsample_in_bottleneck: bool = False
    num_channels: int = 3
    dtype: str = "float32"

    def __post_init__(self):
        if self.layer_type not in LAYER_TYPES:
            raise ValueError(f"layer_type {self.layer_type!r} is not one of {LAYER_TYPES}")
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(
                f"hidden_act {self.hidden_act!r} is not supported; use one of {sorted(_ACTIVATIONS)}"
            )
        if len(self.hidden_sizes) != len(self.depths) or not self.depths:
            raise ValueError(
                f"hidden_sizes {self.hidden_sizes} and depths {self.depths} need the same (non-zero) length"
            )
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any], **task: Any) -> ResNetConfig:
        """From a Hugging Face config.json dict plus task fields (num_classes, dtype)."""
        names = {f.name for f in dataclasses.fields(cls)}
        fields = {
            k: v for k, v in hf.items() if k in names and k not in task and k != "num_classes"
        }
        for key in ("hidden_sizes", "depths"):
            if key in fields:
                fields[key] = tuple(fields[key])
        return cls(**fields, **task)


class ConvLayer(nn.Module):
    """convolution -> normalization -> activation (ResNetConvLayer); padding kernel // 2."""

    features: int
    kernel: int
    stride: int
    activation: str | None
    dtype: Any

    @nn.compact
    def __call__(self, x, *, train: bool):
        pad = self.kernel // 2
        x = nn.Conv(
            self.features,
            (self.kernel, self.kernel),
            strides=(self.stride, self.stride),
            padding=((pad, pad), (pad, pad)),
            use_bias=False,
            dtype=self.dtype,
            kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
            name="convolution",
        )(x)
        x = BatchNorm(
            momentum=_BN_MOMENTUM, epsilon=_BN_EPSILON, dtype=jnp.float32, name="normalization"
        )(x, train=train)
        return x if self.activation is None else _ACTIVATIONS[self.activation](x)


class ResidualLayer(nn.Module):
    """A basic (two 3x3) or bottleneck (1x1, 3x3, 1x1) residual layer; `layer_i` are its convs."""

    cfg: ResNetConfig
    in_features: int
    out_features: int
    stride: int

    @nn.compact
    def __call__(self, x, *, train: bool):
        cfg, dtype = self.cfg, jnp.dtype(self.cfg.dtype)
        if cfg.layer_type == "basic":
            convs = [
                (self.out_features, 3, self.stride, cfg.hidden_act),
                (self.out_features, 3, 1, None),
            ]
        else:
            reduced = self.out_features // 4
            s1, s3 = (self.stride, 1) if cfg.downsample_in_bottleneck else (1, self.stride)
            convs = [
                (reduced, 1, s1, cfg.hidden_act),
                (reduced, 3, s3, cfg.hidden_act),
                (self.out_features, 1, 1, None),
            ]
        residual = x
        if self.in_features != self.out_features or self.stride != 1:
            residual = ConvLayer(self.out_features, 1, self.stride, None, dtype, name="shortcut")(
                x, train=train
            )
        for i, (features, kernel, stride, act) in enumerate(convs):
            x = ConvLayer(features, kernel, stride, act, dtype, name=f"layer_{i}")(x, train=train)
        return _ACTIVATIONS[cfg.hidden_act](x + residual)


class ResNetClassifier(nn.Module):
    """Embedder (7x7 conv + 3x3 max pool), stages, global average pool, Dense head."""

    cfg: ResNetConfig

    @nn.compact
    def __call__(self, image, *, train: bool = False):
        cfg = self.cfg
        if image.shape[-1] != cfg.num_channels:
            raise ValueError(
                f"images have {image.shape[-1]} channels, the model takes {cfg.num_channels} (NHWC)"
            )
        x = ConvLayer(
            cfg.embedding_size, 7, 2, cfg.hidden_act, jnp.dtype(cfg.dtype), name="embedder"
        )(image, train=train)
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        in_features = cfg.embedding_size
        for s, (features, depth) in enumerate(zip(cfg.hidden_sizes, cfg.depths)):
            stride = 2 if (s > 0 or cfg.downsample_in_first_stage) else 1
            for i in range(depth):
                layer = ResidualLayer(
                    cfg,
                    in_features,
                    features,
                    stride if i == 0 else 1,
                    name=f"stages_{s}_layers_{i}",
                )
                x = layer(x, train=train)
                in_features = features
        return nn.Dense(cfg.num_classes, name="head")(jnp.mean(x.astype(jnp.float32), axis=(1, 2)))


def layer_groups(cfg: ResNetConfig) -> tuple[tuple[str, str], ...]:
    """Embedder, each stage, head: the depth order of gradual unfreezing."""
    stages = tuple((f"stage_{s}", f"stages_{s}_layers_\\d+/.*") for s in range(len(cfg.depths)))
    return (("embedder", "embedder/.*"), *stages, ("head", "head/.*"))


def resnet_classifier(cfg: ResNetConfig) -> Model:
    """The ftjax Model for a ResNet classifier on batch["image"] (NHWC)."""
    return Model(
        module=ResNetClassifier(cfg),
        input_keys=("image",),
        layer_groups=layer_groups(cfg),
        head_pattern="head/.*",
    )
