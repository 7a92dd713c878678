"""Noise-conditional image classifier: the U-Net's encoder half with a pooled linear head.

Dhariwal & Nichol 2021 ("Diffusion models beat GANs", Sec. 4 and App. C): the classifier of
classifier guidance is the downsampling trunk of the diffusion U-Net, conditioned on the noise
level like the U-Net, followed by a pooling layer and a linear head. Here the pooling is the global
mean (their attention pool is not used); the residual blocks and resampling are the U-Net's own.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from diffusion_jax.networks import layers
from diffusion_jax.networks.conditioning import NoiseConditioning
from diffusion_jax.networks.unet import Downsample, ResnetBlock

__all__ = ["EncoderClassifier"]


class EncoderClassifier(nnx.Module):
    """``logits = F(x, c_noise)`` of shape ``(batch, num_classes)`` for images ``(B, H, W, C)``.

    ``channel_multipliers`` and ``num_res_blocks`` as in :class:`~diffusion_jax.networks.UNet`'s
    down path (stride-2 convolutions between levels); the noise embedding (``"positional"`` or
    ``"fourier"``) enters every residual block. It never sees sigma, only ``c_noise`` (the
    classifier wrapper of :mod:`diffusion_jax.guidance` scales the input and embeds the level).
    """

    def __init__(self, *, image_shape, num_classes, base_channels=32, channel_multipliers=(1, 2),
                 num_res_blocks=1, dropout=0.0, embedding="positional", dtype=None, rngs):
        image_shape = tuple(int(s) for s in image_shape)
        if len(image_shape) != 3 or min(image_shape) < 1:
            raise ValueError(f"image_shape must be (H, W, C); got {image_shape}")
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2; got {num_classes!r}")
        if base_channels < 1 or not channel_multipliers or min(channel_multipliers) < 1:
            raise ValueError("base_channels and channel_multipliers must be positive")
        if num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be >= 1; got {num_res_blocks}")
        factor = 2 ** (len(channel_multipliers) - 1)
        if image_shape[0] % factor or image_shape[1] % factor:
            raise ValueError(f"image H and W must be divisible by {factor}; got {image_shape[:2]}")
        self.image_shape = image_shape
        emb_dim = 4 * base_channels
        self.conditioning = NoiseConditioning(base_channels, emb_dim, embedding=embedding,
                                              dtype=dtype, rngs=rngs)
        self.input_conv = layers.conv(image_shape[2], base_channels, dtype=dtype, rngs=rngs)
        blocks, downsamplers, channels = [], [], base_channels
        for level, multiplier in enumerate(channel_multipliers):
            width = base_channels * multiplier
            level_blocks = []
            for _ in range(num_res_blocks):
                level_blocks.append(ResnetBlock(channels, width, emb_dim, dropout=dropout,
                                                dtype=dtype, rngs=rngs))
                channels = width
            blocks.append(nnx.List(level_blocks))
            if level < len(channel_multipliers) - 1:
                downsamplers.append(Downsample(channels, dtype=dtype, rngs=rngs))
        self.levels = nnx.List(blocks)
        self.downsamplers = nnx.List(downsamplers)
        self.output_norm = layers.group_norm(channels, dtype=dtype, rngs=rngs)
        self.head = layers.linear(channels, num_classes, dtype=dtype, rngs=rngs)

    def __call__(self, x, c_noise):
        """``x (B, H, W, C)``, ``c_noise`` scalar or ``(B,)`` -> logits ``(B, num_classes)``."""
        if x.ndim != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(f"x must have shape (batch, *{self.image_shape}); got {x.shape}")
        emb = self.conditioning(c_noise, None, x.shape[0])
        h = self.input_conv(x)
        for level, blocks in enumerate(self.levels):
            for block in blocks:
                h = block(h, emb)
            if level < len(self.downsamplers):
                h = self.downsamplers[level](h)
        h = jnp.mean(jax.nn.silu(self.output_norm(h)), axis=(1, 2))
        return self.head(h).astype(x.dtype)
