"""Empirical order of convergence of the deterministic samplers (x64).

Endpoints: a single Gaussian has the closed-form probability-flow map (``gaussian_flow_map``);
a Gaussian mixture uses a Dopri8 reference at rtol = atol = 1e-11. Every sampler ends with the
step to 0 that returns ``D(x, sigma_min)``, so the reference endpoint is ``D(x*(sigma_min),
sigma_min)`` and the error measures the integration from ``sigma_max`` to ``sigma_min``.
The grid is uniform in log sigma from 10 to 0.01, where N = 16..64 is in the asymptotic regime.
"""

import functools

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import samplers
from diffusion_jax.analytic import GaussianMixture, gaussian_flow_map
from diffusion_jax.denoisers import probability_flow_derivative

SIGMA_MAX, SIGMA_MIN = 10.0, 0.01
STEPS = (16, 32, 64)

# name: (sampler, options, lower bound of the fitted order, upper bound)
CASES = {
    "euler": (samplers.euler, {}, 0.8, 1.3),
    "heun": (samplers.heun, {}, 1.7, 2.6),
    "dpm_solver_2": (samplers.dpm_solver_2, {}, 1.7, 2.6),
    "dpm_solver_3": (samplers.dpm_solver_3, {}, 2.5, 4.0),
    "dpm_solver_3_noise": (samplers.dpm_solver_3, {"data_prediction": False}, 2.5, 4.0),
    "dpmpp_2m": (samplers.dpmpp_2m, {}, 1.7, 2.6),
    "dpmpp_3m": (samplers.dpmpp_3m, {"singlestep_warmup": True}, 2.7, 4.0),
    "unipc_1_bh1": (samplers.unipc, {"order": 1, "variant": "bh1"}, 1.7, 2.6),
    "unipc_2_bh2": (samplers.unipc, {"order": 2, "variant": "bh2"}, 2.5, 4.0),
    "unipc_3_bh2": (samplers.unipc, {"order": 3, "variant": "bh2"}, 3.2, 5.5),
    "deis_3": (samplers.deis, {"order": 3, "singlestep_warmup": True}, 2.7, 4.5),
    "lms_3": (samplers.lms, {"order": 3}, 2.5, 4.0),
    "ipndm": (samplers.ipndm, {}, 1.5, 4.0),  # fixed AB coefficients: order drops on a log grid
}
SINGLE_GAUSSIAN_CASES = {
    "euler": CASES["euler"],
    "heun": CASES["heun"],
    "dpm_solver_2_noise": (samplers.dpm_solver_2, {"data_prediction": False}, 1.7, 2.6),
    "dpmpp_2m": CASES["dpmpp_2m"],
}


def _mixture():
    means = jnp.array([[1.0, -1.0], [-1.5, 0.5], [0.2, 1.5]])
    variances = jnp.array([[0.3, 0.2], [0.1, 0.4], [0.2, 0.2]])
    return GaussianMixture.create(means, variances=variances, weights=jnp.array([0.5, 0.3, 0.2]))


def _single_gaussian():
    return GaussianMixture.create(jnp.array([[0.5, -1.0, 0.3]]), variances=jnp.array([[0.3, 1.5, 0.8]]))


@functools.lru_cache(maxsize=None)
def _testbed(kind):
    """``(denoiser, noise, exact endpoint)`` for ``kind`` in {"mixture", "single"} (x64)."""
    with jax.enable_x64(True):
        if kind == "single":
            gaussian = _single_gaussian()
            noise = jax.random.normal(jax.random.key(0), (6, 3), jnp.float64)
            x_min = gaussian_flow_map(gaussian, noise * SIGMA_MAX, SIGMA_MAX, SIGMA_MIN)
            return gaussian, noise, gaussian(x_min, SIGMA_MIN)
        mixture = _mixture()
        noise = jax.random.normal(jax.random.key(1), (6, 2), jnp.float64)
        term = diffrax.ODETerm(lambda s, x, args: probability_flow_derivative(args, x, s))
        solution = diffrax.diffeqsolve(
            term, diffrax.Dopri8(), SIGMA_MAX, SIGMA_MIN, -0.01, noise * SIGMA_MAX, args=mixture,
            stepsize_controller=diffrax.PIDController(rtol=1e-11, atol=1e-11), max_steps=20000,
        )
        return mixture, noise, mixture(solution.ys[-1], SIGMA_MIN)


def _fitted_order(sampler, options, kind):
    denoiser, noise, exact = _testbed(kind)
    run = jax.jit(functools.partial(sampler, **options))
    errors = []
    for num_steps in STEPS:
        sigmas = samplers.log_uniform_sigmas(num_steps, SIGMA_MIN, SIGMA_MAX)
        x0 = run(denoiser, noise, sigmas)
        errors.append(float(jnp.sqrt(jnp.mean((x0 - exact) ** 2))))
    slope = -np.polyfit(np.log(STEPS), np.log(errors), 1)[0]
    return slope, errors


@pytest.mark.parametrize("name", sorted(CASES))
def test_order_on_gaussian_mixture(x64, name):
    sampler, options, low, high = CASES[name]
    slope, errors = _fitted_order(sampler, options, "mixture")
    assert errors[-1] < errors[0], errors
    assert low <= slope <= high, f"{name}: fitted order {slope:.2f}, errors {errors}"


@pytest.mark.parametrize("name", sorted(SINGLE_GAUSSIAN_CASES))
def test_order_on_single_gaussian(x64, name):
    sampler, options, low, high = SINGLE_GAUSSIAN_CASES[name]
    slope, errors = _fitted_order(sampler, options, "single")
    assert low <= slope <= high, f"{name}: fitted order {slope:.2f}, errors {errors}"


def test_adaptive_solves_meet_their_tolerance(x64):
    gaussian, noise, exact = _testbed("single")
    for solver in (diffrax.Tsit5(), diffrax.Dopri5(), diffrax.Dopri8()):
        errors = []
        for tolerance in (1e-4, 1e-7):
            controller = diffrax.PIDController(rtol=tolerance, atol=tolerance)
            x0, nfe = samplers.solve_probability_flow(
                gaussian, noise, sigma_max=SIGMA_MAX, sigma_min=SIGMA_MIN, solver=solver,
                stepsize_controller=controller,
            )
            errors.append(float(jnp.max(jnp.abs(x0 - exact))))
            assert int(nfe) > 0
        assert errors[0] < 50 * 1e-4 and errors[1] < 50 * 1e-7, (solver, errors)
        assert errors[1] < errors[0]


def test_fixed_step_diffrax_heun_is_second_order(x64):
    gaussian, noise, exact = _testbed("single")
    errors = []
    for num_steps in (200, 400):
        x0, nfe = samplers.solve_probability_flow(
            gaussian, noise, sigma_max=SIGMA_MAX, sigma_min=SIGMA_MIN, solver=diffrax.Heun(),
            stepsize_controller=diffrax.ConstantStepSize(), num_steps=num_steps,
        )
        errors.append(float(jnp.max(jnp.abs(x0 - exact))))
        assert int(nfe) == 2 * num_steps + 1
    assert 1.7 < np.log2(errors[0] / errors[1]) < 2.5, errors
