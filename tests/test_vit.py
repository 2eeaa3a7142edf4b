"""ViT loaded from transformers checkpoints computes what transformers computes."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from ftjax.models import vit
from ftjax.models.base import flat_paths
from ftjax.pretrained.load import load_pretrained

SMALL = dict(
    hidden_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=96,
    image_size=32,
    patch_size=8,
    layer_norm_eps=1e-6,
)


def _images(n=4, size=32):
    return np.random.default_rng(0).standard_normal((n, size, size, 3)).astype(np.float32)


def _nchw(x):
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def test_vit_model_hidden_states_match_transformers(tmp_path):
    torch.manual_seed(0)
    reference = transformers.ViTModel(
        transformers.ViTConfig(**SMALL)
    ).eval()  # has a pooler: ignored
    reference.save_pretrained(tmp_path)
    pre = load_pretrained(tmp_path, num_classes=5)
    assert pre.arch == "vit"
    assert sorted(pre.report.reinitialised) == ["head/bias", "head/kernel"]
    assert sorted(pre.report.ignored) == ["pooler.dense.bias", "pooler.dense.weight"]
    x = _images()
    with torch.no_grad():
        ref = reference(_nchw(x)).last_hidden_state.numpy()
    ours = jax.jit(lambda p, x: pre.model.module.apply({"params": p}, x, method="encode"))(
        pre.params, jnp.asarray(x)
    )
    assert np.abs(np.asarray(ours) - ref).max() < 1e-4


def test_vit_classifier_logits_match_transformers(tmp_path):
    torch.manual_seed(1)
    reference = transformers.ViTForImageClassification(
        transformers.ViTConfig(num_labels=5, **SMALL)
    ).eval()
    reference.save_pretrained(tmp_path)  # keys under `vit.`, plus `classifier.*`
    pre = load_pretrained(tmp_path, num_classes=5)
    params = jax.tree.map(lambda a: a, pre.params)
    params["head"] = {
        "kernel": jnp.asarray(reference.classifier.weight.detach().numpy().T),
        "bias": jnp.asarray(reference.classifier.bias.detach().numpy()),
    }
    x = _images()
    with torch.no_grad():
        ref = reference(_nchw(x)).logits.numpy()
    ours, _ = pre.model.apply(params, pre.state, {"image": jnp.asarray(x)}, train=False)
    assert np.abs(np.asarray(ours) - ref).max() < 1e-4
    assert pre.preprocessing == {"image_size": 32, "mean": (127.5,) * 3, "std": (127.5,) * 3}


def test_layer_groups_cover_every_param_once():
    model = vit.vit_classifier(vit.ViTConfig(num_classes=3, **SMALL))
    params, _ = jax.eval_shape(
        lambda: model.init(jax.random.key(0), {"image": jnp.zeros((1, 32, 32, 3))})
    )
    assert [n for n, _ in model.layer_groups] == [
        "embeddings",
        "layer_0",
        "layer_1",
        "layer_2",
        "layernorm",
        "head",
    ]
    for path in flat_paths(params):
        assert sum(bool(re.fullmatch(rx, path)) for _, rx in model.layer_groups) == 1, path


@pytest.mark.slow  # compiles the model twice more
def test_dropout_and_bfloat16():
    cfg = vit.ViTConfig(num_classes=3, hidden_dropout_prob=0.3, **SMALL)
    model, bf16 = (
        vit.vit_classifier(cfg),
        vit.vit_classifier(vit.ViTConfig(**{**cfg.__dict__, "dtype": "bfloat16"})),
    )
    batch = {"image": jnp.asarray(_images(2))}
    params, state = jax.jit(lambda k: model.init(k, batch))(jax.random.key(0))
    frozen = frozenset(flat_paths(params))

    def run(m, train, key=None, frozen=frozenset()):
        return np.asarray(
            jax.jit(lambda p: m.apply(p, state, batch, train=train, rng=key, frozen=frozen)[0])(
                params
            )
        )

    assert (
        np.abs(run(model, True, jax.random.key(1)) - run(model, True, jax.random.key(2))).max()
        > 1e-4
    )
    ref = run(model, False)
    np.testing.assert_array_equal(
        run(model, True, jax.random.key(1), frozen), ref
    )  # frozen: no dropout
    low = run(bf16, False)
    assert low.dtype == np.float32 and np.abs(low - ref).max() < 0.05 * np.abs(ref).max() + 1e-2


def test_wrong_image_size_is_named():
    model = vit.vit_classifier(vit.ViTConfig(num_classes=3, **SMALL))
    with pytest.raises(ValueError, match=r"\(48, 48, 3\).*\(32, 32, 3\)"):
        jax.eval_shape(lambda: model.init(jax.random.key(0), {"image": jnp.zeros((1, 48, 48, 3))}))
    with pytest.raises(ValueError, match="multiple of patch_size"):
        vit.ViTConfig(num_classes=3, image_size=30, patch_size=8)
