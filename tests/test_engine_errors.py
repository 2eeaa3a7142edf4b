"""Bad group specs, plans, optimizer and mesh settings: each raises one clear error that names
the problem, the offending paths or keys, and the fix."""

import re

import engine_models as em
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from ftjax import optim, param_groups, phases, sharding
from ftjax.phase_steps import PhaseSteps
from ftjax.phases import Phase, Plan, Schedule
from ftjax.tasks import Classification

PARAMS = {
    "embeddings": {"word": {"embedding": np.zeros((10, 4))}},
    "encoder": {"layer_0": {"dense": {"kernel": np.zeros((4, 4)), "bias": np.zeros(4)}}},
    "head": {"kernel": np.zeros((4, 2)), "bias": np.zeros(2)},
}
GROUPS = (("embeddings", "embeddings/.*"), ("layer_0", "encoder/layer_0/.*"), ("head", "head/.*"))
NAMES = tuple(n for n, _ in GROUPS)


def _resolve(*ph, total=None, **kw):
    return phases.resolve_plan(Plan(tuple(ph)), NAMES, total_steps=total, **kw)


GROUP_CASES = {
    "unmatched": (
        (("embeddings", "embeddings/.*"), ("head", "head/.*")),
        ["matched by no group", "encoder/layer_0/dense/kernel", "add a group"],
    ),
    "matched_twice": (
        (*GROUPS, ("dense", ".*/dense/.*")),
        ["more than one group", "encoder/layer_0/dense/bias", "disjoint"],
    ),
    "bad_regex": (
        (("embeddings", "embeddings/(.*"), *GROUPS[1:]),
        ["not a valid regex", "embeddings", "fix the pattern"],
    ),
    "duplicate_name": ((*GROUPS, ("head", "nothing")), ["more than once", "head", "unique name"]),
    "matches_nothing": (
        (*GROUPS, ("pooler", "pooler/.*")),
        ["match no parameter", "pooler", "whole"],
    ),
    "partial_match": (
        (("embeddings", "embeddings"), *GROUPS[1:]),
        ["matched by no group", "embeddings/word/embedding"],
    ),
}


@pytest.mark.parametrize("case", GROUP_CASES)
def test_bad_group_specs(case):
    patterns, words = GROUP_CASES[case]
    with pytest.raises(param_groups.GroupSpecError) as e:
        param_groups.assign_groups(PARAMS, patterns)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


PLAN_CASES = {
    "unknown_group": (
        lambda: _resolve(Phase("a", ("pooler",), 1e-3, steps=5)),
        ["unknown group", "pooler", "'head'"],
    ),
    "unknown_mult_group": (
        lambda: _resolve(Phase("a", ("head",), 1e-3, steps=5, lr_mults={"bert": 2.0})),
        ["unknown group", "bert", "lr_mults"],
    ),
    "zero_lr": (
        lambda: _resolve(Phase("a", ("head",), 0.0, steps=5)),
        ["lr=0.0", "leave the group out of trainable"],
    ),
    "negative_mult": (
        lambda: _resolve(
            Phase("a", ("head", "layer_0"), 1e-3, steps=5, lr_mults={"layer_0": -1.0})
        ),
        ["layer_0", "positive multiplier"],
    ),
    "negative_duration": (
        lambda: _resolve(Phase("a", ("head",), 1e-3, steps=-3)),
        ["steps=-3", "positive"],
    ),
    "two_durations": (
        lambda: _resolve(Phase("a", ("head",), 1e-3, steps=3, epochs=1)),
        ["several durations", "exactly one"],
    ),
    "longer_than_run": (
        lambda: _resolve(
            Phase("a", ("head",), 1e-3, steps=60), Phase("b", NAMES, 1e-3, fraction=0.5), total=100
        ),
        ["longer than the run", "a=60", "b=50", "110"],
    ),
    "fractions_overlap": (
        lambda: _resolve(
            Phase("a", ("head",), 1e-3, fraction=0.7),
            Phase("b", NAMES, 1e-3, fraction=0.6),
            total=10,
        ),
        ["longer than the run"],
    ),
    "shorter_than_run": (
        lambda: _resolve(Phase("a", ("head",), 1e-3, steps=5), total=10),
        ["covers 5 of the run's 10", "leave the last"],
    ),
    "empty_phase": (lambda: _resolve(Phase("a", (), 1e-3, steps=5)), ["trains no group", "'a'"]),
    "empty_plan": (lambda: _resolve(), ["no phases"]),
    "open_middle_phase": (
        lambda: _resolve(Phase("a", ("head",), 1e-3), Phase("b", NAMES, 1e-3, steps=3), total=10),
        ["no duration", "'a'", "only the last phase"],
    ),
    "epochs_without_steps_per_epoch": (
        lambda: _resolve(Phase("a", ("head",), 1e-3, epochs=2)),
        ["steps_per_epoch"],
    ),
    "zero_length": (
        lambda: _resolve(
            Phase("a", ("head",), 1e-3, fraction=0.01), Phase("b", NAMES, 1e-3), total=20
        ),
        ["resolves to 0 steps"],
    ),
    "duplicate_phase_name": (
        lambda: _resolve(Phase("a", ("head",), 1e-3, steps=2), Phase("a", NAMES, 1e-3, steps=2)),
        ["'a'", "unique name"],
    ),
    "mults_and_decay": (
        lambda: _resolve(
            Phase("a", NAMES, 1e-3, steps=2, lr_mults={"head": 2.0}, layerwise_decay=0.5)
        ),
        ["both lr_mults and layerwise_decay"],
    ),
    "decay_out_of_range": (
        lambda: _resolve(Phase("a", NAMES, 1e-3, steps=2, layerwise_decay=1.5)),
        ["layerwise_decay=1.5", "(0, 1]"],
    ),
    "unknown_schedule": (
        lambda: _resolve(Phase("a", NAMES, 1e-3, steps=2, schedule=Schedule("cosine"))),
        ["unknown schedule", "'cosine'", "warmup_cosine"],
    ),
    "warmup_too_long": (
        lambda: _resolve(
            Phase("a", NAMES, 1e-3, steps=5, schedule=Schedule("warmup_linear", warmup_steps=5))
        ),
        ["warmup of 5 steps", "shorten the warmup"],
    ),
    "bad_stlr": (
        lambda: _resolve(Phase("a", NAMES, 1e-3, steps=5, schedule=Schedule("stlr", cut_frac=1.5))),
        ["cut_frac=1.5"],
    ),
    "unknown_preset": (
        lambda: phases.preset("fine_tune", NAMES, lr=1e-3),
        ["unknown preset", "'fine_tune'", "lp_ft"],
    ),
    "trainable_is_string": (
        lambda: _resolve(Phase("a", "head", 1e-3, steps=5)),
        ["is a string", "tuple of group names"],
    ),
}


