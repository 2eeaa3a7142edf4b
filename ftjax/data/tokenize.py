"""Text to fixed-shape token arrays with the checkpoint's own tokenizer.

The tokenizer is the checkpoint's `tokenizer.json`, or, for BERT checkpoints that ship only a
WordPiece `vocab.txt` (the original bert-base-uncased files), the fast tokenizer transformers
would convert it to, built in memory with the `tokenizer_config.json` beside it (`do_lower_case`,
`strip_accents`, `tokenize_chinese_chars`, the special tokens). `load_tokenizer` takes either
file, or a checkpoint folder holding one of them.

`TextEncoder` truncates each text, text pair or list of words to `max_length` (no padding: the tokenizer.json's own padding
and truncation settings, e.g. MiniLM's pad-to-128, are overridden), and `collate` pads a batch to
`max_length`, or to the smallest of a few length buckets that fits the longest example (or the
examples' 'pad_to': the longest of the global batch, the same on every process), so jit sees only
a handful of shapes.

Not for: reading text datasets (sources.py, user.py) or batching (pipeline.py).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import (
    Encoding,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
)

__all__ = ["TOKENIZER_FILES", "TextEncoder", "load_tokenizer", "wordpiece_tokenizer"]

# What a checkpoint folder may hold, in the order they are tried.
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """The tokenizer in `path`: a tokenizer.json, a WordPiece vocab.txt, or a folder with one."""
    if path is None:
        raise ValueError(
            "no tokenizer file given (None): text models need the checkpoint's tokenizer.json or "
            "vocab.txt; put one in the checkpoint folder or name it as preprocessing['tokenizer_file']"
        )
    path = Path(path)
    if path.is_dir():
        for name in TOKENIZER_FILES:
            if (path / name).is_file():
                return load_tokenizer(path / name)
        raise FileNotFoundError(
            f"checkpoint folder {path} holds no tokenizer: looked for "
            f"{' and '.join(str(path / n) for n in TOKENIZER_FILES)}. Copy the checkpoint's "
            "tokenizer.json (or its vocab.txt and tokenizer_config.json) into it."
        )
    if not path.is_file():
        raise FileNotFoundError(
            f"tokenizer file {path} does not exist; give the checkpoint's tokenizer.json or vocab.txt"
        )
    if path.suffix == ".txt":
        return wordpiece_tokenizer(path)
    return Tokenizer.from_file(str(path))


def _token(config: dict[str, Any], key: str, default: str) -> str:
    value = config.get(key) or default
    return value["content"] if isinstance(value, dict) else str(value)


def wordpiece_tokenizer(vocab_file: str | os.PathLike) -> Tokenizer:
    """BERT's fast tokenizer from a vocab.txt and the tokenizer_config.json beside it, if any.

    The same pipeline transformers' BertTokenizerFast converts a vocab.txt to: BERT
    normalisation (clean text, Chinese characters split, lowercase and accents stripped as
    `do_lower_case` / `strip_accents` say; transformers' defaults when the config is absent),
    BERT pre-tokenisation, greedy WordPiece with '##' continuations, `[CLS] A [SEP] B [SEP]`.
    """
    vocab_file = Path(vocab_file)
    config_file = vocab_file.parent / "tokenizer_config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    if config.get("do_basic_tokenize", True) is False:
        raise ValueError(
            f"{config_file} sets do_basic_tokenize=false, which is not supported; give a "
            "tokenizer.json made by transformers (tokenizer.save_pretrained) instead"
        )
    lines = vocab_file.read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline after the last token
    vocab = {token: index for index, token in enumerate(lines)}  # a repeated token: its last line
    unk, sep, cls, pad, mask = (
        _token(config, f"{name}_token", f"[{name.upper()}]")
        for name in ("unk", "sep", "cls", "pad", "mask")
    )
    missing = [t for t in (unk, sep, cls) if t not in vocab]
    if missing:
        raise ValueError(
            f"{vocab_file} lacks the special tokens {missing}; is it a BERT vocab.txt?"
        )
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token=unk, max_input_chars_per_word=100))
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=config.get("tokenize_chinese_chars", True),
        strip_accents=config.get("strip_accents"),
        lowercase=config.get("do_lower_case", True),
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0",
        pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])],
    )
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    # Special tokens in the text stay whole, as in transformers (matched before normalisation).
    tokenizer.add_special_tokens([t for t in (pad, unk, cls, sep, mask) if t in vocab])
    return tokenizer


class TextEncoder:
    """Tokenizes texts, text pairs or word lists into int32 ids / type ids, truncated to `max_length`.

    `tokenizer_file` is what `load_tokenizer` takes: a tokenizer.json, a vocab.txt, or a folder.
    """

    def __init__(
        self, tokenizer_file: str | os.PathLike, max_length: int, buckets: Sequence[int] = ()
    ):
        tokenizer = load_tokenizer(tokenizer_file)
        if max_length < 2:
            raise ValueError(
                f"max_length must be at least 2 (room for [CLS] and [SEP]), got {max_length}"
            )
        self.tokenizer = tokenizer
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

    def encoding(self, text: str | Sequence[str], pair: str | None = None) -> Encoding:
        """The tokenizer's encoding of a text, a text pair (`pair`: truncation trims the longer
        side first) or a list of words (already split, e.g. CoNLL tokens: `encoding.word_ids`
        says which word each token came from)."""
        if isinstance(text, str):
            return self.tokenizer.encode(text, pair)
        return self.tokenizer.encode(list(text), is_pretokenized=True)

    @staticmethod
    def arrays(encoding: Encoding) -> dict[str, np.ndarray]:
        return {
            "input_ids": np.asarray(encoding.ids, np.int32),
            "token_type_ids": np.asarray(encoding.type_ids, np.int32),
        }

    @staticmethod
    def pre_tokenized(record: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The token arrays of a record that already holds them (extractive-QA windows)."""
        return {k: np.asarray(record[k], np.int32) for k in ("input_ids", "token_type_ids")}

    def encode(self, text: str | Sequence[str], pair: str | None = None) -> dict[str, np.ndarray]:
        return self.arrays(self.encoding(text, pair))

    def lengths(
        self, texts: Sequence[str | Sequence[str]], pairs: Sequence[str] | None = None
    ) -> np.ndarray:
        """Token counts (after truncation) of `texts` (with `pairs`), what `encode` would give."""
        if pairs is not None:
            encodings = self.tokenizer.encode_batch(list(zip(texts, pairs, strict=True)))
        elif texts and not isinstance(texts[0], str):
            encodings = self.tokenizer.encode_batch([list(t) for t in texts], is_pretokenized=True)
        else:
            encodings = self.tokenizer.encode_batch(list(texts))
        return np.asarray([len(e.ids) for e in encodings], np.int32)

    def padded_length(self, longest: int) -> int:
        """Smallest bucket that holds `longest` tokens."""
        return next(b for b in self.buckets if b >= longest)

    def collate(
        self, examples: Sequence[dict[str, np.ndarray]], token_pad: Mapping[str, int] | None = None
    ) -> dict[str, np.ndarray]:
        """Stack examples into [B, L] arrays padded to a bucket length, with the attention mask.

        Keys in `token_pad` are per-token arrays ([n, ...] for an example of n tokens), padded to
        L with their value; every other key is stacked as it is.
        """
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
        for key, fill in (token_pad or {}).items():
            first = np.asarray(examples[0][key])
            padded = np.full((batch, length, *first.shape[1:]), fill, first.dtype)
            for row, e in enumerate(examples):
                padded[row, : len(e[key])] = e[key]
            out[key] = padded
        for key in examples[0]:
            if key not in out and key != "pad_to":
                out[key] = np.stack([e[key] for e in examples])
        return out
