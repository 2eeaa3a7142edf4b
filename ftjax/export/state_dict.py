"""Flax variables -> a PyTorch state dict (numpy arrays), by running key rules backwards.

A key rule `(flax_regex, torch_template, transform)` (`ftjax.pretrained.arch`) reads one
checkpoint key into one Flax leaf. Backwards, the leaf's path fills the template through the
regex's groups, and the inverse transform restores torch's layout: `linear` (in, out) -> (out,
in), `conv` (kh, kw, in, out) -> (out, in, kh, kw), `copy` as is. So one function exports every
architecture's backbone from the same rules the loader uses; only the heads need their own rules
(`families.py`). Every leaf must match exactly one rule and no two leaves may name one key:
anything else is an error listing the paths, never a silently missing weight.

`key_map` is the same correspondence without the arrays (path -> torch key and rule transform),
which the peft format uses to name modules both ways.

Also here: the batch-norm step counters torch's BatchNorm keeps in its state dict (a strict
`load_state_dict` wants them; ftjax has no such leaf), and folding regression's target
standardisation into the head's output layer.

Not here: which rules and prefixes an architecture uses (`hf.py`, `lite.py`,
`torchvision_format.py`), writing files.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
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
    "forward",
    "key_map",
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
    """The torch-layout inverse of a key rule's transform (by name, ftjax's own functions, or a
    transform object's own `inverse`, as `ftjax.pretrained.posemb.Resample` has)."""
    if callable(getattr(transform, "inverse", None)):
        return transform.inverse
    name = transform if isinstance(transform, str) else _NAMED.get(transform)
    if name not in INVERSES:
        raise ExportError(
            f"key-rule transform {transform!r} has no known inverse; export knows "
            f"{sorted(INVERSES)}: add the inverse to ftjax.export.state_dict.INVERSES"
        )
    return INVERSES[name]


def key_map(
    paths: Iterable[str], rule_sets: Sequence[RuleSet], skip: Sequence[str] = ()
) -> dict[str, tuple[str, str | arch_lib.Transform]]:
    """Flax path -> (its torch key, its rule's forward transform) under `rule_sets`, for every
    path not fully matching a `skip` regex: one rule per path, one path per key, else an
    ExportError listing the paths (an export rules bug)."""
    compiled = [
        (re.compile(rx), template, t, prefix)
        for rules, prefix in rule_sets
        for rx, template, t in rules
    ]
    skipped = [re.compile(rx) for rx in skip]
    out: dict[str, tuple[str, str | arch_lib.Transform]] = {}
    source: dict[str, str] = {}
    problems = []
    for path in paths:
        if any(rx.fullmatch(path) for rx in skipped):
            continue
        hits = [
            (m, template, t, prefix)
            for rx, template, t, prefix in compiled
            if (m := rx.fullmatch(path))
        ]
        if len(hits) != 1:
            problems.append(f"{path} matches {len(hits)} key rules")
            continue
        match, template, transform, prefix = hits[0]
        key = prefix + match.expand(template)
        if key in source:
            problems.append(f"{path} and {source[key]} both map to {key}")
            continue
        out[path], source[key] = (key, transform), path
    if problems:
        raise ExportError(
            "the model's params do not map onto the PyTorch keys (an export rules bug):\n  "
            + "\n  ".join(problems)
        )
    return out


def forward(transform: str | arch_lib.Transform) -> arch_lib.Transform:
    """A key rule's transform (torch layout -> Flax) as a function."""
    return arch_lib.TRANSFORMS[transform] if isinstance(transform, str) else transform


def to_torch(
    variables: Mapping[str, Any], rule_sets: Sequence[RuleSet], skip: Sequence[str] = ()
) -> dict[str, np.ndarray]:
    """The state dict of `variables` (flat, as `flat_variables` gives) under `rule_sets`; paths
    fully matching a `skip` regex are left out. Floats become float32 (torch's default)."""
    for _, _, transform in (rule for rules, _ in rule_sets for rule in rules):
        inverse(transform)  # an unknown transform is an error even if no path uses it
    out: dict[str, np.ndarray] = {}
    for path, (key, transform) in key_map(variables, rule_sets, skip).items():
        array = np.asarray(variables[path])
        if np.issubdtype(array.dtype, np.floating) or array.dtype.kind == "V":  # bfloat16 is 'V'
            array = array.astype(np.float32)
        out[key] = np.require(inverse(transform)(array), requirements="C")
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
