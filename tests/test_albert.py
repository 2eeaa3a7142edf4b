"""ALBERT loaded from random transformers checkpoints of odd sizes (shared layer groups included)
computes what transformers' PyTorch implementation computes, in float32."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from arch_checkpoints import loud, save_albert

from ftjax.models import albert
from ftjax.models.base import flat_paths
from ftjax.pretrained.load import load_pretrained

KEYS = ("input_ids", "attention_mask", "token_type_ids")


def _encode(pre, batch):
    fn = jax.jit(lambda p, *x: pre.model.module.apply({"params": p}, *x, method="encode"))
    return [np.asarray(a) for a in fn(pre.params, *(jnp.asarray(batch[k]) for k in KEYS))]


@pytest.mark.parametrize(
    "sizes",
    [dict(), dict(num_hidden_layers=5, num_hidden_groups=2, inner_group_num=2)],
    ids=["one-shared-layer", "2-groups-of-2-over-5"],
)
def test_albert_hidden_and_pooled_outputs_match_transformers(tmp_path, sizes):
    saved = save_albert(tmp_path, **sizes)
    pre = load_pretrained(tmp_path, num_classes=4)
    assert pre.arch == "albert"
    batch = {**saved.batch, "token_type_ids": (saved.batch["input_ids"] % 2)}  # both types
    with torch.no_grad():
        ref = saved.reference(**{k: torch.as_tensor(batch[k]) for k in KEYS})
    hidden, pooled = _encode(pre, batch)
    diffs = (
        np.abs(hidden - ref.last_hidden_state.numpy()).max(),
        np.abs(pooled - ref.pooler_output.numpy()).max(),
    )
    print(f"albert {sizes} hidden / pooled max abs diff {diffs[0]:.2e} / {diffs[1]:.2e}")
    assert max(diffs) < 1e-4


def test_shared_layers_are_one_set_of_params_and_one_group(tmp_path):
    save_albert(tmp_path, num_hidden_layers=5, num_hidden_groups=2, inner_group_num=2)
    pre = load_pretrained(tmp_path, num_classes=4)
    layers = {p.split("/attention/")[0] for p in flat_paths(pre.params) if "/attention/" in p}
    assert layers == {f"encoder/group_{g}/layer_{j}" for g in (0, 1) for j in (0, 1)}
    assert [g for g, _ in pre.model.layer_groups] == [
        "embeddings",
        "group_0",
        "group_1",
        "pooler",
        "head",
    ]
    cfg = albert.AlbertConfig.from_hf(pre.config, num_classes=4)
    assert [albert.group_of_layer(cfg, i) for i in range(5)] == [0, 0, 0, 1, 1]


def test_albert_classifier_logits_match_transformers(tmp_path):
    saved = save_albert(tmp_path, head=True, hidden_size=28, num_attention_heads=7)
    pre = load_pretrained(tmp_path, num_classes=4)
    assert {"classifier.weight", "classifier.bias"} <= set(pre.report.ignored)
    loud(saved.reference.classifier)
    params = jax.tree.map(lambda x: x, pre.params)
    c = saved.reference.classifier
    params["head"] = {
        "kernel": jnp.asarray(c.weight.detach().numpy().T),
        "bias": jnp.asarray(c.bias.detach().numpy()),
    }
    batch = {k: jnp.asarray(v, jnp.int32) for k, v in saved.batch.items()}
    logits = np.asarray(pre.model.apply(params, pre.state, batch, train=False)[0])
    with torch.no_grad():
        ref = saved.reference(**{k: torch.as_tensor(saved.batch[k]) for k in KEYS}).logits
    diff = np.abs(logits - ref.numpy()).max()
    print(f"albert logits max abs diff {diff:.2e}")
    assert diff < 1e-4


def test_bad_group_count_is_named():
    with pytest.raises(ValueError, match="num_hidden_groups 4 must be between 1 and"):
        albert.AlbertConfig(
            vocab_size=10,
            hidden_size=8,
            num_hidden_layers=3,
            num_attention_heads=2,
            intermediate_size=8,
            num_classes=2,
            num_hidden_groups=4,
        )
