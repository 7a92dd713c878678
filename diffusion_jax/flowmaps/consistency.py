"""Consistency objectives on flow maps: distillation (CD), training (CT), improved training (iCT)
and easy consistency tuning (ECT).

Every loss is per example, ``loss(student, x0, key, *, ...) -> (batch,)``, where ``student`` and
``target`` are flow maps (:mod:`diffusion_jax.flowmaps.base`; a
:class:`~diffusion_jax.flowmaps.parameterisations.ConsistencyModel` is one) and the consistency
function is the map to the grid's lowest level, ``f(x, sigma) = flow_map(x, sigma, sigma_min)``.
In ``training.make_train_step(..., with_context=True)`` the target is ``context.ema[name]`` (CD,
CT) or ``context.detached`` (iCT, ECT: ``theta^- = sg(theta)``), and a distillation teacher is
a flow map built on ``context.frozen`` (e.g. :class:`~diffusion_jax.flowmaps.base.TeacherFlowMap`
with Heun, Euler or DPM-Solver, or an exact map in tests). The target side is always wrapped in
``stop_gradient``. Noise is shared between the two points of a pair.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.scipy.special import erf

from diffusion_jax.flowmaps import curricula
from diffusion_jax.flowmaps.base import expand

__all__ = [
    "squared_l2",
    "pseudo_huber",
    "ict_huber_constant",
    "consistency_distillation_loss",
    "consistency_training_loss",
    "ict_level_logits",
    "ict_loss",
    "ect_loss",
]


def _data_axes(x):
    return tuple(range(1, x.ndim))


def squared_l2(a, b):
    """Per-example mean squared error ``mean((a - b)^2)`` over the data axes (the ``l2`` metric
    of Song et al. 2023, Sec. 5, up to the constant ``1/d``)."""
    return jnp.mean(jnp.square(a - b), axis=_data_axes(a))


def pseudo_huber(a, b, c):
    """``sqrt(||a - b||_2^2 + c^2) - c`` on the WHOLE vector of each example (Song & Dhariwal 2023,
    eq. 11; Charbonnier 1997), not per element; ``c = 0`` is the Euclidean norm (with a zero
    gradient at ``a = b``)."""
    squared = jnp.sum(jnp.square(a - b), axis=_data_axes(a))
    if c == 0:
        positive = squared > 0
        return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)
    return jnp.sqrt(squared + c**2) - c


def ict_huber_constant(shape):
    """``c = 0.00054 sqrt(d)`` for examples of ``shape`` (without the batch axis; Song & Dhariwal
    2023, Sec. 3.3): 0.0299 for CIFAR-10's ``d = 3072``."""
    return 0.00054 * math.sqrt(math.prod(shape))


def _check_x0(x0):
    x0 = jnp.asarray(x0)
    if x0.ndim < 2 or not jnp.issubdtype(x0.dtype, jnp.floating):
        raise ValueError(f"x0 must be a floating batch (batch, ...); got {x0.dtype}{x0.shape}")
    return x0


def _check_num_levels(num_levels, max_levels=None):
    """A concrete number of levels must give at least one step (and fit ``max_levels``)."""
    if isinstance(num_levels, jax.core.Tracer):
        return
    value = int(num_levels)
    if value < 2:
        raise ValueError(f"num_levels={value}: the grid never reaches two levels (one step)")
    if max_levels is not None and value > max_levels:
        raise ValueError(f"num_levels={value} exceeds max_levels={max_levels}")


def _pair_loss(student, target, x_high, sigma_high, x_low, sigma_low, sigma_min, cond, distance):
    """``d(f_theta(x_high, sigma_high), sg f_target(x_low, sigma_low))`` with ``f(x, s) =
    flow_map(x, s, sigma_min)``."""
    estimate = student(x_high, sigma_high, sigma_min, cond)
    reference = jax.lax.stop_gradient(target(x_low, sigma_low, sigma_min, cond))
    return distance(estimate, reference)


def _draw_index(key, batch, count):
    """Uniform integers in ``[0, count)`` (``count`` may be traced)."""
    u = jax.random.uniform(key, (batch,))
    return jnp.minimum(jnp.floor(u * count).astype(jnp.int32), count - 1)


