"""Parameterisations, exact conversions, preconditioning and the denoiser contract.

The contract (Karras et al. 2022, "EDM", eq. 2-3): ``denoiser(x, sigma, cond=None) -> x0_hat`` in the
VE frame ``x = x0 + sigma * noise``, with ``x`` of shape ``(batch, ...)`` and ``sigma`` a scalar or
one value per example. Every denoiser here is a pytree (network parameters are leaves), so it passes
through ``jit``, ``vmap``, ``grad`` and Diffrax's ``args``.

Parameterisations at process time ``t`` with ``x_t = alpha x0 + sigma eps``:

============  ====================================================  ===========================
name          prediction                                            source
============  ====================================================  ===========================
``x0``        ``x0``                                                Karras et al. 2022
``epsilon``   ``eps``                                               Ho et al. 2020
``v``         ``alpha eps - sigma x0``                              Salimans & Ho 2022, eq. 14
``score``     ``grad log p_t(x_t) = -eps / sigma``                  Song et al. 2021
``velocity``  ``alpha' x0 + sigma' eps = dx_t/dt``                  Lipman et al. 2023; Liu 2023
============  ====================================================  ===========================

All conversions go through the pair ``(x0, eps)`` and are exact linear maps at fixed ``x_t``. Each
parameterisation is a small frozen object (:class:`X0`, :class:`Epsilon`, :class:`V`,
:class:`Score`, :class:`Velocity`) holding its maps and its x0 error scale; every function here also
takes the names above (:func:`as_parameterisation`).

A network or denoiser may be a plain Python function as well as a pytree: the entry points split it
into array leaves (traced, differentiated) and static rest (:mod:`diffusion_jax.callables`).
"""

from __future__ import annotations

import abc
from typing import Any

import jax
import jax.numpy as jnp

from diffusion_jax.processes import Process, _broadcast_like, check_sigma
from diffusion_jax.pytrees import frozen_pytree as _pytree

__all__ = [
    "PARAMETERISATIONS",
    "Parameterisation",
    "X0",
    "Epsilon",
    "V",
    "Score",
    "Velocity",
    "as_parameterisation",
    "check_parameterisation",
    "to_x0_epsilon",
    "from_x0_epsilon",
    "convert",
    "x0_error_scale",
    "EDMPreconditioning",
    "VPPreconditioning",
    "VEPreconditioning",
    "PreconditionedDenoiser",
    "ProcessDenoiser",
    "ProcessModel",
    "score_from_denoiser",
    "probability_flow_derivative",
]




# -- parameterisations as small objects (like the weightings of schedules.py) --------------------


class Parameterisation(abc.ABC):
    """What a network predicts at ``x = alpha x0 + sigma eps``: exact maps to and from the pair
    ``(x0, eps)`` and the x0 error scale (Kingma & Gao 2023, Sec. 2). ``alpha, sigma`` (and
    ``d_alpha, d_sigma``, used by ``velocity`` only) are already broadcast against the data."""

    name: str

    @abc.abstractmethod
    def to_x0_epsilon(self, prediction, x, alpha, sigma, d_alpha, d_sigma):
        """The pair ``(x0, eps)`` implied by ``prediction`` at ``x``."""

    @abc.abstractmethod
    def from_x0_epsilon(self, x0, eps, alpha, sigma, d_alpha, d_sigma):
        """The prediction of this kind for the pair ``(x0, eps)``."""

    @abc.abstractmethod
    def x0_error_scale(self, process: Process, t):
        """``k(t)`` with ``pred_hat - pred = k(t) (x0_hat - x0)`` at fixed ``x_t``."""


@_pytree
class X0(Parameterisation):
    """Data prediction ``x0`` (Karras et al. 2022); error scale 1."""

    name = "x0"

    def to_x0_epsilon(self, prediction, x, alpha, sigma, d_alpha, d_sigma):
        return prediction, (x - alpha * prediction) / sigma

    def from_x0_epsilon(self, x0, eps, alpha, sigma, d_alpha, d_sigma):
        return x0

    def x0_error_scale(self, process, t):
        return jnp.ones_like(process.sigma(t))


@_pytree
class Epsilon(Parameterisation):
    """Noise prediction ``eps`` (Ho et al. 2020); error scale ``-alpha / sigma``."""

    name = "epsilon"

    def to_x0_epsilon(self, prediction, x, alpha, sigma, d_alpha, d_sigma):
        return (x - sigma * prediction) / alpha, prediction

    def from_x0_epsilon(self, x0, eps, alpha, sigma, d_alpha, d_sigma):
        return eps

    def x0_error_scale(self, process, t):
        return -process.alpha(t) / process.sigma(t)


