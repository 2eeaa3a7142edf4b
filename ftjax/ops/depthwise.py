"""Depthwise 2-D convolution with TF 'SAME' padding as shifted multiply-adds, with a hand-written VJP.

`depthwise_conv(x, kernel, stride)` computes what `lax.conv_general_dilated` with
`feature_group_count=C` and TensorFlow 'SAME' padding computes, in a form XLA:CPU runs fast;
`CPU_COMPILER_OPTIONS` are the XLA:CPU options a model built on it should compile with
(`Model.cpu_compiler_options`). Not for: the Flax layer holding the kernel parameter
(`ftjax.models.efficientnet.DepthwiseConv`) or choosing compiler options per platform
(`ftjax.compile.compile_lowered`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["CPU_COMPILER_OPTIONS", "depthwise_conv", "same_padding"]

# Why these options: XLA:CPU (jax 0.10) hands reductions, here mostly the per-tap sums of this
# kernel's weight gradient (`_kernel_grad`), to YNNPACK, which takes their inputs as whole buffers
# instead of fused loops. With YNNPACK fusion off (an empty fusion-type list), the
# EfficientNet-Lite0 full step (b64, 64x64) needs 306 instead of 438 MiB of temporaries and is
# 2-6% faster. It is an option of the whole compiled step, not of this op, and other models pay
# for it (BERT's training step is ~27% slower with it off), so a model that uses this kernel opts
# in by naming it in `Model.cpu_compiler_options` (benchmarks/results/vs_pytorch_notes.md).
CPU_COMPILER_OPTIONS: tuple[tuple[str, str], ...] = (("xla_cpu_experimental_ynn_fusion_type", ""),)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding (before, after) of one spatial dimension."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _shifted_sum(
    xp: jax.Array, kernel: jax.Array, stride: int, out_hw: tuple[int, int]
) -> jax.Array:
    """sum over taps (i, j) of xp[:, i::stride, j::stride, :] * kernel[i, j]: a VALID depthwise conv."""
    k = kernel.shape[0]
    b, _, _, c = xp.shape
    ho, wo = out_hw
    out = None
    for i in range(k):
        for j in range(k):
            end = (b, i + (ho - 1) * stride + 1, j + (wo - 1) * stride + 1, c)
            term = lax.slice(xp, (0, i, j, 0), end, (1, stride, stride, 1)) * kernel[i, j, 0]
            out = term if out is None else out + term
    return out


def _depthwise_forward(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    k = kernel.shape[0]
    _, h, w, _ = x.shape
    xp = jnp.pad(x, ((0, 0), same_padding(h, k, stride), same_padding(w, k, stride), (0, 0)))
    return _shifted_sum(xp, kernel, stride, (-(-h // stride), -(-w // stride)))


# Batch chunk for the kernel gradient: small enough that a chunk of x and of the output
# gradient stay in cache while all k*k tap reductions read them.
_KERNEL_GRAD_CHUNK_BYTES = 1 << 19


def _kernel_grad(x: jax.Array, g: jax.Array, k: int, stride: int) -> jax.Array:
    """d(loss)/d(kernel) (k, k, 1, C): per tap, sum of shifted x times g, over a scan of batch chunks."""
    b, h, w, c = x.shape
    ho, wo = g.shape[1:3]
    per_example = h * w * c * x.dtype.itemsize
    n = max(1, min(b, _KERNEL_GRAD_CHUNK_BYTES // per_example))
    while b % n:
        n -= 1
    pads = ((0, 0), same_padding(h, k, stride), same_padding(w, k, stride), (0, 0))

    def chunk(acc, xg):
        xc, gc = xg
        xp = jnp.pad(xc, pads)
        taps = []
        for i in range(k):
            for j in range(k):
                end = (n, i + (ho - 1) * stride + 1, j + (wo - 1) * stride + 1, c)
                tap = lax.slice(xp, (0, i, j, 0), end, (1, stride, stride, 1))
                taps.append(jnp.sum((tap * gc).astype(jnp.float32), axis=(0, 1, 2)))
        return acc + jnp.stack(taps), None

    chunks = (x.reshape(b // n, n, h, w, c), g.reshape(b // n, n, ho, wo, c))
    acc, _ = lax.scan(chunk, jnp.zeros((k * k, c), jnp.float32), chunks)
    return acc.reshape(k, k, 1, c)


def _input_grad(g: jax.Array, kernel: jax.Array, stride: int, in_hw: tuple[int, int]) -> jax.Array:
    """d(loss)/dx: g dilated by the stride and padded, correlated with the flipped kernel."""
    k = kernel.shape[0]
    h, w = in_hw
    ho, wo = g.shape[1:3]
    (pt, _), (pl, _) = same_padding(h, k, stride), same_padding(w, k, stride)
    spread_h, spread_w = (ho - 1) * stride + 1, (wo - 1) * stride + 1
    gp = lax.pad(
        g,
        jnp.zeros((), g.dtype),
        [
            (0, 0, 0),
            (k - 1 - pt, h + pt - spread_h, stride - 1),
            (k - 1 - pl, w + pl - spread_w, stride - 1),
            (0, 0, 0),
        ],
    )
    return _shifted_sum(gp, kernel[::-1, ::-1], 1, (h, w))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def depthwise_conv(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """Depthwise 2-D convolution with TF 'SAME' padding: x (B, H, W, C), kernel (k, k, 1, C).

    Why not `lax.conv_general_dilated(feature_group_count=C)`: XLA's CPU grouped convolution is
    very slow (a 5x5 depthwise conv on 64x16x16x240 took 116 ms forward and 298 ms for its
    gradients). A sum of k*k shifted multiply-adds fuses into one loop and gives the same result
    within float rounding. Its autodiff gradient is dominated by k*k full-size pads (the
    strided-slice transposes) and k*k separate reductions over the whole batch, so the backward
    pass is written by hand: the input gradient is the same shifted sum on the dilated output
    gradient with the flipped kernel (stride 1), and the kernel gradient reduces cache-sized
    batch chunks in a scan.
    """
    return _depthwise_forward(x, kernel, stride)


def _depthwise_fwd(x, kernel, stride):
    return _depthwise_forward(x, kernel, stride), (x, kernel)


def _depthwise_bwd(stride, residuals, g):
    x, kernel = residuals
    # For strided layers too: autodiff's transpose of the k*k strided slices pads a full-size
    # zero tensor per tap; on Lite0's 5x5 stride-2 layers (b64) the dilated g is ~4x faster, on
    # its 3x3 ones ~15% slower (benchmarks/results/vs_pytorch_notes.md).
    dx = _input_grad(g, kernel, stride, x.shape[1:3])
    dk = _kernel_grad(x, g, kernel.shape[0], stride).astype(kernel.dtype)
    return dx, dk


depthwise_conv.defvjp(_depthwise_fwd, _depthwise_bwd)
