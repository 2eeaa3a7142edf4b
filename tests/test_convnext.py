"""ConvNeXt loaded from transformers checkpoints computes what transformers computes."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from ftjax.models import convnext
from ftjax.models.base import flat_paths
from ftjax.pretrained import registry
from ftjax.pretrained.load import load_pretrained

NUM_LABELS = 5
# Odd widths, one stage that keeps its width (it still downsamples), layer scale on and off.
WITH_LAYER_SCALE = dict(
    hidden_sizes=[12, 20, 28, 36], depths=[1, 2, 1, 1], layer_scale_init_value=0.5, image_size=44
)
NO_LAYER_SCALE = dict(
    hidden_sizes=[12, 12, 20, 28],
    depths=[2, 1, 1, 1],
    layer_scale_init_value=0.0,
    patch_size=2,
    hidden_act="gelu_new",
    layer_norm_eps=1e-5,
    image_size=40,
)


def _classifier(sizes: dict, seed: int = 0) -> transformers.ConvNextForImageClassification:
    """A random ConvNextForImageClassification whose LayerNorm affine params, biases and layer
    scales are random too (their 1 / 0 / constant init would let a swapped or dropped one pass)."""
    torch.manual_seed(seed)
    config = transformers.ConvNextConfig(num_labels=NUM_LABELS, initializer_range=0.1, **sizes)
    model = transformers.ConvNextForImageClassification(config)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1:  # LayerNorm weights and layer scales
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
    return model.eval()


def _pixels(x_nhwc: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2).copy())


@pytest.mark.parametrize(
    "sizes,full_file",
    [(WITH_LAYER_SCALE, True), (NO_LAYER_SCALE, False)],
    ids=["for-classification-layer-scale", "model-no-layer-scale"],
)
def test_convnext_matches_transformers_in_eval_mode(tmp_path, sizes, full_file):
    reference = _classifier(sizes)
    # ConvNextForImageClassification files carry a `convnext.` prefix and a classifier;
    # ConvNextModel files neither.
    (reference if full_file else reference.convnext).save_pretrained(tmp_path)
    pre = load_pretrained(tmp_path, num_classes=NUM_LABELS)
    assert pre.arch == "convnext"
    assert sorted(pre.report.reinitialised) == ["head/bias", "head/kernel"]
    has_scale = any(p.endswith("layer_scale_parameter") for p in flat_paths(pre.params))
    assert has_scale == (sizes["layer_scale_init_value"] > 0)

    size = sizes["image_size"]
    x = np.random.default_rng(0).standard_normal((3, size, size, 3)).astype(np.float32)
    params = jax.tree.map(lambda a: a, pre.params)
    params["head"] = {
        "kernel": jnp.asarray(reference.classifier.weight.detach().numpy().T),
        "bias": jnp.asarray(reference.classifier.bias.detach().numpy()),
    }
    module = pre.model.module
    pooled = jax.jit(lambda p, x: module.apply({"params": p}, x, method="encode"))
    logits = jax.jit(lambda p, x: pre.model.apply(p, {}, {"image": x}, train=False)[0])
    with torch.no_grad():
        ref_logits = reference(_pixels(x)).logits.numpy()
        ref_pooled = reference.convnext(_pixels(x)).pooler_output.numpy()
    ours_pooled = np.asarray(pooled(params, jnp.asarray(x)))
    ours_logits = np.asarray(logits(params, jnp.asarray(x)))
    pooled_diff = np.abs(ours_pooled - ref_pooled).max()
    logits_diff = np.abs(ours_logits - ref_logits).max()
    print(f"pooled max abs diff {pooled_diff:.2e}, logits {logits_diff:.2e}")
    assert np.abs(ref_logits).max() > 0.1  # a real signal
    assert pooled_diff < 1e-4 and logits_diff < 1e-4


def test_drop_path_is_stochastic_in_training_and_rises_with_depth(tmp_path):
    reference = _classifier(dict(WITH_LAYER_SCALE, drop_path_rate=0.3))
    reference.convnext.save_pretrained(tmp_path)
    pre = load_pretrained(tmp_path, num_classes=2)
    cfg = pre.model.module.cfg
    expected = [
        t.tolist()
        for t in torch.linspace(0, 0.3, sum(cfg.depths)).split(WITH_LAYER_SCALE["depths"])
    ]
    np.testing.assert_allclose(sum(convnext.drop_path_rates(cfg), []), sum(expected, []), 1e-6)
    x = {
        "image": jnp.asarray(np.random.default_rng(0).standard_normal((4, 44, 44, 3)), jnp.float32)
    }
    train = jax.jit(lambda p, r: pre.model.apply(p, {}, x, train=True, rng=r)[0])
    a, b = (np.asarray(train(pre.params, jax.random.key(i))) for i in (1, 2))
    assert not np.array_equal(a, b)
    # model.dropout overrides the checkpoint's rate; 0 turns stochastic depth off.
    off = load_pretrained(tmp_path, num_classes=2, dropout=0.0)
    assert off.model.module.cfg.drop_path_rate == 0.0
    train_off = jax.jit(lambda p, r: off.model.apply(p, {}, x, train=True, rng=r)[0])
    np.testing.assert_array_equal(
        np.asarray(train_off(pre.params, jax.random.key(1))),
        np.asarray(train_off(pre.params, jax.random.key(2))),
    )


def test_layer_groups_preprocessing_and_detection(tmp_path):
    config = transformers.ConvNextConfig(
        num_stages=2, hidden_sizes=[8, 12], depths=[1, 1], image_size=56
    )
    transformers.ConvNextModel(config).save_pretrained(tmp_path)
    pre = load_pretrained(tmp_path, num_classes=3)
    names = [n for n, _ in pre.model.layer_groups]
    assert names == ["embeddings", "stage_0", "stage_1", "layernorm", "head"]
    for path in flat_paths(pre.params):
        assert sum(bool(re.fullmatch(rx, path)) for _, rx in pre.model.layer_groups) == 1, path
    assert pre.preprocessing["image_size"] == 56
    np.testing.assert_allclose(pre.preprocessing["mean"], (123.675, 116.28, 103.53))
    np.testing.assert_allclose(pre.preprocessing["std"], (58.395, 57.12, 57.375))
    arch = registry.get("convnext")
    assert arch.detect({"architectures": ["ConvNextForImageClassification"]})
    assert not arch.detect({"model_type": "convnextv2", "architectures": ["ConvNextV2Model"]})
    with pytest.raises(ValueError, match="num_stages 3 differs"):
        convnext.ConvNextConfig.from_hf({"num_stages": 3, "depths": [1, 1]}, num_classes=2)
