"""MobileNetV2 in torchvision's `mobilenet_v2` layout (width_mult and round_nearest as there).

Param paths read as torchvision's state-dict keys with '.' spelled '_' or '/':
`features_0_0/kernel` is `features.0.0.weight` (the stem conv; `features_0_1` its batch norm),
`features_5/conv_1_0/kernel` is `features.5.conv.1.0.weight` (block 5's depthwise conv),
`features_5/conv_2/kernel` is `features.5.conv.2.weight` (its linear 1x1 projection),
`features_18_0/kernel` is `features.18.0.weight` (the 1x1 conv to 1280). The classifier is
torchvision's: global average pool, dropout 0.2, and a new Dense `head`.

Convolutions pad like torch's `padding=(k - 1) // 2`, symmetric, not like TensorFlow's 'SAME':
on an even-sized input a stride-2 3x3 layer reads one pixel further up-left than 'SAME' would.
Images are NHWC float32, already normalised (torchvision's weights expect ImageNet mean/std).
Compute dtype: `dtype="bfloat16"` runs convolutions in bfloat16 with float32 params;
batch-norm statistics and the logits stay float32.

Not for: the depthwise kernel and its gradients (`ftjax.ops.depthwise`, TF 'SAME' padding, which
`torch_depthwise_conv` adapts) or the key map (`ftjax.pretrained.arch_mobilenet_v2`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from ftjax.models.base import Model
from ftjax.models.efficientnet import PointwiseConv
from ftjax.models.layers import BatchNorm, Dropout
from ftjax.ops import depthwise

__all__ = [
    "INVERTED_RESIDUAL_SETTING",
    "STEM_CHANNELS",
    "LAST_CHANNELS",
    "BlockSpec",
    "MobileNetV2Config",
    "make_divisible",
    "stem_channels",
    "last_channels",
    "stages",
    "torch_depthwise_conv",
    "DepthwiseConv",
    "InvertedResidual",
    "MobileNetV2",
    "layer_groups",
    "mobilenet_v2",
    "config_from_dict",
]

# torchvision's inverted_residual_setting: (expand ratio t, channels c, repeats n, stride s).
INVERTED_RESIDUAL_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
STEM_CHANNELS = 32
LAST_CHANNELS = 1280
# torch BatchNorm2d defaults (torchvision changes neither): momentum 0.1 (Flax 0.9), eps 1e-5.
_BN_MOMENTUM = 0.9
_BN_EPSILON = 1e-5
# torchvision's conv init, kaiming_normal_(mode="fan_out") (only new, non-pretrained kernels use it).
_KERNEL_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """One InvertedResidual block, torchvision's `features.<index>`."""

    index: int
    in_channels: int
    out_channels: int
    stride: int
    expand_ratio: int

    @property
    def hidden(self) -> int:
        return int(round(self.in_channels * self.expand_ratio))

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.in_channels == self.out_channels


