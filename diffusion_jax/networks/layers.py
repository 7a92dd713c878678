"""Flax NNX layer constructors with this package's initialisers (see :mod:`.init`): LeCun-normal
weights, zero biases, optional zero-initialised outputs (Karras et al. 2022, App. B.7: output
layers start at zero so that ``D(x) = c_skip x``)."""

from __future__ import annotations

from flax import nnx

from diffusion_jax.networks import init

__all__ = ["linear", "conv", "group_norm", "layer_norm", "embed", "group_count"]


def linear(in_features, out_features, *, zero_init=False, dtype=None, rngs):
    """``nnx.Linear`` with LeCun-normal (or zero) kernel and zero bias."""
    return nnx.Linear(in_features, out_features, dtype=dtype, rngs=rngs,
                      kernel_init=init.zeros if zero_init else init.lecun_normal(),
                      bias_init=init.zeros)


def conv(in_channels, out_channels, kernel_size=3, *, stride=1, zero_init=False, dtype=None,
         rngs):
    """``nnx.Conv`` (``"SAME"`` padding) with LeCun-normal (or zero) kernel and zero bias."""
    return nnx.Conv(in_channels, out_channels, (kernel_size, kernel_size), strides=stride,
                    padding="SAME", dtype=dtype, rngs=rngs,
                    kernel_init=init.zeros if zero_init else init.lecun_normal(),
                    bias_init=init.zeros)


def group_count(channels, max_groups=32):
    """Number of GroupNorm groups: the largest divisor of ``channels`` not above ``max_groups``
    (Wu & He 2018 use 32 groups; smaller widths get fewer)."""
    return max(g for g in range(1, min(max_groups, channels) + 1) if channels % g == 0)


def group_norm(channels, *, dtype=None, rngs):
    """GroupNorm (Wu & He 2018) with :func:`group_count` groups and epsilon 1e-6 (DDPM++)."""
    return nnx.GroupNorm(channels, num_groups=group_count(channels), epsilon=1e-6, dtype=dtype,
                         scale_init=init.ones, bias_init=init.zeros, rngs=rngs)


def layer_norm(features, *, affine=True, dtype=None, rngs):
    """LayerNorm (Ba et al. 2016), optionally without scale and bias."""
    return nnx.LayerNorm(features, use_scale=affine, use_bias=affine, dtype=dtype,
                         scale_init=init.ones, bias_init=init.zeros, rngs=rngs)


def embed(num_embeddings, features, *, dtype=None, rngs):
    """Embedding table initialised ``N(0, 1)`` (unit-scale rows, like the noise features)."""
    return nnx.Embed(num_embeddings, features, dtype=dtype, embedding_init=init.normal(1.0),
                     rngs=rngs)
