"""Forward processes: analytic derivatives, inverses, published constants, SDE consistency."""

import math

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from diffusion_jax import processes as P

ALL_PROCESSES = [
    P.VP(),
    P.SubVP(),
    P.VE(),
    P.EDM(),
    P.Cosine(),
    P.RectifiedFlow(),
    P.TrigFlow(),
    P.TrigFlow(sigma_data=0.5),
    P.VP(beta_min=0.5, beta_max=10.0),
    P.DiscreteVP.from_schedule("linear", num_steps=16, beta_start=0.01, beta_end=0.4),
]
IDS = [f"{type(p).__name__}{i}" for i, p in enumerate(ALL_PROCESSES)]


def _grid(process, num=9):
    return jnp.linspace(1e-3, 0.98 * float(process.t_max), num)


@pytest.mark.parametrize("process", ALL_PROCESSES, ids=IDS)
def test_analytic_derivatives_match_jvp(x64, process):
    t = _grid(process)
    for value, derivative in [(process.alpha, process.d_alpha), (process.sigma, process.d_sigma)]:
        _, tangent = jax.jvp(value, (t,), (jnp.ones_like(t),))
        np.testing.assert_allclose(derivative(t), tangent, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("process", ALL_PROCESSES, ids=IDS)
def test_ve_sigma_inverse_round_trips(x64, process):
    t = _grid(process)
    np.testing.assert_allclose(process.t_of_ve_sigma(process.ve_sigma(t)), t, rtol=1e-9, atol=1e-12)
    sigma = jnp.geomspace(0.05, 20.0, 7)
    if isinstance(process, P.VE):
        sigma = jnp.geomspace(process.sigma_min, process.sigma_max, 7)
    np.testing.assert_allclose(process.ve_sigma(process.t_of_ve_sigma(sigma)), sigma, rtol=1e-9)


@pytest.mark.parametrize("process", ALL_PROCESSES, ids=IDS)
def test_log_snr_and_ve_sigma_consistent(x64, process):
    t = _grid(process)
    np.testing.assert_allclose(process.log_snr(t), -2 * jnp.log(process.ve_sigma(t)), rtol=1e-10)
    assert bool(jnp.all(jnp.diff(process.log_snr(t)) < 0)), "log-SNR must decrease with t"


def test_published_constants(x64):
    vp = P.VP()
    # EDM's "vp" discretisation defaults and score_sde's VP constants (REFERENCES.md).
    np.testing.assert_allclose(vp.alpha(1.0), 6.5716e-3, rtol=1e-4)
    np.testing.assert_allclose(vp.sigma(1.0), 0.99998, rtol=1e-5)
    np.testing.assert_allclose(vp.ve_sigma(1e-3), 0.010486, rtol=1e-4)
    np.testing.assert_allclose(vp.ve_sigma(1.0), 152.17, rtol=1e-4)
    np.testing.assert_allclose(0.5 * vp.log_snr(1.0), -5.025, atol=1e-3)
    np.testing.assert_allclose(0.5 * vp.log_snr(1e-3), 4.558, atol=1e-3)
    np.testing.assert_allclose(0.5 * vp.log_snr(1e-5), 6.907, atol=1e-3)
    np.testing.assert_allclose(vp.drift_coefficient(0.3), -0.5 * vp.beta(0.3), rtol=1e-12)
    np.testing.assert_allclose(vp.diffusion_squared(0.3), vp.beta(0.3), rtol=1e-10)
    sub = P.SubVP()
    integral = 0.5 * 0.3**2 * 19.9 + 0.3 * 0.1
    np.testing.assert_allclose(sub.sigma(0.3), 1 - math.exp(-integral), rtol=1e-12)
    np.testing.assert_allclose(
        sub.diffusion_squared(0.3), sub.beta(0.3) * (1 - math.exp(-2 * integral)), rtol=1e-10
    )
    ve = P.VE(sigma_min=0.01, sigma_max=50.0)
    np.testing.assert_allclose([ve.sigma(0.0), ve.sigma(1.0)], [0.01, 50.0], rtol=1e-12)
    # score_sde: g(t) = sigma(t) sqrt(2 ln(smax/smin)).
    np.testing.assert_allclose(
        ve.diffusion_squared(0.4), ve.sigma(0.4) ** 2 * 2 * math.log(5000.0), rtol=1e-12
    )
    cos = P.Cosine()
    np.testing.assert_allclose([cos.alpha(0.0), cos.sigma(0.0)], [1.0, 0.0], atol=1e-15)
    np.testing.assert_allclose(cos.alpha(1.0), 0.0, atol=1e-15)
    # Nichol & Dhariwal: alpha_bar(t) = f(t)/f(0), f = cos^2(((t + s)/(1 + s)) pi/2).
    f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    np.testing.assert_allclose(cos.alpha(0.37) ** 2, f(0.37) / f(0.0), rtol=1e-12)
    rf = P.RectifiedFlow()
    np.testing.assert_allclose(
        [rf.alpha(0.25), rf.sigma(0.25), rf.ve_sigma(0.25)], [0.75, 0.25, 1 / 3]
    )
    trig = P.TrigFlow(sigma_data=0.5)
    np.testing.assert_allclose(trig.t_of_ve_sigma(0.5), math.pi / 4, rtol=1e-12)
    np.testing.assert_allclose(P.EDM().ve_sigma(3.0), 3.0)


@pytest.mark.parametrize("process", ALL_PROCESSES, ids=IDS)
def test_moment_odes_of_sde_reproduce_affine_path(x64, process):
    """For x0 ~ N(m0, v0): dm/dt = f m and dv/dt = 2 f v + g^2 (Sarkka & Solin 2019, eq. 5.51)."""
    m0, v0 = 1.7, 0.3
    t0, t1 = 1e-3, 0.95 * float(process.t_max)

    def moments(t, y, args):
        mean, var = y
        f = process.drift_coefficient(t)
        return (f * mean, 2 * f * var + process.diffusion_squared(t))

    y0 = (process.alpha(t0) * m0, process.alpha(t0) ** 2 * v0 + process.sigma(t0) ** 2)
    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(moments),
        diffrax.Dopri8(),
        t0,
        t1,
        1e-3,
        y0,
        stepsize_controller=diffrax.PIDController(rtol=1e-11, atol=1e-12),
        max_steps=20000,
    )
    mean, var = solution.ys[0][-1], solution.ys[1][-1]
    np.testing.assert_allclose(mean, process.alpha(t1) * m0, rtol=1e-8)
    np.testing.assert_allclose(var, process.alpha(t1) ** 2 * v0 + process.sigma(t1) ** 2, rtol=1e-8)


