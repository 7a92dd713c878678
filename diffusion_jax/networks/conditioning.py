"""Shared conditioning pieces: the noise-embedding MLP, an optional second time input (flow maps),
and the class-label embedding with a null class for classifier-free guidance (Ho & Salimans 2022,
Sec. 3.2)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from diffusion_jax.networks import layers
from diffusion_jax.networks.embeddings import FourierEmbedding, PositionalEmbedding, as_noise_batch

__all__ = ["EMBEDDINGS", "NoiseConditioning", "make_noise_embedding", "check_labels"]

EMBEDDINGS = ("fourier", "positional")


def make_noise_embedding(kind, dim, *, fourier_scale=16.0, rngs):
    """Build the ``"fourier"`` (Song et al. 2021) or ``"positional"`` (Vaswani et al. 2017)
    embedding of dimension ``dim``; unknown ``kind`` -> ``ValueError``."""
    if kind == "fourier":
        return FourierEmbedding(dim, fourier_scale, rngs=rngs)
    if kind == "positional":
        return PositionalEmbedding(dim)
    raise ValueError(f"unknown noise embedding {kind!r}; expected one of {EMBEDDINGS}")


def check_labels(cond, batch_size, num_classes):
    """Validate class labels ``cond (batch,)`` in ``0..num_classes`` (``num_classes`` = null class).

    ``cond=None`` means unconditional and maps to the null class. Concrete labels are range-checked;
    traced labels are checked for shape only.
    """
    if num_classes is None:
        if cond is not None:
            raise ValueError("got class labels (cond) but the network has num_classes=None")
        return None
    if cond is None:
        return jnp.full((batch_size,), num_classes, jnp.int32)
    cond = jnp.asarray(cond)
    if cond.ndim == 0:
        cond = jnp.broadcast_to(cond, (batch_size,))
    if cond.shape != (batch_size,):
        raise ValueError(f"cond must have shape (batch,) = ({batch_size},); got {cond.shape}")
    if not jnp.issubdtype(cond.dtype, jnp.integer):
        raise ValueError(f"cond must hold integer class labels; got dtype {cond.dtype}")
    if not isinstance(cond, jax.core.Tracer) and getattr(cond, "is_fully_addressable", True):
        host = np.asarray(cond)
        low, high = int(host.min()), int(host.max())
        if low < 0 or high > num_classes:
            raise ValueError(
                f"class labels must lie in [0, {num_classes}] ({num_classes} = null class for "
                f"classifier-free guidance); got range [{low}, {high}]"
            )
    return cond.astype(jnp.int32)


class NoiseConditioning(nnx.Module):
    """Conditioning vector ``emb = MLP(embed(c_noise)) + label_embedding(cond)``.

    Noise path as in DDPM/DDPM++ (Ho et al. 2020; Song et al. 2021, App. H): sinusoidal or Fourier
    features, then ``Linear -> SiLU -> Linear``. Labels use a learned table with ``num_classes + 1``
    rows, the last being the null class (Ho & Salimans 2022).

    With ``two_time=True`` a second time input ``c_noise_to`` (a flow map's target time, MeanFlow's
    ``t - r`` or a shortcut model's step size ``d``) gets its own embedding of the same kind and its
    own MLP, and the two are summed: ``emb = MLP(embed(c_noise)) + MLP_to(embed_to(c_noise_to))``,
    as the embedders of ``t`` and ``r`` in MeanFlow (Geng et al. 2025, Sec. 4) and of ``t`` and
    ``d`` in shortcut models (Frans et al. 2024, Sec. 3). ``two_time=False`` creates nothing new.
    """

    def __init__(
        self,
        feature_dim,
        output_dim,
        *,
        embedding="positional",
        fourier_scale=16.0,
        num_classes=None,
        two_time=False,
        dtype=None,
        rngs,
    ):
        if not isinstance(two_time, bool):
            raise ValueError(f"two_time must be a bool; got {two_time!r}")
        if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
            raise ValueError(f"num_classes must be None or a positive int; got {num_classes!r}")
        self.num_classes = num_classes
        self.embed = make_noise_embedding(embedding, feature_dim, fourier_scale=fourier_scale,
                                          rngs=rngs)
        self.linear_1 = layers.linear(feature_dim, output_dim, dtype=dtype, rngs=rngs)
        self.linear_2 = layers.linear(output_dim, output_dim, dtype=dtype, rngs=rngs)
        self.two_time = two_time
        if two_time:
            self.embed_to = make_noise_embedding(embedding, feature_dim,
                                                 fourier_scale=fourier_scale, rngs=rngs)
            self.linear_to_1 = layers.linear(feature_dim, output_dim, dtype=dtype, rngs=rngs)
            self.linear_to_2 = layers.linear(output_dim, output_dim, dtype=dtype, rngs=rngs)
        if num_classes is not None:
            self.label_embedding = layers.embed(num_classes + 1, output_dim, dtype=dtype,
                                                rngs=rngs)
        else:
            self.label_embedding = None

    def __call__(self, c_noise, cond, batch_size, c_noise_to=None):
        """``(batch, output_dim)`` conditioning vector for noise inputs, the second time input
        ``c_noise_to`` (required exactly when ``two_time``) and optional labels."""
        if self.two_time and c_noise_to is None:
            raise ValueError("this network has two_time=True: pass the second time c_noise_to")
        if not self.two_time and c_noise_to is not None:
            raise ValueError("got c_noise_to but the network has two_time=False")
        labels = check_labels(cond, batch_size, self.num_classes)
        c_noise = as_noise_batch(c_noise, batch_size)
        emb = self.linear_2(jax.nn.silu(self.linear_1(self.embed(c_noise))))
        if self.two_time:
            c_noise_to = as_noise_batch(c_noise_to, batch_size)
            emb = emb + self.linear_to_2(jax.nn.silu(self.linear_to_1(self.embed_to(c_noise_to))))
        if labels is not None:
            emb = emb + self.label_embedding(labels)
        return emb
