"""Optimizer state per phase: frozen groups hold none; weight decay skips 1-D params."""

import engine_models as em
import jax
import jax.numpy as jnp
import numpy as np

from ftjax import optim, param_groups, phases
from ftjax.phase_steps import PhaseSteps
from ftjax.tasks import Classification


def _bytes(tree) -> int:
    return sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def test_head_only_state_on_a_bert_sized_model_is_under_one_percent_of_full():
    model = em.bert_sized_encoder(max_len=64)
    batch = {
        "input_ids": jnp.zeros((2, 64), jnp.int32),
        "attention_mask": jnp.ones((2, 64), jnp.int32),
    }
    params, model_state = jax.eval_shape(lambda: model.init(jax.random.key(0), batch))
    groups = param_groups.assign_groups(params, model.layer_groups)
    assert sum(groups.sizes.values()) > 20_000_000  # really BERT-sized (~22M params)
    names = groups.names
    plan = phases.Plan(
        (
            phases.Phase("probe", ("head",), 1e-3, steps=10),
            phases.Phase(
                "full", names[1:], 1e-4, steps=10
            ),  # embeddings stay frozen for the whole run
        )
    )
    engine = PhaseSteps(
        model, groups, phases.resolve_plan(plan, names), em.ADAMW, task=Classification(2)
    )
    head, full = (_bytes(engine.opt_state_shapes(i, params)) for i in range(2))
    assert head < 0.01 * full, (head, full)
    trainable_bytes = _bytes(param_groups.split_params(params, engine.trainable_paths(1))[0])
    assert full <= 2 * trainable_bytes + 1024  # Adam's mu and nu over trainable params, plus counts
    for i in range(2):
        state = engine.opt_state_shapes(i, params)
        assert "embeddings" not in optim.group_states(state)
        paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(state)[0]]
        assert not any("'embeddings'" in p for p in paths), (
            "a group frozen for the whole run holds state"
        )


def test_weight_decay_skips_biases_and_norm_scales_and_moves_frozen_nothing():
    params = {
        "dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)},
        "norm": {"scale": jnp.ones(2)},
    }
    labels = {"dense": {"kernel": "a", "bias": "a"}, "norm": {"scale": "a"}}
    plan = phases.resolve_plan(phases.Plan((phases.Phase("p", ("a",), 0.1, steps=1),)), ("a",))
    tx = optim.make_optimizer(
        optim.OptimConfig("sgd", weight_decay=0.5, momentum=0.0), plan.phases[0], labels
    )
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params, step=jnp.asarray(0))
    np.testing.assert_allclose(updates["dense"]["kernel"], -0.1 * 0.5 * np.ones((3, 2)))
    assert not updates["dense"]["bias"].any() and not updates["norm"]["scale"].any()


def test_lr_is_a_traced_function_of_the_phase_local_step():
    plan = phases.resolve_plan(
        phases.Plan(
            (
                phases.Phase(
                    "p",
                    ("a",),
                    1.0,
                    steps=10,
                    schedule=phases.Schedule("warmup_linear", warmup_steps=2),
                ),
            )
        ),
        ("a",),
    )
    labels = {"w": "a"}
    tx = optim.make_optimizer(optim.OptimConfig("sgd", momentum=0.0), plan.phases[0], labels)
    params, grads = {"w": jnp.zeros(())}, {"w": jnp.ones(())}
    update = jax.jit(lambda t: tx.update(grads, tx.init(params), params, step=t)[0]["w"])
    got = [float(update(jnp.asarray(t))) for t in range(10)]
    np.testing.assert_allclose(
        got, [-0.5, -1.0] + [-(1 - (t - 2) / 8) for t in range(2, 10)], rtol=1e-6
    )
    assert update._cache_size() == 1
