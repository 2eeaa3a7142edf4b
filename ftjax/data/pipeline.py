"""grain pipelines over record views: fixed-shape batches of numpy arrays for jit, the same global
batches whatever the number of processes.

Training: each epoch has one global permutation of the split, drawn from (seed, epoch). Global
batch k of an epoch is positions [k*B, (k+1)*B) of that permutation (each epoch's remainder is
dropped) and process p of n reads rows [p*B/n, (p+1)*B/n) of it, which `shard_batch` then places
as the process's part of the global array. So 2 processes x 4 devices and 1 process x 8 devices
train on identical global batches, and the iterator state (`get_state()`, the number of batches
read) is the same on every process: process 0's state restores a run on any process count.
Augmentation draws from an RNG seeded by (seed, epoch, position in the permutation), so it too is
independent of the process layout; the stream is a pure function of the seed.

Evaluation: global batch k is examples [k*B, (k+1)*B) in split order, the last one padded with
rows whose 'mask' is False; process p reads its slice of each. Every example counts exactly once
across processes, and every process runs the same number of batches.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Sequence

import grain
import numpy as np

from ftjax.data.records import RecordView

Example = dict[str, np.ndarray]
_AUGMENT = 1  # keeps augmentation RNG streams apart from the permutation's


def stack(examples: Sequence[Example]) -> Example:
    return {key: np.stack([e[key] for e in examples]) for key in examples[0]}


class _TrainOrder:
    """Maps this process's n-th training example to (record index, epoch, position in the epoch)."""

    def __init__(self, num_examples: int, batch_size: int, per_process: int, process_index: int, seed: int):
        self.n, self.batch, self.per_process, self.process_index, self.seed = (
            num_examples, batch_size, per_process, process_index, seed)  # fmt: skip
        self.per_epoch = (num_examples // batch_size) * per_process  # this process's examples per epoch

    @functools.lru_cache(maxsize=2)  # noqa: B019 - two epochs live at once at an epoch boundary
    def permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def __call__(self, i: int) -> tuple[int, int, int]:
        epoch, j = divmod(i, self.per_epoch)
        k, r = divmod(j, self.per_process)
        position = k * self.batch + self.process_index * self.per_process + r
        return int(self.permutation(epoch)[position]), epoch, position


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
    ):
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} is outside [0, process_count={process_count})")
        if len(records) == 0:
            raise ValueError("this split has no examples; check the data source and the example limits")
        self.records = records
        self.train_fn, self.eval_fn, self.collate = train_fn, eval_fn, collate
        self.process_index, self.process_count = process_index, process_count
        self.read_options = read_options or grain.ReadOptions(num_threads=4, prefetch_buffer_size=8)

    @property
    def num_examples(self) -> int:
        """Examples in the whole split (all processes)."""
        return len(self.records)

    def _per_process(self, batch_size: int) -> int:
        if batch_size <= 0 or batch_size % self.process_count:
            raise ValueError(f"global batch size {batch_size} must be positive and divisible by the "
                             f"process count {self.process_count}")  # fmt: skip
        return batch_size // self.process_count

    def steps_per_epoch(self, batch_size: int) -> int:
        """Training steps per epoch for a global `batch_size` (the remainder is dropped)."""
        self._per_process(batch_size)
        steps = self.num_examples // batch_size
        if steps == 0:
            raise ValueError(f"batch size {batch_size} is larger than the training split ({self.num_examples} examples)")
        return steps

    def train_iterator(self, batch_size: int, *, seed: int) -> grain.DatasetIterator:
        """Endless shuffled training batches: this process's rows of each global batch of `batch_size`."""
        per_process = self._per_process(batch_size)
        steps = self.steps_per_epoch(batch_size)
        order = _TrainOrder(self.num_examples, batch_size, per_process, self.process_index, seed)
        records, train_fn = self.records, self.train_fn

        def example(i: int, _) -> Example:
            index, epoch, position = order(i)
            return train_fn(records[index], np.random.default_rng([seed, epoch, position, _AUGMENT]))

        ds = (
            grain.MapDataset.range(steps * per_process)
            .repeat(None)
            .map_with_index(example)
            .batch(per_process, drop_remainder=True, batch_fn=self.collate)
        )
        return iter(ds.to_iter_dataset(self.read_options))

    def eval_steps(self, batch_size: int) -> int:
        """Evaluation batches per pass (the same on every process)."""
        self._per_process(batch_size)
        return math.ceil(self.num_examples / batch_size)

    def eval_batches(self, batch_size: int) -> Iterator[Example]:
        """One pass in split order: this process's rows of each global batch; 'mask' marks real rows."""
        per_process = self._per_process(batch_size)
        n, offset, records, eval_fn = self.num_examples, self.process_index * per_process, self.records, self.eval_fn

        def example(j: int) -> Example:
            k, r = divmod(j, per_process)
            position = k * batch_size + offset + r
            out = eval_fn(records[min(position, n - 1)])  # padding rows repeat the last example
            out["mask"] = np.bool_(position < n)
            return out

        ds = grain.MapDataset.range(self.eval_steps(batch_size) * per_process).map(example)
        return iter(ds.batch(per_process, batch_fn=self.collate).to_iter_dataset(self.read_options))
