"""Sequence packing: several text examples per row, so a batch pays for almost no padding.

A packed batch of B examples (this process's rows of a global batch) has R rows of S tokens:

    input_ids, token_type_ids  int32[R, S]  the examples' tokens, one after another in each row
    attention_mask             int32[R, S]  segment ids: k for the row's k-th example, 0 for padding
    position_ids               int32[R, S]  0, 1, ... restarting at each example
    packed_at                  int32[B, 3]  (global row, segment, first token) of each example

and every other key (the task's targets, evaluation's 'mask') per example, in example order, as an
unpacked batch has it. The text encoders (`ftjax.models.transformer`) attend within segments only
and pool each example from its own tokens, so the logits are [B, K] in example order and equal the
unpacked batch's within float tolerance: tasks, losses and metrics never see the packing.

Rows are filled first-fit decreasing, S is the split's max_length, and R is fixed per split so jit
sees one shape: the most rows any global batch needs on any process (training: over the batch
orders of the first `PLANNED_EPOCHS` epochs; a later batch that needs more falls back to one example
per row), rounded up to `row_multiple` (the process's devices, which split the rows). Every process
computes the same R for a batch from the split's token lengths, as 'pad_to' does for padding.

Not here: token-level tasks (their logits are per token of a row; packing refuses them) and
models with relative positions (DeBERTa), which `ftjax.packing` refuses.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import numpy as np

__all__ = [
    "PLANNED_EPOCHS",
    "Packing",
    "first_fit",
    "rows_needed",
    "pack",
    "TrainRows",
    "eval_rows",
]

Example = dict[str, np.ndarray]
PLANNED_EPOCHS = 3  # training epochs whose batches size the split's fixed row count
_TOKEN_KEYS = ("input_ids", "token_type_ids")


@dataclasses.dataclass(frozen=True)
class Packing:
    """How a split packs: `row_length` tokens a row, rows a multiple of `row_multiple`."""

    row_length: int
    pad_id: int
    row_multiple: int = 1

    def __post_init__(self):
        if self.row_length < 2 or self.row_multiple < 1:
            raise ValueError(
                f"packing needs row_length >= 2 and row_multiple >= 1, got {self.row_length} "
                f"and {self.row_multiple}"
            )

    def round_up(self, rows: int) -> int:
        return -(-rows // self.row_multiple) * self.row_multiple


def first_fit(lengths: Sequence[int], row_length: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, first token) of each example, rows filled first-fit in decreasing length order."""
    lengths = np.asarray(lengths, np.int64)
    if len(lengths) and lengths.max() > row_length:
        raise ValueError(f"an example has {lengths.max()} tokens; rows hold {row_length}")
    rows = np.zeros(len(lengths), np.int32)
    starts = np.zeros(len(lengths), np.int32)
    used: list[int] = []
    for i in np.argsort(-lengths, kind="stable"):
        n = int(lengths[i])
        r = next((r for r, u in enumerate(used) if u + n <= row_length), len(used))
        if r == len(used):
            used.append(0)
        rows[i], starts[i] = r, used[r]
        used[r] += n
    return rows, starts


def rows_needed(lengths: Sequence[int], row_length: int) -> int:
    rows, _ = first_fit(lengths, row_length)
    return int(rows.max()) + 1 if len(rows) else 0


def pack(
    examples: Sequence[Example],
    rows: int,
    packing: Packing,
    process_index: int = 0,
) -> Example:
    """`examples` (this process's rows of a global batch) as a packed batch of `rows` rows.

    Examples whose 'mask' is False (evaluation's padding rows) take no tokens; they point at the
    first packed example, and the mask keeps them out of every metric.
    """
    real = [i for i, e in enumerate(examples) if bool(e.get("mask", True))]
    lengths = [len(examples[i]["input_ids"]) for i in real]
    row_of, start_of = first_fit(lengths, packing.row_length)
    if len(real) and row_of.max() >= rows:
        raise ValueError(f"{len(real)} examples need {row_of.max() + 1} rows; the batch has {rows}")
    shape = (rows, packing.row_length)
    out = {
        "input_ids": np.full(shape, packing.pad_id, np.int32),
        "token_type_ids": np.zeros(shape, np.int32),
        "attention_mask": np.zeros(shape, np.int32),
        "position_ids": np.zeros(shape, np.int32),
    }
    # Padding examples point at this process's first packed example (its row 0, segment 1).
    packed_at = np.tile(np.int32([process_index * rows, 1, 0]), (len(examples), 1))
    segments = np.zeros(rows, np.int32)
    for j in np.lexsort((start_of, row_of)):  # segment ids count up along each row
        i, r, s = real[j], int(row_of[j]), int(start_of[j])
        n = lengths[j]
        segments[r] += 1
        for key in _TOKEN_KEYS:
            out[key][r, s : s + n] = examples[i][key]
        out["attention_mask"][r, s : s + n] = segments[r]
        out["position_ids"][r, s : s + n] = np.arange(n)
        packed_at[i] = (process_index * rows + r, segments[r], s)
    out["packed_at"] = packed_at
    for key in examples[0]:
        if key not in out and key not in ("pad_to", "pack_rows"):
            out[key] = np.stack([e[key] for e in examples])
    return out


class TrainRows:
    """The packed row count of each global training batch, the same on every process.

    `fixed` is the most rows any process's slice of a batch needs over the first
    `PLANNED_EPOCHS` epochs; a later batch that needs more gets one row per example.
    """

    def __init__(self, order, lengths: np.ndarray, packing: Packing, process_count: int):
        self.order, self.lengths, self.packing = order, lengths, packing
        self.process_count = process_count
        self.per_example = packing.round_up(order.per_process)
        self.epoch_needs = functools.lru_cache(maxsize=2)(self._epoch_needs)
        self.fixed = packing.round_up(
            max(int(self._epoch_needs(e).max()) for e in range(PLANNED_EPOCHS))
        )

    def _epoch_needs(self, epoch: int) -> np.ndarray:
        """Rows each global batch of `epoch` needs: the most over the processes' slices."""
        order = self.order
        steps = order.steps_per_epoch
        slices = order.permutation(epoch)[: steps * order.batch_size].reshape(
            steps, self.process_count, order.per_process
        )
        row_length = self.packing.row_length
        return np.asarray(
            [max(rows_needed(self.lengths[s], row_length) for s in batch) for batch in slices]
        )

    def rows(self, epoch: int, k: int) -> int:
        """Rows of global batch `k` of training epoch `epoch`."""
        needed = int(self.epoch_needs(epoch)[k])
        return self.fixed if needed <= self.fixed else self.per_example


def eval_rows(
    order: np.ndarray,
    lengths: np.ndarray,
    batch_size: int,
    packing: Packing,
    process_count: int,
) -> int:
    """The one row count of every evaluation batch of a split read in `order`."""
    per_process = batch_size // process_count
    needs = 1
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        for p in range(process_count):
            part = batch[p * per_process : (p + 1) * per_process]
            if len(part):
                needs = max(needs, rows_needed(lengths[part], packing.row_length))
    return packing.round_up(needs)
