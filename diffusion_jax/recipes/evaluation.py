"""Evaluation of a run: bits/dim of a data split and sample quality (FID, KID, Inception Score,
precision/recall) of generated samples against reference features, with the feature network
chosen by the data (the bundled digits classifier, for 32 x 32 digits after 4 x 4 averaging; a
local FID Inception-v3 weight file; or the raw coordinates of toy 2-D data).

Sampling protocol: sample ``i`` starts from ``normal(fold_in(split(key(seed))[0], i))``
(:func:`diffusion_jax.recipes.sampling.generate`).
"""

from __future__ import annotations

import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import callables, data, likelihood, metrics
from diffusion_jax.recipes.builders import as_config, build_process, finite_sigma_max
from diffusion_jax.recipes.datasets import load_split
from diffusion_jax.recipes.sampling import generate

__all__ = [
    "FEATURE_NETWORKS",
    "feature_network_name",
    "feature_function",
    "extract",
    "as_feature_inputs",
    "reference_features",
    "sample_quality",
    "bits_per_dim_report",
    "evaluate_samples",
]


def _digits_features(_):
    from diffusion_jax.metrics.digits_classifier import (
        digits_feature_function,
        load_digits_classifier,
    )

    return digits_feature_function(load_digits_classifier())


def _digits32_features(_):
    """The digits classifier on 32 x 32 digits after 4 x 4 box averaging back to 8 x 8
    (:func:`diffusion_jax.data.box_downsample`), applied alike to samples and references."""
    classify = _digits_features(None)
    return lambda images: classify(data.box_downsample(np.asarray(images), 4))


def _inception_features(weights):
    from diffusion_jax.metrics.inception import inception_feature_function, load_inception

    return inception_feature_function(load_inception(weights))


def _identity_features(_):
    return lambda x: (jnp.asarray(x), None)


FEATURE_NETWORKS = {
    "digits_classifier": _digits_features,
    "digits32_classifier": _digits32_features,
    "inception_v3": _inception_features,
    "identity": _identity_features,
}


def feature_network_name(config, inception_weights=None):
    """Which feature network fits the data: digits classifier, Inception-v3 (when a weight file is
    given) or raw coordinates for toy 2-D data; ``None`` when no suitable network is available."""
    config = as_config(config)
    if len(tuple(config.data.shape)) != 3:
        return "identity"
    if config.data.name == "digits":
        return "digits_classifier"
    if config.data.name == "digits32":
        return "digits32_classifier"
    return "inception_v3" if inception_weights else None


def feature_function(name, inception_weights=None):
    """``fn(inputs) -> (features, logits or None)`` of a feature network of the table."""
    if name not in FEATURE_NETWORKS:
        raise ValueError(f"unknown feature network {name!r}; expected one of "
                         f"{sorted(FEATURE_NETWORKS)}")
    return FEATURE_NETWORKS[name](inception_weights)


def _padded_batches(inputs, batch_size, desc=None):
    """``(batch, count)`` in fixed-size batches (the last one padded: one compilation), with a
    progress bar on stderr when ``desc`` is given."""
    starts = range(0, len(inputs), batch_size)
    if desc:
        from tqdm import tqdm

        starts = tqdm(starts, desc=desc, unit="batch", file=sys.stderr, leave=False)
    for start in starts:
        batch = inputs[start:start + batch_size]
        count = len(batch)
        if count < batch_size:
            batch = np.concatenate([batch, np.repeat(batch[-1:], batch_size - count, axis=0)])
        yield start, batch, count


def extract(feature_fn, inputs, batch_size, *, progress=False):
    """Features and logits (or ``None``) of ``inputs`` in fixed-size batches."""
    features, logits = [], []
    desc = f"features of {len(inputs)}" if progress else None
    for _, batch, count in _padded_batches(inputs, batch_size, desc):
        batch_features, batch_logits = feature_fn(batch)
        features.append(np.asarray(batch_features, np.float64)[:count])
        if batch_logits is not None:
            logits.append(np.asarray(batch_logits, np.float64)[:count])
    return np.concatenate(features), (np.concatenate(logits) if logits else None)


def as_feature_inputs(samples, image):
    """Generated samples (model range) quantised like the data: ``uint8`` images, floats for toy."""
    return data.to_uint8(samples) if image else np.asarray(samples, np.float32)


def reference_features(config, feature_fn, name, *, split, path, batch_size, progress=False):
    """Reference ``(statistics, features)``: read from ``path`` if it exists, else computed from
    ``split`` of the data and written there."""
    if os.path.exists(path):
        reference = metrics.load_reference(path)
        statistics = metrics.FeatureStatistics.load(path)
        return statistics, reference.get("features")
    arrays = load_split(config, split)
    inputs = arrays["image"] if "image" in arrays else arrays["x"]
    features, _ = extract(feature_fn, inputs, batch_size, progress=progress)
    statistics = metrics.FeatureStatistics().update(features)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    statistics.save(path, features=features)
    print(f"wrote reference statistics of {name} on {as_config(config).data.name}/{split} to "
          f"{path}", flush=True)
    return statistics, features


