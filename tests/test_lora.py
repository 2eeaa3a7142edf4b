"""LoRA (through qwix) and the PEFT group sets on a tiny BERT: the adapted model starts equal to
the base, merging is exact, the adapters are a group a phase trains alone (the base gets no
gradient and no optimizer state), adapter dropout follows the freeze, bad settings fail clearly,
and a LoRA run through the CLI resumes bit for bit from checkpoints that hold only what is
trained."""

from __future__ import annotations

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from train_fixtures import (  # noqa: F401  (pytest fixtures: data_dir, jax_cache, tiny_bert)
    assert_bitwise_equal,
    checkpoint_steps,
    data_dir,
    jax_cache,
    read_meta,
    read_state,
    run_and_kill_when,
    run_cli,
    tiny_bert,
    write_config,
)

from ftjax import lora, param_groups
from ftjax.config import ConfigError, defaults, group_patterns, validate
from ftjax.models.bert import BertConfig, bert_classifier
from ftjax.optim import OptimConfig
from ftjax.phase_steps import PhaseSteps
from ftjax.phases import Phase, Plan, resolve_plan
from ftjax.tasks import Classification

CFG = BertConfig(
    vocab_size=50,
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=32,
    num_classes=3,
    pooling="mean",
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)
SPEC = lora.LoraSpec("query_value", rank=4, alpha=8.0)


def _batch(n: int = 4, length: int = 6) -> dict[str, jax.Array]:
    ids = jax.random.randint(jax.random.key(1), (n, length), 0, CFG.vocab_size)
    return {
        "input_ids": ids,
        "attention_mask": jnp.ones_like(ids),
        "token_type_ids": jnp.zeros_like(ids),
        "label": jnp.arange(n) % CFG.num_classes,
        "mask": jnp.ones((n,), jnp.float32),
    }


def _lora_model(spec: lora.LoraSpec = SPEC):
    base = bert_classifier(CFG)
    model = lora.with_lora(base, spec)
    params, state = model.init(jax.random.key(0), _batch())
    return base, model, params, state


def _randomize_b(params):
    flat = traverse_util.flatten_dict(params)
    for i, k in enumerate(sorted(flat)):
        if k[-1].endswith("_lora_b"):
            flat[k] = 0.1 * jax.random.normal(jax.random.key(i), flat[k].shape)
    return traverse_util.unflatten_dict(flat)


def test_adapters_sit_beside_their_kernels_and_start_as_the_base():
    base, model, params, state = _lora_model()
    paths = lora.lora_paths(params)
    assert paths == [
        f"encoder/layer_{i}/attention/self/{m}/kernel_lora_{ab}"
        for i in range(2)
        for m in ("query", "value")
        for ab in "ab"
    ]
    flat = {"/".join(k): v for k, v in traverse_util.flatten_dict(params).items()}
    assert flat["encoder/layer_0/attention/self/query/kernel_lora_a"].shape == (16, 4)
    assert flat["encoder/layer_0/attention/self/query/kernel_lora_b"].shape == (4, 16)
    assert not np.any(np.asarray(flat["encoder/layer_0/attention/self/query/kernel_lora_b"]))
    same, _ = model.apply(params, state, _batch(), train=False)
    ref, _ = base.apply(lora.base_params(params), state, _batch(), train=False)
    np.testing.assert_array_equal(np.asarray(same), np.asarray(ref))


def test_merged_params_in_the_base_model_give_the_adapted_logits():
    base, model, params, state = _lora_model()
    params = _randomize_b(params)
    adapted, _ = model.apply(params, state, _batch(), train=False)
    unmerged, _ = base.apply(lora.base_params(params), state, _batch(), train=False)
    merged, _ = base.apply(lora.merge(params, SPEC), state, _batch(), train=False)
    assert np.abs(np.asarray(adapted) - np.asarray(unmerged)).max() > 1e-3  # the adapters act
    np.testing.assert_allclose(np.asarray(merged), np.asarray(adapted), atol=1e-5)
    assert not lora.lora_paths(lora.merge(params, SPEC))


