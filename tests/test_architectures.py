"""The contract every registered architecture keeps, run over all of them.

Architectures are discovered (`ftjax.pretrained.registry`: every `arch_*.py` exposing ARCH), and
each needs a tiny random checkpoint factory in tests/arch_checkpoints.py. On a checkpoint that
factory writes, the loaded model must: have natural groups covering every param exactly once,
with the head last at `head/`; route every dropout and batch norm through ftjax's freeze-aware
layers, so a frozen backbone in train mode is deterministic and keeps its batch statistics;
compute in bfloat16 with float32 params; and fail strict loading naming a renamed key.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from arch_checkpoints import FACTORIES
from flax import traverse_util

from ftjax import lora, param_groups, phases
from ftjax.models import layers
from ftjax.models.base import flat_paths
from ftjax.optim import OptimConfig
from ftjax.phase_steps import PhaseSteps
from ftjax.pretrained import formats, registry
from ftjax.pretrained.load import load_pretrained
from ftjax.pretrained.merge import CheckpointMismatchError
from ftjax.tasks import Classification

ARCHS = sorted(registry.architectures())


def test_every_arch_module_is_registered_and_has_a_factory():
    modules = registry.arch_modules()
    assert modules == tuple(sorted(modules))
    assert {"bert", "vit", "resnet", "efficientnet_lite", "roberta"} <= set(ARCHS)
    missing = sorted(set(ARCHS) - set(FACTORIES))
    assert not missing, (
        f"architectures {missing} have no checkpoint factory in tests/arch_checkpoints.py; add one "
        "(a tiny random checkpoint of unusual sizes) so the contract covers them"
    )


@pytest.mark.parametrize(
    "modules,error",
    [
        ({"arch_foo": "bar"}, r"arch_foo.ARCH is named 'bar', which does not fit its module"),
        (
            {"arch_foo": "foo_b", "arch_foo_b": "foo_b"},
            r"arch_foo_b.ARCH is named 'foo_b', as .*arch_foo.ARCH is",
        ),
    ],
    ids=["name-not-its-module", "two-modules-one-name"],
)
def test_inconsistent_arch_names_are_errors(monkeypatch, modules, error):
    bert = registry.get("bert")
    names = []
    for module, arch_name in modules.items():
        full = f"ftjax.pretrained.{module}"
        fake = types.ModuleType(full)
        fake.ARCH = dataclasses.replace(bert, name=arch_name)
        monkeypatch.setitem(sys.modules, full, fake)
        names.append(full)
    monkeypatch.setattr(registry, "arch_modules", lambda: tuple(names))
    with pytest.raises(registry.ArchitectureError, match=error):
        registry._discover.__wrapped__()  # uncached: the real table stays as it is


@pytest.fixture(scope="module", params=ARCHS)
def loaded(request, tmp_path_factory):
    """(name, saved checkpoint, the model loaded from it with dropout 0.3, its batch)."""
    name = request.param
    saved = FACTORIES[name](tmp_path_factory.mktemp(name))
    pre = load_pretrained(saved.folder, num_classes=3, dropout=0.3)
    assert pre.arch == name
    batch = {
        k: jnp.asarray(v, jnp.int32 if v.dtype.kind == "i" else v.dtype)
        for k, v in saved.batch.items()
    }
    return name, saved, pre, batch


def test_groups_cover_every_param_once_and_the_head_is_last(loaded):
    _, _, pre, _ = loaded
    groups = pre.model.layer_groups
    paths = flat_paths(pre.params)
    for path in paths:
        hits = [g for g, rx in groups if re.fullmatch(rx, path)]
        assert len(hits) == 1, (path, hits)
    assert all(any(re.fullmatch(rx, p) for p in paths) for _, rx in groups), "an empty group"
    assert groups[-1] == ("head", "head/.*") and pre.model.head_pattern == "head/.*"
    head = [p for p in flat_paths(pre.params) if p.startswith("head/")]
    assert head and sorted(pre.report.reinitialised) == sorted(head)


def _apply(model, params, state, batch, **kw):
    return jax.jit(lambda p, s: model.apply(p, s, batch, **kw))(params, state)


def _recorder(model, state, batch, **kw):
    """A jit-compiled (params, rng) -> (logits, new state, backbone features), and the list of
    modules it called (filled when it first traces).

    The features are what the head is fed, taken before the root-level dropout on the head's
    input if there is one (that dropout belongs to the trainable head, as in feature caching).
    """
    calls = []

    def run(params, rng):
        head_in, root_dropouts = [], []

        def interceptor(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            module = context.module
            if context.method_name == "__call__" and module.scope is not None:
                calls.append(module)
                path = tuple(module.scope.path)
                if path == ("head",):
                    head_in.append(args[0])
                elif len(path) == 1 and isinstance(module, layers.Dropout):
                    root_dropouts.append((args[0], out))
            return out

        with nn.intercept_methods(interceptor):
            logits, new_state = model.apply(params, state, batch, rng=rng, **kw)
        (features,) = head_in
        for dropout_in, dropout_out in root_dropouts:
            if dropout_out is features:
                features = dropout_in
        return logits, new_state, features

    return jax.jit(run), calls


def test_frozen_backbone_in_train_mode_is_deterministic_and_keeps_statistics(loaded):
    _, _, pre, batch = loaded
    model, params, state = pre.model, pre.params, pre.state
    backbone = frozenset(p for p in flat_paths(params) if not p.startswith("head/"))
    everything = frozenset(flat_paths(params))
    key = jax.random.key

    # Everything frozen: inference mode whatever the rng; it is the reference for the features.
    all_frozen, _ = _recorder(model, state, batch, train=True, frozen=everything)
    ref_logits, _, ref_features = all_frozen(params, key(1))
    np.testing.assert_array_equal(np.asarray(all_frozen(params, key(2))[0]), np.asarray(ref_logits))

    frozen_step, modules = _recorder(model, state, batch, train=True, frozen=backbone)
    a, state_a, features_a = frozen_step(params, key(1))
    _, state_b, features_b = frozen_step(params, key(2))

    # Every dropout and batch norm is ftjax's freeze-aware layer (flax's own ignore `frozen`).
    raw = [
        "/".join(m.scope.path)
        for m in modules
        if (isinstance(m, (nn.Dropout, nn.BatchNorm))) and not isinstance(m, layers.BatchNorm)
    ]
    assert not raw, f"Flax dropout/batch-norm layers that ignore the frozen set: {raw}"

    np.testing.assert_array_equal(np.asarray(features_a), np.asarray(features_b))
    np.testing.assert_array_equal(np.asarray(features_a), np.asarray(ref_features))
    for new in (state_a, state_b):
        for x, y in zip(jax.tree.leaves(new), jax.tree.leaves(state), strict=True):
            np.testing.assert_array_equal(x, y)

    # Not vacuous: with nothing frozen the same model trains stochastically (dropout), or its
    # batch statistics move.
    free_step, _ = _recorder(model, state, batch, train=True)
    _, state_c, features_c = free_step(params, key(1))
    _, _, features_d = free_step(params, key(2))
    has_dropout = not np.array_equal(np.asarray(features_c), np.asarray(features_d))
    moved = any(
        not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(state_c), jax.tree.leaves(state))
    )
    assert has_dropout or moved


def test_a_head_only_step_costs_about_a_forward_pass(loaded):
    """XLA's FLOP count of the compiled steps: training the head alone differentiates nothing
    below it (<= 1.2x the inference forward), training everything costs a real backward."""
    name, _, pre, batch = loaded
    batch = {**batch, "label": jnp.arange(len(next(iter(batch.values())))) % 3}
    groups = param_groups.assign_groups(pre.params, pre.model.layer_groups)
    plan = phases.resolve_plan(
        phases.Plan(
            (
                phases.Phase("head", ("head",), 1e-3, steps=1),
                phases.Phase("all", groups.names, 1e-3, steps=1),
            )
        ),
        groups.names,
    )
    steps = PhaseSteps(pre.model, groups, plan, OptimConfig(name="adamw"), task=Classification(3))
    state = steps.init_state(pre.params, pre.state, jax.random.key(0))
    flops = []
    for i in range(2):
        steps.compile_train_step(i, state, batch)
        flops.append(steps.compiled_steps(i)[0].cost_analysis()["flops"])
    forward = jax.jit(lambda p, s: pre.model.apply(p, s, batch, train=False)[0])
    fwd = forward.lower(pre.params, pre.state).compile().cost_analysis()["flops"]
    head, full = flops
    assert head <= 1.2 * fwd, (name, head, fwd)
    assert full > 2 * fwd, (name, full, fwd)


def test_bfloat16_compute_keeps_float32_params(loaded):
    name, saved, pre32, batch = loaded
    pre16 = load_pretrained(saved.folder, num_classes=3, dtype="bfloat16")
    assert {x.dtype for x in jax.tree.leaves(pre16.params)} == {jnp.dtype(jnp.float32)}
    params = jax.tree.map(lambda x: x, pre16.params)
    params["head"] = pre32.params["head"]  # same weights everywhere
    low, _ = _apply(pre16.model, params, pre16.state, batch, train=False)
    ref, _ = _apply(pre32.model, pre32.params, pre32.state, batch, train=False)
    low, ref = np.asarray(low), np.asarray(ref)
    assert low.dtype == np.float32 and np.isfinite(low).all()
    diff = np.abs(low - ref).max()
    assert 0 < diff < 0.05 * np.abs(ref).max() + 0.05, (name, diff)


def _rename_key(weights, old: str, new: str) -> None:
    arrays = formats.read_arrays(weights)
    renamed = {(new if k == old else k): torch.from_numpy(np.array(v)) for k, v in arrays.items()}
    if weights.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(renamed, weights)
    else:
        torch.save(renamed, weights)


def test_strict_loading_names_a_renamed_key(loaded, tmp_path):
    name, saved, pre, _ = loaded
    import shutil

    folder = tmp_path / "renamed"
    shutil.copytree(saved.folder, folder)
    weights = folder / saved.weights.name
    ignored = [re.compile(rx) for rx in registry.get(name).ignored_keys]
    weight_keys = [
        k
        for k in sorted(formats.read_arrays(weights))
        if k.endswith(".weight") and not any(rx.fullmatch(k) for rx in ignored)
    ]
    loaded_key = weight_keys[len(weight_keys) // 2]  # one the model loads, mid-network
    renamed = loaded_key.replace("weight", "wieght")
    _rename_key(weights, loaded_key, renamed)
    with pytest.raises(CheckpointMismatchError) as err:
        load_pretrained(folder, num_classes=3)
    text = str(err.value)
    assert "missing from the checkpoint (1)" in text and loaded_key in text
    assert "unexpected in the checkpoint (1)" in text and renamed in text
    flat = traverse_util.flatten_dict(pre.params, sep="/")
    assert flat  # the unrenamed checkpoint loaded


def test_lora_on_all_linear_layers_starts_as_the_base_or_is_refused_clearly(loaded):
    """LoRA's `all_linear` targets every Dense of a transformer's encoder layers; image CNNs have
    none, which is an error naming the module paths a regex could target instead."""
    name, saved, pre, batch = loaded
    spec = lora.LoraSpec("all_linear", rank=2, alpha=4.0)
    if not any(p.startswith("encoder/") for p in flat_paths(pre.params)):
        with pytest.raises(lora.LoraError, match="match no Dense layer"):
            load_pretrained(saved.folder, num_classes=3, lora=spec)
        return
    adapted = load_pretrained(saved.folder, num_classes=3, dropout=0.3, lora=spec)
    paths = lora.lora_paths(adapted.params)
    assert paths and all(p.startswith("encoder/") for p in paths), (name, paths[:4])
    params = {**adapted.params, "head": pre.params["head"]}
    ours, _ = _apply(adapted.model, params, adapted.state, batch, train=False)
    ref, _ = _apply(pre.model, pre.params, pre.state, batch, train=False)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), atol=1e-6)
