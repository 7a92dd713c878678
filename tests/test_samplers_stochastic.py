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


NFE_BUDGET = 100


def _stochastic_settings():
    """``{id: (sampler, options, num_steps)}`` for every registry default or variant that draws
    noise (declared order ``None``), at about ``NFE_BUDGET`` evaluations."""
    settings = {}
    for info in samplers.SAMPLERS:
        candidates = [({}, info.order)] + [(dict(v.options), v.order) for v in info.variants]
        for options, order in candidates:
            if order is None:
                label = info.name + "".join(f"[{k}={v}]" for k, v in options.items())
                settings[label] = (info.fn, options, info.steps_for_nfe(NFE_BUDGET, options))
    return settings


SETTINGS = _stochastic_settings()


def _registry_case(sampler, options, num_steps):
    sigmas = samplers.karras_sigmas(num_steps, 0.005, 20.0)
    return lambda d, n, k: sampler(d, n, sigmas, key=k, **options)


CASES = {label: _registry_case(*setting) for label, setting in SETTINGS.items()}
CASES["solve_reverse_sde"] = lambda d, n, k: samplers.solve_reverse_sde(
    d, n, key=k, sigma_max=20.0, sigma_min=0.005, num_steps=400
)[0]


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
    shifted = _draw("ancestral", _mixture(shift=0.4))  # a registry default
    assert sliced_wasserstein(shifted, exact) > 2 * FLOOR_MULTIPLE * floor


def test_langevin_step_size_follows_the_snr_rule():
    score = jnp.array([[3.0, 4.0], [0.0, 2.0]])
    z = jnp.array([[1.0, 0.0], [0.0, 3.0]])
    step = samplers.langevin_step_size(score, z, 0.2, per_example=True)
    expected = 2.0 * (0.2 * jnp.array([1.0, 3.0]) / jnp.array([5.0, 2.0])) ** 2
    assert jnp.allclose(step, expected)
    batch_step = samplers.langevin_step_size(score, z, 0.2)
    assert jnp.allclose(batch_step, 2.0 * (0.2 * 2.0 / 3.5) ** 2)
