"""The training data of a config: host arrays and the on-device preprocessing of a batch."""

from __future__ import annotations

import glob
import os

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import data
from diffusion_jax.recipes.builders import as_config

__all__ = ["load_arrays", "load_split", "preprocess", "is_whole_dataset_on_every_host",
           "read_index_shards"]


def is_whole_dataset_on_every_host(config) -> bool:
    """Toy sets and digits (8x8, 32x32) are small: every process holds all of it and takes its rows of each
    global batch; a TFDS set is sharded over processes."""
    name = as_config(config).data.name
    return name in data.TOY_DATASETS or name in ("digits", "digits32")


def load_arrays(config):
    """The split ``config.data.split`` as host arrays: ``{"image": uint8, "label": int32}`` or
    ``{"x": float32}`` for toy 2-D data."""
    config = as_config(config)
    name = config.data.name
    if name in data.TOY_DATASETS:
        num = config.data.dataset_size or 65536
        points = data.sample_toy(name, jax.random.key(config.train.seed + 12345), num)
        return {"x": np.asarray(points, np.float32)}
    if len(tuple(config.data.shape)) != 3:
        raise ValueError(
            f"data.name {name!r} is not a toy 2-D set ({', '.join(data.TOY_DATASETS)}) but "
            f"data.shape {tuple(config.data.shape)} is not an image shape (H, W, C)"
        )
    if name == "digits":
        images, labels = data.load_digits(config.data.split)
    elif name == "digits32":
        images, labels = data.load_digits32(config.data.split)
    else:  # load_tfds says how to set data_dir and catches misspelt built-in names
        images, labels = data.load_tfds(
            name, config.data.split, data_dir=config.data.data_dir,
            image_size=config.data.image_size or None,
            label_key="label" if config.data.num_classes else None,
            # multi-host: each process reads only its shard of the examples
            process_index=jax.process_index(), process_count=jax.process_count(),
        )
    images = np.asarray(images, np.uint8)
    if images.shape[1:] != tuple(config.data.shape):
        raise ValueError(f"dataset images have shape {images.shape[1:]}, config.data.shape is "
                         f"{tuple(config.data.shape)}")
    arrays = {"image": images}
    if labels is not None:
        arrays["label"] = np.asarray(labels, np.int32)
    return arrays


def load_split(config, split):
    """:func:`load_arrays` of another split of the same data."""
    config = as_config(config).copy_and_resolve_references()
    with config.unlocked():
        config.data.split = split
    return load_arrays(config)


def preprocess(batch, key, *, image: bool, random_flip: bool = False):
    """Model-range float data: uniform dequantisation ``(x_uint8 + U[0,1)) / 256`` then
    ``[0, 1) -> [-1, 1]`` for images (Theis et al. 2016; Ho et al. 2020), with optional random
    horizontal flips (Song et al. 2021, App. H); toy data as is. A codec's latents
    (``{"latent": float}``, the latent family) are not pixels: they pass through untouched
    (flipped only with ``random_flip``)."""
    if not image and "latent" not in batch:
        return batch["x"]
    dequant_key, flip_key = jax.random.split(key)
    if "latent" in batch:
        x = batch["latent"]
    else:
        x = data.to_model_range(data.dequantize(batch["image"], dequant_key))
    if random_flip:
        flip = jax.random.bernoulli(flip_key, 0.5, (x.shape[0], 1, 1, 1))
        x = jnp.where(flip, x[:, :, ::-1, :], x)
    return x


def read_index_shards(directory):
    """The arrays of every ``shard_*.npz`` in ``directory`` concatenated in file order, without
    their ``index`` entry, which must count 0, 1, ... (one-line error otherwise): the layout of
    the reflow pair shards and of the latent cache."""
    files = sorted(glob.glob(os.path.join(directory, "shard_*.npz")))
    if not files:
        raise ValueError(f"{directory} holds no shard_*.npz files")
    parts = [dict(np.load(f)) for f in files]
    arrays = {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if k != "index"}
    index = np.concatenate([p["index"] for p in parts])
    if not np.array_equal(index, np.arange(len(index))):
        raise ValueError(f"the shards in {directory} do not cover indices 0..{len(index) - 1}")
    return arrays
