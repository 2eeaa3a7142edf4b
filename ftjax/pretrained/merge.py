"""Put checkpoint arrays into freshly initialised Flax variables by an architecture's key rules.

Strict by default: every Flax leaf must match exactly one key rule, and every missing,
unexpected or mis-shaped key is collected and reported in one error naming the file. The only
escapes are explicit: `dont_load` regexes (Flax paths kept at their fresh values, e.g. the new
head; the checkpoint keys they would have read count as ignored) and the architecture's
`ignored_keys` (checkpoint buffers that are not parameters). The architecture's `key_aliases`
rename other names of a parameter (BERT's `LayerNorm.gamma`) before matching; reports and errors
name keys as the file does.

Model state (batch-norm statistics) merges with the params: a leaf is named by its path inside
its collection without the collection name ("stem/bn/mean" next to "stem/bn/scale"), so one rule
list covers both.

Not for: finding or reading files (sources.py, formats.py) or building the model (load.py).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from flax import traverse_util

from ftjax.pretrained import arch as arch_lib
from ftjax.pretrained.formats import Arrays

__all__ = ["CheckpointMismatchError", "LoadReport", "merge", "rules_transform"]

_MAX_LISTED = 40  # per section: a wrong architecture would otherwise list every key


class CheckpointMismatchError(ValueError):
    """Checkpoint keys that do not fit the model: missing, unexpected or mis-shaped."""


@dataclasses.dataclass(frozen=True)
class LoadReport:
    """What a merge did: Flax paths loaded and re-initialised, checkpoint keys ignored."""

    checkpoint: str
    loaded: tuple[str, ...]
    reinitialised: tuple[str, ...]
    ignored: tuple[str, ...]
    loaded_values: int
    reinitialised_values: int

    def __str__(self) -> str:
        rows = [
            ("loaded", len(self.loaded), f"{self.loaded_values:,}"),
            ("re-initialised", len(self.reinitialised), f"{self.reinitialised_values:,}"),
            ("ignored (checkpoint)", len(self.ignored), "-"),
        ]
        lines = [
            f"pretrained weights from {self.checkpoint}",
            f"  {'':22}{'arrays':>8}{'values':>14}",
        ]
        lines += [f"  {name:22}{n:>8}{values:>14}" for name, n, values in rows]
        if self.reinitialised:
            lines.append(f"  re-initialised: {', '.join(self.reinitialised)}")
        return "\n".join(lines)


def merge(
    fresh: Mapping[str, Any],
    checkpoint: Arrays,
    arch: arch_lib.Architecture,
    config: Mapping[str, Any],
    *,
    dont_load: Sequence[str] = (),
    checkpoint_name: str = "checkpoint",
) -> tuple[dict[str, Any], LoadReport]:
    """Fresh variables ({"params": ..., "batch_stats": ...}) with checkpoint arrays put in.

    `fresh` leaves need only `.shape` and `.dtype`: pass `jax.eval_shape` structs to skip
    computing values that the checkpoint replaces; leaves not loaded come back as given.
    Raises CheckpointMismatchError listing every problem at once.
    """
    leaves = _flat_leaves(fresh)
    checkpoint, file_names, alias_problems = _apply_aliases(checkpoint, arch.key_aliases)
    rules = [
        (re.compile(rx), template, _transform(t)) for rx, template, t in arch.key_rules(config)
    ]
    keep_fresh = [re.compile(rx) for rx in dont_load]
    wanted, rule_problems = _checkpoint_keys_for(leaves, rules, keep_fresh)
    prefix = _best_prefix(arch.key_prefixes, wanted.values(), checkpoint)
    ignored_rx = [re.compile(rx) for rx in arch.ignored_keys]

    merged: dict[str, np.ndarray] = {}
    loaded, reinit, consumed, skipped = [], [], set(), set()
    missing, shape_errors = [], []
    for path, (_, value) in leaves.items():
        key = wanted.get(path)
        full_key = None if key is None else prefix + key
        if any(rx.fullmatch(path) for rx in keep_fresh):
            reinit.append(path)
            if full_key in checkpoint:
                consumed.add(full_key)
                skipped.add(full_key)
            continue
        if key is None:
            continue  # already in rule_problems
        consumed.add(full_key)
        if full_key not in checkpoint:
            missing.append(f"{full_key} (for {path})")
            continue
        array = rules_transform(rules, path)(checkpoint[full_key])
        if array.shape != value.shape:
            shape_errors.append(
                f"{file_names.get(full_key, full_key)}: checkpoint {tuple(checkpoint[full_key].shape)} -> {array.shape}, model {path} {value.shape}"
            )
            continue
        merged[path] = array.astype(value.dtype)
        loaded.append(path)

    leftover = [k for k in checkpoint if k not in consumed]
    ignored = [
        k
        for k in leftover
        if any(rx.fullmatch(k) or rx.fullmatch(k.removeprefix(prefix)) for rx in ignored_rx)
    ]
    unexpected = sorted(file_names.get(k, k) for k in set(leftover) - set(ignored))
    _raise_if_problems(
        checkpoint_name, rule_problems, missing, unexpected, shape_errors, alias_problems
    )

    out = {path: merged.get(path, value) for path, (collection, value) in leaves.items()}
    variables = _unflatten(leaves, out)
    report = LoadReport(
        checkpoint=checkpoint_name,
        loaded=tuple(loaded),
        reinitialised=tuple(reinit),
        ignored=tuple(sorted(file_names.get(k, k) for k in set(ignored) | skipped)),
        loaded_values=sum(int(np.size(merged[p])) for p in loaded),
        reinitialised_values=sum(math.prod(leaves[p][1].shape) for p in reinit),
    )
    return variables, report


def _apply_aliases(
    checkpoint: Arrays, aliases: Sequence[tuple[str, str]]
) -> tuple[Arrays, dict[str, str], list[str]]:
    """The checkpoint with aliased keys renamed, renamed key -> the file's name, and clashes."""
    if not aliases:
        return checkpoint, {}, []
    compiled = [(re.compile(rx), template) for rx, template in aliases]

    def canonical(key: str) -> str:
        for rx, template in compiled:
            if match := rx.fullmatch(key):
                return match.expand(template)
        return key

    renamed: Arrays = {}
    file_names: dict[str, str] = {}
    clashes = []
    for key, array in checkpoint.items():
        name = canonical(key)
        if name in renamed:
            clashes.append(f"{file_names.get(name, name)} and {key} (both mean {name})")
            continue
        renamed[name] = array
        if name != key:
            file_names[name] = key
    return renamed, file_names, clashes


