"""Tests for diffusion_jax.data: toy sets, digits, TFDS path, preprocessing, batching, PNGs."""

import math
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from diffusion_jax.analytic import toy_gaussian_mixture
from diffusion_jax.data import (
    EIGHT_GAUSSIANS_RADIUS,
    EIGHT_GAUSSIANS_STD,
    TOY_DATASETS,
    ImageBatches,
    center_crop_resize,
    dequantize,
    load_digits,
    load_tfds,
    make_batch_iterator,
    sample_toy,
    save_image_grid,
    scatter_png,
    to_model_range,
    to_uint8,
)

# -- toy sets ------------------------------------------------------------------------------------

NUM_TOY = 8000  # one sample size everywhere: each toy sampler compiles once


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_toy_sets_are_deterministic_float32_and_unit_scale(name):
    a = sample_toy(name, jax.random.key(0), NUM_TOY)
    b = sample_toy(name, jax.random.key(0), NUM_TOY)
    c = sample_toy(name, jax.random.key(1), NUM_TOY)
    assert a.shape == (NUM_TOY, 2) and a.dtype == jnp.float32
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert np.all(np.isfinite(a))
    std = np.asarray(a).std(axis=0)
    assert np.all((std > 0.3) & (std < 2.0)), std  # documented: roughly unit scale
    assert np.all(np.abs(np.asarray(a).mean(axis=0)) < 0.6)


def test_unknown_toy_name_lists_the_names():
    with pytest.raises(ValueError, match="two_moons.*checkerboard"):
        sample_toy("moons", jax.random.key(0), NUM_TOY)
    with pytest.raises(ValueError, match="num_samples"):
        sample_toy("two_moons", jax.random.key(0), 0)


def test_eight_gaussians_component_statistics():
    points = np.asarray(sample_toy("eight_gaussians", jax.random.key(3), NUM_TOY), np.float64)
    angles = 2 * np.pi * np.arange(8) / 8
    means = EIGHT_GAUSSIANS_RADIUS * np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    nearest = np.argmin(((points[:, None] - means[None]) ** 2).sum(-1), axis=1)
    counts = np.bincount(nearest, minlength=8)
    # Multinomial(NUM_TOY, 1/8) counts; allow 5 standard deviations.
    assert np.all(np.abs(counts - NUM_TOY / 8) < 5 * math.sqrt(NUM_TOY / 8 * 7 / 8))
    for k in range(8):
        members = points[nearest == k]
        tolerance = 5 * EIGHT_GAUSSIANS_STD / math.sqrt(len(members))
        np.testing.assert_allclose(members.mean(0), means[k], atol=tolerance)
        np.testing.assert_allclose(members.std(0), EIGHT_GAUSSIANS_STD, rtol=0.1)


def test_gaussian_mixture_toy_matches_the_analytic_moments():
    mixture = toy_gaussian_mixture(jnp.float32)
    points = np.asarray(sample_toy("gaussian_mixture", jax.random.key(4), NUM_TOY), np.float64)
    weights = np.exp(np.asarray(mixture.log_weights, np.float64))
    means = np.asarray(mixture.means, np.float64)
    covariances = np.asarray(mixture.covariances(), np.float64)
    mean = weights @ means
    second = np.einsum("k,kij->ij", weights, covariances + means[:, :, None] * means[:, None, :])
    covariance = second - np.outer(mean, mean)
    # 5 standard errors of the Monte Carlo mean and (approximately) covariance.
    assert np.all(np.abs(points.mean(0) - mean) < 5 * np.sqrt(np.diag(covariance) / NUM_TOY))
    np.testing.assert_allclose(np.cov(points.T), covariance, atol=5 * 2.0 / np.sqrt(NUM_TOY))


