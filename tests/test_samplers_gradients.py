"""Reverse-mode gradients through every sampler against central finite differences (x64),
vmap/grad commutation, and no recompilation for new values of the same shape."""

import functools

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import samplers
from diffusion_jax.analytic import GaussianMixture

KEY = jax.random.key(21)


def _fixed_step_cases():
    """``{id: (sampler, options)}``: every registry default and variant (a key where it draws
    noise)."""
    cases = {}
    for info in samplers.SAMPLERS:
        for options in [{}] + [dict(v.options) for v in info.variants]:
            label = info.name + "".join(f"[{k}={v}]" for k, v in options.items())
            cases[label] = (info.fn, dict(options, key=KEY) if info.stochastic else options)
    return cases


FIXED_STEP = _fixed_step_cases()


def _problem():
    means = jnp.array([[1.0, -1.0], [-1.5, 0.5]])
    noise = jax.random.normal(jax.random.key(0), (3, 2), jnp.float64)
    weights = jax.random.normal(jax.random.key(1), (3, 2), jnp.float64)
    direction = jax.random.normal(jax.random.key(2), means.shape, jnp.float64)
    return means, noise, weights, direction


def _objective(sampler, options, means, noise, sigmas, weights):
    mixture = GaussianMixture.create(means, variances=jnp.array([0.3, 0.2]))
    return jnp.sum(weights * sampler(mixture, noise, sigmas, **options))


def _check_directional_derivative(value_and_grad, means, direction, rtol):
    _, gradient = value_and_grad(means)
    epsilon = 1e-5
    plus, _ = value_and_grad(means + epsilon * direction)
    minus, _ = value_and_grad(means - epsilon * direction)
    finite_difference = (plus - minus) / (2 * epsilon)
    np.testing.assert_allclose(jnp.sum(gradient * direction), finite_difference, rtol=rtol)


@pytest.mark.parametrize("name", sorted(FIXED_STEP))
def test_gradient_matches_finite_differences(x64, name):
    sampler, options = FIXED_STEP[name]
    means, noise, weights, direction = _problem()
    sigmas = samplers.karras_sigmas(4, 0.05, 5.0)
    objective = functools.partial(
        _objective, sampler, options, noise=noise, sigmas=sigmas, weights=weights
    )
    value_and_grad = jax.jit(jax.value_and_grad(objective))
    _, gradient = value_and_grad(means)
    assert bool(jnp.all(jnp.isfinite(gradient))) and float(jnp.max(jnp.abs(gradient))) > 0
    _check_directional_derivative(value_and_grad, means, direction, rtol=1e-6)


def test_gradient_with_respect_to_the_grid(x64):
    means, noise, weights, _ = _problem()
    mixture = GaussianMixture.create(means, variances=jnp.array([0.3, 0.2]))

    def objective(sigma_max):
        sigmas = samplers.karras_sigmas(5, 0.05, sigma_max)
        return jnp.sum(weights * samplers.dpmpp_2m(mixture, noise, sigmas))

    value_and_grad = jax.jit(jax.value_and_grad(objective))
    _, gradient = value_and_grad(4.0)
    plus, _ = value_and_grad(4.0 + 1e-5)
    minus, _ = value_and_grad(4.0 - 1e-5)
    np.testing.assert_allclose(gradient, (plus - minus) / 2e-5, rtol=1e-6)


@pytest.mark.parametrize(
    "adjoint",
    [diffrax.RecursiveCheckpointAdjoint(), diffrax.BacksolveAdjoint()],
    ids=["recursive_checkpoint", "backsolve"],
)
def test_solve_probability_flow_gradient(x64, adjoint):
    means, noise, weights, direction = _problem()
    controller = diffrax.PIDController(rtol=1e-9, atol=1e-9)

    def objective(means):
        mixture = GaussianMixture.create(means, variances=jnp.array([0.3, 0.2]))
        x0, _ = samplers.solve_probability_flow(
            mixture, noise, sigma_max=5.0, sigma_min=0.05, stepsize_controller=controller,
            adjoint=adjoint,
        )
        return jnp.sum(weights * x0)

    _check_directional_derivative(jax.jit(jax.value_and_grad(objective)), means, direction, 1e-5)


def test_vmap_of_grad_equals_grad_of_vmap(x64):
    means, noise, weights, _ = _problem()
    sigmas = samplers.karras_sigmas(4, 0.05, 5.0)
    keys = jax.random.split(jax.random.key(9), 3)

    def per_key(means, key):
        mixture = GaussianMixture.create(means, variances=jnp.array([0.3, 0.2]))
        return jnp.sum(weights * samplers.dpmpp_2m_sde(mixture, noise, sigmas, key=key))

    per_key_gradients = jax.jit(jax.vmap(jax.grad(per_key), in_axes=(None, 0)))(means, keys)
    total_gradient = jax.jit(
        jax.grad(lambda m: jnp.sum(jax.vmap(per_key, in_axes=(None, 0))(m, keys)))
    )(means)
    np.testing.assert_allclose(per_key_gradients.sum(0), total_gradient, rtol=1e-10)
    assert float(jnp.max(jnp.abs(per_key_gradients[0] - per_key_gradients[1]))) > 1e-6


def test_vmap_over_batches_and_keys():
    mixture = GaussianMixture.create(jnp.array([[1.0, -1.0], [-1.5, 0.5]]), variances=0.2)
    noise = jax.random.normal(jax.random.key(0), (4, 3, 2))
    sigmas = samplers.karras_sigmas(5, 0.05, 5.0)
    heun = jax.jit(samplers.heun)
    batched = jax.vmap(heun, in_axes=(None, 0, None))(mixture, noise, sigmas)
    looped = jnp.stack([heun(mixture, n, sigmas) for n in noise])
    np.testing.assert_allclose(batched, looped, rtol=1e-5, atol=1e-6)
    keys = jax.random.split(jax.random.key(1), 2)
    ancestral = jax.jit(lambda key: samplers.ancestral(mixture, noise[0], sigmas, key=key))
    chains = jax.vmap(ancestral)(keys)
    np.testing.assert_allclose(chains[1], ancestral(keys[1]), rtol=1e-5, atol=1e-6)
    assert float(jnp.max(jnp.abs(chains[0] - chains[1]))) > 1e-3


def test_no_recompile_for_new_values():
    mixture = GaussianMixture.create(jnp.array([[1.0, -1.0], [-1.5, 0.5]]), variances=0.2)
    run = jax.jit(samplers.dpmpp_3m)
    first = run(mixture, jnp.ones((3, 2)), samplers.karras_sigmas(6, 0.05, 5.0))
    other_mixture = GaussianMixture.create(jnp.array([[0.0, 1.0], [2.0, 0.5]]), variances=0.3)
    second = run(other_mixture, jnp.zeros((3, 2)) + 0.5, samplers.log_uniform_sigmas(6, 0.1, 9.0))
    assert run._cache_size() == 1
    assert float(jnp.max(jnp.abs(first - second))) > 1e-3
    run(mixture, jnp.ones((3, 2)), samplers.karras_sigmas(7, 0.05, 5.0))
    assert run._cache_size() == 2  # a new number of steps is a new shape
