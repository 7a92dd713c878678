"""Diffrax solvers for the VE probability-flow ODE and the VE reverse SDE.

The denoiser's array leaves travel in Diffrax's ``args`` (never in a closure: a vector field that
closes over parameters breaks ``BacksolveAdjoint``, which differentiates with respect to ``args``
only); its static rest (a plain function, a network graph) is held by the vector field, a
``jax.tree_util.Partial`` whose leaves are not arrays (:mod:`diffusion_jax.callables`). So the
denoiser may be a plain Python function or any pytree, and gradients reach its array leaves.

The vector fields are the library's single formulas: :func:`~diffusion_jax.denoisers.
probability_flow_derivative` for the ODE and :meth:`~diffusion_jax.processes.Process.
reverse_sde_drift` of the VE process (``EDM``: ``alpha = 1``, ``sigma = t``) for the SDE. Every
denoiser call is checked: a wrong output shape raises at trace time, NaN or infinity at run time
(instead of Diffrax's "maximum number of steps" after the step size collapses).
"""

from __future__ import annotations

import functools

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax
import numpy as np

from diffusion_jax.callables import merge, split
from diffusion_jax.denoisers import probability_flow_derivative, score_from_denoiser
from diffusion_jax.processes import EDM
from diffusion_jax.samplers._core import check_key, denoise
from diffusion_jax.samplers.grids import karras_sigmas

__all__ = [
    "solve_probability_flow",
    "solve_reverse_sde",
    "evaluations_per_step",
    "num_function_evaluations",
    "checked_denoise",
    "split_vector_field",
    "check_positive",
    "check_positive_int",
]

NONFINITE_DENOISER = "the denoiser returned NaN or inf"

# The VE frame as a process: alpha = 1, sigma(t) = t (Karras et al. 2022, eq. 4 with s = 1).
_VE_FRAME = EDM()


def _check_levels(sigma_max, sigma_min):
    try:
        high, low = float(sigma_max), float(sigma_min)
    except (TypeError, ValueError):
        return
    if not 0.0 < low < high < float("inf"):
        raise ValueError(f"need 0 < sigma_min < sigma_max < inf; got {low}, {high}")


def check_batched_float(x, name="noise"):
    """``x`` as an array; one-line error unless it is floating with a batch axis."""
    x = jnp.asarray(x)
    if x.ndim < 2 or not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"{name} must be a floating array with a batch axis (batch, ...); got "
                         f"{x.dtype}{x.shape}")
    return x


def check_positive(value, name):
    """Return ``value``; a concrete option must be a positive finite number (traced values pass)."""
    if value is None or isinstance(value, jax.core.Tracer):
        return value
    try:
        values = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        values = np.asarray(np.nan)
    if not (np.all(np.isfinite(values)) and np.all(values > 0.0)):
        raise ValueError(f"{name} must be a positive finite number; got {value!r}")
    return value


