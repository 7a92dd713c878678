"""TrigFlow and continuous-time consistency models (sCM: sCT and sCD), Lu & Song 2024,
"Simplifying, stabilizing and scaling continuous-time consistency models".

TrigFlow (their Sec. 2): ``x_t = cos(t) x0 + sin(t) z`` with ``z ~ N(0, sigma_d^2 I)``, t in
``[0, pi/2]``; it is :class:`diffusion_jax.processes.TrigFlow` (``alpha = cos t``, ``sigma =
sigma_d sin t``), so in the library's VE frame ``sigma = sigma_d tan t`` and ``x_VE = x_t / cos t``.
The network ``F_theta(x_t / sigma_d, c_noise(t), cond)`` predicts the (scaled) PF-ODE velocity
``dx_t/dt = sigma_d F`` and the consistency function is ``f(x_t, t) = cos(t) x_t - sin(t) sigma_d
F_theta(x_t / sigma_d, t)`` (their eq. 6: the TrigFlow DDIM step from ``t`` to 0).

The objective (their eq. 8 and Alg. 1) is ``||F_theta - F_theta^- - g||^2 / D`` with the tangent
``g = -cos^2(t) (sigma_d F^- - dx_t/dt) - r cos(t) sin(t) (x_t + sigma_d dF^-/dt)``, where
``dF^-/dt`` is a ``jax.jvp`` of the stop-gradient network along ``(dx_t/dt, 1)``, ``r`` is warmed
up linearly from 0 to 1 (Sec. 4.2), ``g`` is normalised to ``g / (||g|| + 0.1)`` (Sec. 4.3) and
the loss is weighted by a learned log-variance of ``t`` (Sec. 4.3, eq. 9). ``dx_t/dt`` is
``cos(t) z - sin(t) x0`` for consistency training (sCT) or the teacher's PF-ODE velocity for
distillation (sCD).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from diffusion_jax.flowmaps.base import _check_batched, check_times, expand, per_example
from diffusion_jax.losses import uncertainty_weighted
from diffusion_jax.networks import layers
from diffusion_jax.networks.conditioning import make_noise_embedding
from diffusion_jax.processes import TrigFlow
from diffusion_jax.pytrees import frozen_pytree
from diffusion_jax.schedules import LogNormalSigma

__all__ = [
    "TrigFlowConsistency",
    "TimeLogVariance",
    "trigflow_time",
    "trigflow_velocity_from_denoiser",
    "tangent_warmup",
    "normalise_tangent",
    "scm_tangent",
    "scm_loss",
]


def trigflow_time(sigma, sigma_data):
    """TrigFlow time of a VE noise level: ``t = arctan(sigma / sigma_d)`` (Lu & Song 2024, Sec. 2,
    ``sigma = sigma_d tan t``)."""
    return TrigFlow(sigma_data=sigma_data).t_of_ve_sigma(sigma)


@frozen_pytree
class TrigFlowConsistency:
    """The sCM consistency model on a network ``F(x, c_noise, cond)`` (Lu & Song 2024, eq. 6):
    ``f(x_t, t) = cos(t) x_t - sin(t) sigma_d F(x_t / sigma_d, time_scale t, cond)``.

    As a flow map in the VE frame (``flow_map(x, sigma, sigma_to, cond)``) it is the TrigFlow DDIM
    step with the network's velocity, ``x_s = cos(t - s) x_t - sin(t - s) sigma_d F`` with ``t, s``
    the TrigFlow times of ``sigma, sigma_to`` and ``x_t = cos(t) x_VE``: at ``sigma_to = 0`` this
    is the consistency function (what sCM trains; the paper's two-step sampler re-noises between
    two such maps), at ``sigma_to > 0`` a one-step DDIM jump. ``c_noise(t) = time_scale t`` (the
    paper's identity time transformation, Sec. 4.1, for ``time_scale = 1``).
    """

    network: Any
    sigma_data: float = 0.5
    time_scale: float = 1.0

    def velocity(self, x_t, t, cond=None):
        """The network's TrigFlow velocity ``sigma_d F(x_t / sigma_d, time_scale t, cond)``."""
        t = per_example(t, x_t, "t")
        return self.sigma_data * self.network(x_t / self.sigma_data, self.time_scale * t, cond)

    def consistency(self, x_t, t, cond=None):
        """``f(x_t, t) = cos(t) x_t - sin(t) sigma_d F`` (TrigFlow frame; the data estimate)."""
        return self.jump(x_t, t, jnp.zeros_like(jnp.asarray(t)), cond)

    def jump(self, x_t, t, s, cond=None):
        """TrigFlow DDIM step ``x_s = cos(t - s) x_t - sin(t - s) sigma_d F(x_t, t)`` (their
        Sec. 2, the TrigFlow form of DDIM)."""
        t, s = per_example(t, x_t, "t"), per_example(s, x_t, "s")
        delta = t - s
        return expand(jnp.cos(delta), x_t) * x_t - expand(jnp.sin(delta), x_t) * self.velocity(
            x_t, t, cond
        )

    def __call__(self, x, sigma, sigma_to, cond=None):
        x = _check_batched(x)
        sigma, sigma_to = check_times(sigma, sigma_to)
        t = trigflow_time(per_example(sigma, x), self.sigma_data)
        s = trigflow_time(per_example(sigma_to, x, "sigma_to"), self.sigma_data)
        x_s = self.jump(expand(jnp.cos(t), x) * x, t, s, cond)
        return x_s / expand(jnp.cos(s), x)


def trigflow_velocity_from_denoiser(denoiser, x_t, t, *, sigma_data, cond=None):
    """The TrigFlow PF-ODE velocity of any VE denoiser ``D``: ``dx_t/dt = (cos(t) x_t -
    D(x_t / cos t, sigma_d tan t)) / sin(t)`` (from ``dx/dsigma = (x - D) / sigma``, Karras et
    al. 2022 eq. 4, with ``x_t = cos(t) x``, ``sigma = sigma_d tan t``): the teacher of sCD
    (Lu & Song 2024, Alg. 1). Needs ``0 < t < pi/2``."""
    t = per_example(t, x_t, "t")
    cos, sin = expand(jnp.cos(t), x_t), expand(jnp.sin(t), x_t)
    x0_hat = denoiser(x_t / cos, sigma_data * jnp.tan(t), cond)
    return (cos * x_t - x0_hat) / sin


def tangent_warmup(step, warmup_steps):
    """``r = min(1, step / warmup_steps)``: the coefficient of the tangent's second term, warmed
    up linearly (Lu & Song 2024, Sec. 4.2; 10k iterations in their runs); ``warmup_steps = 0``
    means no warm-up (``r = 1``)."""
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ValueError(f"warmup_steps must be a non-negative int; got {warmup_steps!r}")
    if warmup_steps == 0:
        return jnp.ones((), jnp.float32)
    return jnp.minimum(1.0, jnp.asarray(step, jnp.float32) / warmup_steps)


def normalise_tangent(tangent, c=0.1):
    """``g / (||g|| + c)`` per example, ``||.||`` over all data axes (Lu & Song 2024, Sec. 4.3,
    "tangent normalisation", ``c = 0.1``)."""
    norm = jnp.sqrt(jnp.sum(jnp.reshape(tangent, (tangent.shape[0], -1)) ** 2, axis=-1))
    return tangent / expand(norm + c, tangent)


def scm_tangent(model: TrigFlowConsistency, x_t, t, dxt_dt, *, r=1.0, cond=None):
    """``(F^-, g)``: the network output and the sCM tangent ``g = -cos^2(t) (sigma_d F^- -
    dx_t/dt) - r cos(t) sin(t) (x_t + sigma_d dF^-/dt)`` (Lu & Song 2024, eq. 8 / Alg. 1), with
    ``cos(t) sin(t) dF^-/dt`` from one ``jax.jvp`` of ``F^-`` along ``cos(t) sin(t) (dx_t/dt,
    1)``. ``g = cos(t) df^-/dt`` at ``r = 1`` (``f`` the consistency function). Unnormalised."""
    t = per_example(t, x_t, "t")
    cos, sin = jnp.cos(t), jnp.sin(t)
    scale = cos * sin

    def scaled_output(x, time):
        return model.network(x / model.sigma_data, model.time_scale * time, cond)

    output, d_output = jax.jvp(scaled_output, (x_t, t), (expand(scale, x_t) * dxt_dt, scale))
    sigma_data = model.sigma_data
    tangent = -expand(cos**2, x_t) * (sigma_data * output - dxt_dt) - r * (
        expand(scale, x_t) * x_t + sigma_data * d_output
    )
    return output, tangent


class TimeLogVariance(nnx.Module):
    """A learned log-variance ``u(t)`` for sCM's adaptive weighting (Lu & Song 2024, Sec. 4.3, eq. 9:
    ``e^{w(t)} / D ||.||^2 - w(t)`` with ``w = -u``; as EDM2's ``u(sigma)``, Karras et al. 2024
    eq. 21): a linear layer on a time embedding (``embedding``: ``"fourier"`` or
    ``"positional"``) of ``time_scale t``, zero-initialised (weight 1 at the start)."""

    def __init__(self, *, embedding_dim=128, embedding="positional", fourier_scale=16.0,
                 time_scale=1.0, rngs):
        self.time_scale = float(time_scale)
        self.embed = make_noise_embedding(embedding, embedding_dim, fourier_scale=fourier_scale,
                                          rngs=rngs)
        self.linear = layers.linear(embedding_dim, 1, zero_init=True, rngs=rngs)

    def __call__(self, t):
        """``t (batch,)`` -> ``u(t) (batch,)``."""
        t = jnp.asarray(t, jnp.float32)
        return self.linear(self.embed(self.time_scale * t))[:, 0]


def scm_loss(
    model: TrigFlowConsistency,
    target: TrigFlowConsistency,
    x0,
    key,
    *,
    r=1.0,
    teacher=None,
    log_variance=None,
    p_mean=-1.0,
    p_std=1.4,
    tangent_c=0.1,
    cond=None,
):
    """Per-example sCM loss (Lu & Song 2024, Alg. 1 and eq. 9) on data ``x0 (batch, ...)``.

    ``tan(t) = sigma / sigma_d`` with ``ln sigma ~ N(p_mean, p_std^2)`` (their CIFAR-10 values
    -1.0, 1.4), ``x_t = cos(t) x0 + sin(t) z``, ``z ~ N(0, sigma_d^2 I)``; ``dx_t/dt = cos(t) z -
    sin(t) x0`` (sCT, ``teacher=None``) or :func:`trigflow_velocity_from_denoiser` of the VE
    ``teacher`` denoiser (sCD). ``target`` is the stop-gradient copy of ``model`` (``theta^-``,
    e.g. ``LossContext.detached``); ``r`` the warm-up coefficient (:func:`tangent_warmup`).
    The loss is ``||F_theta - F^- - g||^2 / D`` with ``g`` normalised (:func:`normalise_tangent`,
    ``c = tangent_c``), weighted by ``log_variance(t) -> u`` as ``loss e^{-u} + u`` when given.
    Its gradient in ``theta`` is ``-2/D dF_theta^T g``: the continuous-time CM gradient (eq. 8).
    """
    x0 = _check_batched(x0)
    if model.sigma_data != target.sigma_data:
        raise ValueError("model and target must share sigma_data")
    key_t, key_z = jax.random.split(key)
    batch = x0.shape[0]
    process = TrigFlow(sigma_data=model.sigma_data)
    t = LogNormalSigma(p_mean=p_mean, p_std=p_std).sample(key_t, batch, process, dtype=x0.dtype)
    z = model.sigma_data * jax.random.normal(key_z, x0.shape, x0.dtype)
    cos, sin = expand(jnp.cos(t), x0), expand(jnp.sin(t), x0)
    x_t = cos * x0 + sin * z
    if teacher is None:
        dxt_dt = cos * z - sin * x0
    else:
        dxt_dt = trigflow_velocity_from_denoiser(teacher, x_t, t, sigma_data=model.sigma_data,
                                                 cond=cond)
    dxt_dt = jax.lax.stop_gradient(dxt_dt)
    output_target, tangent = scm_tangent(target, x_t, t, dxt_dt, r=r, cond=cond)
    tangent = jax.lax.stop_gradient(normalise_tangent(tangent, tangent_c))
    output_target = jax.lax.stop_gradient(output_target)
    output = model.network(x_t / model.sigma_data, model.time_scale * t, cond)
    error = output - output_target - tangent
    loss = jnp.mean(jnp.reshape(error**2, (batch, -1)), axis=-1)
    if log_variance is None:
        return loss
    return uncertainty_weighted(loss, log_variance(t))
