"""ResNet loaded from transformers checkpoints computes what transformers computes."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from ftjax.models import resnet
from ftjax.models.base import flat_paths
from ftjax.pretrained.load import load_pretrained

RESNET18 = dict(layer_type="basic", depths=[2, 2, 2, 2], hidden_sizes=[64, 128, 256, 512])
RESNET50 = dict(layer_type="bottleneck", depths=[3, 4, 6, 3], hidden_sizes=[256, 512, 1024, 2048])
NUM_LABELS = 7


def _calibrated_classifier(sizes: dict, seed: int = 0) -> transformers.ResNetForImageClassification:
    """A random ResNetForImageClassification whose batch-norm running stats come from real batch statistics.

    With default stats (mean 0, var 1) activations of a random ResNet grow to ~1e3; calibrated
    stats keep them O(1), so an absolute tolerance means what it says.
    """
    torch.manual_seed(seed)
    model = transformers.ResNetForImageClassification(
        transformers.ResNetConfig(num_labels=NUM_LABELS, **sizes)
    )
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average: one batch sets the stats to that batch's
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.uniform_(m.bias, -0.2, 0.2)
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 64, 64))
    return model.eval()


def _torch_logits(model, x_nhwc):
    with torch.no_grad():
        return model(torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2).copy())).logits.numpy()


def _with_head(pre, classifier: torch.nn.Linear):
    params = jax.tree.map(lambda x: x, pre.params)
    params["head"] = {
        "kernel": jnp.asarray(classifier.weight.detach().numpy().T),
        "bias": jnp.asarray(classifier.bias.detach().numpy()),
    }
    return params


@pytest.mark.parametrize(
    "sizes,full_file",
    [(RESNET18, True), (RESNET50, False)],
    ids=["resnet18-for-classification", "resnet50-model"],
)
def test_resnet_matches_transformers_in_eval_mode(tmp_path, sizes, full_file):
    reference = _calibrated_classifier(sizes)
    # ResNetForImageClassification files carry a `resnet.` prefix and a classifier; ResNetModel files neither.
    (reference if full_file else reference.resnet).save_pretrained(tmp_path)
    pre = load_pretrained(tmp_path, num_classes=NUM_LABELS)
    assert pre.arch == "resnet"
    assert sorted(pre.report.reinitialised) == ["head/bias", "head/kernel"]
    assert all(not p.startswith("head/") for p in pre.report.loaded)

    x = np.random.default_rng(0).standard_normal((4, 64, 64, 3)).astype(np.float32)
    forward = jax.jit(lambda p, s, x: pre.model.apply(p, s, {"image": x}, train=False)[0])
    ours = np.asarray(forward(_with_head(pre, reference.classifier[1]), pre.state, jnp.asarray(x)))
    ref = _torch_logits(reference, x)
    assert np.abs(ref).max() > 0.1  # a real signal, not everything normalised away
    assert np.abs(ours - ref).max() < 1e-3


def test_layer_groups_and_preprocessing(tmp_path):
    transformers.ResNetModel(
        transformers.ResNetConfig(
            embedding_size=8, hidden_sizes=[8, 16], depths=[1, 2], layer_type="basic"
        )
    ).save_pretrained(tmp_path)
    pre = load_pretrained(tmp_path, num_classes=3)
    names = [n for n, _ in pre.model.layer_groups]
    assert names == ["embedder", "stage_0", "stage_1", "head"]
    for path in flat_paths(pre.params):
        assert sum(bool(re.fullmatch(rx, path)) for _, rx in pre.model.layer_groups) == 1, path
    assert pre.preprocessing["image_size"] == 224
    np.testing.assert_allclose(pre.preprocessing["mean"], (123.675, 116.28, 103.53))


@pytest.mark.slow  # compiles the model twice more
def test_bfloat16_compute_keeps_float32_params():
    cfg = resnet.ResNetConfig(
        num_classes=3,
        embedding_size=8,
        hidden_sizes=(8, 16),
        depths=(1, 1),
        layer_type="bottleneck",
    )
    f32, bf16 = (
        resnet.resnet_classifier(cfg),
        resnet.resnet_classifier(resnet.ResNetConfig(**{**cfg.__dict__, "dtype": "bfloat16"})),
    )
    batch = {
        "image": jnp.asarray(np.random.default_rng(0).standard_normal((2, 32, 32, 3)), jnp.float32)
    }
    params, state = jax.jit(lambda k: f32.init(k, batch))(jax.random.key(0))
    assert {
        p.dtype
        for p in jax.tree.leaves(jax.eval_shape(lambda: bf16.init(jax.random.key(0), batch))[0])
    } == {jnp.dtype("float32")}
    a, _ = jax.jit(lambda p, s: f32.apply(p, s, batch, train=False))(params, state)
    b, _ = jax.jit(lambda p, s: bf16.apply(p, s, batch, train=False))(params, state)
    assert (
        b.dtype == jnp.float32
        and np.abs(np.asarray(a) - np.asarray(b)).max() < 0.05 * np.abs(np.asarray(a)).max() + 1e-2
    )


def test_bad_config_is_named():
    with pytest.raises(ValueError, match="layer_type 'wide'"):
        resnet.ResNetConfig(num_classes=2, layer_type="wide")
    with pytest.raises(ValueError, match="same"):
        resnet.ResNetConfig(num_classes=2, hidden_sizes=(8, 16), depths=(1,))
