"""`ftjax.compress.structured`: the smaller model computes what the pruned neurons and heads
left, it builds from its own config, and it exports (FFN) or is refused by --format=hf (heads)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from ftjax.compress import structured
from ftjax.compress.structured import StructuredPruneError, prune_structured
from ftjax.models import bert
from ftjax.pretrained import registry
from ftjax.pretrained.arch import ModelOptions

CONFIG = dict(
    model_type="bert",
    vocab_size=99,
    hidden_size=48,
    num_hidden_layers=3,
    num_attention_heads=6,
    intermediate_size=80,
    max_position_embeddings=40,
    type_vocab_size=3,
    hidden_act="gelu_new",
    layer_norm_eps=1e-7,
)
HEAD = 8  # 48 / 6
OPTIONS = ModelOptions(num_classes=3, pooling="cls")


def _batch() -> dict:
    rng = np.random.default_rng(0)
    mask = np.ones((3, 11), np.int32)
    mask[1, 8:] = mask[2, 5:] = 0
    return {
        "input_ids": jnp.asarray(rng.integers(5, 99, (3, 11)), jnp.int32),
        "attention_mask": jnp.asarray(mask),
        "token_type_ids": jnp.zeros((3, 11), jnp.int32),
    }


def _loud(params, seed: int = 1):
    """Every Dense re-drawn at std 1/sqrt(fan in) (biases 0.1), so the logits are O(1) and a
    tolerance on them means something."""
    rng = np.random.default_rng(seed)
    flat = traverse_util.flatten_dict(dict(params))
    for key, value in flat.items():
        if key[-1] == "kernel":
            flat[key] = rng.standard_normal(value.shape) / np.sqrt(value.shape[0])
        elif key[-1] == "bias" and "LayerNorm" not in key:
            flat[key] = rng.standard_normal(value.shape) * 0.1
        flat[key] = np.asarray(flat[key], np.float32)
    return traverse_util.unflatten_dict(flat)


def _build(config):
    return registry.get("bert").build(config, OPTIONS)


@pytest.fixture(scope="module")
def tiny():
    model = _build(CONFIG)
    params, _ = model.init(jax.random.key(0), _batch())
    return _loud(params)


def _logits(config, params) -> np.ndarray:
    model = _build(config)
    return np.asarray(jax.jit(lambda p: model.apply(p, {}, _batch(), train=False)[0])(params))


def _copy(params):
    return jax.tree.map(lambda x: np.array(x, copy=True), params)


def _count(params) -> int:
    return sum(x.size for x in jax.tree.leaves(params))


def _layers():
    return [f"layer_{i}" for i in range(CONFIG["num_hidden_layers"])]


def _zero_neurons(params, dead: dict[str, list[int]]):
    out = _copy(params)
    for name, idx in dead.items():
        layer = out["encoder"][name]
        layer["intermediate"]["dense"]["kernel"][:, idx] = 0
        layer["intermediate"]["dense"]["bias"][idx] = 0
        layer["output"]["dense"]["kernel"][idx, :] = 0
    return out


def _zero_heads(params, dead: dict[str, list[int]]):
    out = _copy(params)
    for name, heads in dead.items():
        layer = out["encoder"][name]
        cols = np.concatenate([np.arange(h * HEAD, (h + 1) * HEAD) for h in heads])
        for qkv in ("query", "key", "value"):
            layer["attention"]["self"][qkv]["kernel"][:, cols] = 0
            layer["attention"]["self"][qkv]["bias"][cols] = 0
        layer["attention"]["output"]["dense"]["kernel"][cols, :] = 0
    return out


def test_keeping_everything_is_the_same_model_bit_for_bit(tiny):
    params, config = prune_structured(tiny, CONFIG, ffn_keep=1.0, heads_keep=6)
    assert config == CONFIG
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(tiny), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(_logits(config, params), _logits(CONFIG, tiny))


def test_pruning_zeroed_ffn_neurons_leaves_the_logits(tiny):
    rng = np.random.default_rng(2)
    dead = {n: sorted(rng.choice(80, 30, replace=False).tolist()) for n in _layers()}
    zeroed = _zero_neurons(tiny, dead)
    params, config = prune_structured(zeroed, CONFIG, ffn_keep=50)
    assert config == {**CONFIG, "intermediate_size": 50}
    for name, idx in dead.items():  # the zeroed neurons are exactly the ones dropped
        keep = np.setdiff1d(np.arange(80), idx)
        kernel = params["encoder"][name]["intermediate"]["dense"]["kernel"]
        np.testing.assert_array_equal(
            kernel, zeroed["encoder"][name]["intermediate"]["dense"]["kernel"][:, keep]
        )
    np.testing.assert_allclose(
        _logits(config, params), _logits(CONFIG, zeroed), rtol=1e-5, atol=1e-5
    )
    assert _count(tiny) - _count(params) == 3 * 30 * (2 * 48 + 1)


def test_pruning_zeroed_heads_leaves_the_logits(tiny):
    dead = {"layer_0": [1, 4], "layer_1": [0, 5], "layer_2": [2, 3]}
    zeroed = _zero_heads(tiny, dead)
    params, config = prune_structured(zeroed, CONFIG, heads_keep=4)
    assert config == {**CONFIG, "num_attention_heads": 4, "attention_head_size": HEAD}
    q = params["encoder"]["layer_0"]["attention"]["self"]["query"]["kernel"]
    assert q.shape == (48, 4 * HEAD) and (np.abs(q).reshape(48, 4, HEAD).sum((0, 2)) > 0).all()
    np.testing.assert_allclose(
        _logits(config, params), _logits(CONFIG, zeroed), rtol=1e-5, atol=1e-5
    )
    # per removed head: q/k/v kernel columns and biases, attention-output kernel rows
    assert _count(tiny) - _count(params) == 3 * 2 * HEAD * (3 * 48 + 3 + 48)


def test_heads_and_neurons_together(tiny):
    zeroed = _zero_heads(
        _zero_neurons(tiny, {n: list(range(0, 80, 2)) for n in _layers()}),
        {n: [3] for n in _layers()},
    )
    params, config = prune_structured(zeroed, CONFIG, ffn_keep=0.5, heads_keep=5)
    assert (config["intermediate_size"], config["num_attention_heads"]) == (40, 5)
    np.testing.assert_allclose(
        _logits(config, params), _logits(CONFIG, zeroed), rtol=1e-5, atol=1e-5
    )
    # pruning again from the pruned config (attention_head_size set) keeps that head size
    again, config2 = prune_structured(params, config, heads_keep=3)
    assert config2["attention_head_size"] == HEAD and config2["num_attention_heads"] == 3
    _logits(config2, again)


def test_the_pruned_model_builds_from_its_config(tiny):
    params, config = prune_structured(tiny, CONFIG, ffn_keep=0.25, heads_keep=2)
    cfg = bert.BertConfig.from_hf(config, num_classes=3)
    assert (cfg.intermediate_size, cfg.num_attention_heads, cfg.attention_head_size) == (20, 2, 8)
    model = _build(json.loads(json.dumps(config)))  # as an inference record holds it
    shapes, _ = jax.eval_shape(lambda: model.init(jax.random.key(0), _batch()))
    want = jax.tree.map(lambda x: (x.shape, x.dtype), shapes)
    assert jax.tree.map(lambda x: (x.shape, x.dtype), params) == want
    removed = 3 * (60 * (2 * 48 + 1) + 4 * HEAD * (3 * 48 + 3 + 48))
    assert _count(tiny) - _count(params) == removed


def test_importance_is_the_norm_of_each_neurons_and_heads_weights(tiny):
    layer = tiny["encoder"]["layer_1"]
    w_in = layer["intermediate"]["dense"]["kernel"]
    w_out = layer["output"]["dense"]["kernel"]
    for norm, ord_ in ((2, 2), (1, 1)):
        want = np.linalg.norm(np.concatenate([w_in, w_out.T], 0), ord=ord_, axis=0)
        np.testing.assert_allclose(structured.ffn_importance(layer, norm), want, rtol=1e-6)
    parts = [
        layer["attention"]["self"][n]["kernel"].reshape(48, 6, HEAD)
        for n in ("query", "key", "value")
    ]
    parts.append(
        layer["attention"]["output"]["dense"]["kernel"].reshape(6, HEAD, 48).transpose(2, 0, 1)
    )
    want = np.sqrt(sum((p.astype(np.float64) ** 2).sum((0, 2)) for p in parts))
    np.testing.assert_allclose(structured.head_importance(layer, 6), want, rtol=1e-6)
    params, _ = prune_structured(tiny, CONFIG, ffn_keep=10)
    kept = params["encoder"]["layer_1"]["output"]["dense"]["kernel"]
    top = np.sort(np.argsort(-structured.ffn_importance(layer))[:10])
    np.testing.assert_array_equal(kept, w_out[top])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"ffn_keep": 0}, r"ffn_keep=0 keeps 0 of 80"),
        ({"ffn_keep": 1.5}, r"ffn_keep=1.5"),
        ({"ffn_keep": 81}, r"\[1, 80\]"),
        ({"heads_keep": 7}, r"heads_keep=7 keeps 7 of 6"),
        ({"heads_keep": 2.5}, r"heads_keep=2.5; give a count"),
        ({"norm": 3}, r"norm=3"),
    ],
)
def test_bad_keep_counts_name_the_argument(tiny, kwargs, match):
    with pytest.raises(StructuredPruneError, match=match):
        prune_structured(tiny, CONFIG, **kwargs)


def test_adapters_must_be_merged_first(tiny):
    params = _copy(tiny)
    params["encoder"]["layer_0"]["intermediate"]["dense"]["kernel_lora_a"] = np.zeros((48, 2))
    with pytest.raises(StructuredPruneError, match="merge LoRA adapters first"):
        prune_structured(params, CONFIG, ffn_keep=0.5)


# ----------------------------------------------------------------------------- export


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A Run as load_run returns it: a tiny transformers BERT, its record and tokenizer."""
    from arch_checkpoints import FACTORIES, save_wordpiece_tokenizer
    from etils import epath

    from ftjax import inference
    from ftjax.config import defaults
    from ftjax.pretrained.load import load_pretrained
    from ftjax.tasks import Classification

    tmp = tmp_path_factory.mktemp("structured_run")
    saved = FACTORIES["bert"](tmp / "checkpoint")
    save_wordpiece_tokenizer(saved.folder, ["the cat sat on a mat"] * 4, vocab_size=80)
    task = Classification(3, label_names=("a", "b", "c"))
    pre = load_pretrained(saved.folder, num_classes=3, pooling="cls")
    config = defaults()
    config.model.source = str(saved.folder)
    workdir = tmp / "workdir"
    workdir.mkdir()
    inference.write_record(epath.Path(workdir), config, pre, task, max_length=24)
    record = inference.read_record(workdir)
    pre_ = dict(record["preprocessing"])
    pre_["tokenizer_file"] = str(workdir / "inference" / pre_["tokenizer_file"])
    params = _loud(pre.params)
    run = inference.Run(workdir, pre.model, params, pre.state, task, pre_, record, "best", 7)
    return run, saved.batch


