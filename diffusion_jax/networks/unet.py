"""U-Net in the DDPM++ / NCSN++ family for images ``(batch, H, W, C)``.

Ho et al. 2020 (DDPM, App. B) and Song et al. 2021 ("score SDE", App. H, DDPM++): a residual U-Net
with GroupNorm + SiLU, the noise embedding entering every residual block as a scale/shift of the
second normalisation (adaptive GroupNorm, Dhariwal & Nichol 2021, Sec. 3), skip connections rescaled
by ``1/sqrt(2)``, self-attention at chosen resolutions, dropout, and a zero-initialised output
convolution. Down-sampling is a stride-2 convolution, up-sampling nearest-neighbour then a 3x3
convolution (DDPM; the FIR resampling of NCSN++ is not used).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from diffusion_jax.networks import layers
from diffusion_jax.networks.conditioning import NoiseConditioning

__all__ = ["UNet", "ResnetBlock", "AttentionBlock"]

_SKIP_SCALE = 1.0 / math.sqrt(2.0)


class ResnetBlock(nnx.Module):
    """DDPM++ residual block (Song et al. 2021, App. H, ``ResnetBlockBigGAN`` without resampling):
    ``(skip(x) + conv(drop(silu(AdaGN(conv(silu(GN(x))), emb))))) / sqrt(2)`` with the second
    convolution zero-initialised, so each block starts as a (scaled) identity.
    """

    def __init__(self, in_channels, out_channels, emb_dim, *, dropout, dtype, rngs):
        self.norm_1 = layers.group_norm(in_channels, dtype=dtype, rngs=rngs)
        self.conv_1 = layers.conv(in_channels, out_channels, dtype=dtype, rngs=rngs)
        self.emb_projection = layers.linear(emb_dim, 2 * out_channels, dtype=dtype, rngs=rngs)
        self.norm_2 = layers.group_norm(out_channels, dtype=dtype, rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs if dropout > 0 else None)
        self.conv_2 = layers.conv(out_channels, out_channels, zero_init=True, dtype=dtype, rngs=rngs)
        if in_channels != out_channels:
            self.skip = layers.conv(in_channels, out_channels, 1, dtype=dtype, rngs=rngs)
        else:
            self.skip = None

    def __call__(self, x, emb):
        h = self.conv_1(jax.nn.silu(self.norm_1(x)))
        scale, shift = jnp.split(self.emb_projection(jax.nn.silu(emb)), 2, axis=-1)
        h = self.norm_2(h) * (1.0 + scale[:, None, None, :]) + shift[:, None, None, :]
        h = self.dropout(jax.nn.silu(h))
        h = self.conv_2(h)
        skip = x if self.skip is None else self.skip(x)
        return (skip + h) * _SKIP_SCALE


class AttentionBlock(nnx.Module):
    """Multi-head self-attention over all pixels (Vaswani et al. 2017; DDPM ``AttnBlock``), with
    GroupNorm on the input, a zero-initialised output projection and ``1/sqrt(2)`` skip scaling.
    Equivariant under any permutation of the pixels.
    """

    def __init__(self, channels, *, num_heads=1, dtype, rngs):
        if channels % num_heads:
            raise ValueError(f"channels {channels} not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.norm = layers.group_norm(channels, dtype=dtype, rngs=rngs)
        self.qkv = layers.linear(channels, 3 * channels, dtype=dtype, rngs=rngs)
        self.output = layers.linear(channels, channels, zero_init=True, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        batch, height, width, channels = x.shape
        head_dim = channels // self.num_heads
        qkv = self.qkv(self.norm(x)).reshape(batch, height * width, 3, self.num_heads, head_dim)
        query, key, value = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        logits = jnp.einsum("bqhd,bkhd->bhqk", query, key) / math.sqrt(head_dim)
        softmax_dtype = jnp.promote_types(logits.dtype, jnp.float32)  # f32, or f64 under x64
        weights = jax.nn.softmax(logits.astype(softmax_dtype), axis=-1).astype(value.dtype)
        attended = jnp.einsum("bhqk,bkhd->bqhd", weights, value)
        attended = self.output(attended.reshape(batch, height, width, channels))
        return (x + attended) * _SKIP_SCALE


class Downsample(nnx.Module):
    """Stride-2 3x3 convolution, "SAME" padding (Ho et al. 2020, DDPM ``Downsample`` with conv)."""

    def __init__(self, channels, *, dtype, rngs):
        self.conv = layers.conv(channels, channels, stride=2, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        return self.conv(x)


class Upsample(nnx.Module):
    """Nearest-neighbour x2 then a 3x3 convolution (Ho et al. 2020, DDPM ``Upsample``)."""

    def __init__(self, channels, *, dtype, rngs):
        self.conv = layers.conv(channels, channels, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return self.conv(x)


class _Level(nnx.Module):
    """Residual blocks (and optional attention) of one U-Net resolution."""

    def __init__(self, channels_in, channels_out, emb_dim, *, attention, num_heads,
                 dropout, dtype, rngs):
        self.resnets = nnx.List([
            ResnetBlock(c_in, channels_out, emb_dim, dropout=dropout, dtype=dtype, rngs=rngs)
            for c_in in channels_in
        ])
        self.attentions = nnx.List([
            AttentionBlock(channels_out, num_heads=num_heads, dtype=dtype, rngs=rngs)
            for _ in channels_in
        ]) if attention else None


class UNet(nnx.Module):
    """DDPM++-style U-Net ``F(x, c_noise, cond)`` mapping ``(B, H, W, C) -> (B, H, W, C)``.

    Song et al. 2021 (App. H, DDPM++ / NCSN++) and Ho et al. 2020 (App. B). ``channel_multipliers``
    sets the number of levels and their widths (``base_channels * m``); each level has
    ``num_res_blocks`` residual blocks on the way down and ``num_res_blocks + 1`` on the way up,
    with self-attention where the feature map's height is in ``attention_resolutions``; a middle
    stage ResNet-attention-ResNet sits at the lowest resolution. ``embedding`` is ``"positional"``
    (DDPM++) or ``"fourier"`` (NCSN++); with ``num_classes`` the labels ``cond`` in
    ``0..num_classes`` (``num_classes`` = null class, Ho & Salimans 2022) are embedded and added to
    the noise embedding. The output convolution is zero-initialised, so a preconditioned denoiser
    starts at ``D(x) = c_skip x``. Dropout follows ``model.train()`` / ``model.eval()`` and draws
    from the module's ``dropout`` stream (reseeded per step by ``networks.reseed_rng_streams``).
    With ``two_time=True`` it is ``F(x, c_noise, cond, c_noise_to)``: a second time input embedded
    alongside the first (:class:`~diffusion_jax.networks.NoiseConditioning`; flow maps).
    """

    def __init__(
        self,
        *,
        image_shape: tuple[int, int, int] | None = None,
        in_channels: int | None = None,
        base_channels: int = 64,
        channel_multipliers: tuple[int, ...] = (1, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: tuple[int, ...] = (16,),
        num_heads: int = 1,
        dropout: float = 0.0,
        embedding: str = "positional",
        fourier_scale: float = 16.0,
        num_classes: int | None = None,
        two_time: bool = False,
        dtype=None,
        rngs: nnx.Rngs,
    ):
        image_shape, in_channels = _check_image_config(image_shape, in_channels,
                                                       len(channel_multipliers))
        if image_shape is None and attention_resolutions:
            raise ValueError(
                "attention_resolutions needs image_shape=(H, W, C) to know each level's "
                "resolution; pass image_shape or attention_resolutions=()"
            )
        if base_channels < 1 or not channel_multipliers or min(channel_multipliers) < 1:
            raise ValueError("base_channels and channel_multipliers must be positive")
        if num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be >= 1; got {num_res_blocks}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1); got {dropout}")
        self.image_shape = image_shape
        self.in_channels = in_channels
        self.num_res_blocks = num_res_blocks
        self.attention_resolutions = tuple(attention_resolutions)
        emb_dim = 4 * base_channels
        self.conditioning = NoiseConditioning(
            base_channels, emb_dim, embedding=embedding, fourier_scale=fourier_scale,
            num_classes=num_classes, two_time=two_time, dtype=dtype, rngs=rngs,
        )
        self.input_conv = layers.conv(in_channels, base_channels, dtype=dtype, rngs=rngs)
        common = {"num_heads": num_heads, "dropout": dropout, "dtype": dtype, "rngs": rngs}

        # Down path: record the channel count of every skip activation.
        skip_channels = [base_channels]
        channels = base_channels
        down_levels, downsamplers = [], []
        for level, multiplier in enumerate(channel_multipliers):
            width = base_channels * multiplier
            inputs = [channels] + [width] * (num_res_blocks - 1)
            down_levels.append(_Level(inputs, width, emb_dim,
                                      attention=self._attends(level), **common))
            channels = width
            skip_channels += [width] * num_res_blocks
            if level < len(channel_multipliers) - 1:
                downsamplers.append(Downsample(channels, dtype=dtype, rngs=rngs))
                skip_channels.append(channels)
        self.down_levels = nnx.List(down_levels)
        self.downsamplers = nnx.List(downsamplers)

        self.middle_1 = ResnetBlock(channels, channels, emb_dim, dropout=dropout, dtype=dtype,
                                    rngs=rngs)
        self.middle_attention = AttentionBlock(channels, num_heads=num_heads, dtype=dtype,
                                               rngs=rngs)
        self.middle_2 = ResnetBlock(channels, channels, emb_dim, dropout=dropout, dtype=dtype,
                                    rngs=rngs)

        # Up path: each block consumes one skip activation (popped in reverse order).
        up_levels, upsamplers = [], []
        for level in reversed(range(len(channel_multipliers))):
            width = base_channels * channel_multipliers[level]
            inputs = []
            for _ in range(num_res_blocks + 1):
                inputs.append(channels + skip_channels.pop())
                channels = width
            up_levels.append(_Level(inputs, width, emb_dim,
                                    attention=self._attends(level), **common))
            if level > 0:
                upsamplers.append(Upsample(channels, dtype=dtype, rngs=rngs))
        self.up_levels = nnx.List(up_levels)
        self.upsamplers = nnx.List(upsamplers)

        self.output_norm = layers.group_norm(channels, dtype=dtype, rngs=rngs)
        self.output_conv = layers.conv(channels, in_channels, zero_init=True, dtype=dtype, rngs=rngs)
        self._num_levels = len(channel_multipliers)

    def _attends(self, level):
        """Whether ``level`` (0 = full resolution) has attention: its height is listed."""
        if self.image_shape is None:
            return False
        return (self.image_shape[0] >> level) in self.attention_resolutions

    def __call__(self, x, c_noise, cond=None, c_noise_to=None):
        """``x (B, H, W, C)``, ``c_noise`` (and ``c_noise_to`` when ``two_time``) scalar or
        ``(B,)``, ``cond (B,)`` labels or None."""
        self._check_input(x)
        batch = x.shape[0]
        emb = self.conditioning(c_noise, cond, batch, c_noise_to)

        h = self.input_conv(x)
        skips = [h]
        for level, stage in enumerate(self.down_levels):
            h = _run_level(stage, h, emb, skips)
            if level < self._num_levels - 1:
                h = self.downsamplers[level](h)
                skips.append(h)

        h = self.middle_1(h, emb)
        h = self.middle_attention(h)
        h = self.middle_2(h, emb)

        for index, stage in enumerate(self.up_levels):
            for block, resnet in enumerate(stage.resnets):
                h = resnet(jnp.concatenate([h, skips.pop()], axis=-1), emb)
                if stage.attentions is not None:
                    h = stage.attentions[block](h)
            if index < self._num_levels - 1:
                h = self.upsamplers[index](h)

        h = self.output_conv(jax.nn.silu(self.output_norm(h)))
        return h.astype(x.dtype)

    def _check_input(self, x):
        if x.ndim != 4:
            raise ValueError(f"x must have shape (batch, H, W, C); got {x.shape}")
        if self.image_shape is not None and tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(f"x must have shape (batch, *{self.image_shape}); got {x.shape}")
        if x.shape[-1] != self.in_channels:
            raise ValueError(f"x must have {self.in_channels} channels; got {x.shape}")
        factor = 2 ** (self._num_levels - 1)
        if x.shape[1] % factor or x.shape[2] % factor:
            raise ValueError(
                f"H and W must be divisible by 2**(levels-1) = {factor}; got {x.shape[1:3]}"
            )


def _run_level(stage, h, emb, skips):
    for block, resnet in enumerate(stage.resnets):
        h = resnet(h, emb)
        if stage.attentions is not None:
            h = stage.attentions[block](h)
        skips.append(h)
    return h


def _check_image_config(image_shape, in_channels, num_levels):
    if image_shape is None and in_channels is None:
        raise ValueError("give image_shape=(H, W, C) or in_channels")
    if image_shape is not None:
        image_shape = tuple(int(s) for s in image_shape)
        if len(image_shape) != 3 or min(image_shape) < 1:
            raise ValueError(f"image_shape must be (H, W, C); got {image_shape}")
        if in_channels is not None and in_channels != image_shape[2]:
            raise ValueError(f"in_channels {in_channels} != image_shape[2] {image_shape[2]}")
        factor = 2 ** (num_levels - 1)
        if image_shape[0] % factor or image_shape[1] % factor:
            raise ValueError(
                f"image H and W must be divisible by 2**(len(channel_multipliers)-1) = {factor}; "
                f"got {image_shape[:2]}"
            )
        in_channels = image_shape[2]
    return image_shape, in_channels
