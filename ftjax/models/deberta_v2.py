"""DeBERTa-v2 / v3 encoder with a sequence-classification head, in Hugging Face `DebertaV2Model`
layout (`model_type` "deberta-v2").

What differs from BERT is the attention: disentangled self-attention adds to the content-to-content
scores q_i . k_j a content-to-position term q_i . Pk[d(i, j)] ("c2p") and a position-to-content
term k_j . Pq[d(i, j)] ("p2c"), where Pq / Pk project the shared relative-position embeddings
(`encoder.rel_embeddings`, LayerNorm-ed under `norm_rel_ebd` "layer_norm") with the layer's own
query / key projections (`share_att_key`, v3) or with separate `pos_query_proj` / `pos_key_proj`,
and d(i, j) is the relative distance i - j, log-bucketed beyond `position_buckets` / 2
(`log_bucket_position`, transformers' `make_log_bucket_position`) and clipped to the table's span.
All terms are scaled by sqrt(head_dim x (1 + number of terms)). Absolute position embeddings are
added to the input only under `position_biased_input` (v2: yes, v3: no); token types only when
`type_vocab_size` > 0 (v3 has none). The optional ConvLayer (`conv_kernel_size` > 0, odd, as in
deberta-v2-xlarge) mixes a 1-d convolution of the embeddings into the first layer's output.
Every layer is otherwise BERT's post-LayerNorm layer (the shared `ResidualOutput` and
`Intermediate` of `ftjax.models.transformer`). Padding follows transformers exactly: a query-key
pair is masked when either token is padding (padded tokens attend uniformly, and the embeddings,
the ConvLayer output and so every hidden state of a padded token are zeroed where transformers
zeroes them), so hidden states match at every position, padding included.

Param paths mirror the checkpoint keys where the shared layout has no name of its own
(`encoder/layer_2/attention/self/pos_key_proj`, `encoder/rel_embeddings`, `encoder/conv/conv`)
and use the shared names where it has (`attention/self/query` is `attention.self.query_proj`), so
LoRA's named targets and the other tools that read the shared layout apply unchanged.

The head. `DebertaV2ForSequenceClassification` reads the [CLS] token through its ContextPooler
(dropout `pooler_dropout`, dense `pooler_hidden_size`, activation `pooler_hidden_act`), then
dropout (`cls_dropout`, else `hidden_dropout_prob`) and the `classifier` Linear. Only files of
classes that have that pooler carry it (`has_pooled_checkpoint`: config.json's `architectures`
names a DebertaV2 *ForSequenceClassification or *ForMultipleChoice); the published pretrained
files (DebertaV2Model, *ForMaskedLM) have none. So under pooling "cls":

- the checkpoint has the pooler (`pretrained_pooler`): it loads as `pooler/dense`, its own
  natural group, and the new head is the classifier alone, one Dense at `head/out_proj`;
- it has none: the pooler would be as new as the classifier, so both are the head, new for the
  task: dense -> pooler_hidden_act -> out_proj at `head/dense`, `head/out_proj`
  (`transformer.ClassificationHead`, exactly ContextPooler + classifier), and a head-only phase
  trains the pooler too (as RoBERTa's head, `ftjax.models.roberta`).

The one head dropout is on the head's input, at the classifier's rate (see ClassificationHead
for why not inside the head; the pretrained pooler keeps its own `pooler_dropout`). Under "mean"
the head is that new two-layer head on the masked mean of the tokens (a checkpoint's pooler,
trained on [CLS], is not read); under "tokens" one Dense at `head` on every token (logits [B, L,
K]), as DebertaV2ForTokenClassification's `classifier` and DebertaV2ForQuestionAnswering's
`qa_outputs` are.

Natural groups, in depth order: embeddings, layer_0 ... layer_{n-1}, pooler (pretrained pooler
only), head. The shared relative-position embeddings and their LayerNorm
(`encoder/rel_embeddings`, `encoder/LayerNorm`) belong to "embeddings": every layer reads them,
so training them changes what every layer computes, frozen layers included; in the bottom group
they train only once every layer does (gradual unfreezing thaws them last, with the token
embeddings, and layer-wise LR decay gives them the embeddings' rate), so a frozen layer stays the
function it was. The ConvLayer belongs to layer_0, whose output it rewrites.

Compute dtype: `dtype="bfloat16"` runs matmuls in bfloat16 with float32 params; attention scores
(all three terms), softmax, LayerNorm statistics and the logits stay float32.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ftjax.models import transformer
from ftjax.models.base import Model
from ftjax.models.layers import ACTIVATIONS, Dropout

__all__ = [
    "POOLINGS",
    "ATTENTION_TERMS",
    "DebertaV2Config",
    "has_pooled_checkpoint",
    "log_bucket_position",
    "relative_positions",
    "pair_mask_bias",
    "DisentangledSelfAttention",
    "DebertaV2Encoder",
    "DebertaV2Classifier",
    "layer_groups",
    "deberta_v2_classifier",
]

POOLINGS = transformer.POOLINGS
ATTENTION_TERMS = ("c2p", "p2c")  # the `pos_att_type` entries DeBERTa-v2 computes
_REL_NORMS = ("none", "layer_norm")  # `norm_rel_ebd` entries
# The transformers classes whose files hold the ContextPooler (`pooler.dense`).
_POOLED_CLASS_SUFFIXES = ("ForSequenceClassification", "ForMultipleChoice")


def has_pooled_checkpoint(hf: Mapping[str, Any]) -> bool:
    """Whether a checkpoint config.json's `architectures` name a DeBERTa-v2 class that has the
    ContextPooler (its weights then carry `pooler.dense`)."""
    archs = hf.get("architectures") or []
    return any(a.startswith("DebertaV2") and a.endswith(_POOLED_CLASS_SUFFIXES) for a in archs)


def _terms(pos_att_type: Any) -> tuple[str, ...]:
    """`pos_att_type` ("p2c|c2p", a list, or None) as a tuple (transformers' parsing)."""
    if pos_att_type is None:
        return ()
    if isinstance(pos_att_type, str):
        pos_att_type = pos_att_type.lower().split("|")
    return tuple(t.strip() for t in pos_att_type if t.strip())


@dataclasses.dataclass(frozen=True)
class DebertaV2Config:
    """DeBERTa-v2 sizes (Hugging Face config.json names and defaults) and the task head."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    num_classes: int
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 0
    layer_norm_eps: float = 1e-7
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    initializer_range: float = 0.02
    embedding_size: int | None = None  # None: hidden_size (no `embed_proj`)
    attention_head_size: int | None = None  # None: hidden_size // num_attention_heads
    position_biased_input: bool = True
    relative_attention: bool = False
    max_relative_positions: int = -1  # < 1: max_position_embeddings
    position_buckets: int = -1  # <= 0: no log buckets
    pos_att_type: tuple[str, ...] = ()
    share_att_key: bool = False
    norm_rel_ebd: str = "none"
    conv_kernel_size: int = 0  # 0: no ConvLayer
    conv_act: str = "tanh"
    conv_groups: int = 1
    pooler_hidden_size: int | None = None  # None: hidden_size
    pooler_hidden_act: str = "gelu"
    pooler_dropout: float = 0.0
    cls_dropout: float | None = None  # None: hidden_dropout_prob
    pretrained_pooler: bool = False  # the checkpoint holds the ContextPooler (see the module doc)
    pooling: str = "cls"
    dtype: str = "float32"

    def __post_init__(self):
        transformer.check_sizes(self)
        transformer.check_pooling(self.pooling)
        object.__setattr__(self, "pos_att_type", _terms(self.pos_att_type))
        unknown = [t for t in self.pos_att_type if t not in ATTENTION_TERMS]
        if unknown:
            raise ValueError(
                f"pos_att_type {'|'.join(self.pos_att_type)!r} has {unknown}; DeBERTa-v2 computes "
                f"{' and '.join(ATTENTION_TERMS)} only (e.g. 'p2c|c2p')"
            )
        norms = {t.strip() for t in self.norm_rel_ebd.lower().split("|")}
        if not norms <= set(_REL_NORMS):
            raise ValueError(f"norm_rel_ebd {self.norm_rel_ebd!r} is not one of {_REL_NORMS}")
        if self.rel_layer_norm and not self.relative_attention:
            raise ValueError(
                "norm_rel_ebd 'layer_norm' normalises the relative-position embeddings, which a "
                "model with relative_attention false does not have: set norm_rel_ebd to 'none'"
            )
        if self.relative_attention and self.position_buckets > 0 and self.position_buckets < 4:
            raise ValueError(
                f"position_buckets must be >= 4 (or <= 0), got {self.position_buckets}"
            )
        for key in ("pooler_hidden_act", "conv_act"):
            if getattr(self, key) not in ACTIVATIONS:
                raise ValueError(
                    f"{key} {getattr(self, key)!r} is not supported; use one of "
                    f"{sorted(ACTIVATIONS)}"
                )
        if self.pooler_hidden_size not in (None, self.hidden_size):
            raise ValueError(
                f"pooler_hidden_size {self.pooler_hidden_size} differs from hidden_size "
                f"{self.hidden_size}; the ContextPooler reads and writes hidden_size features"
            )
        if self.conv_kernel_size < 0 or (self.conv_kernel_size and self.conv_kernel_size % 2 == 0):
            raise ValueError(
                f"conv_kernel_size {self.conv_kernel_size} must be 0 (no ConvLayer) or odd "
                "(transformers' ConvLayer pads (k - 1) // 2 per side, which keeps the length "
                "only for odd k)"
            )
        if self.conv_kernel_size and self.hidden_size % self.conv_groups:
            raise ValueError(
                f"conv_groups {self.conv_groups} does not divide hidden_size {self.hidden_size}"
            )

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any], **task: Any) -> DebertaV2Config:
        """From a Hugging Face config.json dict plus task fields (num_classes, pooling, dtype,
        ...); `pretrained_pooler` from its `architectures` (`has_pooled_checkpoint`)."""
        names = {f.name for f in dataclasses.fields(cls)} - {"pretrained_pooler"}
        fields = {k: v for k, v in hf.items() if k in names and k not in task and v is not None}
        task.setdefault("pretrained_pooler", has_pooled_checkpoint(hf))
        return cls(**fields, **task)

    @property
    def relative_distance(self) -> int:
        """The largest relative distance the buckets are laid out for (transformers'
        `max_relative_positions`, max_position_embeddings when unset)."""
        if self.max_relative_positions >= 1:
            return self.max_relative_positions
        return self.max_position_embeddings

    @property
    def relative_span(self) -> int:
        """Half the relative-embedding table: position_buckets when set, else relative_distance."""
        return self.position_buckets if self.position_buckets > 0 else self.relative_distance

    @property
    def rel_layer_norm(self) -> bool:
        """Whether the relative embeddings are LayerNorm-ed (norm_rel_ebd "layer_norm")."""
        return "layer_norm" in {t.strip() for t in self.norm_rel_ebd.lower().split("|")}

    @property
    def width(self) -> int:
        """The embedding width (`embedding_size`, else hidden_size)."""
        return self.embedding_size or self.hidden_size

    @property
    def has_pooler(self) -> bool:
        """Whether the model has a `pooler` group (the checkpoint's, read under "cls")."""
        return self.pretrained_pooler and self.pooling == "cls"

    @property
    def classifier_dropout(self) -> float:
        return self.hidden_dropout_prob if self.cls_dropout is None else self.cls_dropout


def log_bucket_position(relative: np.ndarray, bucket_size: int, max_position: int) -> np.ndarray:
    """transformers' `make_log_bucket_position`, in float32 as it computes it: distances within
    bucket_size / 2 kept, longer ones log-spaced up to max_position (beyond it they keep growing
    and the attention clips them to the table)."""
    sign = np.sign(relative)
    mid = bucket_size // 2
    abs_pos = np.where((relative < mid) & (relative > -mid), mid - 1, np.abs(relative))
    abs_pos = abs_pos.astype(np.float32)
    ratio = np.log(abs_pos / np.float32(mid)) / np.log(np.float32((max_position - 1) / mid))
    log_pos = np.ceil(ratio * np.float32(mid - 1)) + np.float32(mid)
    out = np.where(abs_pos <= mid, relative.astype(np.float32), log_pos * sign)
    return out.astype(np.int64)


def relative_positions(length: int, buckets: int, max_position: int) -> np.ndarray:
    """(length, length) relative distances i - j of query i to key j, log-bucketed when
    `buckets` > 0 (transformers' `build_relative_position`); a trace-time constant."""
    ids = np.arange(length)
    relative = ids[:, None] - ids[None, :]
    if buckets > 0 and max_position > 0:
        relative = log_bucket_position(relative, buckets, max_position)
    return relative


def pair_mask_bias(attention_mask: jax.Array) -> jax.Array:
    """(B, S) 1/0 mask -> (B, 1, S, S) bias masking every pair with a padded query or key
    (DeBERTa's `get_attention_mask`): the most negative float32, finite, so a padded query's
    row is uniform as in transformers."""
    keep = attention_mask > 0
    pair = keep[:, None, :, None] & keep[:, None, None, :]
    return jnp.where(pair, 0.0, jnp.finfo(jnp.float32).min)


def _gather_distances(scores: jax.Array, index: np.ndarray) -> jax.Array:
    """scores (B, h, S, R) over table rows -> (B, h, S, S): entry (i, j) from row index[i, j]."""
    index = jnp.broadcast_to(jnp.asarray(index, jnp.int32), (*scores.shape[:2], *index.shape))
    return jnp.take_along_axis(scores, index, axis=-1)


class DisentangledSelfAttention(nn.Module):
    """query/key/value projections and disentangled attention (content-to-content plus the
    `pos_att_type` terms over the relative embeddings); no output projection."""

    cfg: DebertaV2Config

    @nn.compact
    def __call__(self, x, mask_bias, rel_embeddings, rel_pos, *, train: bool):
        cfg = self.cfg
        heads, head_dim = cfg.num_attention_heads, transformer.head_size(cfg)

        def projection(name):
            layer = transformer.dense(cfg, heads * head_dim, name)
            return lambda y: layer(y).reshape(*y.shape[:-1], heads, head_dim)

        query, key, value = projection("query"), projection("key"), projection("value")
        q, k, v = query(x), key(x), value(x)
        terms = sum(t in cfg.pos_att_type for t in ATTENTION_TERMS)
        scale = math.sqrt(head_dim * (1 + terms))  # counted even without relative_attention
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / scale
        if cfg.relative_attention:
            rel = Dropout(cfg.hidden_dropout_prob, name="pos_dropout")(rel_embeddings, train=train)
            span = cfg.relative_span
            if "c2p" in cfg.pos_att_type:  # q_i . Pk[d(i, j)]
                pos_key = key if cfg.share_att_key else projection("pos_key_proj")
                c2p = jnp.einsum("bqhd,rhd->bhqr", q, pos_key(rel)).astype(jnp.float32)
                index = np.clip(rel_pos + span, 0, 2 * span - 1)
                scores = scores + _gather_distances(c2p, index) / scale
            if "p2c" in cfg.pos_att_type:  # k_j . Pq[-d(j, i)], gathered as transformers does
                pos_query = query if cfg.share_att_key else projection("pos_query_proj")
                p2c = jnp.einsum("bkhd,rhd->bhkr", k, pos_query(rel)).astype(jnp.float32)
                index = np.clip(-rel_pos + span, 0, 2 * span - 1)
                scores = scores + jnp.swapaxes(_gather_distances(p2c, index), -1, -2) / scale
        probs = jax.nn.softmax(scores + mask_bias, axis=-1).astype(v.dtype)
        probs = Dropout(cfg.attention_probs_dropout_prob, name="dropout")(probs, train=train)
        context = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
        return context.reshape(*context.shape[:2], -1)


class DebertaV2Attention(nn.Module):
    """`self` (disentangled self-attention) then `output` (projection, residual, LayerNorm)."""

    cfg: DebertaV2Config

    @nn.compact
    def __call__(self, x, mask_bias, rel_embeddings, rel_pos, *, train: bool):
        context = DisentangledSelfAttention(self.cfg, name="self")(
            x, mask_bias, rel_embeddings, rel_pos, train=train
        )
        return transformer.ResidualOutput(self.cfg, name="output")(context, x, train=train)


class DebertaV2Layer(nn.Module):
    """attention, intermediate, output: BERT's post-LayerNorm layer with DeBERTa's attention."""

    cfg: DebertaV2Config

    @nn.compact
    def __call__(self, x, mask_bias, rel_embeddings, rel_pos, *, train: bool):
        cfg = self.cfg
        attended = DebertaV2Attention(cfg, name="attention")(
            x, mask_bias, rel_embeddings, rel_pos, train=train
        )
        hidden = transformer.Intermediate(cfg, name="intermediate")(attended)
        return transformer.ResidualOutput(cfg, name="output")(hidden, attended, train=train)


class ConvLayer(nn.Module):
    """transformers' ConvLayer: a 1-d convolution of the embeddings (padded positions zeroed),
    dropout, `conv_act`, added to the first layer's output, LayerNorm, padded positions zeroed."""

    cfg: DebertaV2Config

    @nn.compact
    def __call__(self, embeddings, residual, keep, *, train: bool):
        cfg = self.cfg
        pad = (cfg.conv_kernel_size - 1) // 2
        out = nn.Conv(
            cfg.hidden_size,
            (cfg.conv_kernel_size,),
            padding=[(pad, pad)],
            feature_group_count=cfg.conv_groups,
            dtype=jnp.dtype(cfg.dtype),
            kernel_init=nn.initializers.normal(cfg.initializer_range),
            name="conv",
        )(embeddings)
        out = jnp.where(keep[..., None], out, 0)
        out = ACTIVATIONS[cfg.conv_act](Dropout(cfg.hidden_dropout_prob)(out, train=train))
        out = transformer.layer_norm(cfg)(residual + out)
        return jnp.where(keep[..., None], out, 0)


class DebertaV2Embeddings(nn.Module):
    """word (+ position under position_biased_input) (+ token type when type_vocab_size > 0)
    -> embed_proj (when embedding_size != hidden_size) -> LayerNorm -> padding zeroed -> dropout."""

    cfg: DebertaV2Config

    @nn.compact
    def __call__(self, input_ids, token_type_ids, keep, *, train: bool):
        cfg = self.cfg

        def embed(n, name):
            init = nn.initializers.normal(cfg.initializer_range)
            return nn.Embed(n, cfg.width, embedding_init=init, name=name)

        x = embed(cfg.vocab_size, "word_embeddings")(input_ids)
        if cfg.position_biased_input:
            positions = jnp.arange(input_ids.shape[1])[None, :]
            x = x + embed(cfg.max_position_embeddings, "position_embeddings")(positions)
        if cfg.type_vocab_size:
            if token_type_ids is None:
                token_type_ids = jnp.zeros_like(input_ids)
            x = x + embed(cfg.type_vocab_size, "token_type_embeddings")(token_type_ids)
        if cfg.width != cfg.hidden_size:
            x = transformer.dense(cfg, cfg.hidden_size, "embed_proj", use_bias=False)(x)
        x = transformer.layer_norm(cfg)(x)
        x = jnp.where(keep[..., None], x, 0)
        return Dropout(cfg.hidden_dropout_prob)(x, train=train)


class DebertaV2Encoder(nn.Module):
    """The relative embeddings (`rel_embeddings`, `LayerNorm`), layer_0 ... layer_{n-1} and the
    ConvLayer after layer_0 (`conv`, when conv_kernel_size > 0)."""

    cfg: DebertaV2Config

    @nn.compact
    def __call__(self, x, keep, *, train: bool):
        cfg = self.cfg
        mask_bias = pair_mask_bias(keep)
        rel, rel_pos = None, None
        if cfg.relative_attention:
            rows = 2 * cfg.relative_span
            init = nn.initializers.normal(cfg.initializer_range)
            table = nn.Embed(rows, cfg.hidden_size, embedding_init=init, name="rel_embeddings")
            rel = table(jnp.arange(rows))
            if cfg.rel_layer_norm:
                rel = transformer.layer_norm(cfg)(rel)
            rel_pos = relative_positions(x.shape[1], cfg.position_buckets, cfg.relative_distance)
        hidden = x
        for i in range(cfg.num_hidden_layers):
            layer = DebertaV2Layer(cfg, name=f"layer_{i}")
            hidden = layer(hidden, mask_bias, rel, rel_pos, train=train)
            if i == 0 and cfg.conv_kernel_size:
                hidden = ConvLayer(cfg, name="conv")(x, hidden, keep, train=train)
        return hidden


class ContextPooler(nn.Module):
    """The checkpoint's pooler: dropout (pooler_dropout) on the [CLS] token, dense,
    pooler_hidden_act."""

    cfg: DebertaV2Config

    @nn.compact
    def __call__(self, hidden, *, train: bool):
        cfg = self.cfg
        x = Dropout(cfg.pooler_dropout)(hidden[:, 0], train=train)
        x = transformer.dense(cfg, cfg.hidden_size, "dense")(x)
        return ACTIVATIONS[cfg.pooler_hidden_act](x)


class OutputLayer(nn.Module):
    """The classifier on a pretrained pooler: one Dense, named `out_proj` so that the head's
    output layer is `head/out_proj` whichever pooler the model has, float32."""

    num_classes: int
    initializer_range: float = 0.02

    @nn.compact
    def __call__(self, features):
        init = nn.initializers.normal(self.initializer_range)
        return nn.Dense(self.num_classes, kernel_init=init, name="out_proj")(features)


class DebertaV2Classifier(nn.Module):
    """Embeddings, encoder, the checkpoint's pooler (pretrained_pooler, pooling "cls") and the
    head (see the module docstring); `encode` gives the encoder outputs."""

    cfg: DebertaV2Config

    def setup(self):
        cfg = self.cfg
        self.embeddings = DebertaV2Embeddings(cfg)
        self.encoder = DebertaV2Encoder(cfg)
        if cfg.has_pooler:
            self.pooler = ContextPooler(cfg)
        self.head_dropout = Dropout(cfg.classifier_dropout)
        if cfg.pooling == "tokens":
            self.head = transformer.token_head(cfg.num_classes, cfg.initializer_range)
        elif cfg.has_pooler:
            self.head = OutputLayer(cfg.num_classes, cfg.initializer_range)
        else:
            self.head = transformer.ClassificationHead(
                cfg.hidden_size, cfg.num_classes, cfg.pooler_hidden_act, cfg.initializer_range
            )

    def encode(self, input_ids, attention_mask, token_type_ids=None, *, train: bool = False):
        """(last hidden states (B, S, H), the pretrained pooler's output (B, H) or None), float32
        (DebertaV2Model's last_hidden_state)."""
        keep = attention_mask > 0
        x = self.embeddings(input_ids, token_type_ids, keep, train=train)
        hidden = self.encoder(x, keep, train=train)
        pooled = (
            self.pooler(hidden, train=train).astype(jnp.float32) if self.cfg.has_pooler else None
        )
        return hidden.astype(jnp.float32), pooled

    def __call__(self, input_ids, attention_mask, token_type_ids=None, *, train: bool = False):
        hidden, pooled = self.encode(input_ids, attention_mask, token_type_ids, train=train)
        features = transformer.pool(hidden, attention_mask, self.cfg.pooling, pooled)
        return self.head(self.head_dropout(features, train=train))


def layer_groups(
    num_layers: int, pooler: bool = False, conv: bool = False
) -> tuple[tuple[str, str], ...]:
    """Embeddings (with the shared relative embeddings), each encoder layer (layer_0 with the
    ConvLayer), pooler (when the model has one), head: the depth order of gradual unfreezing."""
    layers = [(f"layer_{i}", f"encoder/layer_{i}/.*") for i in range(num_layers)]
    if conv:
        layers[0] = ("layer_0", "encoder/(layer_0|conv)/.*")
    pooler_group = (("pooler", "pooler/.*"),) if pooler else ()
    return (
        ("embeddings", "(embeddings|encoder/rel_embeddings|encoder/LayerNorm)/.*"),
        *layers,
        *pooler_group,
        ("head", "head/.*"),
    )


def deberta_v2_classifier(cfg: DebertaV2Config) -> Model:
    """The ftjax Model: inputs input_ids, attention_mask, token_type_ids (read only when
    type_vocab_size > 0)."""
    return Model(
        module=DebertaV2Classifier(cfg),
        input_keys=("input_ids", "attention_mask", "token_type_ids"),
        layer_groups=layer_groups(
            cfg.num_hidden_layers, pooler=cfg.has_pooler, conv=cfg.conv_kernel_size > 0
        ),
        head_pattern="head/.*",
    )
