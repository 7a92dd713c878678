"""ODE samplers for a velocity field ``velocity(x, t, cond)`` over a time grid, and Diffrax
adaptive solves.

Time convention: library time, ``t = 0`` is data, ``t = 1`` is the source. :func:`time_grid`
runs from ``t_start = 1`` (source) down to ``t_end = 0`` (data); any monotone grid works (an
ascending one integrates data -> source). The grid's values stay traced and its length fixes the
step count; the body is ``lax.scan``, so every method jits, vmaps and is reverse-differentiable.
Methods (Hairer, Norsett & Wanner, "Solving ODEs I", II.1): Euler (order 1, 1 NFE per step),
explicit midpoint (2, 2), Heun / explicit trapezoid (2, 2), classical RK4 (4, 4). Each method's
order and NFE per step are data in :data:`METHODS`.

A plain Python function works as ``velocity`` everywhere; inside your own ``jax.jit`` pass it as
a static argument or use :func:`diffusion_jax.callables.filter_jit`. For Diffrax the velocity
travels in ``args`` (split into array leaves and a static rest by
:mod:`diffusion_jax.callables`), never in a closure.
"""

from __future__ import annotations

import dataclasses

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import callables
from diffusion_jax.processes import _broadcast_like
from diffusion_jax.samplers.diffrax_solvers import check_batched_float

__all__ = [
    "Method",
    "METHODS",
    "time_grid",
    "integrate",
    "solve_adaptive",
    "check_velocity_output",
]


@dataclasses.dataclass(frozen=True)
class Method:
    """A fixed-grid method: its global order and velocity evaluations per step."""

    name: str
    order: int
    nfe_per_step: int


def _euler(velocity, x, t, t_next, cond):
    return x + _broadcast_like(t_next - t, x) * check_velocity_output(velocity(x, t, cond), x)


def _midpoint(velocity, x, t, t_next, cond):
    h = t_next - t
    k1 = check_velocity_output(velocity(x, t, cond), x)
    k2 = velocity(x + _broadcast_like(0.5 * h, x) * k1, t + 0.5 * h, cond)
    return x + _broadcast_like(h, x) * k2


def _heun(velocity, x, t, t_next, cond):
    h = _broadcast_like(t_next - t, x)
    k1 = check_velocity_output(velocity(x, t, cond), x)
    k2 = velocity(x + h * k1, t_next, cond)
    return x + 0.5 * h * (k1 + k2)


def _rk4(velocity, x, t, t_next, cond):
    h = t_next - t
    half = _broadcast_like(0.5 * h, x)
    k1 = check_velocity_output(velocity(x, t, cond), x)
    k2 = velocity(x + half * k1, t + 0.5 * h, cond)
    k3 = velocity(x + half * k2, t + 0.5 * h, cond)
    k4 = velocity(x + _broadcast_like(h, x) * k3, t_next, cond)
    return x + _broadcast_like(h / 6.0, x) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


_STEPS = {"euler": _euler, "midpoint": _midpoint, "heun": _heun, "rk4": _rk4}
METHODS = {
    "euler": Method("euler", 1, 1),
    "midpoint": Method("midpoint", 2, 2),
    "heun": Method("heun", 2, 2),
    "rk4": Method("rk4", 4, 4),
}


def check_velocity_output(output, x):
    """Raise a one-line ``ValueError`` unless the velocity kept ``x``'s shape."""
    if output.shape != x.shape:
        raise ValueError(f"velocity returned shape {output.shape} for input shape {x.shape}")
    return output.astype(x.dtype)


def time_grid(num_steps, *, t_start=1.0, t_end=0.0, dtype=jnp.float32):
    """``num_steps + 1`` uniform times from ``t_start`` (source, default 1) to ``t_end`` (data,
    default 0); library time."""
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int; got {num_steps!r}")
    return jnp.linspace(t_start, t_end, num_steps + 1, dtype=dtype)


def _check_times(times, dtype):
    times = jnp.asarray(times)
    if times.ndim != 1 or times.shape[0] < 2:
        raise ValueError(f"times must be a 1-D grid of at least 2 values; got shape {times.shape}")
    if not isinstance(times, jax.core.Tracer):
        values = np.asarray(times, np.float64)
        if not np.all(np.isfinite(values)):
            raise ValueError(f"times must be finite; got {values}")
        steps = np.diff(values)
        if not (np.all(steps < 0) or np.all(steps > 0)):
            raise ValueError(f"times must be strictly monotone; got {values}")
    return times.astype(dtype)


def integrate(velocity, x, times, *, method="euler", cond=None, return_trajectory=False):
    """Integrate ``dx/dt = velocity(x, t, cond)`` from ``times[0]`` to ``times[-1]`` with a
    fixed-grid ``method`` (``euler``, ``midpoint``, ``heun``, ``rk4``); library time (sampling:
    ``x`` from the source at ``t = 1``, grid down to ``t = 0``).

    Returns ``x_end``, or ``(x_end, trajectory)`` with the states at every grid time,
    ``(len(times), *x.shape)``. NFE: ``(len(times) - 1) * METHODS[method].nfe_per_step``.
    """
    if method not in _STEPS:
        raise ValueError(f"unknown ODE method {method!r}; expected one of {sorted(_STEPS)}")
    x = check_batched_float(x, "x")
    times = _check_times(times, x.dtype)
    step_fn = _STEPS[method]

    def step(x, interval):
        t, t_next = interval
        x_next = step_fn(velocity, x, t, t_next, cond)
        return x_next, (x_next if return_trajectory else None)

    x_end, states = jax.lax.scan(step, x, (times[:-1], times[1:]))
    if return_trajectory:
        return x_end, jnp.concatenate([x[None], states], axis=0)
    return x_end


def _vector_field(t, x, args):
    arrays, static, cond = args
    velocity = callables.merge(arrays, static)
    return velocity(x, t, cond)


def solve_adaptive(
    velocity, x, *, t_start=1.0, t_end=0.0, cond=None, solver=None, rtol=1e-5, atol=1e-5,
    adjoint=None, max_steps=4096,
):
    """Integrate ``dx/dt = velocity(x, t, cond)`` from ``t_start`` (source, default 1) to
    ``t_end`` (data, default 0) with a Diffrax adaptive solver (Kidger 2021; default ``Dopri5``,
    Dormand & Prince 1980, as torchdyn's ``dopri5`` in the torchcfm protocol) and
    ``PIDController(rtol, atol)``; one solve for the whole batch (the error norm is over the
    batch). ``adjoint`` defaults to ``RecursiveCheckpointAdjoint`` (exact gradients).

    Returns ``(x_end, nfe)`` with ``nfe`` the vector-field evaluations of the solve.
    """
    x = check_batched_float(x, "x")
    solver = diffrax.Dopri5() if solver is None else solver
    adjoint = diffrax.RecursiveCheckpointAdjoint() if adjoint is None else adjoint
    arrays, static = callables.split(velocity)
    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(_vector_field),
        solver,
        t0=jnp.asarray(t_start, x.dtype),
        t1=jnp.asarray(t_end, x.dtype),
        dt0=None,
        y0=x,
        args=(arrays, static, cond),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        adjoint=adjoint,
        max_steps=max_steps,
    )
    steps = solution.stats["num_steps"]
    tableau = solver.tableau
    stages = len(tableau.b_sol)
    # counted with a callback in tests/test_flows_velocity.py: FSAL tableaus evaluate once at
    # the start and reuse the last stage after that
    nfe = 1 + steps * (stages - 1) if tableau.fsal else steps * stages
    return solution.ys[-1], nfe
