"""`ftjax.compress.pruning`: masks against numpy, the schedule against its formula, and the optax
transform through adamw steps, a phase change, gradient accumulation and a checkpoint."""

from __future__ import annotations

import re
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from engine_models import convnet, image_batch
from flax import traverse_util

from ftjax import config as cfg_lib
from ftjax import optim, param_groups, phases
from ftjax.checkpoint import Checkpoints
from ftjax.compress import pruning
from ftjax.compress.pruning import PruneSpec
from ftjax.models.base import Model
from ftjax.phase_steps import PhaseSteps
from ftjax.tasks import Classification

# ----------------------------------------------------------------------------- masks


def _tree(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    arr = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)
    return {
        "embeddings": {"word_embeddings": {"embedding": arr(10, 8)}},
        "encoder": {
            "layer_0": {
                "attention": {"self": {"query": {"kernel": arr(8, 12), "bias": arr(12)}}},
                "intermediate": {"dense": {"kernel": arr(8, 20), "bias": arr(20)}},
                "output": {"LayerNorm": {"scale": arr(8)}},
            }
        },
        "head": {"kernel": arr(8, 3)},
    }


PRUNABLE = (
    "encoder/layer_0/attention/self/query/kernel",
    "encoder/layer_0/intermediate/dense/kernel",
)


def _flat(tree) -> dict[str, np.ndarray]:
    return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(dict(tree)).items()}


def _np_keep(scores: np.ndarray, sparsity: float) -> np.ndarray:
    n_prune = int(np.round(np.float32(sparsity) * scores.size))
    keep = np.ones(scores.size, bool)
    keep[np.argsort(scores, kind="stable")[:n_prune]] = False
    return keep


def test_default_pattern_takes_the_encoder_kernels_only():
    assert pruning.prunable_paths(_tree()) == list(PRUNABLE)
    assert set(_flat(pruning.magnitude_mask(_tree(), 0.5))) == set(PRUNABLE)


@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.7, 0.9])
def test_tensor_scope_matches_numpy_per_kernel(sparsity):
    params = _flat(_tree())
    masks = _flat(pruning.magnitude_mask(_tree(), sparsity, scope="tensor"))
    for path in PRUNABLE:
        w = params[path]
        want = _np_keep(np.abs(w).ravel(), sparsity).reshape(w.shape)
        np.testing.assert_array_equal(masks[path], want)
        assert (~masks[path]).sum() == round(sparsity * w.size)
        # np.partition: every kept |w| is at least every pruned one
        k = round(sparsity * w.size)
        assert np.abs(w[masks[path]]).min() >= np.partition(np.abs(w).ravel(), k - 1)[k - 1]


def test_global_scope_is_one_threshold_over_all_prunable_kernels():
    params = _flat(_tree())
    masks = _flat(pruning.magnitude_mask(_tree(), 0.6, scope="global"))
    scores = np.concatenate([np.abs(params[p]).ravel() for p in PRUNABLE])
    want = _np_keep(scores, 0.6)
    got = np.concatenate([masks[p].ravel() for p in PRUNABLE])
    np.testing.assert_array_equal(got, want)
    assert (~got).sum() == round(0.6 * scores.size)
    per_kernel = [(~masks[p]).mean() for p in PRUNABLE]
    assert per_kernel[0] != per_kernel[1]  # the threshold is shared, the sparsities are not


