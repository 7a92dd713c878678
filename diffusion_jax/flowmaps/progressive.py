"""Progressive distillation (Salimans & Ho 2022): a student denoiser learns to take, in one DDIM
step, the two DDIM steps of its teacher; repeated, it halves the number of sampling steps.

Written in the library's VE frame (``x = z / alpha``, ``s = sigma / alpha``), where DDIM is the
Euler step ``x_next = D + (s_next / s)(x - D)`` and Alg. 2's target ``x~ = (z'' - (sigma'' /
sigma) z) / (alpha'' - (sigma'' / sigma) alpha)`` becomes ``x~ = (x'' - (s'' / s) x) / (1 - s'' /
s)``: the same value (divide numerator and denominator by ``alpha''``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffusion_jax.flowmaps.base import expand
from diffusion_jax.samplers.steps import ddim_step

__all__ = ["progressive_target", "progressive_distillation_loss", "student_sigmas"]


def progressive_target(x, sigma, x_to, sigma_to):
    """``x~ = (x_to - (s_to / s) x) / (1 - s_to / s)``: the denoiser output with which ONE DDIM
    step from ``(x, sigma)`` lands exactly on ``x_to`` at ``sigma_to`` (Salimans & Ho 2022, Alg.
    2, in the VE frame)."""
    ratio = expand(sigma_to / sigma, x)
    return (x_to - ratio * x) / (1.0 - ratio)


def student_sigmas(teacher_sigmas):
    """The student's grid: every second level of the teacher's (``2N + 1`` levels -> ``N + 1``)."""
    teacher_sigmas = jnp.asarray(teacher_sigmas)
    if teacher_sigmas.ndim != 1 or teacher_sigmas.shape[0] % 2 != 1 or teacher_sigmas.shape[0] < 3:
        raise ValueError(
            "the teacher grid needs an odd number 2N + 1 >= 3 of levels (2N steps); got shape "
            f"{teacher_sigmas.shape}"
        )
    return teacher_sigmas[::2]


def progressive_distillation_loss(student, x0, key, *, teacher, teacher_sigmas, cond=None):
    """Progressive distillation (Salimans & Ho 2022, Alg. 2): draw a student step ``i`` of the
    grid ``s = teacher_sigmas[2i] > s' = [2i + 1] > s'' = [2i + 2]`` (``teacher_sigmas``: the
    teacher's ``2N`` steps, descending, e.g. ``karras_sigmas(2N)``), ``x = x0 + s eps``, take two
    teacher DDIM steps ``x -> x' -> x''`` and return ``w ||student(x, s) - sg x~||^2`` (mean over
    data axes) with :func:`progressive_target` ``x~`` and the truncated-SNR weight ``w = max(SNR,
    1) = max(1 / s^2, 1)`` (Sec. 4, "truncated SNR"; ``max(||x - x^||^2, ||eps - eps^||^2)``).
    ``student`` and ``teacher`` are denoisers ``D(x, sigma, cond)``: in the train step,
    ``context.frozen`` (the previous round's student) is the teacher."""
    x0 = jnp.asarray(x0)
    if x0.ndim < 2:
        raise ValueError(f"x0 must have a batch axis and data axes; got shape {x0.shape}")
    teacher_sigmas = jnp.asarray(teacher_sigmas, x0.dtype)
    num_student_steps = student_sigmas(teacher_sigmas).shape[0] - 1
    step_key, noise_key = jax.random.split(key)
    batch = x0.shape[0]
    step = jax.random.randint(step_key, (batch,), 0, num_student_steps)
    sigma, sigma_mid, sigma_to = (teacher_sigmas[2 * step + j] for j in range(3))
    x = x0 + expand(sigma, x0) * jax.random.normal(noise_key, x0.shape, x0.dtype)
    x_mid = ddim_step(teacher, x, sigma, sigma_mid, cond=cond)
    x_to = ddim_step(teacher, x_mid, sigma_mid, sigma_to, cond=cond)
    target = jax.lax.stop_gradient(progressive_target(x, sigma, x_to, sigma_to))
    weight = jnp.maximum(1.0 / jnp.square(sigma), 1.0)
    error = jnp.mean(jnp.square(student(x, sigma, cond) - target), axis=tuple(range(1, x0.ndim)))
    return weight * error
