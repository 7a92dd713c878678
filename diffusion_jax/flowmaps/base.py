"""The flow-map contract and the teacher flow map of any denoiser plus any deterministic sampler.

A *flow map* is any callable or pytree ``flow_map(x, sigma, sigma_to, cond=None) -> x_to`` in
the library's VE frame (``x = x0 + sigma * eps``, the frame of every denoiser ``D(x, sigma,
cond)``): the map of the probability-flow ODE ``dx/dsigma = (x - D(x, sigma)) / sigma`` (Karras
et al. 2022, eq. 4) from noise level ``sigma`` to ``sigma_to``, with ``0 <= sigma_to <= sigma``.
``x`` is batched ``(batch, ...)``; ``sigma`` and ``sigma_to`` are scalars or ``(batch,)``. The
map to 0 is the ODE's endpoint, not the posterior mean ``D(x, sigma)``. Boyer et al. / Sabour et
al. 2025 ("flow maps"), Kim et al. 2023 (CTM, "anytime-to-anytime") and Song et al. 2023
(consistency models: the map to ``sigma_min``) are its parameterisations.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import callables, samplers
from diffusion_jax.processes import _broadcast_like
from diffusion_jax.pytrees import frozen_pytree
from diffusion_jax.samplers.grids import karras_sigmas

__all__ = ["check_times", "per_example", "expand", "denoiser_from_flow_map", "TeacherFlowMap"]

# TeacherFlowMap's lowest level, relative to sigma, before its step to sigma_to = 0.
_FLOOR = 1e-4


def _concrete(value):
    return not isinstance(value, jax.core.Tracer)


def per_example(value, x, name="sigma"):
    """``value`` (a scalar or ``(batch,)``) broadcast to ``(batch,)`` in ``x``'s dtype; a one-line
    ``ValueError`` for any other shape."""
    value = jnp.asarray(value)
    if value.ndim > 1 or (value.ndim == 1 and value.shape[0] != x.shape[0]):
        raise ValueError(
            f"{name} must be a scalar or have shape (batch,) = ({x.shape[0]},); got {value.shape}"
        )
    dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.result_type(float)
    return jnp.broadcast_to(value.astype(dtype), x.shape[:1])


def expand(coefficient, x):
    """Broadcast a per-example coefficient ``(batch,)`` (or a scalar) against ``x``."""
    return _broadcast_like(coefficient, x)


def check_times(sigma, sigma_to):
    """Raise a one-line ``ValueError`` unless concrete times satisfy ``0 <= sigma_to <= sigma <
    inf`` elementwise (traced values pass unchecked); return both as arrays."""
    sigma, sigma_to = jnp.asarray(sigma), jnp.asarray(sigma_to)
    if not (_concrete(sigma) and _concrete(sigma_to)):
        return sigma, sigma_to
    high, low = np.asarray(sigma, np.float64), np.asarray(sigma_to, np.float64)
    if not (np.all(np.isfinite(high)) and np.all(np.isfinite(low))):
        raise ValueError(f"sigma and sigma_to must be finite; got sigma={high}, sigma_to={low}")
    if np.any(low < 0.0):
        raise ValueError(f"sigma_to must be >= 0; got {low}")
    if np.any(low > high):
        raise ValueError(
            f"a flow map goes from sigma to a lower sigma_to <= sigma; got sigma={high}, "
            f"sigma_to={low}"
        )
    return sigma, sigma_to


def _check_batched(x):
    x = jnp.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"x must have a batch axis and at least one data axis; got {x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"x must be a floating-point array; got dtype {x.dtype}")
    return x


def denoiser_from_flow_map(flow_map):
    """The denoiser a flow map implies: ``D(x, sigma) = x - sigma d/ds flow_map(x, sigma, s)`` at
    ``s = sigma`` (the PF-ODE ``dx/dsigma = (x - D) / sigma`` read off at the start of the jump;
    one ``jax.jvp``). For CTM's ``G = (s/t) x + (1 - s/t) g`` it is ``g(x, t, t)`` (Kim et al.
    2023, Sec. 4, the DSM term)."""

    def denoiser(x, sigma, cond=None):
        x = _check_batched(x)
        sigma = per_example(sigma, x)
        _, velocity = jax.jvp(
            lambda sigma_to: flow_map(x, sigma, sigma_to, cond), (sigma,), (jnp.ones_like(sigma),)
        )
        return x - expand(sigma, x) * velocity

    return denoiser


@frozen_pytree(meta=("sampler", "num_steps", "grid", "options"))
class TeacherFlowMap:
    """The flow map of ``denoiser`` under a deterministic sampler of the library: the sampler
    ``samplers.get(sampler)`` run on ``num_steps`` steps of ``grid`` from ``sigma`` to
    ``sigma_to`` (how a teacher enters distillation; Salimans & Ho 2022 and Song et al. 2023,
    Alg. 2, take one such step with DDIM / Euler / Heun).

    ``grid(num_steps, sigma_min, sigma_max) -> sigmas`` (descending, ending in 0) is any grid of
    :mod:`diffusion_jax.samplers.grids` (default :func:`karras_sigmas`, rho 7); the map evaluates
    it with ``num_steps + 1`` levels from ``sigma`` down to ``sigma_to`` and reads the sampler's
    state at ``sigma_to`` from its trajectory (an unused final step to 0 keeps the grid a valid
    sampler grid; under ``jit`` its evaluation is dead code, so a call costs the sampler's NFE for
    ``num_steps`` steps ending above 0, e.g. 1 for Euler and 2 for Heun with one step).
    ``sigma_to = 0`` is reached as every sampler of the library reaches it: the grid ends at
    ``1e-4 sigma`` and a first-order step ``x0 = D(x, 1e-4 sigma)`` follows (local error
    ``O(1e-8 sigma^2)``; the evaluation is skipped by a ``lax.cond`` when no ``sigma_to`` is 0).
    ``options`` are the sampler's keyword options (e.g. ``{"order": 2}``). Per-example times
    ``(batch,)`` run one solve per example (``vmap``, the denoiser's arrays unmapped: a dropout
    network then draws one mask for the whole batch).
    """

    denoiser: Any
    sampler: str = "heun"
    num_steps: int = 1
    grid: Any = karras_sigmas
    options: Any = ()

    def __post_init__(self):
        if isinstance(self.options, dict):
            object.__setattr__(self, "options", tuple(sorted(self.options.items())))
        if not isinstance(self.num_steps, int) or isinstance(self.num_steps, bool) or (
            self.num_steps < 1
        ):
            raise ValueError(f"num_steps must be a positive int; got {self.num_steps!r}")
        info = samplers.get(self.sampler)
        if info.needs_key:
            raise ValueError(
                f"a teacher flow map needs a deterministic sampler; {self.sampler!r} draws noise"
            )
        unknown = sorted(set(dict(self.options)) - set(info.options))
        if unknown:
            raise ValueError(f"sampler {self.sampler!r} has no options {unknown}")

    def __call__(self, x, sigma, sigma_to, cond=None):
        x = _check_batched(x)
        sigma, sigma_to = check_times(sigma, sigma_to)
        # The denoiser's arrays travel as explicit arguments of vmap / cond (not closures), so an
        # NNX network in training mode may update its RNG counters inside those traces.
        arrays, static = callables.split(self.denoiser)
        if sigma.ndim == 0 and sigma_to.ndim == 0:
            sigma, sigma_to = sigma.astype(x.dtype), sigma_to.astype(x.dtype)
            x_low = self._solve(x, sigma, sigma_to, cond)
        else:
            sigma, sigma_to = per_example(sigma, x), per_example(sigma_to, x, "sigma_to")

            def one(arrays, x_i, sigma_i, sigma_to_i, cond_i):
                flow_map = dataclasses.replace(self, denoiser=callables.merge(arrays, static))
                cond_i = jax.tree_util.tree_map(lambda c: c[None], cond_i)
                return flow_map._solve(x_i[None], sigma_i, sigma_to_i, cond_i)[0]

            cond_axis = None if cond is None else 0
            x_low = jax.vmap(one, in_axes=(None, 0, 0, 0, cond_axis))(
                arrays, x, sigma, sigma_to, cond
            )

        def final_step(arrays, x_low):
            """The samplers' first-order step to 0, ``D(x, floor)``, where ``sigma_to = 0``."""
            denoiser = callables.merge(arrays, static)
            floor = per_example(_FLOOR * jnp.where(sigma > 0, sigma, 1.0), x)
            x0 = jnp.asarray(denoiser(x_low, floor, cond)).astype(x.dtype)
            return jnp.where(expand(per_example(keep, x), x), x_low, x0)

        keep = (sigma_to > 0) | (sigma_to >= sigma)  # above 0, or the identity
        # A real branch (unbatched predicate): no evaluation when every sigma_to is above 0.
        return jax.lax.cond(jnp.all(keep), lambda arrays, x_low: x_low, final_step, arrays, x_low)

    def _solve(self, x, sigma, sigma_to, cond):
        """The state at ``sigma_to`` (at ``_FLOOR * sigma`` for ``sigma_to = 0``) for scalar
        times; ``x`` itself at ``sigma_to = sigma``."""
        same = sigma_to >= sigma
        sigma_safe = jnp.where(sigma > 0, sigma, 1.0)
        low = jnp.where(sigma_to > 0, sigma_to, _FLOOR * sigma_safe)
        low = jnp.where(same, 0.5 * sigma_safe, low)
        sigmas = self.grid(self.num_steps + 1, sigma_min=low, sigma_max=sigma_safe)
        fn = samplers.get(self.sampler).fn
        with warnings.catch_warnings():  # x / sigma is the state, not unit noise
            warnings.filterwarnings("ignore", message="noise has RMS")
            _, trajectory = fn(
                self.denoiser, x / sigma_safe, sigmas, key=None, cond=cond,
                return_trajectory=True, **dict(self.options),
            )
        # The sampler's own final step to 0 is unused, so XLA removes its evaluation.
        return jnp.where(same, x, trajectory[self.num_steps])
