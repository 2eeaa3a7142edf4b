"""DistilBERT and ELECTRA loaded from random transformers checkpoints of odd sizes compute what
transformers' PyTorch implementation computes (hidden states and classifier logits, float32)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from arch_checkpoints import loud, save_distilbert, save_electra

from ftjax.models import distilbert
from ftjax.pretrained.load import load_pretrained


def _torch(batch, keys):
    return {k: torch.as_tensor(batch[k]) for k in keys}


def _encode(pre, batch):
    keys = [k for k in pre.model.input_keys if k != "token_type_ids"]
    fn = jax.jit(lambda p, *x: pre.model.module.apply({"params": p}, *x, method="encode"))
    return np.asarray(fn(pre.params, *(jnp.asarray(batch[k]) for k in keys)))


def _head_from(params, dense, out_proj):
    t = lambda x: jnp.asarray(x.detach().numpy())
    params = jax.tree.map(lambda x: x, params)
    params["head"] = {
        name: {"kernel": t(layer.weight).T, "bias": t(layer.bias)}
        for name, layer in (("dense", dense), ("out_proj", out_proj))
    }
    return params


def _logits(pre, params, batch):
    batch = {k: jnp.asarray(v, jnp.int32) for k, v in batch.items()}
    return np.asarray(pre.model.apply(params, pre.state, batch, train=False)[0])


def test_distilbert_hidden_states_match_transformers(tmp_path):
    saved = save_distilbert(tmp_path, n_layers=3)
    pre = load_pretrained(tmp_path, num_classes=4)
    assert pre.arch == "distilbert" and pre.model.input_keys == ("input_ids", "attention_mask")
    assert [g for g, _ in pre.model.layer_groups] == [
        "embeddings",
        "layer_0",
        "layer_1",
        "layer_2",
        "head",
    ]
    with torch.no_grad():
        ref = saved.reference(**_torch(saved.batch, ("input_ids", "attention_mask")))
    diff = np.abs(_encode(pre, saved.batch) - ref.last_hidden_state.numpy()).max()
    print(f"distilbert hidden max abs diff {diff:.2e}")
    assert diff < 1e-4


def test_distilbert_classifier_logits_match_transformers(tmp_path):
    saved = save_distilbert(tmp_path, head=True, dim=35, n_heads=7, activation="relu")
    pre = load_pretrained(tmp_path, num_classes=4)
    assert {"pre_classifier.weight", "classifier.bias"} <= set(pre.report.ignored)
    ref_model = saved.reference
    loud(ref_model.pre_classifier, ref_model.classifier)
    params = _head_from(pre.params, ref_model.pre_classifier, ref_model.classifier)
    with torch.no_grad():
        ref = ref_model(**_torch(saved.batch, ("input_ids", "attention_mask"))).logits.numpy()
    diff = np.abs(_logits(pre, params, saved.batch) - ref).max()
    print(f"distilbert logits max abs diff {diff:.2e}")
    assert diff < 1e-4


@pytest.mark.parametrize("head", ["pretraining", ""], ids=["discriminator", "model"])
def test_electra_hidden_states_match_transformers(tmp_path, head):
    saved = save_electra(tmp_path, head=head, num_hidden_layers=3)
    pre = load_pretrained(tmp_path, num_classes=4)
    assert pre.arch == "electra"
    if head:
        assert "discriminator_predictions.dense.weight" in pre.report.ignored
    assert [g for g, rx in pre.model.layer_groups][:2] == ["embeddings", "layer_0"]
    encoder = saved.reference.electra if head else saved.reference
    with torch.no_grad():
        ref = encoder(**_torch(saved.batch, ("input_ids", "attention_mask", "token_type_ids")))
    diff = np.abs(_encode(pre, saved.batch) - ref.last_hidden_state.numpy()).max()
    print(f"electra ({head or 'model'}) hidden max abs diff {diff:.2e}")
    assert diff < 1e-4


def test_electra_classifier_logits_match_transformers(tmp_path):
    saved = save_electra(
        tmp_path, head="cls", embedding_size=27, hidden_size=27, num_attention_heads=9
    )
    pre = load_pretrained(tmp_path, num_classes=4)
    assert "embeddings_project/kernel" not in str(pre.report.loaded)  # same widths: no projection
    classifier = saved.reference.classifier
    loud(classifier.dense, classifier.out_proj)
    params = _head_from(pre.params, classifier.dense, classifier.out_proj)
    with torch.no_grad():
        ref = saved.reference(
            **_torch(saved.batch, ("input_ids", "attention_mask", "token_type_ids"))
        ).logits.numpy()
    diff = np.abs(_logits(pre, params, saved.batch) - ref).max()
    print(f"electra logits max abs diff {diff:.2e}")
    assert diff < 1e-4


def test_distilbert_config_names_map_to_the_shared_names():
    cfg = distilbert.DistilBertConfig.from_hf(
        dict(vocab_size=50, dim=24, n_layers=2, n_heads=4, hidden_dim=40, dropout=0.2),
        num_classes=2,
    )
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (24, 2, 4)
    assert (cfg.intermediate_size, cfg.hidden_dropout_prob) == (40, 0.2)
    with pytest.raises(ValueError, match="not a multiple of num_attention_heads"):
        distilbert.DistilBertConfig.from_hf(
            dict(vocab_size=50, dim=24, n_layers=2, n_heads=5, hidden_dim=40), num_classes=2
        )