@pytest.mark.parametrize("process", ALL_PROCESSES, ids=IDS)
def test_probability_flow_velocity_equals_conditional_expectation(x64, process):
    """f x - g^2 score / 2 == alpha' E[x0|x] + sigma' E[eps|x] (flow-matching marginal velocity)."""
    from diffusion_jax.analytic import GaussianMixture

    data = GaussianMixture.create(
        jnp.array([[1.0, -0.5], [-2.0, 0.3]]), variances=jnp.array([0.2, 0.5])
    )
    t = 0.4 * float(process.t_max)
    marginal = data.marginal(process, t)
    x = marginal.sample(jax.random.key(0), 6)
    score = marginal.score(x)
    alpha, sigma = process.alpha(t), process.sigma(t)
    x0_hat = data.denoise(x / alpha, sigma / alpha)
    eps_hat = (x - alpha * x0_hat) / sigma
    expected = process.d_alpha(t) * x0_hat + process.d_sigma(t) * eps_hat
    np.testing.assert_allclose(
        process.probability_flow_velocity(x, t, score), expected, rtol=1e-9, atol=1e-10
    )
    # The reverse SDE drift differs from the forward drift by g^2 score.
    forward, g = process.sde(x, t)
    np.testing.assert_allclose(
        process.reverse_sde_drift(x, t, score), forward - g**2 * score, rtol=1e-12
    )


def test_prior_log_prob_and_samples(x64):
    process = P.VE()
    x = process.prior_sample(jax.random.key(1), (4000, 3), dtype=jnp.float64)
    np.testing.assert_allclose(jnp.std(x), 50.0, rtol=0.03)
    expected = stats.norm(scale=50.0).logpdf(np.asarray(x)).sum(axis=1)
    np.testing.assert_allclose(process.prior_log_prob(x), expected, rtol=1e-10)


def test_processes_are_pytrees_that_jit_and_differentiate(x64):
    def alpha_at(process, t):
        return process.alpha(t)

    value = jax.jit(alpha_at)(P.VP(), 0.5)
    np.testing.assert_allclose(value, P.VP().alpha(0.5))
    grad = jax.grad(lambda bmax: P.VP(beta_max=bmax).alpha(1.0))(20.0)
    np.testing.assert_allclose(grad, -0.25 * P.VP().alpha(1.0), rtol=1e-10)


def test_bad_sigma_is_rejected():
    for bad in [-1.0, float("nan"), float("inf")]:
        with pytest.raises(ValueError, match="sigma"):
            P.check_sigma(bad)
    with pytest.raises(TypeError):
        P.check_sigma("large")


