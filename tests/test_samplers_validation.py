"""Bad grids, shapes, keys and options give clear ValueErrors; grids match published values."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import samplers
from diffusion_jax.analytic import GaussianMixture
from diffusion_jax.processes import VP

MIXTURE = GaussianMixture.create(jnp.array([[1.0, -1.0], [-1.5, 0.5]]), variances=0.2)
NOISE = jnp.ones((3, 2))


@pytest.mark.parametrize(
    "sigmas, message",
    [
        (jnp.array([5.0, 1.0, 0.1]), "end in 0"),
        (jnp.array([5.0, 6.0, 0.0]), "descending"),
        (jnp.array([5.0, 1.0, 1.0, 0.0]), "descending"),
        (jnp.array([5.0, jnp.nan, 0.0]), "finite"),
        (jnp.array([[5.0, 0.0]]), "1-D"),
        (jnp.array([0.0]), "at least 2"),
    ],
)
def test_bad_grids_are_rejected(sigmas, message):
    for sampler in (samplers.euler, samplers.dpmpp_2m, samplers.unipc):
        with pytest.raises(ValueError, match=message):
            sampler(MIXTURE, NOISE, sigmas)


def test_bad_shapes_keys_and_options_are_rejected():
    sigmas = samplers.karras_sigmas(3, 0.1, 5.0)
    with pytest.raises(ValueError, match="batch axis"):
        samplers.euler(MIXTURE, jnp.ones((2,)), sigmas)
    with pytest.raises(ValueError, match="floating"):
        samplers.euler(MIXTURE, jnp.ones((3, 2), jnp.int32), sigmas)
    with pytest.raises(ValueError, match="last axis"):
        samplers.euler(MIXTURE, jnp.ones((3, 5)), sigmas)
    with pytest.raises(ValueError, match="key"):
        samplers.ancestral(MIXTURE, NOISE, sigmas)
    with pytest.raises(ValueError, match="typed key"):
        samplers.ancestral(MIXTURE, NOISE, sigmas, key=jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="order"):
        samplers.unipc(MIXTURE, NOISE, sigmas, order=4)
    with pytest.raises(ValueError, match="variant"):
        samplers.unipc(MIXTURE, NOISE, sigmas, variant="bh3")
    with pytest.raises(ValueError, match="order"):
        samplers.deis(MIXTURE, NOISE, sigmas, order=0)
    with pytest.raises(ValueError, match="num_steps"):
        samplers.karras_sigmas(0)
    with pytest.raises(ValueError, match="sigma_min"):
        samplers.karras_sigmas(5, 10.0, 1.0)
    with pytest.raises(ValueError, match="sigma_min"):
        samplers.solve_probability_flow(MIXTURE, NOISE, sigma_max=1.0, sigma_min=2.0)
    with pytest.raises(ValueError, match="shape"):
        samplers.euler(lambda x, s, c: x[:, :1], NOISE, sigmas)


def test_traced_grids_are_accepted_inside_jit():
    run = jax.jit(lambda sigmas: samplers.euler(MIXTURE, NOISE, sigmas))
    assert run(samplers.karras_sigmas(3, 0.1, 5.0)).shape == NOISE.shape


def test_karras_grid_matches_edm_constants():
    expected = [80, 57.586, 40.786, 28.375, 19.353, 12.910, 8.401, 5.315, 3.257, 1.923, 1.088,
                0.585, 0.296, 0.140, 0.060, 0.023, 0.0075, 0.002, 0.0]
    np.testing.assert_allclose(samplers.karras_sigmas(18), expected, rtol=1e-3, atol=6e-4)


def test_log_uniform_grid_has_constant_ratio_and_is_the_rho_limit():
    sigmas = samplers.log_uniform_sigmas(6, 0.01, 10.0)
    ratios = np.asarray(sigmas[1:-1] / sigmas[:-2])
    np.testing.assert_allclose(ratios, 1000.0 ** (-1 / 5), rtol=1e-5)
    np.testing.assert_allclose(samplers.karras_sigmas(6, 0.01, 10.0, rho=1e4), sigmas, rtol=1e-3)


def test_time_grids_and_edm_vp_discretisation(x64):
    sigmas = samplers.edm_vp_sigmas(18)
    np.testing.assert_allclose(sigmas[0], 152.17, rtol=1e-4)
    np.testing.assert_allclose(sigmas[-2], 0.010486, rtol=1e-3)
    times = np.linspace(1.0, 1e-3, 18)
    np.testing.assert_allclose(sigmas[:-1], VP().ve_sigma(times), rtol=1e-12)
    quadratic = samplers.time_quadratic_sigmas(VP(), 5, t_min=0.01)
    np.testing.assert_allclose(quadratic[:-1], VP().ve_sigma(np.linspace(1.0, 0.1, 5) ** 2))
    uniform = samplers.time_uniform_sigmas(VP(), 5, t_min=0.01)
    np.testing.assert_allclose(uniform[:-1], VP().ve_sigma(np.linspace(1.0, 0.01, 5)))
    for grid in (sigmas, quadratic, uniform):
        assert grid[-1] == 0.0 and bool(jnp.all(jnp.diff(grid) < 0))


NAMES = [info.name for info in samplers.SAMPLERS]


def _key_for(info):
    return {"key": jax.random.key(0)} if info.stochastic else {}


@pytest.mark.parametrize("name", NAMES)
def test_wrong_denoiser_shape_is_rejected_by_every_sampler(name):
    # lms and ipndm used to broadcast a (batch, 1) output against x silently
    info = samplers.get(name)
    sigmas = samplers.karras_sigmas(3, 0.1, 5.0)
    with pytest.raises(ValueError, match=r"denoiser returned shape \(3, 1\)"):
        info.fn(lambda x, s, c: x[:, :1], NOISE, sigmas, **_key_for(info))


@pytest.mark.parametrize("name", NAMES)
def test_subnormal_grid_is_rejected_by_every_sampler(name):
    info = samplers.get(name)
    with pytest.raises(ValueError, match="smallest normal"):
        info.fn(MIXTURE, NOISE, jnp.array([1e-45, 0.0]), **_key_for(info))


NUMERIC_OPTIONS = [
    (info.name, option)
    for info in samplers.SAMPLERS
    for option in info.options
    if option in ("eta", "s_churn", "s_noise", "s_tmin", "s_tmax", "snr")
]


@pytest.mark.parametrize("name, option", NUMERIC_OPTIONS)
@pytest.mark.parametrize("value", [-0.5, float("nan")])
def test_negative_or_nan_options_are_rejected(name, option, value):
    info = samplers.get(name)
    sigmas = samplers.karras_sigmas(3, 0.1, 5.0)
    with pytest.raises(ValueError, match=f"{name}: {option} must be a finite number >= 0"):
        info.fn(MIXTURE, NOISE, sigmas, key=jax.random.key(0), **{option: value})


def test_bad_grid_arguments_are_rejected():
    for rho in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="rho must be a finite number > 0"):
            samplers.karras_sigmas(5, rho=rho)
    with pytest.raises(ValueError, match="sigma_min"):
        samplers.karras_sigmas(5, sigma_min=0.0)
    with pytest.raises(ValueError, match="num_steps"):
        samplers.karras_sigmas(2.5)


def test_pre_scaled_noise_warns():
    sigmas = samplers.karras_sigmas(3, 0.1, 80.0)
    noise = jax.random.normal(jax.random.key(0), (16, 2))
    with pytest.warns(UserWarning, match="UNIT Gaussian"):
        samplers.euler(MIXTURE, noise * 80.0, sigmas)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        samplers.euler(MIXTURE, noise, sigmas)


@pytest.mark.parametrize(
    "sigmas, message",
    [
        (jnp.array([5.0, 0.0, 1.0, 0.0]), "a 0 before its end, at index 1"),
        (jnp.array([5.0, 6.0, 1.0, 0.0]), "strictly descending: sigmas\\[0\\] = 5.0 then"),
        (jnp.array([5.0, jnp.nan, 1.0, 0.0]), "finite: sigmas\\[1\\] = nan"),
        (jnp.array([5.0, 2.0, 1.0, 0.5]), "end in 0"),
        # XLA on CPU flushes the subnormal to 0 inside jit, so it is reported as an inner 0
        (jnp.array([5.0, 2.0, 1e-45, 0.0]), "a 0 before its end, at index 2|normal numbers"),
    ],
)
def test_checked_sampler_reports_bad_traced_grids_inside_jit(sigmas, message):
    run = jax.jit(samplers.checked(samplers.dpmpp_2m))
    error, x0 = run(MIXTURE, NOISE, sigmas)
    with pytest.raises(Exception, match=message):
        error.throw()
    error, x0 = run(MIXTURE, NOISE, samplers.karras_sigmas(3, 0.1, 5.0))
    error.throw()  # a good grid passes
    expected = samplers.dpmpp_2m(MIXTURE, NOISE, samplers.karras_sigmas(3, 0.1, 5.0))
    np.testing.assert_allclose(x0, expected, rtol=1e-6)


def test_checked_sampler_reports_traced_options():
    run = jax.jit(
        lambda eta: samplers.checked(samplers.ddim)(
            MIXTURE, NOISE, samplers.karras_sigmas(3, 0.1, 5.0), key=jax.random.key(0), eta=eta
        )
    )
    error, _ = run(-1.0)
    with pytest.raises(Exception, match="eta must be >= 0 and not NaN"):
        error.throw()
    error, _ = run(0.5)
    error.throw()
