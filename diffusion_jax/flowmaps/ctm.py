"""Consistency trajectory model objective (Kim et al. 2023, "Consistency Trajectory Models"):
soft consistency matching between anytime-to-anytime jumps, plus denoising score matching on the
inner network. The GAN term of the paper (its eq. 12, a StyleGAN-XL discriminator on the
generated samples) is LEFT OUT: the library has no discriminator; the loss is CTM's
``L_CTM + lambda_DSM L_DSM``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffusion_jax.flowmaps import curricula
from diffusion_jax.flowmaps.base import denoiser_from_flow_map, expand
from diffusion_jax.flowmaps.consistency import squared_l2

__all__ = ["ctm_loss"]


def _sorted_levels(key, batch, num_levels):
    """Indices ``i_t < i_u <= i_s`` of a grid counted from ``sigma_max``: ``t`` above the lowest
    level, ``s`` below ``t``, ``u`` in ``(t, s]`` (so ``s <= u < t``)."""
    key_t, key_s, key_u = jax.random.split(key, 3)
    i_t = jax.random.randint(key_t, (batch,), 0, num_levels - 1)
    i_s = jax.random.randint(key_s, (batch,), i_t + 1, num_levels)
    i_u = jax.random.randint(key_u, (batch,), i_t + 1, i_s + 1)
    return i_t, i_u, i_s


def ctm_loss(
    student, x0, key, *, target, teacher, num_levels=18, sigma_min=0.002, sigma_max=80.0,
    rho=7.0, sigma_data=0.5, dsm_weight=1.0, distance=squared_l2, denoiser=None, cond=None,
):
    """CTM's soft consistency matching plus DSM (Kim et al. 2023, eq. 9-11 and Alg. 1 without the
    GAN term): on a Karras grid of ``num_levels`` levels draw ``t > u >= s`` (uniform indices),
    ``x_t = x0 + t z``, and compare in data space, through the stop-gradient target's jump to
    ``sigma_min``,

        ``d(G_sg(G_theta(x_t, t, s), s, sigma_min), G_sg(G_sg(teacher(x_t, t, u), u, s), s,
        sigma_min))``

    (``u`` just below ``t`` is local consistency, ``s = sigma_min`` the consistency-model
    special case). DSM: ``lambda(t) ||g_theta(x_t, t, t) - x0||^2`` with EDM's weight ``(t^2 +
    sd^2) / (t sd)^2``, at an independent EDM log-normal ``t`` (``P_mean = -1.2``, ``P_std =
    1.2``); ``denoiser`` is the student's ``g(x, t, t)`` (default
    :func:`~diffusion_jax.flowmaps.base.denoiser_from_flow_map` of ``student``; pass
    ``CTMFlowMap.denoiser`` for the CTM network). ``teacher`` is any flow map (a
    ``TeacherFlowMap`` of ``context.frozen``), ``target`` the EMA flow map. Returns ``(batch,)``."""
    x0 = jnp.asarray(x0)
    if x0.ndim < 2:
        raise ValueError(f"x0 must have a batch axis and data axes; got shape {x0.shape}")
    if not isinstance(num_levels, int) or num_levels < 2:
        raise ValueError(f"num_levels must be an int >= 2; got {num_levels!r}")
    level_key, noise_key, dsm_key = jax.random.split(key, 3)
    batch = x0.shape[0]

    def level(index):
        return curricula.karras_level(
            index, num_levels, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho
        ).astype(x0.dtype)

    i_t, i_u, i_s = _sorted_levels(level_key, batch, num_levels)
    t, u, s = level(i_t), level(i_u), level(i_s)
    noise = jax.random.normal(noise_key, x0.shape, x0.dtype)
    x_t = x0 + expand(t, x0) * noise

    estimate = target(student(x_t, t, s, cond), s, sigma_min, cond)
    x_u = jax.lax.stop_gradient(teacher(x_t, t, u, cond))
    reference = jax.lax.stop_gradient(
        target(target(x_u, u, s, cond), s, sigma_min, cond)
    )
    consistency = distance(estimate, reference)

    denoise = denoiser_from_flow_map(student) if denoiser is None else denoiser
    dsm_key_sigma, dsm_key_noise = jax.random.split(dsm_key)
    sigma = jnp.exp(-1.2 + 1.2 * jax.random.normal(dsm_key_sigma, (batch,), x0.dtype))
    x_sigma = x0 + expand(sigma, x0) * jax.random.normal(dsm_key_noise, x0.shape, x0.dtype)
    weight = (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
    dsm = weight * jnp.mean(
        jnp.square(denoise(x_sigma, sigma, cond) - x0), axis=tuple(range(1, x0.ndim))
    )
    return consistency + dsm_weight * dsm