def consistency_distillation_loss(
    student, x0, key, *, target, teacher, num_levels=18, sigma_min=0.002, sigma_max=80.0,
    rho=7.0, distance=squared_l2, cond=None,
):
    """Consistency distillation (Song et al. 2023, Alg. 2 and eq. 7, ``lambda = 1``): on a Karras
    grid of ``num_levels`` levels draw adjacent levels ``sigma_{n+1} > sigma_n``,
    ``x_{n+1} = x0 + sigma_{n+1} z``, take the teacher's step ``x_n = teacher(x_{n+1},
    sigma_{n+1}, sigma_n)`` and return ``d(f_theta(x_{n+1}, sigma_{n+1}), sg
    f_target(x_n, sigma_n))``. ``teacher`` is any flow map (a one-step ``TeacherFlowMap`` with
    Euler, Heun or DPM-Solver is the paper's ODE solver step)."""
    x0 = _check_x0(x0)
    if not isinstance(num_levels, int):
        raise ValueError(f"num_levels must be a Python int; got {num_levels!r}")
    _check_num_levels(num_levels)
    index_key, noise_key = jax.random.split(key)
    batch = x0.shape[0]
    index = _draw_index(index_key, batch, num_levels - 1)
    sigma_high = curricula.karras_level(
        index, num_levels, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho
    ).astype(x0.dtype)
    sigma_low = curricula.karras_level(
        index + 1, num_levels, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho
    ).astype(x0.dtype)
    x_high = x0 + expand(sigma_high, x0) * jax.random.normal(noise_key, x0.shape, x0.dtype)
    x_low = jax.lax.stop_gradient(teacher(x_high, sigma_high, sigma_low, cond))
    return _pair_loss(
        student, target, x_high, sigma_high, x_low, sigma_low, sigma_min, cond, distance
    )


def consistency_training_loss(
    student, x0, key, *, target, num_levels, sigma_min=0.002, sigma_max=80.0, rho=7.0,
    distance=squared_l2, cond=None,
):
    """Consistency training (Song et al. 2023, Alg. 3 and eq. 10, ``lambda = 1``): as
    :func:`consistency_distillation_loss` with the teacher's step replaced by the same noise at
    the lower level, ``x_n = x0 + sigma_n z`` (the unbiased one-sample estimate of the score,
    Thm. 2). ``num_levels`` may be traced: pass :func:`curricula.ct_num_levels` of
    ``context.step`` and the EMA target of decay :func:`curricula.ct_ema_decay`."""
    x0 = _check_x0(x0)
    _check_num_levels(num_levels)
    index_key, noise_key = jax.random.split(key)
    batch = x0.shape[0]
    index = _draw_index(index_key, batch, jnp.asarray(num_levels) - 1)
    levels = [
        curricula.karras_level(
            i, num_levels, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho
        ).astype(x0.dtype)
        for i in (index, index + 1)
    ]
    noise = jax.random.normal(noise_key, x0.shape, x0.dtype)
    x_high, x_low = (x0 + expand(level, x0) * noise for level in levels)
    return _pair_loss(
        student, target, x_high, levels[0], x_low, levels[1], sigma_min, cond, distance
    )


def ict_level_logits(num_levels, max_levels, *, sigma_min=0.002, sigma_max=80.0, rho=7.0,
                     p_mean=-1.1, p_std=2.0):
    """Log-probabilities of the ``max_levels - 1`` adjacent pairs ``(sigma_{i+1}, sigma_i)``
    (index ``i`` counted from ``sigma_max``; pairs beyond the traced ``num_levels`` get
    ``-inf``): ``p(i) ∝ erf((ln sigma_i - P_mean) / (sqrt 2 P_std)) - erf((ln sigma_{i+1} -
    P_mean) / (sqrt 2 P_std))``, the log-normal mass between the two levels (Song & Dhariwal 2023,
    Sec. 3.5, eq. 10)."""
    index = jnp.arange(max_levels - 1)
    high = curricula.karras_level(
        index, num_levels, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho
    )
    low = curricula.karras_level(
        index + 1, num_levels, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho
    )
    scale = math.sqrt(2.0) * p_std
    mass = erf((jnp.log(high) - p_mean) / scale) - erf((jnp.log(low) - p_mean) / scale)
    valid = index < num_levels - 1
    return jnp.where(valid, jnp.log(jnp.where(valid, mass, 1.0)), -jnp.inf)


