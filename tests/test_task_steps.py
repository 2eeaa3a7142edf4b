"""Every task's head in the phase machinery, on a small random BERT loaded as a checkpoint: a
head-only step still costs about a forward pass (XLA's FLOP count, as tests/test_step.py checks
for classification), frozen params get no optimizer state, and a few steps lower the loss."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from bert_checkpoints import TINY, save_random_bert
from flax import traverse_util

from ftjax import param_groups, phases, sharding, tasks
from ftjax.optim import OptimConfig
from ftjax.phase_steps import PhaseSteps
from ftjax.pretrained.load import load_pretrained

B, L = 8, 16
TAGS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")
TASKS = {
    "multi_label": lambda: tasks.MultiLabel(("a", "b", "c")),
    "regression": lambda: tasks.Regression(),
    "token_classification": lambda: tasks.TokenClassification(TAGS),
    "extractive_qa": lambda: tasks.ExtractiveQA(),
}


def _batch(task, rng: np.random.Generator) -> dict[str, np.ndarray]:
    ids = rng.integers(1, TINY["vocab_size"], (B, L)).astype(np.int32)
    mask = np.ones((B, L), np.int32)
    mask[B // 2 :, L - 4 :] = 0
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    if task.name == "multi_label":
        batch["labels"] = (rng.random((B, 3)) < 0.4).astype(np.float32)
    elif task.name == "regression":
        batch["target"] = rng.normal(size=B).astype(np.float32)
    elif task.name == "token_classification":
        tags = rng.integers(0, len(TAGS), (B, L)).astype(np.int32)
        batch["tags"] = np.where(mask > 0, tags, -100).astype(np.int32)
    else:
        for key, fill in task.token_keys.items():
            batch[key] = np.where(mask > 0, np.arange(L)[None, :], fill).astype(np.int32)
        start = rng.integers(1, L - 6, B).astype(np.int32)
        batch["start_positions"], batch["end_positions"] = start, start + 2
        batch["example_index"] = np.arange(B, dtype=np.int32)
        assert set(task.target_keys) <= set(batch), task.target_keys
    return batch


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_bert")
    save_random_bert(folder)
    return folder


@pytest.mark.parametrize("name", list(TASKS))
def test_head_only_step_costs_a_forward_pass_and_trains(bert_dir, name):
    task = TASKS[name]()
    pooling = "tokens" if task.output_level == "token" else "cls"
    pre = load_pretrained(str(bert_dir), task.output_size, pooling=pooling, rng=jax.random.key(0))
    groups = param_groups.assign_groups(pre.params, pre.model.layer_groups)
    plan = phases.resolve_plan(
        phases.Plan(
            (
                phases.Phase("head", ("head",), lr=1e-2, steps=6),
                phases.Phase("all", tuple(groups.names), lr=1e-3, steps=2),
            )
        ),
        groups.names,
    )
    engine = PhaseSteps(pre.model, groups, plan, OptimConfig(), task=task)
    state = engine.init_state(pre.params, pre.state, jax.random.key(1))
    rng = np.random.default_rng(0)
    batch = _batch(task, rng)
    engine.compile_train_step(0, state, batch)
    engine.compile_train_step(1, state, batch)
    head = engine.compiled_steps(0)[0].cost_analysis()["flops"]
    full = engine.compiled_steps(1)[0].cost_analysis()["flops"]
    forward = jax.jit(lambda p, s, b: engine.model.apply(p, s, b, train=False)[0])
    placed = sharding.shard_batch(batch, engine.mesh)
    fwd = forward.lower(state.params, state.model_state, placed).compile().cost_analysis()["flops"]
    assert head <= 1.15 * fwd, (name, head, fwd)
    assert full > 2.5 * fwd, (name, full, fwd)

    # Frozen params hold no optimizer state: AdamW's two moments exist for the head only.
    head_size = sum(np.size(x) for x in jax.tree.leaves(state.params["head"]))
    moments = sum(
        np.size(x) for x in jax.tree.leaves(state.opt_state) if np.ndim(x) > 0 or np.size(x) > 1
    )
    assert moments == 2 * head_size, (name, moments, head_size)

    before = _flat(state.params)
    losses = []
    for _ in range(6):
        state, metrics = engine.train_step(0, state, batch)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < losses[0], (name, losses)
    after = _flat(state.params)
    assert all((before[k] == after[k]).all() != k.startswith("head/") for k in before), (
        "only the head moves in the head phase"
    )


def _flat(tree) -> dict[str, np.ndarray]:
    flat = traverse_util.flatten_dict(jax.device_get(tree))
    return {"/".join(k): np.asarray(v) for k, v in flat.items()}
