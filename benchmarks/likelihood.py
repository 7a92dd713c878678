"""Likelihood and feature-extractor benchmark: ``python benchmarks/likelihood.py [--quick]``.

1. Bits/dim error vs NFE and wall time of the probability-flow log-likelihood
   (:func:`diffusion_jax.likelihood.log_likelihood`) for an analytic Gaussian mixture in d = 64
   whose exact log-density is known, with exact and Hutchinson (Rademacher, Gaussian) divergence,
   over a sweep of tolerances ``rtol = atol``. The prior is the exact marginal at ``sigma_max``, so
   the error is solver + estimator error only (one row shows the default ``N(0, sigma_max^2 I)``).
   Float64; one float32 row.
2. Throughput of the feature extractors: the digits classifier (batch 256) and FID Inception-v3
   (random init, batch 8, 299x299).

Prints markdown tables and writes ``benchmarks/results/likelihood.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.analytic import GaussianMixture
from diffusion_jax.likelihood import log_likelihood

DIM = 64
NUM_COMPONENTS = 4
SIGMA_MIN, SIGMA_MAX = 1e-2, 80.0


def make_mixture(dtype):
    """Four components in d = 64 with random means and random anisotropic full covariances."""
    rng = np.random.default_rng(0)
    means = rng.standard_normal((NUM_COMPONENTS, DIM)) * 1.5
    covariances = []
    for _ in range(NUM_COMPONENTS):
        rotation = np.linalg.qr(rng.standard_normal((DIM, DIM)))[0]
        eigenvalues = np.exp(rng.uniform(np.log(0.01), np.log(1.0), DIM))
        covariances.append(rotation @ np.diag(eigenvalues) @ rotation.T)
    return GaussianMixture.create(jnp.asarray(means, dtype),
                                  covariances=jnp.asarray(np.stack(covariances), dtype))


def timed(fn, *args):
    """Wall time of a call after a warm-up call (compilation excluded)."""
    jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    result = jax.block_until_ready(fn(*args))
    return result, time.perf_counter() - start


def measure(mixture, x, exact_log_p, *, divergence, probe, num_probes, tolerance, prior):
    """One benchmark row: bits/dim error statistics, mean NFE and wall time of a solve."""
    prior_fn = None if prior == "gaussian" else (lambda z: mixture.log_prob(z, SIGMA_MAX))

    def run(x, key):
        return log_likelihood(
            mixture, x, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, key=key,
            divergence=divergence, probe=probe, num_probes=num_probes, rtol=tolerance,
            atol=tolerance, prior_log_prob=prior_fn,
        )

    (log_p, nfe), seconds = timed(run, x, jax.random.key(2))
    error_bpd = (np.asarray(log_p, np.float64) - exact_log_p) / (DIM * math.log(2.0))
    hutchinson = divergence == "hutchinson"
    return {
        "dtype": str(x.dtype), "divergence": divergence,
        "probe": probe if hutchinson else None, "num_probes": num_probes if hutchinson else None,
        "prior": prior, "tolerance": tolerance, "nfe_mean": float(np.mean(nfe)),
        "bpd_abs_error_mean": float(np.mean(np.abs(error_bpd))),
        "bpd_error_mean": float(np.mean(error_bpd)), "bpd_error_std": float(np.std(error_bpd)),
        "seconds": seconds, "num_points": int(x.shape[0]),
    }


def likelihood_rows(num_points, tolerances):
    rows = []
    settings = [("exact", None, 1), ("hutchinson", "rademacher", 1),
                ("hutchinson", "gaussian", 1), ("hutchinson", "rademacher", 8)]
    for dtype in (jnp.float64, jnp.float32):
        with jax.enable_x64(dtype == jnp.float64):
            mixture = make_mixture(dtype)
            x = mixture.sample(jax.random.key(1), num_points)
            exact_log_p = np.asarray(mixture.log_prob(x, SIGMA_MIN), np.float64)
            for divergence, probe, num_probes in settings:
                sweep = tolerances if dtype == jnp.float64 and num_probes == 1 else [1e-5]
                for tolerance in sweep:
                    priors = ["exact", "gaussian"] if (
                        tolerance == 1e-5 and divergence == "exact") else ["exact"]
                    for prior in priors:
                        rows.append(measure(
                            mixture, x, exact_log_p, divergence=divergence,
                            probe=probe or "rademacher", num_probes=num_probes,
                            tolerance=tolerance, prior=prior,
                        ))
                        print(rows[-1], flush=True)
    return rows


def feature_rows(inception_batch):
    from flax import nnx

    from diffusion_jax.metrics.digits_classifier import (
        digits_feature_function,
        load_digits_classifier,
    )
    from diffusion_jax.metrics.inception import InceptionV3, inception_feature_function

    rows = []
    digits = digits_feature_function(load_digits_classifier())
    images = np.random.default_rng(0).integers(0, 256, (256, 8, 8, 1), dtype=np.uint8)
    _, seconds = timed(digits, images)
    rows.append({"network": "digits_classifier", "input": "8x8x1", "batch": 256,
                 "images_per_second": 256 / seconds})
    inception = inception_feature_function(InceptionV3(rngs=nnx.Rngs(0)))
    images = np.random.default_rng(1).integers(0, 256, (inception_batch, 299, 299, 3),
                                               dtype=np.uint8)
    _, seconds = timed(inception, images)
    rows.append({"network": "inception_v3 (random init)", "input": "299x299x3",
                 "batch": inception_batch, "images_per_second": inception_batch / seconds})
    for row in rows:
        print(row, flush=True)
    return rows


def markdown(likelihood, features):
    lines = ["| dtype | divergence | probes | prior | rtol=atol | NFE | mean abs err (bits/dim) | "
             "mean err +- s.e. (bits/dim) | wall s |", "|---|---|---|---|---|---|---|---|---|"]
    for row in likelihood:
        probes = f"{row['num_probes']} {row['probe']}" if row["probe"] else "-"
        standard_error = row["bpd_error_std"] / math.sqrt(row["num_points"])
        lines.append(
            f"| {row['dtype']} | {row['divergence']} | {probes} | {row['prior']} | "
            f"{row['tolerance']:.0e} | {row['nfe_mean']:.0f} | {row['bpd_abs_error_mean']:.2e} | "
            f"{row['bpd_error_mean']:+.1e} +- {standard_error:.1e} | {row['seconds']:.2f} |"
        )
    lines += ["", "| feature network | input | batch | images/s |", "|---|---|---|---|"]
    for row in features:
        lines.append(f"| {row['network']} | {row['input']} | {row['batch']} | "
                     f"{row['images_per_second']:.1f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer points and tolerances")
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results",
                                                         "likelihood.json"))
    args = parser.parse_args()
    num_points = 8 if args.quick else 32
    tolerances = [1e-2, 1e-4] if args.quick else [1e-2, 1e-3, 1e-4, 1e-5, 1e-6]
    likelihood = likelihood_rows(num_points, tolerances)
    features = feature_rows(inception_batch=8)
    table = markdown(likelihood, features)
    print(table)
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as handle:
        json.dump({"likelihood": likelihood, "features": features, "dim": DIM,
                   "sigma_min": SIGMA_MIN, "sigma_max": SIGMA_MAX,
                   "device": str(jax.devices()[0]), "machine": platform.platform(),
                   "cpu_count": os.cpu_count(), "table": table}, handle, indent=2)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
