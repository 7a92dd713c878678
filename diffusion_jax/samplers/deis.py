"""DEIS (Zhang & Chen 2023, "Fast sampling of diffusion models with exponential integrator"),
the tAB variant in the VE frame with logSNR time ``lambda = -log sigma``.

With noise prediction the probability-flow ODE is ``dx/dlambda = -e^(-lambda) eps_hat``; tAB-DEIS
interpolates the last ``order`` values of ``eps_hat`` by a Lagrange polynomial in ``lambda`` and
integrates it exactly against the exponential weight (Zhang & Chen 2023, eq. 14-15; here the
integrals of ``e^(-tau) tau^k`` are closed-form phi functions instead of numerical quadrature).
"""

from __future__ import annotations

import jax.numpy as jnp

from diffusion_jax.samplers._core import (
    check_inputs,
    check_order,
    denoise,
    expand,
    interior_inputs,
    run_multistep,
)
from diffusion_jax.samplers._lagrange import exponential_moments, lagrange_weights
from diffusion_jax.samplers.dpm_solver import step_orders

__all__ = ["deis"]


def deis(
    denoiser,
    noise,
    sigmas,
    *,
    key=None,
    cond=None,
    return_trajectory=False,
    order=3,
    lower_order_final=True,
    singlestep_warmup=False,
):
    """tAB-DEIS of order 1-3: ``x_next = x - sigma_i sum_j C_j eps_{i-j}`` with ``C_j = int_0^h
    e^(-tau) l_j(tau) dtau`` for the Lagrange basis ``l_j`` on the previous logSNRs (Zhang & Chen
    2023, eq. 15). Order 1 is DDIM. Lower-order warm-up (its first-order step limits the
    asymptotic order to 2; ``singlestep_warmup`` takes the first step with DPM-Solver-2 instead,
    +1 NFE); the step to 0 returns ``x0_hat``.

    NFE for a grid of N steps: N (N + 1 with ``singlestep_warmup``).
    """
    del key
    check_order(order, (1, 2, 3), "deis")
    noise, sigmas = check_inputs(noise, sigmas)
    x_start = noise * sigmas[0]
    num_interior = sigmas.shape[0] - 2
    orders = step_orders(num_interior, order, lower_order_final)
    history = jnp.zeros((order,) + x_start.shape, x_start.dtype)
    lambdas = -jnp.log(sigmas[0]) - 1.0 - jnp.arange(order, dtype=sigmas.dtype)

    def step(carry, inputs):
        x, history, lambdas = carry
        sigma, sigma_next, _, step_order = inputs
        eps_hat = (x - denoise(denoiser, x, sigma, cond)) / expand(sigma, x)
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
        return x_next, history, lambdas

    sigma, sigma_next, index = interior_inputs(sigmas)
    carry = (x_start, history, lambdas)
    warmup_states = []
    if singlestep_warmup and num_interior >= 1:
        eps_start = (x_start - denoise(denoiser, x_start, sigmas[0], cond)) / sigmas[0]
        x_first = _dpm_solver_2_noise_step(denoiser, x_start, eps_start, sigmas[0], sigmas[1], cond)
        history = history.at[0].set(eps_start)
        lambdas = lambdas.at[0].set(-jnp.log(sigmas[0]))
        carry = (x_first, history, lambdas)
        sigma, sigma_next, index, orders = sigma[1:], sigma_next[1:], index[1:], orders[1:]
        warmup_states = [x_first]
    return run_multistep(
        step,
        carry,
        (sigma, sigma_next, index, orders),
        denoiser,
        sigmas,
        cond,
        x_start,
        warmup_states,
        return_trajectory,
    )


def _dpm_solver_2_noise_step(denoiser, x, eps, sigma, sigma_next, cond):
    """DPM-Solver-2 (Lu et al. 2022a, Alg. 1) given ``eps_hat`` at ``x``; VE frame."""
    sigma_mid = jnp.sqrt(sigma * sigma_next)
    u = x - (sigma - sigma_mid) * eps
    eps_mid = (u - denoise(denoiser, u, sigma_mid, cond)) / sigma_mid
    return x - (sigma - sigma_next) * eps_mid