def test_checkerboard_lies_on_black_squares_and_moons_on_arcs():
    board = np.asarray(sample_toy("checkerboard", jax.random.key(5), NUM_TOY))
    assert np.all((board >= -2) & (board <= 2))
    cells = np.floor(board + 2).astype(int)
    assert np.all((cells.sum(1) % 2) == 0)

    moons = np.asarray(sample_toy("two_moons", jax.random.key(6), NUM_TOY)) + np.array([0.5, 0.25])
    upper = np.abs(np.hypot(moons[:, 0], moons[:, 1]) - 1.0)
    lower = np.abs(np.hypot(moons[:, 0] - 1.0, moons[:, 1] - 0.5) - 1.0)
    distance = np.minimum(upper, lower)
    assert np.mean(distance) < 0.06 and np.max(distance) < 0.3


def test_swiss_roll_and_pinwheel_radii():
    roll = np.asarray(sample_toy("swiss_roll", jax.random.key(7), NUM_TOY)) * 5.0
    radius = np.hypot(roll[:, 0], roll[:, 1])
    assert radius.min() > 1.5 * np.pi - 1.0 and radius.max() < 4.5 * np.pi + 1.0
    # u ~ U[1.5 pi, 4.5 pi] and radius = u up to noise: mean 3 pi.
    assert abs(radius.mean() - 3 * np.pi) < 0.15
    wheel = np.asarray(sample_toy("pinwheel", jax.random.key(8), NUM_TOY), np.float64)
    radius = np.hypot(wheel[:, 0], wheel[:, 1]) / 1.5
    expected = np.mean(np.hypot(1 + 0.3 * np.random.default_rng(0).standard_normal(10**6),
                                0.1 * np.random.default_rng(1).standard_normal(10**6)))
    assert abs(radius.mean() - expected) < 0.02


# -- digits and preprocessing ------------------------------------------------------------------


def test_digits_split_sizes_partition_and_determinism():
    from sklearn.datasets import load_digits as sklearn_digits

    train_images, train_labels = load_digits("train")
    test_images, test_labels = load_digits("test")
    assert train_images.shape == (1438, 8, 8, 1) and test_images.shape == (359, 8, 8, 1)
    assert train_images.dtype == np.uint8 and train_labels.dtype == np.int32
    assert set(np.unique(train_labels)) == set(range(10))
    assert train_images.max() == 255 and train_images.min() == 0
    reference = sklearn_digits()
    all_images = np.rint(reference.images * 255 / 16).astype(np.uint8)[..., None]
    # Every example appears in exactly one split, with its own label.
    keys = {img.tobytes() + bytes([lab]) for img, lab in zip(all_images, reference.target, strict=True)}
    split_keys = [img.tobytes() + bytes([lab]) for img, lab in
                  zip(np.concatenate([train_images, test_images]),
                      np.concatenate([train_labels, test_labels]), strict=True)]
    assert len(split_keys) == 1797 and set(split_keys) == keys
    again, _ = load_digits("test")
    np.testing.assert_array_equal(again, test_images)
    other, _ = load_digits("test", seed=1)
    assert not np.array_equal(other, test_images)
    assert load_digits("test", test_fraction=0.5)[0].shape[0] == 898
    with pytest.raises(ValueError, match="split"):
        load_digits("validation")
    with pytest.raises(ValueError, match="test_fraction"):
        load_digits("train", test_fraction=1.0)


def test_dequantize_range_mean_and_exact_inverse():
    images = np.tile(np.arange(256, dtype=np.uint8), 64).reshape(64, 16, 16, 1)
    x01 = dequantize(images, jax.random.key(0))
    assert x01.dtype == jnp.float32
    assert float(x01.min()) >= 0.0 and float(x01.max()) < 1.0
    offset = np.asarray(x01, np.float64) * 256 - images
    assert offset.min() >= 0.0 and offset.max() < 1.0
    # U[0, 1): mean 1/2, std 1/sqrt(12); 16384 pixels.
    assert abs(offset.mean() - 0.5) < 5 / math.sqrt(12 * offset.size)
    x_model = to_model_range(x01)
    assert float(x_model.min()) >= -1.0 and float(x_model.max()) < 1.0
    np.testing.assert_array_equal(to_uint8(x_model), images)
    # The top value stays below 1 even when 255 + u rounds up in float32.
    top = dequantize(np.full((4096,), 255, np.uint8), jax.random.key(1))
    assert float(top.max()) < 1.0
    with pytest.raises(ValueError, match="uint8"):
        dequantize(images.astype(np.float32), jax.random.key(0))