def test_a_lora_phase_differentiates_and_keeps_state_for_adapters_and_head_only():
    _, model, params, state = _lora_model()
    patterns = param_groups.carve(list(model.layer_groups), lora.LORA_GROUP, lora.LORA_PARAMS)
    groups = param_groups.assign_groups(params, patterns)
    assert groups.names[-2:] == ("lora", "head")
    plan = resolve_plan(
        Plan((Phase("lora", ("lora", "head"), lr=1e-2, steps=3),)), groups.names, total_steps=3
    )
    steps = PhaseSteps(model, groups, plan, OptimConfig(), task=Classification(CFG.num_classes))
    st = steps.init_state(params, state, jax.random.key(0))
    opt_values = sum(x.size for x in jax.tree.leaves(st.opt_state) if jnp.ndim(x) > 0)
    trained = groups.sizes["lora"] + groups.sizes["head"]
    assert opt_values == 2 * trained  # Adam's two moments, of the adapters and head only
    for _ in range(3):
        st, _ = steps.train_step(0, st, _batch())
    before = {"/".join(k): v for k, v in traverse_util.flatten_dict(params).items()}
    after = {"/".join(k): v for k, v in traverse_util.flatten_dict(st.params).items()}
    changed = {p for p in before if not np.array_equal(before[p], after[p])}
    assert changed == set(groups.paths(("lora", "head")))


def test_adapter_dropout_is_on_only_while_an_adapter_trains():
    spec = lora.LoraSpec("query_value", rank=4, alpha=8.0, dropout=0.5)
    _, model, params, state = _lora_model(spec)
    params = _randomize_b(params)
    paths = {"/".join(k) for k in traverse_util.flatten_dict(params)}
    run = lambda rng, frozen: np.asarray(
        model.apply(params, state, _batch(), train=True, rng=jax.random.key(rng), frozen=frozen)[0]
    )
    head_only = frozenset(p for p in paths if not p.startswith("head/"))
    np.testing.assert_array_equal(run(0, head_only), run(1, head_only))
    lora_too = head_only - set(lora.lora_paths(params))
    assert np.abs(run(0, lora_too) - run(1, lora_too)).max() > 1e-4


def test_bitfit_and_layernorm_group_sets_partition_the_params():
    _, _, params, _ = _lora_model()
    c = defaults()
    c.peft.group_sets = ("bitfit", "layernorm")
    c.peft.lora.targets = "query_value"
    groups = param_groups.assign_groups(
        params, group_patterns(c, bert_classifier(CFG).layer_groups)
    )
    assert groups.names[-4:] == ("biases", "layer_norms", "lora", "head")
    biases, norms = groups.members["biases"], groups.members["layer_norms"]
    assert biases and all(p.endswith("/bias") and "LayerNorm" not in p for p in biases)
    assert norms and all(re.search(r"LayerNorm/(scale|bias)$", p) for p in norms)
    assert set(groups.members["head"]) == {"head/kernel", "head/bias"}
    assert not any(p.endswith("/bias") for p in groups.members["layer_0"])


@pytest.mark.parametrize(
    "key, value, says",
    [
        ("peft.lora.rank", 0, "rank is 0"),
        ("peft.lora.alpha", -1.0, "alpha is -1.0"),
        ("peft.lora.dropout", 1.0, "dropout is 1.0"),
        ("peft.lora.targets", "encoder/(", "neither one of"),
        ("peft.group_sets", ("bitfit", "prefix"), "has ['prefix']"),
    ],
)
def test_bad_peft_settings_name_the_key_and_the_fix(key, value, says):
    c = defaults()
    c.model.source, c.data.name, c.plan.preset = "x", "rotten_tomatoes", "full_finetune"
    c.peft.lora.targets = "query_value"
    *parents, leaf = key.split(".")
    node = c
    for p in parents:
        node = node[p]
    node[leaf] = value
    with pytest.raises(ConfigError, match=re.escape(says)):
        validate(c)


def test_targets_that_match_no_dense_layer_are_refused():
    model = lora.with_lora(bert_classifier(CFG), lora.LoraSpec(r"encoder/nothing_here"))
    params, _ = model.init(jax.random.key(0), _batch())
    with pytest.raises(lora.LoraError, match="match no Dense layer.*attention/self/query"):
        lora.check_targets(params, model.spec)


