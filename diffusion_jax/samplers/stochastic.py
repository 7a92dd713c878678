"""Stochastic samplers in the VE frame ``x = x0 + sigma * noise``.

All need a typed ``key``; step ``i`` draws its noise from ``fold_in(key, i)``, so a sample is a
pure function of ``(noise, key)`` and ``vmap`` over keys gives independent chains.

The reverse SDE of the VE forward process ``dx = sqrt(d sigma^2 / d sigma) dW = sqrt(2 sigma) dW``
(Song et al. 2021, eq. 9 with ``t = sigma``) is ``dx = -2 sigma score dsigma + sqrt(2 sigma) dW``
run from large to small sigma (Song et al. 2021, eq. 6), with ``score = (D - x) / sigma^2``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffusion_jax.samplers._core import (
    all_inputs,
    check_inputs,
    check_key,
    denoise,
    expand,
    finish,
    interior_inputs,
    safe_sqrt,
    scan_steps,
)
from diffusion_jax.samplers.steps import ancestral_step, ddim_step, euler_step

__all__ = ["ddim", "ancestral", "edm_stochastic", "euler_maruyama", "predictor_corrector"]


def _single_step_sampler(step_rule, noise, sigmas, key, return_trajectory):
    noise, sigmas = check_inputs(noise, sigmas)
    x_start = noise * sigmas[0]

    def step(x, inputs):
        sigma, sigma_next, index = inputs
        step_key = None if key is None else jax.random.fold_in(key, index)
        return step_rule(x, sigma, sigma_next, step_key)

    x, states = scan_steps(step, x_start, all_inputs(sigmas), lambda x: x, return_trajectory)
    return finish(x, x_start, states, [], return_trajectory)


def ddim(denoiser, noise, sigmas, *, key=None, cond=None, return_trajectory=False, eta=0.0):
    """DDIM (Song et al. 2021, "DDIM", eq. 12 and 16) in the VE frame: ``x_next = x0_hat +
    sqrt(sigma_next^2 - c^2) eps_hat + c z`` with ``c = eta sigma_next sqrt(1 - sigma_next^2 /
    sigma^2)``. ``eta = 0`` is deterministic (= :func:`euler`, no key needed); ``eta = 1`` is DDPM.

    NFE for a grid of N steps: N.
    """
    if not isinstance(eta, (int, float)) or eta != 0:
        check_key(key, "ddim with eta != 0")
    else:
        key = None

    def rule(x, sigma, sigma_next, step_key):
        return ddim_step(denoiser, x, sigma, sigma_next, step_key, cond, eta=eta)

    return _single_step_sampler(rule, noise, sigmas, key, return_trajectory)


def ancestral(
    denoiser, noise, sigmas, *, key=None, cond=None, return_trajectory=False, eta=1.0, s_noise=1.0
):
    """Ancestral sampling (DDPM, Ho et al. 2020, Alg. 2, in the VE frame = k-diffusion's
    "Euler ancestral"): Euler to ``sigma_down``, then noise ``s_noise * sigma_up * z``.

    NFE for a grid of N steps: N.
    """
    check_key(key, "ancestral")

    def rule(x, sigma, sigma_next, step_key):
        return ancestral_step(
            denoiser, x, sigma, sigma_next, step_key, cond, eta=eta, s_noise=s_noise
        )

    return _single_step_sampler(rule, noise, sigmas, key, return_trajectory)


def edm_stochastic(
    denoiser,
    noise,
    sigmas,
    *,
    key=None,
    cond=None,
    return_trajectory=False,
    s_churn=0.0,
    s_tmin=0.0,
    s_tmax=float("inf"),
    s_noise=1.0,
):
    """EDM's stochastic sampler (Karras et al. 2022, Alg. 2): raise the noise level to
    ``sigma_hat = (1 + gamma) sigma`` with ``gamma = min(S_churn / N, sqrt(2) - 1)`` when
    ``S_tmin <= sigma <= S_tmax`` (adding ``sqrt(sigma_hat^2 - sigma^2) S_noise z``), then a Heun
    step from ``sigma_hat`` (Euler on the step to 0). With ``s_churn = 0`` it is :func:`heun`.

    NFE for a grid of N steps: 2N - 1.
    """
    if key is None and s_churn == 0:
        key = jax.random.key(0)  # without churn no noise is drawn into the result
    check_key(key, "edm_stochastic")
    noise, sigmas = check_inputs(noise, sigmas)
    num_steps = sigmas.shape[0] - 1
    gamma_max = min(s_churn / num_steps, 2.0**0.5 - 1.0)
    x_start = noise * sigmas[0]

    def churn(x, sigma, index):
        gamma = jnp.where((sigma >= s_tmin) & (sigma <= s_tmax), gamma_max, 0.0)
        sigma_hat = sigma * (1.0 + gamma)
        z = jax.random.normal(jax.random.fold_in(key, index), x.shape, x.dtype)
        scale = sigma * safe_sqrt(gamma * (2.0 + gamma)) * s_noise
        return x + expand(scale, x) * z, sigma_hat

    def step(x, inputs):
        sigma, sigma_next, index = inputs
        x_hat, sigma_hat = churn(x, sigma, index)
        derivative = (x_hat - denoise(denoiser, x_hat, sigma_hat, cond)) / expand(sigma_hat, x)
        x_euler = x_hat + expand(sigma_next - sigma_hat, x) * derivative
        x0_next = denoise(denoiser, x_euler, sigma_next, cond)
        derivative_next = (x_euler - x0_next) / expand(sigma_next, x)
        return x_hat + expand(0.5 * (sigma_next - sigma_hat), x) * (derivative + derivative_next)

    x, states = scan_steps(step, x_start, interior_inputs(sigmas), lambda x: x, return_trajectory)
    x_hat, sigma_hat = churn(x, sigmas[-2], num_steps - 1)
    x0 = euler_step(denoiser, x_hat, sigma_hat, sigmas[-1], None, cond)
    return finish(x0, x_start, states, [x0], return_trajectory)


def euler_maruyama(denoiser, noise, sigmas, *, key=None, cond=None, return_trajectory=False):
    """Euler-Maruyama on the VE reverse SDE in sigma-time (Song et al. 2021, eq. 6 and 9;
    Kloeden & Platen, eq. 9.1.1): ``x_next = x + 2 (sigma_next - sigma)(x - D) / sigma +
    sqrt(2 sigma (sigma - sigma_next)) z``. The step to 0 is the noise-free Tweedie denoising
    ``x0 = D(x, sigma)`` (score_sde's ``noise_removal``).

    NFE for a grid of N steps: N.
    """
    check_key(key, "euler_maruyama")
    noise, sigmas = check_inputs(noise, sigmas)
    x_start = noise * sigmas[0]

    def step(x, inputs):
        sigma, sigma_next, index = inputs
        x0_hat = denoise(denoiser, x, sigma, cond)
        drift = 2.0 * (x - x0_hat) / expand(sigma, x)
        z = jax.random.normal(jax.random.fold_in(key, index), x.shape, x.dtype)
        scale = safe_sqrt(2.0 * sigma * (sigma - sigma_next))
        return x + expand(sigma_next - sigma, x) * drift + expand(scale, x) * z

    x, states = scan_steps(step, x_start, interior_inputs(sigmas), lambda x: x, return_trajectory)
    x0 = denoise(denoiser, x, sigmas[-2], cond)
    return finish(x0, x_start, states, [x0], return_trajectory)


def langevin_step_size(score, z, snr, per_example=False):
    """``epsilon = 2 (snr ||z|| / ||score||)^2`` (Song et al. 2021, Alg. 4/5 with ``alpha_i = 1``
    in the VE frame). The norms are per example (``per_example=True``, as written in Alg. 4) or,
    by default, averaged over the batch as in score_sde's ``LangevinCorrector``: in few dimensions
    a per-example ``||score||`` near a mode is close to 0 and the step explodes."""
    axes = tuple(range(1, score.ndim))
    score_norm = jnp.sqrt(jnp.sum(score**2, axis=axes))
    noise_norm = jnp.sqrt(jnp.sum(z**2, axis=axes))
    if not per_example:
        score_norm = jnp.broadcast_to(jnp.mean(score_norm), score_norm.shape)
        noise_norm = jnp.broadcast_to(jnp.mean(noise_norm), noise_norm.shape)
    tiny = jnp.finfo(score.dtype).tiny
    return 2.0 * (snr * noise_norm / jnp.maximum(score_norm, jnp.sqrt(tiny))) ** 2


def predictor_corrector(
    denoiser,
    noise,
    sigmas,
    *,
    key=None,
    cond=None,
    return_trajectory=False,
    predictor=ancestral_step,
    corrector_steps=1,
    snr=0.16,
    per_example_step=False,
):
    """Predictor-corrector sampling (Song et al. 2021, Alg. 1, 4 and 5): at each noise level
    ``corrector_steps`` Langevin steps ``x += eps score + sqrt(2 eps) z`` with the snr rule of
    :func:`langevin_step_size`, then one ``predictor`` step (any rule
    ``(denoiser, x, sigma, sigma_next, key, cond) -> x`` from :mod:`.steps`; default DDPM
    ancestral, whose step to 0 is noise-free). ``snr = 0.16`` is score_sde's CIFAR-10 VE value;
    ``per_example_step`` selects per-example norms in the step size (see
    :func:`langevin_step_size`).

    NFE for a grid of N steps: N (corrector_steps + 1).
    """
    check_key(key, "predictor_corrector")
    if not isinstance(corrector_steps, int) or corrector_steps < 0:
        raise ValueError(f"corrector_steps must be a non-negative int; got {corrector_steps!r}")
    noise, sigmas = check_inputs(noise, sigmas)
    x_start = noise * sigmas[0]

    def step(x, inputs):
        sigma, sigma_next, index = inputs
        step_key = jax.random.fold_in(key, index)
        for m in range(corrector_steps):
            score = (denoise(denoiser, x, sigma, cond) - x) / expand(sigma, x) ** 2
            z = jax.random.normal(jax.random.fold_in(step_key, m + 1), x.shape, x.dtype)
            step_size = langevin_step_size(score, z, snr, per_example_step)
            x = x + expand(step_size, x) * score + expand(jnp.sqrt(2.0 * step_size), x) * z
        return predictor(denoiser, x, sigma, sigma_next, jax.random.fold_in(step_key, 0), cond)

    x, states = scan_steps(step, x_start, all_inputs(sigmas), lambda x: x, return_trajectory)
    return finish(x, x_start, states, [], return_trajectory)
