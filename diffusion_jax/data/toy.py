"""2-D toy distributions generated in code (all scaled to roughly unit size).

=====================  ==========================================================================
name                   definition (all float32, shape ``(num_samples, 2)``)
=====================  ==========================================================================
``two_moons``          upper arc ``(cos u, sin u)``, lower arc ``(1 - cos u, 0.5 - sin u)``,
                       ``u ~ U[0, pi]``, plus ``0.05 N(0, I)``, shifted by ``(-0.5, -0.25)``
                       (the shape of scikit-learn's ``make_moons``; Pedregosa et al. 2011).
``checkerboard``       uniform on the 8 "black" squares ``(i + j)`` even of a 4x4 board on
                       ``[-2, 2]^2`` (Grathwohl et al. 2019, FFJORD toy set).
``eight_gaussians``    8 equally weighted ``N(mu_k, 0.1^2 I)``, ``mu_k = 2 (cos 2 pi k/8,
                       sin 2 pi k/8)`` (FFJORD toy set, radius 2).
``swiss_roll``         ``(u cos u, u sin u) / 5 + 0.05 N(0, I)``, ``u ~ U[1.5 pi, 4.5 pi]``
                       (Marsland 2009; scikit-learn ``make_swiss_roll`` in 2-D).
``pinwheel``           5 arms: radius ``r ~ 1 + 0.3 N``, tangential ``0.1 N``, rotated by
                       ``2 pi k/5 + 0.25 exp(r)``, times 1.5 (Johnson et al. 2016, "SVAE").
``gaussian_mixture``   :func:`diffusion_jax.analytic.toy_gaussian_mixture` (exact score).
=====================  ==========================================================================
"""

from __future__ import annotations

import difflib
import functools
import math

import jax
import jax.numpy as jnp

__all__ = ["TOY_DATASETS", "sample_toy", "EIGHT_GAUSSIANS_RADIUS", "EIGHT_GAUSSIANS_STD",
           "TOY_MIXTURE_MEANS", "TOY_MIXTURE_COVARIANCES", "TOY_MIXTURE_WEIGHTS"]

EIGHT_GAUSSIANS_RADIUS = 2.0
EIGHT_GAUSSIANS_STD = 0.1


# The fixed 3-component 2-D mixture behind ``"gaussian_mixture"``; its exact denoiser, score and
# density are :func:`diffusion_jax.analytic.toy_gaussian_mixture` (the core builds on data, not
# the other way round).
TOY_MIXTURE_MEANS = ((-1.5, -0.5), (1.5, -0.5), (0.0, 1.25))
TOY_MIXTURE_COVARIANCES = (((0.3, 0.15), (0.15, 0.2)), ((0.2, -0.1), (-0.1, 0.3)),
                           ((0.1, 0.0), (0.0, 0.1)))
TOY_MIXTURE_WEIGHTS = (0.3, 0.3, 0.4)


def _two_moons(key, num_samples):
    """Two interleaved half circles (scikit-learn ``make_moons`` geometry), centred."""
    arc_key, side_key, noise_key = jax.random.split(key, 3)
    u = jax.random.uniform(arc_key, (num_samples,), minval=0.0, maxval=math.pi)
    lower = jax.random.bernoulli(side_key, 0.5, (num_samples,))
    upper_arc = jnp.stack([jnp.cos(u), jnp.sin(u)], axis=-1)
    lower_arc = jnp.stack([1.0 - jnp.cos(u), 0.5 - jnp.sin(u)], axis=-1)
    points = jnp.where(lower[:, None], lower_arc, upper_arc)
    points = points + 0.05 * jax.random.normal(noise_key, (num_samples, 2))
    return points - jnp.array([0.5, 0.25])


