"""grain pipelines over record views: fixed-shape batches of numpy arrays for jit.

Training: this process's shard (every process gets the same number of examples), shuffled anew
each epoch from a seed, per-example preprocessing (random crop/flip from a per-example RNG, so the
stream is a pure function of the seed), batches that drop each epoch's remainder, endless epochs.
The iterator is a grain `DatasetIterator`: `get_state()` / `set_state()` restore it exactly.

Evaluation: this process's shard padded to a whole number of batches (the same number on every
process), with a boolean 'mask' that is False on padding rows, so every example counts once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import grain
import numpy as np

from ftjax.data.records import RecordView

Example = dict[str, np.ndarray]


def stack(examples: Sequence[Example]) -> Example:
    return {key: np.stack([e[key] for e in examples]) for key in examples[0]}


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

    def _shard(self) -> grain.MapDataset:
        return grain.MapDataset.source(self.records)[self.process_index :: self.process_count]

    def _per_process(self, batch_size: int) -> int:
        if batch_size % self.process_count:
            raise ValueError(f"global batch size {batch_size} is not divisible by process_count {self.process_count}")
        return batch_size // self.process_count

    def steps_per_epoch(self, batch_size: int) -> int:
        """Training steps per epoch for a global `batch_size` (the remainder is dropped)."""
        per_process = self._per_process(batch_size)
        steps = (self.num_examples // self.process_count) // per_process
        if steps == 0:
            raise ValueError(f"batch size {batch_size} is larger than the training split ({self.num_examples} examples)")
        return steps

    def train_iterator(self, batch_size: int, *, seed: int) -> grain.DatasetIterator:
        """Endless shuffled training batches; `batch_size` is global, each process gets its share."""
        per_process = self._per_process(batch_size)
        self.steps_per_epoch(batch_size)  # Fails early on a batch larger than the split.
        # Equal shards on every process, so all processes run the same number of steps per epoch.
        shard = self._shard()[: self.num_examples // self.process_count]
        ds = (
            shard.seed(seed)
            .shuffle()
            .random_map(self.train_fn)
            .batch(per_process, drop_remainder=True, batch_fn=self.collate)
            .repeat(None)
        )
        return iter(ds.to_iter_dataset(self.read_options))

    def eval_steps(self, batch_size: int) -> int:
        """Evaluation batches per pass (the same on every process)."""
        per_process = self._per_process(batch_size)
        return math.ceil(math.ceil(self.num_examples / self.process_count) / per_process)

    def eval_batches(self, batch_size: int) -> Iterator[Example]:
        """One pass over this process's shard, the last batch padded; 'mask' marks real rows."""
        per_process = self._per_process(batch_size)
        shard = self._shard()
        n_real = len(shard)
        padded = self.eval_steps(batch_size) * per_process
        eval_fn = self.eval_fn
        filler = shard if n_real else grain.MapDataset.source(self.records)

        def example(i: int) -> Example:
            out = eval_fn(filler[min(i, len(filler) - 1)])
            out["mask"] = np.bool_(i < n_real)
            return out

        ds = grain.MapDataset.range(padded).map(example).batch(per_process, batch_fn=self.collate)
        return iter(ds.to_iter_dataset(self.read_options))
