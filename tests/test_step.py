"""Per-phase train steps on a small transformer encoder and a conv net with batch norm, both with
AdamW (weight decay 0.1) and clipping, over head -> top 2 blocks + head -> all (layer-wise decay)."""

import contextlib
import dataclasses

import engine_models as em
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from ftjax import optim, param_groups, phases, sharding
from ftjax.compile import compile_lowered
from ftjax.models import efficientnet
from ftjax.phase_steps import PhaseSteps, run_plan
from ftjax.tasks import Classification, cross_entropy

BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"


def _case(kind: str, dropout: float = 0.1):
    if kind == "encoder":
        model = em.encoder(dropout=dropout)
        return model, lambda rng, eval=False: em.text_batch(rng, 8, 16, 100, 3, eval=eval)
    model = em.convnet(dropout=dropout)
    return model, lambda rng, eval=False: em.image_batch(rng, 8, 8, 3, eval=eval)


def _engine(kind, plan_fn=em.three_phase_plan, cfg=em.ADAMW, cpu_compiler_options=(), **plan_kw):
    model, make_batch = _case(kind)
    model = dataclasses.replace(model, cpu_compiler_options=cpu_compiler_options)
    params, model_state = em.init(model, make_batch(np.random.default_rng(0)))
    groups = param_groups.assign_groups(params, model.layer_groups)
    plan = phases.resolve_plan(plan_fn(groups.names, **plan_kw), groups.names)
    engine = PhaseSteps(model, groups, plan, cfg, task=Classification(3))
    return engine, engine.init_state(params, model_state, jax.random.key(1)), make_batch


def _flat(tree) -> dict:
    return {
        "/".join(k): np.array(v)
        for k, v in traverse_util.flatten_dict(jax.device_get(tree)).items()
    }


@contextlib.contextmanager
def count_backend_compiles():
    events = []

    def listener(name, secs, **kw):
        if name == BACKEND_COMPILE:
            events.append(secs)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield events
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


@pytest.fixture(scope="module", params=["encoder", "convnet"])
def compiled(request):
    """An engine for the 3-phase plan (4, 5, 6 steps) with every phase compiled ahead of time."""
    engine, state, make_batch = _engine(request.param, steps=(4, 5, 6))
    for i in range(3):
        engine.compile_train_step(i, state, make_batch(np.random.default_rng(0)))
    return engine, jax.device_get(state), make_batch


def test_frozen_params_and_batch_stats_are_bitwise_unchanged_in_every_phase(compiled):
    engine, host_state, make_batch = compiled
    state = engine.init_state(host_state.params, host_state.model_state, host_state.rng)
    rng = np.random.default_rng(1)
    for phase in engine.plan.phases:
        if phase.index:
            state = engine.enter_phase(state, phase.index, previous=phase.index - 1)
        before_p, before_s = _flat(state.params), _flat(state.model_state)
        for _ in range(phase.length):
            state, _ = engine.train_step(phase.index, state, make_batch(rng))
        after_p, after_s = _flat(state.params), _flat(state.model_state)
        trainable = engine.trainable_paths(phase.index)
        for path, value in before_p.items():
            if path in trainable:
                assert not np.array_equal(value, after_p[path]), (
                    f"{phase.name}: trainable {path} did not move"
                )
            else:
                assert value.tobytes() == after_p[path].tobytes(), (
                    f"{phase.name}: frozen {path} changed"
                )
        for (
            path,
            value,
        ) in before_s.items():  # batch_stats/<module>/bn/mean: the BN's scale is <module>/bn/scale
            frozen_bn = path.split("/", 1)[1].rsplit("/", 1)[0] + "/scale" not in trainable
            assert (value.tobytes() == after_s[path].tobytes()) == frozen_bn, (
                f"{phase.name}: {path}"
            )
    assert engine.compile_count == 3


def test_head_step_costs_a_forward_pass_and_top2_lies_between_head_and_full(compiled):
    engine, state, make_batch = compiled
    head, top2, full = [engine.compiled_steps(i)[0].cost_analysis()["flops"] for i in range(3)]
    forward = jax.jit(lambda p, s, b: engine.model.apply(p, s, b, train=False)[0])
    batch = sharding.shard_batch(make_batch(np.random.default_rng(1)), engine.mesh)
    fwd = forward.lower(state.params, state.model_state, batch).compile().cost_analysis()["flops"]
    assert head <= 1.15 * fwd, (head, fwd)
    assert head < top2 < full, (head, top2, full)
    assert full > 2.5 * fwd  # a real backward pass exists when everything trains