@_pytree
class V(Parameterisation):
    """``v = alpha eps - sigma x0`` (Salimans & Ho 2022, eq. 14; inverted as eq. 15 generalised
    to ``alpha^2 + sigma^2 != 1``); error scale ``-(alpha^2 + sigma^2) / sigma``."""

    name = "v"

    def to_x0_epsilon(self, prediction, x, alpha, sigma, d_alpha, d_sigma):
        norm = alpha**2 + sigma**2
        return (alpha * x - sigma * prediction) / norm, (sigma * x + alpha * prediction) / norm

    def from_x0_epsilon(self, x0, eps, alpha, sigma, d_alpha, d_sigma):
        return alpha * eps - sigma * x0

    def x0_error_scale(self, process, t):
        alpha, sigma = process.alpha(t), process.sigma(t)
        return -(alpha**2 + sigma**2) / sigma


@_pytree
class Score(Parameterisation):
    """Score ``grad log p_t(x_t) = -eps / sigma`` (Song et al. 2021); error scale
    ``alpha / sigma^2``."""

    name = "score"

    def to_x0_epsilon(self, prediction, x, alpha, sigma, d_alpha, d_sigma):
        eps = -sigma * prediction
        return (x - sigma * eps) / alpha, eps

    def from_x0_epsilon(self, x0, eps, alpha, sigma, d_alpha, d_sigma):
        return -eps / sigma

    def x0_error_scale(self, process, t):
        return process.alpha(t) / process.sigma(t) ** 2


@_pytree
class Velocity(Parameterisation):
    """Velocity ``alpha' x0 + sigma' eps = dx_t/dt`` (Lipman et al. 2023; Liu 2023), inverted by
    solving ``[alpha sigma; alpha' sigma'] [x0; eps] = [x; u]``; error scale
    ``(alpha' sigma - sigma' alpha) / sigma``."""

    name = "velocity"

    def to_x0_epsilon(self, prediction, x, alpha, sigma, d_alpha, d_sigma):
        _check_derivatives(d_alpha, d_sigma)
        det = alpha * d_sigma - sigma * d_alpha
        return (d_sigma * x - sigma * prediction) / det, (alpha * prediction - d_alpha * x) / det

    def from_x0_epsilon(self, x0, eps, alpha, sigma, d_alpha, d_sigma):
        _check_derivatives(d_alpha, d_sigma)
        return d_alpha * x0 + d_sigma * eps

    def x0_error_scale(self, process, t):
        sigma = process.sigma(t)
        return (process.d_alpha(t) * sigma - process.d_sigma(t) * process.alpha(t)) / sigma


def _check_derivatives(d_alpha, d_sigma):
    if d_alpha is None or d_sigma is None:
        raise ValueError("the velocity parameterisation needs d_alpha and d_sigma")


_BY_NAME = {kind.name: kind for kind in (X0(), Epsilon(), V(), Score(), Velocity())}
PARAMETERISATIONS = tuple(_BY_NAME)


def as_parameterisation(kind) -> Parameterisation:
    """The :class:`Parameterisation` object of ``kind`` (an object, or one of the names
    :data:`PARAMETERISATIONS`); raises a one-line ``ValueError`` listing the names otherwise."""
    if isinstance(kind, Parameterisation):
        return kind
    if isinstance(kind, str) and kind in _BY_NAME:
        return _BY_NAME[kind]
    raise ValueError(f"unknown parameterisation {kind!r}; expected one of {PARAMETERISATIONS}")


def check_parameterisation(kind):
    """Return ``kind`` (a name or a :class:`Parameterisation`) if it is known, else raise a
    ``ValueError`` listing the names."""
    as_parameterisation(kind)
    return kind


def _broadcast_optional(coefficient, x):
    return None if coefficient is None else _broadcast_like(coefficient, x)


def to_x0_epsilon(prediction, parameterisation, x, alpha, sigma, d_alpha=None, d_sigma=None):
    """Exact ``(x0, eps)`` implied by a prediction at ``x = alpha x0 + sigma eps``.

    ``alpha, sigma`` (and ``d_alpha, d_sigma`` for ``velocity``) are scalars or per-example arrays;
    ``parameterisation`` is a name or a :class:`Parameterisation`.
    """
    kind = as_parameterisation(parameterisation)
    return kind.to_x0_epsilon(
        prediction, x, _broadcast_like(alpha, x), _broadcast_like(sigma, x),
        _broadcast_optional(d_alpha, x), _broadcast_optional(d_sigma, x),
    )


