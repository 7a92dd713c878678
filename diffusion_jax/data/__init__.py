"""Data for diffusion_jax, all offline: 2-D toy sets, scikit-learn's 8x8 digits (and at 32x32,
:mod:`~diffusion_jax.data.digits32`), locally prepared
TFDS image sets, the pixel conventions (:mod:`~diffusion_jax.data.pixels`: dequantisation,
model range, uint8, bits/dim offset), per-process batches -> global ``jax.Array`` s, and PNG
writers. See ``docs/data_networks.md``.
"""

from diffusion_jax.data.batches import ImageBatches, make_batch_iterator
from diffusion_jax.data.digits32 import DIGITS32_SIZE, box_downsample, load_digits32
from diffusion_jax.data.images import (
    DIGITS_NUM_CLASSES,
    center_crop_resize,
    load_digits,
    load_tfds,
)
from diffusion_jax.data.pixels import (
    MODEL_RANGE,
    bits_per_dim_offset,
    dequantize,
    dequantize_to_range,
    to_model_range,
    to_uint8,
    to_unit_range,
    uint8_to_model_range,
    uint8_to_unit_range,
)
from diffusion_jax.data.png import image_grid, save_image_grid, scatter_image, scatter_png
from diffusion_jax.data.toy import (
    EIGHT_GAUSSIANS_RADIUS,
    EIGHT_GAUSSIANS_STD,
    TOY_DATASETS,
    sample_toy,
)

__all__ = [
    "DIGITS_NUM_CLASSES",
    "DIGITS32_SIZE",
    "box_downsample",
    "load_digits32",
    "EIGHT_GAUSSIANS_RADIUS",
    "EIGHT_GAUSSIANS_STD",
    "ImageBatches",
    "MODEL_RANGE",
    "bits_per_dim_offset",
    "dequantize_to_range",
    "to_unit_range",
    "uint8_to_model_range",
    "uint8_to_unit_range",
    "TOY_DATASETS",
    "center_crop_resize",
    "dequantize",
    "image_grid",
    "load_digits",
    "load_tfds",
    "make_batch_iterator",
    "sample_toy",
    "save_image_grid",
    "scatter_image",
    "scatter_png",
    "to_model_range",
    "to_uint8",
]
