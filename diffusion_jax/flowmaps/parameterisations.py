"""Flow-map parameterisations: adapters that turn a NETWORK into a flow map.

The network has the library signature ``network(x_in, c_noise, cond=None, c_noise_to=None)``
(:mod:`diffusion_jax.networks` with a second time input; ``c_noise_to`` is passed only by the
two-time adapters). Both adapters follow EDM's preconditioning (Karras et al. 2022, Table 1):
``c_in = 1 / sqrt(sigma^2 + sigma_d^2)`` and ``c_noise = ln(sigma) / 4``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from diffusion_jax.flowmaps.base import _check_batched, check_times, expand, per_example
from diffusion_jax.pytrees import frozen_pytree

__all__ = ["consistency_coefficients", "ConsistencyModel", "CTMFlowMap"]


def consistency_coefficients(sigma, *, sigma_data=0.5, sigma_min=0.002):
    """``(c_skip, c_out, c_in, c_noise)`` of a consistency model (Song et al. 2023, App. C):
    ``c_skip = sd^2 / ((s - s_min)^2 + sd^2)``, ``c_out = sd (s - s_min) / sqrt(s^2 + sd^2)`` (the
    denominator uses ``s``, as in openai/consistency_models), so ``c_skip(s_min) = 1`` and
    ``c_out(s_min) = 0``; ``c_in`` and ``c_noise`` as in EDM."""
    sd2 = sigma_data**2
    total = sigma**2 + sd2
    shifted = sigma - sigma_min
    return (
        sd2 / (shifted**2 + sd2),
        sigma_data * shifted * jax.lax.rsqrt(total),
        jax.lax.rsqrt(total),
        0.25 * jnp.log(sigma),
    )


def _edm_coefficients(sigma, sigma_data):
    """EDM's ``(c_skip, c_out, c_in, c_noise)`` (Karras et al. 2022, Table 1)."""
    return consistency_coefficients(sigma, sigma_data=sigma_data, sigma_min=0.0)


def _network_output(network, x_in, c_noise, cond, x, **kwargs):
    output = network(x_in, c_noise, cond, **kwargs)
    if output.shape != x.shape:
        raise ValueError(f"network output shape {output.shape} != input shape {x.shape}")
    return output.astype(x.dtype)


@frozen_pytree
class ConsistencyModel:
    """A consistency model ``f(x, sigma) = c_skip x + c_out F(c_in x, c_noise, cond)`` (Song et
    al. 2023, eq. 5 and App. C), with the exact boundary condition ``f(x, sigma_min) = x``.

    As a flow map, ``model(x, sigma, sigma_to)`` jumps to ``x_min = f(x, sigma)`` (the estimate of
    the ODE trajectory's point at ``sigma_min``) and moves back along the model's own direction
    ``x - x_min``: ``x_to = x_min + r (x - x_min)``, ``r = clip((sigma_to - sigma_min) / (sigma -
    sigma_min), 0, 1)``. It is exact at ``sigma_to <= sigma_min`` (``x_min``) and at ``sigma_to =
    sigma`` (``x``); in between it is the deterministic (DDIM-like) re-noising of the model's noise
    estimate. Multistep sampling re-noises with fresh noise instead
    (:func:`diffusion_jax.flowmaps.samplers.sample_consistency`).
    """

    network: Any
    sigma_data: float = 0.5
    sigma_min: float = 0.002

    def consistency(self, x, sigma, cond=None):
        """``f(x, sigma, cond)``: the estimate of the trajectory's point at ``sigma_min``."""
        x = _check_batched(x)
        sigma = per_example(sigma, x)
        c_skip, c_out, c_in, c_noise = consistency_coefficients(
            sigma, sigma_data=self.sigma_data, sigma_min=self.sigma_min
        )
        output = _network_output(self.network, expand(c_in, x) * x, c_noise, cond, x)
        return expand(c_skip, x) * x + expand(c_out, x) * output

    def __call__(self, x, sigma, sigma_to, cond=None):
        x = _check_batched(x)
        sigma, sigma_to = check_times(sigma, sigma_to)
        sigma, sigma_to = per_example(sigma, x), per_example(sigma_to, x, "sigma_to")
        x_min = self.consistency(x, sigma, cond)
        span = sigma - self.sigma_min
        ratio = jnp.where(span > 0, (sigma_to - self.sigma_min) / jnp.where(span > 0, span, 1.0), 0.0)
        ratio = jnp.clip(ratio, 0.0, 1.0)
        return x_min + expand(ratio, x) * (x - x_min)


@frozen_pytree
class CTMFlowMap:
    """Consistency trajectory model ``G(x, t, s) = (s / t) x + (1 - s / t) g(x, t, s)`` (Kim et al.
    2023, eq. 6 ff.) around an inner denoiser-style network with EDM preconditioning in ``t``:
    ``g = c_skip(t) x + c_out(t) F(c_in(t) x, c_noise(t), cond, c_noise_to)``. ``s`` enters the
    network as ``c_noise_to = ln(s + sigma_min) / 4``: finite at ``s = 0`` and one-to-one, so the
    jump to exactly 0 is representable (CTM itself trains with ``s >= sigma_min``). ``G(x, t, t)
    = x`` exactly; ``g(x, t, t)`` is a denoiser (:meth:`denoiser`, CTM's DSM term)."""

    network: Any
    sigma_data: float = 0.5
    sigma_min: float = 0.002

    def inner(self, x, sigma, sigma_to, cond=None):
        """``g(x, t, s)`` with ``t = sigma``, ``s = sigma_to``."""
        x = _check_batched(x)
        sigma, sigma_to = per_example(sigma, x), per_example(sigma_to, x, "sigma_to")
        c_skip, c_out, c_in, c_noise = _edm_coefficients(sigma, self.sigma_data)
        c_noise_to = 0.25 * jnp.log(sigma_to + self.sigma_min)
        output = _network_output(
            self.network, expand(c_in, x) * x, c_noise, cond, x, c_noise_to=c_noise_to
        )
        return expand(c_skip, x) * x + expand(c_out, x) * output

    def denoiser(self, x, sigma, cond=None):
        """``g(x, sigma, sigma)``: the inner network as a denoiser ``D(x, sigma, cond)``."""
        return self.inner(x, sigma, sigma, cond)

    def __call__(self, x, sigma, sigma_to, cond=None):
        x = _check_batched(x)
        sigma, sigma_to = check_times(sigma, sigma_to)
        sigma, sigma_to = per_example(sigma, x), per_example(sigma_to, x, "sigma_to")
        ratio = sigma_to / sigma
        return expand(ratio, x) * x + expand(1.0 - ratio, x) * self.inner(x, sigma, sigma_to, cond)
