"""Token classification (named-entity recognition, any IOB tagging): a tag per word.

Targets: each word's tag id goes on the FIRST sub-token of the word; every other token (later
sub-tokens, special tokens, padding) is -100, ignored by the loss and the metrics. Words the
tokenizer cut off by truncation (or that produce no token at all) have no token, so the loss and
every metric count the visible words only.

The loss is float32 softmax cross-entropy averaged over all scored tokens of the batch, as
transformers' `BertForTokenClassification` (`CrossEntropyLoss(ignore_index=-100)`) computes it:
the train step takes `masked_mean` over examples, so example i's loss is its token sum scaled by
n_rows / n_tokens of the batch it is called on (real rows per `batch["mask"]`), which makes that
mean exactly the batch's token mean. (With gradient accumulation it is each microbatch's.)

Evaluation keeps the predicted and gold tag ids per token; `aggregate` reads each example's scored
positions and reports entity-level precision, recall and F1 (micro, conlleval / seqeval rules,
`ftjax.tasks.entities`), F1 per entity type as 'f1/<TYPE>' (0.0 for a type absent from both gold
and predictions), token accuracy and the token-mean loss.

Not here: entity chunking and scoring (entities.py), reading CoNLL files (`ftjax.data.conll`),
the per-token head (`ftjax.models`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ftjax.tasks.base import Batch, Rows, check_best_metric
from ftjax.tasks.entities import entity_scores, parse_tag

__all__ = ["IGNORE", "TokenClassification", "token_targets"]

IGNORE = -100  # the tag of tokens that are not scored (transformers' ignore_index)
_FIXED_METRICS = ("f1", "precision", "recall", "accuracy", "loss", "count")


def token_targets(word_tags: Any, word_ids: list[int | None], num_tags: int) -> np.ndarray:
    """int32 tag per token: the word's tag on its first token, IGNORE elsewhere."""
    tags = np.asarray(word_tags, np.int64).reshape(-1)
    if tags.size and (tags.min() < 0 or tags.max() >= num_tags):
        raise ValueError(f"tag ids {tags.tolist()} are not all in [0, {num_tags})")
    out = np.full(len(word_ids), IGNORE, np.int32)
    seen = set()
    for j, w in enumerate(word_ids):
        if w is not None and w not in seen:
            if w >= len(tags):
                raise ValueError(
                    f"token {j} comes from word {w} but the record has {len(tags)} tags"
                )
            out[j] = tags[w]
            seen.add(w)
    return out


def _validate(tag_names: tuple[str, ...]) -> None:
    if not tag_names:
        raise ValueError("token classification needs tag names, got none")
    if len(set(tag_names)) != len(tag_names):
        dup = sorted({t for t in tag_names if tag_names.count(t) > 1})
        raise ValueError(f"tag names {list(tag_names)} repeat {dup}; each tag must appear once")
    for t in tag_names:
        if not isinstance(t, str):
            raise ValueError(f"tag name {t!r} is not a string")
        try:
            parse_tag(t)
        except ValueError as e:
            raise ValueError(f"{e} (tag names {list(tag_names)}; IOB1/IOB2 tags only)") from None
    if tag_names == ("O",):
        raise ValueError("tag names are only 'O': there are no entity types to tag")


