"""SQuAD v1.1 exact match and F1 of predicted answer strings, as the official script scores them.

Both compare answers after the official normalisation (lowercase, punctuation removed, the
articles a/an/the removed, whitespace collapsed); F1 is over the normalised answers' word bags.
A question scores the best over its gold answers; a split the mean over its questions, as a
fraction in [0, 1] like ftjax's other metrics (the official script prints percentages: 100x
these). A question without a prediction scores 0, as in the official script.

Not here: turning logits into predicted spans (`ftjax.tasks.extractive_qa`), reading SQuAD files
(`ftjax.data.squad`), SQuAD v2's no-answer scoring.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["normalize_answer", "exact_match_score", "f1_score", "best_over_answers", "squad_scores"]

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation, drop articles, collapse whitespace (the official order)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match_score(prediction: str, truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(truth))


def f1_score(prediction: str, truth: str) -> float:
    """Word-bag F1 of the normalised answers; 0 when they share no word (both empty included)."""
    predicted, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
    same = sum((Counter(predicted) & Counter(gold)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def best_over_answers(
    score: Callable[[str, str], float], prediction: str, answers: Sequence[str]
) -> float:
    """The best `score` of `prediction` against any of a question's gold `answers`."""
    if not answers:
        raise ValueError("a question without gold answers cannot be scored (SQuAD v1.1 has none)")
    return max(score(prediction, answer) for answer in answers)


def squad_scores(
    predictions: Mapping[str, str], references: Sequence[Mapping[str, Any]]
) -> dict[str, float]:
    """Mean exact match and F1 (fractions) over `references` (`{"id", "answers": [texts]}`) of
    `predictions` (question id -> predicted text); unpredicted questions score 0."""
    if not references:
        raise ValueError("no questions to score")
    em = f1 = 0.0
    for ref in references:
        if ref["id"] in predictions:
            prediction = predictions[ref["id"]]
            em += best_over_answers(exact_match_score, prediction, ref["answers"])
            f1 += best_over_answers(f1_score, prediction, ref["answers"])
    return {"exact_match": em / len(references), "f1": f1 / len(references)}
