"""Offline image sources: scikit-learn's digits, locally prepared TFDS sets, crop/resize.

Images come out as ``uint8`` ``(N, H, W, C)`` in ``0..255``; every pixel convention after that
(dequantisation, model range, ``to_uint8``, bits/dim offset) lives in
:mod:`diffusion_jax.data.pixels` (``dequantize``, ``to_model_range`` and ``to_uint8`` are
re-exported here for existing imports).
"""

from __future__ import annotations

import difflib

import numpy as np

from diffusion_jax.data.batches import check_process
from diffusion_jax.data.pixels import dequantize, to_model_range, to_uint8
from diffusion_jax.data.toy import TOY_DATASETS

__all__ = [
    "load_digits",
    "load_tfds",
    "dequantize",
    "to_model_range",
    "to_uint8",
    "center_crop_resize",
    "DIGITS_NUM_CLASSES",
]

DIGITS_NUM_CLASSES = 10


# -- preprocessing ------------------------------------------------------------------------------


def center_crop_resize(images_uint8, size, *, crop_size=None):
    """Centre-crop each image to a ``crop_size`` square (default ``min(H, W)``) and resize to
    ``size x size`` with Pillow's antialiased bicubic filter (the CelebA 64x64 recipe of
    Song et al. 2021, App. D: crop 140, resize 64). Host-side numpy, ``(N, H, W, C)`` uint8."""
    from PIL import Image

    images = np.asarray(images_uint8)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images (N, H, W, C); got {images.dtype} {images.shape}")
    _, height, width, channels = images.shape
    crop = min(height, width) if crop_size is None else int(crop_size)
    if not 0 < crop <= min(height, width):
        raise ValueError(f"crop_size {crop} must lie in [1, min(H, W) = {min(height, width)}]")
    top, left = (height - crop) // 2, (width - crop) // 2
    cropped = images[:, top : top + crop, left : left + crop]
    output = np.empty((images.shape[0], size, size, channels), np.uint8)
    for index, image in enumerate(cropped):
        pil = Image.fromarray(image[..., 0] if channels == 1 else image)
        resized = np.asarray(pil.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=None))
        output[index] = resized.reshape(size, size, channels)
    return output


# -- scikit-learn digits --------------------------------------------------------------------------


def load_digits(split="train", *, test_fraction=0.2, seed=0):
    """scikit-learn's bundled 8x8 digits (Alpaydin & Kaynak 1998; 1,797 images, 10 classes), no
    download. Pixel values ``0..16`` are rescaled to ``round(v * 255 / 16)`` in ``0..255``.

    The split is a seeded random permutation: the first ``round(test_fraction * N)`` indices are
    ``"test"`` and the rest ``"train"`` (each returned in ascending index order), so the two splits
    partition the data and are identical on every host. Returns ``(images uint8 (N, 8, 8, 1),
    labels int32 (N,))``.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1); got {test_fraction}")
    digits = sklearn_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int32)
    permutation = np.random.default_rng(seed).permutation(images.shape[0])
    num_test = int(round(test_fraction * images.shape[0]))
    chosen = permutation[:num_test] if split == "test" else permutation[num_test:]
    chosen = np.sort(chosen)
    return images[chosen], labels[chosen]


# -- TFDS ----------------------------------------------------------------------------------------


def _prepare_hint(name, data_dir):
    return (
        f"TFDS dataset {name!r} is not prepared in data_dir={data_dir!r}. Prepare it once on a "
        f"machine with network access, e.g. `tfds build {name} --data_dir={data_dir} "
        f"--file_format=array_record` or in Python "
        f"`tfds.builder({name!r}, data_dir={data_dir!r}).download_and_prepare(file_format="
        f"'array_record')`, then copy the directory here (array_record gives random access; "
        f"TFRecord also works through tfds.load)."
    )


def open_tfds_examples(name, split, data_dir):
    """An indexable sequence of decoded examples (``tfds.data_source``) or an iterable
    ``tf.data`` fallback for TFRecord-prepared datasets; a clear error when missing."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as error:
        raise ValueError(
            f"unknown TFDS dataset {name!r} (not in the TFDS catalog); the built-in sets are "
            f"the toy sets {TOY_DATASETS} (sample_toy) and 'digits' (load_digits)"
        ) from error
    try:
        return tfds.data_source(name, split=split, data_dir=data_dir, download=False), None
    except NotImplementedError:
        if not builder.is_prepared():
            raise FileNotFoundError(_prepare_hint(name, data_dir)) from None
        # Prepared as TFRecord: no random access; read sequentially through tf.data.
        dataset = tfds.load(name, split=split, data_dir=data_dir, download=False)
        return None, dataset
    except (AssertionError, FileNotFoundError, ValueError, OSError) as error:
        if "split" in str(error).lower() and builder.is_prepared():
            raise ValueError(
                f"split {split!r} of TFDS dataset {name!r} is not available: {error}"
            ) from error
        raise FileNotFoundError(_prepare_hint(name, data_dir)) from error


