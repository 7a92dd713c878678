"""The linear-Gaussian VAE (x64): its KL and reconstruction terms equal their closed forms, the
closed forms agree with the family's diagonal-Gaussian losses, the exact posterior closes the ELBO
gap, the codec's scale round trip, and the latent diffusion's exact denoiser makes the LDM
denoising loss stationary."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _latent_toy import linear_gaussian_toy

from diffusion_jax.analytic import GaussianMixture, gaussian_flow_map
from diffusion_jax.denoisers import ProcessModel
from diffusion_jax.latent import losses
from diffusion_jax.latent.codec import Codec, decode_samples
from diffusion_jax.latent.toys import gaussian_kl_divergence
from diffusion_jax.losses import denoising_loss
from diffusion_jax.processes import VP
from diffusion_jax.samplers import heun, karras_sigmas
from diffusion_jax.schedules import EpsilonMSE, UniformTime


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


_toy = linear_gaussian_toy


X = jnp.array([[0.5, -1.0, 0.3], [1.2, 0.4, -0.7], [-0.3, 0.0, 0.9]])


def _mc_mean(values):
    return jnp.mean(values, axis=0), jnp.std(values, axis=0) / np.sqrt(values.shape[0])


def test_kl_and_reconstruction_equal_their_closed_forms():
    toy = _toy(prior_mean=(0.3, -0.2), prior_covariance=((1.2, 0.3), (0.3, 0.8)))
    mean, log_variance = toy.posterior(X)
    keys = jax.random.split(jax.random.key(0), 20000)
    samples = jax.vmap(lambda key: toy.encode(X, key))(keys)  # (n, B, k)
    prior = toy.prior()
    log_q = jax.vmap(lambda z: -0.5 * jnp.sum((z - mean) ** 2 / jnp.exp(log_variance)
                                              + log_variance + jnp.log(2 * jnp.pi), -1))(samples)
    kl_estimate, kl_error = _mc_mean(log_q - jax.vmap(prior.log_prob)(samples))
    assert np.all(np.abs(kl_estimate - toy.kl(X)) < 4 * kl_error)
    assert np.all(kl_error < 0.02)
    reconstruction = jax.vmap(lambda z: losses.gaussian_log_likelihood(
        X, *toy.decoder_distribution(z)))(samples)
    estimate, error = _mc_mean(reconstruction)
    assert np.all(np.abs(estimate - toy.expected_log_likelihood(X)) < 4 * error)
    assert np.all(error < 0.05)


def test_diagonal_gaussian_terms_match_the_general_closed_forms():
    toy = _toy()  # standard-normal prior: the autoencoders' KL applies
    mean, log_variance = toy.posterior(X)
    np.testing.assert_allclose(losses.gaussian_kl(mean, log_variance), toy.kl(X), rtol=1e-12)
    entropy = 0.5 * np.sum(np.log(2 * np.pi * np.e * np.exp(np.asarray(log_variance))), axis=-1)
    np.testing.assert_allclose(losses.gaussian_entropy(log_variance), entropy, rtol=1e-12)


def test_elbo_gap_is_the_posterior_kl_and_vanishes_for_the_exact_posterior():
    toy = _toy(prior_mean=(0.3, -0.2), prior_covariance=((1.2, 0.0), (0.0, 0.8)))
    exact_mean, exact_covariance = toy.exact_posterior(X)
    mean, _ = toy.posterior(X)
    gap = jax.vmap(lambda m, e: _gaussian_kl(m, jnp.diag(jnp.exp(toy.encoder_log_variance)),
                                             e, exact_covariance))(mean, exact_mean)
    np.testing.assert_allclose(toy.log_marginal(X) - toy.elbo(X), gap, rtol=1e-10)
    assert np.all(toy.elbo(X) < toy.log_marginal(X) - 0.1)
    exact = toy.with_exact_posterior()
    np.testing.assert_allclose(exact.elbo(X), exact.log_marginal(X), rtol=1e-12)
    np.testing.assert_allclose(exact.posterior(X)[0], exact_mean, rtol=1e-12)
    rotated = _toy(prior_covariance=((1.0, 0.6), (0.6, 1.0)))
    with pytest.raises(ValueError, match="not diagonal"):
        rotated.with_exact_posterior()


def _gaussian_kl(mean_q, covariance_q, mean_p, covariance_p):
    return gaussian_kl_divergence(mean_q[None], covariance_q, mean_p[None], covariance_p)[0]


def test_codec_scale_round_trip_on_the_toy():
    toy = _toy()
    data = jax.random.normal(jax.random.key(1), (4000, 3)) * 2.0
    codec = Codec(toy).with_estimated_scale(data, jax.random.key(2))
    held_out = jax.random.normal(jax.random.key(3), (4000, 3)) * 2.0
    np.testing.assert_allclose(jnp.std(codec.encode(held_out, jax.random.key(4))), 1.0, atol=0.03)
    z = codec.encode(held_out)
    np.testing.assert_allclose(codec.decode(z), toy.decode(toy.encode(held_out)), rtol=1e-12)
    # the forgotten division (latent-diffusion issue 187) would decode other images
    assert float(jnp.max(jnp.abs(toy.decode(z) - codec.decode(z)))) > 0.1


def _ldm_gradient(denoiser, latents, key):
    """Per-example gradients of the LDM denoising loss wrt the denoiser's mean and variances."""
    process = VP()

    def loss(parameters, z, k):
        mixture = GaussianMixture(parameters[0], denoiser.log_weights, parameters[1],
                                  denoiser.eigenvectors)
        return denoising_loss(ProcessModel(mixture, process), z[None], k, process=process,
                              prediction="x0", t_distribution=UniformTime(t_min=1e-3),
                              weighting=EpsilonMSE())[0]

    keys = jax.random.split(key, latents.shape[0])
    gradients = jax.vmap(jax.grad(loss), in_axes=(None, 0, 0))(
        (denoiser.means, denoiser.eigenvalues), latents, keys)
    flat = jnp.concatenate([g.reshape(latents.shape[0], -1) for g in gradients], axis=1)
    return _mc_mean(flat)


