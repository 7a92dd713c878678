"""Data for diffusion_jax, all offline: 2-D toy sets, scikit-learn's 8x8 digits, locally prepared
TFDS image sets, explicit dequantisation/scaling, per-process batches -> global ``jax.Array`` s,
and PNG writers. See ``docs/data_networks.md``.
"""

from diffusion_jax.data.batches import ImageBatches, make_batch_iterator, to_global_batch
from diffusion_jax.data.images import (
    DIGITS_NUM_CLASSES,
    center_crop_resize,
    dequantize,
    load_digits,
    load_tfds,
    to_model_range,
    to_uint8,
)
from diffusion_jax.data.png import image_grid, save_image_grid, scatter_image, scatter_png
from diffusion_jax.data.toy import (
    EIGHT_GAUSSIANS_RADIUS,
    EIGHT_GAUSSIANS_STD,
    TOY_DATASETS,
    sample_toy,
    toy_gaussian_mixture,
)

__all__ = [
    "DIGITS_NUM_CLASSES",
    "EIGHT_GAUSSIANS_RADIUS",
    "EIGHT_GAUSSIANS_STD",
    "ImageBatches",
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
    "to_global_batch",
    "to_model_range",
    "to_uint8",
    "toy_gaussian_mixture",
]
