"""Evaluate a trained checkpoint: ``python evaluate.py --workdir runs/digits``.

Writes a JSON report (default ``<workdir>/eval/report.json``) with

* **bits/dim** of the test split: probability-flow log-likelihood
  (:func:`diffusion_jax.likelihood.bits_per_dim`, uniform dequantisation, data in ``[-1, 1]`` so
  the offset is ``+7``) from ``sigma_min`` to the process's ``sigma_max``;
* **FID, KID, Inception Score, precision/recall** of ``num_samples`` samples against reference
  features of the data (``--reference_split``, cached as ``.npz`` in ``<workdir>/eval``). Features:
  the bundled digits classifier for ``digits``; FID Inception-v3 for other images when
  ``--inception_weights`` names a local converted weight file (no download); raw coordinates for
  toy 2-D data.

Sampling protocol: sample ``i`` starts from ``normal(fold_in(noise_key, i))`` with
``noise_key = split(key(seed))[0]`` (``sample.generate``), so sample ``i`` does not depend on the
batch size; the sampler, grid and number of steps default to the run's config.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from diffusion_jax import checkpoints, data, likelihood, metrics

FLAGS = flags.FLAGS


def define_flags():
    """The CLI's flags (defined only when run as a script)."""
    flags.DEFINE_string("workdir", None, "Training run directory (checkpoint).")
    flags.DEFINE_string("ema", "first", "'first', 'raw' or an EMA name.")
    flags.DEFINE_integer("num_samples", None, "Samples for FID/KID/IS (default config.eval).")
    flags.DEFINE_integer("seed", 0, "Sampling seed (sample i uses fold_in(noise_key, i)).")
    flags.DEFINE_string("sampler", None, "Sampler name (default: the config's).")
    flags.DEFINE_string("grid", None, "Sigma grid name (default: the config's).")
    flags.DEFINE_integer("num_steps", None, "Sampler steps (default: the config's).")
    flags.DEFINE_integer("batch_size", 256, "Batch size for sampling and features.")
    flags.DEFINE_string("split", "test", "Split for bits/dim.")
    flags.DEFINE_string("reference_split", "train", "Split for the reference statistics.")
    flags.DEFINE_string("reference", None, "Reference .npz (mu, sigma[, features]); default: "
                        "computed from --reference_split and cached under workdir/eval.")
    flags.DEFINE_integer("bpd_examples", 256, "Test examples for bits/dim (0: skip).")
    flags.DEFINE_integer("bpd_batch_size", 64, "Examples per likelihood solve batch.")
    flags.DEFINE_float("bpd_sigma_min", 2e-3, "VE noise level where the likelihood is taken.")
    flags.DEFINE_enum("bpd_divergence", "hutchinson", ["hutchinson", "exact"], "Divergence.")
    flags.DEFINE_float("bpd_tolerance", 1e-5, "rtol = atol of the adaptive likelihood solve.")
    flags.DEFINE_string("inception_weights", None, "Converted FID Inception .npz (non-digits).")
    flags.DEFINE_string("output", None, "Report path (default workdir/eval/report.json).")


# -- feature networks: name -> constructor ----------------------------------------------------


def _digits_features(_):
    from diffusion_jax.metrics.digits_classifier import (
        digits_feature_function,
        load_digits_classifier,
    )

    return digits_feature_function(load_digits_classifier())


def _inception_features(weights):
    from diffusion_jax.metrics.inception import inception_feature_function, load_inception

    return inception_feature_function(load_inception(weights))


def _identity_features(_):
    return lambda x: (jnp.asarray(x), None)


FEATURE_NETWORKS = {
    "digits_classifier": _digits_features,
    "inception_v3": _inception_features,
    "identity": _identity_features,
}


def feature_network_name(config, inception_weights):
    """Which feature network fits the data: digits classifier, Inception-v3 (when a weight file is
    given) or raw coordinates for toy 2-D data; ``None`` when no suitable network is available."""
    if len(tuple(config.data.shape)) != 3:
        return "identity"
    if config.data.name == "digits":
        return "digits_classifier"
    return "inception_v3" if inception_weights else None


def extract(feature_fn, inputs, batch_size):
    """Features and logits (or ``None``) of ``inputs`` in fixed-size batches (one compilation)."""
    features, logits = [], []
    for start in range(0, len(inputs), batch_size):
        batch = inputs[start:start + batch_size]
        count = len(batch)
        if count < batch_size:  # pad the last batch so every call has the same shape
            batch = np.concatenate([batch, np.repeat(batch[-1:], batch_size - count, axis=0)])
        batch_features, batch_logits = feature_fn(batch)
        features.append(np.asarray(batch_features, np.float64)[:count])
        if batch_logits is not None:
            logits.append(np.asarray(batch_logits, np.float64)[:count])
    return np.concatenate(features), (np.concatenate(logits) if logits else None)


def load_split(config, split):
    """Host data of ``split``: ``{"image": uint8}`` for images or ``{"x": float}`` for toy data."""
    import train as train_cli

    config = train_cli.as_config(config).copy_and_resolve_references()
    with config.unlocked():
        config.data.split = split
    return train_cli.load_arrays(config)


def as_feature_inputs(samples, image):
    """Generated samples (model range) quantised like the data: ``uint8`` images, floats for toy."""
    return data.to_uint8(samples) if image else np.asarray(samples, np.float32)


