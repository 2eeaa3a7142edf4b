"""SQuAD v1.1 question answering data: reading the JSON files and cutting examples into windows.

`read_squad(path)` reads a SQuAD v1.1-format file (`data[].paragraphs[].context`,
`...qas[].id/question/answers[].text/answer_start`) into one record per question,
`{"id", "question", "context", "answers": [{"text", "answer_start"}, ...]}`, and checks it: valid
JSON, the keys present, unique ids, at least one question, every question answered (SQuAD v2's
unanswerable questions are not supported) and every answer's text found at its `answer_start`.

`windows(examples, tokenizer, max_length, stride)` tokenizes each example the way transformers'
run_qa.py does: `[CLS] question [SEP] context [SEP]`, only the context truncated, a long context
cut into overlapping windows (`stride` context tokens shared by neighbours) through the fast
tokenizer's overflow mechanism. Each window is a record of arrays:

  input_ids, token_type_ids   int32[n]  the window's tokens (n <= max_length, not padded)
  offset_start, offset_end    int32[n]  each context token's character span in the context,
                                        `NO_OFFSET` (-1) for question, special and padding tokens
  start_positions,            int32[]   token positions of the first gold answer when it lies
  end_positions                         wholly inside this window's context, else both 0 ([CLS])
  example_index               int32[]   the example the window came from (index into references)

and `references[example_index]` is `{"id", "context", "answers": [texts]}`, what the metrics
compare predicted spans with.

Not here: the loss and the span metrics (`ftjax.tasks.extractive_qa`, `ftjax.tasks.squad_metric`),
batching and padding (`ftjax.data.pipeline`), finding a checkpoint's tokenizer
(`ftjax.data.tokenize.load_tokenizer`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

__all__ = ["NO_OFFSET", "SquadFormatError", "read_squad", "windows"]

# Offsets of tokens that are not context (question, [CLS]/[SEP], padding): never part of a span.
NO_OFFSET = -1
# Position of a window's "no answer here" target: the [CLS] token, as in run_qa.py.
NO_ANSWER_POSITION = 0


class SquadFormatError(ValueError):
    """A SQuAD file that cannot be read as v1.1 question answering data; the message says where."""


def read_squad(path: str | os.PathLike) -> list[dict[str, Any]]:
    """One record per question of the SQuAD v1.1-format JSON file `path`, in file order."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"SQuAD file {path} does not exist") from None
    if not text.strip():
        raise SquadFormatError(f"SQuAD file {path} is empty")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise SquadFormatError(f"SQuAD file {path} is not JSON: {e}") from None
    articles = _field(data, "data", list, f"{path}: the top level")
    records: list[dict[str, Any]] = []
    where_id: dict[str, str] = {}
    for a, article in enumerate(articles):
        where = f"{path}: data[{a}]"
        for p, paragraph in enumerate(_field(article, "paragraphs", list, where)):
            where = f"{path}: data[{a}].paragraphs[{p}]"
            context = _field(paragraph, "context", str, where)
            for q, qa in enumerate(_field(paragraph, "qas", list, where)):
                record = _question(qa, context, f"{where}.qas[{q}]", path)
                if record["id"] in where_id:
                    raise SquadFormatError(
                        f"{path}: question id {record['id']!r} appears twice, at "
                        f"{where_id[record['id']]} and {where}.qas[{q}]; ids must be unique"
                    )
                where_id[record["id"]] = f"{where}.qas[{q}]"
                records.append(record)
    if not records:
        raise SquadFormatError(f"SQuAD file {path} holds no questions (data[].paragraphs[].qas[])")
    return records


def _field(obj: Any, key: str, kind: type, where: str) -> Any:
    if not isinstance(obj, dict):
        raise SquadFormatError(f"{where} is a {type(obj).__name__}, expected an object")
    if key not in obj:
        raise SquadFormatError(f"{where} lacks {key!r} (has {sorted(obj)})")
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise SquadFormatError(
            f"{where}: {key!r} is a {type(value).__name__}, expected a {kind.__name__}"
        )
    return value


def _question(qa: Any, context: str, where: str, path: Path) -> dict[str, Any]:
    qid = _field(qa, "id", str, where)
    where = f"{path}: question {qid!r}"
    question = _field(qa, "question", str, where)
    answers = _field(qa, "answers", list, where)
    if qa.get("is_impossible") or not answers:
        raise SquadFormatError(
            f"{where} has no answer; only SQuAD v1.1 data is supported, where every question has "
            "at least one answer (SQuAD v2 unanswerable questions are not)"
        )
    return {
        "id": qid,
        "question": question,
        "context": context,
        "answers": [_answer(ans, context, f"{where}, answer {i}") for i, ans in enumerate(answers)],
    }


