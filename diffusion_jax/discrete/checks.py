"""Input checks shared by the discrete family: one-line ``ValueError`` s for float tokens,
tokens outside ``[0, num_states)``, a network whose class count differs from the process's, and
a sampling dtype the runtime cannot honour."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["check_tokens", "model_logits", "resolve_dtype"]


def resolve_dtype(dtype):
    """The categorical-sampling dtype: ``None`` -> float64 if ``jax_enable_x64`` else float32;
    float64 without x64 is an error (JAX would silently use float32)."""
    if dtype is None:
        return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    dtype = jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"sampling dtype must be a float type; got {dtype}")
    if dtype == jnp.float64 and not jax.config.jax_enable_x64:
        raise ValueError("sampling dtype float64 needs jax_enable_x64 (jax.config.update"
                         "('jax_enable_x64', True)); otherwise use float32")
    return dtype


def check_tokens(tokens, num_states, name="tokens"):
    """``tokens`` as an int32 array; ``ValueError`` for a float/bool dtype and, when the values are
    concrete (not traced), for any value outside ``[0, num_states)``."""
    dtype = np.asarray(tokens).dtype if not isinstance(tokens, jax.Array) else tokens.dtype
    if not jnp.issubdtype(dtype, jnp.integer):
        raise ValueError(f"{name} must be integer class indices; got dtype {dtype} (quantise "
                         "images to levels first, e.g. discrete.data.load_digits_tokens)")
    if not isinstance(tokens, jax.core.Tracer):
        values = np.asarray(tokens)
        if values.size and (values.min() < 0 or values.max() >= num_states):
            raise ValueError(f"{name} must lie in [0, {num_states}); got values in "
                             f"[{values.min()}, {values.max()}]")
    return jnp.asarray(tokens, jnp.int32)


def model_logits(network, tokens, t, cond, num_classes):
    """``network(tokens, t, cond)`` with its last axis checked against ``num_classes``."""
    logits = network(tokens, t, cond)
    if logits.shape != tokens.shape + (num_classes,):
        raise ValueError(f"network returned logits of shape {logits.shape}; expected "
                         f"{tokens.shape + (num_classes,)} (K = {num_classes} classes per token)")
    return logits
