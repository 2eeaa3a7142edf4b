"""Transformer-encoder blocks shared by the text and vision encoders.

BERT, RoBERTa/XLM-R, ELECTRA, DistilBERT and ALBERT compute the same post-LayerNorm layer
(self-attention, dense, residual + LayerNorm, feed-forward, residual + LayerNorm); they differ in
embeddings, in which residual branches have dropout, and in their checkpoint key names, which
each `ftjax/pretrained/arch_*.py` maps onto the one param layout used here:

    attention/self/{query,key,value}   attention/output/{dense,LayerNorm}
    intermediate/dense                 output/{dense,LayerNorm}

ViT (pre-LayerNorm) shares the self-attention and the intermediate projection. The blocks read
their sizes from a config object with Hugging Face's names (`EncoderConfig`); each model's own
config dataclass has those fields. Compute dtype: matmuls run in `cfg.dtype` with float32
params; attention scores, softmax and LayerNorm statistics stay float32.

Dropout placement follows each original implementation exactly (it changes the dropout masks,
so it changes training), hence the `*_dropout` switches.

Poolings (`POOLINGS`, what every text encoder's head reads): "cls" (the first token, or the
architecture's pooler on it), "mean" (masked mean of the last hidden states) or "tokens" (no
pooling: the head on every token, logits [B, L, K], for token classification and extractive QA).
A token-level head is always one Dense (`token_head`), as every transformers *ForTokenClassification
and *ForQuestionAnswering has, even where the sequence head has two layers.

Packed batches (`ftjax.data.packing`: several examples per row) pass `packed_at` [N, 3], each
example's (row, segment, first token), with segment ids in place of the 0/1 attention mask:
`attention_bias` then lets tokens attend within their segment only, and `pool` / `first_tokens`
read each example from its own tokens, so the head sees [N, H] in example order.

Not here: embeddings, pooler modules and sequence heads specific to one architecture (they live
in the model files).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp

from ftjax.models.layers import ACTIVATIONS, Dropout

__all__ = [
    "EncoderConfig",
    "TextEmbeddings",
    "dense",
    "layer_norm",
    "additive_mask",
    "attention_bias",
    "first_tokens",
    "attend",
    "SelfAttention",
    "ResidualOutput",
    "PostLNAttention",
    "Intermediate",
    "PostLNLayer",
    "PostLNEncoder",
    "POOLINGS",
    "mean_pool",
    "pool",
    "token_head",
    "ClassificationHead",
    "check_sizes",
    "check_pooling",
    "head_size",
]

POOLINGS = ("cls", "mean", "tokens")

Initializer = Callable[..., jax.Array]


class EncoderConfig(Protocol):
    """The fields the shared blocks read (Hugging Face config.json names)."""

    hidden_size: int
    num_attention_heads: int
    intermediate_size: int
    hidden_act: str
    layer_norm_eps: float
    hidden_dropout_prob: float
    attention_probs_dropout_prob: float
    initializer_range: float
    dtype: str


def head_size(cfg: Any) -> int:
    """The attention head size: `cfg.attention_head_size` where the config has one and sets it
    (a head-pruned BERT, `ftjax.compress.structured`), else hidden_size // num_attention_heads."""
    return getattr(cfg, "attention_head_size", None) or cfg.hidden_size // cfg.num_attention_heads


def check_sizes(cfg: Any) -> None:
    """The errors every encoder config raises for sizes the blocks cannot build."""
    explicit = getattr(cfg, "attention_head_size", None)
    if explicit is not None and explicit < 1:
        raise ValueError(f"attention_head_size must be >= 1 (or None), got {explicit}")
    if explicit is None and cfg.hidden_size % cfg.num_attention_heads:
        raise ValueError(
            f"hidden_size {cfg.hidden_size} is not a multiple of num_attention_heads "
            f"{cfg.num_attention_heads}"
        )
    if cfg.hidden_act not in ACTIVATIONS:
        raise ValueError(
            f"hidden_act {cfg.hidden_act!r} is not supported; use one of {sorted(ACTIVATIONS)}"
        )
    if cfg.num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {cfg.num_classes}")


def check_pooling(pooling: str) -> None:
    if pooling not in POOLINGS:
        raise ValueError(f"pooling {pooling!r} is not one of {POOLINGS}")


def dense(
    cfg: EncoderConfig,
    features: int,
    name: str,
    *,
    use_bias: bool = True,
    kernel_init: Initializer | None = None,
) -> nn.Dense:
    """A Dense in the compute dtype, initialised N(0, initializer_range) unless told otherwise."""
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=jnp.dtype(cfg.dtype),
        kernel_init=kernel_init or nn.initializers.normal(cfg.initializer_range),
        name=name,
    )


def layer_norm(cfg: EncoderConfig, name: str = "LayerNorm") -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=jnp.dtype(cfg.dtype), name=name)


