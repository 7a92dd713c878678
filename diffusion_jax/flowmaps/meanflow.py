"""MeanFlow (Geng et al. 2025, "Mean flows for one-step generative modeling"): the average velocity
of the rectified-flow path, its training identity and objective, and the average-velocity flow map
shared with shortcut models.

Path (their Sec. 3, and the library's :class:`~diffusion_jax.processes.RectifiedFlow`, t = 0 data,
t = 1 noise): ``z_t = (1 - t) x + t eps``, instantaneous velocity ``v = eps - x``. The average
velocity from ``t`` to ``r <= t`` is ``u(z_t, r, t) = 1/(t - r) int_r^t v(z_s, s) ds`` (their
eq. 3), so the one jump ``z_r = z_t - (t - r) u`` is the exact flow map. Differentiating
``(t - r) u`` in ``t`` gives the MeanFlow identity (their eq. 6) ``u = v - (t - r) du/dt`` with
``du/dt = v d_z u + d_t u`` (eq. 8), one ``jax.jvp`` along ``(v, 0, 1)`` in ``(z, r, t)``; the
objective regresses ``u_theta`` on ``sg(v - (t - r) du_theta/dt)`` (eq. 9-10, Alg. 1).

In the library's VE frame: ``sigma = t / (1 - t)``, ``x_VE = z_t / (1 - t)``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from diffusion_jax.flowmaps.base import _check_batched, check_times, expand, per_example
from diffusion_jax.processes import RectifiedFlow
from diffusion_jax.pytrees import frozen_pytree
from diffusion_jax.schedules import LogitNormalTime

__all__ = [
    "AverageVelocityFlowMap",
    "rectified_flow_time",
    "sample_time_pairs",
    "meanflow_target",
    "adaptive_weight",
    "meanflow_loss",
    "sample_average_velocity",
]


def rectified_flow_time(sigma):
    """Rectified-flow time of a VE noise level, ``t = sigma / (1 + sigma)``."""
    return RectifiedFlow().t_of_ve_sigma(sigma)


@frozen_pytree
class AverageVelocityFlowMap:
    """An average-velocity network on the rectified-flow path as a flow map.

    ``average_velocity(z, t, step, cond) = network(z, time_scale t, cond, c_noise_to=time_scale
    step)`` with ``step = t - r``: MeanFlow's ``u(z, r, t)`` (Geng et al. 2025; their best time
    conditioning embeds ``(t, t - r)``, Table 1c) and a shortcut model's ``s(x_t, t, d)``
    (Frans et al. 2024, ``d = step``) alike; the network needs ``two_time=True``.
    :meth:`jump` is ``z_r = z_t - (t - r) u`` and ``__call__(x, sigma, sigma_to, cond)`` the same
    jump in the VE frame (``t = sigma / (1 + sigma)``, ``z_t = x / (1 + sigma)``, ``x_to = z_r
    (1 + sigma_to)``). ``sigma = inf`` (``t = 1``) is reached in model time only
    (:func:`sample_average_velocity`).
    """

    network: Any
    time_scale: float = 1.0

    def average_velocity(self, z, t, step, cond=None):
        """``u`` over ``[t - step, t]`` at ``z`` (``step = 0``: the instantaneous velocity)."""
        t, step = per_example(t, z, "t"), per_example(step, z, "step")
        return self.network(z, self.time_scale * t, cond, c_noise_to=self.time_scale * step)

    def jump(self, z, t, r, cond=None):
        """``z_r = z_t - (t - r) u(z_t, r, t)`` (Geng et al. 2025, eq. 3 / Alg. 2)."""
        t, r = per_example(t, z, "t"), per_example(r, z, "r")
        return z - expand(t - r, z) * self.average_velocity(z, t, t - r, cond)

    def __call__(self, x, sigma, sigma_to, cond=None):
        x = _check_batched(x)
        sigma, sigma_to = check_times(sigma, sigma_to)
        sigma, sigma_to = per_example(sigma, x), per_example(sigma_to, x, "sigma_to")
        z_r = self.jump(x / expand(1.0 + sigma, x), rectified_flow_time(sigma),
                        rectified_flow_time(sigma_to), cond)
        return z_r * expand(1.0 + sigma_to, x)


def sample_time_pairs(key, batch_size, *, mean=-0.4, std=1.0, fraction_r_neq_t=0.25,
                      dtype=jnp.float32):
    """``(t, r)`` with ``r <= t``: two logit-normal draws (``logit t ~ N(mean, std^2)``), ``t`` the
    larger, then ``r = t`` except for a fraction ``fraction_r_neq_t`` of the batch (Geng et al.
    2025, Sec. 4.3 and Table 1a-b: logit-normal(-0.4, 1.0) and 25% ``r != t`` are their ImageNet
    defaults; the released JAX code's ``data_proportion = 0.75`` is the same 75% ``r = t``; their
    PyTorch CIFAR code instead uses 75% ``r != t``). The ``r != t`` examples are drawn at random."""
    if not 0.0 <= fraction_r_neq_t <= 1.0:
        raise ValueError(f"fraction_r_neq_t must lie in [0, 1]; got {fraction_r_neq_t}")
    key_a, key_b, key_mask = jax.random.split(key, 3)
    distribution = LogitNormalTime(mean=mean, std=std)
    process = RectifiedFlow()
    a = distribution.sample(key_a, batch_size, process, dtype=dtype)
    b = distribution.sample(key_b, batch_size, process, dtype=dtype)
    t, r = jnp.maximum(a, b), jnp.minimum(a, b)
    distinct = jax.random.uniform(key_mask, (batch_size,)) < fraction_r_neq_t
    return t, jnp.where(distinct, r, t)


def meanflow_target(model: AverageVelocityFlowMap, z, r, t, velocity, cond=None):
    """``(u, u_tgt)``: the average velocity ``u_theta(z, r, t)`` and the MeanFlow target
    ``sg(v - (t - r) (v d_z u + d_t u))`` (Geng et al. 2025, eq. 10 / Alg. 1), ``du/dt`` from one
    ``jax.jvp`` of ``(z, r, t) -> u`` along ``(v, 0, 1)``; ``u`` stays differentiable."""

    def u_fn(z_, r_, t_):
        return model.average_velocity(z_, t_, t_ - r_, cond)

    u, du_dt = jax.jvp(u_fn, (z, r, t), (velocity, jnp.zeros_like(r), jnp.ones_like(t)))
    target = velocity - expand(t - r, z) * du_dt
    return u, jax.lax.stop_gradient(target)


def adaptive_weight(squared_norm, *, p=1.0, c=1e-3):
    """``w = 1 / sg(||Delta||^2 + c)^p`` (Geng et al. 2025, Sec. 4.3, "adaptive loss weighting";
    ``p = 1`` with ``c = 1e-3`` as in the paper's text; ``p = 0`` is the plain squared loss)."""
    return jax.lax.stop_gradient(1.0 / (squared_norm + c) ** p)


def meanflow_loss(
    model: AverageVelocityFlowMap,
    x0,
    key,
    *,
    time_mean=-0.4,
    time_std=1.0,
    fraction_r_neq_t=0.25,
    adaptive_p=1.0,
    adaptive_c=1e-3,
    cfg_scale=None,
    cfg_kappa=0.0,
    null_class=None,
    label_dropout=0.1,
    cond=None,
):
    """Per-example MeanFlow loss ``sg(w) ||u_theta - sg(u_tgt)||^2`` (Geng et al. 2025, Alg. 1;
    ``||.||^2`` summed over the data axes) on data ``x0 (batch, ...)`` with ``(t, r)`` from
    :func:`sample_time_pairs` and ``w`` from :func:`adaptive_weight`.

    Training-time classifier-free guidance (their Sec. 4.2, eq. 19-21) with ``cfg_scale = omega``:
    the velocity in the target becomes ``v~ = omega v + kappa u(z, t, t | c) + (1 - omega - kappa)
    u(z, t, t | null)`` (stop-gradient network evaluations); labels ``cond`` are replaced by
    ``null_class`` with probability ``label_dropout`` and those examples (and any labelled
    ``null_class`` already) keep ``v~ = v``. A model
    trained so samples with guidance ``omega`` at one network evaluation per step, no guidance at
    sampling time.
    """
    x0 = _check_batched(x0)
    batch = x0.shape[0]
    key_time, key_noise, key_drop = jax.random.split(key, 3)
    t, r = sample_time_pairs(key_time, batch, mean=time_mean, std=time_std,
                             fraction_r_neq_t=fraction_r_neq_t, dtype=x0.dtype)
    noise = jax.random.normal(key_noise, x0.shape, x0.dtype)
    z = expand(1.0 - t, x0) * x0 + expand(t, x0) * noise
    velocity = noise - x0
    if cfg_scale is not None:
        velocity, cond = _guided_velocity(model, z, t, velocity, cond, key_drop, cfg_scale,
                                          cfg_kappa, null_class, label_dropout)
    u, target = meanflow_target(model, z, r, t, velocity, cond)
    error = u - target
    squared_norm = jnp.sum(jnp.reshape(error**2, (batch, -1)), axis=-1)
    return adaptive_weight(squared_norm, p=adaptive_p, c=adaptive_c) * squared_norm


def _guided_velocity(model, z, t, velocity, cond, key, cfg_scale, cfg_kappa, null_class,
                     label_dropout):
    """MeanFlow's guided field ``v~`` (Geng et al. 2025, eq. 21) and the labels after dropout."""
    if cond is None or null_class is None:
        raise ValueError("training-time CFG (cfg_scale) needs class labels cond and null_class")
    if not 0.0 <= label_dropout < 1.0:
        raise ValueError(f"label_dropout must lie in [0, 1); got {label_dropout}")
    cond = jnp.asarray(cond)
    dropped = (jax.random.uniform(key, cond.shape) < label_dropout) | (cond == null_class)
    labels = jnp.where(dropped, null_class, cond)
    zero = jnp.zeros_like(t)
    unconditional = model.average_velocity(z, t, zero, jnp.full_like(cond, null_class))
    guided = cfg_scale * velocity + (1.0 - cfg_scale - cfg_kappa) * unconditional
    if cfg_kappa:
        guided = guided + cfg_kappa * model.average_velocity(z, t, zero, cond)
    guided = jnp.where(expand(dropped, velocity), velocity, jax.lax.stop_gradient(guided))
    return guided, labels


def sample_average_velocity(model: AverageVelocityFlowMap, noise, times, *, cond=None):
    """``len(times) - 1`` jumps ``z_{t_{i+1}} = z_{t_i} - (t_i - t_{i+1}) u(z, t_{i+1}, t_i)``
    from ``z_{t_0} = noise`` (Geng et al. 2025, Alg. 2; Frans et al. 2024, Alg. 2 with ``d =
    t_i - t_{i+1}``), ``times`` descending in ``[0, 1]`` (e.g. ``jnp.linspace(1, 0, k + 1)`` for
    ``k`` steps; ``t_0 = 1`` is pure noise). A ``lax.scan``: jittable and differentiable; returns
    the sample at ``times[-1]``."""
    times = jnp.asarray(times)
    if times.ndim != 1 or times.shape[0] < 2:
        raise ValueError(f"times must be a 1-D grid of at least 2 values; got {times.shape}")
    if not isinstance(times, jax.core.Tracer) and bool(jnp.any(jnp.diff(times) > 0)):
        raise ValueError(f"times must be non-increasing (noise at t = 1 to data at 0); got {times}")
    noise = _check_batched(noise)

    def step(z, pair):
        t, r = pair
        return model.jump(z, t, r, cond), None

    z, _ = jax.lax.scan(step, noise, (times[:-1], times[1:]))
    return z
