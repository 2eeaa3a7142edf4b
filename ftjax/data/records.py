"""Random-access record views: the common currency between data sources and grain pipelines.

A `RecordView` is a read-only sequence over a base source (TFDS data source or in-memory list),
optionally restricted to an index array, that returns each record as a dict with standard keys
({'text' or 'image'}, 'label'), so the pipeline never needs to know where the data came from.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["RecordView"]


class RecordView(Sequence):
    """Records `base[indices[i]]`, renamed by `rename` (source key -> standard key)."""

    def __init__(
        self,
        base: Sequence,
        rename: dict[str, str],
        indices: np.ndarray | None = None,
        convert: Callable[[Any], Any] | None = None,
    ):
        self.base = base
        self.rename = rename
        self.indices = None if indices is None else np.asarray(indices, np.int64)
        self.convert = convert

    def __len__(self) -> int:
        return len(self.base) if self.indices is None else len(self.indices)

    def __getitem__(self, i):
        if not 0 <= i < len(self):
            raise IndexError(i)
        record = self.base[int(i) if self.indices is None else int(self.indices[i])]
        out = {std: record[src] for src, std in self.rename.items()}
        return self.convert(out) if self.convert else out

    def subset(self, indices: np.ndarray) -> RecordView:
        """A view of these positions of this view."""
        base_indices = (
            np.asarray(indices) if self.indices is None else self.indices[np.asarray(indices)]
        )
        return RecordView(self.base, self.rename, base_indices, self.convert)

    def labels(self) -> np.ndarray:
        return np.asarray([self[i]["label"] for i in range(len(self))])
