"""DEIS (Zhang & Chen 2023, "Fast sampling of diffusion models with exponential integrator"),
the tAB variant in the VE frame with logSNR time ``lambda = -log sigma``.

With noise prediction the probability-flow ODE is ``dx/dlambda = -e^(-lambda) eps_hat``; tAB-DEIS
interpolates the last ``order`` values of ``eps_hat`` by a Lagrange polynomial in ``lambda`` and
integrates it exactly against the exponential weight (Zhang & Chen 2023, eq. 14-15; here the
integrals of ``e^(-tau) tau^k`` are closed-form phi functions instead of numerical quadrature).
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
)
from diffusion_jax.samplers._lagrange import exponential_moments, lagrange_weights
from diffusion_jax.samplers.dpm_solver import _singlestep_noise, step_orders

__all__ = ["deis"]


def deis(
    denoiser, noise, sigmas, *, key=None, cond=None, return_trajectory=False, callback=None,
    unroll=None, checkpoint=False,
    order=3, lower_order_final=True, singlestep_warmup=False,
):
    """tAB-DEIS of order 1-3: ``x_next = x - sigma_i sum_j C_j eps_{i-j}`` with ``C_j = int_0^h
    e^(-tau) l_j(tau) dtau`` for the Lagrange basis ``l_j`` on the previous logSNRs (Zhang & Chen
    2023, eq. 15); in the VE frame ``eps_hat = dx/dsigma``. Order 1 is DDIM. Lower-order warm-up
    (its first-order step limits the asymptotic order to 2; ``singlestep_warmup`` takes the first
    step with DPM-Solver-2 instead, +1 NFE); the step to 0 returns ``x0_hat``.

    ``noise`` is UNIT Gaussian (scaled by ``sigmas[0]`` here; a warning flags pre-scaled noise).
    NFE for a grid of N steps: N (N + 1 with ``singlestep_warmup``).
    """
    del key
    check_order(order, (1, 2, 3), "deis")

    def empty_history(x_start, sigmas):
        return jnp.zeros((order,) + x_start.shape, x_start.dtype)

    def placeholder_lambdas(x_start, sigmas):
        return -jnp.log(sigmas[0]) - 1.0 - jnp.arange(order, dtype=sigmas.dtype)

    def step(denoiser, carry, inputs, cond):
        x, history, lambdas = carry
        sigma, sigma_next, _, step_order = inputs
        eps_hat = probability_flow_derivative(denoiser, x, sigma, cond)
        lambda_now = -jnp.log(sigma)
        history = jnp.concatenate([eps_hat[None], history[:-1]], axis=0)
        lambdas = jnp.concatenate([lambda_now[None], lambdas[:-1]])
        h = jnp.log(sigma / sigma_next)
        weights = jnp.zeros((order,), x.dtype)
        for k in range(1, order + 1):
            nodes = [lambdas[j] - lambda_now for j in range(k)]
            weights_k = jnp.stack(lagrange_weights(nodes, exponential_moments(h, k)))
            weights = jnp.where(step_order == k, jnp.pad(weights_k, (0, order - k)), weights)
        x_next = x - expand(sigma, x) * jnp.tensordot(weights, history, axes=1)
        return (x_next, history, lambdas), x - expand(sigma, x) * eps_hat

    def warmup(denoiser, carry, sigmas, cond):
        x_start, history, lambdas = carry
        eps_start = probability_flow_derivative(denoiser, x_start, sigmas[0], cond)
        x_first, x0_hat = _singlestep_noise(
            denoiser, x_start, sigmas[0], sigmas[1], cond, 2, eps=eps_start
        )
        history = history.at[0].set(eps_start)
        lambdas = lambdas.at[0].set(-jnp.log(sigmas[0]))
        return (x_first, history, lambdas), x0_hat

    return sample(
        step, denoiser, noise, sigmas, cond=cond, callback=callback,
        unroll=unroll, checkpoint=checkpoint,
        return_trajectory=return_trajectory, carry_rest=(empty_history, placeholder_lambdas),
        per_step=(lambda n: step_orders(n, order, lower_order_final),),
        warmup=warmup if singlestep_warmup else None,
    )


SAMPLERS = (
    SamplerInfo(
        "deis", deis, stochastic=False, needs_key=False, order=2, nfe=one_per_step,
        options=("order", "lower_order_final", "singlestep_warmup"),
        summary="tAB-DEIS in logSNR, orders 1-3; order 3 with singlestep_warmup",
        source="Zhang & Chen 2023 eq. 15",
        variants=(
            Variant({"order": 1}, 1, one_per_step),
            Variant({"singlestep_warmup": True}, 3, one_per_step_and_warmup),
        ),
    ),
)
