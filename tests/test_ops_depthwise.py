"""ftjax.ops.depthwise computes what XLA's grouped convolution computes, values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from ftjax.models import efficientnet
from ftjax.ops import depthwise


def _grouped(x, w, stride):
    """The reference: lax's depthwise (feature_group_count=C) conv with TF 'SAME' padding."""
    pads = [
        depthwise.same_padding(x.shape[1], w.shape[0], stride),
        depthwise.same_padding(x.shape[2], w.shape[0], stride),
    ]
    return lax.conv_general_dilated(
        x,
        w,
        (stride, stride),
        pads,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=x.shape[-1],
    )


def _loss(conv):
    # A non-linear loss: the gradients depend on the output, not only on the inputs.
    return lambda x, w: jnp.sum(jnp.sin(conv(x, w)))


def _inputs(shape, kernel, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    w = jnp.asarray(rng.standard_normal((kernel, kernel, 1, shape[-1])), jnp.float32)
    return x, w


@pytest.mark.parametrize(
    "shape,kernel,stride",
    [((2, 9, 11, 5), 3, 1), ((2, 9, 11, 5), 5, 2), ((3, 8, 8, 4), 5, 1), ((3, 8, 8, 4), 3, 2)],
)
def test_depthwise_conv_matches_grouped_conv_values_and_gradients(shape, kernel, stride):
    x, w = _inputs(shape, kernel)
    grouped = lambda x, w: _grouped(x, w, stride)
    np.testing.assert_allclose(depthwise.depthwise_conv(x, w, stride), grouped(x, w), atol=1e-5)
    ours = jax.grad(_loss(lambda x, w: depthwise.depthwise_conv(x, w, stride)), (0, 1))(x, w)
    ref = jax.grad(_loss(grouped), (0, 1))(x, w)
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.mark.parametrize(
    "shape,kernel,stride",
    [
        ((1, 6, 6, 3), 1, 1),  # a 1x1 kernel: one tap, no padding
        ((1, 6, 7, 3), 1, 2),  # strided 1x1: SAME pads nothing, drops every other pixel
        ((2, 7, 7, 3), 7, 1),  # the kernel as large as the image
        ((2, 4, 5, 3), 7, 1),  # larger than the image: the taps read mostly padding
        ((2, 10, 13, 6), 7, 2),
        ((2, 10, 9, 2), 3, 3),  # stride 3, sizes not a multiple of it
        ((1, 1, 1, 4), 3, 2),  # a single pixel
    ],
)
def test_kernel_sizes_strides_and_edge_shapes_match_grouped_conv_under_jit(shape, kernel, stride):
    x, w = _inputs(shape, kernel, seed=1)
    ours_fn = jax.jit(lambda x, w: depthwise.depthwise_conv(x, w, stride))
    ref_fn = jax.jit(lambda x, w: _grouped(x, w, stride))
    out = ours_fn(x, w)
    assert (
        out.shape
        == ref_fn(x, w).shape
        == (shape[0], -(-shape[1] // stride), -(-shape[2] // stride), shape[3])
    )
    np.testing.assert_allclose(out, ref_fn(x, w), atol=1e-5)
    ours = jax.jit(jax.grad(_loss(ours_fn), (0, 1)))(x, w)
    ref = jax.jit(jax.grad(_loss(ref_fn), (0, 1)))(x, w)
    for a, b in zip(ours, ref):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(a, b, atol=1e-4)


def _scan_lengths(jaxpr) -> list[int]:
    return [e.params["length"] for e in jaxpr.jaxpr.eqns if e.primitive.name == "scan"]


@pytest.mark.parametrize(
    "batch,chunks",
    [(6, 2), (5, 5)],  # 160 KiB examples: 3 fit a 512 KiB chunk; 5 is not a multiple of 3 or 2
)
def test_kernel_gradient_over_several_batch_chunks_matches_grouped_conv(batch, chunks):
    shape, kernel, stride = (batch, 16, 16, 160), 5, 1
    x, w = _inputs(shape, kernel, seed=2)
    g = jnp.ones((batch, 16, 16, 160), jnp.float32)
    scan = jax.make_jaxpr(lambda x, g: depthwise._kernel_grad(x, g, kernel, stride))(x, g)
    assert _scan_lengths(scan) == [chunks]  # the premise: the scan really runs several chunks
    ours = jax.jit(jax.grad(_loss(lambda x, w: depthwise.depthwise_conv(x, w, stride)), (0, 1)))(
        x, w
    )
    ref = jax.jit(jax.grad(_loss(lambda x, w: _grouped(x, w, stride)), (0, 1)))(x, w)
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)


def test_bfloat16_inputs_give_bfloat16_outputs_and_gradients_close_to_float32():
    x, w = _inputs((2, 8, 8, 4), 3, seed=3)
    x16, w16 = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
    out = depthwise.depthwise_conv(x16, w16, 2)
    assert out.dtype == jnp.bfloat16
    ref = _grouped(x16.astype(jnp.float32), w16.astype(jnp.float32), 2)
    np.testing.assert_allclose(out.astype(jnp.float32), ref, atol=0.1)
    dx, dw = jax.grad(_loss(lambda x, w: depthwise.depthwise_conv(x, w, 2)), (0, 1))(x16, w16)
    assert dx.dtype == dw.dtype == jnp.bfloat16
    rx, rw = jax.grad(_loss(lambda x, w: _grouped(x, w, 2)), (0, 1))(
        x16.astype(jnp.float32), w16.astype(jnp.float32)
    )
    np.testing.assert_allclose(dx.astype(jnp.float32), rx, atol=0.1)
    np.testing.assert_allclose(dw.astype(jnp.float32), rw, atol=0.1 * float(jnp.abs(rw).max()))


def test_same_padding_matches_tensorflow():
    assert depthwise.same_padding(224, 3, 2) == (0, 1)
    assert depthwise.same_padding(56, 5, 2) == (1, 2)
    assert depthwise.same_padding(7, 3, 1) == (1, 1)
    assert depthwise.same_padding(15, 5, 2) == (2, 2)


def test_efficientnet_declares_the_kernels_cpu_options_and_uses_the_kernel():
    cfg = efficientnet.EfficientNetConfig.lite("efficientnet-lite0", num_classes=2)
    model = efficientnet.efficientnet_lite(cfg)
    assert model.cpu_compiler_options is depthwise.CPU_COMPILER_OPTIONS
    assert depthwise.CPU_COMPILER_OPTIONS == (("xla_cpu_experimental_ynn_fusion_type", ""),)
    layer = efficientnet.DepthwiseConv(3, 2)
    x, w = _inputs((1, 6, 6, 4), 3, seed=4)
    np.testing.assert_array_equal(
        layer.apply({"params": {"kernel": w}}, x), depthwise.depthwise_conv(x, w, 2)
    )
