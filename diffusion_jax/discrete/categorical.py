"""The categorical draw of the discrete family, in a precision that keeps the tail, and the
padding of data-class probabilities to a process's state space."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffusion_jax.discrete.checks import resolve_dtype

__all__ = ["categorical", "pad_to_states", "uniform_with_tail"]


def uniform_with_tail(key, shape, dtype):
    """Uniform draws in ``(0, 1)`` whose *relative* precision holds down to ``eps^2`` near 0:
    ``U1 + eps U2`` with ``U1, U2`` uniform on the ``eps``-grid (``eps = finfo(dtype).eps``).
    A single ``jax.random.uniform`` is a multiple of ``eps`` (``2^-23`` in float32), which caps
    the Gumbel noise at ``-log(eps) ≈ 15.9`` and so silently drops classes whose log-probability
    gap exceeds ~18 (Zheng et al. 2024, arXiv 2409.02908, on MDLM's float32 sampling)."""
    eps = jnp.finfo(dtype).eps
    coarse_key, fine_key = jax.random.split(key)
    coarse = jax.random.uniform(coarse_key, shape, dtype)
    fine = jax.random.uniform(fine_key, shape, dtype)
    value = coarse + eps * fine
    return jnp.clip(value, jnp.finfo(dtype).tiny, 1.0 - eps)


def categorical(key, logits, *, dtype=None):
    """Draw ``argmax(logits + G)`` over the last axis with Gumbel noise
    ``G = -log(-log1p(-V))`` and ``V = uniform_with_tail`` (Gumbel 1954; the Gumbel-max trick).

    ``dtype``: the precision of the draw; ``None`` is float64 when ``jax_enable_x64`` is on, else
    float32 (both keep classes down to probability ~1e-13 relative to the top class). Lower
    precisions (``float16``, ``bfloat16``) are accepted but truncate the tail (the tests show a
    1e-6 class vanishing). ``-inf`` logits are never drawn.
    """
    dtype = resolve_dtype(dtype)
    logits = jnp.asarray(logits).astype(dtype)
    exponential = -jnp.log1p(-uniform_with_tail(key, logits.shape, dtype))
    gumbel = -jnp.log(exponential)
    return jnp.argmax(logits + gumbel, axis=-1).astype(jnp.int32)


def pad_to_states(probs, num_states):
    """``(..., K)`` probabilities over data classes -> ``(..., num_states)`` with zero on the
    extra (mask) state when ``num_states = K + 1``."""
    missing = num_states - probs.shape[-1]
    if missing == 0:
        return probs
    return jnp.concatenate([probs, jnp.zeros(probs.shape[:-1] + (missing,), probs.dtype)], -1)