def from_x0_epsilon(x0, eps, parameterisation, alpha, sigma, d_alpha=None, d_sigma=None):
    """The prediction of kind ``parameterisation`` for a given pair ``(x0, eps)``."""
    kind = as_parameterisation(parameterisation)
    return kind.from_x0_epsilon(
        x0, eps, _broadcast_like(alpha, x0), _broadcast_like(sigma, x0),
        _broadcast_optional(d_alpha, x0), _broadcast_optional(d_sigma, x0),
    )


def convert(prediction, source, target, x, t, process: Process):
    """Convert a ``source`` prediction at ``(x_t, t)`` of ``process`` into a ``target`` prediction."""
    coefficients = (process.alpha(t), process.sigma(t), process.d_alpha(t), process.d_sigma(t))
    x0, eps = to_x0_epsilon(prediction, source, x, *coefficients)
    return from_x0_epsilon(x0, eps, target, *coefficients)


def x0_error_scale(parameterisation, process: Process, t):
    """``k(t)`` with ``pred_hat - pred = k(t) (x0_hat - x0)`` at fixed ``x_t``.

    Kingma & Gao 2023 ("Understanding diffusion objectives", Sec. 2): every parameterisation's MSE is
    an x0-MSE weighted by ``k^2``: epsilon ``-alpha/sigma``, v ``-(alpha^2+sigma^2)/sigma``, score
    ``alpha/sigma^2``, velocity ``(alpha' sigma - sigma' alpha)/sigma``.
    """
    return as_parameterisation(parameterisation).x0_error_scale(process, t)


# -- preconditioning (Karras et al. 2022, Table 1) ---------------------------------------------


@_pytree
class EDMPreconditioning:
    """EDM preconditioning (Karras et al. 2022, Table 1 and eq. 7):
    ``c_skip = sd^2/(s^2+sd^2)``, ``c_out = s sd / sqrt(s^2+sd^2)``, ``c_in = 1/sqrt(s^2+sd^2)``,
    ``c_noise = ln(s)/4``. EDM uses ``sigma_data = 0.5`` (k-diffusion defaults to 1.0).
    """

    sigma_data: float = 0.5

    def coefficients(self, sigma):
        """``(c_skip, c_out, c_in, c_noise)`` at VE noise level ``sigma``."""
        sd2 = self.sigma_data**2
        total = sigma**2 + sd2
        return (
            sd2 / total,
            sigma * self.sigma_data * jax.lax.rsqrt(total),
            jax.lax.rsqrt(total),
            (0.25 * jnp.log(sigma)),
        )


