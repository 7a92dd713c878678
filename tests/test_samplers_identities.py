"""Exact identities between samplers (x64): DDIM(eta=0) == Euler, DDIM(eta=1) == ancestral ==
the DDPM posterior step, DPM-Solver-1 (= first-order DEIS/LMS/iPNDM/UniP-1 steps) == DDIM, and
the special cases of the stochastic samplers."""

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import samplers
from diffusion_jax.analytic import GaussianMixture


def _mixture():
    means = jnp.array([[1.0, -1.0], [-1.5, 0.5], [0.2, 1.5]])
    return GaussianMixture.create(means, variances=jnp.array([0.3, 0.1, 0.2]))


def _setup():
    noise = jax.random.normal(jax.random.key(3), (5, 2), jnp.float64)
    return _mixture(), noise, samplers.karras_sigmas(7, 0.01, 10.0)


def test_ddim_eta0_equals_euler_and_first_order_multisteps(x64):
    mixture, noise, sigmas = _setup()
    reference = samplers.euler(mixture, noise, sigmas)
    np.testing.assert_allclose(samplers.ddim(mixture, noise, sigmas, eta=0.0), reference, rtol=1e-12)
    for sampler in (samplers.deis, samplers.lms, samplers.ipndm):
        np.testing.assert_allclose(sampler(mixture, noise, sigmas, order=1), reference, rtol=1e-10)


def test_dpm_solver_1_step_is_ddim(x64):
    # A one-step grid above 0 plus the step to 0: every multistep method starts with DPM-Solver-1.
    mixture, noise, _ = _setup()
    sigmas = jnp.array([10.0, 0.5, 0.0])
    reference = samplers.ddim(mixture, noise, sigmas)
    for sampler in (samplers.dpmpp_2m, samplers.dpmpp_3m, samplers.deis):
        np.testing.assert_allclose(sampler(mixture, noise, sigmas), reference, rtol=1e-10)
    # by hand: x1 = (s1/s0) x0 + (1 - s1/s0) D(x0, s0); x = D(x1, s1)
    x = noise * 10.0
    x1 = 0.05 * x + 0.95 * mixture(x, 10.0)
    np.testing.assert_allclose(reference, mixture(x1, 0.5), rtol=1e-12)


def test_ddim_eta1_equals_ancestral_and_ddpm_posterior(x64):
    mixture, noise, sigmas = _setup()
    key = jax.random.key(7)
    ancestral = samplers.ancestral(mixture, noise, sigmas, key=key)
    ddim = samplers.ddim(mixture, noise, sigmas, key=key, eta=1.0)
    np.testing.assert_allclose(ddim, ancestral, rtol=1e-10, atol=1e-12)
    # one DDPM step by hand: q(x_s | x_t, x0) = N(s^2/t^2 x_t + (1 - s^2/t^2) x0, s^2 (t^2 - s^2)/t^2)
    t, s = 2.0, 1.2
    x = noise * t
    step_key = jax.random.key(11)
    x0_hat = mixture(x, t)
    z = jax.random.normal(step_key, x.shape, x.dtype)
    by_hand = s**2 / t**2 * x + (1 - s**2 / t**2) * x0_hat + s * np.sqrt(t**2 - s**2) / t * z
    np.testing.assert_allclose(samplers.ancestral_step(mixture, x, t, s, step_key), by_hand, rtol=1e-12)
    np.testing.assert_allclose(
        samplers.ddim_step(mixture, x, t, s, step_key, eta=1.0), by_hand, rtol=1e-12
    )


def test_sde_dpm_solver_first_step_is_ancestral(x64):
    mixture, noise, _ = _setup()
    sigmas = jnp.array([3.0, 0.7, 0.0])
    key = jax.random.key(5)
    expected = samplers.ancestral(mixture, noise, sigmas, key=key)
    for sampler in (samplers.dpmpp_2m_sde, samplers.dpmpp_3m_sde):
        np.testing.assert_allclose(sampler(mixture, noise, sigmas, key=key), expected, rtol=1e-10)


def test_deterministic_limits_of_stochastic_samplers(x64):
    mixture, noise, sigmas = _setup()
    key = jax.random.key(2)
    np.testing.assert_allclose(
        samplers.dpmpp_2m_sde(mixture, noise, sigmas, key=key, eta=0.0),
        samplers.dpmpp_2m(mixture, noise, sigmas), rtol=1e-10,
    )
    np.testing.assert_allclose(
        samplers.dpmpp_3m_sde(mixture, noise, sigmas, key=key, eta=0.0),
        samplers.dpmpp_3m(mixture, noise, sigmas), rtol=1e-10,
    )
    np.testing.assert_allclose(
        samplers.edm_stochastic(mixture, noise, sigmas, key=key, s_churn=0.0),
        samplers.heun(mixture, noise, sigmas), rtol=1e-12,
    )
    np.testing.assert_allclose(  # no churn: no key needed
        samplers.edm_stochastic(mixture, noise, sigmas, s_churn=0.0),
        samplers.heun(mixture, noise, sigmas), rtol=1e-12,
    )


def test_predictor_corrector_without_corrector_is_its_predictor(x64):
    mixture, noise, sigmas = _setup()
    key = jax.random.key(4)
    pc = samplers.predictor_corrector(
        mixture, noise, sigmas, key=key, corrector_steps=0, predictor=samplers.euler_step
    )
    np.testing.assert_allclose(pc, samplers.euler(mixture, noise, sigmas), rtol=1e-12)


def test_last_step_returns_the_denoised_state(x64):
    mixture, noise, sigmas = _setup()
    for sampler in (samplers.euler, samplers.heun, samplers.dpmpp_2m, samplers.unipc):
        x0, trajectory = sampler(mixture, noise, sigmas, return_trajectory=True)
        assert trajectory.shape == (sigmas.shape[0],) + noise.shape
        np.testing.assert_allclose(trajectory[0], noise * sigmas[0])
        np.testing.assert_allclose(trajectory[-1], x0)
    # Euler's step to 0 is exactly D(x, sigma_{N-1})
    x0, trajectory = samplers.euler(mixture, noise, sigmas, return_trajectory=True)
    np.testing.assert_allclose(x0, mixture(trajectory[-2], sigmas[-2]), rtol=1e-12)
