"""Vision Transformer in Hugging Face `ViTModel` layout, classifying from the CLS token.

Param paths mirror the checkpoint keys (`encoder/layer_3/attention/attention/query/kernel` is
`encoder.layer.3.attention.attention.query.weight`), so `pretrained/arch_vit.py` reads as a
rename. The self-attention and feed-forward expansion are the shared blocks of
`ftjax.models.transformer`. As in `ViTForImageClassification`, the head is a Dense layer on the CLS token after the
final LayerNorm; `ViTModel`'s pooler is not used.

Images are NHWC float32, already normalised, at the configured image size (a checkpoint of
another size loads with its position embeddings resampled, `ftjax.pretrained.posemb`). The
embeddings, attention and groups here are DINOv2's too (`ftjax.models.dinov2`). Compute dtype:
`dtype="bfloat16"` runs matmuls in bfloat16 with float32 params; softmax, LayerNorm statistics
and the logits stay float32.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ftjax.models import transformer
from ftjax.models.base import Model
from ftjax.models.layers import Dropout

__all__ = [
    "ViTConfig",
    "check_config",
    "check_image",
    "hf_fields",
    "PatchEmbeddings",
    "ViTEmbeddings",
    "ViTAttention",
    "OutputDense",
    "ViTLayer",
    "ViTEncoder",
    "ViTClassifier",
    "layer_groups",
    "vit_classifier",
]


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """ViT sizes (Hugging Face config.json names) and the task head."""

    num_classes: int
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    qkv_bias: bool = True
    initializer_range: float = 0.02
    dtype: str = "float32"

    def __post_init__(self):
        check_config(self)

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any], **task: Any) -> ViTConfig:
        """From a Hugging Face config.json dict plus task fields (num_classes, dtype, dropout)."""
        return cls(**hf_fields(cls, hf, task), **task)

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def check_config(cfg: Any) -> None:
    """The errors a ViT-family config raises for sizes the blocks cannot build."""
    transformer.check_sizes(cfg)
    if cfg.image_size % cfg.patch_size:
        raise ValueError(
            f"image_size {cfg.image_size} is not a multiple of patch_size {cfg.patch_size}"
        )


def check_image(cfg: Any, image) -> None:
    """Images must be NHWC at the size the model was built for (its position embeddings')."""
    expected = (cfg.image_size, cfg.image_size, cfg.num_channels)
    if tuple(image.shape[1:]) != expected:
        raise ValueError(
            f"images have shape {tuple(image.shape[1:])}, the model takes {expected} (NHWC)"
        )


def hf_fields(cls: type, hf: Mapping[str, Any], task: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of a Hugging Face config.json dict that are fields of the dataclass `cls` and
    not task fields, with square `image_size` / `patch_size` pairs as one int."""
    names = {f.name for f in dataclasses.fields(cls)}
    fields = {k: v for k, v in hf.items() if k in names and k not in task and k != "num_classes"}
    for key in ("image_size", "patch_size"):
        if isinstance(fields.get(key), (list, tuple)):
            h, w = fields[key]
            if h != w:
                raise ValueError(
                    f"{key} {fields[key]} is not square; only square images and patches are supported"
                )
            fields[key] = h
    return fields


def _init(cfg: Any):
    return nn.initializers.truncated_normal(cfg.initializer_range)


def _dense(cfg: Any, features: int, name: str) -> nn.Dense:
    return transformer.dense(cfg, features, name, kernel_init=_init(cfg))


class PatchEmbeddings(nn.Module):
    cfg: Any  # ViTConfig or a config with its fields

    @nn.compact
    def __call__(self, image):
        cfg = self.cfg
        p = cfg.patch_size
        x = nn.Conv(
            cfg.hidden_size,
            (p, p),
            strides=(p, p),
            padding="VALID",
            dtype=jnp.dtype(cfg.dtype),
            name="projection",
        )(image)
        return x.reshape(
            x.shape[0], -1, cfg.hidden_size
        )  # row-major patches, as torch's flatten(2)


class ViTEmbeddings(nn.Module):
    """CLS token + patches, plus position embeddings, then dropout.

    `registers` > 0 (DINOv2 with registers) inserts that many learned `register_tokens` after
    the CLS token once the positions are added: registers have no position.
    """

    cfg: Any  # ViTConfig or a config with its fields (models/dinov2.py)
    registers: int = 0

    @nn.compact
    def __call__(self, image, *, train: bool):
        cfg = self.cfg
        init = nn.initializers.truncated_normal(cfg.initializer_range)
        cls_token = self.param("cls_token", init, (1, 1, cfg.hidden_size))
        positions = self.param(
            "position_embeddings", init, (1, cfg.num_patches + 1, cfg.hidden_size)
        )
        patches = PatchEmbeddings(cfg, name="patch_embeddings")(image)
        batch = patches.shape[0]

        def tokens(param):
            return jnp.broadcast_to(param, (batch, *param.shape[1:])).astype(patches.dtype)

        x = jnp.concatenate([tokens(cls_token), patches], axis=1) + positions.astype(patches.dtype)
        if self.registers:
            registers = self.param(
                "register_tokens", nn.initializers.zeros, (1, self.registers, cfg.hidden_size)
            )
            x = jnp.concatenate([x[:, :1], tokens(registers), x[:, 1:]], axis=1)
        return Dropout(cfg.hidden_dropout_prob, name="dropout")(x, train=train)


class ViTAttention(nn.Module):
    """`attention/attention` (self-attention) and `attention/output/dense`, as in the checkpoint."""

    cfg: Any  # ViTConfig or a config with its fields

    @nn.compact
    def __call__(self, x, *, train: bool):
        context = transformer.SelfAttention(
            self.cfg,
            use_bias=self.cfg.qkv_bias,
            dropout_name="dropout",
            kernel_init=_init(self.cfg),
            name="attention",
        )(x, train=train)
        return OutputDense(self.cfg, name="output")(context, train=train)


class OutputDense(nn.Module):
    """dense -> dropout (`attention/output` and `output`); the residual add is in the layer."""

    cfg: Any  # ViTConfig or a config with its fields

    @nn.compact
    def __call__(self, x, *, train: bool):
        x = _dense(self.cfg, self.cfg.hidden_size, "dense")(x)
        return Dropout(self.cfg.hidden_dropout_prob, name="dropout")(x, train=train)


class ViTLayer(nn.Module):
    """Pre-LayerNorm transformer layer."""

    cfg: ViTConfig

    @nn.compact
    def __call__(self, x, *, train: bool):
        cfg = self.cfg
        x = x + ViTAttention(cfg, name="attention")(
            transformer.layer_norm(cfg, "layernorm_before")(x), train=train
        )
        hidden = transformer.Intermediate(cfg, _init(cfg), name="intermediate")(
            transformer.layer_norm(cfg, "layernorm_after")(x)
        )
        return x + OutputDense(cfg, name="output")(hidden, train=train)


class ViTEncoder(nn.Module):
    cfg: ViTConfig

    @nn.compact
    def __call__(self, x, *, train: bool):
        for i in range(self.cfg.num_hidden_layers):
            x = ViTLayer(self.cfg, name=f"layer_{i}")(x, train=train)
        return x


class ViTClassifier(nn.Module):
    """Embeddings, encoder, final LayerNorm and a Dense head on the CLS token."""

    cfg: ViTConfig

    def setup(self):
        self.embeddings = ViTEmbeddings(self.cfg)
        self.encoder = ViTEncoder(self.cfg)
        self.layernorm = transformer.layer_norm(self.cfg, "layernorm")
        self.head = nn.Dense(
            self.cfg.num_classes,
            kernel_init=nn.initializers.truncated_normal(self.cfg.initializer_range),
        )

    def encode(self, image, *, train: bool = False):
        """Last hidden states (B, 1 + patches, H) after the final LayerNorm, float32 (ViTModel's output)."""
        check_image(self.cfg, image)
        hidden = self.encoder(self.embeddings(image, train=train), train=train)
        return self.layernorm(hidden).astype(jnp.float32)

    def __call__(self, image, *, train: bool = False):
        return self.head(self.encode(image, train=train)[:, 0])


def layer_groups(num_layers: int) -> tuple[tuple[str, str], ...]:
    """Embeddings, each encoder layer, final LayerNorm, head: the depth order of gradual unfreezing."""
    layers = tuple((f"layer_{i}", f"encoder/layer_{i}/.*") for i in range(num_layers))
    return (
        ("embeddings", "embeddings/.*"),
        *layers,
        ("layernorm", "layernorm/.*"),
        ("head", "head/.*"),
    )


def vit_classifier(cfg: ViTConfig) -> Model:
    """The ftjax Model for a ViT classifier on batch["image"] (NHWC)."""
    return Model(
        module=ViTClassifier(cfg),
        input_keys=("image",),
        layer_groups=layer_groups(cfg.num_hidden_layers),
        head_pattern="head/.*",
    )
