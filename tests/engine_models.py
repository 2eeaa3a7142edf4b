"""Small real models for the engine tests and the phase-cost benchmark.

A BERT-style transformer encoder (embeddings, N blocks, a classification head) and a conv net
with batch norm (stem, blocks, head), both built as `ftjax.models.base.Model` with the
freeze-aware `BatchNorm`/`Dropout`, plus batches of random data shaped for them. Sizes are
parameters: tests use tiny ones, `bert_sized_encoder` is the 6-layer, hidden-384, vocab-30522
shape the issue's bars name.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ftjax.models.base import Model
from ftjax.models.layers import BatchNorm, Dropout
from ftjax.optim import OptimConfig
from ftjax.phases import Phase, Plan, Schedule


class _Embeddings(nn.Module):
    vocab: int
    hidden: int
    max_len: int
    dropout: float

    @nn.compact
    def __call__(self, ids, *, train: bool):
        x = nn.Embed(self.vocab, self.hidden, name="word")(ids)
        x = x + nn.Embed(self.max_len, self.hidden, name="position")(jnp.arange(ids.shape[1]))[None]
        x = nn.LayerNorm(name="norm")(x)
        return Dropout(self.dropout)(x, train=train)


class _Block(nn.Module):
    hidden: int
    heads: int
    mlp: int
    dropout: float

    @nn.compact
    def __call__(self, x, mask, *, train: bool):
        attn = nn.MultiHeadDotProductAttention(
            num_heads=self.heads, name="attention", deterministic=True
        )
        h = attn(x, x, mask=nn.make_attention_mask(mask, mask))
        x = nn.LayerNorm(name="attention_norm")(x + Dropout(self.dropout)(h, train=train))
        h = nn.Dense(self.mlp, name="intermediate")(x)
        h = nn.Dense(self.hidden, name="output")(nn.gelu(h))
        return nn.LayerNorm(name="output_norm")(x + Dropout(self.dropout)(h, train=train))


class _Encoder(nn.Module):
    layers: int
    hidden: int
    heads: int
    mlp: int
    dropout: float

    @nn.compact
    def __call__(self, x, mask, *, train: bool):
        for i in range(self.layers):
            x = _Block(self.hidden, self.heads, self.mlp, self.dropout, name=f"layer_{i}")(
                x, mask, train=train
            )
        return x


class TextClassifier(nn.Module):
    vocab: int
    hidden: int
    layers: int
    heads: int
    mlp: int
    max_len: int
    classes: int
    dropout: float = 0.1

    @nn.compact
    def __call__(self, input_ids, attention_mask, *, train: bool):
        x = _Embeddings(self.vocab, self.hidden, self.max_len, self.dropout, name="embeddings")(
            input_ids, train=train
        )
        x = _Encoder(self.layers, self.hidden, self.heads, self.mlp, self.dropout, name="encoder")(
            x, attention_mask, train=train
        )
        return nn.Dense(self.classes, name="head")(x[:, 0])


def encoder(
    *,
    vocab: int = 100,
    hidden: int = 32,
    layers: int = 3,
    heads: int = 4,
    mlp: int = 64,
    max_len: int = 16,
    classes: int = 3,
    dropout: float = 0.1,
) -> Model:
    """A BERT-style classifier; groups: embeddings, layer_0..layer_{L-1}, head."""
    module = TextClassifier(vocab, hidden, layers, heads, mlp, max_len, classes, dropout)
    groups = (
        ("embeddings", "embeddings/.*"),
        *((f"layer_{i}", f"encoder/layer_{i}/.*") for i in range(layers)),
        ("head", "head/.*"),
    )
    return Model(module, ("input_ids", "attention_mask"), groups)


def bert_sized_encoder(classes: int = 2, max_len: int = 512) -> Model:
    """6 layers, hidden 384, 12 heads, MLP 1536, vocab 30522 (MiniLM-L6 / BERT-small shaped)."""
    return encoder(
        vocab=30522, hidden=384, layers=6, heads=12, mlp=1536, max_len=max_len, classes=classes
    )


def text_batch(
    rng: np.random.Generator, batch: int, seq: int, vocab: int, classes: int, *, eval: bool = False
) -> dict:
    ids = rng.integers(0, vocab, (batch, seq), dtype=np.int32)
    lengths = rng.integers(seq // 2, seq + 1, batch)
    mask = (np.arange(seq)[None] < lengths[:, None]).astype(np.int32)
    # The label is a function of the first token so there is something to learn.
    out = {
        "input_ids": ids,
        "attention_mask": mask,
        "label": (ids[:, 0] % classes).astype(np.int32),
    }
    if eval:
        out["mask"] = np.ones(batch, bool)
    return out


class _ConvBlock(nn.Module):
    features: int
    dropout: float

    @nn.compact
    def __call__(self, x, *, train: bool):
        x = nn.Conv(self.features, (3, 3), use_bias=False, name="conv")(x)
        x = nn.relu(BatchNorm(momentum=0.9, name="bn")(x, train=train))
        return Dropout(self.dropout)(x, train=train)


class ConvNet(nn.Module):
    widths: tuple[int, ...]
    classes: int
    dropout: float = 0.1

    @nn.compact
    def __call__(self, image, *, train: bool):
        x = nn.Conv(self.widths[0], (3, 3), use_bias=False, name="stem_conv")(image)
        x = nn.relu(BatchNorm(momentum=0.9, name="stem_bn")(x, train=train))
        for i, w in enumerate(self.widths):
            x = _ConvBlock(w, self.dropout, name=f"block_{i}")(x, train=train)
        return nn.Dense(self.classes, name="head")(jnp.mean(x, axis=(1, 2)))


def convnet(
    *, widths: tuple[int, ...] = (8, 8, 16), classes: int = 3, dropout: float = 0.1
) -> Model:
    """A conv net with batch norm; groups: stem, block_0..block_{n-1}, head."""
    groups = (
        ("stem", "stem_.*"),
        *((f"block_{i}", f"block_{i}/.*") for i in range(len(widths))),
        ("head", "head/.*"),
    )
    return Model(ConvNet(widths, classes, dropout), ("image",), groups)


def image_batch(
    rng: np.random.Generator, batch: int, size: int, classes: int, *, eval: bool = False
) -> dict:
    label = rng.integers(0, classes, batch).astype(np.int32)
    image = rng.normal(size=(batch, size, size, 3)).astype(np.float32) + label[:, None, None, None]
    out = {"image": image, "label": label}
    if eval:
        out["mask"] = np.ones(batch, bool)
    return out


def init(model: Model, batch: dict, seed: int = 0):
    """(params, model_state) of `model` for `batch`'s shapes."""
    return model.init(jax.random.key(seed), {k: jnp.asarray(v) for k, v in batch.items()})


def three_phase_plan(
    names: tuple[str, ...], steps: tuple[int, int, int] = (3, 3, 3), lr: float = 1e-2
) -> Plan:
    """The issue's plan: head -> top 2 blocks + head -> all groups with layer-wise decay."""
    return Plan(
        (
            Phase("head", (names[-1],), lr, steps=steps[0]),
            Phase(
                "top2",
                tuple(names[-3:]),
                lr,
                steps=steps[1],
                schedule=Schedule("warmup_cosine", warmup_steps=1),
            ),
            Phase("all", tuple(names), lr, steps=steps[2], layerwise_decay=0.7),
        )
    )


ADAMW = OptimConfig(name="adamw", weight_decay=0.1, clip_norm=1.0)
