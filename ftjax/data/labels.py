"""Raw label values (CSV cells, JSON values, tag strings) to the standard record labels of a task.

A standard record's 'label' is, per task: a class id (classification), a multi-hot float32
vector (multi_label), a float (regression) or an int32 array of per-word tag ids
(token_classification). `infer_task` picks the task a file's labels describe when the config
does not say: JSON lists are multi-label, numbers with a fractional part are regression targets,
anything else is a class name. Integer-valued scores (1-5 ratings) read as classes: set
`task.name='regression'` for them.

Not here: reading files (user.py, conll.py, squad.py), the tasks themselves (`ftjax.tasks`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "class_names",
    "infer_task",
    "multi_hot",
    "parse_multi_label",
    "parse_number",
    "tag_names",
    "check_known",
]


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    try:
        float(str(value))
    except ValueError:
        return False
    return True


def infer_task(labels: Sequence[Any]) -> str:
    """'multi_label' (lists), 'regression' (numbers, some fractional) or 'classification'."""
    if any(isinstance(y, (list, tuple)) for y in labels):
        return "multi_label"
    if labels and all(_is_number(y) for y in labels):
        if any(float(y) != int(float(y)) for y in labels):
            return "regression"
    return "classification"


def class_names(labels: Sequence[str]) -> list[str]:
    """Sorted distinct names; numeric names in numeric order ("10" after "9")."""
    names = sorted(set(labels))
    if all(n.lstrip("-").isdigit() for n in names):
        names.sort(key=int)
    return names


def parse_number(value: Any, where: str) -> float:
    """A regression target; `where` names the row in the error."""
    if not _is_number(value):
        raise ValueError(
            f"{where}: label {value!r} is not a number; a regression task needs numeric labels "
            "(set task.name to 'classification' for class names)"
        )
    number = float(value)
    if not np.isfinite(number):
        raise ValueError(f"{where}: label {value!r} is not finite; fix or drop the row")
    return number


def parse_multi_label(value: Any, separator: str) -> list[str]:
    """A multi-label cell: a JSON list, or a string of names joined by `separator` ('' is none)."""
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    if value is None:
        return []
    return [part.strip() for part in str(value).split(separator) if part.strip()]


def multi_hot(names: Sequence[str], index: Mapping[str, int]) -> np.ndarray:
    out = np.zeros(len(index), np.float32)
    out[[index[n] for n in names]] = 1.0
    return out


def tag_names(tag_lists: Sequence[Sequence[str]]) -> list[str]:
    """The tags of a token-classification train split: 'O' first, then the entity types in
    order with each one's B- before its I- (other tags sorted after)."""
    tags = {t for tags in tag_lists for t in tags}
    entity = sorted({t[2:] for t in tags if t[:2] in ("B-", "I-")})
    ordered = (["O"] if "O" in tags else []) + [
        f"{p}-{e}" for e in entity for p in "BI" if f"{p}-{e}" in tags
    ]
    return ordered + sorted(tags - set(ordered))


def check_known(split: str, path: Any, seen: set[str], known: Sequence[str], what: str) -> None:
    """Labels/tags of `split` that train never has are an error naming them."""
    unseen = sorted(seen - set(known))
    if unseen:
        raise ValueError(
            f"{what} {unseen} appear in the {split} split ({path}) but never in train; "
            "a model cannot learn them: add training examples or drop those rows"
        )
