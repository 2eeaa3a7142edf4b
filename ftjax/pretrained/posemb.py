"""A ViT checkpoint's position embeddings resampled to another patch grid, once, at load time.

A checkpoint trained at one resolution fine-tunes at another when its patch-grid position
embeddings are resized (big_vision's `resample_posemb`, transformers' `interpolate_pos_encoding`);
the leading CLS position is kept as it is. The weights here are PyTorch's
`F.interpolate(mode="bicubic", align_corners=False)`, exactly: Keys' cubic with a = -0.75 and
clamped borders, or with `antialias=True` (DINOv2 with registers) PIL's a = -0.5 filter widened
by the scale when shrinking and normalised. `jax.image.resize`'s cubic is another kernel, so a
model loaded here would not match transformers' outputs with it. Plain numpy: no torch at run time.

`Resample` is the key-rule transform (`ftjax.pretrained.arch`) that does this: a checkpoint at
the model's grid passes unchanged, one at another grid is resampled to it, so strict loading
sees the shape the model wants. Its export inverse is the identity: an exported model is written
at the size it was trained at.

Not for: choosing the size (`load_pretrained(image_size=...)`, `Architecture.at_image_size`).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

__all__ = ["bicubic_weights", "resample", "Resample"]


def _keys_cubic(x: np.ndarray, a: float) -> np.ndarray:
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def bicubic_weights(n_in: int, n_out: int, *, antialias: bool = False) -> np.ndarray:
    """(n_out, n_in) float64 matrix of PyTorch's 1-D bicubic resize (align_corners=False)."""
    scale = n_in / n_out
    weights = np.zeros((n_out, n_in))
    for i in range(n_out):
        if antialias:  # torch's _upsample_bicubic2d_aa: the filter support grows when shrinking
            support, inv = (2.0 * scale, 1.0 / scale) if scale >= 1.0 else (2.0, 1.0)
            center = scale * (i + 0.5)
            lo = max(int(center - support + 0.5), 0)
            hi = min(int(center + support + 0.5), n_in)
            taps = np.arange(lo, hi)
            w = _keys_cubic((taps - center + 0.5) * inv, -0.5)
            weights[i, taps] = w / w.sum()
        else:  # upsample_bicubic2d: 4 taps, indices clamped at the borders
            src = (i + 0.5) * scale - 0.5
            x0 = math.floor(src)
            t = src - x0
            w = _keys_cubic(np.array([t + 1, t, 1 - t, 2 - t]), -0.75)
            for tap, wt in zip(np.clip(np.arange(x0 - 1, x0 + 3), 0, n_in - 1), w, strict=True):
                weights[i, tap] += wt
    return weights


def resample(posemb: np.ndarray, grid: int, *, antialias: bool = False) -> np.ndarray:
    """[1, 1 + g*g, D] position embeddings (CLS first, then a g x g row-major grid) as
    [1, 1 + grid*grid, D]: the CLS position as is, the grid resized bicubically; unchanged when
    g == grid. Float32."""
    posemb = np.asarray(posemb, np.float32)
    if posemb.ndim != 3 or posemb.shape[0] != 1:
        raise ValueError(f"position embeddings have shape {posemb.shape}; expected [1, 1 + g*g, D]")
    n, dim = posemb.shape[1] - 1, posemb.shape[2]
    g = math.isqrt(n)
    if g * g != n:
        raise ValueError(
            f"position embeddings hold {n} patch positions, not a square grid: only square "
            "checkpoints can be resampled to another image size"
        )
    if g == grid:
        return posemb
    w = bicubic_weights(g, grid, antialias=antialias)
    patches = posemb[0, 1:].reshape(g, g, dim).astype(np.float64)
    resized = np.einsum("ih,hwd,jw->ijd", w, patches, w).reshape(1, grid * grid, dim)
    return np.concatenate([posemb[:, :1], resized.astype(np.float32)], axis=1)


@dataclasses.dataclass(frozen=True)
class Resample:
    """Key-rule transform: checkpoint position embeddings at the model's `grid` (patches a side)."""

    grid: int
    antialias: bool = False

    def __call__(self, posemb: np.ndarray) -> np.ndarray:
        return resample(posemb, self.grid, antialias=self.antialias)

    def inverse(self, posemb: np.ndarray) -> np.ndarray:
        return posemb  # params are at the model's own size, which its exported config states
