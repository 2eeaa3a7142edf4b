"""DistilBERT encoder with a sequence-classification head.

DistilBERT's layer is BERT's post-LayerNorm layer (the shared blocks of
`ftjax.models.transformer`) except that its attention branch has no hidden dropout before the
residual add; the embeddings are word + position (no token types). Param paths follow the
shared BERT layout (`encoder/layer_3/attention/self/query`), and `pretrained/arch_distilbert.py`
maps DistilBERT's names (`transformer.layer.3.attention.q_lin`) onto them. The config takes
DistilBERT's config.json names (dim, n_layers, n_heads, hidden_dim, activation, dropout,
attention_dropout, seq_classif_dropout) and holds them under the shared names; LayerNorm eps is
1e-12 as in transformers.

The head mirrors `DistilBertForSequenceClassification`'s pre_classifier -> ReLU -> classifier
on the [CLS] token (pooling "cls") or on the masked mean ("mean"), new for the task at
`head/dense` and `head/out_proj`; its dropout (seq_classif_dropout) is on the head's input (see
`transformer.ClassificationHead`). Under "tokens" the head is one Dense at `head` on every
token (logits [B, L, K]), as DistilBertForTokenClassification's `classifier` is, behind the
hidden dropout (`dropout`) as there. Inputs: input_ids and attention_mask (no token types).
Natural groups: embeddings, layer_0 ... layer_{n-1}, head.

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
    "HF_NAMES",
    "DistilBertConfig",
    "DistilBertClassifier",
    "layer_groups",
    "distilbert_classifier",
]

POOLINGS = transformer.POOLINGS

# DistilBERT config.json name -> the shared (BERT) name this config holds it under.
HF_NAMES = {
    "dim": "hidden_size",
    "n_layers": "num_hidden_layers",
    "n_heads": "num_attention_heads",
    "hidden_dim": "intermediate_size",
    "activation": "hidden_act",
    "dropout": "hidden_dropout_prob",
    "attention_dropout": "attention_probs_dropout_prob",
    "seq_classif_dropout": "classifier_dropout",
}


@dataclasses.dataclass(frozen=True)
class DistilBertConfig:
    """DistilBERT sizes under the shared encoder names, and the task head."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    num_classes: int
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    classifier_dropout: float = 0.2
    initializer_range: float = 0.02
    pooling: str = "cls"
    dtype: str = "float32"
    type_vocab_size: int = 0  # no token type embeddings

    def __post_init__(self):
        transformer.check_sizes(self)
        transformer.check_pooling(self.pooling)

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any], **task: Any) -> DistilBertConfig:
        """From a DistilBERT config.json dict plus task fields (num_classes, pooling, dtype, ...)."""
        names = {f.name for f in dataclasses.fields(cls)} - {"type_vocab_size", "layer_norm_eps"}
        renamed = {HF_NAMES.get(k, k): v for k, v in hf.items()}
        return cls(**{k: v for k, v in renamed.items() if k in names and k not in task}, **task)


class DistilBertClassifier(nn.Module):
    """Embeddings, the shared encoder without attention-output dropout, two-layer head (one
    Dense under pooling "tokens")."""

    cfg: DistilBertConfig

    def setup(self):
        cfg = self.cfg
        self.embeddings = transformer.TextEmbeddings(cfg, cfg.hidden_size)
        self.encoder = transformer.PostLNEncoder(
            cfg, cfg.num_hidden_layers, attention_output_dropout=False
        )
        if cfg.pooling == "tokens":
            self.head_dropout = Dropout(cfg.hidden_dropout_prob)
            self.head = transformer.token_head(cfg.num_classes, cfg.initializer_range)
        else:
            self.head_dropout = Dropout(cfg.classifier_dropout)
            self.head = transformer.ClassificationHead(
                cfg.hidden_size, cfg.num_classes, "relu", cfg.initializer_range
            )

    def encode(
        self, input_ids, attention_mask, position_ids=None, packed_at=None, *, train: bool = False
    ):
        """Last hidden states (B, S, H), float32 (DistilBertModel's last_hidden_state)."""
        positions = transformer.packed_positions(input_ids, position_ids, packed_at)
        x = self.embeddings(input_ids, position_ids=positions, train=train)
        hidden = self.encoder(x, transformer.attention_bias(attention_mask, packed_at), train=train)
        return hidden.astype(jnp.float32)

    def __call__(
        self, input_ids, attention_mask, position_ids=None, packed_at=None, *, train: bool = False
    ):
        hidden = self.encode(input_ids, attention_mask, position_ids, packed_at, train=train)
        features = transformer.pool(hidden, attention_mask, self.cfg.pooling, None, packed_at)
        return self.head(self.head_dropout(features, train=train))


def layer_groups(num_layers: int) -> tuple[tuple[str, str], ...]:
    """Embeddings, each encoder layer, head: the depth order of gradual unfreezing."""
    layers = tuple((f"layer_{i}", f"encoder/layer_{i}/.*") for i in range(num_layers))
    return (("embeddings", "embeddings/.*"), *layers, ("head", "head/.*"))


def distilbert_classifier(cfg: DistilBertConfig) -> Model:
    """The ftjax Model: inputs input_ids and attention_mask."""
    return Model(
        module=DistilBertClassifier(cfg),
        input_keys=("input_ids", "attention_mask"),
        layer_groups=layer_groups(cfg.num_hidden_layers),
        head_pattern="head/.*",
    )