def test_each_phase_compiles_once_and_changing_lr_never_recompiles(compiled):
    engine, host_state, make_batch = compiled
    if engine.model.input_keys != ("input_ids", "attention_mask"):
        pytest.skip("one model is enough for the compile count")
    state = engine.init_state(host_state.params, host_state.model_state, host_state.rng)
    rng = np.random.default_rng(1)
    lrs = []
    with count_backend_compiles() as compiles:
        for s in range(engine.plan.total_steps):
            phase = engine.plan.phase_at(s)
            if s == phase.start and phase.index:
                # the transition creates optimizer state with its own small jit: not a train step
                n = len(compiles)
                state = engine.enter_phase(state, phase.index, previous=phase.index - 1)
                del compiles[n:]
            state, metrics = engine.train_step(phase.index, state, make_batch(rng))
            lrs.append(float(metrics["lr/head"]))
    assert compiles == [], (
        f"{len(compiles)} compilations during {engine.plan.total_steps} train steps"
    )
    assert (
        engine.compile_count == 3
    )  # 3 phases, 15 steps (plus the other test's run on this engine)
    assert (
        len(set(lrs[4:9])) >= 4
    )  # warmup-cosine LR changed every step of phase 2 without recompiling


def _moments(opt_state, group):
    adam = optim.group_states(opt_state)[group].inner_state[0]
    return int(adam.count), _flat(adam.mu)


@pytest.mark.parametrize("reset", [False, True])
def test_moments_of_groups_that_stay_trainable_are_carried_or_reset(reset):
    def plan(names):
        p = em.three_phase_plan(names, steps=(2, 2, 2))
        top2 = p.phases[1].__class__(**{**p.phases[1].__dict__, "reset_moments": reset})
        return phases.Plan((p.phases[0], top2, p.phases[2]))

    engine, state, make_batch = _engine("encoder", plan_fn=plan)
    rng = np.random.default_rng(1)
    for _ in range(2):
        state, _ = engine.train_step(0, state, make_batch(rng))
    count, head_mu = _moments(state.opt_state, "head")
    assert count == 2 and all(np.abs(v).max() > 0 for v in head_mu.values())
    state = engine.enter_phase(state, 1, previous=0)
    assert set(optim.group_states(state.opt_state)) == {"layer_1", "layer_2", "head"}
    new_count, new_mu = _moments(state.opt_state, "head")
    if reset:
        assert new_count == 0 and all(not v.any() for v in new_mu.values())
    else:
        assert new_count == 2 and all(new_mu[k].tobytes() == head_mu[k].tobytes() for k in head_mu)
    fresh_count, fresh_mu = _moments(state.opt_state, "layer_1")
    assert fresh_count == 0 and all(not v.any() for v in fresh_mu.values())


def test_eval_counts_only_masked_in_examples_and_compiles_once():
    engine, state, make_batch = _engine("convnet")
    batch = make_batch(np.random.default_rng(3), eval=True)
    padded = {**batch, "mask": np.arange(8) < 5}
    real = {k: v[:5] for k, v in batch.items()}
    engine.mesh = sharding.make_mesh(devices=jax.devices()[:1])
    out_padded, _ = engine.eval_step(state, padded)
    out_again, _ = engine.eval_step(state, {**padded, "label": np.zeros(8, np.int32)})
    assert engine.eval_compile_count == 1 and float(out_again["count"]) == 5
    out_real, _ = engine.eval_step(state, real)
    assert float(out_padded["count"]) == 5
    np.testing.assert_allclose(
        float(out_padded["loss_sum"]), float(out_real["loss_sum"]), rtol=1e-5
    )
    assert float(out_padded["correct"]) == float(out_real["correct"])


