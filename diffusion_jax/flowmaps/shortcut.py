"""Shortcut models (Frans et al. 2024, "One step diffusion via shortcut models").

A network conditioned on the time and the step size ``d`` predicts the average velocity of one
step of size ``d`` (the :class:`~diffusion_jax.flowmaps.meanflow.AverageVelocityFlowMap`, its
second time input carrying ``d``). Written here in the library's time (t = 0 data, t = 1 noise,
``x_t = (1 - t) x0 + t eps``; the paper's time is ``1 - t`` and its shortcut ``s = -u``): a step
is ``x_{t - d} = x_t - d u(x_t, t, d)``. Training (their Sec. 3, eq. 5 and Alg. 1) combines
flow matching at ``d = 0`` (``u(x_t, t, 0) ~ eps - x0``) with the self-consistency target
``u(x_t, t, 2d) = sg([u(x_t, t, d) + u(x_t - d u(x_t, t, d), t - d, d)] / 2)`` from the EMA model,
for a quarter of the batch, with ``2d`` on the dyadic grid ``1/128, ..., 1``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffusion_jax.flowmaps.base import _check_batched, expand
from diffusion_jax.flowmaps.meanflow import AverageVelocityFlowMap

__all__ = ["shortcut_step_sizes", "shortcut_target", "shortcut_loss"]


def shortcut_step_sizes(key, batch_size, *, num_levels=7, dtype=jnp.float32):
    """``(t, 2d)`` of the self-consistency examples: ``2d = 2^-k`` with ``k`` uniform in
    ``0..num_levels`` (the dyadic grid ``1/2^num_levels, ..., 1``; ``num_levels = 7``: 1/128, the
    paper's ``M = 128``) and ``t`` uniform on that step's grid ``{2d, 4d, ..., 1}`` so that the two
    half steps stay in ``[0, 1]`` (Frans et al. 2024, Sec. 3 and App. A)."""
    if isinstance(num_levels, bool) or not isinstance(num_levels, int) or num_levels < 1:
        raise ValueError(f"num_levels must be a positive int; got {num_levels!r}")
    key_level, key_time = jax.random.split(key)
    level = jax.random.randint(key_level, (batch_size,), 0, num_levels + 1)
    num_steps = 2**level
    index = jax.random.randint(key_time, (batch_size,), 0, 2**num_levels) % num_steps
    two_d = (1.0 / num_steps).astype(dtype)
    return ((index + 1) * two_d).astype(dtype), two_d


def shortcut_target(target: AverageVelocityFlowMap, x_t, t, two_d, *, num_levels=7, cond=None):
    """``sg([u(x_t, t, d) + u(x_t - d u(x_t, t, d), t - d, d)] / 2)`` with ``d = two_d / 2`` from
    the ``target`` (EMA) model (Frans et al. 2024, eq. 5); a half step below the grid's smallest
    ``2^-num_levels`` is queried at ``d = 0`` (the flow-matching velocity)."""
    d = 0.5 * two_d
    d_query = jnp.where(d >= 2.0**-num_levels, d, 0.0)
    first = target.average_velocity(x_t, t, d_query, cond)
    x_mid = x_t - expand(d, x_t) * first
    second = target.average_velocity(x_mid, t - d, d_query, cond)
    return jax.lax.stop_gradient(0.5 * (first + second))


def shortcut_loss(
    model: AverageVelocityFlowMap,
    target: AverageVelocityFlowMap,
    x0,
    key,
    *,
    bootstrap_fraction=0.25,
    num_levels=7,
    cond=None,
):
    """Per-example shortcut-model loss (Frans et al. 2024, eq. 5 / Alg. 1): the first
    ``round(bootstrap_fraction * batch)`` examples regress ``u(x_t, t, 2d)`` on
    :func:`shortcut_target` of the ``target`` model (the EMA network in the paper,
    ``LossContext.ema``), the rest are flow matching at ``d = 0`` with ``t ~ U(0, 1)``; squared
    errors averaged over the data axes."""
    x0 = _check_batched(x0)
    if not 0.0 <= bootstrap_fraction <= 1.0:
        raise ValueError(f"bootstrap_fraction must lie in [0, 1]; got {bootstrap_fraction}")
    batch = x0.shape[0]
    num_bootstrap = int(round(bootstrap_fraction * batch))
    key_pairs, key_flow, key_noise = jax.random.split(key, 3)
    t_boot, two_d = shortcut_step_sizes(key_pairs, num_bootstrap, num_levels=num_levels,
                                        dtype=x0.dtype)
    t_flow = jax.random.uniform(key_flow, (batch - num_bootstrap,), x0.dtype)
    t = jnp.concatenate([t_boot, t_flow])
    step = jnp.concatenate([two_d, jnp.zeros_like(t_flow)])
    noise = jax.random.normal(key_noise, x0.shape, x0.dtype)
    x_t = expand(1.0 - t, x0) * x0 + expand(t, x0) * noise
    boot_cond = None if cond is None else jnp.asarray(cond)[:num_bootstrap]
    boot_target = shortcut_target(target, x_t[:num_bootstrap], t_boot, two_d,
                                  num_levels=num_levels, cond=boot_cond)
    flow_target = (noise - x0)[num_bootstrap:]
    regression_target = jnp.concatenate([boot_target, flow_target])
    error = model.average_velocity(x_t, t, step, cond) - regression_target
    return jnp.mean(jnp.reshape(error**2, (batch, -1)), axis=-1)
