"""Deterministic samplers integrating the VE probability-flow ODE ``dx/dsigma = (x - D) / sigma``.

The vector field is :func:`diffusion_jax.denoisers.probability_flow_derivative` (one definition).
Every sampler has the signature ``sampler(denoiser, noise, sigmas, *, key=None, cond=None,
return_trajectory=False, callback=None, **options)`` with UNIT Gaussian ``noise`` (scaled by
``sigmas[0]`` here); ``key`` is accepted for a uniform interface and ignored. Every one takes the
step to ``sigma = 0`` as the first-order step ``x0 = D(x, sigma_{N-1})``.
"""

from __future__ import annotations

import jax.numpy as jnp

from diffusion_jax.denoisers import probability_flow_derivative
from diffusion_jax.samplers._core import check_order, expand, sample
from diffusion_jax.samplers._info import (
    SamplerInfo,
    Variant,
    one_per_step,
    one_per_step_and_warmup,
    two_per_step_then_one,
)
from diffusion_jax.samplers._lagrange import lagrange_weights, power_moments
from diffusion_jax.samplers.steps import euler_update, heun_update

__all__ = ["euler", "heun", "lms", "ipndm"]


def euler(
    denoiser, noise, sigmas, *, key=None, cond=None, return_trajectory=False, callback=None,
    unroll=None, checkpoint=False,
):
    """Euler's method on the probability-flow ODE (Karras et al. 2022, Alg. 1 without the
    correction; identical to DDIM with eta 0, Song et al. 2021 "DDIM", eq. 13).

    ``noise`` is UNIT Gaussian (scaled by ``sigmas[0]`` here; a warning flags pre-scaled noise).
    NFE for a grid of N steps: N.
    """
    del key
    return sample(
        _euler_step, denoiser, noise, sigmas, cond=cond, callback=callback,
        return_trajectory=return_trajectory, unroll=unroll, checkpoint=checkpoint,
    )


def _euler_step(denoiser, carry, inputs, cond):
    (x,), (sigma, sigma_next, _) = carry, inputs
    x0_hat = denoiser(x, sigma, cond)
    return (euler_update(x, x0_hat, sigma, sigma_next),), x0_hat


def heun(
    denoiser, noise, sigmas, *, key=None, cond=None, return_trajectory=False, callback=None,
    unroll=None, checkpoint=False,
):
    """Heun's second-order method (Karras et al. 2022, Alg. 1): trapezoidal correction on every
    step that ends above 0, a plain Euler step to ``sigma = 0``.

    ``noise`` is UNIT Gaussian (scaled by ``sigmas[0]`` here; a warning flags pre-scaled noise).
    NFE for a grid of N steps: 2N - 1.
    """
    del key
    return sample(
        _heun_step, denoiser, noise, sigmas, cond=cond, callback=callback,
        return_trajectory=return_trajectory, unroll=unroll, checkpoint=checkpoint,
    )


def _heun_step(denoiser, carry, inputs, cond):
    (x,), (sigma, sigma_next, _) = carry, inputs
    x_next, x0_hat, _ = heun_update(denoiser, x, sigma, sigma_next, cond)
    return (x_next,), x0_hat


def _adams_bashforth(
    weights_fn, order, denoiser, noise, sigmas, cond, callback, return_trajectory,
    singlestep_warmup=False, *, unroll, checkpoint,
):
    """Shared driver of the multistep methods on ``d = dx/dsigma``: ``x_next = x + sum_j w_j
    d_{i-j}`` with the weights from ``weights_fn(sigma_nodes, sigma_next, step_order)``, a
    lower-order warm-up (``step_order = min(i + 1, order)``; with ``singlestep_warmup`` the first
    step is Heun's instead of Euler's) and the first-order step to 0."""

    def empty_history(x_start, sigmas):
        return jnp.zeros((order,) + x_start.shape, x_start.dtype)

    def placeholder_nodes(x_start, sigmas):
        # Nodes of the empty history: distinct and finite so unused weights stay finite.
        return sigmas[0] + (jnp.arange(order, dtype=sigmas.dtype) + 1.0) * (1.0 + sigmas[0])

    def step(denoiser, carry, inputs, cond):
        x, history, nodes = carry
        sigma, sigma_next, index = inputs
        step_order = jnp.minimum(index + 1, order)
        derivative = probability_flow_derivative(denoiser, x, sigma, cond)
        history = jnp.concatenate([derivative[None], history[:-1]], axis=0)
        nodes = jnp.concatenate([sigma[None], nodes[:-1]])
        weights = jnp.zeros((order,), x.dtype)
        for k in range(1, order + 1):
            weights_k = jnp.pad(weights_fn(nodes[:k], sigma_next, k), (0, order - k))
            weights = jnp.where(step_order == k, weights_k, weights)
        x_next = x + jnp.tensordot(weights, history, axes=1)
        return (x_next, history, nodes), x - expand(sigma, x) * derivative

    def heun_warmup(denoiser, carry, sigmas, cond):
        x_start, history, nodes = carry
        x_first, x0_hat, derivative = heun_update(denoiser, x_start, sigmas[0], sigmas[1], cond)
        return (x_first, history.at[0].set(derivative), nodes.at[0].set(sigmas[0])), x0_hat

    return sample(
        step, denoiser, noise, sigmas, cond=cond, callback=callback,
        return_trajectory=return_trajectory, carry_rest=(empty_history, placeholder_nodes),
        warmup=heun_warmup if singlestep_warmup else None, unroll=unroll, checkpoint=checkpoint,
    )