def test_center_crop_resize_keeps_constant_images_and_shapes():
    images = np.full((2, 20, 14, 3), 77, np.uint8)
    images[:, :3] = 0  # rows outside the central 14x14 crop
    out = center_crop_resize(images, 7)
    assert out.shape == (2, 7, 7, 3) and out.dtype == np.uint8
    assert np.all(out == 77)
    with pytest.raises(ValueError, match="crop_size"):
        center_crop_resize(images, 7, crop_size=30)


# -- batching ----------------------------------------------------------------------------------


def _arrays(n=50):
    return {"index": np.arange(n), "image": np.arange(n * 4).reshape(n, 2, 2).astype(np.float32),
            "label": (np.arange(n) % 7).astype(np.int32)}


def test_process_shards_partition_the_global_batch():
    arrays = _arrays()
    whole = ImageBatches(arrays, global_batch_size=12, seed=3, process_index=0, process_count=1)
    shards = [ImageBatches(arrays, global_batch_size=12, seed=3, process_index=p, process_count=3)
              for p in range(3)]
    for step in (0, 1, 5, 17):
        expected = whole.batch(step)
        parts = [shard.batch(step) for shard in shards]
        for key in arrays:
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), expected[key])
        # labels and images travel with their example
        np.testing.assert_array_equal(expected["label"], expected["index"] % 7)
        np.testing.assert_array_equal(expected["image"][:, 0, 0], expected["index"] * 4)
        assert len(set(expected["index"])) == 12
    assert shards[0].local_batch_size == 4


def test_epochs_reshuffle_and_visit_each_example_once():
    batches = ImageBatches(_arrays(48), global_batch_size=8, seed=0, process_index=0,
                           process_count=1)
    assert batches.steps_per_epoch == 6
    epoch0 = np.concatenate([batches.batch(s)["index"] for s in range(6)])
    epoch1 = np.concatenate([batches.batch(s)["index"] for s in range(6, 12)])
    np.testing.assert_array_equal(np.sort(epoch0), np.arange(48))
    np.testing.assert_array_equal(np.sort(epoch1), np.arange(48))
    assert not np.array_equal(epoch0, epoch1)
    unshuffled = ImageBatches(_arrays(48), global_batch_size=8, seed=0, process_index=0,
                              process_count=1, shuffle=False)
    np.testing.assert_array_equal(unshuffled.batch(7)["index"], np.arange(8, 16))


def test_resume_from_start_step_equals_continuing():
    kwargs = dict(global_batch_size=10, seed=7, process_index=1, process_count=2)
    uninterrupted = make_batch_iterator(_arrays(), **kwargs)
    first = [next(uninterrupted) for _ in range(13)]
    resumed = make_batch_iterator(_arrays(), start_step=8, **kwargs)
    for step in range(8, 13):
        batch = next(resumed)
        for key in batch:
            np.testing.assert_array_equal(batch[key], first[step][key])


def test_keep_remainder_pads_with_a_mask():
    batches = ImageBatches(_arrays(10), global_batch_size=4, seed=0, process_index=0,
                           process_count=1, drop_remainder=False)
    assert batches.steps_per_epoch == 3
    seen = [batches.batch(s) for s in range(3)]
    assert all(b["index"].shape == (4,) for b in seen)
    real = np.concatenate([b["index"][b["mask"]] for b in seen])
    np.testing.assert_array_equal(np.sort(real), np.arange(10))
    np.testing.assert_array_equal(seen[2]["mask"], [True, True, False, False])


