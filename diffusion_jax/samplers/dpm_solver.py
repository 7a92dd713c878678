"""DPM-Solver family in the VE frame (``alpha = 1``, ``lambda = -log sigma``).

Exponential integrators of the probability-flow ODE written in half-logSNR ``lambda``: with data
prediction (DPM-Solver++) ``x(l_t) = (sigma_t / sigma_s) x(l_s) + sigma_t int e^l x0_hat dl``;
with noise prediction (DPM-Solver) ``x(l_t) = x(l_s) - int e^(-l) eps_hat dl`` (Lu et al. 2022a,
eq. 3.4 / 2022b, eq. 8 with ``alpha = 1``). ``h = log(sigma_i / sigma_{i+1})``.

Every step that ends above 0 uses the method's order; the step to ``sigma = 0`` (``h = inf``) is
the first-order step, which returns ``x0_hat`` (as k-diffusion does; it avoids the
``log(0)`` failure of diffusers#9007).
"""

from __future__ import annotations

import jax.numpy as jnp

from diffusion_jax.denoisers import probability_flow_derivative
from diffusion_jax.samplers._core import (
    check_key,
    check_nonnegative,
    expand,
    safe_sqrt,
    sample,
    step_noise,
)
from diffusion_jax.samplers._info import (
    SamplerInfo,
    Variant,
    one_per_step,
    one_per_step_and_warmup,
    three_per_step_then_one,
    two_per_step_then_one,
)

__all__ = [
    "dpm_solver_2",
    "dpm_solver_3",
    "dpmpp_2m",
    "dpmpp_3m",
    "dpmpp_2m_sde",
    "dpmpp_3m_sde",
]


# -- singlestep -------------------------------------------------------------------------------


def _singlestep_data(denoiser, x, sigma, sigma_next, cond, order, x0_hat=None):
    """DPM-Solver++(2S) (Lu et al. 2022b, Alg. 1, r = 1/2) and (3S) (Lu et al. 2022b, App. and
    Lu et al. 2022a, Alg. 2 with r1 = 1/3, r2 = 2/3) in data prediction; ``x0_hat`` at ``x``
    may be passed in when already known. Returns ``(x_next, x0_hat)``."""
    h = jnp.log(sigma / sigma_next)
    if x0_hat is None:
        x0_hat = denoiser(x, sigma, cond)
    if order == 2:
        sigma_mid = jnp.sqrt(sigma * sigma_next)
        u = expand(sigma_mid / sigma, x) * x - expand(jnp.expm1(-0.5 * h), x) * x0_hat
        x0_mid = denoiser(u, sigma_mid, cond)
        x_next = expand(sigma_next / sigma, x) * x - expand(jnp.expm1(-h), x) * x0_mid
        return x_next, x0_hat
    r1, r2 = 1.0 / 3.0, 2.0 / 3.0
    sigma_1, sigma_2 = sigma * jnp.exp(-r1 * h), sigma * jnp.exp(-r2 * h)
    u1 = expand(sigma_1 / sigma, x) * x - expand(jnp.expm1(-r1 * h), x) * x0_hat
    x0_1 = denoiser(u1, sigma_1, cond)
    phi_22 = jnp.expm1(-r2 * h) / (r2 * h) + 1.0
    u2 = (
        expand(sigma_2 / sigma, x) * x
        - expand(jnp.expm1(-r2 * h), x) * x0_hat
        + expand(r2 / r1 * phi_22, x) * (x0_1 - x0_hat)
    )
    x0_2 = denoiser(u2, sigma_2, cond)
    phi_2 = jnp.expm1(-h) / h + 1.0
    x_next = (
        expand(sigma_next / sigma, x) * x
        - expand(jnp.expm1(-h), x) * x0_hat
        + expand(phi_2 / r2, x) * (x0_2 - x0_hat)
    )
    return x_next, x0_hat


