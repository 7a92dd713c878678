"""Discretisation curricula of consistency training and the (t, r) schedule of ECT.

All functions take the training ``step`` as a (possibly traced) integer, so a loss inside the
jitted train step reads its curriculum from ``LossContext.step``; the number of levels is then a
traced integer and the levels come from :func:`diffusion_jax.samplers.grids.karras_interpolate`.
Concrete bad arguments give one-line ``ValueError``\\s.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from diffusion_jax.samplers.grids import karras_interpolate

__all__ = [
    "ct_num_levels",
    "ct_ema_decay",
    "ict_num_levels",
    "ict_steps_per_stage",
    "karras_level",
    "ect_stage",
    "ect_r",
]


def _check_step_and_total(step, total_steps):
    if not isinstance(total_steps, int) or isinstance(total_steps, bool) or total_steps < 1:
        raise ValueError(f"total_steps must be a positive int; got {total_steps!r}")
    if not isinstance(step, jax.core.Tracer):
        try:
            value = int(step)
        except (TypeError, ValueError):
            raise ValueError(f"step must be an integer; got {step!r}") from None
        if value < 0:
            raise ValueError(f"step must be >= 0; got {value}")


def _check_levels(s0, s1, smallest):
    if not (isinstance(s0, int) and isinstance(s1, int)) or isinstance(s0, bool):
        raise ValueError(f"s0 and s1 must be ints; got s0={s0!r}, s1={s1!r}")
    if s0 < smallest or s1 < s0:
        raise ValueError(
            f"the curriculum never reaches two levels (one step): need {smallest} <= s0 <= s1; "
            f"got s0={s0}, s1={s1}"
        )


def ct_num_levels(step, *, total_steps, s0=2, s1=150):
    """``N(k) = ceil(sqrt(k / K ((s1 + 1)^2 - s0^2) + s0^2) - 1) + 1`` levels at step ``k`` of
    ``K = total_steps`` (Song et al. 2023, App. C, consistency training; as in
    openai/consistency_models, ``scale_mode="progressive"``): ``N(0) = s0``, ``N(K) = s1 + 1``
    (2 and 151 for the paper's CIFAR-10 ``s0 = 2``, ``s1 = 150``). Returns int32."""
    _check_step_and_total(step, total_steps)
    _check_levels(s0, s1, 2)
    fraction = jnp.asarray(step, jnp.float32) / total_steps
    root = jnp.sqrt(fraction * ((s1 + 1) ** 2 - s0**2) + s0**2)
    return (jnp.maximum(jnp.ceil(root - 1.0), 1.0) + 1.0).astype(jnp.int32)


def ct_ema_decay(step, *, total_steps, mu0=0.9, s0=2, s1=150):
    """Target-network EMA decay ``mu(k) = exp(s0 ln(mu0) / (N(k) - 1))`` of consistency training.

    We follow the RELEASED CODE (openai/consistency_models, ``target_ema_mode="adaptive"``:
    ``c = -ln(mu0) s0``, ``mu = exp(-c / (N(k) - 1))``), which gives ``mu(0) = mu0^2 = 0.81`` for
    ``mu0 = 0.9``, ``s0 = 2``; the paper's App. C writes ``N(k)`` in the denominator, which would
    give ``mu(0) = mu0``. The paper's experiments ran the code. Returns float32."""
    if not 0.0 < mu0 < 1.0:
        raise ValueError(f"mu0 must be in (0, 1); got {mu0}")
    num_levels = ct_num_levels(step, total_steps=total_steps, s0=s0, s1=s1)
    return jnp.exp(s0 * math.log(mu0) / (num_levels - 1).astype(jnp.float32))


def ict_steps_per_stage(total_steps, *, s0=10, s1=1280):
    """``K' = floor(K / (log2 floor(s1 / s0) + 1))``: training steps per doubling stage of
    improved consistency training (Song & Dhariwal 2023, eq. 9)."""
    _check_step_and_total(0, total_steps)
    _check_levels(s0, s1, 1)
    per_stage = math.floor(total_steps / (math.log2(math.floor(s1 / s0)) + 1))
    if per_stage < 1:
        raise ValueError(
            f"total_steps={total_steps} is shorter than the "
            f"{math.floor(math.log2(s1 // s0)) + 1} stages of the curriculum"
        )
    return per_stage


def ict_num_levels(step, *, total_steps, s0=10, s1=1280):
    """``N(k) = min(s0 2^floor(k / K'), s1) + 1`` levels (Song & Dhariwal 2023, eq. 9, the
    exponential curriculum; :func:`ict_steps_per_stage` for ``K'``): with ``s0 = 10``,
    ``s1 = 1280`` the stages are 11, 21, 41, 81, 161, 321, 641, 1281. Returns int32."""
    _check_step_and_total(step, total_steps)
    per_stage = ict_steps_per_stage(total_steps, s0=s0, s1=s1)
    stage = jnp.asarray(step, jnp.int32) // per_stage
    doubled = s0 * jnp.exp2(jnp.minimum(stage, 30).astype(jnp.float32))
    return (jnp.minimum(doubled, s1) + 1).astype(jnp.int32)


def karras_level(index, num_levels, *, sigma_min=0.002, sigma_max=80.0, rho=7.0):
    """Level ``index`` (0 = ``sigma_max``, ``num_levels - 1`` = ``sigma_min``) of a Karras grid of
    a traced number of levels (Karras et al. 2022, eq. 5; the grid of consistency training)."""
    fraction = jnp.asarray(index, jnp.float32) / (jnp.asarray(num_levels, jnp.float32) - 1.0)
    return karras_interpolate(fraction, sigma_min, sigma_max, rho)


def ect_stage(step, *, steps_per_stage):
    """``floor(step / steps_per_stage)``: the stage of ECT's halving schedule (Geng et al. 2024,
    "Consistency models made easy", Sec. 3; locuslab/ect doubles every ``--double`` ticks)."""
    if not isinstance(steps_per_stage, int) or steps_per_stage < 1:
        raise ValueError(f"steps_per_stage must be a positive int; got {steps_per_stage!r}")
    return jnp.asarray(step, jnp.int32) // steps_per_stage


def ect_r(t, stage, *, q=2.0, k=8.0, b=1.0):
    """ECT's mapping ``r = max(t (1 - q^-(stage + 1) (1 + k sigmoid(-b t))), 0)`` (Geng et al.
    2024, eq. 11 ff., the sigmoid ``n(t)`` with the released defaults ``q = 2``, ``k = 8``,
    ``b = 1``): ``t - r`` halves every stage, and small ``t`` map to ``r = 0`` (the data)."""
    if not q > 1.0:
        raise ValueError(f"q must be > 1 (the factor by which t - r shrinks); got {q}")
    t = jnp.asarray(t)
    decay = jnp.asarray(q, t.dtype) ** -(jnp.asarray(stage, t.dtype) + 1.0)
    return jnp.maximum(t * (1.0 - decay * (1.0 + k * jax.nn.sigmoid(-b * t))), 0.0)