def reference_features(config, feature_fn, name, *, split, path, batch_size):
    """Reference ``(statistics, features)``: read from ``path`` if it exists, else computed from
    ``split`` of the data and written there."""
    if os.path.exists(path):
        reference = metrics.load_reference(path)
        statistics = metrics.FeatureStatistics.load(path)
        return statistics, reference.get("features")
    arrays = load_split(config, split)
    inputs = arrays["image"] if "image" in arrays else arrays["x"]
    features, _ = extract(feature_fn, inputs, batch_size)
    statistics = metrics.FeatureStatistics().update(features)
    statistics.save(path, features=features)
    print(f"wrote reference statistics of {name} on {config.data.name}/{split} to {path}")
    return statistics, features


def sample_quality(feature_fn, samples_input, reference_stats, reference_feats, batch_size):
    """FID, KID, IS and precision/recall of generated inputs against the reference."""
    features, logits = extract(feature_fn, samples_input, batch_size)
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


def evaluate_bits_per_dim(denoiser, config, images, *, key, sigma_min, sigma_max, divergence,
                          tolerance, batch_size):
    """Mean bits/dim of uint8 ``images`` with its standard error and mean NFE."""
    bpd_fn = jax.jit(
        lambda images, key: likelihood.bits_per_dim(
            denoiser, images, key=key, sigma_min=sigma_min, sigma_max=sigma_max,
            divergence=divergence, rtol=tolerance, atol=tolerance, dtype=jnp.float32,
        )
    )
    values, nfes = [], []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        count = len(batch)
        if count < batch_size:
            batch = np.concatenate([batch, np.repeat(batch[-1:], batch_size - count, axis=0)])
        bpd, nfe = bpd_fn(jnp.asarray(batch), jax.random.fold_in(key, start))
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


def process_sigma_max(config):
    """The process's VE noise level at ``t_max`` (finite), else the sampler's ``sigma_max``."""
    import train as train_cli

    process = train_cli.build_process(config)
    sigma_max = float(process.ve_sigma(process.t_max))
    return sigma_max if math.isfinite(sigma_max) else float(config.sample.sigma_max)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.workdir:
        raise app.UsageError("--workdir is required")
    import sample as sample_cli
    import train as train_cli

    start_time = time.time()
    try:
        denoiser, config = sample_cli.load(FLAGS.workdir, ema=FLAGS.ema)
    except (ValueError, FileNotFoundError, checkpoints.CheckpointError) as error:
        print(f"ERROR: {error}", file=sys.stderr, flush=True)
        sys.exit(1)
    config = train_cli.as_config(config)
    image = len(tuple(config.data.shape)) == 3
    eval_dir = os.path.join(FLAGS.workdir, "eval")
    os.makedirs(eval_dir, exist_ok=True)
    report = {"workdir": os.path.abspath(FLAGS.workdir), "data": config.data.name,
              "ema": FLAGS.ema, "seed": FLAGS.seed}

    if image and FLAGS.bpd_examples > 0:
        images = load_split(config, FLAGS.split)["image"][:FLAGS.bpd_examples]
        report["bits_per_dim"] = evaluate_bits_per_dim(
            denoiser, config, images, key=jax.random.key(FLAGS.seed + 1),
            sigma_min=FLAGS.bpd_sigma_min, sigma_max=process_sigma_max(config),
            divergence=FLAGS.bpd_divergence, tolerance=FLAGS.bpd_tolerance,
            batch_size=min(FLAGS.bpd_batch_size, len(images)),
        )
        report["bits_per_dim"]["split"] = FLAGS.split
        print(f"bits/dim on {FLAGS.split}: {report['bits_per_dim']['mean']:.4f}", flush=True)

    name = feature_network_name(config, FLAGS.inception_weights)
    if name is None:
        report["sample_quality"] = "skipped: no feature network (pass --inception_weights)"
    else:
        feature_fn = FEATURE_NETWORKS[name](FLAGS.inception_weights)
        num_samples = FLAGS.num_samples or config.eval.num_samples
        samples, _ = sample_cli.generate(
            denoiser, config, num_samples=num_samples, seed=FLAGS.seed, sampler=FLAGS.sampler,
            grid=FLAGS.grid, num_steps=FLAGS.num_steps, batch_size=FLAGS.batch_size,
        )
        reference_path = FLAGS.reference or os.path.join(
            eval_dir, f"reference_{config.data.name}_{FLAGS.reference_split}_{name}.npz"
        )
        reference_stats, reference_feats = reference_features(
            config, feature_fn, name, split=FLAGS.reference_split, path=reference_path,
            batch_size=FLAGS.batch_size,
        )
        quality = sample_quality(feature_fn, as_feature_inputs(samples, image), reference_stats,
                                 reference_feats, FLAGS.batch_size)
        quality.update(
            feature_network=name, num_samples=num_samples, reference=reference_path,
            sampler=FLAGS.sampler or config.sample.sampler, grid=FLAGS.grid or config.sample.grid,
            num_steps=FLAGS.num_steps or config.sample.num_steps,
            protocol="sample i: normal(fold_in(split(key(seed))[0], i))",
        )
        report["sample_quality"] = quality
        print("sample quality: " + ", ".join(
            f"{k} {v:.4g}" for k, v in quality.items() if isinstance(v, float)), flush=True)

    report["seconds"] = time.time() - start_time
    output = FLAGS.output or os.path.join(eval_dir, "report.json")
    with open(output, "w") as handle:
        json.dump(report, handle, indent=2)
    print(f"wrote {output}", flush=True)


if __name__ == "__main__":
    define_flags()
    app.run(main)
