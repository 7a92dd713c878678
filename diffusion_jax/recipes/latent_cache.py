"""The latent cache of the LDM stage: a data split encoded once by a frozen autoencoder, on disk in
shards, so the latent prior trains on arrays and never runs the encoder (Rombach et al. 2022
encode on the fly; with a frozen encoder and deterministic latents the two are the same data).

Layout of a cache directory: ``manifest.json`` (format, the autoencoder run and step it encodes
with, the split, the number of examples, shard size and latent shape) and shards
``shard_00000.npz`` with ``latent`` (float32, *unscaled* encoder outputs: the scale factor is
estimated from them and applied by the LDM recipe), ``index`` and ``label`` (when the data has
labels). Shard ``k`` holds examples ``k * shard_size ..``; each is written to a temporary file and
renamed (atomic), existing shards are kept, so an interrupted encoding resumes where it stopped
and gives the same arrays; a manifest with other settings is a one-line error.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

from diffusion_jax.recipes import datasets

__all__ = ["CACHE_FORMAT", "write_latent_cache", "load_latent_cache", "cache_is_complete"]

CACHE_FORMAT = "diffusion_jax.latent_cache/1"


def _manifest_path(directory):
    return os.path.join(directory, "manifest.json")


def _shard_path(directory, index):
    return os.path.join(directory, f"shard_{index:05d}.npz")


def _read_manifest(directory):
    with open(_manifest_path(directory)) as handle:
        return json.load(handle)


def cache_is_complete(directory) -> bool:
    """Whether ``directory`` holds a finished manifest and every shard it names."""
    if not os.path.isfile(_manifest_path(directory)):
        return False
    manifest = _read_manifest(directory)
    return "latent_shape" in manifest and all(os.path.isfile(_shard_path(directory, k)) for k in range(manifest["num_shards"]))


def _write_atomic(path, write):
    with open(path + ".tmp", "wb") as handle:
        write(handle)
    os.replace(path + ".tmp", path)


def _write_manifest(directory, manifest):
    _write_atomic(_manifest_path(directory),
                  lambda handle: handle.write(json.dumps(manifest, indent=1).encode()))


def write_latent_cache(encode, images, labels, directory, *, shard_size, batch_size, identity,
                       progress=False):
    """Encode uint8 ``images`` ``(N, H, W, C)`` (and int ``labels`` or ``None``) with
    ``encode(uint8 batch) -> latents`` into shards of ``shard_size`` under ``directory``;
    ``encode`` sees batches of exactly ``batch_size`` (the last one padded: one compilation).
    ``identity`` (JSON-able: the autoencoder run, step, EMA, split) goes into the manifest and
    must match an existing one. Returns ``directory``."""
    for name, value in (("shard_size", shard_size), ("batch_size", batch_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"latent cache {name} must be a positive int; got {value!r}")
    images = np.asarray(images)
    num = images.shape[0]
    if num < 1:
        raise ValueError("the latent cache needs at least one image")
    manifest = {"format": CACHE_FORMAT, **identity, "num_examples": int(num),
                "shard_size": shard_size, "num_shards": -(-num // shard_size),
                "image_shape": list(images.shape[1:])}
    os.makedirs(directory, exist_ok=True)
    if os.path.isfile(_manifest_path(directory)):
        existing = {k: v for k, v in _read_manifest(directory).items() if k != "latent_shape"}
        if existing != manifest:
            changed = sorted(k for k in set(manifest) | set(existing)
                             if existing.get(k) != manifest.get(k))
            raise ValueError(f"{directory} holds a latent cache with other settings ({changed}); "
                             "set config.latent.cache_dir to another directory")
    else:  # first: a resumed encoding is checked against it
        _write_manifest(directory, manifest)
    shards = range(manifest["num_shards"])
    if progress:
        from tqdm import tqdm

        shards = tqdm(shards, desc=f"encoding {num} images", unit="shard", file=sys.stderr)
    latent_shape = None
    for k in shards:
        target = _shard_path(directory, k)
        if os.path.isfile(target):
            continue
        start = k * shard_size
        stop = min(start + shard_size, num)
        parts = []
        for first in range(start, stop, batch_size):
            batch = images[first:min(first + batch_size, stop)]
            count = len(batch)
            if count < batch_size:
                batch = np.concatenate([batch, np.repeat(batch[-1:], batch_size - count, 0)])
            parts.append(np.asarray(encode(batch), np.float32)[:count])
        arrays = {"latent": np.concatenate(parts), "index": np.arange(start, stop)}
        latent_shape = list(arrays["latent"].shape[1:])
        if labels is not None:
            arrays["label"] = np.asarray(labels[start:stop], np.int32)
        _write_atomic(target, lambda handle, arrays=arrays: np.savez(handle, **arrays))
    if latent_shape is None:  # every shard was there: read the shape of the first one
        with np.load(_shard_path(directory, 0)) as shard:
            latent_shape = list(shard["latent"].shape[1:])
    _write_manifest(directory, {**manifest, "latent_shape": latent_shape})  # marks it complete
    return directory


def load_latent_cache(directory):
    """``{"latent": float32 (N, h, w, c)[, "label": int32 (N,)]}`` of a complete cache, in
    example order (one-line error for a missing or incomplete cache)."""
    if not cache_is_complete(directory):
        raise ValueError(f"{directory} holds no complete latent cache (manifest.json and every "
                         "shard)")
    return datasets.read_index_shards(directory)
