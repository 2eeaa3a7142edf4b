"""grain pipelines over record views: fixed-shape batches of numpy arrays for jit, the same global
batches whatever the number of processes.

Training: each epoch has one global permutation of the split, drawn from (seed, epoch). Global
batch k of an epoch is positions [k*B, (k+1)*B) of that permutation (each epoch's remainder is
dropped) and process p of n reads rows [p*B/n, (p+1)*B/n) of it, which `shard_batch` then places
as the process's part of the global array. So 2 processes x 4 devices and 1 process x 8 devices
train on identical global batches, and the iterator state (`get_state()`, the number of batches
read) is the same on every process: process 0's state restores a run on any process count.
Augmentation draws from an RNG seeded by (seed, epoch, position in the permutation), so it too is
independent of the process layout; the stream is a pure function of the seed. `TrainOrder` is
that batch order as one object, shared with the feature cache's batches.

Evaluation: global batch k is examples [k*B, (k+1)*B) in `eval_order` (split order, or sorted by
token length when the split knows its lengths, so eval batches pad little), the last one padded
with rows whose 'mask' is False; process p reads its slice of each. Every example counts exactly
once across processes, and every process runs the same number of batches.

Text splits may carry each record's token length. Then every example also carries 'pad_to', the
longest example of its *global* batch, so all processes pad a batch to the same length, and
`group_by_length=G` sorts each window of G global batches by length before the batch order is
shuffled: batches of similar lengths waste little compute on padding (Hugging Face's
`group_by_length`, with the grouping drawn per epoch from the seed like the permutation).
With `packing` (`ftjax.data.packing`), batches hold the same examples but packed several to a row
instead: every example carries 'pack_rows', its global batch's row count, and evaluation reads the
split in split order (length-sorted batches would need a row per example at the long end).

Not here: reading sources and building splits with their preprocessing (`ftjax.data`), placing
batches on devices (`ftjax.sharding`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grain
import numpy as np

from ftjax.data import packing as packing_lib
from ftjax.data.packing import Packing
from ftjax.data.records import RecordView

__all__ = ["Example", "Split", "TrainOrder", "epoch_permutation", "stack"]

Example = dict[str, np.ndarray]
_AUGMENT = 1  # keeps augmentation RNG streams apart from the permutation's
_GROUP = 2  # and the batch shuffle of length grouping


def stack(examples: Sequence[Example]) -> Example:
    return {key: np.stack([e[key] for e in examples]) for key in examples[0]}


def epoch_permutation(
    num_examples: int,
    batch_size: int,
    seed: int,
    epoch: int,
    lengths: np.ndarray | None = None,
    group_by_length: int = 0,
) -> np.ndarray:
    """The order of the split's records in training epoch `epoch`; global batch k is its [k*B, (k+1)*B).

    With `lengths` and `group_by_length=G`, each window of G*B permuted records is sorted by length
    (longest first) and the resulting full batches are shuffled; the remainder stays last (dropped).
    """
    perm = np.random.default_rng([seed, epoch]).permutation(num_examples)
    if lengths is None or group_by_length <= 0:
        return perm
    usable = (num_examples // batch_size) * batch_size
    window = group_by_length * batch_size
    windows = np.split(perm[:usable], range(window, usable, window))
    batches = np.concatenate([w[np.argsort(-lengths[w], kind="stable")] for w in windows]).reshape(
        -1, batch_size
    )
    shuffled = batches[np.random.default_rng([seed, epoch, _GROUP]).permutation(len(batches))]
    return np.concatenate([shuffled.ravel(), perm[usable:]])


class TrainOrder:
    """The training batch order of a split: which records each global batch holds, and which of
    them this process reads.

    Epoch e is `epoch_permutation(..., e)`; global batch k of the run (counting across epochs) is
    positions [j*B, (j+1)*B) of its epoch's permutation, j = k mod steps_per_epoch (each epoch's
    remainder is dropped), and this process reads rows [p*B/n, (p+1)*B/n) of it. The grain
    training iterator (`Split.train_iterator`) and the feature cache's batches
    (`ftjax.feature_cache.CachedBatches`) both read this one object, so they stay in lockstep.
    """

    def __init__(
        self,
        num_examples: int,
        batch_size: int,
        seed: int,
        *,
        process_index: int = 0,
        process_count: int = 1,
        lengths: np.ndarray | None = None,
        group_by_length: int = 0,
    ):
        if not 0 < batch_size <= num_examples or batch_size % process_count:
            raise ValueError(
                f"global batch size {batch_size} must be in [1, {num_examples}] (the split's "
                f"examples) and divisible by the process count {process_count}"
            )
        self.num_examples, self.batch_size, self.seed = num_examples, batch_size, seed
        self.per_process = batch_size // process_count
        self.offset = process_index * self.per_process
        self.lengths, self.group_by_length = lengths, group_by_length
        self.steps_per_epoch = num_examples // batch_size
        # Two epochs live at once at an epoch boundary; grain reads from several threads.
        self.permutation = functools.lru_cache(maxsize=2)(self._permutation)

    def _permutation(self, epoch: int) -> np.ndarray:
        """The order of the split's records in training epoch `epoch`."""
        return epoch_permutation(
            self.num_examples,
            self.batch_size,
            self.seed,
            epoch,
            self.lengths,
            self.group_by_length,
        )

    def batch_rows(self, step: int) -> np.ndarray:
        """Record indices of this process's rows of global batch `step` of the run."""
        epoch, k = divmod(step, self.steps_per_epoch)
        start = k * self.batch_size + self.offset
        return self.permutation(epoch)[start : start + self.per_process]

    def example(self, i: int) -> tuple[int, int, int]:
        """(record index, epoch, position in the epoch) of this process's `i`-th training example."""
        step, r = divmod(i, self.per_process)
        epoch, k = divmod(step, self.steps_per_epoch)
        position = k * self.batch_size + self.offset + r
        return int(self.permutation(epoch)[position]), epoch, position

    def batch_length(self, epoch: int, position: int) -> int:
        """The longest example of the global batch holding `position` (lengths required)."""
        start = position - position % self.batch_size
        perm = self.permutation(epoch)
        return int(self.lengths[perm[start : start + self.batch_size]].max())


