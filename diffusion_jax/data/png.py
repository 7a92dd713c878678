"""PNG writers for sample grids and 2-D point clouds (Pillow only, no display needed)."""

from __future__ import annotations

import math
import os

import numpy as np

from diffusion_jax.data.pixels import to_uint8

__all__ = ["image_grid", "save_image_grid", "scatter_image", "scatter_png"]


def image_grid(images_model_range, *, num_rows=None, padding=1, scale=1):
    """Tile ``(N, H, W, C)`` images in ``[-1, 1]`` into one uint8 array ``(rows, cols, C)``.

    ``num_rows`` defaults to ``ceil(sqrt(N))``; ``padding`` pixels of black separate tiles;
    ``scale`` repeats every pixel (nearest-neighbour upscaling, for 8x8 digits).
    """
    images = to_uint8(images_model_range)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must be (N, H, W, C) with C in (1, 3); got {images.shape}")
    count, height, width, channels = images.shape
    if count == 0:
        raise ValueError("no images to tile")
    num_rows = math.ceil(math.sqrt(count)) if num_rows is None else int(num_rows)
    if num_rows < 1:
        raise ValueError(f"num_rows must be >= 1; got {num_rows}")
    num_cols = math.ceil(count / num_rows)
    if scale > 1:
        images = images.repeat(scale, axis=1).repeat(scale, axis=2)
        height, width = height * scale, width * scale
    grid = np.zeros(
        (num_rows * (height + padding) + padding, num_cols * (width + padding) + padding, channels),
        np.uint8,
    )
    for index, image in enumerate(images):
        row, col = divmod(index, num_cols)
        top, left = padding + row * (height + padding), padding + col * (width + padding)
        grid[top:top + height, left:left + width] = image
    return grid


def save_image_grid(images_model_range, path, *, num_rows=None, padding=1, scale=None):
    """Write :func:`image_grid` of images in ``[-1, 1]`` to a PNG at ``path`` (Pillow); ``scale``
    defaults to ``max(1, 32 // H)`` so 8x8 digits stay visible. Returns the uint8 grid."""
    from PIL import Image

    images = np.asarray(images_model_range)
    if scale is None:
        scale = max(1, 32 // images.shape[1]) if images.ndim == 4 else 1
    grid = image_grid(images, num_rows=num_rows, padding=padding, scale=scale)
    _ensure_parent(path)
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path, format="PNG")
    return grid


def scatter_image(points, *, size=512, limits=None, radius=1):
    """Rasterise 2-D ``points (N, 2)`` as dark dots on white, ``size x size`` uint8 RGB; ``limits``
    ``(low, high)`` is the square plotting window (default: 1.1x the largest absolute coordinate).
    The y axis points up."""
    points = np.asarray(points, np.float64)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"points must have shape (N, 2); got {points.shape}")
    finite = points[np.all(np.isfinite(points), axis=1)]
    if limits is None:
        extent = 1.1 * float(np.max(np.abs(finite))) if finite.size else 1.0
        limits = (-max(extent, 1e-6), max(extent, 1e-6))
    low, high = map(float, limits)
    if not high > low:
        raise ValueError(f"limits must satisfy low < high; got {limits}")
    canvas = np.full((size, size, 3), 255, np.uint8)
    pixels = np.floor((finite - low) / (high - low) * (size - 1) + 0.5).astype(np.int64)
    inside = np.all((pixels >= 0) & (pixels < size), axis=1)
    cols, rows = pixels[inside, 0], size - 1 - pixels[inside, 1]
    for d_row in range(-radius + 1, radius):
        for d_col in range(-radius + 1, radius):
            r, c = np.clip(rows + d_row, 0, size - 1), np.clip(cols + d_col, 0, size - 1)
            canvas[r, c] = (31, 119, 180)
    return canvas


def scatter_png(points, path, *, size=512, limits=None, radius=2):
    """Write a scatter plot of 2-D ``points (N, 2)`` to a PNG (Pillow); returns the RGB array."""
    from PIL import Image

    canvas = scatter_image(points, size=size, limits=limits, radius=radius)
    _ensure_parent(path)
    Image.fromarray(canvas).save(path, format="PNG")
    return canvas


def _ensure_parent(path):
    parent = os.path.dirname(os.fspath(path))
    if parent:
        os.makedirs(parent, exist_ok=True)