def test_batch_iterator_rejects_bad_sizes():
    with pytest.raises(ValueError, match="not divisible by process_count"):
        ImageBatches(_arrays(), global_batch_size=10, seed=0, process_index=0, process_count=3)
    with pytest.raises(ValueError, match="same leading"):
        ImageBatches({"a": np.zeros(3), "b": np.zeros(4)}, global_batch_size=1, seed=0)
    with pytest.raises(ValueError, match="exceeds"):
        ImageBatches(_arrays(5), global_batch_size=8, seed=0)
    with pytest.raises(ValueError, match="process_index"):
        ImageBatches(_arrays(), global_batch_size=4, seed=0, process_index=2, process_count=2)


_GLOBAL_BATCH_SCRIPT = textwrap.dedent(
    """
    import jax
    jax.config.update("jax_num_cpu_devices", 8)
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
    from diffusion_jax.data import ImageBatches, to_global_batch

    assert jax.device_count() == 8
    mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
    sharding = NamedSharding(mesh, PartitionSpec("data", None, None, None))
    arrays = {"image": np.arange(40 * 8 * 8).reshape(40, 8, 8, 1).astype(np.float32),
              "label": np.arange(40, dtype=np.int32)}
    local = ImageBatches(arrays, global_batch_size=16, seed=0).batch(3)
    batch = to_global_batch(local, sharding)
    for key in arrays:
        assert isinstance(batch[key], jax.Array)
        np.testing.assert_array_equal(np.asarray(batch[key]), local[key])
        assert batch[key].sharding.spec[0] == "data"
        shard_rows = {tuple(s.index[0].indices(16)) for s in batch[key].addressable_shards}
        assert len(shard_rows) == 4, shard_rows
    full = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), PartitionSpec("data"))
    try:
        to_global_batch({"label": np.arange(12)}, full)
    except ValueError as error:
        assert "not divisible" in str(error) and "8" in str(error), error
    else:
        raise AssertionError("expected a ValueError")
    print("OK")
    """
)


def test_to_global_batch_on_eight_host_devices():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    result = subprocess.run([sys.executable, "-c", _GLOBAL_BATCH_SCRIPT], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]


# -- TFDS ---------------------------------------------------------------------------------------


def test_load_tfds_with_mock_data(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=10):
        images, labels = load_tfds("mnist", "train", data_dir=str(tmp_path))
        assert images.shape == (10, 28, 28, 1) and images.dtype == np.uint8
        assert labels.shape == (10,) and labels.dtype == np.int32
        assert labels.min() >= 0 and labels.max() <= 9
        shards = [load_tfds("mnist", "train", data_dir=str(tmp_path), process_index=p,
                            process_count=2) for p in range(2)]
        np.testing.assert_array_equal(shards[0][0], images[0::2])
        np.testing.assert_array_equal(shards[1][1], labels[1::2])
        small, _ = load_tfds("cifar10", "test", data_dir=str(tmp_path), image_size=16,
                             max_examples=3)
        assert small.shape == (3, 16, 16, 3) and small.dtype == np.uint8
        unlabelled, none = load_tfds("mnist", "train", data_dir=str(tmp_path), label_key=None)
        assert none is None and unlabelled.shape == images.shape
        with pytest.raises(ValueError, match="label_key"):
            load_tfds("mnist", "train", data_dir=str(tmp_path), label_key="attributes")


