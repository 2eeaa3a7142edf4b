"""ConvNeXt in Hugging Face `ConvNextModel` layout (convnext-tiny/small/base/large/xlarge via config).

Param paths mirror the checkpoint keys (`encoder/stages_1/layers_0/pwconv1/kernel` is
`encoder.stages.1.layers.0.pwconv1.weight`, `encoder/stages_1/downsampling_layer_1/kernel` is
`encoder.stages.1.downsampling_layer.1.weight`), so `pretrained/arch_convnext.py` reads as a
rename. A layer is ConvNeXt's block: 7x7 depthwise conv, LayerNorm over channels, Linear to 4x,
activation, Linear back, layer scale (`layer_scale_parameter`, when the config's init value is
positive), stochastic depth and the residual add. Stages after the first downsample with a
LayerNorm then a 2x2 stride-2 conv. As in `ConvNextForImageClassification`, the head is a Dense
layer on the globally averaged last stage after the final LayerNorm (`ConvNextModel`'s
`pooler_output`, which `ConvNextClassifier.encode` returns).

Stochastic depth rises linearly from 0 at the first layer to `drop_path_rate` at the last, as
transformers draws it; it is ftjax's freeze-aware `Dropout` on a per-example mask, so a frozen
layer keeps every path. Images are NHWC float32, already normalised, at any size the strides
divide into at least one pixel. Compute dtype: `dtype="bfloat16"` runs convolutions and matmuls
in bfloat16 with float32 params; LayerNorm statistics, the pooled features and the logits stay
float32.

Not for: the depthwise kernel and its gradients (`ftjax.ops.depthwise`; at stride 1 with an odd
kernel its TF 'SAME' padding is torch's `padding=3`), the key map (`ftjax.pretrained.arch_convnext`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from ftjax.models import layers
from ftjax.models.base import Model
from ftjax.models.layers import Dropout
from ftjax.ops import depthwise

__all__ = [
    "ConvNextConfig",
    "drop_path_rates",
    "DepthwiseConv",
    "ConvNextLayer",
    "ConvNextStage",
    "ConvNextEmbeddings",
    "ConvNextEncoder",
    "ConvNextClassifier",
    "layer_groups",
    "convnext_classifier",
]

_ACTIVATIONS = layers.ACTIVATIONS
_KERNEL_SIZE = 7  # the depthwise conv's
_INNER_EPS = 1e-6  # transformers fixes the embedding, block and downsampling LayerNorms' eps


@dataclasses.dataclass(frozen=True)
class ConvNextConfig:
    """ConvNeXt sizes (Hugging Face config.json names) and the task head."""

    num_classes: int
    num_channels: int = 3
    patch_size: int = 4
    hidden_sizes: tuple[int, ...] = (96, 192, 384, 768)
    depths: tuple[int, ...] = (3, 3, 9, 3)
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12  # the final LayerNorm's (transformers' default)
    layer_scale_init_value: float = 1e-6
    drop_path_rate: float = 0.0
    image_size: int = 224
    initializer_range: float = 0.02
    dtype: str = "float32"

    def __post_init__(self):
        if len(self.hidden_sizes) != len(self.depths) or not self.depths:
            raise ValueError(
                f"hidden_sizes {self.hidden_sizes} and depths {self.depths} need the same (non-zero) length"
            )
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(
                f"hidden_act {self.hidden_act!r} is not supported; use one of {sorted(_ACTIVATIONS)}"
            )
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any], **task: Any) -> ConvNextConfig:
        """From a Hugging Face config.json dict plus task fields (num_classes, dtype, drop_path_rate)."""
        names = {f.name for f in dataclasses.fields(cls)}
        fields = {
            k: v for k, v in hf.items() if k in names and k not in task and k != "num_classes"
        }
        for key in ("hidden_sizes", "depths"):
            if key in fields:
                fields[key] = tuple(fields[key])
        for key in ("patch_size", "image_size"):
            if isinstance(fields.get(key), (list, tuple)):
                h, w = fields[key]
                if h != w:
                    raise ValueError(
                        f"{key} {fields[key]} is not square; only square images and patches are supported"
                    )
                fields[key] = h
        stages = hf.get("num_stages")
        if stages is not None and stages != len(fields.get("depths", cls.depths)):
            raise ValueError(
                f"num_stages {stages} differs from the {len(fields.get('depths', cls.depths))} "
                "stages that depths lists; make them agree"
            )
        return cls(**fields, **task)


def drop_path_rates(cfg: ConvNextConfig) -> list[list[float]]:
    """Each stage's per-layer stochastic depth rates: 0 to drop_path_rate over all layers."""
    rates = np.linspace(0.0, cfg.drop_path_rate, sum(cfg.depths))
    bounds = np.cumsum((0, *cfg.depths))
    return [[float(r) for r in rates[a:b]] for a, b in zip(bounds[:-1], bounds[1:])]


def _init(cfg: ConvNextConfig):
    return nn.initializers.normal(cfg.initializer_range)


def _layer_norm(epsilon: float, dtype: Any, name: str) -> nn.LayerNorm:
    # Over the channels (the last axis of NHWC): both of transformers' data formats at once.
    return nn.LayerNorm(epsilon=epsilon, dtype=dtype, name=name)


class DepthwiseConv(nn.Module):
    """7x7 depthwise conv with bias, padding 3, Flax-Conv-shaped kernel (k, k, 1, C)."""

    cfg: ConvNextConfig

    @nn.compact
    def __call__(self, x):
        dtype, c = jnp.dtype(self.cfg.dtype), x.shape[-1]
        kernel = self.param("kernel", _init(self.cfg), (_KERNEL_SIZE, _KERNEL_SIZE, 1, c))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        y = depthwise.depthwise_conv(x.astype(dtype), kernel.astype(dtype), 1)
        return y + bias.astype(dtype)


