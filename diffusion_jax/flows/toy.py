"""The 2-D toy protocol of torchcfm (Tong et al. 2023, Sec. 5.1; REFERENCES 4.2): source
``eight_gaussians`` (scale 5, "var 0.1"), target ``moons`` (scikit-learn's ``make_moons`` with
noise 0.2, scaled ``x 3 - 1``).

torchcfm's ``eight_normal_sample(n, 2, scale=5, var=0.1)`` builds its noise as
``MultivariateNormal(0, sqrt(var) I)``: the covariance is ``sqrt(0.1) I``, i.e. a standard
deviation of ``0.1 ** 0.25 = 0.562`` per coordinate, which we reproduce (not ``sqrt(0.1)``).
This differs from the FFJORD-style ``eight_gaussians`` of :mod:`diffusion_jax.data.toy`
(radius 2, std 0.1). The moons follow ``make_moons``: outer arc ``(cos u, sin u)``, inner arc
``(1 - cos u, 1 - sin u - 0.5)`` with ``u`` evenly spaced on ``[0, pi]`` (``n // 2`` outer,
the rest inner, as scikit-learn), plus ``N(0, 0.2^2)`` noise, then ``x 3 - 1``.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

__all__ = ["TORCHCFM_SCALE", "TORCHCFM_STD", "eight_gaussians", "moons", "TOY_SOURCES",
           "sample_points"]

TORCHCFM_SCALE = 5.0
TORCHCFM_STD = 0.1 ** 0.25


def _check_count(num_samples):
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int; got {num_samples!r}")


@functools.partial(jax.jit, static_argnums=1)
def _eight_gaussians(key, num_samples):
    component_key, noise_key = jax.random.split(key)
    component = jax.random.randint(component_key, (num_samples,), 0, 8)
    angle = 2.0 * math.pi * component.astype(jnp.float32) / 8.0
    centres = TORCHCFM_SCALE * jnp.stack([jnp.cos(angle), jnp.sin(angle)], axis=-1)
    return centres + TORCHCFM_STD * jax.random.normal(noise_key, (num_samples, 2))


def eight_gaussians(key, num_samples):
    """torchcfm's 8 Gaussians: centres ``5 (cos 2 pi k / 8, sin 2 pi k / 8)``, per-coordinate
    std ``0.1 ** 0.25``, equal weights; ``(num_samples, 2)`` float32."""
    _check_count(num_samples)
    return _eight_gaussians(key, num_samples)


@functools.partial(jax.jit, static_argnums=1)
def _moons(key, num_samples):
    num_outer = num_samples // 2
    num_inner = num_samples - num_outer
    u_outer = jnp.linspace(0.0, math.pi, num_outer)
    u_inner = jnp.linspace(0.0, math.pi, num_inner)
    outer = jnp.stack([jnp.cos(u_outer), jnp.sin(u_outer)], axis=-1)
    inner = jnp.stack([1.0 - jnp.cos(u_inner), 1.0 - jnp.sin(u_inner) - 0.5], axis=-1)
    points = jnp.concatenate([outer, inner], axis=0)
    order_key, noise_key = jax.random.split(key)
    points = jax.random.permutation(order_key, points)
    points = points + 0.2 * jax.random.normal(noise_key, points.shape)
    return 3.0 * points - 1.0


def moons(key, num_samples):
    """torchcfm's target: ``make_moons(n, noise=0.2) * 3 - 1`` (shuffled); ``(num_samples, 2)``
    float32."""
    _check_count(num_samples)
    return _moons(key, num_samples)


TOY_SOURCES = {"eight_gaussians_torchcfm": eight_gaussians, "moons_torchcfm": moons}


def sample_points(name, key, num_samples):
    """Points of the torchcfm sets (:data:`TOY_SOURCES`) or of
    :func:`diffusion_jax.data.sample_toy`'s sets, by name."""
    if name in TOY_SOURCES:
        return TOY_SOURCES[name](key, num_samples)
    from diffusion_jax import data

    return data.sample_toy(name, key, num_samples)