def additive_mask(attention_mask: jax.Array) -> jax.Array:
    """(B, S) 1/0 mask -> (B, 1, 1, S) bias: padded keys get the most negative float32, as in
    transformers (a finite value, so a fully padded row stays finite)."""
    return jnp.where(attention_mask[:, None, None, :] > 0, 0.0, jnp.finfo(jnp.float32).min)


def attention_bias(attention_mask: jax.Array, packed_at: jax.Array | None = None) -> jax.Array:
    """The additive attention bias: `additive_mask` for a 0/1 mask; for packed rows (`packed_at`
    given, `attention_mask` holding segment ids) (B, 1, S, S), each token attending to the tokens
    of its own segment only (padding, segment 0, to none: its row of scores stays finite)."""
    if packed_at is None:
        return additive_mask(attention_mask)
    same = (attention_mask[:, :, None] == attention_mask[:, None, :]) & (
        attention_mask[:, None, :] > 0
    )
    return jnp.where(same[:, None], 0.0, jnp.finfo(jnp.float32).min)


def first_tokens(hidden: jax.Array, packed_at: jax.Array | None = None) -> jax.Array:
    """Each example's first token ([CLS]): hidden[:, 0], or for packed rows each example's own."""
    if packed_at is None:
        return hidden[:, 0]
    return hidden[packed_at[:, 0], packed_at[:, 2]]


def packed_positions(
    input_ids: jax.Array, position_ids: jax.Array | None, packed_at: jax.Array | None
) -> jax.Array:
    """Position ids: 0..S-1 (broadcast over rows), or the packed batch's (restarting per example)."""
    if packed_at is not None:
        if position_ids is None:
            raise ValueError("a packed batch needs position_ids (0, 1, ... restarting per example)")
        return position_ids
    return jnp.arange(input_ids.shape[1])[None, :] if position_ids is None else position_ids


def attend(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask_bias: jax.Array | None,
    dropout: Dropout,
    *,
    train: bool,
) -> jax.Array:
    """Scaled dot-product attention over (B, S, heads, head_dim) q/k/v -> (B, S, heads * head_dim).

    Scores and softmax in float32 whatever the compute dtype; probabilities back in v's dtype.
    """
    head_dim = q.shape[-1]
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / math.sqrt(head_dim)
    if mask_bias is not None:
        scores = scores + mask_bias
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    probs = dropout(probs, train=train)
    context = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
    return context.reshape(*context.shape[:2], -1)


class TextEmbeddings(nn.Module):
    """(word + token type) + position embeddings -> LayerNorm -> dropout, transformers' order for
    RoBERTa, ELECTRA and ALBERT (BERT keeps its own module: it sums in another order).

    `features` is the embedding width (ELECTRA/ALBERT `embedding_size`, else hidden_size); no
    `token_type_embeddings` when `cfg.type_vocab_size` is 0 (DistilBERT). Position ids default
    to 0..S-1.
    """

    cfg: Any
    features: int

    @nn.compact
    def __call__(self, input_ids, token_type_ids=None, position_ids=None, *, train: bool):
        cfg = self.cfg

        def embed(n, name):
            init = nn.initializers.normal(cfg.initializer_range)
            return nn.Embed(n, self.features, embedding_init=init, name=name)

        if position_ids is None:
            position_ids = jnp.arange(input_ids.shape[1])[None, :]
        x = embed(cfg.vocab_size, "word_embeddings")(input_ids)
        if cfg.type_vocab_size:
            if token_type_ids is None:
                token_type_ids = jnp.zeros_like(input_ids)
            x = x + embed(cfg.type_vocab_size, "token_type_embeddings")(token_type_ids)
        x = x + embed(cfg.max_position_embeddings, "position_embeddings")(position_ids)
        x = layer_norm(cfg)(x)
        return Dropout(cfg.hidden_dropout_prob)(x, train=train)


class SelfAttention(nn.Module):
    """query/key/value projections to heads x `head_size(cfg)` and multi-head attention (no
    output projection, which reads those heads x head_size features).

    `dropout_name` names the attention-probabilities dropout (None: Flax's automatic name); the
    name seeds its dropout masks, so each model keeps the one it always had.
    """

    cfg: Any
    use_bias: bool = True
    dropout_name: str | None = None
    kernel_init: Initializer | None = None

    @nn.compact
    def __call__(self, x, mask_bias=None, *, train: bool):
        cfg = self.cfg
        heads = cfg.num_attention_heads
        head_dim = head_size(cfg)

        def project(name):
            y = dense(
                cfg, heads * head_dim, name, use_bias=self.use_bias, kernel_init=self.kernel_init
            )(x)
            return y.reshape(*y.shape[:2], heads, head_dim)

        q, k, v = project("query"), project("key"), project("value")
        dropout = Dropout(cfg.attention_probs_dropout_prob, name=self.dropout_name)
        return attend(q, k, v, mask_bias, dropout, train=train)


class ResidualOutput(nn.Module):
    """dense -> dropout -> LayerNorm(x + residual): BERT's `attention/output` and `output`."""

    cfg: Any
    dropout: bool = True

    @nn.compact
    def __call__(self, x, residual, *, train: bool):
        x = dense(self.cfg, self.cfg.hidden_size, "dense")(x)
        if self.dropout:
            x = Dropout(self.cfg.hidden_dropout_prob)(x, train=train)
        return layer_norm(self.cfg)(x + residual)


