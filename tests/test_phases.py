"""Phase plans: durations on the step axis, LR schedules, layer-wise decay, presets, tables."""

import numpy as np
import pytest

from ftjax import param_groups, phases
from ftjax.phases import Phase, Plan, Schedule

NAMES = ("embeddings", "layer_0", "layer_1", "layer_2", "head")


def test_durations_in_every_unit_resolve_in_one_place():
    plan = Plan(
        (
            Phase("a", ("head",), 1e-3, steps=5),
            Phase("b", ("head",), 1e-3, epochs=1.5),
            Phase("c", ("head",), 1e-3, examples=100),
            Phase("d", ("head",), 1e-3, fraction=0.1),
            Phase("e", NAMES, 1e-3),
        )
    )
    r = phases.resolve_plan(plan, NAMES, total_steps=100, steps_per_epoch=10, batch_size=32)
    assert [(p.start, p.end) for p in r.phases] == [(0, 5), (5, 20), (20, 24), (24, 34), (34, 100)]
    assert r.phase_at(0).name == "a" and r.phase_at(34).name == "e" and r.phase_at(99).name == "e"
    with pytest.raises(phases.PlanError, match="outside the plan"):
        r.phase_at(100)


def test_layerwise_decay_and_multipliers():
    r = phases.resolve_plan(Plan((Phase("a", NAMES, 1.0, steps=1, layerwise_decay=0.5),)), NAMES)
    assert r.phases[0].group_lrs == {
        "embeddings": 1 / 16,
        "layer_0": 1 / 8,
        "layer_1": 1 / 4,
        "layer_2": 1 / 2,
        "head": 1.0,
    }
    r = phases.resolve_plan(
        Plan((Phase("a", ("layer_2", "head"), 1.0, steps=1, lr_mults={"layer_2": 0.1}),)), NAMES
    )
    assert r.phases[0].group_lrs == {"layer_2": 0.1, "head": 1.0}


def test_slanted_triangular_matches_ulmfit():
    s = Schedule("stlr", cut_frac=0.1, ratio=32)
    fn = phases.make_schedule(s, 0.01, 100)
    lrs = np.array([float(fn(t)) for t in range(100)])
    cut = 10
    p = np.where(np.arange(100) < cut, np.arange(100) / cut, 1 - (np.arange(100) - cut) / (cut * 9))
    np.testing.assert_allclose(lrs, 0.01 * (1 + p * 31) / 32, rtol=1e-6)
    assert lrs.argmax() == cut and np.isclose(lrs[0], 0.01 / 32)


def test_warmup_cosine_peaks_then_decays_to_end_factor():
    fn = phases.make_schedule(Schedule("warmup_cosine", warmup_steps=4, end_factor=0.1), 1.0, 20)
    lrs = [float(fn(t)) for t in range(21)]
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0]) and lrs[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:])) and lrs[20] == pytest.approx(0.1)


def test_presets_expand_into_the_recipes():
    gu = phases.preset("gradual_unfreezing", NAMES, lr=0.01)
    assert [p.trainable for p in gu.phases] == [NAMES[-k:] for k in range(1, 6)]
    r = phases.resolve_plan(gu, NAMES, total_steps=50)
    assert (
        r.phases[-1].group_lrs["layer_2"] == pytest.approx(0.01 / 2.6)
        and r.phases[0].schedule.kind == "stlr"
    )
    ct = phases.preset("chain_thaw", NAMES, lr=0.01)
    assert [p.trainable for p in ct.phases] == [("head",), *((g,) for g in NAMES[:-1]), NAMES]
    lp = phases.resolve_plan(phases.preset("lp_ft", NAMES, lr=1e-4), NAMES, total_steps=10)
    assert [p.trainable for p in lp.phases] == [("head",), NAMES] and lp.phases[0].group_lrs[
        "head"
    ] == pytest.approx(1e-3)
    for name in phases.PRESETS:
        phases.resolve_plan(phases.preset(name, NAMES, lr=1e-3), NAMES, total_steps=60)


def test_plan_and_group_tables():
    r = phases.resolve_plan(
        phases.preset("gradual_unfreezing", NAMES, lr=0.01), NAMES, total_steps=50
    )
    table = r.table()
    assert (
        "unfreeze_2" in table
        and "layer_2,head" in table
        and "stlr" in table
        and "40-50 (10)" in table
    )
    params = {"a": {"kernel": np.zeros((2, 3))}, "b": {"bias": np.zeros(4)}}
    report = param_groups.assign_groups(params, (("a", "a/.*"), ("b", "b/.*"))).report()
    assert report.splitlines()[2].split() == ["a", "1", "6", "a/kernel"] and "total" in report


def test_split_and_merge_round_trip():
    params = {"a": {"kernel": np.ones((2, 3))}, "b": {"bias": np.zeros(4)}, "c": np.ones(1)}
    t, f = param_groups.split_params(params, frozenset({"a/kernel", "c"}))
    assert t == {"a": {"kernel": params["a"]["kernel"]}, "c": params["c"]} and list(f) == ["b"]
    assert param_groups.merge_params(t, f) == params
