"""Flax variables -> a PyTorch state dict (numpy arrays), by running key rules backwards.

A key rule `(flax_regex, torch_template, transform)` (`ftjax.pretrained.arch`) reads one
checkpoint key into one Flax leaf. Backwards, the leaf's path fills the template through the
regex's groups, and the inverse transform restores torch's layout: `linear` (in, out) -> (out,
in), `conv` (kh, kw, in, out) -> (out, in, kh, kw), `copy` as is. So one function exports every
architecture's backbone from the same rules the loader uses; only the heads need their own rules
(`families.py`). Every leaf must match exactly one rule and no two leaves may name one key:
anything else is an error listing the paths, never a silently missing weight.

Also here: the batch-norm step counters torch's BatchNorm keeps in its state dict (a strict
`load_state_dict` wants them; ftjax has no such leaf), and folding regression's target
standardisation into the head's output layer.

Not here: which rules and prefixes an architecture uses (`hf.py`, `lite.py`), writing files.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from flax import traverse_util

from ftjax.export.common import ExportError
from ftjax.pretrained import arch as arch_lib
from ftjax.pretrained.arch import KeyRule

__all__ = [
    "INVERSES",
    "RuleSet",
    "flat_variables",
    "inverse",
    "to_torch",
    "add_batch_norm_counters",
    "fold_standardisation",
]

INVERSES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "copy": lambda w: w,
    "linear": lambda w: w.T,
    "conv": lambda w: w.transpose(3, 2, 0, 1),
}
_NAMED = {
    arch_lib.copy: "copy",
    arch_lib.linear: "linear",
    arch_lib.conv: "conv",
}

# Rules and the key prefix their keys get ("bert." for the backbone inside a task class).
RuleSet = tuple[Sequence[KeyRule], str]


def flat_variables(params: Mapping[str, Any], model_state: Mapping[str, Any]) -> dict[str, Any]:
    """'/'-joined path -> leaf over params and every model-state collection, a collection's
    leaves named without the collection (as `ftjax.pretrained.merge` names them)."""
    out = {"/".join(k): v for k, v in traverse_util.flatten_dict(dict(params)).items()}
    for collection, tree in model_state.items():
        for keys, value in traverse_util.flatten_dict(dict(tree)).items():
            path = "/".join(keys)
            if path in out:
                raise ExportError(f"{path} is both a param and in model state {collection!r}")
            out[path] = value
    return out


def inverse(transform: str | arch_lib.Transform) -> Callable[[np.ndarray], np.ndarray]:
    """The torch-layout inverse of a key rule's transform (by name, or ftjax's own functions)."""
    name = transform if isinstance(transform, str) else _NAMED.get(transform)
    if name not in INVERSES:
        raise ExportError(
            f"key-rule transform {transform!r} has no known inverse; export knows "
            f"{sorted(INVERSES)}: add the inverse to ftjax.export.state_dict.INVERSES"
        )
    return INVERSES[name]


def to_torch(
    variables: Mapping[str, Any], rule_sets: Sequence[RuleSet], skip: Sequence[str] = ()
) -> dict[str, np.ndarray]:
    """The state dict of `variables` (flat, as `flat_variables` gives) under `rule_sets`; paths
    fully matching a `skip` regex are left out. Floats become float32 (torch's default)."""
    compiled = [
        (re.compile(rx), template, inverse(t), prefix)
        for rules, prefix in rule_sets
        for rx, template, t in rules
    ]
    skipped = [re.compile(rx) for rx in skip]
    out: dict[str, np.ndarray] = {}
    source: dict[str, str] = {}
    problems = []
    for path, value in variables.items():
        if any(rx.fullmatch(path) for rx in skipped):
            continue
        hits = [
            (m, template, inv, prefix)
            for rx, template, inv, prefix in compiled
            if (m := rx.fullmatch(path))
        ]
        if len(hits) != 1:
            problems.append(f"{path} matches {len(hits)} key rules")
            continue
        match, template, inv, prefix = hits[0]
        key = prefix + match.expand(template)
        if key in out:
            problems.append(f"{path} and {source[key]} both map to {key}")
            continue
        array = np.asarray(value)
        if np.issubdtype(array.dtype, np.floating) or array.dtype.kind == "V":  # bfloat16 is 'V'
            array = array.astype(np.float32)
        out[key], source[key] = np.require(inv(array), requirements="C"), path
    if problems:
        raise ExportError(
            "the model's params do not map onto the PyTorch keys (an export rules bug):\n  "
            + "\n  ".join(problems)
        )
    return out


def add_batch_norm_counters(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The state dict with torch BatchNorm's `num_batches_tracked` (int64 scalar, 0) beside every
    `running_var`: eval mode never reads it, but a strict load expects the key."""
    out = dict(state_dict)
    for key in state_dict:
        if key.endswith(".running_var"):
            out.setdefault(
                key.removesuffix("running_var") + "num_batches_tracked", np.zeros((), np.int64)
            )
    return out


def fold_standardisation(
    params: Mapping[str, Any], layer: Sequence[str], mean: float, std: float
) -> dict[str, Any]:
    """`params` with the Dense at path `layer` computing mean + std * (its output): kernel and
    bias times std, plus mean on the bias, so an exported regression head predicts in the
    target's own units."""
    flat = {k: np.asarray(v) for k, v in traverse_util.flatten_dict(dict(params)).items()}
    kernel, bias = (*layer, "kernel"), (*layer, "bias")
    if kernel not in flat or bias not in flat:
        raise ExportError(f"the head has no Dense at {'/'.join(layer)} to fold the targets into")
    flat[kernel] = (flat[kernel].astype(np.float64) * std).astype(np.float32)
    flat[bias] = (flat[bias].astype(np.float64) * std + mean).astype(np.float32)
    return traverse_util.unflatten_dict(flat)
