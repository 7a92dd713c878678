"""Noise-level embeddings: map one float per example to a feature vector.

The networks know nothing of sigma semantics; they embed whatever ``c_noise`` the preconditioning
hands them (``ln(sigma)/4`` for EDM, ``999 t`` for score_sde's VP, ...).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from flax import nnx

from diffusion_jax.networks.init import chunked_normal

__all__ = ["FourierEmbedding", "PositionalEmbedding", "as_noise_batch"]


def noise_dtype(c_noise):
    """float32, or float64 for a float64 array (x64 runs keep full precision, e.g. for
    finite-difference checks of a network's time derivative)."""
    return jnp.float64 if getattr(c_noise, "dtype", None) == jnp.float64 else jnp.float32


def as_noise_batch(c_noise, batch_size, dtype=None):
    """Broadcast a scalar or ``(batch,)`` noise input to shape ``(batch,)``; else ``ValueError``.
    ``dtype=None``: :func:`noise_dtype`."""
    c_noise = jnp.asarray(c_noise, noise_dtype(c_noise) if dtype is None else dtype)
    if c_noise.ndim == 0:
        return jnp.broadcast_to(c_noise, (batch_size,))
    if c_noise.shape != (batch_size,):
        raise ValueError(
            f"c_noise must be a scalar or have shape (batch,) = ({batch_size},); "
            f"got {c_noise.shape}"
        )
    return c_noise


def _check_even(dim, name):
    if dim <= 0 or dim % 2:
        raise ValueError(f"{name} embedding dimension must be a positive even integer; got {dim}")


class FourierEmbedding(nnx.Module):
    """Gaussian random Fourier features ``[sin(2 pi w c), cos(2 pi w c)]`` with fixed
    ``w ~ N(0, scale^2)`` (Tancik et al. 2020; Song et al. 2021, "score SDE", App. H.1,
    ``GaussianFourierProjection``). The frequencies are not trained (stored as ``nnx.Variable``,
    not ``nnx.Param``), as in the reference networks.
    """

    def __init__(self, dim: int, scale: float = 16.0, *, rngs: nnx.Rngs):
        _check_even(dim, "Fourier")
        self.dim = dim
        self.frequencies = nnx.Variable(chunked_normal(rngs.params(), (dim // 2,), std=scale))

    def __call__(self, c_noise):
        """``c_noise (batch,)`` -> ``(batch, dim)``."""
        angles = 2.0 * math.pi * jnp.asarray(c_noise, noise_dtype(c_noise))[:, None]
        angles = angles * self.frequencies[...][None, :]
        return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class PositionalEmbedding(nnx.Module):
    """Sinusoidal embedding ``[cos(c w_i), sin(c w_i)]``, ``w_i = max_positions^(-i/(dim/2))``
    (Vaswani et al. 2017, Sec. 3.5; Ho et al. 2020, DDPM ``get_timestep_embedding``).
    Parameter-free; works for non-integer ``c_noise``.
    """

    def __init__(self, dim: int, max_positions: float = 10000.0):
        _check_even(dim, "positional")
        self.dim = dim
        self.max_positions = float(max_positions)

    def __call__(self, c_noise):
        """``c_noise (batch,)`` -> ``(batch, dim)``."""
        half = self.dim // 2
        frequencies = jnp.exp(-math.log(self.max_positions) * jnp.arange(half) / half)
        angles = jnp.asarray(c_noise, noise_dtype(c_noise))[:, None] * frequencies[None, :]
        return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)
