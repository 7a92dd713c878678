"""Pixel conventions: the one home of every conversion between stored pixels and model inputs.

Used by data (training inputs, PNGs), likelihood (bits/dim) and metrics (feature networks).

==============================  ==============================================================
``uint8`` ``0..255`` -> density  :func:`dequantize`: ``(x + U[0, 1)) / 256`` in ``[0, 1)``
                                 (uniform dequantisation; Theis et al. 2016, Sec. 3.1)
``[0, 1]`` <-> model range       :func:`to_model_range` ``2 u - 1``, :func:`to_unit_range`
                                 ``(x + 1) / 2`` (Ho et al. 2020, Sec. 3.3: data in ``[-1, 1]``)
``uint8`` -> dequantised range  :func:`dequantize_to_range`: ``lo + (hi - lo) dequantize(x)``
model range -> ``uint8``        :func:`to_uint8`: ``floor(256 (x + 1) / 2)`` clipped, the exact
                                 inverse of ``to_model_range(dequantize(.))`` (for PNGs)
``uint8`` -> ``[0, 1]``          :func:`uint8_to_unit_range`: ``x / 255`` (feature networks:
                                 pytorch-fid's ``ToTensor`` convention, *not* dequantisation)
``uint8`` -> model range         :func:`uint8_to_model_range`: ``x / 127.5 - 1`` (same convention)
bits/dim offset                 :func:`bits_per_dim_offset`: ``num_bits - log2(hi - lo)``
==============================  ==============================================================

So ``to_uint8(to_model_range(dequantize(img, key))) == img`` and a model of data in ``[-1, 1]``
reports 8-bit bits/dim with score_sde's ``+7`` (``8 - log2 2``).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "MODEL_RANGE",
    "dequantize",
    "dequantize_to_range",
    "to_model_range",
    "to_unit_range",
    "to_uint8",
    "uint8_to_unit_range",
    "uint8_to_model_range",
    "bits_per_dim_offset",
]

MODEL_RANGE = (-1.0, 1.0)


def dequantize(images, key, *, num_bits=8, dtype=jnp.float32):
    """Uniform dequantisation ``(x + U[0, 1)) / 2^num_bits`` in ``[0, 1)`` (Theis et al. 2016,
    Sec. 3.1; Ho et al. 2019, "Flow++", Sec. 3.1). ``images`` are integers in ``0..2^bits - 1``
    (uint8 for 8 bits). Rounding of ``2^bits - 1 + u`` is clipped below 1 so the range stays
    half-open."""
    images = jnp.asarray(images)
    if not jnp.issubdtype(images.dtype, jnp.integer):
        raise ValueError(
            "dequantize expects integer images (uint8 for 8 bits) in 0..2^bits-1; got dtype "
            f"{images.dtype}"
        )
    return _dequantize(images, key, num_bits, jnp.dtype(dtype))


@functools.partial(jax.jit, static_argnums=(2, 3))
def _dequantize(images, key, num_bits, dtype):
    noise = jax.random.uniform(key, images.shape, dtype)
    below_one = jnp.nextafter(jnp.ones((), dtype), jnp.zeros((), dtype))
    return jnp.minimum((images.astype(dtype) + noise) / 2.0**num_bits, below_one)


def _check_range(data_range):
    lo, hi = data_range
    if not hi > lo:
        raise ValueError(f"data_range must be increasing; got {data_range}")
    return lo, hi


def dequantize_to_range(images, key, *, data_range=MODEL_RANGE, num_bits=8, dtype=jnp.float32):
    """``lo + (hi - lo) dequantize(images)``: dequantised pixels in ``[lo, hi)`` (the model input
    whose density bits/dim measure, with :func:`bits_per_dim_offset`)."""
    lo, hi = _check_range(data_range)
    return lo + (hi - lo) * dequantize(images, key, num_bits=num_bits, dtype=dtype)


def to_model_range(x01):
    """Scale ``[0, 1]`` to ``[-1, 1]``: ``2 x - 1`` (Ho et al. 2020, Sec. 3.3)."""
    return 2.0 * x01 - 1.0


def to_unit_range(x_model):
    """Inverse of :func:`to_model_range`: ``(x + 1) / 2``."""
    return (x_model + 1.0) / 2.0


def to_uint8(x_model):
    """Inverse of ``to_model_range(dequantize(.))``: ``floor(256 (x + 1) / 2)`` clipped to
    ``0..255``, returned as a numpy ``uint8`` array (for PNGs)."""
    x01 = to_unit_range(np.asarray(x_model, np.float64))
    return np.clip(np.floor(256.0 * x01), 0, 255).astype(np.uint8)


def uint8_to_unit_range(images):
    """``uint8`` pixels to ``[0, 1]`` float32 as ``x / 255`` (torchvision ``ToTensor``, the input
    convention of the Inception and digits feature networks)."""
    return jnp.asarray(images).astype(jnp.float32) / 255.0


def uint8_to_model_range(images):
    """``uint8`` pixels to ``[-1, 1]`` float32 as ``x / 127.5 - 1`` (``to_model_range`` of
    :func:`uint8_to_unit_range`; ``to_uint8`` inverts it exactly)."""
    return jnp.asarray(images).astype(jnp.float32) / 127.5 - 1.0


def bits_per_dim_offset(num_bits=8, data_range=MODEL_RANGE):
    """``num_bits - log2(hi - lo)``: add to ``-log p(x) / (D ln 2)`` of the dequantised data in
    ``[lo, hi)`` to get bits/dim on the ``2^num_bits`` integer grid (change of variables; Theis et
    al. 2016; score_sde's ``+7`` for 8 bits in ``[-1, 1]``)."""
    lo, hi = _check_range(data_range)
    return num_bits - math.log2(hi - lo)
