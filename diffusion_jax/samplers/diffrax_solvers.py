"""Diffrax solvers for the VE probability-flow ODE and the VE reverse SDE.

The denoiser travels in Diffrax's ``args`` (never in a closure: a vector field that closes over
parameters breaks ``BacksolveAdjoint``, which differentiates with respect to ``args`` only).
The vector field is :func:`diffusion_jax.denoisers.probability_flow_derivative`.
"""

from __future__ import annotations

import diffrax
import jax
import jax.numpy as jnp
import lineax

from diffusion_jax.denoisers import probability_flow_derivative
from diffusion_jax.samplers._core import check_key, denoise

__all__ = ["solve_probability_flow", "solve_reverse_sde", "evaluations_per_step"]


def _check_levels(sigma_max, sigma_min):
    try:
        high, low = float(sigma_max), float(sigma_min)
    except (TypeError, ValueError):
        return
    if not 0.0 < low < high < float("inf"):
        raise ValueError(f"need 0 < sigma_min < sigma_max < inf; got {low}, {high}")


def _check_noise(noise):
    noise = jnp.asarray(noise)
    if noise.ndim < 2 or not jnp.issubdtype(noise.dtype, jnp.floating):
        raise ValueError(
            f"noise must be a floating array (batch, ...); got {noise.dtype}{noise.shape}"
        )
    return noise


def evaluations_per_step(solver):
    """Vector-field evaluations per (accepted or rejected) step of a Diffrax solver: the number
    of Runge-Kutta stages, less one for first-same-as-last tableaus; 1 for Euler."""
    tableau = getattr(solver, "tableau", None)
    if tableau is None:
        return 1
    return tableau.num_stages - (1 if tableau.fsal else 0)


def _probability_flow_field(sigma, x, args):
    denoiser, cond = args
    return probability_flow_derivative(denoiser, x, sigma, cond)


def solve_probability_flow(
    denoiser,
    noise,
    *,
    sigma_max=80.0,
    sigma_min=0.002,
    cond=None,
    solver=None,
    stepsize_controller=None,
    adjoint=None,
    max_steps=4096,
    dt0=None,
    num_steps=None,
    denoise_final=True,
):
    """Integrate ``dx/dsigma = (x - D(x, sigma)) / sigma`` (Karras et al. 2022, eq. 4) from
    ``sigma_max`` to ``sigma_min`` with Diffrax (Kidger 2021), then (``denoise_final``) return
    ``D(x, sigma_min)`` (Song et al. 2021 "denoise at the end"; one more evaluation).

    Defaults: ``Tsit5`` with ``PIDController(rtol=1e-5, atol=1e-5)`` and
    ``RecursiveCheckpointAdjoint``. For a fixed-step solve pass ``stepsize_controller=
    diffrax.ConstantStepSize()`` with ``num_steps`` (uniform in sigma) or ``dt0``.

    Returns ``(x0, nfe)``: ``nfe = num_steps * evaluations_per_step(solver) + 1`` (+1 with
    ``denoise_final``); for an adaptive solve the initial step-size selection adds 1 more.
    """
    noise = _check_noise(noise)
    _check_levels(sigma_max, sigma_min)
    solver = diffrax.Tsit5() if solver is None else solver
    if stepsize_controller is None:
        stepsize_controller = diffrax.PIDController(rtol=1e-5, atol=1e-5)
    adjoint = diffrax.RecursiveCheckpointAdjoint() if adjoint is None else adjoint
    adaptive = not isinstance(stepsize_controller, diffrax.ConstantStepSize)
    if not adaptive and dt0 is None:
        if num_steps is None:
            raise ValueError("a constant step size needs num_steps or dt0")
        dt0 = -(sigma_max - sigma_min) / num_steps
    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(_probability_flow_field),
        solver,
        t0=sigma_max,
        t1=sigma_min,
        dt0=dt0,
        y0=noise * sigma_max,
        args=(denoiser, cond),
        stepsize_controller=stepsize_controller,
        adjoint=adjoint,
        max_steps=max_steps,
        saveat=diffrax.SaveAt(t1=True),
    )
    x = solution.ys[-1]
    steps = solution.stats["num_steps"]
    nfe = steps * evaluations_per_step(solver) + 1 + (1 if adaptive and dt0 is None else 0)
    if denoise_final:
        x = denoise(denoiser, x, sigma_min, cond)
        nfe = nfe + 1
    return x, nfe


def _reverse_drift(u, x, args):
    denoiser, cond = args
    sigma = -u
    return 2.0 * (denoise(denoiser, x, sigma, cond) - x) / sigma


def _reverse_diffusion(u, x, args):
    del args
    return lineax.DiagonalLinearOperator(jnp.sqrt(-2.0 * u) * jnp.ones_like(x))


def solve_reverse_sde(
    denoiser,
    noise,
    *,
    key=None,
    sigma_max=80.0,
    sigma_min=0.002,
    cond=None,
    num_steps=256,
    solver=None,
    brownian_tolerance=None,
    adjoint=None,
    denoise_final=True,
):
    """Solve the VE reverse SDE ``dx = 2 (D - x) / sigma du + sqrt(2 sigma) dW_u`` in forward time
    ``u = -sigma`` (Song et al. 2021, eq. 6 and 9; forward time avoids diffrax issue 598) with a
    ``VirtualBrownianTree`` (Kidger et al. 2021, "Efficient and accurate gradients for neural
    SDEs"), ``num_steps`` uniform steps, then ``D(x, sigma_min)`` if ``denoise_final``.
    ``solver`` defaults to ``diffrax.Euler()`` (Euler-Maruyama).

    Returns ``(x0, nfe)`` with ``nfe = num_steps * evaluations_per_step(solver) (+1)``.
    """
    check_key(key, "solve_reverse_sde")
    noise = _check_noise(noise)
    _check_levels(sigma_max, sigma_min)
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int; got {num_steps!r}")
    solver = diffrax.Euler() if solver is None else solver
    adjoint = diffrax.RecursiveCheckpointAdjoint() if adjoint is None else adjoint
    u0, u1 = -sigma_max, -sigma_min
    dt = (sigma_max - sigma_min) / num_steps
    tolerance = dt / 8.0 if brownian_tolerance is None else brownian_tolerance
    brownian = diffrax.VirtualBrownianTree(
        u0, u1, tol=tolerance, shape=jax.ShapeDtypeStruct(noise.shape, noise.dtype), key=key
    )
    terms = diffrax.MultiTerm(
        diffrax.ODETerm(_reverse_drift), diffrax.ControlTerm(_reverse_diffusion, brownian)
    )
    solution = diffrax.diffeqsolve(
        terms,
        solver,
        t0=u0,
        t1=u1,
        dt0=dt,
        y0=noise * sigma_max,
        args=(denoiser, cond),
        adjoint=adjoint,
        max_steps=num_steps + 1,
        saveat=diffrax.SaveAt(t1=True),
    )
    x = solution.ys[-1]
    nfe = solution.stats["num_steps"] * evaluations_per_step(solver)
    if denoise_final:
        x = denoise(denoiser, x, sigma_min, cond)
        nfe = nfe + 1
    return x, nfe
