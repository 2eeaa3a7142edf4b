"""DeBERTa-v2 / v3 loaded from random transformers checkpoints of odd sizes compute what
transformers' PyTorch implementation computes (last hidden states at every position, padding
included, and sequence-classification logits, float32), in v3's layout (log position buckets,
shared attention keys, LayerNorm-ed relative embeddings, no absolute positions or token types) and
v2's (absolute positions, token types, separate position projections, clipped raw distances,
the ConvLayer, an embedding projection)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from arch_checkpoints import loud, save_deberta_v2, save_unigram_tokenizer
from flax import traverse_util
from transformers.models.deberta_v2.modeling_deberta_v2 import make_log_bucket_position

from ftjax.models import deberta_v2
from ftjax.pretrained.load import load_pretrained

TOL = 1e-4
V3 = {}  # save_deberta_v2's defaults: hidden 36, 3 heads, 3 layers, 8 buckets up to distance 10
V2 = dict(  # deberta-v2-xlarge's options at toy size; distances clipped at 6 of the 12 in the batch
    position_biased_input=True,
    type_vocab_size=2,
    share_att_key=False,
    norm_rel_ebd="none",
    position_buckets=-1,
    max_relative_positions=6,
    conv_kernel_size=3,
    conv_act="gelu",
    embedding_size=28,
)
V2_GROUPED = dict(  # one attention term, a grouped tanh ConvLayer, buckets of another size
    position_biased_input=True,
    pos_att_type="c2p",
    position_buckets=6,
    max_relative_positions=12,
    conv_kernel_size=5,
    conv_groups=3,
)
CONFIGS = {"v3": V3, "v2": V2, "v2-grouped": V2_GROUPED}


def _batch(saved, sizes):
    """The factory's padded batch, with random token types where the model has them."""
    batch = dict(saved.batch)
    if sizes.get("type_vocab_size"):
        rng = np.random.default_rng(1)
        batch["token_type_ids"] = rng.integers(
            0, sizes["type_vocab_size"], batch["input_ids"].shape
        )
    assert batch["attention_mask"].min() == 0 and (batch["input_ids"] == 0).any()  # padded
    return batch


def _torch(batch):
    return {k: torch.as_tensor(v) for k, v in batch.items()}


def _jax(batch):
    return {k: jnp.asarray(v, jnp.int32) for k, v in batch.items()}


def _encode(pre):
    def encode(params, batch):
        inputs = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        return pre.model.module.apply({"params": params}, *inputs, method="encode")[0]

    return jax.jit(encode)


def _logits(pre, params, batch):
    apply = jax.jit(lambda p, b: pre.model.apply(p, pre.state, b, train=False)[0])
    return np.asarray(apply(params, _jax(batch)))


def _dense(linear):
    t = lambda x: jnp.asarray(x.detach().numpy())
    return {"kernel": t(linear.weight).T, "bias": t(linear.bias)}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_hidden_states_match_transformers(tmp_path, name):
    sizes = CONFIGS[name]
    saved = save_deberta_v2(tmp_path, **sizes)
    pre = load_pretrained(tmp_path, num_classes=4)
    assert pre.arch == "deberta_v2"
    assert sorted(pre.report.reinitialised) == [
        "head/dense/bias",
        "head/dense/kernel",
        "head/out_proj/bias",
        "head/out_proj/kernel",
    ]
    groups = dict(pre.model.layer_groups)
    assert list(groups) == ["embeddings", "layer_0", "layer_1", "layer_2", "head"]
    assert groups["layer_0"] == ("encoder/(layer_0|conv)/.*" if sizes else "encoder/layer_0/.*")
    batch = _batch(saved, sizes)
    with torch.no_grad():
        ref = saved.reference(**_torch(batch)).last_hidden_state.numpy()
    encode = _encode(pre)
    ours = np.asarray(encode(pre.params, _jax(batch)))
    diff = np.abs(ours - ref).max()
    print(
        f"deberta-v2 {name} hidden max abs diff {diff:.2e} (max |hidden| {np.abs(ref).max():.2f})"
    )
    assert diff < TOL

    # Not vacuous: the relative positions move the hidden states far beyond the tolerance.
    flat = traverse_util.flatten_dict(pre.params, sep="/")
    table = flat["encoder/rel_embeddings/embedding"]
    flat["encoder/rel_embeddings/embedding"] = table[::-1]
    moved = np.asarray(encode(traverse_util.unflatten_dict(flat, sep="/"), _jax(batch)))
    assert np.abs(moved - ref).max() > 1000 * TOL