def test_exact_latent_denoiser_makes_the_ldm_loss_stationary():
    """Data x ~ N(0, Sigma_x) through the toy's sampled encoder and the codec's scale: the latent
    marginal is Gaussian, its exact denoiser has zero expected gradient of the LDM loss (within
    4 standard errors), a perturbed one does not (over 8 standard errors)."""
    toy = _toy()
    data_covariance = jnp.array([[2.0, 0.5, 0.0], [0.5, 1.0, 0.3], [0.0, 0.3, 1.5]])
    data = jax.random.multivariate_normal(jax.random.key(0), jnp.zeros(3), data_covariance,
                                          (8000,))
    codec = Codec(toy).with_estimated_scale(data, jax.random.key(1))
    latents = codec.encode(data, jax.random.key(2))
    truth = toy.latent_marginal(jnp.zeros(3), data_covariance, scale=codec.scale)
    mean, error = _ldm_gradient(truth, latents, jax.random.key(3))
    assert np.all(np.abs(mean) < 4 * error), (mean, error)
    perturbed = GaussianMixture(truth.means + 0.3, truth.log_weights, truth.eigenvalues * 1.5,
                                truth.eigenvectors)
    mean, error = _ldm_gradient(perturbed, latents, jax.random.key(3))
    assert np.max(np.abs(mean) / error) > 8, (mean, error)


def test_latent_model_samples_decode_to_the_closed_form_distribution():
    """LDM on the toy: the library's Heun sampler with the exact denoiser of the scaled latent
    marginal, decoded by the codec, gives the decoded exact probability-flow map of the same noise
    (second-order sampler, 128 steps), and images with the closed-form mean and covariance
    ``W Sigma_z W^T`` (``Sigma_z`` the unscaled latent covariance; 20000 samples)."""
    toy = _toy()
    data_covariance = jnp.array([[2.0, 0.5, 0.0], [0.5, 1.0, 0.3], [0.0, 0.3, 1.5]])
    codec = Codec(toy).with_scale(0.4)
    latent_marginal = toy.latent_marginal(jnp.zeros(3), data_covariance, scale=codec.scale)
    noise = jax.random.normal(jax.random.key(0), (20000, 2))
    sample = jax.jit(lambda denoiser, c, n: decode_samples(
        c, heun(denoiser, n, karras_sigmas(128, 0.002, 80.0)), latent_shape=(2,)))
    images = sample(latent_marginal, codec, noise)
    exact = codec.decode(gaussian_flow_map(latent_marginal, 80.0 * noise, 80.0, 0.0))
    np.testing.assert_allclose(images, exact, atol=1e-2)
    unscaled = toy.latent_marginal(jnp.zeros(3), data_covariance)
    matrix = toy.decoder_matrix
    np.testing.assert_allclose(jnp.mean(images, axis=0), toy.decode(unscaled.means)[0], atol=0.03)
    np.testing.assert_allclose(jnp.cov(images.T), matrix @ unscaled.covariances()[0] @ matrix.T,
                               rtol=0.05, atol=0.01)
