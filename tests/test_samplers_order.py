"""Empirical order of convergence of the deterministic samplers (x64), asserted against the
order each sampler declares in the registry (``samplers.SAMPLERS``: its defaults and variants).

Endpoints: a single Gaussian has the closed-form probability-flow map (``gaussian_flow_map``);
a Gaussian mixture uses a Dopri8 reference at rtol = atol = 1e-11. Every sampler ends with the
step to 0 that returns ``D(x, sigma_min)``, so the reference endpoint is ``D(x*(sigma_min),
sigma_min)`` and the error measures the integration from ``sigma_max`` to ``sigma_min``.
The declared order is measured on the single Gaussian on a grid uniform in log sigma from 1 to
0.01, where N = 32..128 is asymptotic for every sampler (the first steps have curvature, so a
first-order warm-up step shows); the mixture, from 10 to 0.01, is pre-asymptotic and checked
only from below.
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
ASYMPTOTIC_SIGMA_MAX = 1.0
ASYMPTOTIC_STEPS = (32, 64, 128)
ORDER_TOLERANCE = 0.2


def _ordered_cases():
    """``(id, info, options, order)`` for every default and variant with a declared order."""
    cases = []
    for info in samplers.SAMPLERS:
        settings = [({}, info.order)] + [(dict(v.options), v.order) for v in info.variants]
        for options, order in settings:
            if order is not None:
                label = ",".join(f"{k}={v}" for k, v in options.items())
                cases.append((f"{info.name}[{label}]", info, options, order))
    return cases


ORDERED = _ordered_cases()


def _with_key(info, options):
    return dict(options, key=jax.random.key(0)) if info.stochastic else options


def _mixture():
    means = jnp.array([[1.0, -1.0], [-1.5, 0.5], [0.2, 1.5]])
    variances = jnp.array([[0.3, 0.2], [0.1, 0.4], [0.2, 0.2]])
    return GaussianMixture.create(means, variances=variances, weights=jnp.array([0.5, 0.3, 0.2]))


def _single_gaussian():
    return GaussianMixture.create(jnp.array([[0.5, -1.0, 0.3]]), variances=jnp.array([[0.3, 1.5, 0.8]]))


@functools.lru_cache(maxsize=None)
def _testbed(kind, sigma_max=SIGMA_MAX):
    """``(denoiser, noise, exact endpoint)`` for ``kind`` in {"mixture", "single"} (x64)."""
    with jax.enable_x64(True):
        if kind == "single":
            gaussian = _single_gaussian()
            noise = jax.random.normal(jax.random.key(0), (6, 3), jnp.float64)
            x_min = gaussian_flow_map(gaussian, noise * sigma_max, sigma_max, SIGMA_MIN)
            return gaussian, noise, gaussian(x_min, SIGMA_MIN)
        mixture = _mixture()
        noise = jax.random.normal(jax.random.key(1), (6, 2), jnp.float64)
        term = diffrax.ODETerm(lambda s, x, args: probability_flow_derivative(args, x, s))
        solution = diffrax.diffeqsolve(
            term, diffrax.Dopri8(), SIGMA_MAX, SIGMA_MIN, -0.01, noise * SIGMA_MAX, args=mixture,
            stepsize_controller=diffrax.PIDController(rtol=1e-11, atol=1e-11), max_steps=20000,
        )
        return mixture, noise, mixture(solution.ys[-1], SIGMA_MIN)


def _fitted_order(sampler, options, kind, sigma_max=SIGMA_MAX, steps=STEPS):
    denoiser, noise, exact = _testbed(kind, sigma_max)
    run = jax.jit(functools.partial(sampler, **options))
    errors = []
    for num_steps in steps:
        sigmas = samplers.log_uniform_sigmas(num_steps, SIGMA_MIN, sigma_max)
        x0 = run(denoiser, noise, sigmas)
        errors.append(float(jnp.sqrt(jnp.mean((x0 - exact) ** 2))))
    slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    return slope, errors


@pytest.mark.parametrize("case", ORDERED, ids=[case[0] for case in ORDERED])
def test_measured_order_is_the_declared_order(x64, case):
    name, info, options, order = case
    slope, errors = _fitted_order(
        info.fn, _with_key(info, options), "single", ASYMPTOTIC_SIGMA_MAX, ASYMPTOTIC_STEPS
    )
    assert abs(slope - order) < ORDER_TOLERANCE, f"{name}: order {slope:.2f}, errors {errors}"


DEFAULTS = [info for info in samplers.SAMPLERS if info.order is not None]


@pytest.mark.parametrize("info", DEFAULTS, ids=[info.name for info in DEFAULTS])
def test_mixture_converges_at_least_at_the_declared_order(x64, info):
    slope, errors = _fitted_order(info.fn, _with_key(info, {}), "mixture")
    assert errors[-1] < errors[0], errors
    assert slope > info.order - 0.3, f"{info.name}: fitted order {slope:.2f}, errors {errors}"


def test_an_order_is_declared_exactly_when_the_defaults_are_deterministic():
    for info in samplers.SAMPLERS:
        assert (info.order is None) == info.needs_key, info.name


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
