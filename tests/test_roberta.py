"""RoBERTa and XLM-R loaded from random transformers checkpoints of odd sizes compute what
transformers' PyTorch implementation computes (hidden states and classifier logits, float32)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from arch_checkpoints import loud, save_bpe_tokenizer, save_roberta

from ftjax.models import roberta
from ftjax.pretrained.load import load_pretrained

SIZES = dict(num_hidden_layers=3)  # hidden 45, 5 heads, vocab 113, intermediate 67


def _torch(batch):
    return {k: torch.as_tensor(v) for k, v in batch.items()}


def _encode(pre, batch):
    fn = jax.jit(
        lambda p, ids, mask: pre.model.module.apply({"params": p}, ids, mask, method="encode")
    )
    return np.asarray(
        fn(pre.params, jnp.asarray(batch["input_ids"]), jnp.asarray(batch["attention_mask"]))
    )


def _with_classifier(params, classifier):
    """The loaded params with transformers' classifier (dense, out_proj) as the head."""
    t = lambda x: jnp.asarray(x.detach().numpy())
    params = jax.tree.map(lambda x: x, params)
    params["head"] = {
        name: {
            "kernel": t(getattr(classifier, name).weight).T,
            "bias": t(getattr(classifier, name).bias),
        }
        for name in ("dense", "out_proj")
    }
    return params


def test_roberta_hidden_states_match_transformers(tmp_path):
    saved = save_roberta(tmp_path, **SIZES)
    pre = load_pretrained(tmp_path, num_classes=4)
    assert pre.arch == "roberta"
    assert sorted(pre.report.reinitialised) == [
        "head/dense/bias",
        "head/dense/kernel",
        "head/out_proj/bias",
        "head/out_proj/kernel",
    ]
    assert [g for g, _ in pre.model.layer_groups] == [
        "embeddings",
        "layer_0",
        "layer_1",
        "layer_2",
        "head",
    ]
    batch = saved.batch
    assert batch["attention_mask"].min() == 0 and (batch["input_ids"] == 1).any()  # padded
    with torch.no_grad():
        ref = saved.reference(**_torch(batch)).last_hidden_state.numpy()
    diff = np.abs(_encode(pre, batch) - ref).max()
    print(f"roberta hidden max abs diff {diff:.2e}")
    assert diff < 1e-4


@pytest.mark.parametrize("xlm", [False, True], ids=["roberta", "xlm-roberta"])
def test_sequence_classification_logits_match_transformers(tmp_path, xlm):
    saved = save_roberta(
        tmp_path, head=True, xlm=xlm, **SIZES, hidden_size=51, num_attention_heads=3
    )
    pre = load_pretrained(tmp_path, num_classes=4)
    assert pre.arch == "roberta" and pre.config["model_type"] == (
        "xlm-roberta" if xlm else "roberta"
    )
    assert {"classifier.dense.weight", "classifier.out_proj.bias"} <= set(pre.report.ignored)
    loud(saved.reference.classifier.dense, saved.reference.classifier.out_proj)
    params = _with_classifier(pre.params, saved.reference.classifier)
    batch = {k: jnp.asarray(v, jnp.int32) for k, v in saved.batch.items()}
    logits, _ = pre.model.apply(params, pre.state, batch, train=False)
    with torch.no_grad():
        ref = saved.reference(**_torch(saved.batch)).logits.numpy()
    diff = np.abs(np.asarray(logits) - ref).max()
    print(f"{'xlm-roberta' if xlm else 'roberta'} logits max abs diff {diff:.2e}")
    assert diff < 1e-4


def test_position_ids_skip_padding_and_start_after_the_padding_index():
    ids = jnp.array([[0, 7, 9, 2, 1, 1], [0, 5, 2, 1, 1, 1]])
    np.testing.assert_array_equal(
        roberta.position_ids(ids, 1), [[2, 3, 4, 5, 1, 1], [2, 3, 4, 1, 1, 1]]
    )


def test_tokenizer_and_max_length_come_from_the_checkpoint(tmp_path):
    save_roberta(tmp_path)  # max_position_embeddings 34, pad 1: 32 usable positions
    pre = load_pretrained(tmp_path, num_classes=2)
    assert pre.preprocessing == {"tokenizer_file": str(tmp_path), "max_length": 32}
    save_bpe_tokenizer(tmp_path, ["a tiny corpus for a tiny tokenizer"] * 4, vocab_size=280)
    pre = load_pretrained(tmp_path, num_classes=2)
    assert pre.preprocessing["tokenizer_file"] == str(tmp_path / "tokenizer.json")


def test_bad_configs_are_clear_errors():
    base = dict(vocab_size=50, hidden_size=20, num_hidden_layers=1, intermediate_size=8)
    with pytest.raises(ValueError, match="not a multiple of num_attention_heads"):
        roberta.RobertaConfig.from_hf({**base, "num_attention_heads": 3}, num_classes=2)
    with pytest.raises(ValueError, match="position_embedding_type"):
        roberta.RobertaConfig.from_hf(
            {**base, "num_attention_heads": 4, "position_embedding_type": "relative_key"},
            num_classes=2,
        )
