"""Entities in IOB tag sequences and entity-level precision, recall and F1.

The rules are conlleval's, as seqeval's default mode applies them (`seqeval.metrics.f1_score`,
`classification_report` with default arguments), so the numbers are the ones papers report:

- tags are 'O' or '<prefix>-<TYPE>' with prefix 'B' or 'I' (IOB1 and IOB2 alike);
- an entity starts at a B- tag, and at an I- tag that follows 'O', the sentence start or a tag of
  another type (ill-formed IOB2 still yields entities); it continues over I- tags of its type;
- an entity counts as correct only if its type, first and last word all match a gold entity;
  precision, recall and F1 are micro over all entities, and per type over that type's entities;
  a ratio with a zero denominator is 0.0 (seqeval's default, without its warning).

seqeval is only the tests' reference; nothing here imports it. Not here: mapping tag ids to names,
or which tokens are scored (`ftjax.tasks.token_classification`); IOBES and strict (IOB2-only) mode.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import NamedTuple

__all__ = ["Entity", "Scores", "entities", "entity_scores", "parse_tag"]

Entity = tuple[str, int, int]  # (type, first word, last word): last inclusive, as conlleval's


class Scores(NamedTuple):
    """Entity-level scores; `support` is the number of gold entities."""

    precision: float
    recall: float
    f1: float
    support: int


def parse_tag(tag: str) -> tuple[str, str | None]:
    """('B' | 'I', type) for an entity tag, ('O', None) for 'O'; ValueError for anything else."""
    if tag == "O":
        return "O", None
    if len(tag) > 2 and tag[0] in "BI" and tag[1] == "-":
        return tag[0], tag[2:]
    raise ValueError(f"tag {tag!r} is not IOB: expected 'O', 'B-<TYPE>' or 'I-<TYPE>'")


def entities(tags: Sequence[str]) -> list[Entity]:
    """The entities of one sentence's tags, in order (conlleval's chunking, see the module doc)."""
    found: list[Entity] = []
    start, prev_type = None, None
    for i, tag in enumerate([*tags, "O"]):  # the trailing 'O' closes an entity at the end
        prefix, type_ = parse_tag(tag)
        if start is not None and (prefix != "I" or type_ != prev_type):
            found.append((prev_type, start, i - 1))
            start = None
        if prefix == "B" or (prefix == "I" and start is None):
            start = i
        prev_type = type_
    return found


def _ratio(num: int, den: int) -> float:
    return num / den if den else 0.0


def _scores(correct: int, predicted: int, gold: int) -> Scores:
    p, r = _ratio(correct, predicted), _ratio(correct, gold)
    # seqeval's formula (from p and r, not 2c / (p + g)), so the floats agree too
    return Scores(p, r, 2 * p * r / (p + r) if p + r else 0.0, gold)


def entity_scores(
    gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]
) -> tuple[Scores, dict[str, Scores]]:
    """Micro scores over all entities, and scores per type (the types in gold or predictions).

    `gold` and `predicted` are sentences of tags, sentence for sentence of equal lengths; entities
    never cross sentences.
    """
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold sentences but {len(predicted)} predicted ones")
    true_set, pred_set = set(), set()
    for k, (g, p) in enumerate(zip(gold, predicted)):
        if len(g) != len(p):
            raise ValueError(f"sentence {k} has {len(g)} gold tags but {len(p)} predicted ones")
        true_set.update((k, *e) for e in entities(g))
        pred_set.update((k, *e) for e in entities(p))
    correct = true_set & pred_set
    c, p, g = (Counter(e[1] for e in s) for s in (correct, pred_set, true_set))
    per_type = {t: _scores(c[t], p[t], g[t]) for t in sorted(p.keys() | g.keys())}
    return _scores(len(correct), len(pred_set), len(true_set)), per_type
