"""Autoencoder objectives and diagonal-Gaussian terms (per example, all axes but the first summed
unless stated).

* :func:`kl_autoencoder_loss`: Rombach et al. 2022 (LDM, Sec. 3.1 and App. G; ``ldm``'s
  ``LPIPSWithDiscriminator`` without its LPIPS and GAN parts): ``sum |x - x_hat|`` (or squared) +
  ``kl_weight * KL(q(z|x) || N(0, I))`` with LDM's ``kl_weight = 1e-6`` relative to a *summed*
  reconstruction error. The perceptual (LPIPS) and adversarial terms of LDM need a feature network
  with natural-image weights, which is not available offline here, so they are not offered.
* :func:`gaussian_kl`, :func:`gaussian_entropy`, :func:`gaussian_log_likelihood`: closed forms of
  the ELBO terms (Kingma & Welling 2014, App. B).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

__all__ = [
    "RECONSTRUCTIONS",
    "reconstruction_error",
    "gaussian_kl",
    "gaussian_entropy",
    "gaussian_log_likelihood",
    "kl_autoencoder_loss",
]

RECONSTRUCTIONS = ("l1", "l2")


def _sum_per_example(values):
    return jnp.sum(jnp.reshape(values, (jnp.shape(values)[0], -1)), axis=-1)


def reconstruction_error(x, reconstruction, *, kind="l1", reduce="sum"):
    """Per-example ``|x - x_hat|`` ("l1") or ``(x - x_hat)^2`` ("l2"), summed (LDM) or averaged
    (``reduce="mean"``) over pixels."""
    if kind not in RECONSTRUCTIONS:
        raise ValueError(f"unknown reconstruction {kind!r}; expected one of {RECONSTRUCTIONS}")
    if reduce not in ("sum", "mean"):
        raise ValueError(f"unknown reduce {reduce!r}; expected 'sum' or 'mean'")
    if jnp.shape(x) != jnp.shape(reconstruction):
        raise ValueError(
            f"reconstruction shape {jnp.shape(reconstruction)} != data shape {jnp.shape(x)}"
        )
    difference = jnp.asarray(x) - reconstruction
    error = _sum_per_example(jnp.abs(difference) if kind == "l1" else difference**2)
    return error if reduce == "sum" else error / math.prod(jnp.shape(x)[1:])


def gaussian_kl(mean, log_variance):
    """``KL(N(mean, diag exp(log_variance)) || N(0, I)) = 1/2 sum(mean^2 + var - 1 - log var)``
    (Kingma & Welling 2014, App. B)."""
    return 0.5 * _sum_per_example(mean**2 + jnp.exp(log_variance) - 1.0 - log_variance)


def gaussian_entropy(log_variance):
    """Entropy ``1/2 sum(log(2 pi e) + log var)`` of a diagonal Gaussian."""
    return 0.5 * _sum_per_example(log_variance + math.log(2.0 * math.pi) + 1.0)


def gaussian_log_likelihood(x, mean, log_scale):
    """``log N(x; mean, diag exp(2 log_scale))`` per example (``log_scale`` broadcasts)."""
    log_scale = jnp.broadcast_to(log_scale, jnp.shape(x))
    standardized = (jnp.asarray(x) - mean) * jnp.exp(-log_scale)
    return -_sum_per_example(0.5 * standardized**2 + log_scale + 0.5 * math.log(2.0 * math.pi))


def kl_autoencoder_loss(autoencoder, x, key, *, kl_weight=1e-6, reconstruction="l1",
                        sample_posterior=True):
    """Per-example LDM autoencoder loss ``sum rec(x, D(z)) + kl_weight KL(q(z|x) || N(0, I))``
    with ``z`` a posterior sample (the posterior mean with ``sample_posterior=False``).

    Rombach et al. 2022, Sec. 3.1 / App. G (``kl_weight = 1e-6``); ``autoencoder`` is a
    :class:`~diffusion_jax.latent.autoencoders.KLAutoencoder` (anything returning
    ``(reconstruction, mean, log_variance)`` from ``autoencoder(x, key)``). Shape ``(batch,)``;
    use it as ``loss_fn(network, batch, key)`` of :func:`diffusion_jax.training.make_train_step`
    through a lambda picking the images from the batch.
    """
    if not isinstance(kl_weight, jax.core.Tracer) and not kl_weight >= 0:
        raise ValueError(f"kl_weight must be >= 0; got {kl_weight}")
    x_hat, mean, log_variance = autoencoder(x, key if sample_posterior else None)
    return (reconstruction_error(x, x_hat, kind=reconstruction)
            + kl_weight * gaussian_kl(mean, log_variance))
