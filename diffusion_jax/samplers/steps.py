"""Single-evaluation update rules ``step(denoiser, x, sigma, sigma_next, key, cond) -> x_next``.
Bind options with ``functools.partial(ddim_step, eta=0.5)``.

They are the building blocks of :func:`euler`, :func:`ddim`, :func:`ancestral` and the predictors
of :func:`predictor_corrector`. ``key`` is ignored by the deterministic ones. Every rule costs one
denoiser evaluation and accepts ``sigma_next = 0`` (it then returns ``x0_hat``). Each is the
evaluation ``x0_hat = D(x, sigma)`` followed by an ``*_update(x, x0_hat, ...)`` that the samplers
share (and :func:`heun_update`, the two-evaluation Heun step of :func:`heun` and
:func:`edm_stochastic`).
"""

from __future__ import annotations

import jax

from diffusion_jax.denoisers import probability_flow_derivative
from diffusion_jax.samplers._core import denoise, expand, safe_sqrt

__all__ = ["euler_step", "ddim_step", "ancestral_step", "ancestral_sigmas"]


def euler_update(x, x0_hat, sigma, sigma_next):
    """Euler step of ``dx/dsigma = (x - D(x, sigma)) / sigma`` (Karras et al. 2022, eq. 4 and
    Alg. 1 line 5) written as ``D + (sigma_next / sigma)(x - D)`` = DDIM with eta 0 (Song et al.
    2021, "DDIM", eq. 12 in the VE frame)."""
    return x0_hat + expand(sigma_next / sigma, x) * (x - x0_hat)


def euler_step(denoiser, x, sigma, sigma_next, key=None, cond=None):
    """Euler step on the probability-flow ODE (:func:`euler_update` after one evaluation)."""
    del key
    return euler_update(x, denoise(denoiser, x, sigma, cond), sigma, sigma_next)


def heun_update(denoiser, x, sigma, sigma_next, cond):
    """Heun's trapezoidal step from ``sigma`` to ``sigma_next > 0`` on ``dx/dsigma`` (Karras et al.
    2022, Alg. 1 lines 5-8); returns ``(x_next, x0_hat, derivative)`` at ``(x, sigma)``. Two
    evaluations."""
    derivative = probability_flow_derivative(denoiser, x, sigma, cond)
    x_euler = x + expand(sigma_next - sigma, x) * derivative
    derivative_next = probability_flow_derivative(denoiser, x_euler, sigma_next, cond)
    x_next = x + expand(0.5 * (sigma_next - sigma), x) * (derivative + derivative_next)
    return x_next, x - expand(sigma, x) * derivative, derivative


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


def _add_noise(x, scale, key):
    if key is None:
        return x
    return x + expand(scale, x) * jax.random.normal(key, x.shape, x.dtype)


def ddim_update(x, x0_hat, sigma, sigma_next, key, eta):
    """DDIM ``x_next = x0_hat + sqrt(sigma_next^2 - c^2) eps_hat + c z`` with ``c = sigma_up(eta)``
    (Song et al. 2021, "DDIM", eq. 12, divided by ``alpha`` into the VE frame); no noise for
    ``key=None``."""
    eps_hat = (x - x0_hat) / expand(sigma, x)
    sigma_down, sigma_up = ancestral_sigmas(sigma, sigma_next, eta)
    return _add_noise(x0_hat + expand(sigma_down, x) * eps_hat, sigma_up, key)


def ddim_step(denoiser, x, sigma, sigma_next, key=None, cond=None, *, eta=0.0):
    """DDIM step (:func:`ddim_update` after one evaluation). ``eta = 0`` is :func:`euler_step`,
    ``eta = 1`` the DDPM ancestral step.
    """
    return ddim_update(x, denoise(denoiser, x, sigma, cond), sigma, sigma_next, key, eta)


def ancestral_update(x, x0_hat, sigma, sigma_next, key, eta, s_noise):
    """Euler to ``sigma_down``, then ``+ s_noise * sigma_up * z`` (Ho et al. 2020, Alg. 2 in the VE
    frame; Karras et al. 2022 / k-diffusion "Euler a"); no noise for ``key=None``."""
    sigma_down, sigma_up = ancestral_sigmas(sigma, sigma_next, eta)
    x_next = x + expand(sigma_down - sigma, x) * ((x - x0_hat) / expand(sigma, x))
    return _add_noise(x_next, s_noise * sigma_up, key)


def ancestral_step(denoiser, x, sigma, sigma_next, key=None, cond=None, *, eta=1.0, s_noise=1.0):
    """Euler-ancestral step (:func:`ancestral_update` after one evaluation). With ``eta = 1`` it
    draws from the DDPM posterior ``q(x_next | x, x0 = x0_hat)``.
    """
    x0_hat = denoise(denoiser, x, sigma, cond)
    return ancestral_update(x, x0_hat, sigma, sigma_next, key, eta, s_noise)
