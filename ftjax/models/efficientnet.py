"""EfficientNet-Lite0..4 in the layout of the `efficientnet-lite-pytorch` package.

Param paths mirror that package's state-dict keys (`blocks_3/expand_conv/kernel` is
`_blocks.3._expand_conv.weight`), so `pretrained/arch_efficientnet.py` reads as a rename. Lite
models are EfficientNets without squeeze-excitation, with ReLU6, and with the stem and head
widths left unscaled. Convolutions pad like TensorFlow's 'SAME' (more padding after than
before), which is what the package's static same-padding computes for its native image size.

Images are NHWC float32, already normalised (the Lite checkpoints expect (x - 127) / 128).
Compute dtype: `dtype="bfloat16"` runs convolutions in bfloat16 with float32 params; batch-norm
statistics and the logits stay float32.

Not for: the depthwise convolution's kernel and its gradients, or the XLA:CPU options they need
(`ftjax.ops.depthwise`); this file holds the architecture.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from ftjax.models.base import Model
from ftjax.models.layers import BatchNorm, Dropout
from ftjax.ops import depthwise

__all__ = [
    "LITE_VARIANTS",
    "BlockSpec",
    "EfficientNetConfig",
    "round_filters",
    "stages",
    "DepthwiseConv",
    "PointwiseConv",
    "MBConvBlock",
    "EfficientNetLite",
    "layer_groups",
    "efficientnet_lite",
    "config_from_dict",
]

# (width, depth, resolution, dropout) per variant, from the package's efficientnet_params.
LITE_VARIANTS: dict[str, tuple[float, float, int, float]] = {
    "efficientnet-lite0": (1.0, 1.0, 224, 0.2),
    "efficientnet-lite1": (1.0, 1.1, 240, 0.2),
    "efficientnet-lite2": (1.1, 1.2, 260, 0.3),
    "efficientnet-lite3": (1.2, 1.4, 280, 0.3),
    "efficientnet-lite4": (1.4, 1.8, 300, 0.3),
}

# Stages before width/depth scaling: (repeats, kernel, stride, expand ratio, in, out).
_BASE_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
_STEM_FILTERS = 32
_HEAD_FILTERS = 1280
# torch BatchNorm2d(momentum=0.01, eps=1e-3) == Flax momentum 0.99.
_BN_MOMENTUM = 0.99
_BN_EPSILON = 1e-3


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """One MBConv block after scaling."""

    kernel: int
    stride: int
    expand_ratio: int
    in_filters: int
    out_filters: int


@dataclasses.dataclass(frozen=True)
class EfficientNetConfig:
    """An EfficientNet-Lite variant and the task head."""

    num_classes: int
    width_coefficient: float = 1.0
    depth_coefficient: float = 1.0
    image_size: int = 224
    dropout_rate: float = 0.2
    drop_connect_rate: float = 0.2
    depth_divisor: int = 8
    dtype: str = "float32"

    def __post_init__(self):
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if not 0.0 <= self.dropout_rate < 1.0 or not 0.0 <= self.drop_connect_rate < 1.0:
            raise ValueError(
                f"dropout_rate and drop_connect_rate must be in [0, 1), got {self.dropout_rate}, {self.drop_connect_rate}"
            )

    @classmethod
    def lite(cls, variant: str, **task: Any) -> EfficientNetConfig:
        """A named variant ("efficientnet-lite0".."efficientnet-lite4") plus task fields."""
        if variant not in LITE_VARIANTS:
            raise ValueError(
                f"unknown EfficientNet variant {variant!r}; known: {sorted(LITE_VARIANTS)}"
            )
        width, depth, resolution, dropout = LITE_VARIANTS[variant]
        fields = dict(
            width_coefficient=width,
            depth_coefficient=depth,
            image_size=resolution,
            dropout_rate=dropout,
        )
        return cls(**{**fields, **task})


def round_filters(filters: int, cfg: EfficientNetConfig) -> int:
    """Width scaling rounded to the divisor, never more than 10% below the scaled value."""
    scaled = filters * cfg.width_coefficient
    divisor = cfg.depth_divisor
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def stages(cfg: EfficientNetConfig) -> list[list[BlockSpec]]:
    """The blocks of each stage. Lite keeps the first and last stage's repeats and the stem width."""
    out = []
    for i, (repeats, kernel, stride, expand, cin, cout) in enumerate(_BASE_STAGES):
        fixed = i in (0, len(_BASE_STAGES) - 1)
        n = repeats if fixed else int(math.ceil(cfg.depth_coefficient * repeats))
        cin = _STEM_FILTERS if i == 0 else round_filters(cin, cfg)
        cout = round_filters(cout, cfg)
        blocks = [BlockSpec(kernel, stride, expand, cin, cout)]
        blocks += [BlockSpec(kernel, 1, expand, cout, cout) for _ in range(n - 1)]
        out.append(blocks)
    return out


# The original code's conv init (only new, non-pretrained kernels use it).
_KERNEL_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class DepthwiseConv(nn.Module):
    """Depthwise conv with a Flax-Conv-shaped kernel (k, k, 1, C) and no bias."""

    kernel_size: int
    stride: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        kernel = self.param("kernel", _KERNEL_INIT, (self.kernel_size, self.kernel_size, 1, c))
        return depthwise.depthwise_conv(
            x.astype(self.dtype), kernel.astype(self.dtype), self.stride
        )


