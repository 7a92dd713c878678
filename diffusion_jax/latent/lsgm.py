"""LSGM: a VAE whose latent prior is a score-based diffusion model, trained end to end (Vahdat,
Kreis & Kautz 2021, "Score-based generative modeling in latent space").

Negative ELBO per example (LSGM eq. 2 and Sec. 3.1):

    -ELBO(x) = -E_q[log p(x|z0)] - H(q(z0|x)) + CE(q(z0|x) || p(z0)),

with the cross entropy estimated by likelihood-weighted denoising score matching (LSGM eq. 6;
Song et al. 2021b, "Maximum likelihood training of score-based diffusion models", Thm. 1 in DSM
form) on one posterior sample ``z0``:

    CE ~ 1/2 int_{t_min}^{T} g(t)^2 / sigma(t)^2 E||eps - eps_theta(z_t, t)||^2 dt + C(z0),

``C(z0) = -E[log N(z_T; 0, sigma(T)^2 I)] - D log(sigma(T) / sigma(t_min))``
(:func:`diffusion_jax.losses.elbo_constant`; for VP it is LSGM's ``D/2 log(2 pi e sigma_0^2)`` up
to the prior mismatch). The time integral is a one-sample Monte Carlo estimate with ``t`` drawn
from LSGM's importance distribution for the likelihood weighting (Sec. 3.3, "variance reduction"),
``r(t) ~ g(t)^2 / sigma(t)^2``, which for every affine process is log-uniform in the VE noise level
(:class:`diffusion_jax.schedules.LikelihoodWeighting` over
:class:`diffusion_jax.schedules.LogUniformSigma`: the importance weight is a constant), or from
``U[t_min, T]`` without importance sampling. ``eps_theta`` may use LSGM's mixed score (Sec. 3.2):
``eps = (1 - a) sigma(t) z_t + a eps'(z_t, t)`` with a learned ``a in (0, 1)`` per latent channel,
the residual on the standard-Normal prior's exact epsilon (variance-preserving processes only).

A *model* here is anything with ``posterior(x) -> (mean, log_variance)``,
``decoder_distribution(z) -> (mean, log_scale)`` (a diagonal Gaussian ``p(x|z)``) and
``prior_epsilon(z_t, t, cond=None, *, process) -> epsilon``: :class:`LSGM` (one NNX module, so it
trains as one network in :func:`diffusion_jax.training.make_train_step`) or the linear-Gaussian
toy of :mod:`diffusion_jax.latent.toys`. LSGM's image decoder is a discretised logistic mixture;
here it is a Gaussian with a learned per-channel scale, and bits/dim use the uniform
dequantisation rule of :func:`diffusion_jax.likelihood.bits_per_dim`.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from diffusion_jax.denoisers import ProcessDenoiser
from diffusion_jax.latent.autoencoders import (
    LOG_VARIANCE_RANGE,
    Decoder,
    Encoder,
    LatentGeometry,
    posterior_sample,
)
from diffusion_jax.latent.losses import gaussian_entropy, gaussian_log_likelihood
from diffusion_jax.losses import denoising_loss, elbo_constant
from diffusion_jax.processes import Process
from diffusion_jax.pytrees import frozen_pytree
from diffusion_jax.schedules import LikelihoodWeighting, LogUniformSigma, UniformTime

__all__ = [
    "LSGM",
    "diffusion_cross_entropy",
    "lsgm_terms",
    "lsgm_loss",
    "prior_denoiser",
]


def _check_variance_preserving(process):
    t = 0.5 * process.t_max
    with jax.ensure_compile_time_eval():
        total = process.alpha(t) ** 2 + process.sigma(t) ** 2
    if isinstance(total, jax.core.Tracer):  # a process with traced parameters: not checkable
        return
    if not np.isclose(float(total), 1.0, rtol=1e-4):
        raise ValueError(
            f"the mixed score needs a variance-preserving process (alpha^2 + sigma^2 = 1); "
            f"{type(process).__name__} has {total:.4g} at t = {t}"
        )


class LSGM(LatentGeometry, nnx.Module):
    """Encoder, decoder and latent score prior of LSGM in one NNX module (Vahdat et al. 2021).

    ``encoder`` / ``decoder``: the :class:`~diffusion_jax.latent.autoencoders.Encoder` /
    ``Decoder`` of the KL autoencoder (posterior ``N(mean, diag exp(log_variance))`` on latents
    ``(B, H/f, W/f, latent_channels)``); ``log_scale``: the decoder's learned per-channel log
    standard deviation (initial value ``decoder_log_scale``); ``prior``: any network
    ``prior(z_t, c_noise, cond) -> epsilon'`` on latents with ``c_noise = time_scale * t`` (e.g.
    :class:`diffusion_jax.networks.UNet` with ``image_shape = latent shape``). With
    ``mixed_score`` a per-channel ``mixing_logit`` gives LSGM's mixed score (Sec. 3.2). It is also
    an autoencoder for :class:`~diffusion_jax.latent.codec.Codec` (``encode``, ``decode``).
    """

    def __init__(self, *, in_channels, prior: nnx.Module, latent_channels=4, base_channels=64,
                 channel_multipliers=(1, 2), num_res_blocks=1, attention=True, dropout=0.0,
                 time_scale=1.0, mixed_score=True, decoder_log_scale=-2.0, dtype=None,
                 rngs: nnx.Rngs):
        architecture = {"base_channels": base_channels, "channel_multipliers":
                        tuple(channel_multipliers), "num_res_blocks": num_res_blocks,
                        "attention": attention, "dropout": dropout, "dtype": dtype, "rngs": rngs}
        self.in_channels = in_channels
        self.latent_channels = latent_channels
        self.time_scale = float(time_scale)
        self.encoder = Encoder(in_channels=in_channels, out_channels=2 * latent_channels,
                               **architecture)
        self.decoder = Decoder(latent_channels=latent_channels, out_channels=in_channels,
                               **architecture)
        self.prior = prior
        self.log_scale = nnx.Param(jnp.full((in_channels,), decoder_log_scale, jnp.float32))
        self.mixing_logit = (nnx.Param(jnp.zeros((latent_channels,), jnp.float32))
                             if mixed_score else None)

    def posterior(self, x):
        """``(mean, log_variance)`` of ``q(z0|x)``."""
        mean, log_variance = jnp.split(self.encoder(x), 2, axis=-1)
        return mean, jnp.clip(log_variance, *LOG_VARIANCE_RANGE)

    def decoder_distribution(self, z):
        """``(mean, log_scale)`` of the Gaussian ``p(x|z)``."""
        return self.decoder(z), self.log_scale[...].astype(z.dtype)

    def prior_epsilon(self, z_t, t, cond=None, *, process: Process):
        """The prior's epsilon prediction at ``z_t``, process time ``t`` (shape ``(B,)``)."""
        epsilon = self.prior(z_t, self.time_scale * t, cond).astype(z_t.dtype)
        if self.mixing_logit is None:
            return epsilon
        _check_variance_preserving(process)
        mix = jax.nn.sigmoid(self.mixing_logit[...]).astype(z_t.dtype)
        sigma = jnp.reshape(process.sigma(t), jnp.shape(t) + (1,) * (z_t.ndim - jnp.ndim(t)))
        return (1.0 - mix) * sigma * z_t + mix * epsilon

    def encode(self, x, key=None):
        """Posterior mean (or a posterior sample with ``key``)."""
        return posterior_sample(*self.posterior(x), key)

    def decode(self, z):
        """The decoder's mean image."""
        return self.decoder(z)