def _singlestep_noise(denoiser, x, sigma, sigma_next, cond, order, eps=None):
    """DPM-Solver-2 and -3 (Lu et al. 2022a, Alg. 1 with r1 = 1/2 and Alg. 2 with r1 = 1/3,
    r2 = 2/3) in noise prediction; in the VE frame ``sigma_s (e^(r h) - 1) = sigma_i - sigma_s``
    and ``eps_hat = dx/dsigma`` (``eps`` at ``x`` may be passed in). Returns ``(x_next, x0_hat)``."""
    h = jnp.log(sigma / sigma_next)

    def eps_at(u, level):
        return probability_flow_derivative(denoiser, u, level, cond)

    eps = eps_at(x, sigma) if eps is None else eps
    x0_hat = x - expand(sigma, x) * eps
    if order == 2:
        sigma_mid = jnp.sqrt(sigma * sigma_next)
        u = x - expand(sigma - sigma_mid, x) * eps
        return x - expand(sigma - sigma_next, x) * eps_at(u, sigma_mid), x0_hat
    r1, r2 = 1.0 / 3.0, 2.0 / 3.0
    sigma_1, sigma_2 = sigma * jnp.exp(-r1 * h), sigma * jnp.exp(-r2 * h)
    u1 = x - expand(sigma - sigma_1, x) * eps
    difference_1 = eps_at(u1, sigma_1) - eps
    coefficient = sigma_2 * (r2 / r1) * (jnp.expm1(r2 * h) / (r2 * h) - 1.0)
    u2 = x - expand(sigma - sigma_2, x) * eps - expand(coefficient, x) * difference_1
    difference_2 = eps_at(u2, sigma_2) - eps
    coefficient = sigma_next / r2 * (jnp.expm1(h) / h - 1.0)
    x_next = x - expand(sigma - sigma_next, x) * eps - expand(coefficient, x) * difference_2
    return x_next, x0_hat


def _singlestep(
    denoiser, noise, sigmas, cond, callback, return_trajectory, order, data_prediction, *,
    unroll, checkpoint,
):
    update = _singlestep_data if data_prediction else _singlestep_noise

    def step(denoiser, carry, inputs, cond):
        (x,), (sigma, sigma_next, _) = carry, inputs
        x_next, x0_hat = update(denoiser, x, sigma, sigma_next, cond, order)
        return (x_next,), x0_hat

    return sample(
        step, denoiser, noise, sigmas, cond=cond, callback=callback,
        return_trajectory=return_trajectory, unroll=unroll, checkpoint=checkpoint,
    )


def dpm_solver_2(
    denoiser, noise, sigmas, *, key=None, cond=None, return_trajectory=False, callback=None,
    unroll=None, checkpoint=False,
    data_prediction=True,
):
    """Singlestep second-order DPM-Solver: DPM-Solver++(2S) (Lu et al. 2022b, Alg. 1) with
    ``data_prediction=True``, DPM-Solver-2 (Lu et al. 2022a, Alg. 1) otherwise; the midpoint is
    the logSNR midpoint ``sqrt(sigma_i sigma_{i+1})``.

    ``noise`` is UNIT Gaussian (scaled by ``sigmas[0]`` here; a warning flags pre-scaled noise).
    NFE for a grid of N steps: 2(N - 1) + 1 = 2N - 1.
    """
    del key
    return _singlestep(
        denoiser, noise, sigmas, cond, callback, return_trajectory, 2, data_prediction,
        unroll=unroll, checkpoint=checkpoint,
    )


def dpm_solver_3(
    denoiser, noise, sigmas, *, key=None, cond=None, return_trajectory=False, callback=None,
    unroll=None, checkpoint=False,
    data_prediction=True,
):
    """Singlestep third-order DPM-Solver: DPM-Solver++(3S) with ``data_prediction=True``,
    DPM-Solver-3 (Lu et al. 2022a, Alg. 2, r1 = 1/3, r2 = 2/3) otherwise.

    ``noise`` is UNIT Gaussian (scaled by ``sigmas[0]`` here; a warning flags pre-scaled noise).
    NFE for a grid of N steps: 3(N - 1) + 1 = 3N - 2.
    """
    del key
    return _singlestep(
        denoiser, noise, sigmas, cond, callback, return_trajectory, 3, data_prediction,
        unroll=unroll, checkpoint=checkpoint,
    )