@pytest.mark.parametrize("name", ["v3", "v2"])
def test_sequence_classification_logits_match_transformers(tmp_path, name):
    """A DebertaV2ForSequenceClassification file: its ContextPooler loads as `pooler/dense` (a
    group of its own) and transformers' classifier as ftjax's head gives its logits. Loaded as
    a file without a pooler, the head is ContextPooler + classifier: the same logits."""
    sizes = CONFIGS[name]
    saved = save_deberta_v2(tmp_path, head=True, **sizes)
    reference = saved.reference
    loud(reference.classifier)
    batch = _batch(saved, sizes)
    with torch.no_grad():
        ref = reference(**_torch(batch)).logits.numpy()

    pre = load_pretrained(tmp_path, num_classes=4)
    assert {"pooler/dense/kernel", "pooler/dense/bias"} <= set(pre.report.loaded)
    assert sorted(pre.report.reinitialised) == ["head/out_proj/bias", "head/out_proj/kernel"]
    assert {"classifier.weight", "classifier.bias"} <= set(pre.report.ignored)
    assert [g for g, _ in pre.model.layer_groups][-2:] == ["pooler", "head"]
    params = {**pre.params, "head": {"out_proj": _dense(reference.classifier)}}
    diff = np.abs(_logits(pre, params, batch) - ref).max()

    bare = load_pretrained(tmp_path, num_classes=4, config={"architectures": ["DebertaV2Model"]})
    assert "pooler.dense.weight" in bare.report.ignored and "pooler" not in bare.params
    head = {"dense": _dense(reference.pooler.dense), "out_proj": _dense(reference.classifier)}
    logits, _ = bare.model.apply(
        {**bare.params, "head": head}, bare.state, _jax(batch), train=False
    )
    bare_diff = np.abs(np.asarray(logits) - ref).max()
    print(
        f"deberta-v2 {name} logits max abs diff {diff:.2e} (pretrained pooler), "
        f"{bare_diff:.2e} (pooler in the head); max |logit| {np.abs(ref).max():.2f}"
    )
    assert diff < TOL and bare_diff < TOL


def test_mean_and_token_heads_skip_the_pooler_and_the_tokenizer_is_the_checkpoints(tmp_path):
    saved = save_deberta_v2(tmp_path, head=True)
    save_unigram_tokenizer(tmp_path, ["a tiny corpus for a tiny tokenizer"] * 4, vocab_size=40)
    for pooling, head, shape in [
        ("mean", ["head/dense", "head/out_proj"], (3, 2)),
        ("tokens", ["head"], (3, 13, 2)),
    ]:
        pre = load_pretrained(tmp_path, num_classes=2, pooling=pooling)
        assert pre.preprocessing == {
            "tokenizer_file": str(tmp_path / "tokenizer.json"),
            "max_length": 40,
        }
        assert "pooler" not in pre.params and "pooler.dense.weight" in pre.report.ignored
        assert sorted({p.rsplit("/", 1)[0] for p in pre.report.reinitialised}) == head
        logits = _logits(pre, pre.params, saved.batch)
        assert logits.shape == shape and np.isfinite(logits).all()


@pytest.mark.parametrize("buckets,max_position", [(256, 512), (8, 10), (6, 12), (4, 8), (32, 64)])
def test_log_buckets_are_transformers(buckets, max_position):
    """Every distance a 2048-token input has, bucketed in float32 exactly as transformers does."""
    relative = np.arange(-2047, 2048)
    ref = make_log_bucket_position(torch.from_numpy(relative), buckets, max_position)
    ours = deberta_v2.log_bucket_position(relative, buckets, max_position)
    np.testing.assert_array_equal(ours, ref.long().numpy())


def test_the_pair_mask_masks_padded_queries_and_keys():
    bias = np.asarray(deberta_v2.pair_mask_bias(jnp.array([[1, 1, 0]])))[0, 0]
    np.testing.assert_array_equal(bias == 0, [[1, 1, 0], [1, 1, 0], [0, 0, 0]])


@pytest.mark.parametrize(
    "change,error",
    [
        ({"conv_kernel_size": 4}, "conv_kernel_size 4 must be 0 .* or odd"),
        ({"pos_att_type": "p2c|p2p"}, r"pos_att_type 'p2c\|p2p' has \['p2p'\]"),
        ({"pooler_hidden_size": 20}, "pooler_hidden_size 20 differs from hidden_size 36"),
        ({"relative_attention": False}, "norm_rel_ebd 'layer_norm' .* relative_attention false"),
        ({"norm_rel_ebd": "batch_norm"}, "norm_rel_ebd 'batch_norm' is not one of"),
        ({"conv_kernel_size": 3, "conv_act": "elu"}, "conv_act 'elu' is not supported"),
    ],
)
def test_bad_configs_are_clear_errors(change, error):
    hf = dict(
        vocab_size=50,
        hidden_size=36,
        num_hidden_layers=1,
        num_attention_heads=3,
        intermediate_size=8,
        relative_attention=True,
        norm_rel_ebd="layer_norm",
        pos_att_type="p2c|c2p",
    )
    with pytest.raises(ValueError, match=error):
        deberta_v2.DebertaV2Config.from_hf({**hf, **change}, num_classes=2)
