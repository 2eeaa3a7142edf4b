"""Parameter groups: named sets of parameters chosen by regular expressions over paths.

A group is a name plus a regex that must *fully* match '/'-joined parameter paths
(`encoder/layer_3/attention/query/kernel`). Every parameter belongs to exactly one group: a
parameter matched by no pattern or by several is an error listing the paths and patterns (the
scenic rule, stricter than first-match-wins). Groups are listed input side first, head last;
that depth order is what gradual unfreezing and layer-wise LR decay walk over.

This module only says which parameter is in which group. What a group does in a phase
(trainable or frozen, its learning rate) lives in `ftjax.phases`; the optax transform built
from that lives in `ftjax.optim`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from flax import traverse_util

from ftjax.tables import format_table

__all__ = [
    "Params",
    "GroupSpecError",
    "ParamGroups",
    "assign_groups",
    "split_params",
    "merge_params",
    "GROUP_SETS",
    "carve",
]

Params = dict[str, Any]


class GroupSpecError(ValueError):
    """A group specification does not partition the parameters."""


@dataclasses.dataclass(frozen=True)
class ParamGroups:
    """Which group every parameter belongs to.

    Attributes:
      names: group names in depth order (input side first, head last).
      labels: a pytree shaped like the params whose leaves are group names.
      members: group name -> '/'-joined paths of its parameters, in traversal order.
      sizes: group name -> number of scalar parameters.
    """

    names: tuple[str, ...]
    labels: Params
    members: Mapping[str, tuple[str, ...]]
    sizes: Mapping[str, int]

    def paths(self, names: Iterable[str]) -> frozenset[str]:
        """The '/'-joined parameter paths of the named groups."""
        names = tuple(names)
        self.check_known(names, what="groups")
        return frozenset(p for n in names for p in self.members[n])

    def check_known(self, names: Iterable[str], *, what: str) -> None:
        unknown = [n for n in names if n not in self.members]
        if unknown:
            raise GroupSpecError(
                f"unknown group(s) {unknown} in {what}; the groups are {list(self.names)}. "
                "Use one of those names or add a group pattern for it."
            )

    def report(self) -> str:
        """A table of groups: tensors, parameters and a sample path."""
        rows = [
            (n, str(len(self.members[n])), f"{self.sizes[n]:,}", self.members[n][0])
            for n in self.names
        ]
        total = sum(self.sizes.values())
        rows.append(("total", str(sum(len(m) for m in self.members.values())), f"{total:,}", ""))
        return format_table(("group", "tensors", "params", "sample path"), rows)


def assign_groups(params: Mapping[str, Any], patterns: Sequence[tuple[str, str]]) -> ParamGroups:
    """Assign every parameter to exactly one of `patterns` ((name, regex) pairs, depth order).

    Raises GroupSpecError for duplicate names, bad regexes, patterns that match nothing, and
    parameters matched by no pattern or by more than one.
    """
    compiled = _compile_patterns(patterns)
    flat = traverse_util.flatten_dict(dict(params))
    if not flat:
        raise GroupSpecError("params are empty: initialise the model before assigning groups")
    owner: dict[tuple[str, ...], str] = {}
    unmatched: list[str] = []
    multiple: list[str] = []
    for key in flat:
        path = "/".join(key)
        hits = [name for name, rx in compiled if rx.fullmatch(path)]
        if not hits:
            unmatched.append(path)
        elif len(hits) > 1:
            multiple.append(f"{path} (matched by {hits})")
        else:
            owner[key] = hits[0]
    _raise_on_bad_matches(unmatched, multiple, patterns)
    members = {
        name: tuple("/".join(k) for k, g in owner.items() if g == name) for name, _ in patterns
    }
    empty = [f"{name}={rx!r}" for name, rx in patterns if not members[name]]
    if empty:
        raise GroupSpecError(
            f"group pattern(s) {empty} match no parameter; fix the regex (it must match the whole "
            f"'/'-joined path, e.g. {'/'.join(next(iter(flat)))!r}) or drop the group"
        )
    sizes = {
        n: sum(math.prod(flat[tuple(p.split("/"))].shape) for p in members[n]) for n in members
    }
    labels = traverse_util.unflatten_dict(owner)
    return ParamGroups(tuple(n for n, _ in patterns), labels, members, sizes)


def _compile_patterns(patterns: Sequence[tuple[str, str]]) -> list[tuple[str, re.Pattern]]:
    if not patterns:
        raise GroupSpecError(
            "no group patterns given: pass (name, regex) pairs, e.g. the model's layer_groups"
        )
    names = [name for name, _ in patterns]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise GroupSpecError(
            f"group name(s) {dupes} appear more than once; give each group one unique name"
        )
    compiled = []
    for name, rx in patterns:
        try:
            compiled.append((name, re.compile(rx)))
        except re.error as e:
            raise GroupSpecError(
                f"group {name!r}: pattern {rx!r} is not a valid regex ({e}); fix the pattern"
            ) from e
    return compiled


def _raise_on_bad_matches(
    unmatched: list[str], multiple: list[str], patterns: Sequence[tuple[str, str]]
) -> None:
    shown = dict(patterns)
    if unmatched:
        raise GroupSpecError(
            f"{len(unmatched)} parameter(s) matched by no group pattern: {unmatched[:10]}"
            f"{' ...' if len(unmatched) > 10 else ''}; patterns: {shown}. Every parameter must belong to "
            "exactly one group: widen a pattern or add a group for them."
        )
    if multiple:
        raise GroupSpecError(
            f"{len(multiple)} parameter(s) matched by more than one group pattern: {multiple[:10]}"
            f"{' ...' if len(multiple) > 10 else ''}; patterns: {shown}. Make the patterns disjoint."
        )


# Ready group sets for parameter-efficient phases: (group name, full-match path regex). Carved
# out of the natural groups with `carve`, so a plan trains them by name (BitFit: Ben Zaken et
# al. 2022, biases only; "LayerNorm only": the norms' scales and biases).
GROUP_SETS = {
    "bitfit": ("biases", r".*/bias"),
    "layernorm": ("layer_norms", r".*(?i:layer_?norm)[^/]*/(scale|bias)"),
}


def carve(patterns: Sequence[tuple[str, str]], name: str, regex: str) -> list[tuple[str, str]]:
    """`patterns` with the params fully matching `regex` moved into a new group `name`.

    They leave every group but the last (the head, which keeps all of its params); the new group
    goes just before the head in depth order. Carving twice moves shared params (a LayerNorm's
    bias under bitfit then layernorm) into the later group.
    """
    if not patterns:
        raise GroupSpecError(f"cannot carve group {name!r} out of an empty group list")
    if name in {n for n, _ in patterns}:
        raise GroupSpecError(
            f"group {name!r} already exists in {[n for n, _ in patterns]}; carve it once"
        )
    *body, (head, head_rx) = patterns
    without = lambda rx: f"(?!(?:{regex})\\Z)(?:{rx})"
    return [(n, without(rx)) for n, rx in body] + [
        (name, f"(?!(?:{head_rx})\\Z)(?:{regex})"),
        (head, head_rx),
    ]


def split_params(
    params: Mapping[str, Any], trainable_paths: frozenset[str]
) -> tuple[Params, Params]:
    """(trainable, frozen) nested dicts holding the leaves whose paths are / are not trainable."""
    flat = traverse_util.flatten_dict(dict(params))
    trainable = {k: v for k, v in flat.items() if "/".join(k) in trainable_paths}
    frozen = {k: v for k, v in flat.items() if "/".join(k) not in trainable_paths}
    return traverse_util.unflatten_dict(trainable), traverse_util.unflatten_dict(frozen)


def merge_params(a: Mapping[str, Any], b: Mapping[str, Any]) -> Params:
    """The union of two disjoint nested dicts (the inverse of `split_params`)."""
    flat = traverse_util.flatten_dict(dict(a))
    flat.update(traverse_util.flatten_dict(dict(b)))
    return traverse_util.unflatten_dict(flat)