@_pytree
class VPPreconditioning:
    """VP preconditioning (Karras et al. 2022, Table 1, "VP"; Song et al. 2021 network):
    epsilon prediction with ``c_skip = 1``, ``c_out = -s``, ``c_in = 1/sqrt(s^2+1)`` and
    ``c_noise = (M - 1) t(s)`` with the VP time ``t(s)`` and ``M = 1000``.
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    num_train_steps: float = 1000.0

    def coefficients(self, sigma):
        """``(c_skip, c_out, c_in, c_noise)`` at VE noise level ``sigma``."""
        t = _vp_time(sigma, self.beta_min, self.beta_max)
        return (
            jnp.ones_like(sigma),
            -sigma,
            jax.lax.rsqrt(sigma**2 + 1.0),
            ((self.num_train_steps - 1.0) * t),
        )


def _vp_time(sigma, beta_min, beta_max):
    from diffusion_jax.processes import VP

    return VP(beta_min=beta_min, beta_max=beta_max).t_of_ve_sigma(sigma)


@_pytree
class VEPreconditioning:
    """VE preconditioning (Karras et al. 2022, Table 1, "VE"; NCSN++): ``c_skip = 1``,
    ``c_out = s``, ``c_in = 1``, ``c_noise = ln(s / 2)``.
    """

    def coefficients(self, sigma):
        """``(c_skip, c_out, c_in, c_noise)`` at VE noise level ``sigma``."""
        return jnp.ones_like(sigma), sigma, jnp.ones_like(sigma), jnp.log(0.5 * sigma)


def _per_example_sigma(sigma, x):
    sigma = jnp.asarray(check_sigma(sigma), dtype=x.dtype)
    if sigma.ndim > 1 or (sigma.ndim == 1 and sigma.shape[0] != x.shape[0]):
        raise ValueError(
            f"sigma must be a scalar or have shape (batch,) = ({x.shape[0]},); got {sigma.shape}"
        )
    return jnp.broadcast_to(sigma, x.shape[:1])


def _check_batched(x):
    if jnp.ndim(x) < 2:
        raise ValueError(
            f"x must have a batch axis and at least one data axis; got shape {x.shape}"
        )


@_pytree
class PreconditionedDenoiser:
    """``D(x, s) = c_skip x + c_out F(c_in x, c_noise, cond)`` (Karras et al. 2022, eq. 7).

    ``network`` is any callable ``network(x_in, c_noise, cond)`` with ``c_noise`` of shape
    ``(batch,)``: a Flax NNX module, an Equinox module, ``jax.tree_util.Partial(fn, params)`` or a
    plain function; ``preconditioning``
    is :class:`EDMPreconditioning`, :class:`VPPreconditioning` or :class:`VEPreconditioning`.
    """

    network: Any
    preconditioning: Any

    def __call__(self, x, sigma, cond=None):
        _check_batched(x)
        sigma = _per_example_sigma(sigma, x)
        c_skip, c_out, c_in, c_noise = self.preconditioning.coefficients(sigma)
        output = self.network(_broadcast_like(c_in, x) * x, c_noise, cond)
        if output.shape != x.shape:
            raise ValueError(f"network output shape {output.shape} != input shape {x.shape}")
        return _broadcast_like(c_skip, x) * x + _broadcast_like(c_out, x) * output.astype(x.dtype)


@_pytree(meta=("parameterisation",))
class ProcessDenoiser:
    """Adapter: a network trained in a process's own frame and time, as a VE-frame denoiser.

    ``network(x_t, time_scale * t, cond)`` (any callable, as for :class:`PreconditionedDenoiser`)
    predicts ``parameterisation`` (a :class:`Parameterisation` or one of the names epsilon, v,
    velocity, score, x0) at ``x_t = alpha(t) x``, ``t = process.t_of_ve_sigma(sigma)``; the prediction is
    converted exactly to ``x0_hat`` (Karras et al. 2022, App. B.1 "VP"/"VE" adapters; Kingma & Gao
    2023). ``time_scale`` is 999 for score_sde's continuous VP networks.
    """

    network: Any
    process: Process
    parameterisation: str = "epsilon"
    time_scale: float = 1.0

    def __post_init__(self):
        check_parameterisation(self.parameterisation)

    def __call__(self, x, sigma, cond=None):
        _check_batched(x)
        sigma = _per_example_sigma(sigma, x)
        t = self.process.t_of_ve_sigma(sigma)
        x_t = _broadcast_like(self.process.alpha(t), x) * x
        prediction = self.network(x_t, self.time_scale * t, cond).astype(x.dtype)
        x0, _ = to_x0_epsilon(
            prediction,
            as_parameterisation(self.parameterisation),
            x_t,
            self.process.alpha(t),
            self.process.sigma(t),
            self.process.d_alpha(t),
            self.process.d_sigma(t),
        )
        return x0


@_pytree
class ProcessModel:
    """The inverse adapter: a VE-frame denoiser as an x0-predicting model in process time.

    ``model(x_t, t, cond) = D(x_t / alpha(t), sigma(t) / alpha(t), cond)``; losses take models of
    this form (Karras et al. 2022, eq. 2 with ``s(t) = alpha(t)``).
    """

    denoiser: Any
    process: Process

    def __call__(self, x_t, t, cond=None):
        alpha = self.process.alpha(t)
        return self.denoiser(x_t / _broadcast_like(alpha, x_t), self.process.ve_sigma(t), cond)


def score_from_denoiser(denoiser, x, sigma, cond=None):
    """``grad log p(x; sigma) = (D(x, sigma) - x) / sigma^2`` (Tweedie; Karras et al. 2022, eq. 3)."""
    sigma = _per_example_sigma(sigma, x)
    return (denoiser(x, sigma, cond) - x) / _broadcast_like(sigma, x) ** 2


def probability_flow_derivative(denoiser, x, sigma, cond=None):
    """``dx/dsigma = (x - D(x, sigma)) / sigma`` of the VE-frame probability-flow ODE
    (Karras et al. 2022, eq. 4 with ``s(t) = 1``, ``sigma(t) = t``). The one definition used by
    samplers, Diffrax solvers and likelihoods.
    """
    sigma = _per_example_sigma(sigma, x)
    return (x - denoiser(x, sigma, cond)) / _broadcast_like(sigma, x)
