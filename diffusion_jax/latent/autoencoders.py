"""Convolutional autoencoders for latent diffusion (Rombach et al. 2022, "High-resolution image
synthesis with latent diffusion models", Sec. 3.1 and App. G; the ``taming`` / ``ldm``
``Encoder`` / ``Decoder`` architecture).

``Encoder``: input convolution, one level per channel multiplier (GroupNorm/SiLU residual blocks,
a stride-2 down-sampling between levels), a middle ResNet-attention-ResNet stage, GroupNorm, SiLU
and an output convolution. ``Decoder`` mirrors it with nearest-neighbour up-sampling. The
down-sampling factor is ``f = 2 ** (len(channel_multipliers) - 1)`` (LDM's ``kl-f2`` / ``f4`` /
``f8`` use 2, 3 and 4 levels); images ``(B, H, W, C)`` map to latents ``(B, H/f, W/f, c_z)``.

:class:`KLAutoencoder` is LDM's KL-regularised autoencoder: the encoder gives the mean and
log-variance of a diagonal Gaussian posterior ``q(z|x)`` (log-variance clipped to ``[-30, 20]`` as
in ``DiagonalGaussianDistribution``), trained with :func:`diffusion_jax.latent.losses.
kl_autoencoder_loss`. The VQ variant is :class:`diffusion_jax.latent.vq.VQAutoencoder`.

Residual blocks, attention, down- and up-sampling are those of the library's U-Net
(:mod:`diffusion_jax.networks.unet`) without the noise embedding (an autoencoder sees no sigma).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from diffusion_jax.networks import layers
from diffusion_jax.networks.unet import AttentionBlock, Downsample, Upsample

__all__ = [
    "LatentGeometry",
    "ResBlock",
    "Encoder",
    "Decoder",
    "KLAutoencoder",
    "LOG_VARIANCE_RANGE",
    "check_images",
    "check_latents",
    "posterior_sample",
]

LOG_VARIANCE_RANGE = (-30.0, 20.0)  # ldm.modules.distributions.DiagonalGaussianDistribution
_SKIP_SCALE = 1.0 / math.sqrt(2.0)


def check_images(x, *, channels, factor):
    """One-line ``ValueError`` unless ``x`` is ``(B, H, W, channels)`` with ``H, W`` divisible by
    the down-sampling factor ``factor``."""
    shape = tuple(jnp.shape(x))
    if len(shape) != 4:
        raise ValueError(f"images must have shape (batch, H, W, C); got {shape}")
    if shape[-1] != channels:
        raise ValueError(f"images must have {channels} channels for this encoder; got {shape}")
    if shape[1] % factor or shape[2] % factor:
        raise ValueError(
            f"image H and W must be divisible by the down-sampling factor f = {factor}; "
            f"got {shape[1:3]}"
        )


def check_latents(z, *, channels):
    """One-line ``ValueError`` unless ``z`` is ``(B, h, w, channels)``."""
    shape = tuple(jnp.shape(z))
    if len(shape) != 4 or shape[-1] != channels:
        raise ValueError(
            f"latents must have shape (batch, h, w, {channels}) for this decoder; got {shape}"
        )


def posterior_sample(mean, log_variance, key=None):
    """``mean`` (``key=None``) or the reparameterised sample ``mean + exp(log_variance / 2) *
    noise`` of a diagonal Gaussian (Kingma & Welling 2014, eq. 10)."""
    if key is None:
        return mean
    noise = jax.random.normal(key, jnp.shape(mean), jnp.result_type(mean))
    return mean + jnp.exp(0.5 * log_variance) * noise


def _check_architecture(channel_multipliers, base_channels, num_res_blocks, dropout):
    if not channel_multipliers or min(channel_multipliers) < 1 or base_channels < 1:
        raise ValueError("base_channels and channel_multipliers must be positive")
    if num_res_blocks < 1:
        raise ValueError(f"num_res_blocks must be >= 1; got {num_res_blocks}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must lie in [0, 1); got {dropout}")


class ResBlock(nnx.Module):
    """``(skip(x) + conv(drop(silu(GN(conv(silu(GN(x)))))))) / sqrt(2)`` (LDM's ``ResnetBlock``
    without time embedding; the second convolution zero-initialised as in the library's U-Net, so
    each block starts as a scaled identity)."""

    def __init__(self, in_channels, out_channels, *, dropout, dtype, rngs):
        self.norm_1 = layers.group_norm(in_channels, dtype=dtype, rngs=rngs)
        self.conv_1 = layers.conv(in_channels, out_channels, dtype=dtype, rngs=rngs)
        self.norm_2 = layers.group_norm(out_channels, dtype=dtype, rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs if dropout > 0 else None)
        self.conv_2 = layers.conv(out_channels, out_channels, zero_init=True, dtype=dtype, rngs=rngs)
        self.skip = (layers.conv(in_channels, out_channels, 1, dtype=dtype, rngs=rngs)
                     if in_channels != out_channels else None)

    def __call__(self, x):
        h = self.conv_1(jax.nn.silu(self.norm_1(x)))
        h = self.conv_2(self.dropout(jax.nn.silu(self.norm_2(h))))
        skip = x if self.skip is None else self.skip(x)
        return (skip + h) * _SKIP_SCALE


class _Middle(nnx.Module):
    """ResNet - attention - ResNet at the lowest resolution (LDM's ``mid`` block)."""

    def __init__(self, channels, *, attention, dropout, dtype, rngs):
        self.resnet_1 = ResBlock(channels, channels, dropout=dropout, dtype=dtype, rngs=rngs)
        self.attention = (AttentionBlock(channels, dtype=dtype, rngs=rngs) if attention else None)
        self.resnet_2 = ResBlock(channels, channels, dropout=dropout, dtype=dtype, rngs=rngs)

    def __call__(self, h):
        h = self.resnet_1(h)
        if self.attention is not None:
            h = self.attention(h)
        return self.resnet_2(h)


class Encoder(nnx.Module):
    """Images ``(B, H, W, in_channels)`` -> features ``(B, H/f, W/f, out_channels)`` (LDM's
    ``Encoder``; ``out_channels = 2 c_z`` for the KL posterior's mean and log-variance)."""

    def __init__(self, *, in_channels, out_channels, base_channels=64,
                 channel_multipliers=(1, 2, 4), num_res_blocks=1, attention=True, dropout=0.0,
                 dtype=None, rngs):
        _check_architecture(channel_multipliers, base_channels, num_res_blocks, dropout)
        common = {"dropout": dropout, "dtype": dtype, "rngs": rngs}
        self.in_channels = in_channels
        self.factor = 2 ** (len(channel_multipliers) - 1)
        self.input_conv = layers.conv(in_channels, base_channels, dtype=dtype, rngs=rngs)
        channels, blocks, downsamplers = base_channels, [], []
        for level, multiplier in enumerate(channel_multipliers):
            width = base_channels * multiplier
            for _ in range(num_res_blocks):
                blocks.append(ResBlock(channels, width, **common))
                channels = width
            if level < len(channel_multipliers) - 1:
                downsamplers.append(Downsample(channels, dtype=dtype, rngs=rngs))
        self.blocks = nnx.List(blocks)
        self.downsamplers = nnx.List(downsamplers)
        self.num_res_blocks = num_res_blocks
        self.middle = _Middle(channels, attention=attention, **common)
        self.output_norm = layers.group_norm(channels, dtype=dtype, rngs=rngs)
        self.output_conv = layers.conv(channels, out_channels, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        check_images(x, channels=self.in_channels, factor=self.factor)
        h = self.input_conv(x)
        for index, block in enumerate(self.blocks):
            h = block(h)
            level, position = divmod(index, self.num_res_blocks)
            if position == self.num_res_blocks - 1 and level < len(self.downsamplers):
                h = self.downsamplers[level](h)
        h = self.middle(h)
        return self.output_conv(jax.nn.silu(self.output_norm(h))).astype(x.dtype)


class Decoder(nnx.Module):
    """Latents ``(B, h, w, latent_channels)`` -> images ``(B, f h, f w, out_channels)`` (LDM's
    ``Decoder``: ``num_res_blocks + 1`` blocks per level, nearest-neighbour up-sampling)."""

    def __init__(self, *, latent_channels, out_channels, base_channels=64,
                 channel_multipliers=(1, 2, 4), num_res_blocks=1, attention=True, dropout=0.0,
                 dtype=None, rngs):
        _check_architecture(channel_multipliers, base_channels, num_res_blocks, dropout)
        common = {"dropout": dropout, "dtype": dtype, "rngs": rngs}
        self.latent_channels = latent_channels
        channels = base_channels * channel_multipliers[-1]
        self.input_conv = layers.conv(latent_channels, channels, dtype=dtype, rngs=rngs)
        self.middle = _Middle(channels, attention=attention, **common)
        blocks, upsamplers = [], []
        for level in reversed(range(len(channel_multipliers))):
            width = base_channels * channel_multipliers[level]
            for _ in range(num_res_blocks + 1):
                blocks.append(ResBlock(channels, width, **common))
                channels = width
            if level > 0:
                upsamplers.append(Upsample(channels, dtype=dtype, rngs=rngs))
        self.blocks = nnx.List(blocks)
        self.upsamplers = nnx.List(upsamplers)
        self.blocks_per_level = num_res_blocks + 1
        self.output_norm = layers.group_norm(channels, dtype=dtype, rngs=rngs)
        self.output_conv = layers.conv(channels, out_channels, dtype=dtype, rngs=rngs)

    def __call__(self, z):
        check_latents(z, channels=self.latent_channels)
        h = self.middle(self.input_conv(z))
        for index, block in enumerate(self.blocks):
            h = block(h)
            level, position = divmod(index, self.blocks_per_level)
            if position == self.blocks_per_level - 1 and level < len(self.upsamplers):
                h = self.upsamplers[level](h)
        return self.output_conv(jax.nn.silu(self.output_norm(h))).astype(z.dtype)


class LatentGeometry:
    """Shape bookkeeping shared by the autoencoders (needs ``encoder``, ``in_channels`` and
    ``latent_channels``)."""

    @property
    def downsampling_factor(self):
        """``f``: image height and width over latent height and width."""
        return self.encoder.factor

    def latent_shape(self, image_shape):
        """``(H/f, W/f, latent_channels)`` of one image of shape ``(H, W, C)`` (checked)."""
        check_images(jnp.zeros((1, *image_shape)), channels=self.in_channels,
                     factor=self.downsampling_factor)
        f = self.downsampling_factor
        return (image_shape[0] // f, image_shape[1] // f, self.latent_channels)


class KLAutoencoder(LatentGeometry, nnx.Module):
    """KL-regularised autoencoder (Rombach et al. 2022, Sec. 3.1, "KL-reg."; LDM's
    ``AutoencoderKL``): ``q(z|x) = N(mean(x), diag exp(log_variance(x)))`` with ``z`` of shape
    ``(B, H/f, W/f, latent_channels)``, ``f = 2 ** (len(channel_multipliers) - 1)``, and a
    deterministic decoder.

    ``encode(x, key=None)`` is the posterior mean (or, with a typed ``key``, a posterior sample),
    ``decode(z)`` the reconstruction, ``x -> self(x, key) = (reconstruction, mean, log_variance)``
    what the loss needs. Training: :func:`diffusion_jax.latent.losses.kl_autoencoder_loss`
    (L1/L2 reconstruction + ``kl_weight`` KL; LDM's perceptual LPIPS and patch-GAN terms are not
    available offline: no feature network with natural-image weights ships here).
    """

    def __init__(self, *, in_channels, latent_channels=4, base_channels=64,
                 channel_multipliers=(1, 2, 4), num_res_blocks=1, attention=True, dropout=0.0,
                 dtype=None, rngs: nnx.Rngs):
        if latent_channels < 1 or in_channels < 1:
            raise ValueError(
                f"in_channels and latent_channels must be >= 1; got {in_channels}, "
                f"{latent_channels}"
            )
        architecture = {"base_channels": base_channels, "channel_multipliers":
                        tuple(channel_multipliers), "num_res_blocks": num_res_blocks,
                        "attention": attention, "dropout": dropout, "dtype": dtype, "rngs": rngs}
        self.in_channels = in_channels
        self.latent_channels = latent_channels
        self.encoder = Encoder(in_channels=in_channels, out_channels=2 * latent_channels,
                               **architecture)
        self.decoder = Decoder(latent_channels=latent_channels, out_channels=in_channels,
                               **architecture)

    def posterior(self, x):
        """``(mean, log_variance)`` of ``q(z|x)``, each ``(B, H/f, W/f, latent_channels)``."""
        mean, log_variance = jnp.split(self.encoder(x), 2, axis=-1)
        return mean, jnp.clip(log_variance, *LOG_VARIANCE_RANGE)

    def encode(self, x, key=None):
        """The posterior mean, or a reparameterised sample ``mean + std * noise`` with ``key``."""
        return posterior_sample(*self.posterior(x), key)

    def decode(self, z):
        """Reconstruction ``(B, f h, f w, in_channels)`` of latents ``z``."""
        return self.decoder(z)

    def __call__(self, x, key=None):
        """``(decode(encode(x, key)), mean, log_variance)``."""
        mean, log_variance = self.posterior(x)
        return self.decode(posterior_sample(mean, log_variance, key)), mean, log_variance
