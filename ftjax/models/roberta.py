"""RoBERTa and XLM-RoBERTa encoders with a sequence-classification head.

The encoder is BERT's (the shared post-LayerNorm blocks of `ftjax.models.transformer`, same
param paths as `ftjax.models.bert`); what differs is the embeddings: position ids count only
non-padding tokens and start after the padding index (`padding_idx + 1`, fairseq's
`make_positions`, as `RobertaEmbeddings` does), so a padded token gets position `padding_idx`
and `max_position_embeddings` (514) holds 512 usable positions. XLM-R has exactly this layout
with a bigger vocabulary.

The head: `RobertaForSequenceClassification` classifies the <s> token with dense -> tanh ->
out_proj, and `RobertaModel`'s pooler is untrained in the published checkpoints (fairseq has
none). So ftjax's head is that two-layer head, new for the task, at `head/dense` and
`head/out_proj` (ClassificationHead), on the <s> token (pooling "cls") or the masked mean of the
tokens ("mean"); the checkpoint's pooler and classifier are ignored. The one dropout is on the
head's input (transformers also applies it between the two layers; see ClassificationHead for
why ftjax does not). Under "tokens" the head is one Dense at `head` on every token (logits
[B, L, K]), as RobertaForTokenClassification's `classifier` and RobertaForQuestionAnswering's
`qa_outputs` are.

Natural groups: embeddings, layer_0 ... layer_{n-1}, head (no pooler group).

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
    "RobertaConfig",
    "position_ids",
    "RobertaClassifier",
    "layer_groups",
    "roberta_classifier",
]

POOLINGS = transformer.POOLINGS


@dataclasses.dataclass(frozen=True)
class RobertaConfig:
    """RoBERTa / XLM-R sizes (Hugging Face config.json names) and the task head."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    num_classes: int
    hidden_act: str = "gelu"
    max_position_embeddings: int = 514
    type_vocab_size: int = 1
    layer_norm_eps: float = 1e-5
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    classifier_dropout: float | None = None
    initializer_range: float = 0.02
    pad_token_id: int = 1
    pooling: str = "cls"
    dtype: str = "float32"

    def __post_init__(self):
        transformer.check_sizes(self)
        transformer.check_pooling(self.pooling)
        if not 0 <= self.pad_token_id < self.max_position_embeddings - 1:
            raise ValueError(
                f"pad_token_id {self.pad_token_id} leaves no positions in max_position_embeddings "
                f"{self.max_position_embeddings} (positions start at pad_token_id + 1)"
            )

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any], **task: Any) -> RobertaConfig:
        """From a Hugging Face config.json dict plus task fields (num_classes, pooling, dtype, ...)."""
        if hf.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(
                f"position_embedding_type {hf['position_embedding_type']!r} is not supported "
                "(absolute only)"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in hf.items() if k in names and k not in task}, **task)

    @property
    def max_length(self) -> int:
        """The longest input the position embeddings hold."""
        return self.max_position_embeddings - self.pad_token_id - 1


def position_ids(input_ids: jnp.ndarray, padding_idx: int) -> jnp.ndarray:
    """padding_idx + 1, + 2, ... over non-padding tokens; padding tokens get padding_idx."""
    mask = (input_ids != padding_idx).astype(jnp.int32)
    return jnp.cumsum(mask, axis=1) * mask + padding_idx


class RobertaClassifier(nn.Module):
    """Embeddings, BERT encoder and the two-layer head (one Dense under pooling "tokens");
    `encode` gives the last hidden states."""

    cfg: RobertaConfig

    def setup(self):
        cfg = self.cfg
        self.embeddings = transformer.TextEmbeddings(cfg, cfg.hidden_size)
        self.encoder = transformer.PostLNEncoder(cfg, cfg.num_hidden_layers)
        rate = cfg.hidden_dropout_prob if cfg.classifier_dropout is None else cfg.classifier_dropout
        self.head_dropout = Dropout(rate)
        if cfg.pooling == "tokens":
            self.head = transformer.token_head(cfg.num_classes, cfg.initializer_range)
        else:
            self.head = transformer.ClassificationHead(
                cfg.hidden_size, cfg.num_classes, "tanh", cfg.initializer_range
            )

    def encode(
        self,
        input_ids,
        attention_mask,
        token_type_ids=None,
        positions=None,
        packed_at=None,
        *,
        train: bool = False,
    ):
        """Last hidden states (B, S, H), float32 (RobertaModel's last_hidden_state). Packed rows'
        `positions` (0, 1, ... per example) start after padding_idx, as an unpacked row's do."""
        pad = self.cfg.pad_token_id
        if packed_at is None:
            positions = position_ids(input_ids, pad)
        else:
            positions = transformer.packed_positions(input_ids, positions, packed_at)
            positions = jnp.where(attention_mask > 0, positions + pad + 1, pad)
        x = self.embeddings(input_ids, token_type_ids, positions, train=train)
        hidden = self.encoder(x, transformer.attention_bias(attention_mask, packed_at), train=train)
        return hidden.astype(jnp.float32)

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
        hidden = self.encode(
            input_ids, attention_mask, token_type_ids, position_ids, packed_at, train=train
        )
        features = transformer.pool(hidden, attention_mask, self.cfg.pooling, None, packed_at)
        return self.head(self.head_dropout(features, train=train))


def layer_groups(num_layers: int) -> tuple[tuple[str, str], ...]:
    """Embeddings, each encoder layer, head: the depth order of gradual unfreezing."""
    layers = tuple((f"layer_{i}", f"encoder/layer_{i}/.*") for i in range(num_layers))
    return (("embeddings", "embeddings/.*"), *layers, ("head", "head/.*"))


def roberta_classifier(cfg: RobertaConfig) -> Model:
    """The ftjax Model: inputs input_ids, attention_mask, token_type_ids (all zeros for RoBERTa)."""
    return Model(
        module=RobertaClassifier(cfg),
        input_keys=("input_ids", "attention_mask", "token_type_ids"),
        layer_groups=layer_groups(cfg.num_hidden_layers),
        head_pattern="head/.*",
    )
