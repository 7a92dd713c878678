"""The built-in 32 x 32 digits: exact bilinear weights, agreement with Pillow, the closed form of
box-averaging an upsampled image, same split / labels as the 8 x 8 digits, determinism, the data
loader and the FID feature network reach it, bad input."""

import numpy as np
import pytest

from diffusion_jax import data, recipes
from diffusion_jax.data import digits32
from diffusion_jax.recipes import datasets, evaluation


def test_bilinear_matrix_is_a_partition_of_unity_and_reproduces_ramps():
    matrix = digits32.bilinear_matrix(8, 32)
    np.testing.assert_allclose(matrix.sum(1), 1.0, atol=1e-15)
    ramp = np.arange(8.0)
    # affine data is reproduced exactly away from the clamped edges: value = sample position
    inner = slice(2, 30)
    np.testing.assert_allclose((matrix @ ramp)[inner], ((np.arange(32) + 0.5) / 4 - 0.5)[inner],
                               atol=1e-12)
    np.testing.assert_allclose((matrix @ ramp)[:2], 0.0)  # clamped at the edge


def test_upsampling_agrees_with_pillow_bilinear_within_one_level():
    from PIL import Image

    images, _ = data.load_digits("test")
    images = images[:50]
    ours = digits32.upsample_bilinear(images, 32)
    pillow = np.stack([np.asarray(Image.fromarray(im[..., 0]).resize(
        (32, 32), Image.Resampling.BILINEAR))[..., None] for im in images])
    assert np.abs(ours.astype(int) - pillow.astype(int)).max() <= 1


def test_box_averaging_an_upsampled_image_is_the_tridiagonal_closed_form():
    # per axis, 4 x 4 block means of the factor-4 bilinear upsampling are 1/8, 3/4, 1/8 of the
    # neighbours (7/8, 1/8 at the edges), from the sample offsets -3/8, -1/8, 1/8, 3/8
    x = np.random.default_rng(0).uniform(0, 1, (3, 8, 8, 1))
    expected_axis = np.diag(np.full(8, 0.75)) + np.diag(np.full(7, 0.125), 1) + np.diag(
        np.full(7, 0.125), -1)
    expected_axis[0, 0] = expected_axis[-1, -1] = 0.875
    up = np.einsum("ih,nhwc,jw->nijc", digits32.bilinear_matrix(8, 32), x,
                   digits32.bilinear_matrix(8, 32))
    expected = np.einsum("ih,nhwc,jw->nijc", expected_axis, x, expected_axis)
    np.testing.assert_allclose(data.box_downsample(up, 4), expected, atol=1e-12)


def test_digits32_keeps_the_split_and_labels_and_is_deterministic():
    images, labels = data.load_digits32("train")
    small, small_labels = data.load_digits("train")
    assert images.shape == (small.shape[0], 32, 32, 1) and images.dtype == np.uint8
    np.testing.assert_array_equal(labels, small_labels)
    again, _ = data.load_digits32("train")
    np.testing.assert_array_equal(images, again)
    test_images, _ = data.load_digits32("test")
    assert len(test_images) + len(images) == 1797
    # the 32 x 32 image is the 8 x 8 one, interpolated: block means stay within the closed
    # form's smoothing of the original (mean absolute difference of a few levels)
    assert np.abs(data.box_downsample(images, 4).astype(int) - small.astype(int)).mean() < 20


def test_data_loader_and_feature_network_reach_digits32():
    config = recipes.base_config()
    config.data.name = "digits32"
    config.data.shape = (32, 32, 1)
    arrays = datasets.load_arrays(config)
    assert arrays["image"].shape[1:] == (32, 32, 1) and arrays["label"].dtype == np.int32
    assert datasets.is_whole_dataset_on_every_host(config)
    name = evaluation.feature_network_name(config)
    assert name == "digits32_classifier"
    images, labels = data.load_digits32("test")
    _, logits = evaluation.feature_function(name)(images)
    # the 8 x 8 classifier still recognises the digits after 32 -> 8 averaging
    assert (np.asarray(logits).argmax(-1) == labels).mean() > 0.95
    config.data.shape = (8, 8, 1)
    with pytest.raises(ValueError, match="config.data.shape"):
        datasets.load_arrays(config)


def test_bad_input_gets_one_line_errors():
    with pytest.raises(ValueError, match="uint8"):
        digits32.upsample_bilinear(np.zeros((2, 8, 8, 1), np.float32), 32)
    with pytest.raises(ValueError, match="dividing"):
        data.box_downsample(np.zeros((1, 30, 30, 1), np.uint8), 4)
    with pytest.raises(ValueError, match="built-in"):
        data.load_tfds("digits32", "train", data_dir="/tmp")