@frozen_pytree
class _PriorEpsilonNetwork:
    """``network(z_t, t, cond) = model.prior_epsilon(z_t, t, cond, process=process)``."""

    model: Any
    process: Process

    def __call__(self, z_t, t, cond=None):
        return self.model.prior_epsilon(z_t, t, cond, process=self.process)


def prior_denoiser(model, process: Process):
    """The latent prior of ``model`` as a VE-frame denoiser ``D(z, sigma, cond)`` (the library's
    one model contract), so every sampler draws latents from it; decode them with a
    :class:`~diffusion_jax.latent.codec.Codec` of scale 1 around ``model``."""
    return ProcessDenoiser(_PriorEpsilonNetwork(model, process), process, "epsilon")


def diffusion_cross_entropy(epsilon_model, z0, key, *, process: Process, t_min=1e-5,
                            importance_sampling=True, cond=None, stratification="iid"):
    """Per-example upper bound on ``-log p(z0)`` under a diffusion prior, in nats: the
    likelihood-weighted DSM estimate of LSGM eq. 6 / Song et al. 2021b, Thm. 1 (module docstring).

    ``epsilon_model(z_t, t, cond) -> epsilon`` in ``process`` time; ``t`` from LSGM's importance
    distribution ``~ g^2 / sigma^2`` on ``[t_min, T]`` (``importance_sampling``) or uniform.
    Averaged over a posterior ``q(z0|x)`` it is the cross entropy ``CE(q || p)``.
    """
    if not isinstance(process.t_max, jax.core.Tracer) and not 0.0 < t_min < process.t_max:
        raise ValueError(f"t_min must lie in (0, t_max = {process.t_max}); got {t_min}")
    if importance_sampling:
        t_distribution = LogUniformSigma(sigma_min=process.ve_sigma(t_min),
                                         sigma_max=process.ve_sigma(process.t_max))
    else:
        t_distribution = UniformTime(t_min=t_min)
    dsm_key, prior_key = jax.random.split(key)
    weighted_error, t = denoising_loss(
        epsilon_model, z0, dsm_key, process=process, prediction="epsilon",
        t_distribution=t_distribution, weighting=LikelihoodWeighting(), cond=cond,
        stratification=stratification, reduce="sum", return_t=True)
    integral = 0.5 * weighted_error * jnp.exp(-t_distribution.log_density(t, process))
    return integral + elbo_constant(process, z0, prior_key, t_min=t_min)


