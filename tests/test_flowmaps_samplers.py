"""Flow-map samplers: the deterministic chain, CTM's gamma-sampling and consistency sampling on the
exact Gaussian map (composition, exact marginals), jit / vmap / grad, and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.analytic import GaussianMixture
from diffusion_jax.flowmaps import exact, parameterisations
from diffusion_jax.flowmaps import samplers as flowmap_samplers
from diffusion_jax.samplers import karras_sigmas

MEAN, VARIANCE = np.array([0.5, -0.2]), 0.3  # numpy: float64 under x64


def exact_map():
    return exact.ExactGaussianFlowMap(
        GaussianMixture.create(MEAN[None], variances=jnp.full((1, 2), VARIANCE))
    )


def noise(batch=8, seed=0):
    return jax.random.normal(jax.random.key(seed), (batch, 2))


def test_deterministic_chain_of_the_exact_map_is_one_jump(x64):
    z = noise()
    one = flowmap_samplers.sample_flow_map(exact_map(), z, karras_sigmas(1))
    np.testing.assert_allclose(one, exact_map()(80.0 * z, 80.0, 0.0), rtol=1e-14)
    for num_steps in (2, 5):
        many, trajectory = flowmap_samplers.sample_flow_map(
            exact_map(), z, karras_sigmas(num_steps), return_trajectory=True
        )
        np.testing.assert_allclose(many, one, rtol=1e-12, atol=1e-12)
        assert trajectory.shape == (num_steps + 1, 8, 2)
        np.testing.assert_allclose(trajectory[0], 80.0 * z)


def assert_exact_gaussian_samples(samples, variance):
    """Sample mean and variance of ``N(MEAN, variance)`` within 4.5 standard errors."""
    samples = np.asarray(samples)
    count = samples.shape[0]
    mean_error = np.abs(samples.mean(0) - np.asarray(MEAN)) / np.sqrt(variance / count)
    variance_error = np.abs(samples.var(0) - variance) / (variance * np.sqrt(2.0 / count))
    assert np.all(mean_error < 4.5) and np.all(variance_error < 4.5), (mean_error, variance_error)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0])
def test_gamma_sampling_keeps_the_exact_marginals(x64, gamma):
    """CTM's gamma-sampling with the exact map lands every step on the exact marginal."""
    samples = flowmap_samplers.sample_flow_map(
        exact_map(), noise(20000, seed=1), karras_sigmas(4), key=jax.random.key(2), gamma=gamma
    )
    assert_exact_gaussian_samples(samples, VARIANCE)


def test_gamma_one_is_consistency_multistep_sampling(x64):
    z, key, sigmas = noise(), jax.random.key(5), karras_sigmas(3)
    ctm_style = flowmap_samplers.sample_flow_map(exact_map(), z, sigmas, key=key, gamma=1.0)
    consistency = flowmap_samplers.sample_consistency(
        exact_map(), z, sigmas, key=key, sigma_min=0.0
    )
    np.testing.assert_allclose(ctm_style, consistency, rtol=1e-12)


def exact_consistency_network(x_in, c_noise, cond=None):
    sigma = jnp.exp(4.0 * c_noise)
    c_skip, c_out, c_in, _ = parameterisations.consistency_coefficients(sigma)
    x = x_in / c_in[:, None]
    return (exact_map()(x, sigma, 0.002) - c_skip[:, None] * x) / c_out[:, None]


def test_consistency_sampling_with_the_exact_model(x64):
    model = parameterisations.ConsistencyModel(exact_consistency_network)
    z = noise(20000, seed=3)
    one_step = flowmap_samplers.sample_consistency(model, z, karras_sigmas(1))
    np.testing.assert_allclose(one_step, exact_map()(80.0 * z, 80.0, 0.002), rtol=1e-10)
    multistep = flowmap_samplers.sample_consistency(
        model, z, jnp.array([80.0, 2.0, 0.5, 0.0]), key=jax.random.key(4)
    )
    assert_exact_gaussian_samples(multistep, VARIANCE + 0.002**2)


def test_samplers_jit_vmap_and_differentiate(x64):
    sigmas = karras_sigmas(3)

    def sample(variance, key):
        flow_map = exact.ExactGaussianFlowMap(
            GaussianMixture.create(MEAN[None], variances=jnp.full((1, 2), variance))
        )
        return flowmap_samplers.sample_flow_map(flow_map, noise(4), sigmas, key=key, gamma=0.3)

    keys = jax.random.split(jax.random.key(0), 3)
    batched = jax.jit(jax.vmap(sample, in_axes=(None, 0)))(VARIANCE, keys)
    np.testing.assert_allclose(batched[1], sample(VARIANCE, keys[1]), rtol=1e-12)

    def total(variance):
        return jnp.sum(sample(variance, keys[0]) ** 2)

    step = 1e-6
    finite_difference = (total(VARIANCE + step) - total(VARIANCE - step)) / (2 * step)
    np.testing.assert_allclose(jax.grad(total)(VARIANCE), finite_difference, rtol=1e-6)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: flowmap_samplers.sample_flow_map(exact_map(), noise(), karras_sigmas(2),
                                                  gamma=0.5), "pass key"),
        (lambda: flowmap_samplers.sample_flow_map(exact_map(), noise(), karras_sigmas(2),
                                                  key=jax.random.key(0), gamma=1.5), r"\[0, 1\]"),
        (lambda: flowmap_samplers.sample_consistency(exact_map(), noise(), karras_sigmas(2)),
         "stochastic"),
        (lambda: flowmap_samplers.sample_flow_map(exact_map(), noise(), jnp.array([80.0, 1.0])),
         "end in 0"),
        (lambda: flowmap_samplers.get("dpm"), "unknown flow-map sampler"),
    ],
)
def test_samplers_reject_bad_input(call, message):
    with pytest.raises(ValueError, match=message) as error:
        call()
    assert "\n" not in str(error.value)


def test_descriptors():
    assert [info.name for info in flowmap_samplers.FLOW_MAP_SAMPLERS] == ["flow_map",
                                                                          "consistency"]
    info = flowmap_samplers.get("flow_map")
    assert info.fn is flowmap_samplers.sample_flow_map and info.nfe(4) == 4