# -- multistep (DPM-Solver++ 2M / 3M and their SDE versions) ----------------------------------


def step_orders(num_interior, order, lower_order_final):
    """Per-step orders of a multistep method over the steps that end above 0: warm-up
    ``min(i + 1, order)``; with ``lower_order_final`` also at most ``num_interior - i + 1``
    (Lu et al. 2022b, Sec. 5 / dpm-solver's ``lower_order_final``; the final step to 0 is order 1).
    """
    index = jnp.arange(num_interior)
    orders = jnp.minimum(index + 1, order)
    if lower_order_final:
        orders = jnp.minimum(orders, num_interior - index + 1)
    return orders


def _multistep(
    denoiser, noise, sigmas, key, cond, callback, return_trajectory, order, eta, s_noise,
    lower_order_final, singlestep_warmup=False, *, unroll, checkpoint,
):
    """Shared DPM-Solver++(kM) / SDE-DPM-Solver++(kM) driver (Lu et al. 2022b, Alg. 2 and
    eq. (9) for the SDE; ``eta`` scales the injected noise as in k-diffusion). With
    ``singlestep_warmup`` the first step is DPM-Solver++(2S) (one more evaluation), so no
    first-order step limits the global order of the third-order method to 2."""
    stochastic = key is not None

    def zeros(x_start, sigmas):
        return jnp.zeros_like(x_start)

    def ones(x_start, sigmas):  # placeholder step sizes: finite, so gradients stay finite
        return jnp.ones((), x_start.dtype)

    def step(denoiser, carry, inputs, cond):
        x, x0_prev_1, x0_prev_2, h_prev_1, h_prev_2 = carry
        sigma, sigma_next, index, step_order = inputs
        x0_hat = denoiser(x, sigma, cond)
        h = jnp.log(sigma / sigma_next)
        h_eta = h * (1.0 + eta)
        one_minus = -jnp.expm1(-h_eta)  # 1 - e^(-(1 + eta) h)
        x_next = expand(jnp.exp(-h_eta), x) * x + expand(one_minus, x) * x0_hat
        # second order: midpoint form of Lu et al. 2022b, Alg. 2 (D = (1 + 1/2r) x0 - 1/2r x0_prev)
        r0 = h_prev_1 / h
        second = expand(0.5 * one_minus / r0, x) * (x0_hat - x0_prev_1)
        # third order: exact integrals of the quadratic interpolant (phi_2, phi_3 of -h_eta)
        r1 = h_prev_2 / h
        d1_0 = (x0_hat - x0_prev_1) / expand(r0, x)
        d1_1 = (x0_prev_1 - x0_prev_2) / expand(r1, x)
        d1 = d1_0 + expand(r0 / (r0 + r1), x) * (d1_0 - d1_1)
        d2 = (d1_0 - d1_1) / expand(r0 + r1, x)
        phi_2 = jnp.expm1(-h_eta) / h_eta + 1.0
        phi_3 = phi_2 / h_eta - 0.5
        third = expand(phi_2, x) * d1 - expand(2.0 * phi_3, x) * d2
        x_next = x_next + jnp.where(step_order == 2, second, 0.0)
        x_next = x_next + jnp.where(step_order == 3, third, 0.0)
        if stochastic:
            scale = sigma_next * safe_sqrt(-jnp.expm1(-2.0 * eta * h)) * s_noise
            x_next = x_next + expand(scale, x) * step_noise(key, index, x)
        return (x_next, x0_hat, x0_prev_1, h, h_prev_1), x0_hat

    def warmup(denoiser, carry, sigmas, cond):
        x_start, zeros_like_x = carry[0], carry[2]
        x_first, x0_hat = _singlestep_data(denoiser, x_start, sigmas[0], sigmas[1], cond, 2)
        h_first = jnp.log(sigmas[0] / sigmas[1])
        return (x_first, x0_hat, zeros_like_x, h_first, carry[4]), x0_hat

    return sample(
        step, denoiser, noise, sigmas, cond=cond, callback=callback,
        return_trajectory=return_trajectory, carry_rest=(zeros, zeros, ones, ones),
        per_step=(lambda n: step_orders(n, order, lower_order_final),),
        warmup=warmup if singlestep_warmup else None, unroll=unroll, checkpoint=checkpoint,
    )


