"""DINOv2 in Hugging Face `Dinov2Model` layout (and `Dinov2WithRegistersModel`'s), classifying as
`Dinov2ForImageClassification` does: a Dense head on concat(CLS, mean of the patch tokens) after
the final LayerNorm (register tokens are in neither).

Shared with ViT (`ftjax.models.vit`): the patch and position embeddings (with the register tokens
the registers variant inserts after CLS), the self-attention and its output projection, the
natural groups. DINOv2's own: the layer (norm1 -> attention -> layer scale -> drop path, +x;
norm2 -> MLP -> layer scale -> drop path, +x), `layer_scale{1,2}/lambda1`, and the MLP: `mlp/fc1`
-> activation -> `mlp/fc2`, or with `use_swiglu_ffn` `mlp/weights_in` (gate and up halves) ->
silu(gate) * up -> `mlp/weights_out`. Param paths mirror the checkpoint keys
(`encoder/layer_2/mlp/fc1/kernel` is `encoder.layer.2.mlp.fc1.weight`). The pre-training
`mask_token` is not a param.

Image size: DINOv2 checkpoints are trained at 518 px (37 x 37 patches of 14) and fine-tuned at
224, and transformers resamples their position embeddings on every forward. Here the model is
built at the run's size (`image_size`) and the checkpoint's embeddings are resampled once, at
load (`ftjax.pretrained.posemb`): the same numbers, no resize in the compiled step.

Dropout, all through ftjax's freeze-aware `Dropout`: hidden dropout on the embeddings and after
the attention's output projection (transformers 4's `Dinov2SelfOutput`), attention-probability
dropout, and stochastic depth (`drop_path_rate`, one rate for every layer, as transformers has
it) on both residual branches, per example. Compute dtype: `dtype="bfloat16"` runs matmuls in
bfloat16 with float32 params; softmax, LayerNorm statistics, the pooled features and the logits
stay float32.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ftjax.models import transformer, vit
from ftjax.models.base import Model
from ftjax.models.layers import ACTIVATIONS, Dropout

__all__ = [
    "Dinov2Config",
    "LayerScale",
    "Mlp",
    "SwiGLU",
    "Dinov2Layer",
    "Dinov2Encoder",
    "Dinov2Classifier",
    "dinov2_classifier",
]


@dataclasses.dataclass(frozen=True)
class Dinov2Config:
    """DINOv2 sizes (Hugging Face config.json names) and the task head.

    `image_size` is the size the model takes, which the loader sets to the run's (the checkpoint's
    position embeddings are resampled to it). `num_register_tokens` is 0 for plain DINOv2.
    """

    num_classes: int
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    mlp_ratio: float = 4
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-6
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    initializer_range: float = 0.02
    image_size: int = 224
    patch_size: int = 14
    num_channels: int = 3
    qkv_bias: bool = True
    layerscale_value: float = 1.0
    drop_path_rate: float = 0.0
    use_swiglu_ffn: bool = False
    num_register_tokens: int = 0
    dtype: str = "float32"

    def __post_init__(self):
        vit.check_config(self)
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        if self.num_register_tokens < 0:
            raise ValueError(f"num_register_tokens must be >= 0, got {self.num_register_tokens}")

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any], **task: Any) -> Dinov2Config:
        """From a Hugging Face config.json dict plus task fields (num_classes, dtype, dropout)."""
        return cls(**vit.hf_fields(cls, hf, task), **task)

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def mlp_hidden_size(self) -> int:
        """The MLP's hidden width; SwiGLU keeps two thirds of it, rounded up to a multiple of 8."""
        hidden = int(self.hidden_size * self.mlp_ratio)
        return (int(hidden * 2 / 3) + 7) // 8 * 8 if self.use_swiglu_ffn else hidden


def _dense(cfg: Dinov2Config, features: int, name: str) -> nn.Dense:
    init = nn.initializers.truncated_normal(cfg.initializer_range)
    return transformer.dense(cfg, features, name, kernel_init=init)


