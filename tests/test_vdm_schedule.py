"""VDM's variance-minimising schedule learning (Kingma et al. 2021, Sec. 5.2, App. I.2) on Gaussian
data with the exact denoiser: the schedule gradient of E[L^2] lowers the measured variance of the
diffusion-loss estimator while its mean (the bound, invariant to the interior) stays put, equal to
the closed form; the split gradient is the loss gradient for the model and the squared-loss
gradient for the schedule; the bound's end-point terms are their closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from diffusion_jax.analytic import GaussianMixture
from diffusion_jax.denoisers import ProcessModel
from diffusion_jax.learned_schedule import (
    LearnedVP,
    MonotoneLogSNR,
    variance_minimising_gradients,
    vdm_diffusion_loss,
    vdm_prior_loss,
    vdm_reconstruction_loss,
)

VARIANCE, DIM, GAMMA_MIN, GAMMA_MAX = 0.3, 2, -6.0, 6.0


def _gaussian():
    return GaussianMixture(jnp.zeros((1, DIM)), jnp.zeros(1), jnp.full((1, DIM), VARIANCE))


def _schedule(shape):
    return MonotoneLogSNR(*shape, gamma_min=GAMMA_MIN, gamma_max=GAMMA_MAX)


def _initial_shape():
    """A deliberately bent schedule (random interior), end points fixed."""
    keys = jax.random.split(jax.random.key(0), 3)
    hidden = 16
    return (jnp.ones(()), jnp.zeros(()), 3.0 * jax.random.normal(keys[0], (hidden,)),
            2.0 * jax.random.normal(keys[1], (hidden,)),
            jax.random.normal(keys[2], (hidden,)) + 1.0)


def _losses(shape, key, count, scale=1.0):
    """Per-sample diffusion losses with the exact (``scale = 1``) x0-denoiser of the data."""
    schedule = _schedule(shape)
    model = ProcessModel(_gaussian(), LearnedVP(schedule))
    x_key, loss_key = jax.random.split(key)
    x0 = _gaussian().sample(x_key, count)
    return vdm_diffusion_loss(lambda x, t, c=None: scale * model(x, t, c), schedule, x0,
                              loss_key, prediction="x0", stratification="iid")


def _exact_bound():
    antiderivative = lambda g: g - np.log(VARIANCE + np.exp(g))  # noqa: E731
    return 0.5 * DIM * (antiderivative(GAMMA_MAX) - antiderivative(GAMMA_MIN))


def _mean_and_variance(shape, seed, count=200_000):
    losses = np.asarray(jax.jit(_losses, static_argnums=2)(shape, jax.random.key(seed), count))
    return losses.mean(), losses.std() / np.sqrt(count), losses.var()


def test_variance_gradient_lowers_the_variance_and_keeps_the_bound(x64):
    shape = _initial_shape()
    optimizer = optax.adam(0.05)
    state = optimizer.init(shape)

    @jax.jit
    def step(shape, state, key):
        _, _, gradient = variance_minimising_gradients(
            lambda model, shape: _losses(shape, key, 512), (), shape)
        updates, state = optimizer.update(gradient, state)
        return optax.apply_updates(shape, updates), state

    before_mean, before_error, before_variance = _mean_and_variance(shape, 1)
    for index in range(200):
        shape, state = step(shape, state, jax.random.key(100 + index))
    after_mean, after_error, after_variance = _mean_and_variance(shape, 2)
    exact = _exact_bound()
    assert after_variance < 0.5 * before_variance  # measured on fresh samples
    assert abs(after_mean - before_mean) < 4 * np.hypot(before_error, after_error)
    for mean, error in ((before_mean, before_error), (after_mean, after_error)):
        assert abs(mean - exact) < 4 * error  # the bound is the closed form, before and after
    np.testing.assert_allclose(_schedule(shape)(jnp.array([0.0, 1.0])), [GAMMA_MIN, GAMMA_MAX],
                               atol=1e-12)


def test_the_model_gets_the_loss_gradient_and_the_schedule_the_squared_loss_gradient(x64):
    shape, key = _initial_shape(), jax.random.key(3)

    def per_example(scale, shape):
        return _losses(shape, key, 64, scale)

    losses, model_gradient, schedule_gradient = variance_minimising_gradients(
        per_example, 1.1, shape)
    np.testing.assert_allclose(losses, per_example(1.1, shape))
    np.testing.assert_allclose(model_gradient,
                               jax.grad(lambda s: jnp.mean(per_example(s, shape)))(1.1),
                               rtol=1e-10)
    expected = jax.grad(lambda shape: jnp.mean(per_example(1.1, shape) ** 2))(shape)
    for got, want in zip(schedule_gradient, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    assert float(jnp.max(jnp.abs(expected[2]))) > 0  # the interior does move
    with pytest.raises(ValueError, match="losses of shape"):
        variance_minimising_gradients(lambda m, s: jnp.sum(per_example(m, s)), 1.0, shape)


def test_end_point_terms_are_their_closed_forms(x64):
    schedule = _schedule(_initial_shape())
    x0 = _gaussian().sample(jax.random.key(4), 100_000)
    gamma_0, gamma_1 = GAMMA_MIN, GAMMA_MAX
    alpha_sq, sigma_sq = 1 / (1 + np.exp(gamma_1)), 1 / (1 + np.exp(-gamma_1))
    prior = 0.5 * DIM * (alpha_sq * VARIANCE + sigma_sq - 1 - np.log(sigma_sq))
    np.testing.assert_allclose(np.mean(vdm_prior_loss(schedule, x0)), prior, rtol=1e-2)
    reconstruction = vdm_reconstruction_loss(schedule, x0, jax.random.key(5))
    np.testing.assert_allclose(np.mean(reconstruction),
                               0.5 * DIM * (np.log(2 * np.pi) + gamma_0 + 1.0), rtol=1e-2)