def dpmpp_2m(
    denoiser, noise, sigmas, *, key=None, cond=None, return_trajectory=False, callback=None,
    unroll=None, checkpoint=False,
    lower_order_final=True,
):
    """DPM-Solver++(2M), multistep second order in data prediction (Lu et al. 2022b, Alg. 2):
    ``x_next = (s_next/s) x - expm1(-h) D``, ``D = (1 + 1/2r) x0_hat - 1/2r x0_prev``. First
    step first order (warm-up); the step to 0 returns ``x0_hat``.

    ``noise`` is UNIT Gaussian (scaled by ``sigmas[0]`` here; a warning flags pre-scaled noise).
    NFE for a grid of N steps: N.
    """
    del key
    return _multistep(
        denoiser, noise, sigmas, None, cond, callback, return_trajectory, 2, 0.0, 1.0,
        lower_order_final, unroll=unroll, checkpoint=checkpoint,
    )


def dpmpp_3m(
    denoiser, noise, sigmas, *, key=None, cond=None, return_trajectory=False, callback=None,
    unroll=None, checkpoint=False,
    lower_order_final=True, singlestep_warmup=False,
):
    """DPM-Solver++(3M), multistep third order in data prediction (Lu et al. 2022b, App. B; the
    quadratic interpolant of the last three ``x0_hat`` integrated exactly against ``e^lambda``).
    Orders 1, 2 for warm-up (the first-order step makes the asymptotic order 2; with
    ``singlestep_warmup`` the first step is DPM-Solver++(2S) instead, +1 NFE, and the order is 3);
    with ``lower_order_final`` the last step above 0 is second order.

    ``noise`` is UNIT Gaussian (scaled by ``sigmas[0]`` here; a warning flags pre-scaled noise).
    NFE for a grid of N steps: N (N + 1 with ``singlestep_warmup``).
    """
    del key
    return _multistep(
        denoiser, noise, sigmas, None, cond, callback, return_trajectory, 3, 0.0, 1.0,
        lower_order_final, singlestep_warmup, unroll=unroll, checkpoint=checkpoint,
    )


def dpmpp_2m_sde(
    denoiser, noise, sigmas, *, key=None, cond=None, return_trajectory=False, callback=None,
    unroll=None, checkpoint=False,
    eta=1.0, s_noise=1.0, lower_order_final=True,
):
    """SDE-DPM-Solver++(2M) (Lu et al. 2022b, eq. 9 / Sec. 4.3; ``eta`` as in k-diffusion):
    ``x_next = e^(-(1+eta)h) x + (1 - e^(-(1+eta)h)) x0_hat + ... + sigma_next
    sqrt(1 - e^(-2 eta h)) z``. With ``eta = 1`` the first step is the DDPM ancestral step.

    ``noise`` is UNIT Gaussian (scaled by ``sigmas[0]`` here; a warning flags pre-scaled noise).
    NFE for a grid of N steps: N.
    """
    check_key(key, "dpmpp_2m_sde")
    check_nonnegative("dpmpp_2m_sde", eta=eta, s_noise=s_noise)
    return _multistep(
        denoiser, noise, sigmas, key, cond, callback, return_trajectory, 2, eta, s_noise,
        lower_order_final, unroll=unroll, checkpoint=checkpoint,
    )


