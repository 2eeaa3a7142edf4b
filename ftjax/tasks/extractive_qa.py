"""Extractive question answering (SQuAD v1.1): a start and an end logit per token, answers as
context spans, scored by exact match and F1.

Batches are the windows of `ftjax.data.squad.windows`: `start_positions` / `end_positions`
(int32[B], 0 = [CLS] when the window does not hold the answer), the per-token character offsets
`offset_start` / `offset_end` (int32[B, L], -1 outside the context and on padding) and
`example_index` (int32[B]). The head is per token with 2 outputs, start = logits[..., 0] and
end = logits[..., 1], as transformers' BertForQuestionAnswering splits `qa_outputs`.

- Loss per window: (CE(start) + CE(end)) / 2 in float32 over all L positions, padding included,
  exactly as BertForQuestionAnswering computes it (so it depends slightly on the padded length);
  only the predictions below are restricted to the context.
- Train metrics: start and end token accuracy (argmax over all positions, as the loss sees them).
- Evaluation keeps every window's start/end logits, offsets and example index; `aggregate` does
  what transformers' `postprocess_qa_predictions` does: in each window the `n_best` best start and
  end tokens (among context tokens only), spans with start <= end and at most `max_answer_length`
  tokens scored by start + end logit, the best over all windows of an example (ties: the earlier
  window), its characters in the context as the prediction ("" when no window has a valid span).
  Exact match and F1 (`squad_metric`, fractions in [0, 1]) are averaged over the examples that
  have at least one window in the rows: a capped evaluation split scores the examples it reached
  and `count` says how many (the official script would score the others 0). `loss` is the mean
  over windows, `windows` their number.

Not here: reading SQuAD and making the windows (`ftjax.data.squad`), the answer normalisation and
string metrics (`ftjax.tasks.squad_metric`), SQuAD v2's no-answer predictions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ftjax.tasks.base import Batch, Rows, check_best_metric, masked_mean
from ftjax.tasks.squad_metric import best_over_answers, exact_match_score, f1_score

__all__ = ["BEST_METRICS", "ExtractiveQA", "best_spans"]

BEST_METRICS = ("f1", "exact_match", "loss")
_NO_OFFSET = -1  # ftjax.data.squad.NO_OFFSET (not imported: tasks do not depend on data)
_ROW_KEYS = ("start_logits", "end_logits", "offset_start", "offset_end", "example_index")


@dataclasses.dataclass(frozen=True)
class ExtractiveQA:
    """SQuAD-style span extraction over `ftjax.data.squad.windows` (a `ftjax.tasks.Task`)."""

    max_answer_length: int = 30
    n_best: int = 20
    best_metric: str = "f1"

    def __post_init__(self):
        check_best_metric(self.name, self.best_metric, BEST_METRICS)
        for key in ("max_answer_length", "n_best"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} is {getattr(self, key)}; use at least 1")

    name = "extractive_qa"
    output_size = 2
    output_level = "token"
    label_names = ("start", "end")
    metric_names = ("exact_match", "f1", "loss", "count", "windows")
    target_keys = (
        "start_positions",
        "end_positions",
        "offset_start",
        "offset_end",
        "example_index",
    )

    @property
    def token_keys(self) -> Mapping[str, int]:
        return {"offset_start": _NO_OFFSET, "offset_end": _NO_OFFSET}

    @property
    def higher_is_better(self) -> bool:
        return self.best_metric != "loss"

    def targets(self, record: Mapping[str, Any], encoding: Any = None) -> dict[str, np.ndarray]:
        missing = [k for k in self.target_keys if k not in record]
        if missing:
            raise KeyError(
                f"extractive QA records are the windows of ftjax.data.squad.windows; this one "
                f"lacks {missing} (has {sorted(record)})"
            )
        return {k: np.asarray(record[k], np.int32) for k in self.target_keys}

    def loss(self, logits: jax.Array, batch: Batch) -> jax.Array:
        logits = logits.astype(jnp.float32)
        ce = optax.softmax_cross_entropy_with_integer_labels
        start = ce(logits[..., 0], batch["start_positions"])
        end = ce(logits[..., 1], batch["end_positions"])
        return (start + end) / 2

    def train_metrics(self, logits: jax.Array, batch: Batch) -> dict[str, jax.Array]:
        hit = lambda k, key: (jnp.argmax(logits[..., k], -1) == batch[key]).astype(jnp.float32)
        return {
            "start_accuracy": masked_mean(hit(0, "start_positions"), batch),
            "end_accuracy": masked_mean(hit(1, "end_positions"), batch),
        }

    def eval_sums(self, logits: jax.Array, batch: Batch) -> dict[str, jax.Array]:
        w = batch["mask"].astype(jnp.float32)
        return {"loss_sum": jnp.sum(self.loss(logits, batch) * w), "count": jnp.sum(w)}

    def eval_rows(self, logits: jax.Array, batch: Batch) -> dict[str, jax.Array]:
        logits = logits.astype(jnp.float32)
        return {
            "start_logits": logits[..., 0],
            "end_logits": logits[..., 1],
            "offset_start": batch["offset_start"],
            "offset_end": batch["offset_end"],
            "example_index": batch["example_index"],
        }

    def aggregate(
        self, sums: Mapping[str, float], rows: Rows, references: Any = None
    ) -> dict[str, float]:
        if references is None:
            raise ValueError(
                "extractive QA needs the split's references (the second result of "
                "ftjax.data.squad.windows) to score its predicted spans"
            )
        windows = float(sums["count"])
        if windows == 0:
            raise ValueError("extractive QA evaluation got no windows to score")
        predictions = self.predictions(rows, references)
        if not predictions:
            raise ValueError("extractive QA evaluation got no window rows to predict spans from")
        em = f1 = 0.0
        for index, text in predictions.items():
            answers = references[index]["answers"]
            em += best_over_answers(exact_match_score, text, answers)
            f1 += best_over_answers(f1_score, text, answers)
        return {
            "exact_match": em / len(predictions),
            "f1": f1 / len(predictions),
            "loss": float(sums["loss_sum"]) / windows,
            "count": len(predictions),
            "windows": int(windows),
        }

    def predictions(self, rows: Rows, references: Sequence[Mapping[str, Any]]) -> dict[int, str]:
        """Example index -> predicted answer text, for every example with a window in `rows`."""
        missing = [k for k in _ROW_KEYS if k not in rows]
        if missing:
            raise KeyError(f"extractive QA rows lack {missing}; they come from eval_rows")
        best: dict[int, tuple[float, int, int]] = {}  # example -> (score, first char, end char)
        for parts in zip(*(rows[k] for k in _ROW_KEYS)):
            start_logits, end_logits, off_start, off_end, example = map(np.asarray, parts)
            scores, chars = best_spans(
                start_logits, end_logits, off_start, off_end, self.n_best, self.max_answer_length
            )
            for row, index in enumerate(example.tolist()):
                if not 0 <= index < len(references):
                    raise ValueError(
                        f"a window's example_index is {index} but the references hold "
                        f"{len(references)} examples: are they this split's?"
                    )
                candidate = (float(scores[row]), int(chars[row, 0]), int(chars[row, 1]))
                # Strictly better only: on ties the earlier window wins, as in transformers.
                if index not in best or candidate[0] > best[index][0]:
                    best[index] = candidate
        return {
            index: references[index]["context"][lo:hi] if np.isfinite(score) else ""
            for index, (score, lo, hi) in best.items()
        }


def best_spans(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    offset_start: np.ndarray,
    offset_end: np.ndarray,
    n_best: int,
    max_answer_length: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Each window's best context span: scores float[B] (-inf where none is valid) and its
    character span int[B, 2] (first char, end char exclusive) in the example's context."""
    context = offset_start != _NO_OFFSET
    start = np.where(context, start_logits, -np.inf)
    end = np.where(context, end_logits, -np.inf)
    k = min(n_best, start.shape[1])
    # The n_best best tokens of each row, best first (stable: ties keep token order).
    top_start = np.argsort(-start, axis=1, kind="stable")[:, :k]
    top_end = np.argsort(-end, axis=1, kind="stable")[:, :k]
    s = np.take_along_axis(start, top_start, 1)
    e = np.take_along_axis(end, top_end, 1)
    length = top_end[:, None, :] - top_start[:, :, None] + 1
    valid = (length >= 1) & (length <= max_answer_length)
    valid &= np.isfinite(s)[:, :, None] & np.isfinite(e)[:, None, :]
    scores = np.where(valid, s[:, :, None] + e[:, None, :], -np.inf).reshape(len(start), k * k)
    flat = np.argmax(scores, axis=1)  # first maximum: transformers' enumeration order
    rows = np.arange(len(start))
    first_token = top_start[rows, flat // k]
    last_token = top_end[rows, flat % k]
    chars = np.stack([offset_start[rows, first_token], offset_end[rows, last_token]], axis=1)
    return scores[rows, flat], chars
