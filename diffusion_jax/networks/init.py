"""Parameter initialisers that compile once, whatever the parameter shapes.

Eager initialisation with ``jax.random`` compiles one XLA program per distinct parameter shape
(about a second each on a 2-core CPU, so ~15 s for a small U-Net). Here every Gaussian tensor is
assembled from fixed-size chunks ``normal(fold_in(key, i), (CHUNK,))`` drawn by one compiled
function, and constants come from NumPy; under tracing (``nnx.eval_shape``, a jitted sharded
init) the same chunks are drawn with traced ops, so eager and traced initialisation agree bit for
bit. The distributions are the usual ones: LeCun normal ``N(0, 1/fan_in)`` (LeCun et al. 1998,
"Efficient BackProp", Sec. 4.6), untruncated.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["CHUNK", "chunked_normal", "lecun_normal", "normal", "zeros", "ones"]

CHUNK = 4096


@jax.jit
def _normal_chunk(key, index):
    return jax.random.normal(jax.random.fold_in(key, index), (CHUNK,), jnp.float32)


def _is_traced(key):
    return isinstance(key, jax.core.Tracer)


def chunked_normal(key, shape, dtype=jnp.float32, std=1.0):
    """``std * N(0, 1)`` of ``shape`` built from ``CHUNK``-sized draws of ``fold_in(key, i)``."""
    size = math.prod(shape)
    num_chunks = max(1, -(-size // CHUNK))
    indices = [jnp.uint32(i) for i in range(num_chunks)]
    if _is_traced(key):
        flat = jnp.concatenate([_normal_chunk(key, i) for i in indices])[:size]
        return (flat.reshape(shape) * jnp.float32(std)).astype(dtype)
    flat = np.concatenate([np.asarray(_normal_chunk(key, i)) for i in indices])[:size]
    return jnp.asarray((flat.reshape(shape) * np.float32(std)).astype(dtype))


def lecun_normal():
    """Initialiser ``N(0, 1/fan_in)``, ``fan_in`` = product of all axes but the last (linear
    kernels ``(in, out)``, conv kernels ``(k, k, in, out)``)."""

    def init(key, shape, dtype=jnp.float32):
        fan_in = math.prod(shape[:-1]) if len(shape) > 1 else shape[0]
        return chunked_normal(key, shape, dtype, 1.0 / math.sqrt(fan_in))

    return init


def normal(std):
    """Initialiser ``N(0, std^2)``."""

    def init(key, shape, dtype=jnp.float32):
        return chunked_normal(key, shape, dtype, std)

    return init


def zeros(key, shape, dtype=jnp.float32):
    """Zeros from NumPy (no per-shape compilation)."""
    del key
    return jnp.asarray(np.zeros(shape, np.dtype(jnp.dtype(dtype))))


def ones(key, shape, dtype=jnp.float32):
    """Ones from NumPy (no per-shape compilation)."""
    del key
    return jnp.asarray(np.ones(shape, np.dtype(jnp.dtype(dtype))))
