"""Samplers of flow maps: ``sample(flow_map, noise, sigmas, *, key=None, cond=None, ...)``.

As the denoiser samplers of :mod:`diffusion_jax.samplers`: ``noise`` is UNIT Gaussian (scaled by
``sigmas[0]`` here), ``sigmas`` a descending grid ending in 0 from
:mod:`diffusion_jax.samplers.grids` whose length fixes the number of flow-map evaluations (one
per step) and whose values stay traced; the body is a ``lax.scan``, so every sampler jits, vmaps
and is reverse-differentiable. Step ``i`` draws its noise from ``fold_in(key, i)``. Descriptors
(as data, the library's :class:`~diffusion_jax.samplers.SamplerInfo`): :data:`FLOW_MAP_SAMPLERS`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.flowmaps.base import expand
from diffusion_jax.samplers._core import check_inputs, check_key, safe_sqrt, step_noise
from diffusion_jax.samplers._info import SamplerInfo, one_per_step

__all__ = ["sample_flow_map", "sample_consistency", "FLOW_MAP_SAMPLERS", "get"]


def _chain(flow_map, noise, sigmas, key, cond, land, renoise, return_trajectory):
    """``x <- flow_map(x, sigma_i, land(sigma_{i+1})) + renoise(sigma_{i+1}) z_i`` over the grid
    (no noise where ``key`` is None)."""
    x_start = noise * sigmas[0]

    def body(x, inputs):
        sigma, sigma_next, index = inputs
        x = flow_map(x, sigma, land(sigma_next), cond)
        if key is not None:
            x = x + expand(renoise(sigma_next), x) * step_noise(key, index, x)
        return x, x if return_trajectory else None

    num_steps = sigmas.shape[0] - 1
    x, states = jax.lax.scan(body, x_start, (sigmas[:-1], sigmas[1:], jnp.arange(num_steps)))
    if not return_trajectory:
        return x
    return x, jnp.concatenate([x_start[None], states], axis=0)


def _is_zero(value):
    if isinstance(value, jax.core.Tracer):
        return False
    return float(np.asarray(value)) == 0.0


def sample_flow_map(
    flow_map, noise, sigmas, *, key=None, cond=None, gamma=0.0, return_trajectory=False
):
    """CTM's gamma-sampling (Kim et al. 2023, Alg. 2) for any flow map: from ``sigma_i`` jump to
    ``sqrt(1 - gamma^2) sigma_{i+1}`` and add noise ``gamma sigma_{i+1} z`` (the VE-frame
    variance that lands the marginal at ``sigma_{i+1}``). ``gamma = 0`` (default, no key) is the
    deterministic chain ``x_{i+1} = flow_map(x_i, sigma_i, sigma_{i+1})`` (1 step: the one-step
    generator; k steps: MeanFlow / shortcut k-step sampling); ``gamma = 1`` jumps to 0 and
    re-noises, the consistency models' multistep sampler. ``gamma`` in ``[0, 1]``; a ``key``
    whenever it may be nonzero."""
    noise, sigmas = check_inputs(noise, sigmas)
    gamma = jnp.asarray(gamma, noise.dtype)
    if not isinstance(gamma, jax.core.Tracer) and not 0.0 <= float(gamma) <= 1.0:
        raise ValueError(f"gamma must be in [0, 1]; got {float(gamma)}")
    if key is None and not _is_zero(gamma):
        raise ValueError("gamma > 0 re-noises: pass key=jax.random.key(seed)")
    if key is not None:
        check_key(key, "sample_flow_map")
    keep = jnp.sqrt(1.0 - jnp.square(gamma))
    return _chain(
        flow_map, noise, sigmas, key, cond, lambda s: keep * s, lambda s: gamma * s,
        return_trajectory,
    )


def sample_consistency(
    model, noise, sigmas, *, key=None, cond=None, sigma_min=0.002, return_trajectory=False
):
    """Consistency-model sampling (Song et al. 2023, Alg. 1): ``x = f(sigma_0 noise, sigma_0)``,
    then for each later level ``sigma`` of the grid (not the final 0) ``x = f(x + sqrt(sigma^2 -
    sigma_min^2) z, sigma)``, with ``f(x, sigma) = model(x, sigma, 0)`` (for a
    :class:`~diffusion_jax.flowmaps.parameterisations.ConsistencyModel` the jump to its
    ``sigma_min``; pass ``sigma_min=0`` for maps that land on 0). One step (``sigmas = [sigma_max,
    0]``) needs no key; multistep sampling does."""
    noise, sigmas = check_inputs(noise, sigmas)
    if sigmas.shape[0] > 2:
        check_key(key, "sample_consistency (multistep)")
    elif key is not None:
        check_key(key, "sample_consistency")
    sigma_min = jnp.asarray(sigma_min, noise.dtype)
    return _chain(
        model, noise, sigmas, key, cond, jnp.zeros_like,
        lambda s: safe_sqrt(jnp.square(s) - jnp.square(sigma_min)), return_trajectory,
    )


FLOW_MAP_SAMPLERS = (
    SamplerInfo(
        "flow_map", sample_flow_map, stochastic=True, needs_key=False, order=None,
        nfe=one_per_step, options=("gamma",),
        summary="chain of flow-map jumps; gamma > 0 re-noises (gamma = 1: consistency multistep)",
        source="Kim et al. 2023 (CTM), Alg. 2",
    ),
    SamplerInfo(
        "consistency", sample_consistency, stochastic=True, needs_key=False, order=None,
        nfe=one_per_step, options=("sigma_min",),
        summary="one-step / multistep consistency sampling (jump to sigma_min, re-noise)",
        source="Song et al. 2023, Alg. 1",
    ),
)


def get(name):
    """The flow-map :class:`SamplerInfo` called ``name``; a one-line ``ValueError`` otherwise."""
    for info in FLOW_MAP_SAMPLERS:
        if info.name == name:
            return info
    known = ", ".join(info.name for info in FLOW_MAP_SAMPLERS)
    raise ValueError(f"unknown flow-map sampler {name!r}; expected one of {known}")
