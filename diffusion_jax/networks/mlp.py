"""Residual MLP with a noise-level embedding, for low-dimensional (toy 2-D) data."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from diffusion_jax.networks import layers
from diffusion_jax.networks.conditioning import NoiseConditioning

__all__ = ["MLP"]


class ResidualFiLMBlock(nnx.Module):
    """``h + W2 silu(W1 silu(FiLM(LN(h), emb)))`` with FiLM scale/shift from the conditioning
    vector (Perez et al. 2018, FiLM; pre-activation residual block, He et al. 2016)."""

    def __init__(self, hidden_dim, emb_dim, *, dtype=None, rngs):
        self.norm = layers.layer_norm(hidden_dim, affine=False, dtype=dtype, rngs=rngs)
        self.film = layers.linear(emb_dim, 2 * hidden_dim, dtype=dtype, rngs=rngs)
        self.linear_1 = layers.linear(hidden_dim, hidden_dim, dtype=dtype, rngs=rngs)
        self.linear_2 = layers.linear(hidden_dim, hidden_dim, dtype=dtype, rngs=rngs)

    def __call__(self, h, emb):
        scale, shift = jnp.split(self.film(jax.nn.silu(emb)), 2, axis=-1)
        y = self.norm(h) * (1.0 + scale) + shift
        y = self.linear_1(jax.nn.silu(y))
        y = self.linear_2(jax.nn.silu(y))
        return h + y


class MLP(nnx.Module):
    """Residual FiLM MLP ``F(x, c_noise, cond)`` for data of shape ``(batch, data_dim)``.

    Input projection, ``num_layers`` residual blocks modulated by the noise embedding (Fourier,
    Song et al. 2021, or positional, Vaswani et al. 2017) plus an optional class embedding with a
    null class ``num_classes`` (Ho & Salimans 2022), then a zero-initialised output layer so that a
    preconditioned denoiser starts at ``D(x) = c_skip x`` (Karras et al. 2022, eq. 7).
    The network knows nothing of sigma: ``c_noise`` is whatever the preconditioning provides.
    With ``two_time=True`` it is ``F(x, c_noise, cond, c_noise_to)`` with a second time input
    embedded alongside the first (:class:`~diffusion_jax.networks.NoiseConditioning`; flow maps).
    """

    def __init__(
        self,
        data_dim: int,
        *,
        hidden_dim: int = 256,
        num_layers: int = 4,
        embedding_dim: int = 64,
        embedding: str = "fourier",
        fourier_scale: float = 16.0,
        num_classes: int | None = None,
        two_time: bool = False,
        dtype=None,
        rngs: nnx.Rngs,
    ):
        for name, value in (("data_dim", data_dim), ("hidden_dim", hidden_dim),
                            ("num_layers", num_layers), ("embedding_dim", embedding_dim)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int; got {value!r}")
        self.data_dim = data_dim
        self.conditioning = NoiseConditioning(
            embedding_dim, hidden_dim, embedding=embedding, fourier_scale=fourier_scale,
            num_classes=num_classes, two_time=two_time, dtype=dtype, rngs=rngs,
        )
        self.input_layer = layers.linear(data_dim, hidden_dim, dtype=dtype, rngs=rngs)
        self.blocks = nnx.List(
            [ResidualFiLMBlock(hidden_dim, hidden_dim, dtype=dtype, rngs=rngs)
             for _ in range(num_layers)]
        )
        self.output_norm = layers.layer_norm(hidden_dim, dtype=dtype, rngs=rngs)
        self.output_layer = layers.linear(hidden_dim, data_dim, zero_init=True, dtype=dtype,
                                          rngs=rngs)

    def __call__(self, x, c_noise, cond=None, c_noise_to=None):
        """``x (B, data_dim)``, ``c_noise`` (and ``c_noise_to`` when ``two_time``) scalar or
        ``(B,)``, ``cond`` ``(B,)`` int or None."""
        if x.ndim != 2 or x.shape[1] != self.data_dim:
            raise ValueError(f"x must have shape (batch, {self.data_dim}); got {x.shape}")
        emb = self.conditioning(c_noise, cond, x.shape[0], c_noise_to)
        h = self.input_layer(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.output_layer(jax.nn.silu(self.output_norm(h))).astype(x.dtype)