def ict_loss(
    student, x0, key, *, target, num_levels, max_levels=1281, sigma_min=0.002, sigma_max=80.0,
    rho=7.0, p_mean=-1.1, p_std=2.0, huber_c=None, cond=None,
):
    """Improved consistency training (Song & Dhariwal 2023, Alg. 1 with Sec. 3): pairs drawn by
    :func:`ict_level_logits` (discretised log-normal, ``P_mean = -1.1``, ``P_std = 2.0``) on a
    Karras grid of ``num_levels`` (:func:`curricula.ict_num_levels`; ``max_levels`` is its largest
    value, a static bound), loss ``lambda(sigma_i) d(f_theta(x0 + sigma_{i+1} z), sg f_theta(x0 +
    sigma_i z))`` with ``lambda = 1 / (sigma_{i+1} - sigma_i)`` and the pseudo-Huber ``d`` of
    ``c = huber_c`` (default :func:`ict_huber_constant`). No EMA teacher: pass ``target =
    context.detached``."""
    x0 = _check_x0(x0)
    _check_num_levels(num_levels, max_levels)
    huber_c = ict_huber_constant(x0.shape[1:]) if huber_c is None else huber_c
    index_key, noise_key = jax.random.split(key)
    logits = ict_level_logits(
        num_levels, max_levels, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho,
        p_mean=p_mean, p_std=p_std,
    )
    index = jax.random.categorical(index_key, logits, shape=(x0.shape[0],))
    sigma_high, sigma_low = (
        curricula.karras_level(
            i, num_levels, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho
        ).astype(x0.dtype)
        for i in (index, index + 1)
    )
    noise = jax.random.normal(noise_key, x0.shape, x0.dtype)
    x_high = x0 + expand(sigma_high, x0) * noise
    x_low = x0 + expand(sigma_low, x0) * noise
    loss = _pair_loss(
        student, target, x_high, sigma_high, x_low, sigma_low, sigma_min, cond,
        lambda a, b: pseudo_huber(a, b, huber_c),
    )
    return loss / (sigma_high - sigma_low)


def ect_loss(
    student, x0, key, *, target, stage, p_mean=-1.1, p_std=2.0, q=2.0, k=8.0, b=1.0, c=0.0,
    cond=None,
):
    """Easy consistency tuning (Geng et al. 2024, "Consistency models made easy", eq. 9-11 and
    locuslab/ect ``ECMLoss``): ``t ~ LogNormal(P_mean, P_std)``, ``r = curricula.ect_r(t,
    stage)``, shared noise, loss ``d(f_theta(x0 + t z, t), sg f(x0 + r z, r)) / (t - r)`` with
    ``f(x, s) = flow_map(x, s, 0)``, ``f(., 0) = x0`` at ``r = 0`` (the boundary) and the
    pseudo-Huber ``d`` of ``c`` (``c = 0``: the Euclidean norm, ECT's default). Start ``student``
    from a pretrained denoiser: a ``ConsistencyModel(network, sigma_min=0.0)`` is EDM's
    preconditioning exactly. ``target = context.detached``; ``stage`` from
    :func:`curricula.ect_stage` of ``context.step``."""
    x0 = _check_x0(x0)
    time_key, noise_key = jax.random.split(key)
    batch = x0.shape[0]
    t = jnp.exp(p_mean + p_std * jax.random.normal(time_key, (batch,), x0.dtype))
    r = curricula.ect_r(t, stage, q=q, k=k, b=b).astype(x0.dtype)
    noise = jax.random.normal(noise_key, x0.shape, x0.dtype)
    x_t = x0 + expand(t, x0) * noise
    r_positive = r > 0
    r_safe = jnp.where(r_positive, r, t)
    x_r = x0 + expand(r_safe, x0) * noise
    estimate = student(x_t, t, 0.0, cond)
    at_r = jax.lax.stop_gradient(target(x_r, r_safe, 0.0, cond))
    reference = jnp.where(expand(r_positive, x0), at_r, x0)
    return pseudo_huber(estimate, reference, c) / (t - r)