class Split:
    """One split of a dataset, ready to iterate as batches on process `process_index` of `process_count`."""

    def __init__(
        self,
        records: RecordView,
        *,
        train_fn: Callable[[dict, np.random.Generator], Example],
        eval_fn: Callable[[dict], Example],
        collate: Callable[[Sequence[Example]], Example] = stack,
        process_index: int = 0,
        process_count: int = 1,
        read_options: grain.ReadOptions | None = None,
        lengths: np.ndarray | None = None,
        group_by_length: int = 0,
        pad_lengths: Sequence[int] = (),
        references: Any = None,
        max_length: int | None = None,
        packing: Packing | None = None,
    ):
        if not 0 <= process_index < process_count:
            raise ValueError(
                f"process_index {process_index} is outside [0, process_count={process_count})"
            )
        if len(records) == 0:
            raise ValueError(
                "this split has no examples; check the data source and the example limits"
            )
        if lengths is not None and len(lengths) != len(records):
            raise ValueError(f"{len(lengths)} lengths for {len(records)} records")
        if group_by_length and lengths is None:
            raise ValueError("group_by_length needs the records' token lengths (text data only)")
        if packing is not None and lengths is None:
            raise ValueError("packing needs the records' token lengths (text data only)")
        self.records = records
        self.train_fn, self.eval_fn, self.collate = train_fn, eval_fn, collate
        self.process_index, self.process_count = process_index, process_count
        self.read_options = read_options or grain.ReadOptions(num_threads=4, prefetch_buffer_size=8)
        self.lengths = None if lengths is None else np.asarray(lengths)
        self.group_by_length = group_by_length
        self.packing = packing
        self.eval_order = (
            np.arange(len(records))
            if lengths is None or packing is not None
            else np.argsort(self.lengths, kind="stable")
        )
        self.pad_lengths = tuple(pad_lengths)
        self.references = references  # what the task's metrics need beyond the batches (QA)
        self.max_length = max_length  # text: the longest padded token length

    @property
    def num_examples(self) -> int:
        """Examples in the whole split (all processes)."""
        return len(self.records)

    def _per_process(self, batch_size: int) -> int:
        if batch_size <= 0 or batch_size % self.process_count:
            raise ValueError(
                f"global batch size {batch_size} must be positive and divisible by the "
                f"process count {self.process_count}"
            )
        return batch_size // self.process_count

    def steps_per_epoch(self, batch_size: int) -> int:
        """Training steps per epoch for a global `batch_size` (the remainder is dropped)."""
        self._per_process(batch_size)
        steps = self.num_examples // batch_size
        if steps == 0:
            raise ValueError(
                f"batch size {batch_size} is larger than the training split ({self.num_examples} examples)"
            )
        return steps

    def train_order(self, batch_size: int, *, seed: int) -> TrainOrder:
        """The order `train_iterator(batch_size, seed=seed)` reads the records in, on this process."""
        self.steps_per_epoch(batch_size)  # the errors name the split and the process count
        return TrainOrder(
            self.num_examples,
            batch_size,
            seed,
            process_index=self.process_index,
            process_count=self.process_count,
            lengths=self.lengths,
            group_by_length=self.group_by_length,
        )

    def train_rows(self, order: TrainOrder) -> packing_lib.TrainRows:
        """The packed row count of each training batch read in `order` (packing only)."""
        return packing_lib.TrainRows(order, self.lengths, self.packing, self.process_count)

    def _collate(self, examples: Sequence[Example]) -> Example:
        if self.packing is None:
            return self.collate(examples)
        rows = int(examples[0]["pack_rows"])
        return packing_lib.pack(examples, rows, self.packing, self.process_index)

    def train_iterator(self, batch_size: int, *, seed: int) -> grain.DatasetIterator:
        """Endless shuffled training batches: this process's rows of each global batch of `batch_size`."""
        order = self.train_order(batch_size, seed=seed)
        records, train_fn, lengths = self.records, self.train_fn, self.lengths
        rows = self.train_rows(order) if self.packing else None

        def example(i: int, _) -> Example:
            index, epoch, position = order.example(i)
            out = train_fn(records[index], np.random.default_rng([seed, epoch, position, _AUGMENT]))
            if lengths is not None:
                out["pad_to"] = np.int32(order.batch_length(epoch, position))
            if rows is not None:
                out["pack_rows"] = np.int32(rows.rows(epoch, position // order.batch_size))
            return out

        ds = (
            grain.MapDataset.range(order.steps_per_epoch * order.per_process)
            .repeat(None)
            .map_with_index(example)
            .batch(order.per_process, drop_remainder=True, batch_fn=self._collate)
        )
        return iter(ds.to_iter_dataset(self.read_options))

    def batch_variants(self, batch_size: int, *, seed: int = 0) -> list[Example]:
        """One batch of this process's rows per padded length a batch can take (text with length
        buckets), so every shape can be compiled up front; [] when batches have one shape.
        Packed: the one batch of the training row count for `seed`'s order."""
        if self.packing is not None:
            rows = self.train_rows(self.train_order(batch_size, seed=seed)).fixed
            shortest = self.eval_fn(self.records[int(np.argmin(self.lengths))])
            example = {**shortest, "pack_rows": np.int32(rows)}
            return [self._collate([example] * self._per_process(batch_size))]
        if len(self.pad_lengths) < 2:
            return []
        shortest = self.eval_fn(self.records[int(self.eval_order[0])])
        rows = self._per_process(batch_size)
        return [
            self.collate([{**shortest, "pad_to": np.int32(n)}] * rows)
            for n in self.pad_lengths
            if n >= len(shortest["input_ids"])
        ]

    def eval_steps(self, batch_size: int) -> int:
        """Evaluation batches per pass (the same on every process)."""
        self._per_process(batch_size)
        return math.ceil(self.num_examples / batch_size)

    def eval_batches(self, batch_size: int) -> Iterator[Example]:
        """One pass in `eval_order`: this process's rows of each global batch; 'mask' marks real rows."""
        per_process = self._per_process(batch_size)
        n, offset, records, eval_fn = (
            self.num_examples,
            self.process_index * per_process,
            self.records,
            self.eval_fn,
        )
        lengths, order = self.lengths, self.eval_order
        rows = None
        if self.packing is not None:
            rows = packing_lib.eval_rows(
                order, lengths, batch_size, self.packing, self.process_count
            )

        def example(j: int) -> Example:
            k, r = divmod(j, per_process)
            position = k * batch_size + offset + r
            out = eval_fn(
                records[int(order[min(position, n - 1)])]
            )  # padding rows repeat the last example
            out["mask"] = np.bool_(position < n)
            if lengths is not None:
                out["pad_to"] = np.int32(
                    lengths[order[k * batch_size : (k + 1) * batch_size]].max()
                )
            if rows is not None:
                out["pack_rows"] = np.int32(rows)
            return out

        ds = grain.MapDataset.range(self.eval_steps(batch_size) * per_process).map(example)
        return iter(
            ds.batch(per_process, batch_fn=self._collate).to_iter_dataset(self.read_options)
        )
