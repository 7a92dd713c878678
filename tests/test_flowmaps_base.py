"""The flow-map contract: time checks, the teacher flow map of a denoiser + sampler, the exact
maps of the analytic test bed and the denoiser a flow map implies."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.analytic import GaussianMixture, toy_gaussian_mixture
from diffusion_jax.flowmaps import base, exact

MEAN, VARIANCE = np.array([0.7, -0.3]), 0.3  # numpy: float64 under x64


def gaussian(dtype=jnp.float64):
    return GaussianMixture.create(MEAN[None].astype(dtype), variances=jnp.full((1, 2), VARIANCE))


def points(batch=6, scale=3.0):
    return MEAN + scale * jax.random.normal(jax.random.key(0), (batch, 2), jnp.float64)


@pytest.mark.parametrize(
    "sigma, sigma_to, message",
    [(1.0, 2.0, "lower sigma_to"), (1.0, -0.1, ">= 0"), (jnp.inf, 1.0, "finite")],
)
def test_check_times_rejects_bad_times(sigma, sigma_to, message):
    with pytest.raises(ValueError, match=message) as error:
        base.check_times(sigma, sigma_to)
    assert "\n" not in str(error.value)


def test_flow_maps_reject_sigma_to_above_sigma(x64):
    teacher = base.TeacherFlowMap(gaussian(), sampler="heun", num_steps=2)
    for flow_map in (teacher, exact.ExactGaussianFlowMap(gaussian())):
        with pytest.raises(ValueError, match="lower sigma_to"):
            flow_map(points(), jnp.array([1.0] * 5 + [0.5]), 0.7)
    with pytest.raises(ValueError, match=r"shape \(batch,\)"):
        teacher(points(), jnp.ones(3), 0.5)


def test_teacher_needs_a_deterministic_sampler_and_known_options():
    with pytest.raises(ValueError, match="deterministic"):
        base.TeacherFlowMap(gaussian(jnp.float32), sampler="ancestral")
    with pytest.raises(ValueError, match="no options"):
        base.TeacherFlowMap(gaussian(jnp.float32), sampler="heun", options={"order": 2})
    with pytest.raises(ValueError, match="unknown sampler"):
        base.TeacherFlowMap(gaussian(jnp.float32), sampler="rk99")


def test_exact_gaussian_map_is_the_closed_form_and_a_semigroup(x64):
    flow_map, x = exact.ExactGaussianFlowMap(gaussian()), points()
    expected = MEAN + (x - MEAN) * jnp.sqrt((VARIANCE + 0.4**2) / (VARIANCE + 5.0**2))
    np.testing.assert_allclose(flow_map(x, 5.0, 0.4), expected, rtol=1e-14)
    composed = flow_map(flow_map(x, 5.0, 1.3), 1.3, 0.4)
    np.testing.assert_allclose(composed, expected, rtol=1e-14)
    np.testing.assert_allclose(flow_map(x, 2.0, 2.0), x, rtol=0)


@pytest.mark.parametrize("sampler, order", [("heun", 2), ("euler", 1), ("dpmpp_2m", 2)])
@pytest.mark.parametrize("sigma_to", [0.5, 0.0])
def test_teacher_flow_map_converges_to_the_exact_map_at_the_sampler_order(
    x64, sampler, order, sigma_to
):
    x, reference = points(), exact.ExactGaussianFlowMap(gaussian())(points(), 10.0, sigma_to)
    steps = np.array([8, 16, 32])
    errors = [
        float(jnp.max(jnp.abs(base.TeacherFlowMap(gaussian(), sampler, int(n))(x, 10.0, sigma_to)
                              - reference)))
        for n in steps
    ]
    slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert errors[-1] < 0.05
    assert abs(slope - order) < 0.35, (errors, slope)


def test_teacher_per_example_times_match_scalar_solves_and_identity(x64):
    teacher, x = base.TeacherFlowMap(gaussian(), "heun", 4), points(4)
    sigma, sigma_to = jnp.array([5.0, 2.0, 1.0, 3.0]), jnp.array([1.0, 0.0, 1.0, 0.2])
    batched = teacher(x, sigma, sigma_to)
    solve = jax.jit(lambda x, sigma, sigma_to: teacher(x, sigma, sigma_to))
    for i in range(4):
        single = solve(x[i : i + 1], sigma[i], sigma_to[i])
        np.testing.assert_allclose(batched[i], single[0], rtol=1e-12)
    np.testing.assert_array_equal(batched[2], x[2])  # sigma_to == sigma: the identity


def test_teacher_is_jittable_and_differentiable_in_the_times(x64):
    teacher, x = base.TeacherFlowMap(gaussian(), "heun", 64), points(3)
    exact_map = exact.ExactGaussianFlowMap(gaussian())

    def total(flow_map, sigma_to):
        return jnp.sum(flow_map(x, 4.0, sigma_to))

    grad_teacher = jax.jit(jax.grad(lambda s: total(teacher, s)))(0.8)
    grad_exact = jax.grad(lambda s: total(exact_map, s))(0.8)
    np.testing.assert_allclose(grad_teacher, grad_exact, rtol=1e-3)


def test_exact_mixture_map_matches_the_closed_form_and_composes(x64):
    x = points(3)

    @jax.jit
    def solve(flow_map, x, sigma, sigma_to):  # traced times: one compilation per map
        return flow_map(x, sigma, sigma_to)

    single = exact.ExactMixtureFlowMap(gaussian())
    np.testing.assert_allclose(
        solve(single, x, 6.0, 0.3), exact.ExactGaussianFlowMap(gaussian())(x, 6.0, 0.3), atol=1e-8
    )
    mixture = exact.ExactMixtureFlowMap(toy_gaussian_mixture(jnp.float64))
    direct = solve(mixture, x, 6.0, 0.0)
    composed = solve(mixture, solve(mixture, x, 6.0, 0.8), 0.8, 0.0)
    np.testing.assert_allclose(composed, direct, atol=1e-7)
    teacher = base.TeacherFlowMap(toy_gaussian_mixture(jnp.float64), "heun", 64)
    np.testing.assert_allclose(solve(teacher, x, 6.0, 0.0), direct, atol=5e-3)


def test_denoiser_from_flow_map_is_the_exact_denoiser(x64):
    flow_map, x = exact.ExactGaussianFlowMap(gaussian()), points()
    denoiser = base.denoiser_from_flow_map(flow_map)
    sigma = jnp.array([0.1, 0.5, 1.0, 2.0, 5.0, 20.0])
    np.testing.assert_allclose(denoiser(x, sigma), gaussian()(x, sigma), rtol=1e-12)
