"""Deterministic samplers integrating the VE probability-flow ODE ``dx/dsigma = (x - D) / sigma``.

The vector field is :func:`diffusion_jax.denoisers.probability_flow_derivative` (one definition).
Every sampler has the signature ``sampler(denoiser, noise, sigmas, *, key=None, cond=None,
return_trajectory=False, **options)``; ``key`` is accepted for a uniform interface and ignored.
"""

from __future__ import annotations

import jax.numpy as jnp

from diffusion_jax.denoisers import probability_flow_derivative
from diffusion_jax.samplers._core import (
    all_inputs,
    check_inputs,
    check_order,
    expand,
    finish,
    interior_inputs,
    scan_steps,
)
from diffusion_jax.samplers._lagrange import lagrange_weights, power_moments
from diffusion_jax.samplers.steps import euler_step

__all__ = ["euler", "heun", "lms", "ipndm"]


def euler(denoiser, noise, sigmas, *, key=None, cond=None, return_trajectory=False):
    """Euler's method on the probability-flow ODE (Karras et al. 2022, Alg. 1 without the
    correction; identical to DDIM with eta 0, Song et al. 2021 "DDIM", eq. 13).

    NFE for a grid of N steps: N.
    """
    del key
    noise, sigmas = check_inputs(noise, sigmas)
    x_start = noise * sigmas[0]

    def step(x, inputs):
        sigma, sigma_next, _ = inputs
        return euler_step(denoiser, x, sigma, sigma_next, None, cond)

    x, states = scan_steps(step, x_start, all_inputs(sigmas), lambda x: x, return_trajectory)
    return finish(x, x_start, states, [], return_trajectory)


def heun(denoiser, noise, sigmas, *, key=None, cond=None, return_trajectory=False):
    """Heun's second-order method (Karras et al. 2022, Alg. 1): trapezoidal correction on every
    step that ends above 0, a plain Euler step to ``sigma = 0``.

    NFE for a grid of N steps: 2N - 1.
    """
    del key
    noise, sigmas = check_inputs(noise, sigmas)
    x_start = noise * sigmas[0]

    def step(x, inputs):
        sigma, sigma_next, _ = inputs
        derivative = probability_flow_derivative(denoiser, x, sigma, cond)
        x_euler = x + expand(sigma_next - sigma, x) * derivative
        derivative_next = probability_flow_derivative(denoiser, x_euler, sigma_next, cond)
        return x + expand(0.5 * (sigma_next - sigma), x) * (derivative + derivative_next)

    x, states = scan_steps(step, x_start, interior_inputs(sigmas), lambda x: x, return_trajectory)
    x0 = euler_step(denoiser, x, sigmas[-2], sigmas[-1], None, cond)
    return finish(x0, x_start, states, [x0], return_trajectory)


def _adams_bashforth(denoiser, noise, sigmas, cond, return_trajectory, order, weights_fn):
    """Shared driver of the multistep methods on ``d = dx/dsigma``: ``x_next = x + sum_j w_j
    d_{i-j}`` with the weights from ``weights_fn(sigma_nodes, sigma_next, step_order)`` and a
    lower-order warm-up (``step_order = min(i + 1, order)``)."""
    noise, sigmas = check_inputs(noise, sigmas)
    x_start = noise * sigmas[0]
    num_steps = sigmas.shape[0] - 1
    step_orders = jnp.minimum(jnp.arange(num_steps) + 1, order)
    history = jnp.zeros((order,) + x_start.shape, x_start.dtype)
    # Placeholder nodes for the empty history: distinct and finite so unused weights stay finite.
    nodes = sigmas[0] + (jnp.arange(order, dtype=sigmas.dtype) + 1.0) * (1.0 + sigmas[0])

    def step(carry, inputs):
        x, history, nodes = carry
        sigma, sigma_next, step_order = inputs
        derivative = probability_flow_derivative(denoiser, x, sigma, cond)
        history = jnp.concatenate([derivative[None], history[:-1]], axis=0)
        nodes = jnp.concatenate([sigma[None], nodes[:-1]])
        weights = jnp.zeros((order,), x.dtype)
        for k in range(1, order + 1):
            weights_k = jnp.pad(weights_fn(nodes[:k], sigma_next, k), (0, order - k))
            weights = jnp.where(step_order == k, weights_k, weights)
        x = x + jnp.tensordot(weights, history, axes=1)
        return x, history, nodes

    xs = (sigmas[:-1], sigmas[1:], step_orders)
    (x, _, _), states = scan_steps(
        step, (x_start, history, nodes), xs, lambda carry: carry[0], return_trajectory
    )
    return finish(x, x_start, states, [], return_trajectory)


def _lms_weights(nodes, sigma_next, order):
    """Exact integrals over ``[sigma_i, sigma_next]`` of the Lagrange basis on ``nodes``."""
    offsets = [nodes[j] - nodes[0] for j in range(order)]
    moments = power_moments(sigma_next - nodes[0], order)
    return jnp.stack(lagrange_weights(offsets, moments))


def lms(denoiser, noise, sigmas, *, key=None, cond=None, return_trajectory=False, order=4):
    """Linear multistep (variable-step Adams-Bashforth) in sigma: the previous ``order``
    derivatives are interpolated by a Lagrange polynomial in sigma whose integral over the step is
    exact (Karras et al. 2022 / k-diffusion ``sample_lms``; Hairer, Norsett & Wanner, "Solving
    ODEs I", III.5, eq. 5.5). Warm-up with lower orders; the step to 0 uses the full order.

    NFE for a grid of N steps: N.
    """
    del key
    check_order(order, (1, 2, 3, 4), "lms")
    return _adams_bashforth(denoiser, noise, sigmas, cond, return_trajectory, order, _lms_weights)


_IPNDM_COEFFICIENTS = (
    (1.0,),
    (3.0 / 2.0, -1.0 / 2.0),
    (23.0 / 12.0, -16.0 / 12.0, 5.0 / 12.0),
    (55.0 / 24.0, -59.0 / 24.0, 37.0 / 24.0, -9.0 / 24.0),
)


def _ipndm_weights(nodes, sigma_next, order):
    coefficients = jnp.asarray(_IPNDM_COEFFICIENTS[order - 1], nodes.dtype)
    return (sigma_next - nodes[0]) * coefficients


def ipndm(denoiser, noise, sigmas, *, key=None, cond=None, return_trajectory=False, order=4):
    """Improved PNDM: fixed-coefficient Adams-Bashforth on ``dx/dsigma`` with a lower-order
    warm-up, coefficients ``[1], [3, -1]/2, [23, -16, 5]/12, [55, -59, 37, -9]/24`` (Zhang & Chen
    2023, "DEIS", Sec. 4 / App. "iPNDM"; Liu et al. 2022, "PNDM", eq. 12). Exact-order only on
    uniform grids.

    NFE for a grid of N steps: N.
    """
    del key
    check_order(order, (1, 2, 3, 4), "ipndm")
    return _adams_bashforth(denoiser, noise, sigmas, cond, return_trajectory, order, _ipndm_weights)
