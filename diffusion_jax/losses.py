"""Training objectives: denoising score matching and conditional flow matching.

A *model* here is ``model(x_t, t, cond) -> prediction`` in a process's own frame and time, predicting
one parameterisation (``x0``, ``epsilon``, ``v``, ``score`` or ``velocity``). A VE-frame denoiser
becomes such an x0-model through :class:`diffusion_jax.denoisers.ProcessModel`; an EDM-preconditioned
denoiser with the :class:`~diffusion_jax.processes.EDM` process is one directly.

The loss is computed on the model's own output (no conversion of the prediction, so no loss of
precision where a conversion is ill-conditioned), with the weighting's exact weight for that
parameterisation (:meth:`diffusion_jax.schedules.Weighting.weight_for`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from diffusion_jax.denoisers import check_parameterisation, from_x0_epsilon
from diffusion_jax.processes import Process, RectifiedFlow
from diffusion_jax.schedules import FlowMatchingWeighting, UniformTime, uniform_draws

__all__ = [
    "REDUCTIONS",
    "denoising_loss",
    "flow_matching_loss",
    "uncertainty_weighted",
    "elbo_constant",
]

REDUCTIONS = ("mean", "sum")


def _reduce(squared_error, reduce):
    if reduce not in REDUCTIONS:
        raise ValueError(f"unknown reduce {reduce!r}; expected one of {REDUCTIONS}")
    axes = tuple(range(1, squared_error.ndim))
    return (
        jnp.mean(squared_error, axis=axes)
        if reduce == "mean"
        else jnp.sum(squared_error, axis=axes)
    )


def denoising_loss(
    model,
    x0,
    key,
    *,
    process: Process,
    prediction: str,
    t_distribution,
    weighting,
    cond=None,
    noise=None,
    stratification="iid",
    reduce="mean",
    return_t=False,
):
    """Per-example weighted denoising loss ``w(t) ||model(x_t, t) - target||^2``.

    Denoising score matching (Vincent 2011; Song et al. 2021, eq. 7) for any process,
    parameterisation and weighting (Kingma & Gao 2023, eq. 8): ``t ~ t_distribution``,
    ``x_t = alpha(t) x0 + sigma(t) noise``, ``target`` is the exact ``prediction`` of ``(x0, noise)``.
    Returns an array of shape ``(batch,)`` (and the drawn times ``t`` if ``return_t``, e.g. for
    importance weights ``1 / p(t)``); ``reduce`` averages ("mean") or sums ("sum") over data axes.
    """
    check_parameterisation(prediction)
    x0 = jnp.asarray(x0)
    if x0.ndim < 2:
        raise ValueError(f"x0 must have a batch axis and data axes; got shape {x0.shape}")
    batch = x0.shape[0]
    time_key, noise_key = jax.random.split(key)
    if noise is None:
        noise = jax.random.normal(noise_key, x0.shape, x0.dtype)
    elif noise.shape != x0.shape:
        raise ValueError(f"noise shape {noise.shape} != x0 shape {x0.shape}")
    u = uniform_draws(time_key, batch, stratification, x0.dtype)
    t = t_distribution.from_uniform(u, process)
    x_t = process.perturb(x0, noise, t)
    output = model(x_t, t, cond)
    if output.shape != x0.shape:
        raise ValueError(f"model output shape {output.shape} != x0 shape {x0.shape}")
    target = from_x0_epsilon(
        x0,
        noise,
        prediction,
        process.alpha(t),
        process.sigma(t),
        process.d_alpha(t),
        process.d_sigma(t),
    )
    squared_error = (output.astype(x0.dtype) - target) ** 2
    loss = weighting.weight_for(prediction, process, t) * _reduce(squared_error, reduce)
    return (loss, t) if return_t else loss


def flow_matching_loss(
    model,
    x0,
    key,
    *,
    noise=None,
    process: Process | None = None,
    t_distribution=None,
    cond=None,
    stratification="iid",
    reduce="mean",
):
    """Per-example conditional flow-matching loss ``||v(x_t, t) - (alpha' x0 + sigma' x1)||^2``.

    Lipman et al. 2023 (eq. 23, conditional OT path) and Liu et al. 2023 (rectified flow, eq. 1):
    ``x_t = (1 - t) x0 + t x1`` by default (``process = RectifiedFlow()``), ``t ~ U[0, 1]``.
    ``noise`` (``x1``) defaults to unit Gaussian samples, i.e. the independent coupling; pass
    samples from any source distribution or a coupled batch (e.g. minibatch OT) instead. In the
    flow-matching papers' time (data at 1) the target is ``x0 - x1``: the sign of the time flips.
    """
    process = RectifiedFlow() if process is None else process
    t_distribution = UniformTime(t_min=0.0) if t_distribution is None else t_distribution
    return denoising_loss(
        model,
        x0,
        key,
        process=process,
        prediction="velocity",
        t_distribution=t_distribution,
        weighting=FlowMatchingWeighting(),
        cond=cond,
        noise=noise,
        stratification=stratification,
        reduce=reduce,
    )


def uncertainty_weighted(loss, log_variance):
    """``loss / exp(u) + u`` with a learned per-example log-variance ``u(sigma)`` (Karras et al.
    2024, "EDM2", eq. 21; Kendall & Gal 2018). Minimising over ``u`` gives ``u = log E[loss | sigma]``,
    which equalises the loss magnitude across noise levels."""
    log_variance = jnp.asarray(log_variance, jnp.result_type(loss))
    return loss * jnp.exp(-log_variance) + log_variance


def elbo_constant(process: Process, x0, key, *, t_min, num_samples=1):
    """The data-dependent constant ``C(x0)`` of the likelihood-weighted DSM bound.

    Song et al. 2021b (Maximum likelihood training, Thm. 1 and eq. 13 in DSM form) specialised to
    affine processes, where ``grad log p_0t = -eps / sigma`` and ``div f = d f(t)``:
    ``-log p_SDE(x0) <= (T - t_min)/2 * E_t[l(x0)] + C(x0)`` with ``l`` the per-example
    :func:`denoising_loss` under :class:`~diffusion_jax.schedules.LikelihoodWeighting`,
    ``t ~ U[t_min, T]`` and ``reduce="sum"``, and
    ``C(x0) = -E[log pi(x_T) | x0] - d log(sigma(T) / sigma(t_min))``
    (the integral ``-1/2 int g^2 E||grad log p_0t||^2 + 2 div f dt`` in closed form, since
    ``g^2 / sigma^2 + 2 f = 2 sigma'/sigma``). The prior term is estimated with ``num_samples``
    draws of ``x_T``. Returns shape ``(batch,)`` in nats.
    """
    x0 = jnp.asarray(x0)
    dims = math.prod(x0.shape[1:])
    t_max = process.t_max
    keys = jax.random.split(key, num_samples)

    def prior_term(k):
        noise = jax.random.normal(k, x0.shape, x0.dtype)
        return process.prior_log_prob(process.perturb(x0, noise, t_max))

    expected_prior = jnp.mean(jax.vmap(prior_term)(keys), axis=0)
    log_ratio = jnp.log(process.sigma(t_max)) - jnp.log(process.sigma(t_min))
    return -expected_prior - dims * log_ratio
