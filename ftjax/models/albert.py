"""ALBERT encoder with a sequence-classification head (Hugging Face `AlbertModel` semantics).

ALBERT factorises the embeddings (width `embedding_size`, mapped to `hidden_size` by
`encoder/embedding_hidden_mapping_in`) and shares layers: `num_hidden_groups` groups of
`inner_group_num` layers hold all the params, and the `num_hidden_layers` applications cycle
through them (application i uses group i * num_hidden_groups // num_hidden_layers). Each layer
is BERT's post-LayerNorm layer (the shared blocks of `ftjax.models.transformer`) with no hidden
dropout on its feed-forward branch, as in transformers. Param paths: `encoder/group_0/layer_0/
attention/self/query` ...; `pretrained/arch_albert.py` maps ALBERT's names
(`encoder.albert_layer_groups.0.albert_layers.0.attention.query`) onto them.

Groups and gradual unfreezing: the natural groups are embeddings (with the embedding mapping),
one group per shared layer group (`group_0`, ... — every published ALBERT has exactly one),
pooler, head. A shared group is one set of params used at every depth, so it is one group:
unfreezing it trains all `num_hidden_layers` applications at once, and gradual unfreezing of a
one-group ALBERT walks head -> pooler -> the whole shared encoder -> embeddings (4 steps, not
12). Layer-wise LR decay likewise gives the shared block one rate. Finer control within a shared
block is not meaningful: its params are the same at every depth.

The head is a Dense layer on the pooler output ("cls", what `AlbertForSequenceClassification`
does), the masked mean of the last hidden states ("mean") or every token's last hidden state
("tokens": logits [B, L, K], AlbertForTokenClassification's `classifier`,
AlbertForQuestionAnswering's `qa_outputs`), behind dropout `classifier_dropout_prob`. Under
"tokens" there is no pooler (transformers builds those two without one), so no pooler group.

Compute dtype: `dtype="bfloat16"` runs matmuls in bfloat16 with float32 params; softmax,
LayerNorm statistics and the logits stay float32.
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
    "POOLINGS",
    "AlbertConfig",
    "AlbertEncoder",
    "AlbertClassifier",
    "group_of_layer",
    "layer_groups",
    "albert_classifier",
]

POOLINGS = transformer.POOLINGS


@dataclasses.dataclass(frozen=True)
class AlbertConfig:
    """ALBERT sizes (Hugging Face config.json names) and the task head."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    num_classes: int
    embedding_size: int = 128
    num_hidden_groups: int = 1
    inner_group_num: int = 1
    hidden_act: str = "gelu_new"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    classifier_dropout_prob: float = 0.1
    initializer_range: float = 0.02
    pooling: str = "cls"
    dtype: str = "float32"

    def __post_init__(self):
        transformer.check_sizes(self)
        transformer.check_pooling(self.pooling)
        if not 1 <= self.num_hidden_groups <= self.num_hidden_layers:
            raise ValueError(
                f"num_hidden_groups {self.num_hidden_groups} must be between 1 and "
                f"num_hidden_layers {self.num_hidden_layers}"
            )

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any], **task: Any) -> AlbertConfig:
        """From a Hugging Face config.json dict plus task fields (num_classes, pooling, dtype, ...)."""
        if hf.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(
                f"position_embedding_type {hf['position_embedding_type']!r} is not supported "
                "(absolute only)"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in hf.items() if k in names and k not in task}, **task)


def group_of_layer(cfg: AlbertConfig, i: int) -> int:
    """The shared group layer application `i` uses (transformers' int(i / (L / G)))."""
    return int(i / (cfg.num_hidden_layers / cfg.num_hidden_groups))


class AlbertLayerGroup(nn.Module):
    """`inner_group_num` post-LN layers (no feed-forward output dropout), applied in order."""

    cfg: AlbertConfig

    @nn.compact
    def __call__(self, x, mask_bias, *, train: bool):
        for j in range(self.cfg.inner_group_num):
            layer = transformer.PostLNLayer(self.cfg, ffn_output_dropout=False, name=f"layer_{j}")
            x = layer(x, mask_bias, train=train)
        return x


