"""Text to fixed-shape token arrays with the checkpoint's own `tokenizer.json`.

`TextEncoder` truncates each text to `max_length` (no padding: the tokenizer.json's own padding
and truncation settings, e.g. MiniLM's pad-to-128, are overridden), and `collate` pads a batch to
`max_length`, or to the smallest of a few length buckets that fits the longest example (or the
examples' 'pad_to': the longest of the global batch, the same on every process), so jit sees only
a handful of shapes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from tokenizers import Tokenizer


class TextEncoder:
    """Tokenizes single texts into int32 ids / type ids, truncated to `max_length`."""

    def __init__(
        self, tokenizer_file: str | os.PathLike, max_length: int, buckets: Sequence[int] = ()
    ):
        if not os.path.isfile(tokenizer_file):
            raise FileNotFoundError(
                f"tokenizer file {tokenizer_file} does not exist; give the checkpoint's tokenizer.json"
            )
        if max_length < 2:
            raise ValueError(
                f"max_length must be at least 2 (room for [CLS] and [SEP]), got {max_length}"
            )
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length)
        self.max_length = max_length
        self.buckets = sorted({int(b) for b in buckets if b < max_length} | {max_length})
        self.pad_id = self._pad_id()

    def _pad_id(self) -> int:
        for token in ("[PAD]", "<pad>"):
            token_id = self.tokenizer.token_to_id(token)
            if token_id is not None:
                return token_id
        return 0

    def encode(self, text: str) -> dict[str, np.ndarray]:
        enc = self.tokenizer.encode(text)
        return {
            "input_ids": np.asarray(enc.ids, np.int32),
            "token_type_ids": np.asarray(enc.type_ids, np.int32),
        }

    def lengths(self, texts: Sequence[str]) -> np.ndarray:
        """Token counts (after truncation) of `texts`, what `encode` would give."""
        return np.asarray([len(e.ids) for e in self.tokenizer.encode_batch(list(texts))], np.int32)

    def padded_length(self, longest: int) -> int:
        """Smallest bucket that holds `longest` tokens."""
        return next(b for b in self.buckets if b >= longest)

    def collate(self, examples: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """Stack examples into [B, L] arrays padded to a bucket length, with the attention mask."""
        length = self.padded_length(
            max(max(len(e["input_ids"]), int(e.get("pad_to", 0))) for e in examples)
        )
        batch = len(examples)
        ids = np.full((batch, length), self.pad_id, np.int32)
        types = np.zeros((batch, length), np.int32)
        mask = np.zeros((batch, length), np.int32)
        for row, e in enumerate(examples):
            n = len(e["input_ids"])
            ids[row, :n] = e["input_ids"]
            types[row, :n] = e["token_type_ids"]
            mask[row, :n] = 1
        out = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        for key in examples[0]:
            if key not in out and key != "pad_to":
                out[key] = np.stack([e[key] for e in examples])
        return out