def dpmpp_3m_sde(
    denoiser, noise, sigmas, *, key=None, cond=None, return_trajectory=False, callback=None,
    unroll=None, checkpoint=False,
    eta=1.0, s_noise=1.0, lower_order_final=True,
):
    """SDE-DPM-Solver++(3M) (Lu et al. 2022b, eq. 9 with the third-order multistep data term),
    after k-diffusion's ``sample_dpmpp_3m_sde`` but NOT identical to it: (1) the third-order term
    is ``phi_2 D1 - 2 phi_3 D2``, the exact integral of the quadratic interpolant (k-diffusion
    uses ``- phi_3 D2``, which measures order 2 instead of 3 in the ODE limit; see
    docs/samplers.md); (2) the second-order warm-up step uses the midpoint form
    ``(1 - e^(-h_eta)) / (2 r)`` of Lu et al. 2022b, Alg. 2, where k-diffusion uses
    ``phi_2(-h_eta) / r``; (3) with ``lower_order_final`` the last step above 0 is second order
    (k-diffusion has no such option); (4) the noise is independent per step
    (``fold_in(key, i)``) where k-diffusion defaults to a Brownian-tree noise sampler. The step
    to 0 returns ``x0_hat`` in both.

    ``noise`` is UNIT Gaussian (scaled by ``sigmas[0]`` here; a warning flags pre-scaled noise).
    NFE for a grid of N steps: N.
    """
    check_key(key, "dpmpp_3m_sde")
    check_nonnegative("dpmpp_3m_sde", eta=eta, s_noise=s_noise)
    return _multistep(
        denoiser, noise, sigmas, key, cond, callback, return_trajectory, 3, eta, s_noise,
        lower_order_final, unroll=unroll, checkpoint=checkpoint,
    )


_SDE_OPTIONS = ("eta", "s_noise", "lower_order_final")
SAMPLERS = (
    SamplerInfo(
        "dpm_solver_2", dpm_solver_2, stochastic=False, needs_key=False, order=2,
        nfe=two_per_step_then_one, options=("data_prediction",),
        summary="singlestep DPM-Solver++(2S) / DPM-Solver-2 (logSNR midpoint)",
        source="Lu et al. 2022a Alg. 1 / 2022b Alg. 1",
        variants=(Variant({"data_prediction": False}, 2, two_per_step_then_one),),
    ),
    SamplerInfo(
        "dpm_solver_3", dpm_solver_3, stochastic=False, needs_key=False, order=3,
        nfe=three_per_step_then_one, options=("data_prediction",),
        summary="singlestep DPM-Solver++(3S) / DPM-Solver-3",
        source="Lu et al. 2022a Alg. 2 / 2022b (3S)",
        variants=(Variant({"data_prediction": False}, 3, three_per_step_then_one),),
    ),
    SamplerInfo(
        "dpmpp_2m", dpmpp_2m, stochastic=False, needs_key=False, order=2, nfe=one_per_step,
        options=("lower_order_final",), summary="multistep DPM-Solver++(2M)",
        source="Lu et al. 2022b Alg. 2",
    ),
    SamplerInfo(
        "dpmpp_3m", dpmpp_3m, stochastic=False, needs_key=False, order=2, nfe=one_per_step,
        options=("lower_order_final", "singlestep_warmup"),
        summary="multistep DPM-Solver++(3M); order 3 with singlestep_warmup",
        source="Lu et al. 2022b App. B",
        variants=(Variant({"singlestep_warmup": True}, 3, one_per_step_and_warmup),),
    ),
    SamplerInfo(
        "dpmpp_2m_sde", dpmpp_2m_sde, stochastic=True, needs_key=True, order=None,
        nfe=one_per_step, options=_SDE_OPTIONS, summary="SDE-DPM-Solver++(2M)",
        source="Lu et al. 2022b eq. 9",
        variants=(Variant({"eta": 0.0}, 2, one_per_step),),
    ),
    SamplerInfo(
        "dpmpp_3m_sde", dpmpp_3m_sde, stochastic=True, needs_key=True, order=None,
        nfe=one_per_step, options=_SDE_OPTIONS,
        summary="SDE-DPM-Solver++(3M) (differs from k-diffusion's, see its docstring)",
        source="Lu et al. 2022b eq. 9; after k-diffusion sample_dpmpp_3m_sde",
        variants=(Variant({"eta": 0.0}, 2, one_per_step),),
    ),
)
