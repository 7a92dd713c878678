"""Metrics of flows and couplings: straightness, coupling cost, the one-step endpoint gap, and
Wasserstein distances between sample sets (exact W2 by an assignment, sliced W2 beyond).

Time convention: library time, ``t = 1`` source, ``t = 0`` data; along a simulated path
``X_1`` is the source point and ``X_0`` the generated point, and the straight-line velocity in
this time is ``X_1 - X_0`` (``x_t = (1 - t) X_0 + t X_1``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize
import scipy.spatial

from diffusion_jax.flows import ode

__all__ = [
    "coupling_cost",
    "straightness",
    "endpoint_gap",
    "wasserstein2_exact",
    "sliced_wasserstein2",
]


def coupling_cost(x_a, x_b):
    """``E ||x_a - x_b||^2`` over paired rows (sum over data axes, mean over the batch)."""
    x_a, x_b = jnp.asarray(x_a), jnp.asarray(x_b)
    if x_a.shape != x_b.shape:
        raise ValueError(f"paired batches must have one shape; got {x_a.shape} and {x_b.shape}")
    return jnp.mean(jnp.sum(jnp.reshape((x_a - x_b) ** 2, (x_a.shape[0], -1)), axis=-1))


def straightness(velocity, x_source, *, num_steps=32, method="rk4", cond=None):
    """``S = int_0^1 E ||(X_1 - X_0) - v(X_t, t)||^2 dt`` along simulated paths (Liu et al. 2023,
    "Flow straight and fast", Def. 3.5; in this library's time the straight velocity is
    ``X_1 - X_0``): the paths are solved with ``method`` on a uniform grid of ``num_steps`` from
    ``t = 1`` to 0 and the time integral is the trapezoid rule on that grid. ``S = 0`` iff the
    paths are straight lines at constant speed. Returns ``(S, X_0)``."""
    times = ode.time_grid(num_steps, dtype=jnp.asarray(x_source).dtype)
    x_end, trajectory = ode.integrate(
        velocity, x_source, times, method=method, cond=cond, return_trajectory=True
    )
    chord = x_source - x_end

    def deviation(state, t):
        gap = chord - velocity(state, t, cond)
        return jnp.mean(jnp.sum(jnp.reshape(gap**2, (gap.shape[0], -1)), axis=-1))

    values = jax.vmap(deviation)(trajectory, times)
    widths = jnp.abs(jnp.diff(times))
    return jnp.sum(0.5 * widths * (values[1:] + values[:-1])), x_end


def endpoint_gap(velocity, x_source, *, cond=None, reference=None, rtol=1e-5, atol=1e-5):
    """``E ||Phi_Euler,1(x) - Phi_adaptive(x)||^2``: how far one Euler step from ``t = 1`` to 0
    lands from the adaptive (Dopri5) solution (REFERENCES 4.2; zero for straight flows). Pass
    ``reference`` to reuse an adaptive solution. Returns ``(gap, reference)``."""
    one_step = ode.integrate(velocity, x_source, ode.time_grid(1), cond=cond)
    if reference is None:
        reference, _ = ode.solve_adaptive(velocity, x_source, cond=cond, rtol=rtol, atol=atol)
    return coupling_cost(one_step, reference), reference


def wasserstein2_exact(x, y):
    """Exact ``W2`` between two equal-size empirical measures (uniform weights): the square root
    of the optimal assignment's mean squared distance (an assignment is optimal among all plans
    for equal uniform marginals, Birkhoff-von Neumann; Peyre & Cuturi 2019, Prop. 2.1). Solved
    on the host with ``scipy.optimize.linear_sum_assignment`` (Crouse 2016), practical up to a
    few thousand points; float64."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim < 2 or x.shape != y.shape:
        raise ValueError(f"exact W2 needs two sample sets of one shape (n, ...); got {x.shape} "
                         f"and {y.shape}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("exact W2: the sample sets contain NaN or inf")
    cost = scipy.spatial.distance.cdist(x.reshape(len(x), -1), y.reshape(len(y), -1), "sqeuclidean")
    rows, cols = scipy.optimize.linear_sum_assignment(cost)
    return float(np.sqrt(np.mean(cost[rows, cols])))


def sliced_wasserstein2(x, y, key, *, num_projections=128):
    """Sliced ``W2``: ``sqrt(E_theta W2^2(theta.x, theta.y))`` over ``num_projections`` random
    unit directions, each 1-D W2 by sorting (Rabin et al. 2011; Bonneel et al. 2015). Equal-size
    sets; jittable."""
    x, y = jnp.asarray(x), jnp.asarray(y)
    if x.ndim < 2 or x.shape != y.shape:
        raise ValueError(f"sliced W2 needs two sample sets of one shape (n, ...); got {x.shape} "
                         f"and {y.shape}")
    x, y = jnp.reshape(x, (x.shape[0], -1)), jnp.reshape(y, (y.shape[0], -1))
    directions = jax.random.normal(key, (num_projections, x.shape[1]), x.dtype)
    directions = directions / jnp.linalg.norm(directions, axis=-1, keepdims=True)
    proj_x = jnp.sort(x @ directions.T, axis=0)
    proj_y = jnp.sort(y @ directions.T, axis=0)
    return jnp.sqrt(jnp.mean((proj_x - proj_y) ** 2))