# -- float32 near the data end --------------------------------------------------------------------

FLOAT32_PROCESSES = [
    P.VP(),
    P.VP(beta_min=0.0, beta_max=20.0),
    P.SubVP(),
    P.VE(),
    P.EDM(),
    P.Cosine(),
    P.RectifiedFlow(),
    P.TrigFlow(),
    P.TrigFlow(sigma_data=0.5),
]
FLOAT32_IDS = [f"{type(p).__name__}{i}" for i, p in enumerate(FLOAT32_PROCESSES)]


@pytest.mark.parametrize("process", FLOAT32_PROCESSES, ids=FLOAT32_IDS)
def test_float32_ve_sigma_round_trip_down_to_1e_minus_5(process):
    """sigma -> t -> sigma in float32 holds to ~1e-6 relative for sigma in [1e-5, 1]; before the
    cancellation-free forms Cosine was off 0.8% at 2e-3, 9% at 1e-3 and gave 0 at <= 1e-4, VP 13%
    and SubVP 0.1% at 1e-5."""
    sigma = jnp.geomspace(1e-5, 1.0, 16, dtype=jnp.float32)
    t = process.t_of_ve_sigma(sigma)
    assert t.dtype == jnp.float32
    np.testing.assert_allclose(process.ve_sigma(t), sigma, rtol=1e-6)
    # The times themselves agree with the float64 evaluation (not merely invert each other).
    with jax.enable_x64(True):
        t64 = process.t_of_ve_sigma(jnp.asarray(np.asarray(sigma), jnp.float64))
    # VE's t crosses 0 at sigma_min, where only absolute accuracy in t is meaningful.
    np.testing.assert_allclose(t, t64, rtol=2e-6, atol=1e-7 if isinstance(process, P.VE) else 0)


def test_float32_cosine_sigma_accurate_near_data():
    """Cosine.sigma(t) for small t: sqrt(1 - alpha^2) lost every digit in float32 (0 at t = 1e-5)."""
    process = P.Cosine()
    t = jnp.geomspace(1e-6, 0.5, 12, dtype=jnp.float32)
    with jax.enable_x64(True):
        t64 = jnp.asarray(np.asarray(t), jnp.float64)
        theta = 0.5 * np.pi * (np.asarray(t64) + 0.008) / 1.008
        theta0 = 0.5 * np.pi * 0.008 / 1.008
        exact = np.sqrt(1.0 - (np.cos(theta) / np.cos(theta0)) ** 2)
    np.testing.assert_allclose(process.sigma(t), exact, rtol=2e-6)
    np.testing.assert_allclose(process.ve_sigma(t), exact / (np.cos(theta) / np.cos(theta0)),
                               rtol=2e-6)


def test_cosine_velocity_process_denoiser_is_finite_and_exact_in_float32():
    """ProcessDenoiser(velocity net, Cosine) on N(0, v) data equals the exact VE-frame denoiser
    v x / (v + s^2) in float32 down to s = 1e-5 (it returned NaN for s <= 1e-4)."""
    from diffusion_jax.denoisers import ProcessDenoiser, from_x0_epsilon

    process, variance = P.Cosine(), 0.7

    def exact_velocity_network(x_t, t, cond=None):
        alpha, sigma = process.alpha(t)[:, None], process.sigma(t)[:, None]
        norm = alpha**2 * variance + sigma**2
        x0, eps = alpha * variance * x_t / norm, sigma * x_t / norm
        return from_x0_epsilon(x0, eps, "velocity", process.alpha(t), process.sigma(t),
                               process.d_alpha(t), process.d_sigma(t))

    denoiser = ProcessDenoiser(exact_velocity_network, process, "velocity")
    sigma = jnp.geomspace(1e-5, 10.0, 13, dtype=jnp.float32)
    x = jax.random.normal(jax.random.key(0), (13, 3), jnp.float32)
    out = denoiser(x, sigma)
    assert out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out)))
    expected = variance * x / (variance + sigma[:, None] ** 2)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


# -- discrete-time (DDPM) schedules ------------------------------------------------------------


def test_cosine_equals_squaredcos_cap_v2_at_shifted_indices(x64):
    """Cosine() is improved DDPM's discrete cosine schedule at t = (i + 1) / N for i < N - 1 (the
    last beta is capped at 0.999); DiscreteVP of that schedule reproduces every entry, the last too."""
    num = 1000
    alpha_bar = np.cumprod(1.0 - P.squaredcos_cap_v2_betas(num))
    t = (np.arange(num) + 1.0) / num
    np.testing.assert_allclose(P.Cosine().alpha(t[:-1]) ** 2, alpha_bar[:-1], rtol=1e-11)
    assert float(P.Cosine().alpha(1.0)) == pytest.approx(0.0, abs=1e-15) and alpha_bar[-1] > 1e-9
    discrete = P.DiscreteVP.from_schedule("squaredcos_cap_v2", num)
    np.testing.assert_allclose(discrete.alpha(discrete.t_of_index(np.arange(num))) ** 2,
                               alpha_bar, rtol=1e-12)


