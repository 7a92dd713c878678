"""Sliced Wasserstein distance between two equal-size point sets (Rabin et al. 2011, "Wasserstein
barycenter and its application to texture mixing", Sec. 3; Bonneel et al. 2015, eq. 7).

``SW_p(a, b) = (mean_theta W_p^p(<a, theta>, <b, theta>))^(1/p)`` over ``num_projections``
random unit directions ``theta``; in 1-D the optimal coupling of two equal-size sets matches
sorted values, so ``W_p^p`` is the mean of ``|sort(a.theta) - sort(b.theta)|^p``. The one
implementation used by evaluation (toy data), the stochastic-sampler tests and the benchmarks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffusion_jax.metrics.statistics import check_features

__all__ = ["sliced_wasserstein"]


def _check_points(points, name):
    if not isinstance(points, jax.core.Tracer):
        check_features(points, name)
    return jnp.asarray(points)


def sliced_wasserstein(a, b, *, num_projections=128, p=1, key=None):
    """Sliced ``p``-Wasserstein distance of point sets ``a, b (num, dim)`` (same ``num``), with
    directions ``normal(key, (num_projections, dim))`` normalised (``key`` defaults to
    ``jax.random.key(0)``, so the value is deterministic). Returns a Python float (a traced
    scalar under ``jit``)."""
    a, b = _check_points(a, "a"), _check_points(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"point sets must have equal shapes (num, dim); got {a.shape}, {b.shape}")
    if not (isinstance(num_projections, int) and num_projections >= 1):
        raise ValueError(f"num_projections must be a positive int; got {num_projections!r}")
    if not p >= 1:
        raise ValueError(f"p must be >= 1; got {p!r}")
    key = jax.random.key(0) if key is None else key
    directions = jax.random.normal(key, (num_projections, a.shape[-1]))
    directions = directions / jnp.linalg.norm(directions, axis=-1, keepdims=True)
    projected_a = jnp.sort(a @ directions.T, axis=0)
    projected_b = jnp.sort(b @ directions.T, axis=0)
    distance = jnp.mean(jnp.abs(projected_a - projected_b) ** p) ** (1.0 / p)
    return distance if isinstance(distance, jax.core.Tracer) else float(distance)