def lsgm_terms(model, x, key, *, process: Process, t_min=1e-5, importance_sampling=True,
               cond=None, num_bits=None, data_range=(-1.0, 1.0), stratification="iid"):
    """Per-example negative ELBO of LSGM and its parts (dict of ``(batch,)`` arrays, nats):

    ``reconstruction = -log p(x|z0)`` at one posterior sample ``z0``, ``entropy = H(q(z0|x))``
    (closed form), ``cross_entropy`` (:func:`diffusion_cross_entropy` at ``z0``),
    ``kl = cross_entropy - entropy``, ``negative_elbo = reconstruction + kl`` and
    ``bits_per_dim = negative_elbo / (D ln 2)``, plus ``num_bits - log2(hi - lo)`` for
    ``num_bits``-bit data dequantised into ``data_range`` (the rule of
    :func:`diffusion_jax.likelihood.bits_per_dim`). Unbiased for the ELBO; gradients reach the
    encoder, decoder and prior (end-to-end training, LSGM Sec. 3.1).
    """
    posterior_key, prior_key = jax.random.split(key)
    mean, log_variance = model.posterior(x)
    z0 = posterior_sample(mean, log_variance, posterior_key)
    x_mean, x_log_scale = model.decoder_distribution(z0)
    reconstruction = -gaussian_log_likelihood(x, x_mean, x_log_scale)
    entropy = gaussian_entropy(log_variance)
    cross_entropy = diffusion_cross_entropy(
        _PriorEpsilonNetwork(model, process), z0, prior_key, process=process, t_min=t_min,
        importance_sampling=importance_sampling, cond=cond, stratification=stratification)
    kl = cross_entropy - entropy
    negative_elbo = reconstruction + kl
    dims = math.prod(jnp.shape(x)[1:])
    bits = negative_elbo / (dims * math.log(2.0))
    if num_bits is not None:
        low, high = data_range
        bits = bits + num_bits - math.log2(high - low)
    return {"negative_elbo": negative_elbo, "bits_per_dim": bits,
            "reconstruction": reconstruction, "entropy": entropy,
            "cross_entropy": cross_entropy, "kl": kl}


def lsgm_loss(model, x, key, **options):
    """Per-example negative ELBO (nats) of :func:`lsgm_terms`: the LSGM training loss with the
    likelihood weighting for all three networks (``loss_fn`` of ``training.make_train_step`` via
    a lambda picking the images; ``options`` as for :func:`lsgm_terms`)."""
    return lsgm_terms(model, x, key, **options)["negative_elbo"]