def test_vp_is_only_the_continuous_limit_of_the_linear_ddpm_schedule(x64):
    """VP(0.1, 20) vs DDPM's linear 1e-4..0.02 (N = 1000): cumulative alpha^2 differ by 7.0% at
    t = 1 (5.0% at t = 0.9); DiscreteVP matches the table to round-off."""
    num = 1000
    alpha_bar = np.cumprod(1.0 - P.linear_betas(num, 1e-4, 0.02))
    t = (np.arange(num) + 1.0) / num
    relative = np.abs(np.asarray(P.VP(0.1, 20.0).alpha(t)) ** 2 / alpha_bar - 1.0)
    assert relative[-1] == pytest.approx(0.0701, abs=5e-4) and relative.argmax() == num - 1
    assert relative[899] == pytest.approx(0.0499, abs=5e-4)
    discrete = P.DiscreteVP.from_schedule("linear", num)
    np.testing.assert_allclose(discrete.alpha(t) ** 2, alpha_bar, rtol=1e-12)


def test_discrete_vp_grid_inverse_interpolation_and_index_helpers(x64):
    betas = P.scaled_linear_betas(50)
    process = P.DiscreteVP.from_betas(betas)
    index = np.arange(50)
    t = process.t_of_index(index)
    np.testing.assert_allclose(t, (index + 1) / 50, rtol=1e-15)
    np.testing.assert_allclose(process.index_of_t(t), index, atol=1e-12)
    alpha_bar = np.cumprod(1.0 - betas)
    # t_of_ve_sigma is exact at the grid points (VE-frame sigma_i = sqrt(1/alpha_bar_i - 1)).
    np.testing.assert_allclose(process.t_of_ve_sigma(np.sqrt(1.0 / alpha_bar - 1.0)), t,
                               rtol=1e-12)
    # Between grid points log alpha is linear in t, hence alpha monotone and geometric in between.
    middle = t[:-1] + 0.5 / 50
    np.testing.assert_allclose(process.alpha(middle) ** 2, np.sqrt(alpha_bar[:-1] * alpha_bar[1:]),
                               rtol=1e-12)
    dense = jnp.linspace(0.0, 1.0, 2001)
    assert bool(jnp.all(jnp.diff(process.alpha(dense)) < 0))
    assert float(process.alpha(0.0)) == 1.0 and float(process.sigma(0.0)) == 0.0
    with pytest.raises(ValueError, match="unknown DDPM schedule"):
        P.DiscreteVP.from_schedule("cosine")
    with pytest.raises(ValueError, match="beta"):
        P.DiscreteVP.from_betas([0.1, 1.0])


def test_discrete_vp_float32_and_process_denoiser_under_jit():
    """A float32 DiscreteVP round-trips and works as ProcessDenoiser's process inside jit with an
    epsilon network taking the fractional DDPM index (the exact epsilon of N(0, v) data)."""
    from diffusion_jax.denoisers import ProcessDenoiser

    process = P.DiscreteVP.from_schedule("linear")
    assert process.log_alpha_bar.dtype == jnp.float32
    sigma = jnp.geomspace(1e-2, 100.0, 9, dtype=jnp.float32)
    np.testing.assert_allclose(process.ve_sigma(process.t_of_ve_sigma(sigma)), sigma, rtol=2e-6)
    variance = 0.5

    def epsilon_network(x_t, index, cond=None):
        t = (index + 1.0) / process.num_steps
        alpha, sigma_t = process.alpha(t)[:, None], process.sigma(t)[:, None]
        return sigma_t * x_t / (alpha**2 * variance + sigma_t**2)

    x = jax.random.normal(jax.random.key(1), (9, 2))
    # The DDPM index is the network's time input: wrap it (time_scale is only a multiplier).
    def network(x_t, t, cond=None):
        return epsilon_network(x_t, process.index_of_t(t), cond)

    out = jax.jit(lambda p, x, s: ProcessDenoiser(network, p, "epsilon")(x, s))(process, x, sigma)
    np.testing.assert_allclose(out, variance * x / (variance + sigma[:, None] ** 2), rtol=2e-5,
                               atol=1e-6)
