"""ViT loaded from transformers checkpoints computes what transformers computes."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from arch_checkpoints import loud

from ftjax.models import vit
from ftjax.models.base import flat_paths
from ftjax.pretrained import posemb
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


# Unusual sizes for the interpolation test: hidden 30 over 5 heads, patch 4 at 28 px (7 x 7).
ODD = dict(
    hidden_size=30,
    num_hidden_layers=3,
    num_attention_heads=5,
    intermediate_size=38,
    image_size=28,
    patch_size=4,
    layer_norm_eps=1e-6,
)


@pytest.mark.parametrize(
    "grid,new_grid,antialias",
    [(7, 5, False), (7, 9, False), (4, 11, False), (12, 5, False), (7, 5, True), (7, 9, True)],
)
def test_position_embeddings_resample_as_torch_interpolate(grid, new_grid, antialias):
    """posemb.resample is torch's bicubic (align_corners=False; antialiased for DINOv2 with
    registers) on the patch grid, the CLS position kept: what transformers' ViT / DINOv2
    `interpolate_pos_encoding` computes."""
    rng = np.random.default_rng(grid * new_grid)
    table = rng.standard_normal((1, 1 + grid * grid, 6)).astype(np.float32)
    patches = torch.from_numpy(table[:, 1:].reshape(1, grid, grid, 6)).permute(0, 3, 1, 2)
    ref = torch.nn.functional.interpolate(
        patches, size=(new_grid, new_grid), mode="bicubic", align_corners=False, antialias=antialias
    )
    ref = ref.permute(0, 2, 3, 1).reshape(1, -1, 6).numpy()
    ours = posemb.resample(table, new_grid, antialias=antialias)
    assert ours.shape == (1, 1 + new_grid * new_grid, 6)
    np.testing.assert_array_equal(ours[:, 0], table[:, 0])
    assert np.abs(ours[:, 1:] - ref).max() < 1e-5
    np.testing.assert_array_equal(posemb.resample(table, grid), table)  # same grid: unchanged


@pytest.mark.parametrize("size", [20, 36])
def test_vit_at_another_image_size_matches_transformers_interpolation(tmp_path, size):
    """A 28 px checkpoint loaded for `size` px images is a ViT at that size: its logits and
    pooled (CLS) features are transformers' with `interpolate_pos_encoding=True`."""
    torch.manual_seed(2)
    reference = transformers.ViTForImageClassification(
        transformers.ViTConfig(num_labels=5, **ODD)
    ).eval()
    loud(reference.classifier)  # O(1) logits, so that 1e-4 means something
    reference.save_pretrained(tmp_path)
    pre = load_pretrained(tmp_path, num_classes=5, image_size=size)
    assert sorted(pre.report.reinitialised) == ["head/bias", "head/kernel"]  # nothing mis-shaped
    assert "embeddings/position_embeddings" in pre.report.loaded
    assert pre.config["image_size"] == size and pre.preprocessing["image_size"] == size
    grid = size // 4
    assert pre.params["embeddings"]["position_embeddings"].shape == (1, 1 + grid * grid, 30)

    params = dict(pre.params)
    params["head"] = {
        "kernel": jnp.asarray(reference.classifier.weight.detach().numpy().T),
        "bias": jnp.asarray(reference.classifier.bias.detach().numpy()),
    }
    x = _images(3, size)
    with torch.no_grad():
        ref = reference(_nchw(x), interpolate_pos_encoding=True).logits.numpy()
        ref_hidden = reference.vit(_nchw(x), interpolate_pos_encoding=True).last_hidden_state
    module = pre.model.module
    hidden, ours = jax.jit(
        lambda p, x: (
            module.apply({"params": p}, x, method="encode"),
            module.apply({"params": p}, x),
        )
    )(params, jnp.asarray(x))
    logits_diff = np.abs(np.asarray(ours) - ref).max()
    pooled_diff = np.abs(np.asarray(hidden)[:, 0] - ref_hidden.numpy()[:, 0]).max()
    print(f"vit 28 -> {size} px: logits {logits_diff:.1e}, pooled (CLS) {pooled_diff:.1e}")
    assert logits_diff < 1e-4 and pooled_diff < 1e-4 and np.abs(ref).max() > 0.3


def test_image_sizes_that_cannot_be_built_are_named(tmp_path):
    transformers.ViTModel(transformers.ViTConfig(**ODD)).save_pretrained(tmp_path / "vit")
    with pytest.raises(ValueError, match=r"image size 30 is not a multiple of the checkpoint's "):
        load_pretrained(tmp_path / "vit", num_classes=2, image_size=30)
