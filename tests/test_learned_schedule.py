"""The learned (VDM) noise schedule as a process."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import schedules as S
from diffusion_jax.analytic import GaussianMixture
from diffusion_jax.denoisers import ProcessModel
from diffusion_jax.learned_schedule import LearnedVP, MonotoneLogSNR
from diffusion_jax.losses import denoising_loss


def _schedule(seed, hidden=16):
    return MonotoneLogSNR.init(jax.random.key(seed), hidden=hidden, dtype=jnp.float64)


def _perturbed(schedule, seed):
    keys = jax.random.split(jax.random.key(seed), 3)
    return dataclasses.replace(
        schedule,
        w2=schedule.w2 + 2.0 * jax.random.normal(keys[0], schedule.w2.shape),
        b2=schedule.b2 + 2.0 * jax.random.normal(keys[1], schedule.b2.shape),
        w3=schedule.w3 + 3.0 + jax.random.normal(keys[2], schedule.w3.shape),
    )


def test_schedule_is_monotone_with_fixed_end_points(x64):
    for seed in range(3):
        schedule = _perturbed(_schedule(seed), seed + 10)
        t = jnp.linspace(0.0, 1.0, 201)
        gamma = schedule(t)
        assert bool(jnp.all(jnp.diff(gamma) >= 0))
        np.testing.assert_allclose([gamma[0], gamma[-1]], [-13.3, 5.0], atol=1e-10)
        np.testing.assert_allclose(schedule.inverse(schedule(t[1:-1])), t[1:-1], atol=1e-10)


def test_learned_process_derivatives_and_inverse(x64):
    process = LearnedVP(_perturbed(_schedule(0), 1))
    t = jnp.linspace(0.01, 0.99, 9)
    for value, derivative in [(process.alpha, process.d_alpha), (process.sigma, process.d_sigma)]:
        _, tangent = jax.jvp(value, (t,), (jnp.ones_like(t),))
        np.testing.assert_allclose(derivative(t), tangent, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(process.alpha(t) ** 2 + process.sigma(t) ** 2, 1.0, rtol=1e-12)
    np.testing.assert_allclose(process.t_of_ve_sigma(process.ve_sigma(t)), t, atol=1e-10)
    # The inverse is differentiable: d t / d gamma = 1 / gamma'(t).
    gamma = process.schedule(t)
    slope = jax.vmap(jax.grad(process.schedule.inverse))(gamma)
    np.testing.assert_allclose(slope, 1.0 / process.schedule.derivative(t), rtol=1e-8)
    # VDM: the continuous loss weight gamma'(t) on the epsilon MSE is the likelihood weighting.
    np.testing.assert_allclose(
        S.LikelihoodWeighting().weight_for("epsilon", process, t),
        process.schedule.derivative(t),
        rtol=1e-9,
    )


@dataclasses.dataclass(frozen=True)
class _FixedTimes:
    times: jax.Array

    def from_uniform(self, u, process):
        return self.times


@pytest.mark.parametrize("seed", [0, 1])
def test_vlb_depends_only_on_the_end_points(x64, seed):
    """Kingma et al. 2021, eq. 15: int gamma'/2 E||eps - eps_hat||^2 dt with the exact denoiser for
    x0 ~ N(0, v) equals 1/2 [gamma - log(v + e^gamma)] between the end points, whatever the interior."""
    v = 0.3
    gaussian = GaussianMixture.create(jnp.zeros((1, 1)), variances=v)
    schedule = _perturbed(_schedule(seed), seed + 5)
    process = LearnedVP(schedule)
    nodes, weights = np.polynomial.legendre.leggauss(24)
    nodes, weights = 0.5 * (nodes + 1.0), 0.5 * weights
    per_node = 8000
    times = jnp.repeat(jnp.asarray(nodes), per_node)
    x0 = gaussian.sample(jax.random.key(seed), times.shape[0])
    loss = denoising_loss(
        ProcessModel(gaussian, process),
        x0,
        jax.random.key(seed + 1),
        process=process,
        prediction="x0",
        t_distribution=_FixedTimes(times),
        weighting=S.LikelihoodWeighting(),
    )
    node_means = jnp.mean(loss.reshape(24, per_node), axis=1)
    node_errors = jnp.std(loss.reshape(24, per_node), axis=1) / np.sqrt(per_node)
    estimate = 0.5 * float(jnp.sum(weights * node_means))
    standard_error = 0.5 * float(jnp.sqrt(jnp.sum((weights * node_errors) ** 2)))
    antiderivative = lambda g: g - np.log(v + np.exp(g))
    exact = 0.5 * (antiderivative(5.0) - antiderivative(-13.3))
    assert standard_error < 0.01 * exact
    assert abs(estimate - exact) < 4 * standard_error + 1e-4 * exact


def test_learned_process_float32_round_trip_over_its_range():
    """LearnedVP's VE-frame range is [exp(gamma_min / 2), exp(gamma_max / 2)] = [1.3e-3, 12.2]
    for VDM's end points; across it sigma -> t -> sigma holds to ~1e-6 in float32 (the
    bisection + Newton inverse has no cancelling form to fix, unlike Cosine / VP)."""
    process = LearnedVP(MonotoneLogSNR.init(jax.random.key(0), hidden=64))
    low, high = float(process.ve_sigma(0.0)), float(process.ve_sigma(1.0))
    np.testing.assert_allclose([low, high], np.exp(np.array([-13.3, 5.0]) / 2), rtol=1e-5)
    sigma = jnp.geomspace(1.01 * low, 0.99 * high, 9, dtype=jnp.float32)
    t = process.t_of_ve_sigma(sigma)
    assert t.dtype == jnp.float32 and bool(jnp.all((t > 0) & (t < 1)))
    np.testing.assert_allclose(process.ve_sigma(t), sigma, rtol=1e-6)