def _run_logits(run, batch) -> np.ndarray:
    inputs = {k: jnp.asarray(v, jnp.int32) for k, v in batch.items()}
    return np.asarray(run.model.apply(run.params, run.model_state, inputs, train=False)[0])


def test_an_ffn_pruned_run_exports_to_transformers(run, tmp_path):
    import torch
    import transformers

    from ftjax.export import export_run

    base, batch = run
    pruned = structured.prune_run(base, ffn_keep=0.5)
    assert pruned.record["checkpoint_config"]["intermediate_size"] == 37
    export_run(pruned, tmp_path / "hf", "hf")
    model, info = transformers.AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "hf", output_loading_info=True
    )
    assert not {k: v for k, v in info.items() if k != "error_msgs" and v}
    assert model.config.intermediate_size == 37
    with torch.no_grad():
        theirs = model.eval()(**{k: torch.as_tensor(v) for k, v in batch.items()}).logits.numpy()
    np.testing.assert_allclose(_run_logits(pruned, batch), theirs, atol=1e-4)


def test_a_head_pruned_run_is_refused_by_hf_and_round_trips_as_flax(run, tmp_path):
    from ftjax.export import ExportError, export_run, load_flax_export

    base, batch = run
    pruned = structured.prune_run(base, ffn_keep=0.5, heads_keep=3)
    with pytest.raises(ExportError, match="--format=flax"):
        export_run(pruned, tmp_path / "hf", "hf")
    assert not (tmp_path / "hf").exists()
    export_run(pruned, tmp_path / "flax", "flax")
    back = load_flax_export(tmp_path / "flax")
    assert back.record["checkpoint_config"]["attention_head_size"] == 6  # 42 / 7
    np.testing.assert_array_equal(_run_logits(back, batch), _run_logits(pruned, batch))