def rules_transform(rules, path: str):
    """The transform of the (single) rule matching `path`."""
    return next(t for rx, _, t in rules if rx.fullmatch(path))


def _transform(t: str | arch_lib.Transform) -> arch_lib.Transform:
    if callable(t):
        return t
    if t not in arch_lib.TRANSFORMS:
        raise ValueError(f"unknown key-rule transform {t!r}; known: {sorted(arch_lib.TRANSFORMS)}")
    return arch_lib.TRANSFORMS[t]


def _flat_leaves(variables: Mapping[str, Any]) -> dict[str, tuple[str, Any]]:
    """'/'-joined path inside its collection -> (collection, leaf)."""
    leaves: dict[str, tuple[str, Any]] = {}
    for collection, tree in variables.items():
        for keys, value in traverse_util.flatten_dict(dict(tree)).items():
            path = "/".join(keys)
            if path in leaves:
                raise ValueError(
                    f"{path} exists in collections {leaves[path][0]!r} and {collection!r}; key rules cannot tell them apart"
                )
            leaves[path] = (collection, value)
    return leaves


def _unflatten(leaves: Mapping[str, tuple[str, Any]], values: Mapping[str, Any]) -> dict[str, Any]:
    by_collection: dict[str, dict[tuple[str, ...], Any]] = {}
    for path, (collection, _) in leaves.items():
        by_collection.setdefault(collection, {})[tuple(path.split("/"))] = values[path]
    return {c: traverse_util.unflatten_dict(flat) for c, flat in by_collection.items()}


def _checkpoint_keys_for(
    leaves: Mapping[str, Any], rules, keep_fresh
) -> tuple[dict[str, str], list[str]]:
    """Flax path -> checkpoint key (without prefix), and paths matched by zero or several rules.

    A `dont_load` path may lack a rule (the new head usually has none).
    """
    wanted, problems = {}, []
    for path in leaves:
        hits = [(rx, template) for rx, template, _ in rules if rx.fullmatch(path)]
        if not hits and any(rx.fullmatch(path) for rx in keep_fresh):
            continue
        if len(hits) == 1:
            rx, template = hits[0]
            wanted[path] = rx.fullmatch(path).expand(template)
        else:
            problems.append(
                f"{path} matches {len(hits)} key rules{'' if not hits else ': ' + ', '.join(rx.pattern for rx, _ in hits)}"
            )
    return wanted, problems


def _best_prefix(prefixes: Sequence[str], keys, checkpoint: Arrays) -> str:
    """The key prefix under which most expected keys exist (ties: the first listed)."""
    keys = list(keys)
    return max(prefixes, key=lambda p: sum(p + k in checkpoint for k in keys))


def _raise_if_problems(
    name: str, rule_problems, missing, unexpected, shape_errors, alias_problems=()
) -> None:
    sections = [
        ("Flax params without exactly one key rule (architecture bug)", rule_problems),
        ("two names for one parameter (keep one in the file)", list(alias_problems)),
        ("missing from the checkpoint", missing),
        ("unexpected in the checkpoint", unexpected),
        ("shape mismatch", shape_errors),
    ]
    sections = [(title, items) for title, items in sections if items]
    if not sections:
        return
    lines = [f"checkpoint {name} does not fit the model:"]
    for title, items in sections:
        lines.append(f"  {title} ({len(items)}):")
        lines += [f"    {item}" for item in items[:_MAX_LISTED]]
        if len(items) > _MAX_LISTED:
            lines.append(f"    ... and {len(items) - _MAX_LISTED} more")
    lines.append(
        "Pass dont_load=[regex, ...] for Flax params to keep freshly initialised (this also ignores the "
        "checkpoint keys they map to), check that the checkpoint matches the architecture and config, or "
        "pick the right arch=."
    )
    raise CheckpointMismatchError("\n".join(lines))
