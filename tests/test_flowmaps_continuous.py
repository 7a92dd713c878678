"""Continuous-time flow maps (TrigFlow / sCM, MeanFlow, shortcut models) against the closed-form
flow map of Gaussian data N(mu, s^2): exact targets, the MeanFlow identity, the shortcut
composition, stationarity of each objective at the exact map, the sCM tangent by finite
differences, k-step sampling and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.analytic import GaussianMixture
from diffusion_jax.flowmaps.exact import ExactGaussianFlowMap
from diffusion_jax.flowmaps.meanflow import (
    AverageVelocityFlowMap,
    meanflow_loss,
    meanflow_target,
    sample_average_velocity,
    sample_time_pairs,
)
from diffusion_jax.flowmaps.samplers import sample_flow_map
from diffusion_jax.flowmaps.shortcut import shortcut_loss, shortcut_step_sizes, shortcut_target
from diffusion_jax.flowmaps.trigflow import (
    TimeLogVariance,
    TrigFlowConsistency,
    normalise_tangent,
    scm_loss,
    scm_tangent,
    tangent_warmup,
    trigflow_velocity_from_denoiser,
)
from diffusion_jax.pytrees import frozen_pytree

MEAN, VARIANCE, SIGMA_DATA = 0.7, 0.36, 0.5


def _exact_map(mean=MEAN, variance=VARIANCE):
    gaussian = GaussianMixture.create(jnp.array([[mean]]), variances=jnp.array([[variance]]))
    return ExactGaussianFlowMap(gaussian)


def _per_example(value, x):
    return jnp.broadcast_to(jnp.asarray(value), x.shape[:1])[:, None]


@frozen_pytree
class GaussianAverageVelocity:
    """The exact average velocity of N(mean, variance) data on z_t = (1 - t) x + t eps, as a
    two-time network ``(z, c_noise = t, cond, c_noise_to = t - r)``: ``u = (z - (1 - t) mu)
    ((1 + s^2)(t + r) - 2 s^2) / (V(t) (1 + rho)) - mu``, ``rho = sqrt(V(r) / V(t))``, ``V(a) =
    (1 - a)^2 s^2 + a^2`` (the algebraic form of ``(z - Phi_{t->r}(z)) / (t - r)``, finite at
    ``r = t``)."""

    mean: float
    variance: float

    def __call__(self, z, c_noise, cond=None, c_noise_to=None):
        t, r = _per_example(c_noise, z), _per_example(c_noise - c_noise_to, z)
        s2 = self.variance
        v_t, v_r = (1 - t) ** 2 * s2 + t**2, (1 - r) ** 2 * s2 + r**2
        rho = jnp.sqrt(v_r / v_t)
        slope = ((1 + s2) * (t + r) - 2 * s2) / (v_t * (1 + rho))
        return (z - (1 - t) * self.mean) * slope - self.mean


@frozen_pytree
class GaussianTrigFlowNetwork:
    """The network ``F(x_t / sigma_d, t)`` whose sCM consistency function is the exact map to 0
    of N(mean, variance) data: ``F = (cos t x_t - f*(x_t, t)) / (sin t sigma_d)``."""

    mean: float
    variance: float

    def __call__(self, x_scaled, c_noise, cond=None):
        t = _per_example(c_noise, x_scaled)
        x_t = SIGMA_DATA * x_scaled
        sigma = SIGMA_DATA * jnp.tan(t)
        x_ve = x_t / jnp.cos(t)
        f = self.mean + (x_ve - self.mean) * jnp.sqrt(self.variance / (self.variance + sigma**2))
        return (jnp.cos(t) * x_t - f) / (jnp.sin(t) * SIGMA_DATA)


@frozen_pytree
class SmoothNetwork:
    """An arbitrary smooth (non-exact) network ``tanh(a x + b t) + c x t`` for derivative checks."""

    a: float
    b: float
    c: float

    def __call__(self, x, c_noise, cond=None):
        t = _per_example(c_noise, x)
        return jnp.tanh(self.a * x + self.b * t) + self.c * x * t


def _data(key, n, mean=MEAN, variance=VARIANCE):
    return mean + jnp.sqrt(variance) * jax.random.normal(key, (n, 1), jnp.float64)


def _stop(tree):
    return jax.tree.map(jax.lax.stop_gradient, tree)


def _gradient_and_error(per_example_loss, theta):
    """Mean gradient of the per-example loss at ``theta`` and its Monte Carlo standard error."""
    jacobian = jax.jacfwd(per_example_loss)(theta)  # (n, num_params)
    n = jacobian.shape[0]
    return jnp.mean(jacobian, axis=0), jnp.std(jacobian, axis=0) / np.sqrt(n)


# -- exact targets ------------------------------------------------------------------------------


def test_average_velocity_adapter_equals_the_exact_gaussian_map(x64):
    exact = _exact_map()
    flow_map = AverageVelocityFlowMap(GaussianAverageVelocity(MEAN, VARIANCE))
    x = 3.0 * jax.random.normal(jax.random.key(0), (6, 1), jnp.float64)
    sigma = jnp.array([0.05, 0.5, 1.0, 3.0, 20.0, 80.0])
    for fraction in (0.0, 0.3, 0.9, 1.0):
        sigma_to = fraction * sigma
        np.testing.assert_allclose(flow_map(x, sigma, sigma_to), exact(x, sigma, sigma_to),
                                   rtol=1e-12, atol=1e-12)


def test_trigflow_consistency_of_the_exact_network_is_the_exact_map_to_zero(x64):
    exact = _exact_map()
    model = TrigFlowConsistency(GaussianTrigFlowNetwork(MEAN, VARIANCE), sigma_data=SIGMA_DATA)
    x = 3.0 * jax.random.normal(jax.random.key(1), (5, 1), jnp.float64)
    sigma = jnp.array([0.01, 0.3, 1.0, 10.0, 80.0])
    np.testing.assert_allclose(model(x, sigma, 0.0), exact(x, sigma, 0.0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(model(x, sigma, sigma), x, rtol=1e-12)  # sigma_to = sigma: identity
    # sigma_to > 0: the TrigFlow DDIM jump cos(t - s) x_t - sin(t - s) sigma_d F, in the VE frame.
    t, s = jnp.arctan(sigma / SIGMA_DATA), jnp.arctan(0.5 * sigma / SIGMA_DATA)
    x_t = jnp.cos(t)[:, None] * x
    velocity = SIGMA_DATA * GaussianTrigFlowNetwork(MEAN, VARIANCE)(x_t / SIGMA_DATA, t)
    jump = jnp.cos(t - s)[:, None] * x_t - jnp.sin(t - s)[:, None] * velocity
    np.testing.assert_allclose(model(x, sigma, 0.5 * sigma), jump / jnp.cos(s)[:, None],
                               rtol=1e-12)


def test_trigflow_teacher_velocity_is_the_derivative_of_the_exact_trajectory(x64):
    exact = _exact_map()
    x_start, sigma_start = jnp.array([[1.9], [-0.4]]), 5.0

    def trajectory(t):  # x_t = cos(t) * x_VE(sigma_d tan t) on the exact VE PF-ODE
        return jnp.cos(t) * exact(x_start, sigma_start, SIGMA_DATA * jnp.tan(t))

    t, h = 0.8, 1e-5
    finite_difference = (trajectory(t + h) - trajectory(t - h)) / (2 * h)
    velocity = trigflow_velocity_from_denoiser(exact.denoiser, trajectory(t), t,
                                               sigma_data=SIGMA_DATA)
    np.testing.assert_allclose(velocity, finite_difference, rtol=1e-8)


# -- MeanFlow identity and shortcut composition ---------------------------------------------------


def test_meanflow_identity_holds_for_the_exact_average_velocity(x64):
    model = AverageVelocityFlowMap(GaussianAverageVelocity(MEAN, VARIANCE))
    z = 2.0 * jax.random.normal(jax.random.key(2), (5, 1), jnp.float64)
    t = jnp.array([0.2, 0.5, 0.7, 0.95, 1.0])
    r = jnp.array([0.0, 0.1, 0.69, 0.3, 0.5])
    v = model.average_velocity(z, t, 0.0)
    u, target = meanflow_target(model, z, r, t, v)  # u = v - (t - r) du/dt, du/dt by jax.jvp
    np.testing.assert_allclose(target, u, rtol=1e-12, atol=1e-12)
    # du/dt along the exact trajectory by finite differences in t (z moves with velocity v).
    h = 1e-6
    along = lambda e: model.average_velocity(z + e * v, t + e, t + e - r)  # noqa: E731
    finite_difference = (along(h) - along(-h)) / (2 * h)
    np.testing.assert_allclose(u, v - (t - r)[:, None] * finite_difference, rtol=1e-7, atol=1e-8)


def test_shortcut_composition_two_d_equals_d_plus_d_for_the_exact_map(x64):
    model = AverageVelocityFlowMap(GaussianAverageVelocity(MEAN, VARIANCE))
    x_t = 2.0 * jax.random.normal(jax.random.key(3), (7, 1), jnp.float64)
    two_d = 2.0 ** -jnp.arange(7.0)  # 1, 1/2, ..., 1/64: half steps on the grid (>= 1/128)
    t = jnp.array([1.0, 0.5, 0.75, 0.25, 0.1875, 1.0, 0.015625])
    target = shortcut_target(model, x_t, t, two_d)
    np.testing.assert_allclose(target, model.average_velocity(x_t, t, two_d), rtol=1e-12)
    # A half step below the grid (2d = 1/128 -> d = 1/256) uses d = 0: the trapezoid of v.
    two_d = jnp.full((7,), 2.0**-7)
    v = model.average_velocity(x_t, t, 0.0)
    heun = 0.5 * (v + model.average_velocity(x_t - 2.0**-8 * v, t - 2.0**-8, 0.0))
    np.testing.assert_allclose(shortcut_target(model, x_t, t, two_d), heun, rtol=1e-12)


# -- objectives are stationary at the exact map -------------------------------------------------


def _meanflow_per_example(theta, key, n, **options):
    model = AverageVelocityFlowMap(GaussianAverageVelocity(theta[0], theta[1]))
    return meanflow_loss(model, _data(jax.random.fold_in(key, 10_000), n), key, **options)


# Training-time CFG on label-independent data: u(.|c) = u(.|null) = v_marginal, so the guided
# field omega v + kappa u_c + (1 - omega - kappa) u_null has conditional mean v_marginal exactly
# when its weights sum to 1, and the exact map stays stationary.
CFG = dict(cfg_scale=2.0, cfg_kappa=0.5, null_class=3, label_dropout=0.1,
           cond=jnp.arange(20000) % 4)


@pytest.mark.parametrize("adaptive_p, cfg", [(0.0, {}), (1.0, {}), (0.0, CFG)])
def test_meanflow_loss_is_stationary_at_the_exact_map_only(x64, adaptive_p, cfg):
    key, n = jax.random.key(4), 20000
    options = dict(fraction_r_neq_t=0.5, adaptive_p=adaptive_p, **cfg)
    truth = jnp.array([MEAN, VARIANCE])
    gradient, error = _gradient_and_error(lambda th: _meanflow_per_example(th, key, n, **options),
                                          truth)
    assert bool(jnp.all(jnp.abs(gradient) < 4 * error)), (gradient, error)
    perturbed = truth + jnp.array([0.4, 0.3])
    gradient, error = _gradient_and_error(lambda th: _meanflow_per_example(th, key, n, **options),
                                          perturbed)
    assert bool(jnp.any(jnp.abs(gradient) > 8 * error)), (gradient, error)


def test_shortcut_loss_is_stationary_at_the_exact_map_only(x64):
    key, n = jax.random.key(5), 20000

    def per_example(theta, target_theta):
        model = AverageVelocityFlowMap(GaussianAverageVelocity(theta[0], theta[1]))
        target = AverageVelocityFlowMap(GaussianAverageVelocity(target_theta[0], target_theta[1]))
        return shortcut_loss(model, target, _data(jax.random.fold_in(key, 10_000), n), key)

    truth = jnp.array([MEAN, VARIANCE])
    gradient, error = _gradient_and_error(lambda th: per_example(th, truth), truth)
    assert bool(jnp.all(jnp.abs(gradient) < 4 * error)), (gradient, error)
    perturbed = truth + jnp.array([0.4, 0.3])
    gradient, error = _gradient_and_error(lambda th: per_example(th, perturbed), perturbed)
    assert bool(jnp.any(jnp.abs(gradient) > 8 * error)), (gradient, error)


def _scm_per_example(theta, key, n, teacher=None, log_variance=None):
    model = TrigFlowConsistency(GaussianTrigFlowNetwork(theta[0], theta[1]), sigma_data=SIGMA_DATA)
    return scm_loss(model, _stop(model), _data(jax.random.fold_in(key, 10_000), n), key,
                    teacher=teacher, log_variance=log_variance)


def test_sct_loss_is_stationary_at_the_exact_map_only(x64):
    key, n = jax.random.key(6), 20000
    truth = jnp.array([MEAN, VARIANCE])
    log_variance = lambda t: 0.3 * jnp.sin(3.0 * t)  # noqa: E731  (any weighting of t)
    for weighting in (None, log_variance):
        gradient, error = _gradient_and_error(
            lambda th: _scm_per_example(th, key, n, log_variance=weighting), truth)  # noqa: B023
        assert bool(jnp.all(jnp.abs(gradient) < 4 * error)), (gradient, error)
    perturbed = truth + jnp.array([0.4, 0.3])
    gradient, error = _gradient_and_error(lambda th: _scm_per_example(th, key, n), perturbed)
    assert bool(jnp.any(jnp.abs(gradient) > 8 * error)), (gradient, error)


def test_scd_with_the_exact_teacher_has_zero_loss_and_gradient_at_the_exact_map(x64):
    key, n = jax.random.key(7), 256
    truth = jnp.array([MEAN, VARIANCE])
    teacher = _exact_map().denoiser
    loss_fn = lambda th: jnp.mean(_scm_per_example(th, key, n, teacher=teacher))  # noqa: E731
    loss, gradient = jax.value_and_grad(loss_fn)(truth)
    assert float(loss) < 1e-20
    np.testing.assert_allclose(gradient, 0.0, atol=1e-9)
    assert float(jnp.max(jnp.abs(jax.grad(loss_fn)(truth + jnp.array([0.2, 0.15]))))) > 1e-3


# -- the sCM tangent ------------------------------------------------------------------------------


def test_scm_tangent_is_cos_t_times_the_finite_difference_derivative_of_f(x64):
    model = TrigFlowConsistency(SmoothNetwork(0.8, -1.3, 0.4), sigma_data=SIGMA_DATA,
                                time_scale=2.0)
    x_t = jnp.array([[0.3, -1.2], [2.0, 0.5], [-0.7, 0.1]])
    dxt_dt = jnp.array([[1.1, 0.4], [-0.3, 0.9], [0.2, -2.0]])
    t = jnp.array([0.1, 0.8, 1.4])
    h = 1e-6
    f_plus = model.consistency(x_t + h * dxt_dt, t + h)
    f_minus = model.consistency(x_t - h * dxt_dt, t - h)
    df_dt = (f_plus - f_minus) / (2 * h)
    output, tangent = scm_tangent(model, x_t, t, dxt_dt, r=1.0)
    np.testing.assert_allclose(output, model.network(x_t / SIGMA_DATA, 2.0 * t), rtol=1e-14)
    np.testing.assert_allclose(tangent, jnp.cos(t)[:, None] * df_dt, rtol=1e-7, atol=1e-9)
    # r scales only the second term: r = 0 leaves -cos^2 t (sigma_d F - dx_t/dt).
    _, first = scm_tangent(model, x_t, t, dxt_dt, r=0.0)
    np.testing.assert_allclose(first, -jnp.cos(t)[:, None] ** 2 * (SIGMA_DATA * output - dxt_dt),
                               rtol=1e-14)
    _, half = scm_tangent(model, x_t, t, dxt_dt, r=0.5)
    np.testing.assert_allclose(half, 0.5 * (first + tangent), rtol=1e-12, atol=1e-14)


def test_tangent_normalisation_and_warmup():
    g = jnp.array([[3.0, 4.0], [0.0, 0.0], [0.06, 0.08]])
    normalised = normalise_tangent(g)
    np.testing.assert_allclose(jnp.linalg.norm(normalised, axis=-1),
                               jnp.array([5.0 / 5.1, 0.0, 0.1 / 0.2]), rtol=1e-6)
    np.testing.assert_allclose(normalised[0] / normalised[0, 0], g[0] / g[0, 0])  # direction kept
    values = [float(tangent_warmup(step, 10_000)) for step in (0, 2500, 10_000, 50_000)]
    assert values == [0.0, 0.25, 1.0, 1.0]
    assert float(tangent_warmup(7, 0)) == 1.0
    with pytest.raises(ValueError, match="warmup_steps"):
        tangent_warmup(0, -1)


def test_time_log_variance_starts_at_zero_and_minimises_to_log_mean_loss():
    from flax import nnx

    module = TimeLogVariance(embedding_dim=16, embedding="fourier", rngs=nnx.Rngs(0))
    t = jnp.linspace(0.05, 1.5, 8)
    np.testing.assert_array_equal(module(t), 0.0)  # weight 1 at initialisation
    # Minimising loss e^-u + u over u(t) gives u = log E[loss | t] (here loss = 2 + t).
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)

    def objective(p):
        u = nnx.merge(graphdef, p, rest)(t)
        return jnp.mean((2.0 + t) * jnp.exp(-u) + u)

    import optax

    optimizer = optax.adam(0.05)
    state = optimizer.init(params)
    step = jax.jit(lambda p, s: optimizer.update(jax.grad(objective)(p), s, p))
    for _ in range(400):
        updates, state = step(params, state)
        params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(nnx.merge(graphdef, params, rest)(t), jnp.log(2.0 + t), atol=0.02)


# -- time sampling ------------------------------------------------------------------------------


def test_meanflow_time_pairs_and_shortcut_step_sizes():
    t, r = sample_time_pairs(jax.random.key(8), 20000, fraction_r_neq_t=0.25)
    assert bool(jnp.all((0 < r) & (r <= t) & (t < 1)))
    fraction = float(jnp.mean(r < t))
    assert abs(fraction - 0.25) < 4 * np.sqrt(0.25 * 0.75 / 20000)
    # The logit of the larger of two N(-0.4, 1) draws has mean -0.4 + 1/sqrt(pi).
    logit = jnp.log(t / (1 - t))
    assert abs(float(jnp.mean(logit)) - (-0.4 + 1 / np.sqrt(np.pi))) < 0.03
    t, two_d = shortcut_step_sizes(jax.random.key(9), 20000, num_levels=7)
    levels = -jnp.log2(two_d)
    np.testing.assert_array_equal(levels, jnp.round(levels))
    assert set(np.unique(np.asarray(levels)).tolist()) == set(range(8))
    steps_taken = t / two_d  # t is a whole number of 2d steps in [2d, 1]
    np.testing.assert_allclose(steps_taken, jnp.round(steps_taken), atol=1e-5)
    assert bool(jnp.all((t - two_d >= -1e-7) & (t <= 1.0)))


# -- sampling -----------------------------------------------------------------------------------


@pytest.mark.parametrize("num_steps", [1, 2, 4])
def test_k_step_sampling_of_the_exact_average_velocity_is_exact(x64, num_steps):
    model = AverageVelocityFlowMap(GaussianAverageVelocity(MEAN, VARIANCE))
    noise = jax.random.normal(jax.random.key(10), (64, 1), jnp.float64)
    times = jnp.linspace(1.0, 0.0, num_steps + 1)
    samples = jax.jit(sample_average_velocity)(model, noise, times)
    np.testing.assert_allclose(samples, MEAN + np.sqrt(VARIANCE) * noise, rtol=1e-12)
    # The same model through the generic VE flow-map sampler from a very large sigma_max.
    sigmas = jnp.concatenate([jnp.array([1e8]), jnp.linspace(1.0, 0.0, num_steps + 1)[1:]])
    sigmas = sigmas / jnp.maximum(1.0 - sigmas, 1e-8) * (sigmas < 1) + 1e8 * (sigmas >= 1)
    generic = sample_flow_map(model, noise, sigmas)
    np.testing.assert_allclose(generic, MEAN + np.sqrt(VARIANCE) * noise, rtol=1e-6, atol=1e-6)
    # Differentiable: d mean(samples) / d mu = 1.
    grad = jax.grad(lambda m: jnp.mean(sample_average_velocity(
        AverageVelocityFlowMap(GaussianAverageVelocity(m, VARIANCE)), noise, times)))(MEAN)
    np.testing.assert_allclose(grad, 1.0, rtol=1e-10)


# -- bad input ------------------------------------------------------------------------------------


def test_bad_inputs_get_one_line_errors():
    average = AverageVelocityFlowMap(GaussianAverageVelocity(MEAN, VARIANCE))
    trig = TrigFlowConsistency(GaussianTrigFlowNetwork(MEAN, VARIANCE), sigma_data=SIGMA_DATA)
    x = jnp.zeros((2, 1))
    for flow_map in (average, trig):
        with pytest.raises(ValueError, match="sigma_to"):
            flow_map(x, 1.0, 2.0)
    with pytest.raises(ValueError, match="non-increasing"):
        sample_average_velocity(average, x, jnp.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="fraction_r_neq_t"):
        sample_time_pairs(jax.random.key(0), 4, fraction_r_neq_t=1.5)
    with pytest.raises(ValueError, match="cfg_scale"):
        meanflow_loss(average, x, jax.random.key(0), cfg_scale=2.0)
    with pytest.raises(ValueError, match="bootstrap_fraction"):
        shortcut_loss(average, average, x, jax.random.key(0), bootstrap_fraction=2.0)
    with pytest.raises(ValueError, match="num_levels"):
        shortcut_step_sizes(jax.random.key(0), 4, num_levels=0)
    with pytest.raises(ValueError, match="sigma_data"):
        scm_loss(trig, TrigFlowConsistency(trig.network, sigma_data=1.0), x, jax.random.key(0))
