"""Bad grids, shapes, keys and options give clear ValueErrors; grids match published values."""

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
