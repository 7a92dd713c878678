"""Single-evaluation update rules ``step(denoiser, x, sigma, sigma_next, key, cond) -> x_next``.
Bind options with ``functools.partial(ddim_step, eta=0.5)``.

They are the building blocks of :func:`euler`, :func:`ddim`, :func:`ancestral` and the predictors
of :func:`predictor_corrector`. ``key`` is ignored by the deterministic ones. Every rule costs one
denoiser evaluation and accepts ``sigma_next = 0`` (it then returns ``x0_hat``).
"""

from __future__ import annotations

import jax

from diffusion_jax.samplers._core import denoise, expand, safe_sqrt

__all__ = ["euler_step", "ddim_step", "ancestral_step", "ancestral_sigmas"]


def euler_step(denoiser, x, sigma, sigma_next, key=None, cond=None):
    """Euler step of ``dx/dsigma = (x - D(x, sigma)) / sigma`` (Karras et al. 2022, eq. 4 and
    Alg. 1 line 5); written as ``D + (sigma_next / sigma)(x - D)`` = DDIM with eta 0 (Song et al.
    2021, "DDIM", eq. 12 in the VE frame).
    """
    del key
    x0_hat = denoise(denoiser, x, sigma, cond)
    return x0_hat + expand(sigma_next / sigma, x) * (x - x0_hat)


def ancestral_sigmas(sigma, sigma_next, eta=1.0):
    """``(sigma_down, sigma_up)`` of an ancestral step: ``sigma_up = min(sigma_next, eta *
    sigma_next sqrt(1 - sigma_next^2 / sigma^2))``, ``sigma_down^2 = sigma_next^2 - sigma_up^2``
    (the DDPM posterior ``q(x_next | x, x0)`` in the VE frame; Ho et al. 2020, eq. 7; Song et al.
    2021, "DDIM", eq. 16 with ``sigma_t(eta)``).
    """
    ratio_squared = (sigma_next / sigma) ** 2
    sigma_up = eta * sigma_next * safe_sqrt(1.0 - ratio_squared)
    sigma_up = jax.numpy.minimum(sigma_up, sigma_next)
    sigma_down = safe_sqrt(sigma_next**2 - sigma_up**2)
    return sigma_down, sigma_up


def ddim_step(denoiser, x, sigma, sigma_next, key=None, cond=None, *, eta=0.0):
    """DDIM step ``x_next = x0_hat + sqrt(sigma_next^2 - c^2) eps_hat + c z`` with
    ``c = sigma_up(eta)`` (Song et al. 2021, "DDIM", eq. 12, divided by ``alpha`` into the VE
    frame). ``eta = 0`` is :func:`euler_step`, ``eta = 1`` the DDPM ancestral step.
    """
    x0_hat = denoise(denoiser, x, sigma, cond)
    eps_hat = (x - x0_hat) / expand(sigma, x)
    sigma_down, sigma_up = ancestral_sigmas(sigma, sigma_next, eta)
    x_next = x0_hat + expand(sigma_down, x) * eps_hat
    if key is None:
        return x_next
    return x_next + expand(sigma_up, x) * jax.random.normal(key, x.shape, x.dtype)


def ancestral_step(denoiser, x, sigma, sigma_next, key=None, cond=None, *, eta=1.0, s_noise=1.0):
    """Euler-ancestral step: Euler to ``sigma_down``, then add ``s_noise * sigma_up * z``
    (Ho et al. 2020, Alg. 2 in the VE frame; Karras et al. 2022 / k-diffusion "Euler a").
    With ``eta = 1`` it draws from the DDPM posterior ``q(x_next | x, x0 = x0_hat)``.
    """
    sigma_down, sigma_up = ancestral_sigmas(sigma, sigma_next, eta)
    x0_hat = denoise(denoiser, x, sigma, cond)
    derivative = (x - x0_hat) / expand(sigma, x)
    x_next = x + expand(sigma_down - sigma, x) * derivative
    if key is None:
        return x_next
    noise = jax.random.normal(key, x.shape, x.dtype)
    return x_next + expand(s_noise * sigma_up, x) * noise