def sample_quality(feature_fn, samples_input, reference_stats, reference_feats, batch_size,
                   *, progress=False):
    """FID, KID, IS and precision/recall of generated inputs against the reference."""
    features, logits = extract(feature_fn, samples_input, batch_size, progress=progress)
    statistics = metrics.FeatureStatistics().update(features)
    report = {"fid": metrics.frechet_distance_from_stats(statistics, reference_stats)}
    if reference_feats is not None:
        kid_mean, kid_std = metrics.kernel_inception_distance(
            features, reference_feats, num_subsets=100,
            subset_size=min(1000, len(features), len(reference_feats)),
        )
        precision, recall = metrics.precision_recall(reference_feats, features)
        report.update(kid_mean=kid_mean, kid_std=kid_std, precision=precision, recall=recall)
    if logits is not None:
        is_mean, is_std = metrics.inception_score(logits, num_splits=min(10, len(logits)))
        report.update(inception_score_mean=is_mean, inception_score_std=is_std)
    return report


def bits_per_dim_report(denoiser, config, images, *, key, sigma_min, divergence, tolerance,
                        batch_size, progress=False):
    """Mean bits/dim of uint8 ``images`` (probability-flow likelihood from ``sigma_min`` to the
    process's ``sigma_max``) with its standard error and mean NFE."""
    config = as_config(config)
    sigma_max = finite_sigma_max(build_process(config), config.sample.sigma_max)
    # the model travels as an argument, never as a jit closure constant: closing over NNX
    # modules gave intermittent NaN on jax 0.12 (seen in the discrete family's likelihood)
    bpd_fn = callables.filter_jit(
        lambda denoiser, images, key: likelihood.bits_per_dim(
            denoiser, images, key=key, sigma_min=sigma_min, sigma_max=sigma_max,
            divergence=divergence, rtol=tolerance, atol=tolerance, dtype=jnp.float32,
        )
    )
    values, nfes = [], []
    desc = f"bits/dim of {len(images)}" if progress else None
    for start, batch, count in _padded_batches(images, batch_size, desc):
        bpd, nfe = bpd_fn(denoiser, jnp.asarray(batch), jax.random.fold_in(key, start))
        values.append(np.asarray(bpd)[:count])
        nfes.append(np.asarray(nfe)[:count])
    values, nfes = np.concatenate(values), np.concatenate(nfes)
    return {
        "mean": float(values.mean()),
        "standard_error": float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1
        else None,
        "num_examples": int(len(values)),
        "nfe_mean": float(nfes.mean()),
        "sigma_min": sigma_min,
        "sigma_max": sigma_max,
        "divergence": divergence,
        "tolerance": tolerance,
        "dequantization": "uniform, (x + U[0,1))/256 scaled to [-1, 1]; offset +7",
        "prior": "N(0, sigma_max^2 I)",
    }


def evaluate_samples(denoiser, config, *, num_samples, seed, reference_dir, reference_split="train",
                     reference=None, inception_weights=None, sampler=None, grid=None,
                     num_steps=None, batch_size=256, progress=False, workdir=None,
                     guidance_scale=None, guidance_spec=None, guide=None):
    """Sample quality of ``num_samples`` samples (a dict), or a ``"skipped: ..."`` string when
    no feature network fits the data (``workdir``: the run of ``grid="learned"``); guidance as in
    :func:`~diffusion_jax.recipes.generate`."""
    config = as_config(config)
    name = feature_network_name(config, inception_weights)
    if name is None:
        return "skipped: no feature network (pass --inception_weights)"
    feature_fn = feature_function(name, inception_weights)
    samples, _ = generate(
        denoiser, config, num_samples=num_samples, seed=seed, sampler=sampler, grid=grid,
        num_steps=num_steps, batch_size=batch_size, progress=progress, workdir=workdir,
        guidance_scale=guidance_scale, guidance_spec=guidance_spec, guide=guide,
    )
    reference_path = reference or os.path.join(
        reference_dir, f"reference_{config.data.name}_{reference_split}_{name}.npz"
    )
    reference_stats, reference_feats = reference_features(
        config, feature_fn, name, split=reference_split, path=reference_path,
        batch_size=batch_size, progress=progress,
    )
    image = len(tuple(config.data.shape)) == 3
    quality = sample_quality(feature_fn, as_feature_inputs(samples, image), reference_stats,
                             reference_feats, batch_size, progress=progress)
    quality.update(
        feature_network=name, num_samples=num_samples, reference=reference_path,
        sampler=sampler or config.sample.sampler, grid=grid or config.sample.grid,
        num_steps=num_steps or config.sample.num_steps,
        protocol="sample i: normal(fold_in(split(key(seed))[0], i))",
    )
    return quality
