"""Shared pieces of every sampler: input validation, the denoiser call and the scan driver.

Validation follows the contract of :mod:`diffusion_jax.samplers`: ``noise`` has a batch axis,
``sigmas`` is a 1-D descending grid ending in 0. Concrete values are checked eagerly; traced values
(inside ``jit``) cannot be inspected and only their shapes are checked.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.processes import _broadcast_like


def check_inputs(noise, sigmas):
    """Validate ``noise`` and ``sigmas``; return them as arrays of one floating dtype."""
    noise = jnp.asarray(noise)
    if noise.ndim < 2:
        raise ValueError(
            f"noise must have a batch axis and at least one data axis; got shape {noise.shape}"
        )
    if not jnp.issubdtype(noise.dtype, jnp.floating):
        raise ValueError(f"noise must be a floating-point array; got dtype {noise.dtype}")
    sigmas = jnp.asarray(sigmas)
    if sigmas.ndim != 1:
        raise ValueError(f"sigmas must be a 1-D grid; got shape {sigmas.shape}")
    if sigmas.shape[0] < 2:
        raise ValueError(f"sigmas needs at least 2 values (one step); got {sigmas.shape[0]}")
    check_grid_values(sigmas)
    return noise, sigmas.astype(noise.dtype)


def check_grid_values(sigmas):
    """Raise ``ValueError`` for a concrete grid with NaN/inf, not ending in 0, or not descending."""
    if isinstance(sigmas, jax.core.Tracer):
        return
    values = np.asarray(sigmas, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise ValueError(f"sigmas must be finite (no NaN or inf); got {values}")
    if values[-1] != 0.0:
        raise ValueError(f"sigmas must end in 0; the last value is {values[-1]}")
    if not np.all(np.diff(values) < 0):
        raise ValueError(f"sigmas must be strictly descending; got {values}")


def check_key(key, sampler):
    """A stochastic sampler needs a typed PRNG key (``jax.random.key``)."""
    if key is None:
        raise ValueError(f"{sampler} is stochastic: pass key=jax.random.key(seed)")
    if not jnp.issubdtype(jnp.asarray(key).dtype, jax.dtypes.prng_key):
        raise ValueError(
            f"{sampler} needs a typed key from jax.random.key(seed); got dtype {jnp.asarray(key).dtype}"
        )
    return key


def check_order(order, allowed, sampler):
    """Raise ``ValueError`` unless ``order`` is one of ``allowed``."""
    if order not in allowed:
        raise ValueError(f"{sampler}: order must be one of {tuple(allowed)}; got {order!r}")
    return order


def denoise(denoiser, x, sigma, cond):
    """``x0_hat = denoiser(x, sigma, cond)`` with a shape check and ``x``'s dtype."""
    x0_hat = denoiser(x, sigma, cond)
    if x0_hat.shape != x.shape:
        raise ValueError(f"denoiser returned shape {x0_hat.shape} for input shape {x.shape}")
    return x0_hat.astype(x.dtype)


def step_noise(key, index, x):
    """Unit Gaussian noise of ``x``'s shape for step ``index`` (``fold_in(key, index)``)."""
    return jax.random.normal(jax.random.fold_in(key, index), x.shape, x.dtype)


def safe_sqrt(value):
    """``sqrt(max(value, 0))`` with a zero (not NaN) gradient at 0."""
    positive = value > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, value, 1.0)), 0.0)


def expand(coefficient, x):
    """Broadcast a scalar or per-example coefficient against ``x``."""
    return _broadcast_like(coefficient, x)


def scan_steps(step, carry, xs, get_x, return_trajectory):
    """Run ``lax.scan(step, carry, xs)``; also return the stacked states ``get_x(carry)``."""
    if return_trajectory:

        def traced_step(carry, inputs):
            carry = step(carry, inputs)
            return carry, get_x(carry)

        carry, states = jax.lax.scan(traced_step, carry, xs)
        return carry, states

    def plain_step(carry, inputs):
        return step(carry, inputs), None

    carry, _ = jax.lax.scan(plain_step, carry, xs)
    return carry, None


def finish(x0, x_start, states, final_states, return_trajectory):
    """Return ``x0`` or ``(x0, trajectory)`` with the trajectory ``(num_steps + 1, *x.shape)``."""
    if not return_trajectory:
        return x0
    pieces = [x_start[None]]
    if states is not None:
        pieces.append(states)
    pieces.extend(state[None] for state in final_states)
    return x0, jnp.concatenate(pieces, axis=0)


def interior_inputs(sigmas):
    """Per-step inputs of the steps that end above 0: ``(sigma, sigma_next, index)``."""
    num_interior = sigmas.shape[0] - 2
    return sigmas[:-2], sigmas[1:-1], jnp.arange(num_interior)


def all_inputs(sigmas):
    """Per-step inputs of every step: ``(sigma, sigma_next, index)``."""
    return sigmas[:-1], sigmas[1:], jnp.arange(sigmas.shape[0] - 1)


def run_multistep(
    step, carry, inputs, denoiser, sigmas, cond, x_start, warmup_states, return_trajectory
):
    """Scan a multistep method whose carry starts with ``x``, take the final step to 0 as
    ``D(x, sigma_{N-1})``, and assemble the trajectory (``warmup_states``: states produced before
    the scan, at most one)."""
    carry, states = scan_steps(step, carry, inputs, lambda c: c[0], return_trajectory)
    x0 = denoise(denoiser, carry[0], sigmas[-2], cond)
    if return_trajectory and warmup_states:
        states = jnp.concatenate([warmup_states[0][None], states], axis=0)
    return finish(x0, x_start, states, [x0], return_trajectory)
