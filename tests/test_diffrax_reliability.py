"""Issue 13 regressions in the Diffrax solvers and the likelihood: counted evaluations, a denoiser
of the wrong shape or returning NaN, bad options, and the reverse SDE's default grid."""

import functools

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import samplers
from diffusion_jax.analytic import GaussianMixture
from diffusion_jax.likelihood import bits_per_dim, log_likelihood

CALLS = [0]


def _count():
    CALLS[0] += 1


def _counted(denoiser):
    def counted(x, sigma, cond=None):
        jax.debug.callback(_count)
        return denoiser(x, sigma, cond)

    return counted


def _gaussian():
    return GaussianMixture.create(np.array([[1.0, -0.5]]), variances=np.array([0.25]))


NOISE = np.array([[0.5, -1.2], [0.3, 0.8], [-1.0, 0.1]])


@pytest.mark.parametrize(
    "solver, controller, options",
    [
        (diffrax.Tsit5(), diffrax.PIDController(rtol=1e-6, atol=1e-6), {}),
        (diffrax.Dopri5(), diffrax.PIDController(rtol=1e-6, atol=1e-6), {"dt0": -0.5}),
        (diffrax.Heun(), diffrax.ConstantStepSize(), {"num_steps": 20}),
        (diffrax.Bosh3(), diffrax.PIDController(rtol=1e-5, atol=1e-5), {}),
    ],
    ids=["tsit5_adaptive", "dopri5_dt0", "heun_fixed", "bosh3_adaptive"],
)
def test_probability_flow_reports_the_evaluations_it_makes(x64, solver, controller, options):
    """Adaptive solves without ``dt0`` used to report one evaluation more than they made."""
    CALLS[0] = 0
    _, nfe = samplers.solve_probability_flow(
        _counted(_gaussian()), NOISE, sigma_max=20.0, sigma_min=0.01, solver=solver,
        stepsize_controller=controller, **options,
    )
    jax.effects_barrier()
    assert int(nfe) == CALLS[0]


@pytest.mark.parametrize("solver", [diffrax.Euler(), diffrax.Heun()], ids=["euler", "heun"])
def test_reverse_sde_reports_the_evaluations_it_makes(solver):
    CALLS[0] = 0
    _, nfe = samplers.solve_reverse_sde(
        _counted(_gaussian()), NOISE, key=jax.random.key(0), sigma_max=5.0, sigma_min=0.05,
        num_steps=10, solver=solver,
    )
    jax.effects_barrier()
    assert int(nfe) == CALLS[0] == 10 * (2 if isinstance(solver, diffrax.Heun) else 1) + 1


def _nan_after(threshold):
    """A denoiser that returns NaN below noise level ``threshold``."""
    gaussian = _gaussian()

    def denoiser(x, sigma, cond=None):
        sigma_b = jnp.broadcast_to(sigma, x.shape[:1])[:, None]
        return jnp.where(sigma_b < threshold, jnp.nan, gaussian(x, sigma))

    return denoiser


def test_nan_denoiser_is_named_in_the_probability_flow():
    with pytest.raises(Exception, match="denoiser returned NaN or inf"):
        x0, _ = samplers.solve_probability_flow(
            _nan_after(1.0), NOISE, sigma_max=5.0, sigma_min=0.05
        )
        jax.block_until_ready(x0)


def test_nan_denoiser_is_named_in_the_reverse_sde():
    with pytest.raises(Exception, match="denoiser returned NaN or inf"):
        x0, _ = samplers.solve_reverse_sde(
            _nan_after(1.0), NOISE, key=jax.random.key(0), sigma_max=5.0, sigma_min=0.05,
            num_steps=8,
        )
        jax.block_until_ready(x0)


def test_nan_denoiser_is_named_in_the_likelihood():
    """It used to surface as Diffrax's "maximum number of steps"."""
    with pytest.raises(Exception, match="denoiser returned NaN or inf"):
        log_p, _ = log_likelihood(
            _nan_after(1.0), NOISE, sigma_min=0.05, sigma_max=5.0, divergence="exact"
        )
        jax.block_until_ready(log_p)


def test_wrong_output_shape_is_refused_by_the_likelihood():
    """A ``(batch, 1)`` output used to broadcast silently against ``(batch, 2)``."""
    gaussian = _gaussian()

    def one_column(x, sigma, cond=None):
        return gaussian(x, sigma)[:, :1]

    with pytest.raises(ValueError, match="denoiser returned shape"):
        log_likelihood(one_column, NOISE, sigma_min=0.05, sigma_max=5.0, divergence="exact")
    with pytest.raises(ValueError, match="denoiser returned shape"):
        samplers.solve_probability_flow(one_column, NOISE, sigma_max=5.0, sigma_min=0.05)


def test_bad_options_get_one_line_errors():
    gaussian = _gaussian()
    x_int = np.array([[0, 255], [3, 4]], np.uint8)
    with pytest.raises(ValueError, match="bits_per_dim.*key"):
        bits_per_dim(gaussian, x_int, key=None, sigma_min=0.05, sigma_max=5.0)
    for name, value in (("rtol", float("nan")), ("atol", -1e-5)):
        with pytest.raises(ValueError, match=name):
            log_likelihood(
                gaussian, NOISE, sigma_min=0.05, sigma_max=5.0, divergence="exact",
                **{name: value},
            )
    with pytest.raises(ValueError, match="num_probes"):
        log_likelihood(
            gaussian, NOISE, sigma_min=0.05, sigma_max=5.0, key=jax.random.key(0), num_probes=-2
        )
    with pytest.raises(ValueError, match="max_steps"):
        log_likelihood(gaussian, NOISE, sigma_min=0.05, sigma_max=5.0, divergence="exact",
                       max_steps=0)
    with pytest.raises(ValueError, match="brownian_tolerance"):
        samplers.solve_reverse_sde(gaussian, NOISE, key=jax.random.key(0),
                                   brownian_tolerance=float("nan"))
    with pytest.raises(ValueError, match="rho"):
        samplers.solve_reverse_sde(gaussian, NOISE, key=jax.random.key(0), rho=-7.0)
    with pytest.raises(ValueError, match="sigmas"):
        samplers.solve_reverse_sde(gaussian, NOISE, key=jax.random.key(0),
                                   sigmas=np.array([1.0, 2.0, 0.5]))
    with pytest.raises(ValueError, match="cannot count"):
        samplers.solve_probability_flow(gaussian, NOISE, solver=diffrax.Kvaerno5())


def test_reverse_sde_default_grid_is_accurate_where_the_uniform_grid_is_not(x64):
    """On N(m, 0.25 I) with 256 steps from 80 to 0.002, the old uniform-in-sigma grid (``rho=1``:
    last step 0.31 -> 0.002) inflates the sample variance; the default Karras grid does not."""
    gaussian = _gaussian()
    noise = jax.random.normal(jax.random.key(0), (4000, 2), jnp.float64)

    @functools.partial(jax.jit, static_argnums=0)
    def variance_error(rho):
        x0, _ = samplers.solve_reverse_sde(gaussian, noise, key=jax.random.key(1), rho=rho)
        mean_error = jnp.max(jnp.abs(x0.mean(axis=0) - gaussian.means[0]))
        return jnp.max(jnp.abs(jnp.var(x0, axis=0) - 0.25)), mean_error

    standard_error = 0.25 * np.sqrt(2.0 / 4000)  # of a sample variance: 0.0056
    karras_var, karras_mean = variance_error(7.0)
    uniform_var, uniform_mean = variance_error(1.0)
    assert karras_var < 3 * standard_error and karras_mean < 0.03
    assert uniform_var > 5 * standard_error
