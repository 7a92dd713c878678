"""Exact flow maps of the analytic test bed: the references of the flow-map tests and benchmarks.

For Gaussian data ``N(mu, Sigma)`` the VE probability-flow ODE ``dx/dsigma = sigma (Sigma +
sigma^2 I)^{-1} (x - mu)`` (Karras et al. 2022, eq. 4 with the exact denoiser) has the closed-form
map ``x_to = mu + (x - mu) sqrt((lambda + sigma_to^2) / (lambda + sigma^2))`` along each
eigenvector (eigenvalue ``lambda``); a Gaussian mixture's map is the same ODE with the mixture's
exact denoiser (:mod:`diffusion_jax.analytic`), solved by Diffrax to a tight tolerance.
"""

from __future__ import annotations

from typing import Any

import diffrax
import jax
import jax.numpy as jnp

from diffusion_jax.analytic import GaussianMixture, gaussian_flow_map
from diffusion_jax.flowmaps.base import _check_batched, check_times, per_example
from diffusion_jax.pytrees import frozen_pytree
from diffusion_jax.samplers.diffrax_solvers import solve_probability_flow

__all__ = ["gaussian_ratio", "ExactGaussianFlowMap", "ExactMixtureFlowMap"]


def gaussian_ratio(variance, sigma, sigma_to):
    """``sqrt((s^2 + sigma_to^2) / (s^2 + sigma^2))``: the factor by which the exact VE PF-ODE map
    of ``N(mu, s^2)`` data contracts ``x - mu`` from ``sigma`` to ``sigma_to``."""
    return jnp.sqrt((variance + sigma_to**2) / (variance + sigma**2))


@frozen_pytree
class ExactGaussianFlowMap:
    """The exact flow map of single-Gaussian data (``gaussian``: a one-component
    :class:`~diffusion_jax.analytic.GaussianMixture`), via
    :func:`diffusion_jax.analytic.gaussian_flow_map`. ``cond`` is ignored."""

    gaussian: GaussianMixture

    def __call__(self, x, sigma, sigma_to, cond=None):
        del cond
        x = _check_batched(x)
        sigma, sigma_to = check_times(sigma, sigma_to)
        if sigma.ndim == 1 or sigma_to.ndim == 1:
            sigma, sigma_to = per_example(sigma, x), per_example(sigma_to, x, "sigma_to")
        return gaussian_flow_map(self.gaussian, x, sigma, sigma_to)

    def denoiser(self, x, sigma, cond=None):
        """The exact denoiser ``E[x0 | x]`` of the same data."""
        return self.gaussian(x, sigma, cond)


@frozen_pytree(meta=("rtol", "atol"))
class ExactMixtureFlowMap:
    """The flow map of Gaussian-mixture data (``mixture``: any
    :class:`~diffusion_jax.analytic.GaussianMixture`): Diffrax's ``Tsit5`` with a PID controller
    at ``rtol``/``atol`` on the exact denoiser's PF-ODE (:func:`solve_probability_flow`). The map to
    ``sigma_to = 0`` integrates to ``sigma_floor`` and applies the exact denoiser there (error
    ``O(sigma_floor^2)``; a ``sigma_to`` below ``sigma_floor`` counts as 0). ``cond`` is ignored; per-example times solve one ODE per example."""

    mixture: GaussianMixture
    rtol: float = 1e-10
    atol: float = 1e-10
    sigma_floor: Any = 1e-5

    def __call__(self, x, sigma, sigma_to, cond=None):
        del cond
        x = _check_batched(x)
        sigma, sigma_to = check_times(sigma, sigma_to)
        sigma, sigma_to = per_example(sigma, x), per_example(sigma_to, x, "sigma_to")
        return jax.vmap(self._solve)(x, sigma, sigma_to)

    def _solve(self, x, sigma, sigma_to):
        same = sigma_to >= sigma
        low = jnp.where(sigma_to > self.sigma_floor, sigma_to, self.sigma_floor)
        high = jnp.where(same, 2.0 * low, sigma)
        solution, _ = solve_probability_flow(
            self.mixture, (x / high)[None], sigma_max=high, sigma_min=low,
            stepsize_controller=diffrax.PIDController(rtol=self.rtol, atol=self.atol),
            denoise_final=False,
        )
        x_low = solution[0]
        x_zero = self.mixture(x_low[None], low)[0]
        x_to = jnp.where(sigma_to > self.sigma_floor, x_low, x_zero)
        return jnp.where(same, x, x_to)