def load_tfds(
    name,
    split,
    *,
    data_dir,
    image_key="image",
    label_key="label",
    image_size=None,
    crop_size=None,
    max_examples=None,
    process_index=None,
    process_count=None,
):
    """Images (and labels) of a locally prepared TFDS dataset as host numpy arrays.

    Reads ``tfds.data_source`` (array_record, random access; TFRecord falls back to ``tfds.load``)
    from ``data_dir`` with ``download=False`` and decodes on the host, so TensorFlow never enters
    the training loop. With ``process_count`` only examples ``process_index::process_count`` are
    read (each host loads its shard). ``image_size`` centre-crops and resizes each example while
    reading (:func:`center_crop_resize`, e.g. CelebA 64x64). ``label_key=None`` returns ``None``
    labels. Returns ``(images uint8 (N, H, W, C), labels int32 (N,) or None)``.
    A dataset that is not prepared raises ``FileNotFoundError`` saying how to prepare it; an
    empty or ``None`` ``data_dir``, and a toy / digits name (or a near miss of one), raise
    ``ValueError`` before TFDS is touched.
    """
    _check_tfds_arguments(name, data_dir)
    process_index, process_count = check_process(process_index, process_count, default=(0, 1))
    source, dataset = open_tfds_examples(name, split, data_dir)
    if source is not None:
        indices = range(process_index, len(source), process_count)
        if max_examples is not None:
            indices = indices[:max_examples]
        examples = (source[i] for i in indices)
    else:
        if process_count > 1:
            dataset = dataset.shard(process_count, process_index)
        if max_examples is not None:
            dataset = dataset.take(max_examples)
        import tensorflow_datasets as tfds

        examples = tfds.as_numpy(dataset)
    images, labels = [], []
    for example in examples:
        if image_key not in example:
            raise ValueError(f"image_key {image_key!r} not in {name!r} features {list(example)}")
        image = np.asarray(example[image_key])
        if image.ndim == 2:
            image = image[..., None]
        if image_size is not None:
            image = center_crop_resize(image[None], image_size, crop_size=crop_size)[0]
        images.append(image.astype(np.uint8))
        if label_key is not None:
            if label_key not in example:
                raise ValueError(
                    f"label_key {label_key!r} not in {name!r} features {list(example)}; "
                    "pass label_key=None for unlabelled data"
                )
            labels.append(int(example[label_key]))
    if not images:
        raise ValueError(f"TFDS dataset {name!r} split {split!r} gave no examples")
    images = np.stack(images)
    return images, (np.asarray(labels, np.int32) if label_key is not None else None)


def _check_tfds_arguments(name, data_dir):
    """One-line errors for a built-in (or nearly built-in) name and for a missing ``data_dir``."""
    builtin = (*TOY_DATASETS, "digits", "digits32")
    if name in builtin:
        loader = {"digits": "load_digits()", "digits32": "load_digits32()"}.get(
            name, f"sample_toy({name!r}, key, num)")
        raise ValueError(f"{name!r} is a built-in dataset, not a TFDS one: use {loader}")
    close = difflib.get_close_matches(str(name), builtin, n=1, cutoff=0.8)
    if close:
        raise ValueError(
            f"unknown dataset {name!r}: did you mean the built-in {close[0]!r}? (built-in: "
            f"{builtin}; other names are read from a local TFDS data_dir)"
        )
    if not data_dir:
        raise ValueError(
            f"TFDS dataset {name!r} needs data_dir, the local directory it is prepared in (got "
            f"{data_dir!r}): pass data_dir=DIR (--config.data.data_dir=DIR), after `tfds build "
            f"{name} --data_dir DIR` on a machine with network access"
        )