@dataclasses.dataclass(frozen=True)
class MobileNetV2Config:
    """torchvision's MobileNetV2 arguments (width_mult, round_nearest, dropout) and the task head."""

    num_classes: int
    width_mult: float = 1.0
    round_nearest: int = 8
    dropout: float = 0.2
    image_size: int = 224
    dtype: str = "float32"

    def __post_init__(self):
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if not self.width_mult > 0 or self.round_nearest < 1:
            raise ValueError(
                f"width_mult must be > 0 and round_nearest >= 1, got {self.width_mult}, {self.round_nearest}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


def make_divisible(v: float, divisor: int, min_value: int | None = None) -> int:
    """torchvision's `_make_divisible`: round to a multiple of `divisor`, never more than 10% down."""
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def stem_channels(cfg: MobileNetV2Config) -> int:
    return make_divisible(STEM_CHANNELS * cfg.width_mult, cfg.round_nearest)


def last_channels(cfg: MobileNetV2Config) -> int:
    """The 1x1 head conv's width: 1280, scaled only by width_mult > 1 (as torchvision)."""
    return make_divisible(LAST_CHANNELS * max(1.0, cfg.width_mult), cfg.round_nearest)


def stages(cfg: MobileNetV2Config) -> list[list[BlockSpec]]:
    """The 17 blocks (features.1..17), grouped by the rows of the inverted residual setting."""
    out, cin, index = [], stem_channels(cfg), 1
    for t, c, n, s in INVERTED_RESIDUAL_SETTING:
        cout = make_divisible(c * cfg.width_mult, cfg.round_nearest)
        stage = []
        for i in range(n):
            stage.append(BlockSpec(index, cin, cout, s if i == 0 else 1, t))
            cin, index = cout, index + 1
        out.append(stage)
    return out


def torch_depthwise_conv(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """A depthwise conv with torch's symmetric padding (k - 1) // 2, via `depthwise.depthwise_conv`.

    For an odd kernel the output sizes agree with TF 'SAME'; only where 'SAME' would put less
    padding before (a stride-2 layer on an even size) does the placement differ. There the input
    is padded torch's way first, so that 'SAME' on it adds nothing before, and the extra output
    row or column 'SAME' adds after is cut off. The op's own gradients still apply; the pad and
    slice around it differentiate as usual.
    """
    k = kernel.shape[0]
    p = (k - 1) // 2
    pads, keep = [(0, 0)], [x.shape[0]]
    for n in x.shape[1:3]:
        out = (n + 2 * p - k) // stride + 1
        if depthwise.same_padding(n, k, stride)[0] == p:
            pads.append((0, 0))
        elif depthwise.same_padding(n + 2 * p, k, stride)[0] == 0:
            pads.append((p, p))
        else:  # not reached for odd kernels
            raise ValueError(f"no torch padding for size {n}, kernel {k}, stride {stride}")
        keep.append(out)
    pads.append((0, 0))
    if any(pads[1:3]):
        x = jnp.pad(x, pads)
    y = depthwise.depthwise_conv(x, kernel, stride)
    if y.shape[1:3] != tuple(keep[1:]):
        y = lax.slice(y, (0, 0, 0, 0), (keep[0], keep[1], keep[2], y.shape[3]))
    return y


class DepthwiseConv(nn.Module):
    """3x3 depthwise conv, torch padding, Flax-Conv-shaped kernel (k, k, 1, C), no bias."""

    stride: int
    kernel_size: int = 3
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        kernel = self.param("kernel", _KERNEL_INIT, (self.kernel_size, self.kernel_size, 1, c))
        return torch_depthwise_conv(x.astype(self.dtype), kernel.astype(self.dtype), self.stride)


def _bn(name: str) -> BatchNorm:
    return BatchNorm(momentum=_BN_MOMENTUM, epsilon=_BN_EPSILON, dtype=jnp.float32, name=name)


def _pointwise(features: int, dtype, name: str) -> nn.Module:
    # A 1x1 conv as a dot (see efficientnet.PointwiseConv); its init is torchvision's too.
    return PointwiseConv(features, dtype, name=name)


class InvertedResidual(nn.Module):
    """[1x1 expand, BN, ReLU6 if t != 1] -> 3x3 depthwise, BN, ReLU6 -> 1x1 linear, BN (+ x)."""

    spec: BlockSpec
    dtype: Any

    @nn.compact
    def __call__(self, inputs, *, train: bool):
        s = self.spec
        x, layer = inputs, 0
        if s.expand_ratio != 1:
            x = _pointwise(s.hidden, self.dtype, "conv_0_0")(x)
            x = nn.relu6(_bn("conv_0_1")(x, train=train))
            layer = 1
        x = DepthwiseConv(s.stride, dtype=self.dtype, name=f"conv_{layer}_0")(x)
        x = nn.relu6(_bn(f"conv_{layer}_1")(x, train=train))
        x = _pointwise(s.out_channels, self.dtype, f"conv_{layer + 1}")(x)
        x = _bn(f"conv_{layer + 2}")(x, train=train)
        return inputs + x if s.residual else x


class MobileNetV2(nn.Module):
    """features.0 stem, features.1..17 blocks, features.18 1x1 conv, pool, dropout, new `head`."""

    cfg: MobileNetV2Config

    @nn.compact
    def __call__(self, image, *, train: bool = False):
        cfg = self.cfg
        dtype = jnp.dtype(cfg.dtype)
        x = nn.Conv(
            stem_channels(cfg),
            (3, 3),
            strides=(2, 2),
            padding=((1, 1), (1, 1)),
            use_bias=False,
            dtype=dtype,
            kernel_init=_KERNEL_INIT,
            name="features_0_0",
        )(image)
        x = nn.relu6(_bn("features_0_1")(x, train=train))
        for spec in (b for stage in stages(cfg) for b in stage):
            x = InvertedResidual(spec, dtype, name=f"features_{spec.index}")(x, train=train)
        x = _pointwise(last_channels(cfg), dtype, "features_18_0")(x)
        x = nn.relu6(_bn("features_18_1")(x, train=train))
        features = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        features = Dropout(cfg.dropout, name="dropout")(features, train=train)
        return nn.Dense(cfg.num_classes, name="head")(features)


def layer_groups(cfg: MobileNetV2Config) -> tuple[tuple[str, str], ...]:
    """Stem, the blocks of each setting row (stage_0..6), the 1x1 head conv, the head."""
    groups = [("stem", "features_0_[01]/.*")]
    for i, stage in enumerate(stages(cfg)):
        ids = "|".join(str(b.index) for b in stage)
        groups.append((f"stage_{i}", f"features_({ids})/.*"))
    groups += [("head_conv", "features_18_[01]/.*"), ("head", "head/.*")]
    return tuple(groups)


def mobilenet_v2(cfg: MobileNetV2Config) -> Model:
    """The ftjax Model for a MobileNetV2 classifier on batch["image"] (NHWC)."""
    return Model(
        module=MobileNetV2(cfg),
        input_keys=("image",),
        layer_groups=layer_groups(cfg),
        head_pattern="head/.*",
        cpu_compiler_options=depthwise.CPU_COMPILER_OPTIONS,  # what its depthwise backward needs
    )


def config_from_dict(config: Mapping[str, Any], **task: Any) -> MobileNetV2Config:
    """From a checkpoint config dict ({"width_mult": 1.0, ...}) plus task fields (num_classes, ...)."""
    names = {f.name for f in dataclasses.fields(MobileNetV2Config)}
    fields = {
        k: v for k, v in config.items() if k in names and k not in task and k != "num_classes"
    }
    return MobileNetV2Config(**fields, **task)
