"""Image preprocessing: decode, grey to 3 channels, resize, crop (for training a random crop and/or
a horizontal flip as `augment` says, see AUGMENTATIONS; center crop for evaluation), and the
model's own normalisation `(x - mean) / std` with mean/std in 0..255 pixel units.

The image is resized so its shorter side is `image_size * RESIZE_RATIO` (the usual 256->224 ratio),
then cropped to `image_size` square. `check_image_file` is the cheap open+verify that image
folders run on every file when they are read. Not here: reading folders (user.py), batching.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image

from ftjax.data.config import AUGMENTATIONS

__all__ = ["ImagePreprocessor", "check_image_file", "decode"]

RESIZE_RATIO = 256 / 224


def decode(image: np.ndarray | bytes | str | os.PathLike) -> np.ndarray:
    """uint8[H, W, C] from an array, encoded bytes, or an image file path."""
    if isinstance(image, np.ndarray):
        return image if image.ndim == 3 else image[:, :, None]
    source = io.BytesIO(image) if isinstance(image, bytes) else image
    try:
        with Image.open(source) as img:
            img = img.convert("RGB") if img.mode not in ("L", "RGB") else img
            arr = np.asarray(img)
    except (OSError, SyntaxError, ValueError) as e:  # PIL's errors for damaged data
        where = "an encoded image" if isinstance(image, bytes) else f"image file {image}"
        raise ValueError(
            f"cannot decode {where} ({type(e).__name__}: {e}); replace or delete it"
        ) from e
    return arr if arr.ndim == 3 else arr[:, :, None]


def check_image_file(path: str | os.PathLike) -> str | None:
    """Why PIL cannot read this image file, or None: the file is opened and verified (headers and
    checksums, no decoding), a fraction of a millisecond for a small PNG."""
    try:
        with Image.open(path) as img:
            img.verify()
    except Exception as e:  # PIL raises many types for damaged files
        return f"{type(e).__name__}: {e}"
    return None


def to_rgb(image: np.ndarray) -> np.ndarray:
    """Grey (C=1) to 3 channels; drop alpha."""
    if image.shape[-1] == 1:
        return np.repeat(image, 3, axis=-1)
    return image[:, :, :3]


def resize_shorter(image: np.ndarray, shorter: int) -> np.ndarray:
    h, w = image.shape[:2]
    scale = shorter / min(h, w)
    size = (max(shorter, round(w * scale)), max(shorter, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))


class ImagePreprocessor:
    """Turns one raw image into float32[S, S, 3], normalised; augmented as `augment` says when training."""

    def __init__(
        self,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        augment: str = "crop_flip",
    ):
        if augment not in AUGMENTATIONS:
            raise ValueError(f"augment is {augment!r}; use one of {list(AUGMENTATIONS)}")
        if image_size < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(
                f"mean and std need 3 values each (std > 0), got mean={mean} std={std}"
            )
        self.image_size = image_size
        self.crop = augment in ("crop_flip", "crop")
        self.flip = augment in ("crop_flip", "flip")
        self.resize_to = round(image_size * RESIZE_RATIO)
        self.mean = np.asarray(mean, np.float32)
        self.inv_std = 1.0 / np.asarray(std, np.float32)

    def _normalise(self, image: np.ndarray) -> np.ndarray:
        return (image.astype(np.float32) - self.mean) * self.inv_std

    def eval(self, raw) -> np.ndarray:
        return self._normalise(
            self._center_crop(resize_shorter(to_rgb(decode(raw)), self.resize_to))
        )

    def _center_crop(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        top, left = (h - self.image_size) // 2, (w - self.image_size) // 2
        return image[top : top + self.image_size, left : left + self.image_size]

    def train(self, raw, rng: np.random.Generator) -> np.ndarray:
        image = resize_shorter(to_rgb(decode(raw)), self.resize_to)
        if self.crop:
            h, w = image.shape[:2]
            top = int(rng.integers(0, h - self.image_size + 1))
            left = int(rng.integers(0, w - self.image_size + 1))
            image = image[top : top + self.image_size, left : left + self.image_size]
        else:
            image = self._center_crop(image)
        if self.flip and rng.random() < 0.5:
            image = image[:, ::-1]
        return self._normalise(image)