def _answer(answer: Any, context: str, where: str) -> dict[str, Any]:
    text = _field(answer, "text", str, where)
    start = _field(answer, "answer_start", int, where)
    found = context[start : start + len(text)] if start >= 0 else ""
    if not text or found != text:
        elsewhere = context.find(text) if text else -1
        hint = f"; the text occurs at character {elsewhere}" if elsewhere >= 0 else ""
        raise SquadFormatError(
            f"{where} {text!r} is not at its answer_start {start} in the context "
            f"({len(context)} characters), which reads {found!r} there{hint}"
        )
    return {"text": text, "answer_start": start}


def windows(
    examples: Sequence[Mapping[str, Any]], tokenizer: Tokenizer, max_length: int, stride: int
) -> tuple[list[dict[str, np.ndarray]], list[dict[str, Any]]]:
    """Every example (as `read_squad` gives them) as one or more windows, and the references.

    `tokenizer` is not changed: a copy gets this function's truncation (max_length, stride,
    "only_second") and no padding. Questions lose leading whitespace, as in run_qa.py.
    """
    if stride < 0:
        raise ValueError(
            f"stride is {stride}; use the number of context tokens windows share (>= 0)"
        )
    tok = _copy(tokenizer)
    questions = [str(e["question"]).lstrip() for e in examples]
    _check_room(examples, questions, tok, max_length, stride)
    tok.enable_truncation(max_length, stride=stride, strategy="only_second")
    encodings = tok.encode_batch(list(zip(questions, [e["context"] for e in examples])))
    records: list[dict[str, np.ndarray]] = []
    for index, (example, encoding) in enumerate(zip(examples, encodings)):
        for window in [encoding, *encoding.overflowing]:
            records.append(_window(window, example, index))
    references = [
        {"id": e["id"], "context": e["context"], "answers": [a["text"] for a in e["answers"]]}
        for e in examples
    ]
    return records, references


def _copy(tokenizer: Tokenizer) -> Tokenizer:
    tok = Tokenizer.from_str(tokenizer.to_str())
    tok.no_padding()
    tok.no_truncation()
    return tok


def _check_room(
    examples: Sequence[Mapping[str, Any]],
    questions: Sequence[str],
    tok: Tokenizer,
    max_length: int,
    stride: int,
) -> None:
    """Each question must leave more than `stride` context tokens per window (the tokenizer would
    panic otherwise, without naming the example)."""
    special = tok.num_special_tokens_to_add(is_pair=True)
    lengths = [len(e.ids) for e in tok.encode_batch(list(questions), add_special_tokens=False)]
    for example, length in zip(examples, lengths):
        room = max_length - special - length
        if room < 1:
            raise ValueError(
                f"question {example['id']!r} is {length} tokens; with the {special} special tokens "
                f"it leaves no room for context in max_length {max_length}: raise max_length or "
                "shorten the question"
            )
        if stride >= room:
            raise ValueError(
                f"question {example['id']!r} leaves {room} context tokens per window in max_length "
                f"{max_length}, not more than the stride {stride}: lower the stride or raise "
                "max_length"
            )


def _window(window: Any, example: Mapping[str, Any], index: int) -> dict[str, np.ndarray]:
    context_tokens = np.asarray([s == 1 for s in window.sequence_ids])
    if not context_tokens.any():
        raise ValueError(
            f"question {example['id']!r}: a window has no context tokens; the tokenizer must encode "
            "pairs as question (sequence 0) then context (sequence 1)"
        )
    offsets = np.asarray(window.offsets, np.int32).reshape(-1, 2)
    offsets[~context_tokens] = NO_OFFSET
    answer = example["answers"][0]
    start, end = _answer_tokens(
        offsets, answer["answer_start"], answer["answer_start"] + len(answer["text"])
    )
    return {
        "input_ids": np.asarray(window.ids, np.int32),
        "token_type_ids": np.asarray(window.type_ids, np.int32),
        "offset_start": np.ascontiguousarray(offsets[:, 0]),
        "offset_end": np.ascontiguousarray(offsets[:, 1]),
        "start_positions": np.asarray(start, np.int32),
        "end_positions": np.asarray(end, np.int32),
        "example_index": np.asarray(index, np.int32),
    }


def _answer_tokens(offsets: np.ndarray, start_char: int, end_char: int) -> tuple[int, int]:
    """The tokens holding the answer's first and last characters, or [CLS] twice when the answer
    is not wholly inside this window's context. Context offsets never decrease, so the start is
    the last token starting at or before `start_char` and the end the first ending at or after
    `end_char` (run_qa.py's two scans, kept inside the context)."""
    tokens = np.flatnonzero(offsets[:, 0] != NO_OFFSET)
    starts, ends = offsets[tokens, 0], offsets[tokens, 1]
    if not (starts[0] <= start_char and ends[-1] >= end_char):
        return NO_ANSWER_POSITION, NO_ANSWER_POSITION
    first = tokens[np.searchsorted(starts, start_char, side="right") - 1]
    last = tokens[np.searchsorted(ends, end_char, side="left")]
    return int(first), int(last)