class LayerScale(nn.Module):
    """x * lambda1: a learned per-channel scale of a residual branch."""

    cfg: Dinov2Config

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        init = nn.initializers.constant(cfg.layerscale_value)
        return x * self.param("lambda1", init, (cfg.hidden_size,)).astype(x.dtype)


class Mlp(nn.Module):
    """fc1 -> activation -> fc2."""

    cfg: Dinov2Config

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        x = ACTIVATIONS[cfg.hidden_act](_dense(cfg, cfg.mlp_hidden_size, "fc1")(x))
        return _dense(cfg, cfg.hidden_size, "fc2")(x)


class SwiGLU(nn.Module):
    """weights_in (gate and up, concatenated) -> silu(gate) * up -> weights_out."""

    cfg: Dinov2Config

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        gate, up = jnp.split(_dense(cfg, 2 * cfg.mlp_hidden_size, "weights_in")(x), 2, axis=-1)
        return _dense(cfg, cfg.hidden_size, "weights_out")(nn.silu(gate) * up)


class Dinov2Layer(nn.Module):
    """Pre-LayerNorm layer with layer scale and stochastic depth on both branches."""

    cfg: Dinov2Config

    @nn.compact
    def __call__(self, x, *, train: bool):
        cfg = self.cfg
        drop_path = Dropout(cfg.drop_path_rate, name="drop_path")

        def residual(branch):  # stochastic depth: a per-example keep mask, scaled by 1 / keep
            if cfg.drop_path_rate == 0.0:
                return branch
            return branch * drop_path(jnp.ones((branch.shape[0], 1, 1), branch.dtype), train=train)

        attended = vit.ViTAttention(cfg, name="attention")(
            transformer.layer_norm(cfg, "norm1")(x), train=train
        )
        x = x + residual(LayerScale(cfg, name="layer_scale1")(attended))
        mlp = (SwiGLU if cfg.use_swiglu_ffn else Mlp)(cfg, name="mlp")
        hidden = mlp(transformer.layer_norm(cfg, "norm2")(x))
        return x + residual(LayerScale(cfg, name="layer_scale2")(hidden))


class Dinov2Encoder(nn.Module):
    cfg: Dinov2Config

    @nn.compact
    def __call__(self, x, *, train: bool):
        for i in range(self.cfg.num_hidden_layers):
            x = Dinov2Layer(self.cfg, name=f"layer_{i}")(x, train=train)
        return x


class Dinov2Classifier(nn.Module):
    """Embeddings, encoder, final LayerNorm and a Dense head on concat(CLS, mean of patches)."""

    cfg: Dinov2Config

    def setup(self):
        cfg = self.cfg
        self.embeddings = vit.ViTEmbeddings(cfg, registers=cfg.num_register_tokens)
        self.encoder = Dinov2Encoder(cfg)
        self.layernorm = transformer.layer_norm(cfg, "layernorm")
        self.head = nn.Dense(
            cfg.num_classes, kernel_init=nn.initializers.truncated_normal(cfg.initializer_range)
        )

    def encode(self, image, *, train: bool = False):
        """Last hidden states (B, 1 + registers + patches, H) after the final LayerNorm, float32
        (Dinov2Model's `last_hidden_state`; its `pooler_output` is [:, 0])."""
        vit.check_image(self.cfg, image)
        hidden = self.encoder(self.embeddings(image, train=train), train=train)
        return self.layernorm(hidden).astype(jnp.float32)

    def features(self, image, *, train: bool = False):
        """What the head reads: concat(CLS, mean of the patch tokens), (B, 2H) float32."""
        hidden = self.encode(image, train=train)
        patches = hidden[:, 1 + self.cfg.num_register_tokens :]
        return jnp.concatenate([hidden[:, 0], patches.mean(axis=1)], axis=-1)

    def __call__(self, image, *, train: bool = False):
        return self.head(self.features(image, train=train))


def dinov2_classifier(cfg: Dinov2Config) -> Model:
    """The ftjax Model for a DINOv2 classifier on batch["image"] (NHWC)."""
    return Model(
        module=Dinov2Classifier(cfg),
        input_keys=("image",),
        layer_groups=vit.layer_groups(cfg.num_hidden_layers),
        head_pattern="head/.*",
    )
