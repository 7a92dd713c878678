"""Stochastic samplers reach the exact mixture: sliced-Wasserstein distance to exact samples
within a stated multiple of the exact-vs-exact noise floor (fixed seeds)."""

import functools

import jax
import jax.numpy as jnp
import pytest

from diffusion_jax import samplers
from diffusion_jax.analytic import GaussianMixture

NUM_SAMPLES = 2000
FLOOR_MULTIPLE = 2.5
KEY = jax.random.key(123)


def _mixture(shift=0.0):
    means = jnp.array([[1.5, -1.0], [-1.5, 0.5], [0.2, 1.8]]) + shift
    variances = jnp.array([[0.2, 0.1], [0.1, 0.3], [0.15, 0.15]])
    return GaussianMixture.create(means, variances=variances, weights=jnp.array([0.5, 0.3, 0.2]))


def sliced_wasserstein(a, b, num_projections=64):
    """Mean over random unit directions of the 1-D Wasserstein-1 distance of the projections."""
    directions = jax.random.normal(jax.random.key(0), (num_projections, a.shape[-1]))
    directions = directions / jnp.linalg.norm(directions, axis=-1, keepdims=True)
    projected_a = jnp.sort(a @ directions.T, axis=0)
    projected_b = jnp.sort(b @ directions.T, axis=0)
    return float(jnp.mean(jnp.abs(projected_a - projected_b)))


@functools.lru_cache(maxsize=None)
def _exact_and_floor():
    mixture = _mixture()
    exact = mixture.sample(jax.random.key(1), NUM_SAMPLES)
    floor = sliced_wasserstein(exact, mixture.sample(jax.random.key(2), NUM_SAMPLES))
    return exact, floor


SIGMAS = samplers.karras_sigmas(100, 0.005, 20.0)
CASES = {
    "ancestral": lambda d, n, k: samplers.ancestral(d, n, SIGMAS, key=k),
    "ddim_eta_0.5": lambda d, n, k: samplers.ddim(d, n, SIGMAS, key=k, eta=0.5),
    "edm_stochastic": lambda d, n, k: samplers.edm_stochastic(
        d, n, samplers.karras_sigmas(50, 0.005, 20.0), key=k, s_churn=30.0, s_tmin=0.01, s_tmax=5.0
    ),
    "dpmpp_2m_sde": lambda d, n, k: samplers.dpmpp_2m_sde(d, n, SIGMAS, key=k),
    "dpmpp_3m_sde": lambda d, n, k: samplers.dpmpp_3m_sde(d, n, SIGMAS, key=k),
    "euler_maruyama": lambda d, n, k: samplers.euler_maruyama(
        d, n, samplers.karras_sigmas(200, 0.005, 20.0), key=k
    ),
    "predictor_corrector": lambda d, n, k: samplers.predictor_corrector(
        d, n, samplers.karras_sigmas(50, 0.005, 20.0), key=k, snr=0.1
    ),
    "solve_reverse_sde": lambda d, n, k: samplers.solve_reverse_sde(
        d, n, key=k, sigma_max=20.0, sigma_min=0.005, num_steps=400
    )[0],
}


def _draw(case, mixture):
    noise_key, sampler_key = jax.random.split(KEY)
    noise = jax.random.normal(noise_key, (NUM_SAMPLES, 2))
    return jax.jit(CASES[case])(mixture, noise, sampler_key)


@pytest.mark.parametrize("case", sorted(CASES))
def test_stochastic_sampler_reaches_the_mixture(case):
    exact, floor = _exact_and_floor()
    distance = sliced_wasserstein(_draw(case, _mixture()), exact)
    assert distance < FLOOR_MULTIPLE * floor, f"{case}: SW {distance:.4f}, floor {floor:.4f}"


def test_distance_detects_a_wrong_distribution():
    exact, floor = _exact_and_floor()
    shifted = _draw("ancestral", _mixture(shift=0.4))
    assert sliced_wasserstein(shifted, exact) > 2 * FLOOR_MULTIPLE * floor


def test_langevin_step_size_follows_the_snr_rule():
    score = jnp.array([[3.0, 4.0], [0.0, 2.0]])
    z = jnp.array([[1.0, 0.0], [0.0, 3.0]])
    step = samplers.langevin_step_size(score, z, 0.2, per_example=True)
    expected = 2.0 * (0.2 * jnp.array([1.0, 3.0]) / jnp.array([5.0, 2.0])) ** 2
    assert jnp.allclose(step, expected)
    batch_step = samplers.langevin_step_size(score, z, 0.2)
    assert jnp.allclose(batch_step, 2.0 * (0.2 * 2.0 / 3.5) ** 2)