def _scored(logits: jax.Array, batch: Batch):
    """Per-token CE, correctness and the scored-token weight (real rows, tags != IGNORE)."""
    tags = batch["tags"]
    rows = batch["mask"] if "mask" in batch else jnp.ones(tags.shape[0], bool)
    valid = (tags != IGNORE) & rows[:, None]
    safe = jnp.where(valid, tags, 0)
    logits = logits.astype(jnp.float32)
    ce = jnp.where(valid, optax.softmax_cross_entropy_with_integer_labels(logits, safe), 0.0)
    correct = valid & (jnp.argmax(logits, -1) == tags)
    return ce, correct.astype(jnp.float32), valid.astype(jnp.float32), rows.astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class TokenClassification:
    """Per-token tagging over `tag_names` (IOB1/IOB2), scored on entities (a `ftjax.tasks.Task`)."""

    tag_names: tuple[str, ...]
    best_metric: str = "f1"

    def __post_init__(self):
        object.__setattr__(self, "tag_names", tuple(self.tag_names))
        _validate(self.tag_names)
        check_best_metric(self.name, self.best_metric, self.metric_names)
        if self.best_metric == "count":
            raise ValueError("best_metric 'count' does not rank checkpoints; use 'f1' or 'loss'")

    name = "token_classification"
    output_level = "token"
    target_keys = ("tags",)

    @property
    def token_keys(self) -> Mapping[str, int]:
        return {"tags": IGNORE}

    @property
    def output_size(self) -> int:
        return len(self.tag_names)

    @property
    def label_names(self) -> tuple[str, ...]:
        return self.tag_names

    @property
    def entity_types(self) -> tuple[str, ...]:
        """The entity types the tags name, sorted."""
        return tuple(sorted({parse_tag(t)[1] for t in self.tag_names} - {None}))

    @property
    def metric_names(self) -> tuple[str, ...]:
        return _FIXED_METRICS + tuple(f"f1/{t}" for t in self.entity_types)

    @property
    def higher_is_better(self) -> bool:
        return self.best_metric != "loss"

    def targets(self, record: Mapping[str, Any], encoding: Any) -> dict[str, np.ndarray]:
        words, tags = record["text"], record["label"]
        if len(words) != len(tags):
            raise ValueError(f"a record has {len(words)} words but {len(tags)} tags: {list(words)}")
        return {"tags": token_targets(tags, encoding.word_ids, len(self.tag_names))}

    def loss(self, logits: jax.Array, batch: Batch) -> jax.Array:
        ce, _, valid, rows = _scored(logits, batch)
        # masked_mean over rows of this equals sum(ce) / n_tokens: the batch's token mean
        return jnp.sum(ce, -1) * jnp.sum(rows) / jnp.maximum(jnp.sum(valid), 1.0)

    def train_metrics(self, logits: jax.Array, batch: Batch) -> dict[str, jax.Array]:
        _, correct, valid, _ = _scored(logits, batch)
        return {"accuracy": jnp.sum(correct) / jnp.maximum(jnp.sum(valid), 1.0)}

    def eval_sums(self, logits: jax.Array, batch: Batch) -> dict[str, jax.Array]:
        ce, correct, valid, rows = _scored(logits, batch)
        return {
            "loss_sum": jnp.sum(ce),
            "tokens": jnp.sum(valid),
            "correct": jnp.sum(correct),
            "count": jnp.sum(rows),
        }

    def eval_rows(self, logits: jax.Array, batch: Batch) -> dict[str, jax.Array]:
        pred = jnp.argmax(logits, -1).astype(jnp.int32)
        return {"pred": pred, "tags": batch["tags"].astype(jnp.int32)}

    def aggregate(
        self, sums: Mapping[str, float], rows: Rows, references: Any = None
    ) -> dict[str, float]:
        names = np.asarray(self.tag_names, dtype=object)
        gold, pred = [], []
        for g_batch, p_batch in zip(rows["tags"], rows["pred"], strict=True):
            for g, p in zip(np.asarray(g_batch), np.asarray(p_batch), strict=True):
                scored = g != IGNORE
                gold.append(names[g[scored]].tolist())
                pred.append(names[p[scored]].tolist())
        micro, per_type = entity_scores(gold, pred)
        tokens = max(float(sums["tokens"]), 1.0)
        metrics = {
            "f1": micro.f1,
            "precision": micro.precision,
            "recall": micro.recall,
            "accuracy": float(sums["correct"]) / tokens,
            "loss": float(sums["loss_sum"]) / tokens,
            "count": int(sums["count"]),
        }
        zero = (0.0, 0.0, 0.0, 0)
        metrics.update({f"f1/{t}": per_type.get(t, zero)[2] for t in self.entity_types})
        return metrics
