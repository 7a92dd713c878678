"""scikit-learn's digits at 32 x 32 (``data.name = "digits32"``): the built-in 32 x 32 image set
for CPU-sized latent-space runs (an f = 4 autoencoder gives 8 x 8 latents), no download.

Each 8 x 8 digit of :func:`diffusion_jax.data.images.load_digits` (same split, same order) is
upsampled by **bilinear interpolation with half-pixel centres and edge clamping** (the
``align_corners=False`` convention of Pillow / OpenCV / ``jax.image.resize`` for upsampling):
output pixel ``i`` samples the input at ``(i + 0.5) / factor - 0.5``. The interpolation is a
fixed separable matrix in float64 followed by ``rint``, so the images are bit-identical on every
machine. Bilinear rather than bicubic: it never overshoots, so no value is clipped.

:func:`box_downsample` averages ``factor x factor`` blocks: the 32 -> 8 map used to feed the
bundled 8 x 8 digits classifier (FID / rFID features of 32 x 32 samples).
"""

from __future__ import annotations

import numpy as np

from diffusion_jax.data.images import load_digits

__all__ = ["DIGITS32_SIZE", "bilinear_matrix", "upsample_bilinear", "box_downsample",
           "load_digits32"]

DIGITS32_SIZE = 32


def bilinear_matrix(size_in: int, size_out: int) -> np.ndarray:
    """``(size_out, size_in)`` float64 rows of bilinear weights (half-pixel centres, edges
    clamped); every row sums to 1."""
    if not (isinstance(size_in, int) and isinstance(size_out, int) and size_in >= 1
            and size_out >= 1):
        raise ValueError(f"sizes must be positive ints; got {size_in!r}, {size_out!r}")
    position = (np.arange(size_out) + 0.5) * (size_in / size_out) - 0.5
    position = np.clip(position, 0.0, size_in - 1)
    left = np.floor(position).astype(np.int64)
    right = np.minimum(left + 1, size_in - 1)
    weight = position - left
    matrix = np.zeros((size_out, size_in))
    rows = np.arange(size_out)
    np.add.at(matrix, (rows, left), 1.0 - weight)
    np.add.at(matrix, (rows, right), weight)
    return matrix


def upsample_bilinear(images_uint8, size: int) -> np.ndarray:
    """uint8 ``(N, H, W, C)`` images resized to ``(N, size, size, C)`` by
    :func:`bilinear_matrix` in both axes, rounded to the nearest integer."""
    images = np.asarray(images_uint8)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images (N, H, W, C); got {images.dtype} {images.shape}")
    rows = bilinear_matrix(images.shape[1], size)
    cols = bilinear_matrix(images.shape[2], size)
    resized = np.einsum("ih,nhwc,jw->nijc", rows, images.astype(np.float64), cols)
    return np.clip(np.rint(resized), 0, 255).astype(np.uint8)


def box_downsample(images, factor: int) -> np.ndarray:
    """The mean of each ``factor x factor`` block of ``(N, H, W, C)`` images (H, W divisible by
    ``factor``); uint8 in, uint8 out (rounded), floats stay floats."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"expected images (N, H, W, C); got shape {images.shape}")
    n, height, width, channels = images.shape
    if not isinstance(factor, int) or factor < 1 or height % factor or width % factor:
        raise ValueError(f"factor {factor!r} must be a positive int dividing the image size "
                         f"{height} x {width}")
    blocks = images.reshape(n, height // factor, factor, width // factor, factor, channels)
    mean = blocks.astype(np.float64).mean(axis=(2, 4))
    if images.dtype == np.uint8:
        return np.clip(np.rint(mean), 0, 255).astype(np.uint8)
    return mean.astype(images.dtype)


def load_digits32(split="train", *, test_fraction=0.2, seed=0):
    """The digits of :func:`load_digits` (same ``split``, ``test_fraction``, ``seed``, order and
    labels) upsampled to 32 x 32: ``(images uint8 (N, 32, 32, 1), labels int32 (N,))``."""
    images, labels = load_digits(split, test_fraction=test_fraction, seed=seed)
    return upsample_bilinear(images, DIGITS32_SIZE), labels