class PostLNAttention(nn.Module):
    """`self` (self-attention) then `output` (projection, residual, LayerNorm)."""

    cfg: Any
    output_dropout: bool = True

    @nn.compact
    def __call__(self, x, mask_bias, *, train: bool):
        context = SelfAttention(self.cfg, name="self")(x, mask_bias, train=train)
        return ResidualOutput(self.cfg, self.output_dropout, name="output")(context, x, train=train)


class Intermediate(nn.Module):
    """The feed-forward expansion: dense to intermediate_size, then the activation."""

    cfg: Any
    kernel_init: Initializer | None = None

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        y = dense(cfg, cfg.intermediate_size, "dense", kernel_init=self.kernel_init)(x)
        return ACTIVATIONS[cfg.hidden_act](y)


class PostLNLayer(nn.Module):
    """A post-LayerNorm encoder layer (BERT's `BertLayer`).

    `attention_output_dropout` / `ffn_output_dropout`: whether the attention and feed-forward
    branches apply hidden dropout before their residual add (BERT both, DistilBERT the
    feed-forward only, ALBERT the attention only).
    """

    cfg: Any
    attention_output_dropout: bool = True
    ffn_output_dropout: bool = True

    @nn.compact
    def __call__(self, x, mask_bias, *, train: bool):
        attended = PostLNAttention(self.cfg, self.attention_output_dropout, name="attention")(
            x, mask_bias, train=train
        )
        hidden = Intermediate(self.cfg, name="intermediate")(attended)
        return ResidualOutput(self.cfg, self.ffn_output_dropout, name="output")(
            hidden, attended, train=train
        )


class PostLNEncoder(nn.Module):
    """`num_layers` post-LN layers named layer_0 ... layer_{n-1} (each with its own params)."""

    cfg: Any
    num_layers: int
    attention_output_dropout: bool = True
    ffn_output_dropout: bool = True

    @nn.compact
    def __call__(self, x, mask_bias, *, train: bool):
        for i in range(self.num_layers):
            x = PostLNLayer(
                self.cfg,
                self.attention_output_dropout,
                self.ffn_output_dropout,
                name=f"layer_{i}",
            )(x, mask_bias, train=train)
        return x


def mean_pool(hidden: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """Mean of the hidden states over unmasked tokens (sentence-transformers' pooling), float32."""
    mask = attention_mask.astype(jnp.float32)[..., None]
    return (hidden.astype(jnp.float32) * mask).sum(1) / jnp.maximum(mask.sum(1), 1e-9)


def pool(
    hidden: jax.Array,
    attention_mask: jax.Array,
    pooling: str,
    cls: jax.Array | None = None,
    packed_at: jax.Array | None = None,
) -> jax.Array:
    """The head's input under `pooling`: `cls` ("cls"; the first token's hidden state when None,
    for encoders without a pooler), the masked mean ("mean") or every token ("tokens"), float32.
    Packed rows (`packed_at`): one [H] per example, from its own segment's tokens."""
    if pooling == "tokens":
        if packed_at is not None:
            raise ValueError(
                'pooling "tokens" has one output per token: it cannot read packed rows'
            )
        return hidden.astype(jnp.float32)
    if pooling == "mean":
        if packed_at is None:
            return mean_pool(hidden, attention_mask)
        rows = packed_at[:, 0]
        return mean_pool(hidden[rows], attention_mask[rows] == packed_at[:, 1:2])
    return (first_tokens(hidden, packed_at) if cls is None else cls).astype(jnp.float32)


def token_head(num_classes: int, initializer_range: float = 0.02) -> nn.Dense:
    """The one-Dense head every token gets under pooling "tokens" (transformers' `classifier` of
    *ForTokenClassification, `qa_outputs` of *ForQuestionAnswering), float32; named by its
    attribute (`head`) when assigned in `setup`."""
    return nn.Dense(num_classes, kernel_init=nn.initializers.normal(initializer_range))


class ClassificationHead(nn.Module):
    """dense -> activation -> out_proj: the two-layer head of RobertaForSequenceClassification
    (tanh), ElectraForSequenceClassification (gelu) and DistilBertForSequenceClassification
    (relu), always new for the task, float32.

    transformers also applies dropout between the two layers; this head does not: the model's
    one dropout is on the head's input, because a dropout inside the head would make feature
    caching (`ftjax.feature_cache`, which caches the head's input) refuse head-only phases.
    """

    hidden_size: int
    num_classes: int
    activation: str
    initializer_range: float = 0.02

    @nn.compact
    def __call__(self, features):
        init = nn.initializers.normal(self.initializer_range)
        x = nn.Dense(self.hidden_size, kernel_init=init, name="dense")(features)
        x = ACTIVATIONS[self.activation](x)
        return nn.Dense(self.num_classes, kernel_init=init, name="out_proj")(x)
