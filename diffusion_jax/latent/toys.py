"""Linear-Gaussian VAE: every term of the latent family in closed form.

Model (probabilistic PCA / factor analysis; Tipping & Bishop 1999): prior ``p(z) = N(m, S)`` in
``k`` dimensions, decoder ``p(x|z) = N(W z + c, sigma_x^2 I)`` in ``d`` dimensions, so
``p(x) = N(W m + c, W S W^T + sigma_x^2 I)`` and the exact posterior is
``p(z|x) = N(P^-1 (S^-1 m + W^T (x - c) / sigma_x^2), P^-1)`` with
``P = S^-1 + W^T W / sigma_x^2``. Encoder ``q(z|x) = N(A x + b, diag exp(log_variance))``.
Closed forms: ``KL(q || p)``, ``E_q log p(x|z)``, the ELBO and its gap
``log p(x) - ELBO = KL(q(z|x) || p(z|x))``. For data ``x ~ N(mu_x, Sigma_x)`` the encoded latents
are Gaussian, ``N(A mu_x + b, A Sigma_x A^T + diag var)``, so the latent diffusion's ideal denoiser
is exact (:class:`diffusion_jax.analytic.GaussianMixture`).

A :class:`LinearGaussianVAE` is an autoencoder for :class:`~diffusion_jax.latent.codec.Codec`
(``encode``, ``decode``) and an LSGM model for :func:`~diffusion_jax.latent.lsgm.lsgm_terms`
whose diffusion prior is the exact epsilon of ``N(m, S)`` under the given process.
Arrays: ``x (B, d)``, ``z (B, k)``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from diffusion_jax.analytic import GaussianMixture
from diffusion_jax.latent.autoencoders import posterior_sample
from diffusion_jax.processes import Process
from diffusion_jax.pytrees import frozen_pytree

__all__ = ["LinearGaussianVAE", "gaussian_log_density", "gaussian_kl_divergence"]


def gaussian_log_density(x, mean, covariance):
    """``log N(x; mean, covariance)`` for ``x (B, d)`` (Cholesky)."""
    dim = covariance.shape[-1]
    cholesky = jnp.linalg.cholesky(covariance)
    white = jax.scipy.linalg.solve_triangular(cholesky, (x - mean).T, lower=True)
    log_det = 2.0 * jnp.sum(jnp.log(jnp.diag(cholesky)))
    return -0.5 * (jnp.sum(white**2, axis=0) + log_det + dim * math.log(2.0 * math.pi))


def gaussian_kl_divergence(mean_q, covariance_q, mean_p, covariance_p):
    """``KL(N(mean_q, covariance_q) || N(mean_p, covariance_p))`` for ``mean_q (B, k)``:
    ``1/2 [tr(S_p^-1 S_q) + (m_p - m_q)^T S_p^-1 (m_p - m_q) - k + log det S_p - log det S_q]``."""
    dim = covariance_p.shape[-1]
    inverse_p = jnp.linalg.inv(covariance_p)
    difference = mean_p - mean_q
    mahalanobis = jnp.einsum("bi,ij,bj->b", difference, inverse_p, difference)
    log_det_ratio = jnp.linalg.slogdet(covariance_p)[1] - jnp.linalg.slogdet(covariance_q)[1]
    return 0.5 * (jnp.trace(inverse_p @ covariance_q) + mahalanobis - dim + log_det_ratio)


@frozen_pytree
class LinearGaussianVAE:
    """``q(z|x) = N(A x + b, diag exp(log_variance))``, ``p(x|z) = N(W z + c, sigma_x^2 I)``,
    ``p(z) = N(m, S)`` (module docstring). Fields: ``encoder_matrix A (k, d)``,
    ``encoder_bias b (k,)``, ``encoder_log_variance (k,)``, ``decoder_matrix W (d, k)``,
    ``decoder_bias c (d,)``, ``decoder_log_scale`` (``log sigma_x``), ``prior_mean m (k,)``,
    ``prior_covariance S (k, k)``."""

    encoder_matrix: jax.Array
    encoder_bias: jax.Array
    encoder_log_variance: jax.Array
    decoder_matrix: jax.Array
    decoder_bias: jax.Array
    decoder_log_scale: jax.Array
    prior_mean: jax.Array
    prior_covariance: jax.Array

    # -- encoder and decoder ------------------------------------------------------------------
    def posterior(self, x):
        """``(mean, log_variance)`` of ``q(z|x)``, each ``(B, k)``."""
        mean = x @ self.encoder_matrix.T + self.encoder_bias
        return mean, jnp.broadcast_to(self.encoder_log_variance, mean.shape)

    def encode(self, x, key=None):
        """Posterior mean (or a posterior sample with ``key``)."""
        return posterior_sample(*self.posterior(x), key)

    def decode(self, z):
        """Decoder mean ``W z + c``."""
        return z @ self.decoder_matrix.T + self.decoder_bias

    def decoder_distribution(self, z):
        """``(W z + c, log sigma_x)`` of ``p(x|z)``."""
        return self.decode(z), self.decoder_log_scale

    # -- the prior ----------------------------------------------------------------------------
    def prior(self):
        """``p(z) = N(m, S)`` as an exact :class:`~diffusion_jax.analytic.GaussianMixture`."""
        return GaussianMixture.create(self.prior_mean[None], self.prior_covariance[None])

    def prior_epsilon(self, z_t, t, cond=None, *, process: Process):
        """Exact epsilon of the diffusion prior started at ``N(m, S)``:
        ``(z_t - alpha E[z0 | z_t]) / sigma`` with the Gaussian posterior mean (Tweedie)."""
        del cond
        alpha, sigma = process.alpha(t)[:, None], process.sigma(t)[:, None]
        z0_hat = self.prior().denoise(z_t / alpha, process.ve_sigma(t))
        return (z_t - alpha * z0_hat) / sigma

    # -- closed forms -------------------------------------------------------------------------
    def kl(self, x):
        """``KL(q(z|x) || p(z))`` per example."""
        mean, _ = self.posterior(x)
        return gaussian_kl_divergence(mean, jnp.diag(jnp.exp(self.encoder_log_variance)),
                                      self.prior_mean[None], self.prior_covariance)

    def expected_log_likelihood(self, x):
        """``E_q[log p(x|z)] = -d/2 log(2 pi sigma_x^2) - (||x - W mu_q - c||^2 +
        tr(W diag(var) W^T)) / (2 sigma_x^2)`` per example."""
        mean, _ = self.posterior(x)
        dim = x.shape[-1]
        variance_x = jnp.exp(2.0 * self.decoder_log_scale)
        residual = jnp.sum((x - self.decode(mean)) ** 2, axis=-1)
        spread = jnp.sum(jnp.exp(self.encoder_log_variance) * jnp.sum(self.decoder_matrix**2,
                                                                         axis=0))
        return (-0.5 * dim * jnp.log(2.0 * math.pi * variance_x)
                - 0.5 * (residual + spread) / variance_x)

    def elbo(self, x):
        """``E_q[log p(x|z)] - KL(q(z|x) || p(z))`` per example."""
        return self.expected_log_likelihood(x) - self.kl(x)

    def marginal_covariance(self):
        """``W S W^T + sigma_x^2 I``."""
        dim = self.decoder_matrix.shape[0]
        return (self.decoder_matrix @ self.prior_covariance @ self.decoder_matrix.T
                + jnp.exp(2.0 * self.decoder_log_scale) * jnp.eye(dim))

    def log_marginal(self, x):
        """Exact ``log p(x) = log N(x; W m + c, W S W^T + sigma_x^2 I)`` per example."""
        return gaussian_log_density(x, self.decode(self.prior_mean[None]),
                                    self.marginal_covariance())

    def exact_posterior(self, x):
        """``(mean (B, k), covariance (k, k))`` of ``p(z|x)``."""
        inverse_prior = jnp.linalg.inv(self.prior_covariance)
        precision = inverse_prior + (self.decoder_matrix.T @ self.decoder_matrix
                                     * jnp.exp(-2.0 * self.decoder_log_scale))
        covariance = jnp.linalg.inv(precision)
        information = (inverse_prior @ self.prior_mean
                       + ((x - self.decoder_bias) @ self.decoder_matrix)
                       * jnp.exp(-2.0 * self.decoder_log_scale))
        return information @ covariance.T, covariance

    def with_exact_posterior(self):
        """A copy whose encoder is the exact posterior ``p(z|x)`` (needs a diagonal posterior
        covariance, e.g. ``W`` with orthogonal columns and a diagonal ``S``)."""
        _, covariance = self.exact_posterior(jnp.zeros((1, self.decoder_matrix.shape[0])))
        off_diagonal = covariance - jnp.diag(jnp.diag(covariance))
        if not isinstance(covariance, jax.core.Tracer) and float(
                jnp.max(jnp.abs(off_diagonal))) > 1e-6 * float(jnp.max(jnp.abs(covariance))):
            raise ValueError("the exact posterior covariance is not diagonal: a diagonal encoder "
                             "cannot represent it (use W with orthogonal columns and diagonal S)")
        inverse_prior = jnp.linalg.inv(self.prior_covariance)
        inverse_noise = jnp.exp(-2.0 * self.decoder_log_scale)
        matrix = covariance @ self.decoder_matrix.T * inverse_noise
        bias = covariance @ (inverse_prior @ self.prior_mean
                             - self.decoder_matrix.T @ self.decoder_bias * inverse_noise)
        return LinearGaussianVAE(matrix, bias, jnp.log(jnp.diag(covariance)),
                                 self.decoder_matrix, self.decoder_bias, self.decoder_log_scale,
                                 self.prior_mean, self.prior_covariance)

    def latent_marginal(self, data_mean, data_covariance, *, scale=1.0):
        """The encoded latents ``scale * z``, ``z ~ q(z|x)``, of data ``x ~ N(data_mean,
        data_covariance)``: ``N(scale (A mu + b), scale^2 (A Sigma A^T + diag var))`` as a
        :class:`~diffusion_jax.analytic.GaussianMixture` (the LDM's exact latent marginal)."""
        mean = self.encoder_matrix @ data_mean + self.encoder_bias
        covariance = (self.encoder_matrix @ data_covariance @ self.encoder_matrix.T
                      + jnp.diag(jnp.exp(self.encoder_log_variance)))
        return GaussianMixture.create((scale * mean)[None], (scale**2 * covariance)[None])