def _checkerboard(key, num_samples):
    """Uniform on the squares with ``i + j`` even of a 4x4 board on ``[-2, 2]^2`` (FFJORD)."""
    cell_key, offset_key = jax.random.split(key)
    cells = jnp.array([(i, j) for i in range(4) for j in range(4) if (i + j) % 2 == 0], jnp.float32)
    chosen = cells[jax.random.randint(cell_key, (num_samples,), 0, cells.shape[0])]
    return chosen + jax.random.uniform(offset_key, (num_samples, 2)) - 2.0


def _eight_gaussians(key, num_samples):
    """Eight ``N(mu_k, 0.1^2 I)`` on the circle of radius 2 (FFJORD toy set)."""
    component_key, noise_key = jax.random.split(key)
    component = jax.random.randint(component_key, (num_samples,), 0, 8)
    angle = 2.0 * math.pi * component.astype(jnp.float32) / 8.0
    means = EIGHT_GAUSSIANS_RADIUS * jnp.stack([jnp.cos(angle), jnp.sin(angle)], axis=-1)
    return means + EIGHT_GAUSSIANS_STD * jax.random.normal(noise_key, (num_samples, 2))


def _swiss_roll(key, num_samples):
    """2-D Swiss roll ``(u cos u, u sin u) / 5`` with ``u ~ U[1.5 pi, 4.5 pi]``."""
    u_key, noise_key = jax.random.split(key)
    u = jax.random.uniform(u_key, (num_samples,), minval=1.5 * math.pi, maxval=4.5 * math.pi)
    points = jnp.stack([u * jnp.cos(u), u * jnp.sin(u)], axis=-1) / 5.0
    return points + 0.05 * jax.random.normal(noise_key, (num_samples, 2))


def _pinwheel(key, num_samples):
    """Five-armed pinwheel (Johnson et al. 2016, SVAE experiments), scaled by 1.5."""
    arm_key, noise_key = jax.random.split(key)
    arms = jax.random.randint(arm_key, (num_samples,), 0, 5)
    features = jax.random.normal(noise_key, (num_samples, 2)) * jnp.array([0.3, 0.1])
    features = features + jnp.array([1.0, 0.0])
    angle = 2.0 * math.pi * arms.astype(jnp.float32) / 5.0 + 0.25 * jnp.exp(features[:, 0])
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    rotated = jnp.stack(
        [cos * features[:, 0] - sin * features[:, 1], sin * features[:, 0] + cos * features[:, 1]],
        axis=-1,
    )
    return 1.5 * rotated


def _gaussian_mixture(key, num_samples):
    component_key, normal_key = jax.random.split(key)
    weights = jnp.asarray(TOY_MIXTURE_WEIGHTS)
    components = jax.random.categorical(component_key, jnp.log(weights), shape=(num_samples,))
    factors = jnp.linalg.cholesky(jnp.asarray(TOY_MIXTURE_COVARIANCES))[components]
    z = jax.random.normal(normal_key, (num_samples, 2))
    return jnp.asarray(TOY_MIXTURE_MEANS)[components] + jnp.einsum("nij,nj->ni", factors, z)


_SAMPLERS = {
    "two_moons": _two_moons,
    "checkerboard": _checkerboard,
    "eight_gaussians": _eight_gaussians,
    "swiss_roll": _swiss_roll,
    "pinwheel": _pinwheel,
    "gaussian_mixture": _gaussian_mixture,
}
TOY_DATASETS = tuple(_SAMPLERS)


def sample_toy(name, key, num_samples):
    """``num_samples`` points ``(num_samples, 2)`` float32 of toy set ``name`` (see module table);
    deterministic given the typed ``key``. Unknown ``name`` -> ``ValueError`` listing the names."""
    if name not in _SAMPLERS:
        close = difflib.get_close_matches(str(name), TOY_DATASETS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown toy dataset {name!r}{hint}; expected one of {TOY_DATASETS}")
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int; got {num_samples!r}")
    return _sample_jit(name, key, num_samples)


@functools.partial(jax.jit, static_argnames=("name", "num_samples"))
def _sample_jit(name, key, num_samples):
    return _SAMPLERS[name](key, num_samples).astype(jnp.float32)