def test_missing_tfds_dataset_says_how_to_prepare_it(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(FileNotFoundError, match="(?s)'mnist'.*tfds build mnist") as info:
        load_tfds("mnist", "train", data_dir=str(tmp_path))
    assert str(tmp_path) in str(info.value)
    with pytest.raises(ValueError, match="unknown TFDS dataset"):
        load_tfds("no_such_dataset_xyz", "train", data_dir=str(tmp_path))


def test_load_tfds_rejects_empty_data_dir_and_builtin_names_before_touching_tfds(monkeypatch):
    """Without tensorflow_datasets importable at all: the errors come before any TFDS call."""
    import sys

    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    for data_dir in ("", None):
        with pytest.raises(ValueError, match="needs data_dir.*--config.data.data_dir=DIR"):
            load_tfds("mnist", "train", data_dir=data_dir)
    with pytest.raises(ValueError, match="'two_moons' is a built-in dataset.*sample_toy"):
        load_tfds("two_moons", "train", data_dir="/data")
    with pytest.raises(ValueError, match="load_digits"):
        load_tfds("digits", "train", data_dir="")
    # A near miss of a toy name is not sent to TFDS as a dataset name.
    with pytest.raises(ValueError, match="did you mean the built-in 'two_moons'"):
        load_tfds("two_moon", "train", data_dir="")
    with pytest.raises(ValueError, match="did you mean 'checkerboard'"):
        sample_toy("checker_board", jax.random.key(0), 4)


def test_pixel_conventions_are_consistent():
    """uint8 -> model range -> uint8 is exact, the [0, 1] conversions invert each other, and the
    bits/dim offset is score_sde's +7 for 8-bit data in [-1, 1] (+8 in [0, 1])."""
    from diffusion_jax import data

    pixels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    model = data.uint8_to_model_range(pixels)
    assert model.dtype == jnp.float32 and float(model.min()) == -1.0 and float(model.max()) == 1.0
    np.testing.assert_array_equal(data.to_uint8(model), pixels)
    np.testing.assert_allclose(data.to_model_range(data.uint8_to_unit_range(pixels)), model,
                               atol=1e-6)
    np.testing.assert_allclose(data.to_unit_range(data.to_model_range(0.3)), 0.3)
    assert data.bits_per_dim_offset() == 7.0
    assert data.bits_per_dim_offset(8, (0.0, 1.0)) == 8.0
    assert data.bits_per_dim_offset(5, (0.0, 4.0)) == 3.0
    key = jax.random.key(3)
    shifted = data.dequantize_to_range(pixels, key, data_range=(-1.0, 1.0))
    np.testing.assert_allclose(shifted, data.to_model_range(data.dequantize(pixels, key)),
                               atol=1e-6)
    with pytest.raises(ValueError, match="increasing"):
        data.bits_per_dim_offset(8, (1.0, 1.0))


# -- PNGs -------------------------------------------------------------------------------------


def test_save_image_grid_round_trips_pixels(tmp_path):
    images_uint8 = np.random.default_rng(0).integers(0, 256, (5, 4, 3, 3), dtype=np.uint8)
    x_model = to_model_range((images_uint8.astype(np.float32) + 0.5) / 256)
    path = tmp_path / "grid.png"
    grid = save_image_grid(x_model, path, num_rows=2, padding=1, scale=1)
    loaded = np.asarray(Image.open(path))
    np.testing.assert_array_equal(loaded, grid)
    assert loaded.shape == (2 * 5 + 1, 3 * 4 + 1, 3)
    np.testing.assert_array_equal(loaded[1:5, 1:4], images_uint8[0])  # row 0, col 0
    np.testing.assert_array_equal(loaded[6:10, 5:8], images_uint8[4])  # row 1, col 1
    gray = save_image_grid(x_model[..., :1], tmp_path / "gray.png")  # 8x upscaled by default
    assert Image.open(tmp_path / "gray.png").mode == "L" and gray.shape == (3 * (32 + 1) + 1, 2 * (24 + 1) + 1, 1)


def test_scatter_png_marks_points(tmp_path):
    points = np.array([[0.0, 0.0], [1.0, 1.0]])
    canvas = scatter_png(points, tmp_path / "scatter.png", size=101, limits=(-1, 1), radius=1)
    assert np.asarray(Image.open(tmp_path / "scatter.png")).shape == (101, 101, 3)
    assert np.all(canvas[50, 50] != 255) and np.all(canvas[0, 100] != 255)
    assert np.sum(np.any(canvas != 255, axis=-1)) == 2
