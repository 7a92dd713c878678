"""The velocity contract: the closed-form marginal FM field of Gaussian data (independent
coupling) equals the velocity converted from the exact Gaussian denoiser, the ODE solvers map the
source to the data with their stated orders, the conversions are exact both ways, likelihood
matches the exact density, gradients match finite differences, and bad input fails clearly."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import callables, samplers
from diffusion_jax.analytic import GaussianMixture, gaussian_flow_map
from diffusion_jax.flows import gaussian, likelihood, ode, velocity
from diffusion_jax.processes import VP, RectifiedFlow


def test_closed_form_field_matches_reference_numbers():
    # REFERENCES 4.2 (data at tau = 1): m = 1.5, s = 0.4, tau = 0.3 -> v_fm = 1.5 - 1.2926 (x - tau m)
    field = gaussian.IndependentGaussianVelocity(1.5, 0.4)
    t = 0.7  # library time of tau = 0.3
    x = jnp.array([[0.0], [1.0]])
    v = field(x, t)
    slope = float(v[1, 0] - v[0, 0])
    assert -slope == pytest.approx(-1.2926, abs=1e-4)  # our velocity is minus theirs
    assert float(-v[0, 0]) == pytest.approx(1.5 + 1.2926 * 0.3 * 1.5, abs=1e-4)


@pytest.mark.parametrize("process", [RectifiedFlow(), VP()], ids=["rectified_flow", "vp"])
def test_closed_form_field_equals_velocity_of_exact_gaussian_denoiser(process, x64):
    mean, std = jnp.array([1.5, -0.5]), jnp.array([0.4, 2.0])
    data = GaussianMixture.create(mean[None], variances=(std**2)[None])
    field = gaussian.IndependentGaussianVelocity(mean, std, process=process)
    converted = velocity.velocity_from_denoiser(data, process)
    x = jax.random.normal(jax.random.key(0), (8, 2), jnp.float64) * 2.0
    for t in (0.05, 0.3, 0.7, 0.95):
        np.testing.assert_allclose(converted(x, t), field(x, t), rtol=1e-10, atol=1e-10)


def test_denoiser_velocity_round_trip_is_exact(x64):
    data = GaussianMixture.create(jnp.array([[1.0, 0.0], [-1.0, 0.5]]),
                                  variances=jnp.array([[0.2, 0.3], [0.1, 0.1]]))
    process = RectifiedFlow()
    round_trip = velocity.denoiser_from_velocity(velocity.velocity_from_denoiser(data, process),
                                                 process)
    x = jax.random.normal(jax.random.key(1), (6, 2), jnp.float64)
    for sigma in (0.01, 0.5, 3.0, 40.0):
        np.testing.assert_allclose(round_trip(x, sigma), data(x, sigma), rtol=1e-9, atol=1e-10)


def _affine_map(x_end_of):
    """Slope and intercept of a 1-D affine flow map measured at x = 0 and x = 1."""
    ends = x_end_of(jnp.array([[0.0], [1.0]]))
    return float(ends[1, 0] - ends[0, 0]), float(ends[0, 0])


def _nonlinear_field(x, t, cond=None):
    return jnp.sin(x) * (1.0 + t) + 0.5 * t


@pytest.mark.parametrize("method,order", [("euler", 1), ("midpoint", 2), ("heun", 2), ("rk4", 4)])
def test_methods_converge_with_their_order(method, order, x64):
    x = jnp.array([[0.3], [-1.1], [2.0]])
    reference = ode.integrate(_nonlinear_field, x, ode.time_grid(2048, dtype=jnp.float64),
                              method="rk4")
    steps = [8, 16, 32]
    errors = [float(jnp.max(jnp.abs(ode.integrate(
        _nonlinear_field, x, ode.time_grid(n, dtype=jnp.float64), method=method) - reference)))
        for n in steps]
    measured = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert measured == pytest.approx(order, abs=0.25), errors
    assert ode.METHODS[method].order == order


def test_exact_field_maps_an_arbitrary_gaussian_source_to_the_data(x64):
    """From the source N(2, 0.5^2) (not the unit Gaussian) to data N(-1, 1.5^2): the flow of the
    exact independent-coupling field is the monotone affine map x -> m_d + (s_d / s_s)(x - m_s),
    i.e. the 1-D Monge map, which pushes the source onto the data distribution."""
    field = gaussian.IndependentGaussianVelocity(-1.0, 1.5, mean_source=2.0, std_source=0.5)
    slope, intercept = _affine_map(lambda x: ode.integrate(
        field, x, ode.time_grid(64, dtype=jnp.float64), method="rk4"))
    assert slope == pytest.approx(3.0, abs=1e-6) and intercept == pytest.approx(-7.0, abs=1e-6)


def test_adaptive_solver_maps_unit_noise_to_gaussian_data(x64):
    field = gaussian.IndependentGaussianVelocity(jnp.array([1.5, -2.0]), jnp.array([0.4, 3.0]))
    noise = jax.random.normal(jax.random.key(2), (4, 2), jnp.float64)
    x_end, nfe = ode.solve_adaptive(field, noise, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(x_end, jnp.array([1.5, -2.0]) + jnp.array([0.4, 3.0]) * noise,
                               atol=1e-7)
    assert 10 < int(nfe) < 2000


def test_one_euler_step_of_the_independent_coupling_collapses_onto_the_data_mean(x64):
    """At the source end the independent-coupling field is ``v(x, 1) = x - m_d`` (for any data
    std, also s = 1: the field is *not* constant there, ``Cov(u, x_t) = 2t - 1``), so one Euler
    step sends every source point to the data mean: the one-step failure of FM on the toy."""
    for std in (1.0, 0.4):
        field = gaussian.IndependentGaussianVelocity(1.5, std)
        noise = jnp.linspace(-2.0, 2.0, 5)[:, None]
        one_step = ode.integrate(field, noise, ode.time_grid(1, dtype=jnp.float64))
        np.testing.assert_allclose(one_step, 1.5, atol=1e-12)


def test_library_sampler_on_converted_velocity_reaches_the_data(x64):
    """Every existing sampler applies when the source is Gaussian: Heun on the denoiser of the
    closed-form velocity equals Heun on the exact Gaussian denoiser and approaches the exact
    PF-ODE endpoint."""
    field = gaussian.IndependentGaussianVelocity(jnp.array([1.5]), jnp.array([0.4]))
    data = GaussianMixture.create(jnp.array([[1.5]]), variances=jnp.array([[0.16]]))
    denoiser = velocity.denoiser_from_velocity(field, RectifiedFlow())
    noise = jnp.array([[-1.0], [0.5]], jnp.float64)
    sigmas = samplers.karras_sigmas(256, 1e-3, 1e3).astype(jnp.float64)
    x0 = samplers.heun(denoiser, noise, sigmas)
    np.testing.assert_allclose(x0, samplers.heun(data, noise, sigmas), rtol=1e-10)
    exact = gaussian_flow_map(data, noise * sigmas[0], sigmas[0], 0.0)
    np.testing.assert_allclose(x0, exact, atol=5e-4)


def test_log_likelihood_equals_exact_density(x64):
    mean, std = jnp.array([1.5, -2.0]), jnp.array([0.4, 3.0])
    field = gaussian.IndependentGaussianVelocity(mean, std, mean_source=1.0, std_source=2.0)
    x = mean + std * jax.random.normal(jax.random.key(3), (5, 2), jnp.float64)

    def source_log_prob(x1):
        return jnp.sum(-0.5 * ((x1 - 1.0) / 2.0) ** 2 - jnp.log(2.0 * jnp.sqrt(2 * jnp.pi)), -1)

    exact = field.marginal_log_prob(x, 0.0)
    log_p = likelihood.log_likelihood(field, x, source_log_prob=source_log_prob)
    np.testing.assert_allclose(log_p, exact, atol=1e-5)
    # diagonal Jacobian: Hutchinson with Rademacher probes is exact (zero variance)
    hutch = likelihood.log_likelihood(field, x, source_log_prob=source_log_prob,
                                      divergence="hutchinson", key=jax.random.key(0))
    np.testing.assert_allclose(hutch, exact, atol=1e-5)


def test_gradients_through_fixed_grid_and_adaptive_solves_match_finite_differences(x64):
    noise = jnp.array([[0.3], [-1.2]], jnp.float64)

    def loss(mean, solve):
        field = gaussian.IndependentGaussianVelocity(mean, 0.7)
        return jnp.sum(solve(field) ** 2)

    solves = {
        "rk4": lambda f: ode.integrate(f, noise, ode.time_grid(16, dtype=jnp.float64), method="rk4"),
        "dopri5": lambda f: ode.solve_adaptive(f, noise, rtol=1e-10, atol=1e-10)[0],
    }
    for solve in solves.values():
        grad = jax.grad(loss)(jnp.asarray(0.4), solve)
        h = 1e-5
        fd = (loss(0.4 + h, solve) - loss(0.4 - h, solve)) / (2 * h)
        assert float(grad) == pytest.approx(float(fd), rel=1e-6)


def test_plain_function_velocity_jits_and_does_not_recompile():
    def field(x, t, cond=None):
        return -x * (1.0 + t)

    traces = []

    def run(velocity_fn, x):
        traces.append(1)
        return ode.integrate(velocity_fn, x, ode.time_grid(4), method="heun")

    jitted = callables.filter_jit(run)
    a = jitted(field, jnp.ones((3, 2)))
    b = jitted(field, 2.0 * jnp.ones((3, 2)))
    assert len(traces) == 1
    np.testing.assert_allclose(b, 2.0 * a, rtol=1e-6)
    x_end, _ = ode.solve_adaptive(field, jnp.ones((3, 2)), solver=diffrax.Tsit5())
    np.testing.assert_allclose(x_end, jnp.exp(1.5) * jnp.ones((3, 2)), rtol=1e-4)


@pytest.mark.parametrize("solver", [diffrax.Dopri5(), diffrax.Tsit5(), diffrax.Heun()],
                         ids=["dopri5", "tsit5", "heun"])
def test_adaptive_nfe_is_the_number_of_velocity_calls(solver):
    calls = []

    def field(x, t, cond=None):
        jax.debug.callback(lambda: calls.append(1))
        return -x * (1.0 + t)

    x_end, nfe = ode.solve_adaptive(field, jnp.ones((2, 2)), solver=solver, rtol=1e-4, atol=1e-4)
    jax.block_until_ready(x_end)
    assert int(nfe) == len(calls)


def test_data_time_wrapper_flips_time_and_sign():
    def fm_field(x, tau, cond=None):  # torchcfm convention: data at tau = 1
        return x * 0.0 + tau

    wrapped = velocity.DataTimeVelocity(fm_field)
    np.testing.assert_allclose(wrapped(jnp.zeros((2, 1)), 0.25), -0.75)


def test_bad_input_gets_one_line_errors():
    field = gaussian.IndependentGaussianVelocity(0.0, 1.0)
    x = jnp.zeros((2, 1))
    with pytest.raises(ValueError, match="unknown ODE method"):
        ode.integrate(field, x, ode.time_grid(2), method="rk45")
    with pytest.raises(ValueError, match="monotone"):
        ode.integrate(field, x, jnp.array([1.0, 0.2, 0.5]))
    with pytest.raises(ValueError, match="batch axis"):
        ode.integrate(field, jnp.zeros(3), ode.time_grid(2))
    with pytest.raises(ValueError, match="velocity returned shape"):
        ode.integrate(lambda x, t, c=None: x[:, :0], x, ode.time_grid(2))
    with pytest.raises(ValueError, match="num_steps"):
        ode.time_grid(0)
    with pytest.raises(ValueError, match="needs a key"):
        likelihood.log_likelihood(field, x, source_log_prob=lambda y: y[:, 0],
                                  divergence="hutchinson")
