"""The linear-Gaussian VAE of the latent tests: d = 3, k = 2, W with orthogonal columns (so the
exact posterior is diagonal) and a non-optimal encoder."""

import jax.numpy as jnp
import numpy as np

from diffusion_jax.latent.toys import LinearGaussianVAE


def linear_gaussian_toy(prior_mean=(0.0, 0.0), prior_covariance=((1.0, 0.0), (0.0, 1.0))):
    basis, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))
    return LinearGaussianVAE(
        encoder_matrix=jnp.array([[0.4, -0.3, 0.2], [0.1, 0.5, -0.6]]),
        encoder_bias=jnp.array([0.1, -0.2]),
        encoder_log_variance=jnp.log(jnp.array([0.3, 0.6])),
        decoder_matrix=jnp.asarray(basis[:, :2] * np.array([1.5, 0.7])),
        decoder_bias=jnp.array([0.1, -0.2, 0.3]),
        decoder_log_scale=jnp.log(jnp.asarray(0.5)),
        prior_mean=jnp.asarray(prior_mean),
        prior_covariance=jnp.asarray(prior_covariance),
    )
