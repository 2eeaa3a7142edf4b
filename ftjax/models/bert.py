"""BERT encoder with a sequence-classification head, in Hugging Face `BertModel` layout.

Param paths mirror the checkpoint keys (`encoder/layer_3/attention/self/query/kernel` is
`encoder.layer.3.attention.self.query.weight`), so the key map in `pretrained/arch_bert.py` reads
as a rename. The encoder layers are the shared post-LayerNorm blocks of
`ftjax.models.transformer` (RoBERTa, ELECTRA, DistilBERT and ALBERT use them too). Covers
BERT-base/large, MiniLM and other post-LayerNorm BERT checkpoints with absolute position
embeddings. The head is a Dense layer on either the pooler output ("cls",
what `BertForSequenceClassification` does), the masked mean of the last hidden states
("mean", what sentence-transformers checkpoints such as all-MiniLM were trained for) or every
token's last hidden state ("tokens": logits [B, L, K], `BertForTokenClassification`'s
`classifier`, `BertForQuestionAnswering`'s `qa_outputs`). Under "tokens" there is no pooler
(transformers builds those two without one), so no pooler params and no pooler group.

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
from ftjax.models.transformer import mean_pool

__all__ = [
    "POOLINGS",
    "BertConfig",
    "BertEmbeddings",
    "BertPooler",
    "mean_pool",
    "BertClassifier",
    "layer_groups",
    "bert_classifier",
]

POOLINGS = transformer.POOLINGS


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """The sizes of a BERT encoder (Hugging Face config.json names) and the task head."""

    vocab_size: int
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
    # None: hidden_size // num_attention_heads; set by structured head pruning
    # (ftjax.compress.structured), which keeps the head size while dropping heads.
    attention_head_size: int | None = None

    def __post_init__(self):
        transformer.check_sizes(self)
        transformer.check_pooling(self.pooling)

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any], **task: Any) -> BertConfig:
        """From a Hugging Face config.json dict plus task fields (num_classes, pooling, dtype, ...)."""
        if hf.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(
                f"position_embedding_type {hf['position_embedding_type']!r} is not supported (absolute only)"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in hf.items() if k in names and k not in task}, **task)


class BertEmbeddings(nn.Module):
    cfg: BertConfig

    @nn.compact
    def __call__(self, input_ids, token_type_ids, positions, *, train: bool):
        cfg = self.cfg
        embed = lambda n, name: nn.Embed(
            n,
            cfg.hidden_size,
            embedding_init=nn.initializers.normal(cfg.initializer_range),
            name=name,
        )
        x = embed(cfg.vocab_size, "word_embeddings")(input_ids)
        x = x + embed(cfg.max_position_embeddings, "position_embeddings")(positions)
        x = x + embed(cfg.type_vocab_size, "token_type_embeddings")(token_type_ids)
        x = transformer.layer_norm(cfg)(x)
        return Dropout(cfg.hidden_dropout_prob)(x, train=train)


class BertPooler(nn.Module):
    """tanh(dense) on each example's first token, (N, H) -> (N, H)."""

    cfg: BertConfig

    @nn.compact
    def __call__(self, first_tokens):
        return jnp.tanh(transformer.dense(self.cfg, self.cfg.hidden_size, "dense")(first_tokens))


class BertClassifier(nn.Module):
    """BERT encoder, pooler (not under pooling "tokens") and a `num_classes` head; `encode`
    gives the encoder outputs."""

    cfg: BertConfig

    def setup(self):
        cfg = self.cfg
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = transformer.PostLNEncoder(cfg, cfg.num_hidden_layers)
        if cfg.pooling != "tokens":
            self.pooler = BertPooler(cfg)
        rate = cfg.hidden_dropout_prob if cfg.classifier_dropout is None else cfg.classifier_dropout
        self.head_dropout = Dropout(rate)
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
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        positions = transformer.packed_positions(input_ids, position_ids, packed_at)
        x = self.embeddings(input_ids, token_type_ids, positions, train=train)
        hidden = self.encoder(x, transformer.attention_bias(attention_mask, packed_at), train=train)
        pooled = None
        if self.cfg.pooling != "tokens":
            pooled = self.pooler(transformer.first_tokens(hidden, packed_at)).astype(jnp.float32)
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


def layer_groups(num_layers: int, pooler: bool = True) -> tuple[tuple[str, str], ...]:
    """Embeddings, each encoder layer, pooler (when the model has one), head: the depth order of
    gradual unfreezing."""
    layers = tuple((f"layer_{i}", f"encoder/layer_{i}/.*") for i in range(num_layers))
    pooler_group = (("pooler", "pooler/.*"),) if pooler else ()
    return (("embeddings", "embeddings/.*"), *layers, *pooler_group, ("head", "head/.*"))


def bert_classifier(cfg: BertConfig) -> Model:
    """The ftjax Model for a BERT classifier: inputs input_ids, attention_mask, token_type_ids."""
    return Model(
        module=BertClassifier(cfg),
        input_keys=("input_ids", "attention_mask", "token_type_ids"),
        layer_groups=layer_groups(cfg.num_hidden_layers, pooler=cfg.pooling != "tokens"),
        head_pattern="head/.*",
    )