class AlbertEncoder(nn.Module):
    """The embedding mapping and `num_hidden_layers` applications of the shared groups."""

    cfg: AlbertConfig

    @nn.compact
    def __call__(self, x, mask_bias, *, train: bool):
        cfg = self.cfg
        x = transformer.dense(cfg, cfg.hidden_size, "embedding_hidden_mapping_in")(x)
        # Created once, called at every depth: that is what shares the params.
        groups = [AlbertLayerGroup(cfg, name=f"group_{g}") for g in range(cfg.num_hidden_groups)]
        for i in range(cfg.num_hidden_layers):
            x = groups[group_of_layer(cfg, i)](x, mask_bias, train=train)
        return x


class AlbertClassifier(nn.Module):
    """ALBERT embeddings, shared encoder, pooler (not under pooling "tokens") and a
    `num_classes` head."""

    cfg: AlbertConfig

    def setup(self):
        cfg = self.cfg
        self.embeddings = transformer.TextEmbeddings(cfg, cfg.embedding_size)
        self.encoder = AlbertEncoder(cfg)
        if cfg.pooling != "tokens":
            self.pooler = nn.Dense(  # `pooler.weight` in the checkpoint: no `dense` level
                cfg.hidden_size,
                dtype=jnp.dtype(cfg.dtype),
                kernel_init=nn.initializers.normal(cfg.initializer_range),
            )
        self.head_dropout = Dropout(cfg.classifier_dropout_prob)
        self.head = transformer.token_head(cfg.num_classes, cfg.initializer_range)

    def encode(
        self,
        input_ids,
        attention_mask,
        token_type_ids=None,
        position_ids=None,
        packed_at=None,
        *,
        train: bool = False,
    ):
        """(last hidden states (B, S, H), pooler output (B, H), or (N, H) for the N examples of
        packed rows; None under pooling "tokens"), float32."""
        positions = transformer.packed_positions(input_ids, position_ids, packed_at)
        x = self.embeddings(input_ids, token_type_ids, positions, train=train)
        hidden = self.encoder(x, transformer.attention_bias(attention_mask, packed_at), train=train)
        pooled = None
        if self.cfg.pooling != "tokens":
            first = transformer.first_tokens(hidden, packed_at)
            pooled = jnp.tanh(self.pooler(first)).astype(jnp.float32)
        return hidden.astype(jnp.float32), pooled

    def __call__(
        self,
        input_ids,
        attention_mask,
        token_type_ids=None,
        position_ids=None,
        packed_at=None,
        *,
        train: bool = False,
    ):
        hidden, pooled = self.encode(
            input_ids, attention_mask, token_type_ids, position_ids, packed_at, train=train
        )
        features = transformer.pool(hidden, attention_mask, self.cfg.pooling, pooled, packed_at)
        return self.head(self.head_dropout(features, train=train))


def layer_groups(num_hidden_groups: int, pooler: bool = True) -> tuple[tuple[str, str], ...]:
    """Embeddings (with the embedding mapping), each shared layer group, pooler (when the model
    has one), head."""
    groups = tuple((f"group_{g}", f"encoder/group_{g}/.*") for g in range(num_hidden_groups))
    pooler_group = (("pooler", "pooler/.*"),) if pooler else ()
    return (
        ("embeddings", "(embeddings|encoder/embedding_hidden_mapping_in)/.*"),
        *groups,
        *pooler_group,
        ("head", "head/.*"),
    )


def albert_classifier(cfg: AlbertConfig) -> Model:
    """The ftjax Model: inputs input_ids, attention_mask, token_type_ids."""
    return Model(
        module=AlbertClassifier(cfg),
        input_keys=("input_ids", "attention_mask", "token_type_ids"),
        layer_groups=layer_groups(cfg.num_hidden_groups, pooler=cfg.pooling != "tokens"),
        head_pattern="head/.*",
    )
