"""Stochastic samplers in the VE frame ``x = x0 + sigma * noise``.

``noise`` is UNIT Gaussian (scaled by ``sigmas[0]`` here). Step ``i`` draws its noise from
``fold_in(key, i)``, so a sample is a pure function of ``(noise, key)`` and ``vmap`` over keys
gives independent chains.

The reverse SDE of the VE forward process ``dx = sqrt(d sigma^2 / d sigma) dW = sqrt(2 sigma) dW``
(Song et al. 2021, eq. 9 with ``t = sigma``) is ``dx = -2 sigma score dsigma + sqrt(2 sigma) dW``
run from large to small sigma (Song et al. 2021, eq. 6), with ``score = (D - x) / sigma^2``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from diffusion_jax.denoisers import probability_flow_derivative, score_from_denoiser
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
    two_per_step,
    two_per_step_then_one,
)
from diffusion_jax.samplers.steps import ancestral_step, ancestral_update, ddim_update, heun_update

__all__ = ["ddim", "ancestral", "edm_stochastic", "euler_maruyama", "predictor_corrector"]


def _single_step_sampler(
    update, denoiser, noise, sigmas, key, cond, callback, return_trajectory, *, unroll, checkpoint
):
    """A sampler whose step is ``update(x, x0_hat, sigma, sigma_next, step_key)`` after one
    evaluation (``step_key = fold_in(key, i)``, ``None`` without a key)."""

    def step(denoiser, carry, inputs, cond):
        (x,), (sigma, sigma_next, index) = carry, inputs
        x0_hat = denoiser(x, sigma, cond)
        step_key = None if key is None else jax.random.fold_in(key, index)
        return (update(x, x0_hat, sigma, sigma_next, step_key),), x0_hat

    return sample(
        step, denoiser, noise, sigmas, cond=cond, callback=callback,
        return_trajectory=return_trajectory, unroll=unroll, checkpoint=checkpoint,
    )


def ddim(
    denoiser, noise, sigmas, *, key=None, cond=None, return_trajectory=False, callback=None,
    unroll=None, checkpoint=False,
    eta=0.0,
):
    """DDIM (Song et al. 2021, "DDIM", eq. 12 and 16) in the VE frame: ``x_next = x0_hat +
    sqrt(sigma_next^2 - c^2) eps_hat + c z`` with ``c = eta sigma_next sqrt(1 - sigma_next^2 /
    sigma^2)``. ``eta = 0`` is deterministic (= :func:`euler`, no key needed); ``eta = 1`` is DDPM.

    ``noise`` is UNIT Gaussian (scaled by ``sigmas[0]`` here; a warning flags pre-scaled noise).
    NFE for a grid of N steps: N.
    """
    check_nonnegative("ddim", eta=eta)
    if not isinstance(eta, (int, float)) or eta != 0:
        check_key(key, "ddim with eta != 0")
    else:
        key = None
    update = functools.partial(ddim_update, eta=eta)
    return _single_step_sampler(
        update, denoiser, noise, sigmas, key, cond, callback, return_trajectory,
        unroll=unroll, checkpoint=checkpoint,
    )


def ancestral(
    denoiser, noise, sigmas, *, key=None, cond=None, return_trajectory=False, callback=None,
    unroll=None, checkpoint=False,
    eta=1.0, s_noise=1.0,
):
    """Ancestral sampling (DDPM, Ho et al. 2020, Alg. 2, in the VE frame = k-diffusion's
    "Euler ancestral"): Euler to ``sigma_down``, then noise ``s_noise * sigma_up * z``.

    ``noise`` is UNIT Gaussian (scaled by ``sigmas[0]`` here; a warning flags pre-scaled noise).
    NFE for a grid of N steps: N.
    """
    check_key(key, "ancestral")
    check_nonnegative("ancestral", eta=eta, s_noise=s_noise)
    update = functools.partial(ancestral_update, eta=eta, s_noise=s_noise)
    return _single_step_sampler(
        update, denoiser, noise, sigmas, key, cond, callback, return_trajectory,
        unroll=unroll, checkpoint=checkpoint,
    )


def edm_stochastic(
    denoiser, noise, sigmas, *, key=None, cond=None, return_trajectory=False, callback=None,
    unroll=None, checkpoint=False,
    s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0,
):
    """EDM's stochastic sampler (Karras et al. 2022, Alg. 2): raise the noise level to
    ``sigma_hat = (1 + gamma) sigma`` with ``gamma = min(S_churn / N, sqrt(2) - 1)`` when
    ``S_tmin <= sigma <= S_tmax`` (adding ``sqrt(sigma_hat^2 - sigma^2) S_noise z``), then a Heun
    step from ``sigma_hat`` (Euler on the step to 0). With ``s_churn = 0`` it is :func:`heun`.

    ``noise`` is UNIT Gaussian (scaled by ``sigmas[0]`` here; a warning flags pre-scaled noise).
    NFE for a grid of N steps: 2N - 1.
    """
    check_nonnegative(
        "edm_stochastic", s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise
    )
    if key is None and s_churn == 0:
        key = jax.random.key(0)  # without churn no noise is drawn into the result
    check_key(key, "edm_stochastic")
    gamma_max = min(s_churn / max(jnp.size(sigmas) - 1, 1), 2.0**0.5 - 1.0)

    def churn(x, sigma, index):
        gamma = jnp.where((sigma >= s_tmin) & (sigma <= s_tmax), gamma_max, 0.0)
        scale = sigma * safe_sqrt(gamma * (2.0 + gamma)) * s_noise
        return x + expand(scale, x) * step_noise(key, index, x), sigma * (1.0 + gamma)

    def step(denoiser, carry, inputs, cond):
        (x,), (sigma, sigma_next, index) = carry, inputs
        x_hat, sigma_hat = churn(x, sigma, index)
        x_next, x0_hat, _ = heun_update(denoiser, x_hat, sigma_hat, sigma_next, cond)
        return (x_next,), x0_hat

    def final(denoiser, carry, sigma, index, cond):
        x_hat, sigma_hat = churn(carry[0], sigma, index)
        x0 = denoiser(x_hat, sigma_hat, cond)
        return x0, x0

    return sample(
        step, denoiser, noise, sigmas, cond=cond, callback=callback,
        return_trajectory=return_trajectory, final=final, unroll=unroll, checkpoint=checkpoint,
    )


def euler_maruyama(
    denoiser, noise, sigmas, *, key=None, cond=None, return_trajectory=False, callback=None,
    unroll=None, checkpoint=False,
):
    """Euler-Maruyama on the VE reverse SDE in sigma-time (Song et al. 2021, eq. 6 and 9;
    Kloeden & Platen, eq. 9.1.1): ``x_next = x + 2 (sigma_next - sigma)(x - D) / sigma +
    sqrt(2 sigma (sigma - sigma_next)) z``. The step to 0 is the noise-free Tweedie denoising
    ``x0 = D(x, sigma)`` (score_sde's ``noise_removal``).

    ``noise`` is UNIT Gaussian (scaled by ``sigmas[0]`` here; a warning flags pre-scaled noise).
    NFE for a grid of N steps: N.
    """
    check_key(key, "euler_maruyama")

    def step(denoiser, carry, inputs, cond):
        (x,), (sigma, sigma_next, index) = carry, inputs
        derivative = probability_flow_derivative(denoiser, x, sigma, cond)
        scale = safe_sqrt(2.0 * sigma * (sigma - sigma_next))
        x_next = (
            x + expand(sigma_next - sigma, x) * (2.0 * derivative)
            + expand(scale, x) * step_noise(key, index, x)
        )
        return (x_next,), x - expand(sigma, x) * derivative

    return sample(
        step, denoiser, noise, sigmas, cond=cond, callback=callback,
        return_trajectory=return_trajectory, unroll=unroll, checkpoint=checkpoint,
    )


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
    denoiser, noise, sigmas, *, key=None, cond=None, return_trajectory=False, callback=None,
    unroll=None, checkpoint=False,
    predictor=ancestral_step, corrector_steps=1, snr=0.16, per_example_step=False,
):
    """Predictor-corrector sampling (Song et al. 2021, Alg. 1, 4 and 5): at each noise level
    ``corrector_steps`` Langevin steps ``x += eps score + sqrt(2 eps) z`` with the snr rule of
    :func:`langevin_step_size`, then one ``predictor`` step (any rule
    ``(denoiser, x, sigma, sigma_next, key, cond) -> x`` from :mod:`.steps`; default DDPM
    ancestral, whose step to 0 is noise-free). ``snr = 0.16`` is score_sde's CIFAR-10 VE value;
    ``per_example_step`` selects per-example norms in the step size (see
    :func:`langevin_step_size`). The callback's ``x0_hat`` is the first corrector evaluation
    (``None`` with ``corrector_steps=0``).

    ``noise`` is UNIT Gaussian (scaled by ``sigmas[0]`` here; a warning flags pre-scaled noise).
    NFE for a grid of N steps: N (corrector_steps + 1).
    """
    check_key(key, "predictor_corrector")
    check_nonnegative("predictor_corrector", snr=snr)
    if not isinstance(corrector_steps, int) or corrector_steps < 0:
        raise ValueError(f"corrector_steps must be a non-negative int; got {corrector_steps!r}")

    def step(denoiser, carry, inputs, cond):
        (x,), (sigma, sigma_next, index) = carry, inputs
        step_key = jax.random.fold_in(key, index)
        x0_first = None
        for m in range(corrector_steps):
            score = score_from_denoiser(denoiser, x, sigma, cond)
            if x0_first is None:
                x0_first = x + expand(sigma, x) ** 2 * score
            z = step_noise(step_key, m + 1, x)
            step_size = langevin_step_size(score, z, snr, per_example_step)
            x = x + expand(step_size, x) * score + expand(jnp.sqrt(2.0 * step_size), x) * z
        x = predictor(denoiser, x, sigma, sigma_next, jax.random.fold_in(step_key, 0), cond)
        return (x,), x0_first

    def final(denoiser, carry, sigma, index, cond):
        (x0,), x0_first = step(denoiser, carry, (sigma, jnp.zeros_like(sigma), index), cond)
        return x0, x0_first

    return sample(
        step, denoiser, noise, sigmas, cond=cond, callback=callback,
        return_trajectory=return_trajectory, final=final, unroll=unroll, checkpoint=checkpoint,
    )


SAMPLERS = (
    SamplerInfo(
        "ddim", ddim, stochastic=True, needs_key=False, order=1, nfe=one_per_step,
        options=("eta",), summary="eta-DDIM (eta 0: deterministic, = euler; eta 1: DDPM)",
        source="Song et al. 2021 DDIM eq. 12, 16",
        variants=(Variant({"eta": 0.5}, None, one_per_step),),
    ),
    SamplerInfo(
        "ancestral", ancestral, stochastic=True, needs_key=True, order=None, nfe=one_per_step,
        options=("eta", "s_noise"), summary="DDPM / Euler-ancestral",
        source="Ho et al. 2020 Alg. 2 in the VE frame",
    ),
    SamplerInfo(
        "edm_stochastic", edm_stochastic, stochastic=True, needs_key=False, order=2,
        nfe=two_per_step_then_one, options=("s_churn", "s_tmin", "s_tmax", "s_noise"),
        summary="churned Heun (s_churn 0: = heun)", source="Karras et al. 2022 Alg. 2",
        variants=(Variant({"s_churn": 30.0}, None, two_per_step_then_one),),
    ),
    SamplerInfo(
        "euler_maruyama", euler_maruyama, stochastic=True, needs_key=True, order=None,
        nfe=one_per_step, options=(),
        summary="Euler-Maruyama on the reverse VE SDE, Tweedie denoising at the end",
        source="Song et al. 2021 eq. 6, 9",
    ),
    SamplerInfo(
        "predictor_corrector", predictor_corrector, stochastic=True, needs_key=True, order=None,
        nfe=two_per_step,
        options=("predictor", "corrector_steps", "snr", "per_example_step"),
        summary="predictor + Langevin corrector with the snr step size",
        source="Song et al. 2021 Alg. 4/5",
    ),
)