def test_two_four_keeps_the_two_largest_of_every_four_inputs():
    params = _flat(_tree())
    masks = _flat(pruning.magnitude_mask(_tree(), 0.0, n_m=(2, 4)))
    for path in PRUNABLE:
        w, m = np.abs(params[path]), masks[path]
        groups_w = w.reshape(w.shape[0] // 4, 4, w.shape[1])  # 4 consecutive inputs (axis 0)
        groups_m = m.reshape(groups_w.shape)
        assert (groups_m.sum(axis=1) == 2).all()
        order = np.argsort(-groups_w, axis=1, kind="stable")
        want = np.zeros_like(groups_m)
        np.put_along_axis(want, order[:, :2], True, axis=1)
        np.testing.assert_array_equal(groups_m, want)
        assert m.mean() == 0.5


def test_n_m_refuses_a_leaf_without_a_multiple_of_m_inputs():
    tree = {"encoder": {"d": {"kernel": jnp.ones((6, 4))}}}
    with pytest.raises(pruning.PruneError, match=r"encoder/d/kernel \(6, 4\)"):
        pruning.magnitude_mask(tree, 0.0, n_m=(2, 4))


def test_traced_sparsity_compiles_once():
    fn = jax.jit(lambda s: pruning.magnitude_mask(_tree(), s))
    for s in (0.2, 0.4, 0.8):
        masks = _flat(fn(jnp.float32(s)))
        assert (~masks[PRUNABLE[1]]).sum() == round(s * 160)
    assert fn._cache_size() == 1


# ----------------------------------------------------------------------------- schedule


def _zhu_gupta(t, s_i, s_f, begin, end, every):
    if t < begin:
        return 0.0
    if t >= end:
        return s_f
    p = ((t - begin) // every) * every / (end - begin)
    return s_f + (s_i - s_f) * (1 - p) ** 3


@pytest.mark.parametrize("begin,end,every", [(10, 50, 10), (0, 25, 10), (5, 5, 3)])
def test_schedule_is_the_cubic_formula_stepped_every_update_every(begin, end, every):
    spec = PruneSpec(0.8, 0.1, begin_step=begin, end_step=end, update_every=every)
    fn = jax.jit(lambda t: pruning.sparsity_at(spec, t))
    for t in (0, 4, 5, 9, 10, 15, 20, 24, 25, 30, 49, 50, 100):
        want = _zhu_gupta(t, 0.1, 0.8, begin, end, every)
        np.testing.assert_allclose(float(fn(t)), want, rtol=1e-6, atol=1e-7, err_msg=f"t={t}")
    assert fn._cache_size() == 1
    due = [t for t in range(120) if pruning.refresh_due(spec, t)]
    grid = sorted({*range(begin, end, every), end})
    assert due == grid
    # with a window of 4 train steps per optimizer step (t = 0, 4, 8, ...): the first after each
    due4 = [t for t in range(0, 120, 4) if pruning.refresh_due(spec, t, 4)]
    assert due4 == sorted({min(t for t in range(0, 124, 4) if t >= g) for g in grid})


def test_n_m_schedule_is_a_step_at_begin():
    spec = PruneSpec(n_m=(2, 4), begin_step=3, end_step=3)
    assert [float(pruning.sparsity_at(spec, t)) for t in (0, 2, 3, 10)] == [0, 0, 0.5, 0.5]


# ----------------------------------------------------------------------------- the transform


class _Layer(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.Dense(32, name="intermediate")(x)
        h = nn.Dense(16, name="output")(nn.gelu(h))
        return nn.LayerNorm(name="LayerNorm")(x + h)


class _Encoder(nn.Module):
    @nn.compact
    def __call__(self, x):
        for i in range(2):
            x = _Layer(name=f"layer_{i}")(x)
        return x


class _Net(nn.Module):
    """A tiny BERT-shaped net: embeddings, encoder/layer_{0,1} of two Dense layers, a head."""

    @nn.compact
    def __call__(self, input_ids, *, train: bool = False):
        x = nn.Embed(50, 16, name="embeddings")(input_ids).mean(1)
        return nn.Dense(3, name="head")(_Encoder(name="encoder")(x))


LAYER_GROUPS = (
    ("embeddings", "embeddings/.*"),
    ("layer_0", "encoder/layer_0/.*"),
    ("layer_1", "encoder/layer_1/.*"),
    ("head", "head/.*"),
)


def _net():
    model = Model(_Net(), ("input_ids",), LAYER_GROUPS)
    rng = np.random.default_rng(0)
    batch = {
        "input_ids": jnp.asarray(rng.integers(1, 50, (4, 8)), jnp.int32),
        "label": jnp.asarray([0, 1, 2, 1]),
    }
    params, state = model.init(jax.random.key(0), batch)
    return model, params, state, batch


class _Loop:
    """A phase's optimizer and a jitted step, the way ftjax.steps drives them."""

    def __init__(self, model, state, batch, groups, plan, cfg, index):
        self.phase = plan.phases[index]
        self.paths = groups.paths(self.phase.trainable)
        labels, _ = param_groups.split_params(groups.labels, self.paths)
        self.tx = optim.make_optimizer(cfg, self.phase, labels)

        def loss(trainable, frozen):
            full = param_groups.merge_params(trainable, frozen)
            logits, _ = model.apply(full, state, batch, train=False)
            return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()

        def step(params, opt_state, i):
            trainable, frozen = param_groups.split_params(params, self.paths)
            grads = jax.grad(loss)(trainable, frozen)
            updates, opt_state = self.tx.update(grads, opt_state, trainable, step=i)
            new = optax.apply_updates(trainable, updates)
            return param_groups.merge_params(new, frozen), opt_state, updates

        self.step = jax.jit(step)

    def init(self, params):
        return self.tx.init(param_groups.split_params(params, self.paths)[0])


def _pruning_states(opt_state) -> list[pruning.PruningState]:
    is_ps = lambda x: isinstance(x, pruning.PruningState)
    return [x for x in jax.tree.leaves(opt_state, is_leaf=is_ps) if is_ps(x)]


def _masks(opt_state) -> dict[str, np.ndarray]:
    found = _pruning_states(opt_state)
    assert len(found) == 1
    return _flat(found[0].masks)


def _two_phase_setup(scope="tensor"):
    model, params, state, batch = _net()
    groups = param_groups.assign_groups(params, model.layer_groups)
    plan = phases.resolve_plan(
        phases.Plan(
            (
                phases.Phase("top", ("layer_1", "head"), 1e-2, steps=6),
                phases.Phase("all", groups.names, 1e-2, steps=10),
            )
        ),
        groups.names,
    )
    spec = PruneSpec(0.75, 0.25, scope=scope, begin_step=2, end_step=12, update_every=2)
    cfg = optim.OptimConfig("adamw", weight_decay=0.01, prune=spec)
    return model, params, state, batch, groups, plan, spec, cfg


@pytest.mark.parametrize("scope", ["tensor", "global"])
def test_adamw_steps_keep_pruned_weights_zero_and_follow_the_schedule(scope):
    model, params, state, batch, groups, plan, spec, cfg = _two_phase_setup(scope)
    kernels = pruning.prunable_paths(params)
    dense = {p: v for p, v in _flat(params).items() if p not in kernels}
    changed: set[str] = set()
    for index in range(2):
        loop = _Loop(model, state, batch, groups, plan, cfg, index)
        fresh = loop.init(params)
        if index == 0:
            opt_state = fresh
        else:
            before = _masks(opt_state)
            opt_state = optim.carry_state(opt_state, fresh, ("layer_1", "head"))
            after = _masks(opt_state)
            for p in after:  # layer_1's masks moved, layer_0's are new (all kept)
                want = before[p] if p in before else np.ones_like(after[p])
                np.testing.assert_array_equal(after[p], want)
        trainable = [p for p in kernels if p in loop.paths]
        for i in range(loop.phase.length):
            t = loop.phase.start + i
            params, opt_state, _ = loop.step(params, opt_state, jnp.asarray(i))
            flat, masks = _flat(params), _masks(opt_state)
            assert sorted(masks) == trainable
            target = float(pruning.sparsity_at(spec, t))
            for p in trainable:
                assert (flat[p][~masks[p]] == 0).all(), (t, p)  # pruned: exactly zero
                assert (flat[p][masks[p]] != 0).all(), (t, p)  # kept: not zeroed
            zeros = sum(int((~masks[p]).sum()) for p in trainable)
            size = sum(masks[p].size for p in trainable)
            if scope == "tensor":
                for p in trainable:
                    assert (~masks[p]).sum() == round(target * masks[p].size), (t, p)
            assert abs(zeros - target * size) <= len(trainable), (t, zeros, target * size)
            for p in kernels:
                if p not in loop.paths:
                    assert (flat[p] != 0).all()  # frozen kernels untouched
            changed |= {p for p in dense if not np.array_equal(flat[p], dense[p])}
    assert pruning.sparsity_of(params) == pytest.approx(0.75, abs=1e-3)
    assert any(p.endswith("bias") for p in changed)  # other leaves train (never masked)
    assert all((flat[p] != 0).mean() > 0.95 for p in dense)


def test_phase_steps_train_a_pruned_model_across_a_phase_change():
    """The engine's own path: sharded state, donated steps, enter_phase carrying the masks."""
    model, params, state, batch, groups, plan, spec, cfg = _two_phase_setup()
    steps = PhaseSteps(model, groups, plan, cfg, task=Classification(3))
    train_state = steps.init_state(params, state, jax.random.key(0))
    for t in range(plan.total_steps):
        phase = plan.phase_at(t)
        if t == phase.start and phase.index > 0:
            before = _masks(train_state.opt_state)
            train_state = steps.enter_phase(train_state, phase.index, previous=phase.index - 1)
            after = _masks(train_state.opt_state)
            assert all(np.array_equal(after[p], before[p]) for p in before)
        train_state, _ = steps.train_step(phase.index, train_state, batch)
        flat, masks = _flat(train_state.params), _masks(train_state.opt_state)
        target = float(pruning.sparsity_at(spec, t))
        for p, keep in masks.items():
            assert (flat[p][~keep] == 0).all() and (~keep).sum() == round(target * keep.size)
    assert pruning.sparsity_of(train_state.params) == pytest.approx(0.75, abs=1e-3)


def test_the_mask_changes_nothing_but_the_pruned_weights():
    """One step from the same state: the pruned optimizer's updates equal the plain one's on
    every kept weight and every unpruned leaf, bit for bit; pruned weights land on 0."""
    model, params, state, batch, groups, plan, spec, cfg = _two_phase_setup()
    plain_cfg = optim.OptimConfig("adamw", weight_decay=0.01)
    pruned = _Loop(model, state, batch, groups, plan, cfg, 1)
    plain = _Loop(model, state, batch, groups, plan, plain_cfg, 1)
    new_p, s, u_pruned = pruned.step(params, pruned.init(params), jnp.asarray(0))
    _, _, u_plain = plain.step(params, plain.init(params), jnp.asarray(0))
    masks, u_pruned, u_plain = _masks(s), _flat(u_pruned), _flat(u_plain)
    assert set(u_pruned) == set(u_plain)
    for p, u in u_plain.items():
        if p in masks:
            np.testing.assert_array_equal(u_pruned[p][masks[p]], u[masks[p]])
            assert (_flat(new_p)[p][~masks[p]] == 0).all()
            assert (~masks[p]).mean() == pytest.approx(float(pruning.sparsity_at(spec, 6)), 0.01)
        else:
            np.testing.assert_array_equal(u_pruned[p], u, err_msg=p)


def test_accumulation_reads_the_train_step_of_each_window():
    params = {"encoder": {"d": {"kernel": jnp.asarray(np.random.default_rng(1).random((8, 8)))}}}
    spec = PruneSpec(0.5, 0.0, begin_step=4, end_step=12, update_every=4)
    plan = phases.resolve_plan(
        phases.Plan((phases.Phase("a", ("g",), 0.01, steps=4), phases.Phase("b", ("g",), 0.01))),
        ("g",),
        total_steps=20,
    )
    phase = plan.phases[1]  # train steps 4..19, optimizer steps 0..7
    cfg = optim.OptimConfig("sgd", momentum=0.0, accumulate_steps=2, prune=spec)
    tx = optim.make_optimizer(cfg, phase, {"encoder": {"d": {"kernel": "g"}}})
    opt_state = tx.init(params)
    grads = {"encoder": {"d": {"kernel": jnp.full((8, 8), 0.1)}}}
    update = jax.jit(lambda p, s, i: tx.update(grads, s, p, step=i))
    for t in range(phase.start, phase.end):
        updates, opt_state = update(params, opt_state, (t - phase.start) // 2)
        params = optax.apply_updates(params, updates)
        if t % 2:  # the window's last micro step applied the update
            zeros = int((params["encoder"]["d"]["kernel"] == 0).sum())
            assert zeros == round(float(pruning.sparsity_at(spec, t - 1)) * 64), t


def test_masks_save_and_restore_with_the_checkpoint(tmp_path):
    model, params, state, batch, groups, plan, spec, cfg = _two_phase_setup()
    loop = _Loop(model, state, batch, groups, plan, cfg, 0)
    opt_state = loop.init(params)
    for i in range(4):
        params, opt_state, _ = loop.step(params, opt_state, jnp.asarray(i))
    ckpt = Checkpoints(tmp_path / "w")
    ckpt.save(4, {"params": params, "opt_state": opt_state}, {"phase": 0})
    ckpt.wait()
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), {"params": params, "opt_state": opt_state}
    )
    restored, _ = ckpt.restore_latest(lambda meta: target)
    ckpt.close()
    got, want = _masks(restored["opt_state"]), _masks(opt_state)
    assert sorted(got) == sorted(want) and all(got[p].dtype == np.bool_ for p in got)
    for p in want:
        np.testing.assert_array_equal(got[p], want[p])


def test_a_head_only_phase_gets_no_pruning_transform():
    _, params, _, _, groups, plan, _, cfg = _two_phase_setup()
    head = phases.resolve_plan(
        phases.Plan((phases.Phase("h", ("head",), 1e-3, steps=1),)), groups.names
    )
    labels, _ = param_groups.split_params(groups.labels, groups.paths(["head"]))
    tx = optim.make_optimizer(cfg, head.phases[0], labels)
    trainable, _ = param_groups.split_params(params, groups.paths(["head"]))
    assert _pruning_states(tx.init(trainable)) == []


# ----------------------------------------------------------------------------- config


def _config(**prune):
    c = cfg_lib.defaults()
    c.model.source = "somewhere"
    c.data.name = "rotten_tomatoes"
    c.plan.preset = "full_finetune"
    for k, v in prune.items():
        c.prune[k] = v
    return c


@pytest.mark.parametrize(
    "prune,key",
    [
        ({"sparsity": 1.0}, "prune.sparsity"),
        ({"sparsity": 0.5, "initial_sparsity": 0.6}, "prune.initial_sparsity"),
        ({"scope": "layer"}, "prune.scope"),
        ({"n_m": (4, 2)}, "prune.n_m"),
        ({"n_m": (2, 4), "sparsity": 0.5}, "prune.n_m"),
        ({"pattern": "encoder/("}, "prune.pattern"),
        ({"begin": 0.8, "end": 0.5}, "prune.begin"),
        ({"update_every": 0}, "prune.update_every"),
    ],
)
def test_a_bad_prune_value_is_a_config_error_naming_the_key(prune, key):
    with pytest.raises(cfg_lib.ConfigError, match=re.escape(f"config.{key}")):
        cfg_lib.validate(_config(**prune))


def test_config_maps_onto_a_spec_in_train_steps():
    cfg_lib.validate(_config())
    assert pruning.from_config(_config().prune, 100) is None  # off by default
    c = _config(sparsity=0.9, begin=0.1, end=0.5, update_every=5, scope="global")
    cfg_lib.validate(c)
    spec = pruning.from_config(c.prune, 200)
    assert spec == PruneSpec(0.9, 0.0, "global", None, pruning.DEFAULT_PATTERN, 20, 100, 5)
    spec = pruning.from_config(_config(n_m=(2, 4)).prune, 10)
    assert spec.n_m == (2, 4) and spec.sparsity == 0.0
    with pytest.raises(optim.OptimConfigError, match="prune: sparsity=1.5"):
        optim.OptimConfig(prune=PruneSpec(1.5)).validate()


def test_one_shot_pruning_of_a_model_without_encoder_kernels_is_refused():
    """A CNN has no `encoder/.../kernel`: pruning it once must say so, not copy it unpruned."""
    model = convnet()
    batch = {"image": jnp.asarray(image_batch(np.random.default_rng(0), 2, 8, 3)["image"])}
    run = types.SimpleNamespace(params=model.init(jax.random.key(0), batch)[0], workdir="runs/cnn")
    with pytest.raises(pruning.PruneError, match="runs/cnn has no weight magnitude pruning takes"):
        pruning.pruned(run, 0.5)