LORA_PHASES = (
    dict(name="head", trainable="head", lr=1e-2, steps=4),
    dict(name="lora", trainable=["lora", "head"], lr=5e-3),
)


def test_a_killed_lora_run_resumes_exactly_from_checkpoints_of_trained_params_only(
    tmp_path, tiny_bert, data_dir, jax_cache
):
    config = write_config(
        tmp_path / "lora.py",
        tiny_bert,
        data_dir,
        plan__phases=LORA_PHASES,
        peft__lora__targets="all_linear",
        peft__lora__rank=4,
        peft__lora__dropout=0.1,
        model__dropout=0.1,
    )
    baseline, resumed = tmp_path / "baseline", tmp_path / "resumed"
    out = run_cli(config, baseline, jax_cache=jax_cache)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    run_and_kill_when(config, resumed, resumed / "checkpoints" / "9", jax_cache=jax_cache)
    out = run_cli(config, resumed, jax_cache=jax_cache)
    assert out.returncode == 0 and "Resumed" in out.stdout, out.stdout[-3000:]
    assert_bitwise_equal(read_state(resumed), read_state(baseline), "final train state")
    ours, theirs = (json.loads((w / "results.json").read_text()) for w in (resumed, baseline))
    assert ours["test"] == theirs["test"]

    saved = {"/".join(k) for k in traverse_util.flatten_dict(read_state(baseline)["params"])}
    assert saved and all(re.fullmatch(lora.LORA_PARAMS, p) or p.startswith("head/") for p in saved)
    meta = read_meta(baseline, checkpoint_steps(baseline)[-1])
    assert meta["params"] == "trained" and meta["base"] == str(tiny_bert)
    record = json.loads((baseline / "inference" / "inference.json").read_text())
    assert record["lora"] == {
        "targets": "all_linear",
        "rank": 4,
        "alpha": 16.0,
        "dropout": 0.1,
        "base_qtype": "",
    }


def test_an_int8_base_stores_quantised_kernels_and_trains_only_the_adapters():
    spec = lora.LoraSpec("all_linear", rank=4, alpha=8.0, base_qtype="int8")
    base, float_model, params, state = _lora_model(lora.LoraSpec("all_linear", rank=4, alpha=8.0))
    model = lora.with_lora(base, spec)
    qparams = model.quantize(_randomize_b(params), _batch())
    flat = {"/".join(k): v for k, v in traverse_util.flatten_dict(qparams).items()}
    query = "encoder/layer_0/attention/self/query/kernel"
    assert flat[f"{query}/qvalue"].dtype == jnp.int8 and flat[f"{query}/scale"].shape == (1, 16)
    assert flat["head/kernel"].dtype == jnp.float32  # only the targets are quantised
    q_logits, _ = model.apply(qparams, state, _batch(), train=False)
    f_logits, _ = float_model.apply(_randomize_b(params), state, _batch(), train=False)
    np.testing.assert_allclose(np.asarray(q_logits), np.asarray(f_logits), atol=2e-2)
    merged, _ = base.apply(lora.merge(qparams, spec), state, _batch(), train=False)
    np.testing.assert_allclose(np.asarray(merged), np.asarray(q_logits), atol=1e-5)

    patterns = param_groups.carve(list(model.layer_groups), lora.LORA_GROUP, lora.LORA_PARAMS)
    groups = param_groups.assign_groups(qparams, patterns)
    plan = resolve_plan(Plan((Phase("lora", ("lora", "head"), lr=1e-2, steps=2),)), groups.names)
    steps = PhaseSteps(model, groups, plan, OptimConfig(), task=Classification(CFG.num_classes))
    st = steps.init_state(qparams, state, jax.random.key(0))
    for _ in range(2):
        st, metrics = steps.train_step(0, st, _batch())
    assert np.isfinite(float(metrics["loss"]))
    after = {"/".join(k): v for k, v in traverse_util.flatten_dict(st.params).items()}
    assert np.array_equal(after[f"{query}/qvalue"], flat[f"{query}/qvalue"])
    assert not np.array_equal(after[f"{query}_lora_b"], flat[f"{query}_lora_b"])