@pytest.mark.slow
def test_gradient_accumulation_equals_one_big_batch():
    model = em.encoder(dropout=0.0)
    rng = np.random.default_rng(0)
    small = [em.text_batch(rng, 4, 16, 100, 3) for _ in range(4)]
    big = [{k: np.concatenate([a[k], b[k]]) for k in a} for a, b in zip(small[::2], small[1::2])]
    params, model_state = em.init(model, small[0])
    groups = param_groups.assign_groups(params, model.layer_groups)
    ends = []
    for k, batches in ((2, small), (1, big)):
        plan = phases.resolve_plan(
            phases.Plan(
                (
                    phases.Phase("head", ("head",), 1e-2, steps=k),
                    phases.Phase("all", groups.names, 1e-2, steps=k),
                )
            ),
            groups.names,
        )
        engine = PhaseSteps(
            model,
            groups,
            plan,
            optim.OptimConfig("sgd", weight_decay=0.1, clip_norm=1.0, accumulate_steps=k),
            task=Classification(3),
        )
        end, _ = run_plan(
            engine, engine.init_state(params, model_state, jax.random.key(1)), batches
        )
        ends.append(_flat(end.params))
    for path in ends[0]:
        np.testing.assert_allclose(ends[0][path], ends[1][path], rtol=1e-5, atol=1e-7, err_msg=path)
    assert not np.array_equal(
        ends[0]["encoder/layer_0/intermediate/kernel"],
        _flat(params)["encoder/layer_0/intermediate/kernel"],
    )


@pytest.mark.slow
def test_grad_norm_and_clipping_count_trainable_params_only():
    engine, state, make_batch = _engine("encoder")
    batch = make_batch(np.random.default_rng(1))
    trainable, frozen = param_groups.split_params(state.params, engine.trainable_paths(0))
    rng = jax.random.fold_in(state.rng, state.step)

    def loss(tp):
        logits, _ = engine.model.apply(
            param_groups.merge_params(tp, frozen),
            state.model_state,
            batch,
            train=True,
            rng=rng,
            frozen=engine.frozen_paths(0),
        )
        return jnp.mean(cross_entropy(logits, jnp.asarray(batch["label"])))

    expected = float(
        jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(jax.grad(loss)(trainable))))
    )
    _, metrics = engine.train_step(0, state, batch)
    np.testing.assert_allclose(float(metrics["grad_norm"]), expected, rtol=1e-5)


def test_precompile_covers_every_bucket_shape_once():
    """Length buckets give a phase several batch shapes: `precompile` compiles each once (two at a
    time), and training on any of them then compiles nothing."""
    engine, state, _ = _engine("encoder", steps=(2, 2, 2))
    batches = {n: em.text_batch(np.random.default_rng(n), 8, n, 100, 3) for n in (8, 12, 16)}
    assert engine.precompile(0, state, list(batches.values()) * 2) == 3
    assert engine.precompile(0, state, [batches[12]]) == 0
    with count_backend_compiles() as compiles:
        for n in (16, 8, 12):
            state, _ = engine.train_step(0, state, batches[n])
    assert compiles == [] and engine.compile_count == 3


def test_compile_ahead_compiles_the_next_phase_during_this_one_and_changes_no_result():
    """`compile_ahead(i + 1)` at phase i's start: the later `precompile(i + 1)` finds every step
    compiled, the train steps compile nothing, and the params end bitwise equal to a plain run."""
    batches = [em.text_batch(np.random.default_rng(s), 8, 16, 100, 3) for s in range(6)]
    engine, state, _ = _engine("encoder", steps=(2, 2, 2))
    expected, _ = run_plan(engine, state, batches)
    engine, state, _ = _engine("encoder", steps=(2, 2, 2))
    compiled_here = [engine.precompile(0, state, batches[:1])]
    for step, batch in enumerate(batches):
        phase = engine.plan.phase_at(step)
        if step == phase.start:
            if phase.index:
                state = engine.enter_phase(state, phase.index, previous=phase.index - 1)
                compiled_here.append(engine.precompile(phase.index, state, batches[:1]))
            if phase.index + 1 < len(engine.plan.phases):
                engine.compile_ahead(phase.index + 1, state, batches[:1])
        with count_backend_compiles() as compiles:
            state, _ = engine.train_step(phase.index, state, batch)
        assert compiles == [], f"step {step} compiled"
    assert compiled_here == [1, 0, 0] and engine.compile_count == 3
    assert _flat(state.params).keys() == _flat(expected.params).keys()
    for path, value in _flat(expected.params).items():
        assert value.tobytes() == _flat(state.params)[path].tobytes(), path


