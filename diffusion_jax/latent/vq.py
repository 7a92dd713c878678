"""Vector-quantised autoencoder (van den Oord et al. 2017, "Neural discrete representation
learning", VQ-VAE, Sec. 3.1-3.2 and eq. 3; Esser et al. 2021, taming's ``VectorQuantizer``).

The encoder's output ``z_e`` (one ``code_dim`` vector per latent pixel) is replaced by its nearest
codebook vector ``e_k``, ``k = argmin_j ||z_e - e_j||``; the decoder sees ``z_e + sg(e_k - z_e)``
(straight-through: the forward value is ``e_k``, the gradient passes to ``z_e`` unchanged). The
loss is ``rec(x, x_hat) + ||sg(z_e) - e_k||^2 + beta ||z_e - sg(e_k)||^2`` with ``beta = 0.25``.
Codebook usage is reported as the perplexity ``exp(H(p))`` of the code frequencies ``p``
(``K`` when all ``K`` codes are used equally, 1 when one code is used).

As in LDM's VQ models (Rombach et al. 2022, Sec. 3.1: "the quantization layer is absorbed by the
decoder"), :meth:`VQAutoencoder.encode` returns the *pre-quantisation* latents ``z_e`` and
:meth:`VQAutoencoder.decode` quantises before decoding, so a latent diffusion model trains on
continuous latents.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from diffusion_jax.latent.autoencoders import Decoder, Encoder, LatentGeometry
from diffusion_jax.latent.losses import reconstruction_error

__all__ = ["VectorQuantizer", "VQAutoencoder", "codebook_usage", "vq_autoencoder_loss"]


def codebook_usage(indices, num_codes):
    """``(perplexity, fraction_used)`` of integer code ``indices`` (any shape) among ``num_codes``:
    ``exp(-sum_k p_k log p_k)`` of the code frequencies ``p`` and the fraction of codes used."""
    counts = jnp.bincount(jnp.ravel(indices), length=num_codes)
    frequencies = counts / jnp.maximum(jnp.sum(counts), 1)
    entropy = -jnp.sum(jnp.where(frequencies > 0, frequencies * jnp.log(
        jnp.where(frequencies > 0, frequencies, 1.0)), 0.0))
    return jnp.exp(entropy), jnp.mean(counts > 0)


class VectorQuantizer(nnx.Module):
    """Nearest-neighbour quantiser with a ``(num_codes, code_dim)`` codebook initialised
    ``U(-1/K, 1/K)`` (the VQ-VAE reference and taming initialisation)."""

    def __init__(self, num_codes, code_dim, *, beta=0.25, rngs: nnx.Rngs):
        if num_codes < 2 or code_dim < 1:
            raise ValueError(f"need num_codes >= 2 and code_dim >= 1; got {num_codes}, {code_dim}")
        if not beta >= 0:
            raise ValueError(f"commitment weight beta must be >= 0; got {beta}")
        self.num_codes = num_codes
        self.code_dim = code_dim
        self.beta = beta
        bound = 1.0 / num_codes
        self.codebook = nnx.Param(jax.random.uniform(
            rngs.params(), (num_codes, code_dim), minval=-bound, maxval=bound))

    def indices(self, z):
        """Index of the nearest code of every vector ``z[..., :]``."""
        codebook = self.codebook[...]
        distances = (jnp.sum(z**2, axis=-1, keepdims=True) - 2.0 * z @ codebook.T
                     + jnp.sum(codebook**2, axis=-1))
        return jnp.argmin(distances, axis=-1)

    def __call__(self, z):
        """``(z_q, indices, codebook_loss, commitment_loss)``: ``z_q = z + sg(e_k - z)`` and the
        per-example mean squared errors ``||sg(z) - e_k||^2`` and ``beta ||z - sg(e_k)||^2``."""
        if z.shape[-1] != self.code_dim:
            raise ValueError(f"latents must have last axis {self.code_dim}; got {z.shape}")
        indices = self.indices(z)
        quantized = jnp.take(self.codebook[...], indices, axis=0).astype(z.dtype)
        axes = tuple(range(1, z.ndim))
        codebook_loss = jnp.mean((jax.lax.stop_gradient(z) - quantized) ** 2, axis=axes)
        commitment_loss = self.beta * jnp.mean((z - jax.lax.stop_gradient(quantized)) ** 2,
                                               axis=axes)
        straight_through = z + jax.lax.stop_gradient(quantized - z)
        return straight_through, indices, codebook_loss, commitment_loss


class VQAutoencoder(LatentGeometry, nnx.Module):
    """VQ-regularised autoencoder (van den Oord et al. 2017; LDM's ``VQModel``): the
    :class:`~diffusion_jax.latent.autoencoders.Encoder` / ``Decoder`` of the KL model around a
    :class:`VectorQuantizer` of ``num_codes`` codes of dimension ``latent_channels``."""

    def __init__(self, *, in_channels, latent_channels=4, num_codes=256, beta=0.25,
                 base_channels=64, channel_multipliers=(1, 2, 4), num_res_blocks=1,
                 attention=True, dropout=0.0, dtype=None, rngs: nnx.Rngs):
        architecture = {"base_channels": base_channels, "channel_multipliers":
                        tuple(channel_multipliers), "num_res_blocks": num_res_blocks,
                        "attention": attention, "dropout": dropout, "dtype": dtype, "rngs": rngs}
        self.in_channels = in_channels
        self.latent_channels = latent_channels
        self.encoder = Encoder(in_channels=in_channels, out_channels=latent_channels,
                               **architecture)
        self.quantizer = VectorQuantizer(num_codes, latent_channels, beta=beta, rngs=rngs)
        self.decoder = Decoder(latent_channels=latent_channels, out_channels=in_channels,
                               **architecture)

    def encode(self, x, key=None):
        """Pre-quantisation latents ``z_e`` (``key`` is unused: the encoder is deterministic)."""
        del key
        return self.encoder(x)

    def decode(self, z):
        """Quantise ``z`` to the codebook, then decode."""
        return self.decoder(self.quantizer(z)[0])

    def __call__(self, x):
        """``(reconstruction, indices, codebook_loss, commitment_loss)``."""
        quantized, indices, codebook_loss, commitment_loss = self.quantizer(self.encoder(x))
        return self.decoder(quantized), indices, codebook_loss, commitment_loss


def vq_autoencoder_loss(autoencoder, x, *, reconstruction="l2"):
    """Per-example VQ-VAE loss (van den Oord et al. 2017, eq. 3; taming's averages):
    ``mean rec(x, x_hat) + mean ||sg(z_e) - e||^2 + beta mean ||z_e - sg(e)||^2``."""
    x_hat, _, codebook_loss, commitment_loss = autoencoder(x)
    return (reconstruction_error(x, x_hat, kind=reconstruction, reduce="mean")
            + codebook_loss + commitment_loss)