def _lms_weights(nodes, sigma_next, order):
    """Exact integrals over ``[sigma_i, sigma_next]`` of the Lagrange basis on ``nodes``."""
    offsets = [nodes[j] - nodes[0] for j in range(order)]
    moments = power_moments(sigma_next - nodes[0], order)
    return jnp.stack(lagrange_weights(offsets, moments))


def lms(
    denoiser, noise, sigmas, *, key=None, cond=None, return_trajectory=False, callback=None,
    unroll=None, checkpoint=False,
    order=4, singlestep_warmup=False,
):
    """Linear multistep (variable-step Adams-Bashforth) in sigma: the previous ``order``
    derivatives are interpolated by a Lagrange polynomial in sigma whose integral over the step is
    exact (Karras et al. 2022 / k-diffusion ``sample_lms``; Hairer, Norsett & Wanner, "Solving
    ODEs I", III.5, eq. 5.5). Warm-up with lower orders: its first-order step limits the measured
    global order to 2 for ``order >= 2``; ``singlestep_warmup`` takes the first step with Heun
    instead (+1 NFE), which restores order 3 (for ``order`` 3 and 4: the second step is still
    AB2). The step to 0 is first order, ``D(x, sigma_{N-1})`` (k-diffusion takes it at full
    order, which in float32 amplifies rounding).

    ``noise`` is UNIT Gaussian (scaled by ``sigmas[0]`` here; a warning flags pre-scaled noise).
    NFE for a grid of N steps: N (N + 1 with ``singlestep_warmup``).
    """
    del key
    check_order(order, (1, 2, 3, 4), "lms")
    return _adams_bashforth(_lms_weights, order, denoiser, noise, sigmas, cond, callback,
                            return_trajectory, singlestep_warmup, unroll=unroll, checkpoint=checkpoint)


_IPNDM_COEFFICIENTS = (
    (1.0,),
    (3.0 / 2.0, -1.0 / 2.0),
    (23.0 / 12.0, -16.0 / 12.0, 5.0 / 12.0),
    (55.0 / 24.0, -59.0 / 24.0, 37.0 / 24.0, -9.0 / 24.0),
)


def _ipndm_weights(nodes, sigma_next, order):
    coefficients = jnp.asarray(_IPNDM_COEFFICIENTS[order - 1], nodes.dtype)
    return (sigma_next - nodes[0]) * coefficients


def ipndm(
    denoiser, noise, sigmas, *, key=None, cond=None, return_trajectory=False, callback=None,
    unroll=None, checkpoint=False,
    order=4,
):
    """Improved PNDM: fixed-coefficient Adams-Bashforth on ``dx/dsigma`` with a lower-order
    warm-up, coefficients ``[1], [3, -1]/2, [23, -16, 5]/12, [55, -59, 37, -9]/24`` (Zhang & Chen
    2023, "DEIS", Sec. 4 / App. "iPNDM"; Liu et al. 2022, "PNDM", eq. 12). The coefficients are
    exact only on uniform grids; on others, and with its first-order warm-up step, the measured
    global order is 1 to 2. The step to 0 is first order, ``D(x, sigma_{N-1})``.

    ``noise`` is UNIT Gaussian (scaled by ``sigmas[0]`` here; a warning flags pre-scaled noise).
    NFE for a grid of N steps: N.
    """
    del key
    check_order(order, (1, 2, 3, 4), "ipndm")
    return _adams_bashforth(_ipndm_weights, order, denoiser, noise, sigmas, cond, callback,
                            return_trajectory, unroll=unroll, checkpoint=checkpoint)


SAMPLERS = (
    SamplerInfo(
        "euler", euler, stochastic=False, needs_key=False, order=1, nfe=one_per_step, options=(),
        summary="Euler on the probability-flow ODE (= DDIM eta 0)",
        source="Karras et al. 2022 Alg. 1; Song et al. 2021 DDIM",
    ),
    SamplerInfo(
        "heun", heun, stochastic=False, needs_key=False, order=2, nfe=two_per_step_then_one,
        options=(), summary="Heun (trapezoidal), Euler on the step to 0",
        source="Karras et al. 2022 Alg. 1",
    ),
    SamplerInfo(
        "lms", lms, stochastic=False, needs_key=False, order=2, nfe=one_per_step,
        options=("order", "singlestep_warmup"),
        summary="variable-step Adams-Bashforth in sigma, orders 1-4; order 3 with singlestep_warmup",
        source="k-diffusion sample_lms; Hairer et al. III.5",
        variants=(
            Variant({"order": 1}, 1, one_per_step),
            Variant({"order": 2}, 2, one_per_step),
            Variant({"singlestep_warmup": True}, 3, one_per_step_and_warmup),
        ),
    ),
    SamplerInfo(
        "ipndm", ipndm, stochastic=False, needs_key=False, order=2, nfe=one_per_step,
        options=("order",), summary="fixed-coefficient Adams-Bashforth (iPNDM), orders 1-4",
        source="Zhang & Chen 2023 (iPNDM); Liu et al. 2022 PNDM",
        variants=(Variant({"order": 1}, 1, one_per_step),),
    ),
)
