"""Exact log-likelihood of a flow whose source density is known.

Library time: data at ``t = 0``, source at ``t = 1``. Along ``dx/dt = v(x, t)`` the density
obeys ``d/dt log p_t(x_t) = -div v(x_t, t)`` (instantaneous change of variables, Chen et al.
2018, Thm. 1), hence

    log p_0(x) = log p_source(x_1) + int_0^1 div v(x_t, t) dt,   x_0 = x,

solved data -> source with Diffrax, one solve per example (``vmap``), divergence exact (the
trace of the Jacobian, ``D`` JVPs) or Hutchinson's ``z^T J z`` with one Rademacher probe set per
example per solve (Hutchinson 1989; Grathwohl et al. 2019, "FFJORD", eq. 7).
"""

from __future__ import annotations

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import callables

__all__ = ["log_likelihood"]

DIVERGENCES = ("exact", "hutchinson")


def _field(t, state, args):
    arrays, static, cond, probes, exact = args
    velocity = callables.merge(arrays, static)
    x = state[0]

    def single(x_single):
        batched = jax.tree.map(lambda leaf: leaf[None], cond)
        return velocity(x_single[None], t, batched)[0].astype(x.dtype)

    v, jvp = jax.linearize(single, x)
    if exact:
        basis = jnp.eye(x.size, dtype=x.dtype).reshape((x.size, *x.shape))
        divergence = jnp.sum(basis * jax.vmap(jvp)(basis))
    else:
        products = jax.vmap(jvp)(probes)
        divergence = jnp.mean(jnp.sum((probes * products).reshape(probes.shape[0], -1), -1))
    return v, divergence


def log_likelihood(
    velocity, x, *, source_log_prob, cond=None, divergence="exact", key=None, num_probes=1,
    t_data=0.0, t_source=1.0, solver=None, rtol=1e-6, atol=1e-6, max_steps=4096,
):
    """``log p(x)`` (nats, shape ``(batch,)``) of the flow's data end, with the known source
    log-density ``source_log_prob(x_1) -> (batch,)``; library time (``t_data = 0`` ->
    ``t_source = 1``). ``divergence="hutchinson"`` needs ``key``. Default solver ``Dopri5``."""
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; expected one of {DIVERGENCES}")
    if divergence == "hutchinson" and key is None:
        raise ValueError("divergence='hutchinson' needs a key for the probes")
    x = jnp.asarray(x)
    if x.ndim < 2 or not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"x must be a floating array (batch, ...); got {x.dtype}{x.shape}")
    if not isinstance(x, jax.core.Tracer) and not np.all(np.isfinite(np.asarray(x))):
        raise ValueError("x contains NaN or infinity")
    solver = diffrax.Dopri5() if solver is None else solver
    exact = divergence == "exact"
    batch = x.shape[0]
    if exact:
        probes = jnp.zeros((batch, 0, *x.shape[1:]), x.dtype)
    else:
        keys = jax.random.split(key, batch)
        probes = jax.vmap(
            lambda k: jax.random.rademacher(k, (num_probes, *x.shape[1:]), x.dtype)
        )(keys)
    arrays, static = callables.split(velocity)

    def solve_one(x_single, cond_single, probes_single):
        solution = diffrax.diffeqsolve(
            diffrax.ODETerm(_field), solver, t0=jnp.asarray(t_data, x.dtype),
            t1=jnp.asarray(t_source, x.dtype), dt0=None, y0=(x_single, jnp.zeros((), x.dtype)),
            args=(arrays, static, cond_single, probes_single, exact),
            stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol), max_steps=max_steps,
        )
        return solution.ys[0][-1], solution.ys[1][-1]

    x_source, integral = jax.vmap(solve_one)(x, cond, probes)
    log_source = source_log_prob(x_source)
    if jnp.shape(log_source) != (batch,):
        raise ValueError(f"source_log_prob must return shape ({batch},); got "
                         f"{jnp.shape(log_source)}")
    return log_source + integral
