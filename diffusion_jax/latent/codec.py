"""The codec of a latent model: an autoencoder and its latent scale factor.

Rombach et al. 2022 (LDM, Sec. 4.3.2 and App. G, ``scale_by_std``): the diffusion model is
trained on ``z * scale`` with ``scale = 1 / std(z)`` estimated over a data sample (the 0.18215 of
Stable Diffusion's kl-f8 is one such value), and samples are decoded as ``decode(z / scale)``.
Forgetting the division before decoding is a known bug class (CompVis/latent-diffusion issue 187),
so a codec without a scale refuses to encode or decode.

A latent model is any of the library's denoisers (or flows, flow maps) on ``codec.encode(x)``
plus this codec: :func:`decode_samples` maps its latent samples back to images. A :class:`Codec`
is a pytree (the autoencoder's arrays and the scale are leaves), so it travels through ``jit`` as
an argument.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.pytrees import frozen_pytree

__all__ = ["Codec", "estimate_scale", "decode_samples"]


def estimate_scale(latents):
    """``1 / std(latents)`` over all elements (LDM's ``scale_by_std``: ``1 / z.flatten().std()``),
    a float32 scalar. A concrete sample with zero or non-finite spread is a one-line error."""
    latents = jnp.asarray(latents)
    if latents.size < 2:
        raise ValueError(f"estimate_scale needs at least two latent values; got shape "
                         f"{latents.shape}")
    std = jnp.std(latents.astype(jnp.float32))
    if not isinstance(std, jax.core.Tracer):
        if not np.isfinite(float(std)) or float(std) <= 0.0:
            raise ValueError(f"latents have std {float(std)}; cannot estimate a scale from them")
    return 1.0 / std


@frozen_pytree
class Codec:
    """``encode(x, key=None) = autoencoder.encode(x, key) * scale`` (posterior mean, or a sample
    with ``key``) and ``decode(z) = autoencoder.decode(z / scale)``.

    ``autoencoder``: anything with ``encode(x, key=None)`` and ``decode(z)`` (a
    :class:`~diffusion_jax.latent.autoencoders.KLAutoencoder`, a
    :class:`~diffusion_jax.latent.vq.VQAutoencoder`, an :class:`~diffusion_jax.latent.lsgm.LSGM`,
    the linear toy). ``scale``: LDM's scale factor, ``None`` until estimated
    (:meth:`with_estimated_scale`) or given (:meth:`with_scale`).
    """

    autoencoder: Any
    scale: Any = None

    def _checked_scale(self, action):
        if self.scale is None:
            raise ValueError(
                f"codec has no scale factor: cannot {action}; set it with "
                "codec.with_estimated_scale(images) or codec.with_scale(value)"
            )
        return self.scale

    def with_scale(self, scale):
        """A copy with ``scale`` (a positive number or scalar array)."""
        if scale is None:
            raise ValueError("scale must be a positive number, not None")
        scale = jnp.asarray(scale, jnp.float32)
        if scale.shape != ():
            raise ValueError(f"scale must be a scalar; got shape {scale.shape}")
        if not isinstance(scale, jax.core.Tracer) and not float(scale) > 0:
            raise ValueError(f"scale must be positive and finite; got {float(scale)}")
        return Codec(self.autoencoder, scale)

    def unscaled_latents(self, x, key=None):
        """``autoencoder.encode(x, key)``: the latents before scaling (what the scale is fit on)."""
        return self.autoencoder.encode(x, key)

    def with_estimated_scale(self, x, key=None):
        """A copy whose scale is :func:`estimate_scale` of the latents of the images ``x``."""
        return self.with_scale(estimate_scale(self.unscaled_latents(x, key)))

    def encode(self, x, key=None):
        """Scaled latents ``autoencoder.encode(x, key) * scale``."""
        scale = self._checked_scale("encode")
        return self.unscaled_latents(x, key) * scale

    def decode(self, z):
        """Images ``autoencoder.decode(z / scale)`` of scaled latents ``z``."""
        scale = self._checked_scale("decode")
        return self.autoencoder.decode(z / scale)

    def latent_shape(self, image_shape):
        """Latent shape ``(h, w, c)`` of one image of shape ``image_shape``."""
        return tuple(self.autoencoder.latent_shape(tuple(image_shape)))


def decode_samples(codec: Codec, latent_samples, *, latent_shape=None):
    """Images of a latent model's samples: ``codec.decode(latent_samples)``. With
    ``latent_shape`` (the codec's latent shape of the run's images) a sample batch of another
    shape is a one-line error (the latent model and the autoencoder disagree)."""
    latent_samples = jnp.asarray(latent_samples)
    if latent_shape is not None and tuple(latent_samples.shape[1:]) != tuple(latent_shape):
        raise ValueError(
            f"latent samples have shape {tuple(latent_samples.shape[1:])} per example but the "
            f"codec's latents are {tuple(latent_shape)}"
        )
    return codec.decode(latent_samples)