def check_positive_int(value, name):
    """Return ``value`` if it is a positive ``int`` (not a bool), else raise a ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int; got {value!r}")
    return value


def evaluations_per_step(solver):
    """Vector-field evaluations per (accepted or rejected) step of a Diffrax solver: the stages
    of its tableau, less one for first-same-as-last tableaus (Hairer, Norsett & Wanner, "Solving
    ODEs I", Sec. II.4-5); 1 for Euler, Euler-Heun and reversible Heun (drift evaluations)."""
    if isinstance(solver, (diffrax.Euler, diffrax.EulerHeun, diffrax.ReversibleHeun)):
        return 1
    if isinstance(solver, diffrax.AbstractERK):
        tableau = solver.tableau
        return tableau.num_stages - (1 if tableau.fsal else 0)
    if isinstance(solver, diffrax.AbstractSRK):
        return len(solver.tableau.b_sol)
    raise ValueError(
        f"cannot count the function evaluations of {type(solver).__name__}; use an explicit "
        "Runge-Kutta, stochastic Runge-Kutta, Euler, EulerHeun or ReversibleHeun solver"
    )


def num_function_evaluations(solver, num_steps):
    """Vector-field evaluations of a Diffrax solve with ``num_steps`` attempted steps (accepted
    plus rejected, ``solution.stats["num_steps"]``): ``num_steps * evaluations_per_step``, plus
    the one initial evaluation of first-same-as-last tableaus and of reversible Heun. Adaptive
    step-size selection without ``dt0`` adds none (it reuses that evaluation). Checked against
    denoisers that count their calls (tests/test_callables.py, tests/test_likelihood.py)."""
    initial = isinstance(solver, diffrax.ReversibleHeun) or (
        isinstance(solver, diffrax.AbstractERK) and solver.tableau.fsal
    )
    return num_steps * evaluations_per_step(solver) + (1 if initial else 0)


def checked_denoise(denoiser, x, sigma, cond=None):
    """``D(x, sigma, cond)`` with its shape checked (``ValueError``) and, at run time inside
    ``jit``, its finiteness (``eqx.error_if``: "the denoiser returned NaN or inf")."""
    x0_hat = denoise(denoiser, x, sigma, cond)
    return eqx.error_if(x0_hat, ~jnp.all(jnp.isfinite(x0_hat)), NONFINITE_DENOISER)


def split_vector_field(field, denoiser):
    """``(vector_field, arrays)`` for Diffrax: ``arrays`` (the denoiser's array leaves) go in
    ``args = (arrays, *rest)``; ``vector_field(t, y, args)`` is
    ``field(merge(arrays, static), t, y, *rest)`` with the static rest held by a
    ``jax.tree_util.Partial`` (compared by value, so Diffrax's jit cache still hits)."""
    arrays, static = split(denoiser)
    return jax.tree_util.Partial(_merged_field, field, static), arrays


def _merged_field(field, static, t, y, args):
    arrays, *rest = args
    return field(merge(arrays, static), t, y, *rest)


def _probability_flow_field(denoiser, sigma, x, cond):
    return probability_flow_derivative(
        functools.partial(checked_denoise, denoiser), x, sigma, cond
    )


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

    ``denoiser`` is a plain function or a pytree (gradients reach its array leaves); ``noise``
    is unit Gaussian (scaled by ``sigma_max`` here). Defaults: ``Tsit5`` with
    ``PIDController(rtol=1e-5, atol=1e-5)`` and ``RecursiveCheckpointAdjoint``. For a fixed-step
    solve pass ``stepsize_controller=diffrax.ConstantStepSize()`` with ``num_steps`` (uniform in
    sigma) or ``dt0``.

    Returns ``(x0, nfe)``: ``nfe`` is :func:`num_function_evaluations` of the attempted steps
    (+1 with ``denoise_final``), equal to the denoiser calls made.
    """
    noise = check_batched_float(noise)
    _check_levels(sigma_max, sigma_min)
    check_positive_int(max_steps, "max_steps")
    solver = diffrax.Tsit5() if solver is None else solver
    evaluations_per_step(solver)  # fail early on a solver whose evaluations cannot be counted
    if stepsize_controller is None:
        stepsize_controller = diffrax.PIDController(rtol=1e-5, atol=1e-5)
    adjoint = diffrax.RecursiveCheckpointAdjoint() if adjoint is None else adjoint
    adaptive = not isinstance(stepsize_controller, diffrax.ConstantStepSize)
    if not adaptive and dt0 is None:
        if num_steps is None:
            raise ValueError("a constant step size needs num_steps or dt0")
        check_positive_int(num_steps, "num_steps")
        dt0 = -(sigma_max - sigma_min) / num_steps
    vector_field, arrays = split_vector_field(_probability_flow_field, denoiser)
    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(vector_field),
        solver,
        t0=sigma_max,
        t1=sigma_min,
        dt0=dt0,
        y0=noise * sigma_max,
        args=(arrays, cond),
        stepsize_controller=stepsize_controller,
        adjoint=adjoint,
        max_steps=max_steps,
        saveat=diffrax.SaveAt(t1=True),
    )
    x = solution.ys[-1]
    nfe = num_function_evaluations(solver, solution.stats["num_steps"])
    if denoise_final:
        x = checked_denoise(denoiser, x, sigma_min, cond)
        nfe = nfe + 1
    return x, nfe


def _reverse_drift(denoiser, u, x, cond):
    """Drift of the VE reverse SDE in forward time ``u = -sigma``: minus the process's
    ``f x - g^2 score`` (Song et al. 2021, eq. 6) at ``t = sigma``."""
    sigma = -u
    score = score_from_denoiser(functools.partial(checked_denoise, denoiser), x, sigma, cond)
    return (-_VE_FRAME.reverse_sde_drift(x, sigma, score)).astype(x.dtype)


def _reverse_diffusion(u, x, args):
    del args
    g = jnp.sqrt(_VE_FRAME.diffusion_squared(-u)).astype(x.dtype)
    return lineax.DiagonalLinearOperator(g * jnp.ones_like(x))


def _reverse_sde_levels(sigmas, num_steps, sigma_max, sigma_min, rho, dtype):
    """The solver's noise levels: ``sigmas`` as given, else the Karras grid of ``num_steps``
    steps (Karras et al. 2022, eq. 5; ``rho = 1`` is uniform in sigma)."""
    if sigmas is None:
        check_positive(rho, "rho")
        return karras_sigmas(num_steps + 1, sigma_min, sigma_max, rho)[:-1].astype(dtype)
    sigmas = jnp.asarray(sigmas, dtype)
    if sigmas.ndim != 1 or sigmas.shape[0] < 2:
        raise ValueError(f"sigmas must be a 1-D grid of at least 2 levels; got {sigmas.shape}")
    if not isinstance(sigmas, jax.core.Tracer):
        values = np.asarray(sigmas, np.float64)
        if not (np.all(np.isfinite(values)) and values[-1] > 0 and np.all(np.diff(values) < 0)):
            raise ValueError(
                f"sigmas must be finite, strictly descending and end above 0; got {values}"
            )
    return sigmas


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
    rho=7.0,
    sigmas=None,
):
    """Solve the VE reverse SDE ``dx = 2 (D - x) / sigma du + sqrt(2 sigma) dW_u`` in forward time
    ``u = -sigma`` (Song et al. 2021, eq. 6 and 9; forward time avoids diffrax issue 598) with a
    ``VirtualBrownianTree`` (Kidger et al. 2021, "Efficient and accurate gradients for neural
    SDEs"), then ``D(x, sigma_min)`` if ``denoise_final``. ``solver`` defaults to
    ``diffrax.Euler()`` (Euler-Maruyama); ``noise`` is unit Gaussian (scaled by ``sigma_max``).

    The steps (``diffrax.StepTo``) are at ``sigmas`` if given (descending, from the start level to
    the end level, both above 0; ``sigma_max`` / ``sigma_min`` are then ignored), else at the
    Karras grid of ``num_steps`` steps with exponent ``rho`` (Karras et al. 2022, eq. 5): short
    steps where the denoiser changes fast, near 0. ``rho=1`` is the uniform grid of earlier
    versions, whose last step (0.31 -> 0.002 for 256 steps from 80) leaves visible noise. The
    Brownian tree's tolerance defaults to an eighth of the shortest step.

    Returns ``(x0, nfe)`` with ``nfe`` the denoiser calls (:func:`num_function_evaluations`).
    """
    check_key(key, "solve_reverse_sde")
    noise = check_batched_float(noise)
    if sigmas is None:
        _check_levels(sigma_max, sigma_min)
        check_positive_int(num_steps, "num_steps")
    check_positive(brownian_tolerance, "brownian_tolerance")
    solver = diffrax.Euler() if solver is None else solver
    evaluations_per_step(solver)  # fail early on a solver whose evaluations cannot be counted
    adjoint = diffrax.RecursiveCheckpointAdjoint() if adjoint is None else adjoint
    levels = _reverse_sde_levels(sigmas, num_steps, sigma_max, sigma_min, rho, noise.dtype)
    times = -levels
    u0, u1 = times[0], times[-1]
    if brownian_tolerance is None:
        brownian_tolerance = jnp.min(jnp.diff(times)) / 8.0
    brownian = diffrax.VirtualBrownianTree(
        u0, u1, tol=brownian_tolerance,
        shape=jax.ShapeDtypeStruct(noise.shape, noise.dtype), key=key,
    )
    drift, arrays = split_vector_field(_reverse_drift, denoiser)
    terms = diffrax.MultiTerm(
        diffrax.ODETerm(drift), diffrax.ControlTerm(_reverse_diffusion, brownian)
    )
    solution = diffrax.diffeqsolve(
        terms,
        solver,
        t0=u0,
        t1=u1,
        dt0=None,
        y0=noise * levels[0],
        args=(arrays, cond),
        stepsize_controller=diffrax.StepTo(ts=times),
        adjoint=adjoint,
        max_steps=times.shape[0],
        saveat=diffrax.SaveAt(t1=True),
    )
    x = solution.ys[-1]
    nfe = num_function_evaluations(solver, solution.stats["num_steps"])
    if denoise_final:
        x = checked_denoise(denoiser, x, levels[-1], cond)
        nfe = nfe + 1
    return x, nfe