class PointwiseConv(nn.Module):
    """A 1x1 convolution without bias, as a matmul over pixels; kernel shaped as nn.Conv's (1, 1, in, out).

    Why not nn.Conv: XLA:CPU runs a 1x1 convolution and its two gradients through Eigen's spatial
    convolution, which also allocates scratch outside the step's planned buffers. As a dot the
    same contraction makes the Lite0 full step (b64, 64x64) about 20% faster and its peak memory
    30-60 MiB lower (benchmarks/results/vs_pytorch_notes.md).
    """

    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", _KERNEL_INIT, (1, 1, x.shape[-1], self.features))
        return lax.dot_general(
            x.astype(self.dtype), kernel[0, 0].astype(self.dtype), (((3,), (0,)), ((), ()))
        )


def _conv(features: int, kernel: int, stride: int, dtype, name: str) -> nn.Module:
    if kernel == 1 and stride == 1:
        return PointwiseConv(features, dtype, name=name)
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding="SAME",  # lax 'SAME' puts the extra pixel after, as TensorFlow does
        use_bias=False,
        dtype=dtype,
        kernel_init=_KERNEL_INIT,
        name=name,
    )


def _bn(name: str) -> BatchNorm:
    return BatchNorm(momentum=_BN_MOMENTUM, epsilon=_BN_EPSILON, dtype=jnp.float32, name=name)


class MBConvBlock(nn.Module):
    """Inverted residual: 1x1 expand -> depthwise -> 1x1 project, ReLU6, no squeeze-excitation."""

    spec: BlockSpec
    drop_connect_rate: float
    dtype: Any

    @nn.compact
    def __call__(self, inputs, *, train: bool):
        s = self.spec
        hidden = s.in_filters * s.expand_ratio
        x = inputs
        if s.expand_ratio != 1:
            x = _conv(hidden, 1, 1, self.dtype, "expand_conv")(x)
            x = nn.relu6(_bn("bn0")(x, train=train))
        x = DepthwiseConv(s.kernel, s.stride, self.dtype, name="depthwise_conv")(x)
        x = nn.relu6(_bn("bn1")(x, train=train))
        x = _conv(s.out_filters, 1, 1, self.dtype, "project_conv")(x)
        x = _bn("bn2")(x, train=train)
        if s.stride == 1 and s.in_filters == s.out_filters:
            # Drop connect (stochastic depth): a per-example keep mask scaled by 1/keep.
            keep = Dropout(self.drop_connect_rate, name="drop_connect")(
                jnp.ones((x.shape[0], 1, 1, 1), x.dtype), train=train
            )
            x = x * keep + inputs
        return x


class EfficientNetLite(nn.Module):
    """Stem, MBConv blocks, 1x1 head conv, global average pool, dropout and a new Dense head."""

    cfg: EfficientNetConfig

    @nn.compact
    def __call__(self, image, *, train: bool = False):
        cfg = self.cfg
        dtype = jnp.dtype(cfg.dtype)
        x = _conv(_STEM_FILTERS, 3, 2, dtype, "conv_stem")(image)
        x = nn.relu6(_bn("bn0")(x, train=train))
        blocks = [b for stage in stages(cfg) for b in stage]
        for idx, spec in enumerate(blocks):
            rate = cfg.drop_connect_rate * idx / len(blocks)  # the package scales it with depth
            x = MBConvBlock(spec, rate, dtype, name=f"blocks_{idx}")(x, train=train)
        x = _conv(_HEAD_FILTERS, 1, 1, dtype, "conv_head")(x)
        x = nn.relu6(_bn("bn1")(x, train=train))
        features = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        features = Dropout(cfg.dropout_rate, name="dropout")(features, train=train)
        return nn.Dense(cfg.num_classes, name="head")(features)


def layer_groups(cfg: EfficientNetConfig) -> tuple[tuple[str, str], ...]:
    """Stem, each stage's blocks, the head conv, the head: the depth order of gradual unfreezing."""
    groups = [("stem", "(conv_stem|bn0)/.*")]
    first = 0
    for s, stage in enumerate(stages(cfg)):
        ids = "|".join(str(i) for i in range(first, first + len(stage)))
        groups.append((f"stage_{s}", f"blocks_({ids})/.*"))
        first += len(stage)
    groups += [("head_conv", "(conv_head|bn1)/.*"), ("head", "head/.*")]
    return tuple(groups)


def efficientnet_lite(cfg: EfficientNetConfig) -> Model:
    """The ftjax Model for an EfficientNet-Lite classifier on batch["image"] (NHWC)."""
    return Model(
        module=EfficientNetLite(cfg),
        input_keys=("image",),
        layer_groups=layer_groups(cfg),
        head_pattern="head/.*",
        cpu_compiler_options=depthwise.CPU_COMPILER_OPTIONS,  # what its depthwise backward needs
    )


def config_from_dict(config: Mapping[str, Any], **task: Any) -> EfficientNetConfig:
    """From a checkpoint config dict ({"variant": "efficientnet-lite0", ...overrides}) plus task fields."""
    names = {f.name for f in dataclasses.fields(EfficientNetConfig)}
    overrides = {
        k: v for k, v in config.items() if k in names and k not in task and k != "num_classes"
    }
    variant = config.get("variant")
    if variant is None:
        return EfficientNetConfig(**overrides, **task)
    return EfficientNetConfig.lite(variant, **overrides, **task)