class ConvNextLayer(nn.Module):
    """dwconv -> layernorm -> pwconv1 -> activation -> pwconv2 -> layer scale -> drop path, + x."""

    cfg: ConvNextConfig
    dim: int
    drop_path: float

    @nn.compact
    def __call__(self, inputs, *, train: bool):
        cfg, dtype = self.cfg, jnp.dtype(self.cfg.dtype)
        x = DepthwiseConv(cfg, name="dwconv")(inputs)
        x = _layer_norm(_INNER_EPS, dtype, "layernorm")(x)
        x = nn.Dense(4 * self.dim, dtype=dtype, kernel_init=_init(cfg), name="pwconv1")(x)
        x = _ACTIVATIONS[cfg.hidden_act](x)
        x = nn.Dense(self.dim, dtype=dtype, kernel_init=_init(cfg), name="pwconv2")(x)
        if cfg.layer_scale_init_value > 0:
            scale = self.param(
                "layer_scale_parameter",
                nn.initializers.constant(cfg.layer_scale_init_value),
                (self.dim,),
            )
            x = x * scale.astype(dtype)
        # Stochastic depth: a per-example keep mask scaled by 1/keep (transformers' DropPath).
        keep = Dropout(self.drop_path, name="drop_path")(
            jnp.ones((x.shape[0], 1, 1, 1), x.dtype), train=train
        )
        return inputs + x * keep


class ConvNextStage(nn.Module):
    """[LayerNorm, 2x2 stride-2 conv] where the stage downsamples, then its layers."""

    cfg: ConvNextConfig
    index: int

    @nn.compact
    def __call__(self, x, *, train: bool):
        cfg, dtype, s = self.cfg, jnp.dtype(self.cfg.dtype), self.index
        in_features = cfg.hidden_sizes[max(s - 1, 0)]
        features, stride = cfg.hidden_sizes[s], (2 if s > 0 else 1)
        if in_features != features or stride > 1:
            x = _layer_norm(_INNER_EPS, dtype, "downsampling_layer_0")(x)
            x = nn.Conv(
                features,
                (2, 2),
                strides=(stride, stride),
                padding="VALID",
                dtype=dtype,
                kernel_init=_init(cfg),
                name="downsampling_layer_1",
            )(x)
        for i, rate in enumerate(drop_path_rates(cfg)[s]):
            x = ConvNextLayer(cfg, features, rate, name=f"layers_{i}")(x, train=train)
        return x


class ConvNextEmbeddings(nn.Module):
    """The patchify stem: a patch_size-strided conv, then LayerNorm over channels."""

    cfg: ConvNextConfig

    @nn.compact
    def __call__(self, image):
        cfg, dtype = self.cfg, jnp.dtype(self.cfg.dtype)
        p = cfg.patch_size
        x = nn.Conv(
            cfg.hidden_sizes[0],
            (p, p),
            strides=(p, p),
            padding="VALID",
            dtype=dtype,
            kernel_init=_init(cfg),
            name="patch_embeddings",
        )(image)
        return _layer_norm(_INNER_EPS, dtype, "layernorm")(x)


class ConvNextEncoder(nn.Module):
    cfg: ConvNextConfig

    @nn.compact
    def __call__(self, x, *, train: bool):
        for s in range(len(self.cfg.depths)):
            x = ConvNextStage(self.cfg, s, name=f"stages_{s}")(x, train=train)
        return x


class ConvNextClassifier(nn.Module):
    """Embeddings, encoder, global average pool, final LayerNorm and a Dense head."""

    cfg: ConvNextConfig

    def setup(self):
        self.embeddings = ConvNextEmbeddings(self.cfg)
        self.encoder = ConvNextEncoder(self.cfg)
        self.layernorm = _layer_norm(self.cfg.layer_norm_eps, jnp.float32, "layernorm")
        self.head = nn.Dense(self.cfg.num_classes, kernel_init=_init(self.cfg))

    def encode(self, image, *, train: bool = False):
        """The pooled features (B, hidden_sizes[-1]), float32: `ConvNextModel`'s pooler_output."""
        cfg = self.cfg
        if image.shape[-1] != cfg.num_channels:
            raise ValueError(
                f"images have {image.shape[-1]} channels, the model takes {cfg.num_channels} (NHWC)"
            )
        x = self.encoder(self.embeddings(image), train=train)
        return self.layernorm(jnp.mean(x.astype(jnp.float32), axis=(1, 2)))

    def __call__(self, image, *, train: bool = False):
        return self.head(self.encode(image, train=train))


def layer_groups(cfg: ConvNextConfig) -> tuple[tuple[str, str], ...]:
    """Embeddings, each stage, final LayerNorm, head: the depth order of gradual unfreezing."""
    stages = tuple((f"stage_{s}", f"encoder/stages_{s}/.*") for s in range(len(cfg.depths)))
    return (
        ("embeddings", "embeddings/.*"),
        *stages,
        ("layernorm", "layernorm/.*"),
        ("head", "head/.*"),
    )


def convnext_classifier(cfg: ConvNextConfig) -> Model:
    """The ftjax Model for a ConvNeXt classifier on batch["image"] (NHWC)."""
    return Model(
        module=ConvNextClassifier(cfg),
        input_keys=("image",),
        layer_groups=layer_groups(cfg),
        head_pattern="head/.*",
        # Not depthwise.CPU_COMPILER_OPTIONS: ConvNeXt's time is in its Linear layers, which that
        # option slows down more than it speeds up the depthwise backward (a 4-stage model,
        # widths 32..256, b32 at 64 px: train step 269 ms with XLA:CPU's defaults, 815 ms with it).
    )