@pytest.mark.parametrize("case", PLAN_CASES)
def test_bad_plans(case):
    make, words = PLAN_CASES[case]
    with pytest.raises(phases.PlanError) as e:
        make()
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def _optim_error(cfg):
    plan = _resolve(Phase("a", ("head",), 1e-3, steps=2))
    optim.make_optimizer(cfg, plan.phases[0], {"head": {"kernel": "head"}})


def _accumulation_error():
    groups = param_groups.assign_groups(PARAMS, GROUPS)
    plan = _resolve(Phase("a", ("head",), 1e-3, steps=3), Phase("b", NAMES, 1e-3, steps=3))
    PhaseSteps(
        em.encoder(), groups, plan, optim.OptimConfig(accumulate_steps=2), task=Classification(3)
    )


OTHER_CASES = {
    "unknown_optimizer": (
        lambda: _optim_error(optim.OptimConfig(name="adam_w")),
        ValueError,
        ["unknown optimizer", "'adam_w'", "adamw"],
    ),
    "negative_clip": (
        lambda: _optim_error(optim.OptimConfig(clip_norm=-1.0)),
        ValueError,
        ["clip_norm=-1.0", "None to disable"],
    ),
    "accumulation_straddles_boundary": (
        _accumulation_error,
        phases.PlanError,
        ["accumulate_steps=2", "b@3", "multiple of 2"],
    ),
    "mesh_does_not_fit": (
        lambda: sharding.make_mesh(sharding.MeshConfig(data=3), jax.devices()[:1]),
        ValueError,
        ["data=3", "there are 1"],
    ),
    "rule_too_many_dims": (
        lambda: sharding.param_specs(
            PARAMS, sharding.make_mesh(devices=jax.devices()[:1]), [("head/bias", P(None, "data"))]
        ),
        ValueError,
        ["'head/bias'", "2 dims", "1-dim"],
    ),
    "rule_unknown_axis": (
        lambda: sharding.param_specs(
            PARAMS, sharding.make_mesh(devices=jax.devices()[:1]), [("head/kernel", P("model"))]
        ),
        ValueError,
        ["'head/kernel'", "'model'", "mesh axes"],
    ),
}


@pytest.mark.parametrize("case", OTHER_CASES)
def test_bad_optimizer_and_mesh_settings(case):
    make, kind, words = OTHER_CASES[case]
    with pytest.raises(kind) as e:
        make()
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_every_error_is_one_line_naming_a_fix():
    fixes = re.compile(
        r"use|give|set|pass|add|make|fix|leave|shorten|lengthen|drop|widen|name at least", re.I
    )
    for make, _ in PLAN_CASES.values():
        with pytest.raises(phases.PlanError) as e:
            make()
        assert "\n" not in str(e.value) and fixes.search(str(e.value)), str(e.value)