def test_a_failed_compile_ahead_raises_where_the_phase_needs_its_steps():
    engine, state, _ = _engine("encoder", steps=(2, 2, 2))
    batch = em.text_batch(np.random.default_rng(0), 8, 16, 100, 3)
    bad = {**batch, "input_ids": batch["input_ids"].astype(np.float32)}  # embedding needs ints
    engine.compile_ahead(1, state, [bad])
    with pytest.raises(Exception, match="(?i)int"):
        engine.precompile(1, state, [batch])


def test_a_models_cpu_compiler_options_reach_its_steps_and_an_xla_lacking_one_still_compiles():
    """EfficientNet declares `xla_cpu_experimental_ynn_fusion_type=""` (XLA:CPU's default hands
    reductions to YNNPACK, which costs it memory); every step PhaseSteps compiles for such a model
    carries it, and an option this XLA does not know falls back to the defaults."""
    no_ynn = (("xla_cpu_experimental_ynn_fusion_type", ""),)
    texts = {}
    for opts in ((), no_ynn):
        engine, state, make_batch = _engine("convnet", steps=(2, 2, 2), cpu_compiler_options=opts)
        engine.compile_train_step(2, state, make_batch(np.random.default_rng(0)))
        texts[opts] = engine.compiled_steps(2)[0].as_text()
    assert "__ynn_fusion" in texts[()] and "__ynn_fusion" not in texts[no_ynn]
    lowered = jax.jit(lambda x: jnp.sum(jnp.sin(x) * x, axis=0)).lower(jnp.ones((64, 128)))
    fallback = compile_lowered(lowered, engine.mesh, (("xla_cpu_no_such_option", ""),))
    np.testing.assert_allclose(fallback(jnp.ones((64, 128))), 64 * np.sin(1.0), rtol=1e-6)
    assert (
        efficientnet.efficientnet_lite(
            efficientnet.EfficientNetConfig(num_classes=2)
        ).cpu_compiler_options
        == no_ynn
    )


def test_compiling_steps_leaves_the_users_own_jitted_functions_compiled():
    """Releasing compiler memory must not clear JAX's caches: a function the user jitted before a
    step compiles is neither retraced nor recompiled after it."""
    traces = []

    @jax.jit
    def user_fn(x):
        traces.append(1)  # runs only while tracing
        return jnp.sin(x) * 2

    x = jnp.ones(4)
    user_fn(x)
    engine, state, make_batch = _engine("encoder", steps=(1, 2, 1))
    state, _ = engine.train_step(0, state, make_batch(np.random.default_rng(0)))
    engine.precompile(1, state, [em.text_batch(np.random.default_rng(0), 8, 12, 100, 3)])
    engine.eval_step(state, make_batch(np.random.default_rng(0), eval=True))
    with count_backend_compiles() as compiles:
        user_fn(x)
    assert traces == [1] and compiles == []


def _diverging_plan(names):
    # An LR beyond float32's range: the loss and gradients of the step are finite, the update is not.
    return phases.Plan((phases.Phase("head", (names[-1],), 1e39, steps=1),))


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")
@pytest.mark.parametrize("skip", [False, True])
def test_nonfinite_flags_a_step_whose_updated_params_are_not_finite(skip):
    model, make_batch = _case("encoder")
    params, model_state = em.init(model, make_batch(np.random.default_rng(0)))
    groups = param_groups.assign_groups(params, model.layer_groups)
    plan = phases.resolve_plan(_diverging_plan(groups.names), groups.names)
    engine = PhaseSteps(model, groups, plan, em.ADAMW, task=Classification(3), skip_nonfinite=skip)
    state = engine.init_state(params, model_state, jax.random.key(1))
    before = _flat(state.params)
    state, metrics = engine.train_step(0, state, make_batch(np.random.default_rng(1)))
    assert np.isfinite(float(metrics["loss"])) and np.isfinite(float(metrics["grad_norm"]))
    assert float(metrics["nonfinite"]) == 1.0
    after = _flat(state.params)
    if skip:
        assert float(metrics["skipped"]) == 1.0
        assert all(before[k].tobytes() == after[k].tobytes() for k in before)
    else:
        assert "skipped" not in metrics
        assert not np.isfinite(after["head/kernel"]).all()


def test_nonfinite_is_zero_for_an_ordinary_step(compiled):
    engine, host_state, make_batch = compiled
    state = engine.init_state(host_state.params, host_state.model_state, host_state.rng)
    _, metrics = engine.train_step(0, state, make_batch(np.random.default_rng(2)))
    assert float(metrics["nonfinite"]) == 0.0 and "skipped" not in metrics
