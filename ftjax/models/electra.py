"""ELECTRA (discriminator) encoder with a sequence-classification head, in Hugging Face
`ElectraModel` layout.

Embeddings of width `embedding_size` (word + token type + position, LayerNorm, dropout), then
`embeddings_project` to `hidden_size` when the two differ (the small models), then BERT's
encoder (the shared post-LayerNorm blocks of `ftjax.models.transformer`, same param paths as
`ftjax.models.bert`). ELECTRA has no pooler.

The head mirrors `ElectraForSequenceClassification`'s: dense -> gelu -> out_proj on the [CLS]
token (pooling "cls"), or on the masked mean of the tokens ("mean"), new for the task at
`head/dense` and `head/out_proj`; the one dropout is on the head's input (see
`transformer.ClassificationHead`). Under "tokens" the head is one Dense at `head` on every
token (logits [B, L, K]), as ElectraForTokenClassification's `classifier` and
ElectraForQuestionAnswering's `qa_outputs` are. Natural groups: embeddings (with
`embeddings_project`), layer_0 ... layer_{n-1}, head.

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

__all__ = ["POOLINGS", "ElectraConfig", "ElectraClassifier", "layer_groups", "electra_classifier"]

POOLINGS = transformer.POOLINGS


@dataclasses.dataclass(frozen=True)
class ElectraConfig:
    """ELECTRA sizes (Hugging Face config.json names) and the task head."""

    vocab_size: int
    embedding_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    num_classes: int
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    classifier_dropout: float | None = None
    initializer_range: float = 0.02
    pooling: str = "cls"
    dtype: str = "float32"

    def __post_init__(self):
        transformer.check_sizes(self)
        transformer.check_pooling(self.pooling)

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any], **task: Any) -> ElectraConfig:
        """From a Hugging Face config.json dict plus task fields (num_classes, pooling, dtype, ...)."""
        if hf.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(
                f"position_embedding_type {hf['position_embedding_type']!r} is not supported "
                "(absolute only)"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        fields = {k: v for k, v in hf.items() if k in names and k not in task}
        fields.setdefault("embedding_size", hf.get("hidden_size"))
        return cls(**fields, **task)


class ElectraClassifier(nn.Module):
    """Embeddings, optional projection, BERT encoder, two-layer head (one Dense under pooling
    "tokens")."""

    cfg: ElectraConfig

    def setup(self):
        cfg = self.cfg
        self.embeddings = transformer.TextEmbeddings(cfg, cfg.embedding_size)
        if cfg.embedding_size != cfg.hidden_size:
            self.embeddings_project = transformer.dense(cfg, cfg.hidden_size, "embeddings_project")
        self.encoder = transformer.PostLNEncoder(cfg, cfg.num_hidden_layers)
        rate = cfg.hidden_dropout_prob if cfg.classifier_dropout is None else cfg.classifier_dropout
        self.head_dropout = Dropout(rate)
        if cfg.pooling == "tokens":
            self.head = transformer.token_head(cfg.num_classes, cfg.initializer_range)
        else:
            self.head = transformer.ClassificationHead(
                cfg.hidden_size, cfg.num_classes, "gelu", cfg.initializer_range
            )

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
        """Last hidden states (B, S, H), float32 (ElectraModel's last_hidden_state)."""
        positions = transformer.packed_positions(input_ids, position_ids, packed_at)
        x = self.embeddings(input_ids, token_type_ids, positions, train=train)
        if self.cfg.embedding_size != self.cfg.hidden_size:
            x = self.embeddings_project(x)
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
    """Embeddings (and their projection), each encoder layer, head."""
    layers = tuple((f"layer_{i}", f"encoder/layer_{i}/.*") for i in range(num_layers))
    return (("embeddings", "(embeddings|embeddings_project)/.*"), *layers, ("head", "head/.*"))


def electra_classifier(cfg: ElectraConfig) -> Model:
    """The ftjax Model: inputs input_ids, attention_mask, token_type_ids."""
    return Model(
        module=ElectraClassifier(cfg),
        input_keys=("input_ids", "attention_mask", "token_type_ids"),
        layer_groups=layer_groups(cfg.num_hidden_layers),
        head_pattern="head/.*",
    )
