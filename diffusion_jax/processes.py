"""Forward processes: affine Gaussian paths ``x_t = alpha(t) * x0 + sigma(t) * noise``.

Time convention (whole library): ``t = 0`` is data, ``t = t_max`` is noise. Flow-matching papers
(Lipman et al. 2023, Liu et al. 2023, torchcfm, Meta ``flow_matching``) put data at ``t = 1``: their
time is ``1 - t`` here, and their velocity is minus ours.

Dividing the path by ``alpha`` gives the *VE frame* ``x / alpha = x0 + s * noise`` with the noise
level ``s = sigma / alpha`` (Karras et al. 2022, "EDM", Sec. 2 and Table 1). Denoisers and samplers
work in that frame; ``ve_sigma`` / ``t_of_ve_sigma`` map between a process's time and it.

Everything stochastic is derived once, in :class:`Process`, from ``alpha`` and ``sigma``
(Song et al. 2021, "Score-based generative modeling through SDEs", eqs. 5-6 and 13; Kingma et al.
2021, "Variational diffusion models", App. A):

* SDE ``dx = f(t) x dt + g(t) dW`` with ``f = alpha'/alpha`` and
  ``g^2 = d(sigma^2)/dt - 2 f sigma^2 = 2 sigma^2 d/dt log(sigma/alpha)``;
* reverse SDE drift ``f x - g^2 score``; probability-flow velocity ``f x - g^2 score / 2``;
* prior ``N(0, sigma(t_max)^2 I)`` (for VP-like processes the mean ``alpha(t_max) x0`` is ignored,
  as in score_sde).

Discrete-time (DDPM) checkpoints: index ``i = 0..N-1`` of a schedule of ``N`` betas corresponds
to ``t = (i + 1) / N`` (DPM-Solver's convention, Lu et al. 2022), ``alpha(t)^2 = alpha_bar_i``.
:class:`Cosine` equals ``squaredcos_cap_v2`` there (except the capped last step); :class:`VP`
``(0.1, 20)`` is only the ``N -> infinity`` limit of the linear ``1e-4..0.02`` schedule (cumulative
``alpha^2`` off by up to 7% near ``t = 1`` at ``N = 1000``). :class:`DiscreteVP` is exact on the
grid for any beta table and is what a network trained on a discrete schedule should be run with.

Processes are frozen dataclasses registered as pytrees: their float parameters are leaves, so they
pass through ``jit``, ``vmap`` and ``grad``.
"""

from __future__ import annotations

import abc
import math
import types

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.pytrees import frozen_pytree as _pytree

__all__ = [
    "Process",
    "VP",
    "SubVP",
    "VE",
    "EDM",
    "Cosine",
    "RectifiedFlow",
    "TrigFlow",
    "DiscreteVP",
    "DDPM_BETA_SCHEDULES",
    "linear_betas",
    "scaled_linear_betas",
    "squaredcos_cap_v2_betas",
    "check_sigma",
    "isotropic_gaussian_log_prob",
]





def _broadcast_like(coefficient, x):
    """Reshape a per-example coefficient of shape ``x.shape[:k]`` so it broadcasts against ``x``."""
    coefficient = jnp.asarray(coefficient)
    return coefficient.reshape(coefficient.shape + (1,) * (jnp.ndim(x) - coefficient.ndim))


def isotropic_gaussian_log_prob(x, sigma):
    """``log N(x; 0, sigma^2 I)`` per example, all axes but the first summed (the prior of every
    process and of the VE-frame PF-ODE; Song et al. 2021, App. D.2)."""
    x = jnp.asarray(x)
    dims = math.prod(x.shape[1:])
    squared = jnp.sum(jnp.reshape(x, (x.shape[0], -1)) ** 2, axis=-1)
    return -0.5 * squared / sigma**2 - dims * (jnp.log(sigma) + 0.5 * math.log(2 * math.pi))


def check_sigma(sigma, name="sigma"):
    """Raise ``ValueError`` for a concrete noise level that is negative or not finite.

    Traced values (inside ``jit``) cannot be inspected and pass through unchanged.
    """
    if isinstance(sigma, jax.core.Tracer):
        return sigma
    try:
        values = np.asarray(sigma)
    except TypeError as error:
        raise TypeError(
            f"{name} must be a number or an array, got {type(sigma).__name__}"
        ) from error
    if not np.issubdtype(values.dtype, np.number):
        raise TypeError(f"{name} must be numeric, got dtype {values.dtype}")
    if not bool(np.all(np.isfinite(values))):
        raise ValueError(f"{name} must be finite, got {values}")
    if bool(np.any(values < 0)):
        raise ValueError(f"{name} must be non-negative, got {values}")
    return sigma


class Process(abc.ABC):
    """Base class of the affine forward processes; subclasses give ``alpha``, ``sigma``, derivatives.

    Source of the derived quantities: Song et al. 2021 (SDE, eqs. 5, 6, 13) and Kingma et al. 2021
    (VDM, App. A) for ``f`` and ``g^2`` of a general affine path.
    """

    t_max: float  # noise end of the time interval (data is at t = 0)

    # -- provided by every subclass -------------------------------------------------------
    @abc.abstractmethod
    def alpha(self, t):
        """Signal scale ``alpha(t)``."""

    @abc.abstractmethod
    def sigma(self, t):
        """Noise scale ``sigma(t)``."""

    @abc.abstractmethod
    def d_alpha(self, t):
        """Analytic ``d alpha / dt``."""

    @abc.abstractmethod
    def d_sigma(self, t):
        """Analytic ``d sigma / dt``."""

    @abc.abstractmethod
    def t_of_ve_sigma(self, ve_sigma):
        """Inverse of :meth:`ve_sigma`: the process time of a VE-frame noise level."""

    # -- derived once for every process -------------------------------------------------------
    def log_snr(self, t):
        """``log(alpha^2 / sigma^2)`` (Kingma et al. 2021, VDM eq. 2: lambda = -gamma)."""
        return 2.0 * (jnp.log(self.alpha(t)) - jnp.log(self.sigma(t)))

    def ve_sigma(self, t):
        """Noise level in the VE frame, ``sigma(t) / alpha(t)`` (Karras et al. 2022, Table 1)."""
        return self.sigma(t) / self.alpha(t)

    def drift_coefficient(self, t):
        """``f(t) = alpha'(t) / alpha(t)`` of the forward SDE ``dx = f x dt + g dW``."""
        return self.d_alpha(t) / self.alpha(t)

    def diffusion_squared(self, t):
        """``g(t)^2 = 2 sigma sigma' - 2 f sigma^2`` (VDM App. A; Song et al. 2021 eqs. 25-31)."""
        sigma = self.sigma(t)
        return 2.0 * sigma * self.d_sigma(t) - 2.0 * self.drift_coefficient(t) * sigma**2

    def sde(self, x, t):
        """Forward SDE coefficients ``(f(t) x, g(t))`` at state ``x`` (Song et al. 2021, eq. 5)."""
        drift = _broadcast_like(self.drift_coefficient(t), x) * x
        return drift, jnp.sqrt(self.diffusion_squared(t))

    def reverse_sde_drift(self, x, t, score):
        """Drift of the reverse-time SDE, ``f x - g^2 score`` (Song et al. 2021, eq. 6).

        It is the drift in forward time ``t``; the reverse process runs it with ``dt < 0``.
        """
        f = _broadcast_like(self.drift_coefficient(t), x)
        g2 = _broadcast_like(self.diffusion_squared(t), x)
        return f * x - g2 * score

    def probability_flow_velocity(self, x, t, score):
        """``dx/dt = f x - g^2 score / 2`` of the probability-flow ODE (Song et al. 2021, eq. 13).

        Equal to ``alpha' x0_hat + sigma' eps_hat`` (the flow-matching marginal velocity).
        """
        f = _broadcast_like(self.drift_coefficient(t), x)
        g2 = _broadcast_like(self.diffusion_squared(t), x)
        return f * x - 0.5 * g2 * score

    def marginal_params(self, t):
        """``(alpha(t), sigma(t))`` of ``q(x_t | x0) = N(alpha x0, sigma^2 I)``."""
        return self.alpha(t), self.sigma(t)

    def perturb(self, x0, noise, t):
        """``x_t = alpha(t) x0 + sigma(t) noise`` with ``t`` scalar or one value per example."""
        alpha = _broadcast_like(self.alpha(t), x0)
        sigma = _broadcast_like(self.sigma(t), x0)
        return alpha * x0 + sigma * noise

    def prior_sigma(self):
        """Standard deviation of the prior ``N(0, sigma(t_max)^2 I)``."""
        return self.sigma(self.t_max)

    def prior_sample(self, key, shape, dtype=jnp.float32):
        """Draw from the prior ``N(0, sigma(t_max)^2 I)``."""
        return self.prior_sigma() * jax.random.normal(key, shape, dtype)

    def prior_log_prob(self, x):
        """Log-density of the prior per example (all axes but the first are summed)."""
        return isotropic_gaussian_log_prob(x, self.prior_sigma())


def _vp_log_alpha(t, beta_min, beta_max):
    return -0.25 * t**2 * (beta_max - beta_min) - 0.5 * t * beta_min


def _vp_t_of_neg_log_alpha(neg_log_alpha, beta_min, beta_max):
    """Root in ``t >= 0`` of ``(bmax - bmin) t^2 / 4 + bmin t / 2 = a`` with ``a = -log alpha``.

    Written as ``4 a / (sqrt(bmin^2 + 4 (bmax - bmin) a) + bmin)`` (the quadratic formula with its
    numerator rationalised) so nothing cancels as ``a -> 0`` and ``bmax = bmin`` needs no special
    case; the denominator vanishes only for ``a = bmin = 0``, where ``t = 0``.
    """
    delta = beta_max - beta_min
    denominator = jnp.sqrt(beta_min**2 + 4.0 * delta * neg_log_alpha) + beta_min
    safe = jnp.where(denominator > 0, denominator, 1.0)
    return 4.0 * neg_log_alpha / safe


@_pytree
class VP(Process):
    """Variance-preserving SDE with linear beta (Ho et al. 2020; Song et al. 2021, eq. 11).

    ``alpha = exp(-t^2 (bmax - bmin)/4 - t bmin/2)``, ``sigma = sqrt(1 - alpha^2)``, t in [0, 1].
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    t_max: float = 1.0

    def beta(self, t):
        """Instantaneous noise rate ``beta(t) = bmin + t (bmax - bmin)``."""
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def alpha(self, t):
        return jnp.exp(_vp_log_alpha(t, self.beta_min, self.beta_max))

    def sigma(self, t):
        return jnp.sqrt(-jnp.expm1(2.0 * _vp_log_alpha(t, self.beta_min, self.beta_max)))

    def d_alpha(self, t):
        return -0.5 * self.beta(t) * self.alpha(t)

    def d_sigma(self, t):
        return -self.alpha(t) * self.d_alpha(t) / self.sigma(t)

    def ve_sigma(self, t):
        return jnp.sqrt(jnp.expm1(-2.0 * _vp_log_alpha(t, self.beta_min, self.beta_max)))

    def t_of_ve_sigma(self, ve_sigma):
        # alpha = 1 / sqrt(1 + s^2)  (EDM Table 1, "VP" sigma^-1).
        return _vp_t_of_neg_log_alpha(0.5 * jnp.log1p(ve_sigma**2), self.beta_min, self.beta_max)


@_pytree
class SubVP(VP):
    """Sub-VP SDE (Song et al. 2021, eq. 12): VP's mean, marginal std ``1 - alpha^2``."""

    def sigma(self, t):
        return -jnp.expm1(2.0 * _vp_log_alpha(t, self.beta_min, self.beta_max))

    def d_sigma(self, t):
        return -2.0 * self.alpha(t) * self.d_alpha(t)

    ve_sigma = Process.ve_sigma

    def t_of_ve_sigma(self, ve_sigma):
        # (1 - a^2) / a = s  =>  a = 2 / (sqrt(s^2 + 4) + s)  =>  -log a = asinh(s / 2),
        # which (unlike log of a number near 1) keeps full relative precision as s -> 0.
        return _vp_t_of_neg_log_alpha(jnp.arcsinh(0.5 * ve_sigma), self.beta_min, self.beta_max)


@_pytree
class VE(Process):
    """Variance-exploding SDE (Song & Ermon 2019; Song et al. 2021, eq. 9).

    ``alpha = 1``, ``sigma = sigma_min (sigma_max / sigma_min)^t``, t in [0, 1]; note
    ``sigma(0) = sigma_min > 0`` as in score_sde.
    """

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    t_max: float = 1.0

    def alpha(self, t):
        return jnp.ones_like(jnp.asarray(t, dtype=jnp.result_type(float)))

    def sigma(self, t):
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def d_alpha(self, t):
        return jnp.zeros_like(jnp.asarray(t, dtype=jnp.result_type(float)))

    def d_sigma(self, t):
        return self.sigma(t) * jnp.log(self.sigma_max / self.sigma_min)

    def t_of_ve_sigma(self, ve_sigma):
        return jnp.log(ve_sigma / self.sigma_min) / jnp.log(self.sigma_max / self.sigma_min)


@_pytree
class EDM(Process):
    """EDM's process (Karras et al. 2022, Sec. 3): ``alpha = 1``, ``sigma = t``, t in [0, sigma_max]."""

    sigma_max: float = 80.0

    @property
    def t_max(self):
        return self.sigma_max

    def alpha(self, t):
        return jnp.ones_like(jnp.asarray(t, dtype=jnp.result_type(float)))

    def sigma(self, t):
        return jnp.asarray(t, dtype=jnp.result_type(float))

    def d_alpha(self, t):
        return jnp.zeros_like(jnp.asarray(t, dtype=jnp.result_type(float)))

    def d_sigma(self, t):
        return jnp.ones_like(jnp.asarray(t, dtype=jnp.result_type(float)))

    def t_of_ve_sigma(self, ve_sigma):
        return ve_sigma


@_pytree
class Cosine(Process):
    """Cosine schedule (Nichol & Dhariwal 2021, eq. 17) in continuous time, t in [0, 1].

    ``alpha = cos(theta(t)) / cos(theta_0)`` with ``theta(t) = pi/2 (t + s)/(1 + s)``,
    ``theta_0 = theta(0)``, and ``sigma = sqrt(1 - alpha^2)``. ``alpha(1) = 0``, so the VE-frame
    noise level is infinite at ``t = 1``.

    Float32 near the data end: ``1 - alpha^2`` is evaluated as
    ``sin(theta - theta_0) sin(theta + theta_0) / cos^2 theta_0`` (``cos^2 a - cos^2 b =
    sin(b - a) sin(b + a)``) with ``theta - theta_0 = pi/2 t/(1 + s)`` taken from ``t`` directly,
    and :meth:`t_of_ve_sigma` through a difference of tangents, so neither cancels as
    ``sigma -> 0`` (round trips hold to float32 rounding down to ``sigma = 1e-5``).

    DDPM's discrete ``squaredcos_cap_v2`` schedule with ``N`` steps (improved DDPM; diffusers'
    ``betas_for_alpha_bar``) has ``alpha_bar_i = alpha((i + 1) / N)^2`` for ``i < N - 1`` (the last
    step's beta is capped at 0.999, so ``alpha_bar_{N-1} > 0 = alpha(1)^2``): a network trained on
    it takes index ``i = N t - 1``. :class:`DiscreteVP` reproduces the capped table exactly.
    """

    s: float = 0.008
    t_max: float = 1.0

    def _rate(self):
        return 0.5 * jnp.pi / (1.0 + self.s)

    def _angle(self, t):
        return self._rate() * (t + self.s)

    def _one_minus_alpha_cos_squared(self, t):
        """``cos^2 theta_0 - cos^2 theta(t) = sin(theta - theta_0) sin(theta + theta_0)``."""
        return jnp.sin(self._rate() * t) * jnp.sin(self._angle(t) + self._angle(0.0))

    def alpha(self, t):
        return jnp.cos(self._angle(t)) / jnp.cos(self._angle(0.0))

    def sigma(self, t):
        product = jnp.maximum(self._one_minus_alpha_cos_squared(t), 0.0)
        return jnp.sqrt(product) / jnp.cos(self._angle(0.0))

    def d_alpha(self, t):
        return -self._rate() * jnp.sin(self._angle(t)) / jnp.cos(self._angle(0.0))

    def d_sigma(self, t):
        return -self.alpha(t) * self.d_alpha(t) / self.sigma(t)

    def ve_sigma(self, t):
        product = jnp.maximum(self._one_minus_alpha_cos_squared(t), 0.0)
        return jnp.sqrt(product) / jnp.cos(self._angle(t))

    def t_of_ve_sigma(self, ve_sigma):
        # cos(theta) = cos(theta_0) / sqrt(1 + s^2)  =>  tan(theta) = hypot(sin theta_0, s) /
        # cos theta_0; theta - theta_0 = atan2(tan theta - tan theta_0, 1 + tan theta tan theta_0)
        # with tan theta - tan theta_0 = s^2 / ((hypot + sin theta_0) cos theta_0): no cancellation.
        sin0, cos0 = jnp.sin(self._angle(0.0)), jnp.cos(self._angle(0.0))
        ve_sigma = jnp.asarray(ve_sigma)
        hypot = jnp.hypot(sin0, ve_sigma)
        numerator = ve_sigma * (ve_sigma / (hypot + sin0)) * cos0
        difference = jnp.arctan2(numerator, cos0**2 + hypot * sin0)
        return difference / self._rate()


@_pytree
class RectifiedFlow(Process):
    """Rectified flow / conditional OT path (Liu et al. 2023; Lipman et al. 2023, eq. 20 with
    sigma_min = 0): ``alpha = 1 - t``, ``sigma = t``, t in [0, 1].

    In the flow-matching papers' time ``tau = 1 - t`` (data at tau = 1) this is
    ``x = tau x1 + (1 - tau) x0`` with target velocity ``x1 - x0`` (= minus ours).
    """

    t_max: float = 1.0

    def alpha(self, t):
        return 1.0 - jnp.asarray(t, dtype=jnp.result_type(float))

    def sigma(self, t):
        return jnp.asarray(t, dtype=jnp.result_type(float))

    def d_alpha(self, t):
        return -jnp.ones_like(jnp.asarray(t, dtype=jnp.result_type(float)))

    def d_sigma(self, t):
        return jnp.ones_like(jnp.asarray(t, dtype=jnp.result_type(float)))

    def t_of_ve_sigma(self, ve_sigma):
        return ve_sigma / (1.0 + ve_sigma)


@_pytree
class TrigFlow(Process):
    """TrigFlow (Lu & Song 2024, "sCM", Sec. 2): ``alpha = cos t``, ``sigma = sigma_data sin t``.

    t in [0, pi/2]; with ``sigma_data = 1`` this is ``(cos t, sin t)``; sCM uses noise
    ``N(0, sigma_data^2)``, i.e. ``sigma_data = 0.5`` here. ``t = atan(s / sigma_data)``.
    """

    sigma_data: float = 1.0
    t_max: float = 0.5 * math.pi

    def alpha(self, t):
        return jnp.cos(t)

    def sigma(self, t):
        return self.sigma_data * jnp.sin(t)

    def d_alpha(self, t):
        return -jnp.sin(t)

    def d_sigma(self, t):
        return self.sigma_data * jnp.cos(t)

    def ve_sigma(self, t):
        return self.sigma_data * jnp.tan(t)

    def t_of_ve_sigma(self, ve_sigma):
        return jnp.arctan(ve_sigma / self.sigma_data)


# -- discrete-time (DDPM) schedules ------------------------------------------------------------


def linear_betas(num_steps=1000, beta_start=1e-4, beta_end=0.02):
    """DDPM's linear schedule ``beta_i = linspace(beta_start, beta_end, N)`` (Ho et al. 2020,
    Sec. 4; diffusers' ``"linear"``). :class:`VP` ``(0.1, 20)`` is its continuous limit only:
    ``N beta_i -> beta(t)``; at ``N = 1000`` the cumulative ``alpha_bar`` differ by up to ~7%
    near ``t = 1`` (``tests/test_processes.py`` measures it)."""
    return np.linspace(beta_start, beta_end, num_steps, dtype=np.float64)


def scaled_linear_betas(num_steps=1000, beta_start=0.00085, beta_end=0.012):
    """Latent diffusion's schedule ``beta_i = linspace(sqrt(beta_start), sqrt(beta_end), N)^2``
    (Rombach et al. 2022 code; diffusers' ``"scaled_linear"``)."""
    return np.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=np.float64) ** 2


def squaredcos_cap_v2_betas(num_steps=1000, max_beta=0.999, s=0.008):
    """Improved DDPM's cosine schedule (Nichol & Dhariwal 2021, eq. 17 and Sec. 3.2):
    ``beta_i = min(1 - f((i + 1)/N) / f(i/N), max_beta)``, ``f(t) = cos^2(pi/2 (t + s)/(1 + s))``
    (diffusers' ``"squaredcos_cap_v2"``)."""
    t = np.arange(num_steps + 1, dtype=np.float64) / num_steps
    f = np.cos(0.5 * np.pi * (t + s) / (1.0 + s)) ** 2
    return np.minimum(1.0 - f[1:] / f[:-1], max_beta)


DDPM_BETA_SCHEDULES = types.MappingProxyType({
    "linear": linear_betas,
    "scaled_linear": scaled_linear_betas,
    "squaredcos_cap_v2": squaredcos_cap_v2_betas,
})


@_pytree
class DiscreteVP(Process):
    """A DDPM discrete-time schedule as a continuous VP process (for networks trained on one).

    Index ``i = 0..N-1`` of ``betas`` sits at time ``t_i = (i + 1) / N`` with ``alpha(t_i)^2 =
    alpha_bar_i = prod_{j <= i} (1 - beta_j)`` exactly; ``t = 0`` is data (``alpha = 1``). Between
    the grid points ``log alpha`` is linear in ``t`` (a piecewise-constant ``beta(t) = -N log(1 -
    beta_i)`` on ``(t_i - 1/N, t_i]``), so ``alpha`` decreases monotonically and ``sigma = sqrt(1 -
    alpha^2)``. This is DPM-Solver's discrete-time wrapper (Lu et al. 2022, App. / ``NoiseScheduleVP
    ('discrete')``: ``t_i = (i + 1)/N``, piecewise-linear ``log alpha``), anchored at ``(0, 0)``
    instead of extrapolated. A network trained with integer timesteps takes
    :meth:`index_of_t` ``(t) = N t - 1``, fractional between grid points.

    Build with :meth:`from_betas` or :meth:`from_schedule`; the one field is the table
    ``log_alpha_bar`` ``(N,)`` (a pytree leaf), so ``N`` is static and the values may be traced.
    """

    log_alpha_bar: jax.Array
    t_max: float = 1.0

    @classmethod
    def from_betas(cls, betas):
        """The process of a discrete schedule ``betas (N,)`` with every ``beta`` in ``(0, 1)``."""
        betas = np.asarray(betas, np.float64)
        if betas.ndim != 1 or betas.size < 1:
            raise ValueError(f"betas must be a non-empty vector; got shape {betas.shape}")
        if not np.all((betas > 0) & (betas < 1)):
            raise ValueError(f"every beta must lie in (0, 1); got range [{betas.min()}, "
                             f"{betas.max()}]")
        return cls(jnp.asarray(np.cumsum(np.log1p(-betas))))

    @classmethod
    def from_schedule(cls, name, num_steps=1000, **options):
        """The process of a named DDPM schedule (``DDPM_BETA_SCHEDULES``: ``linear``,
        ``scaled_linear``, ``squaredcos_cap_v2``), ``options`` going to its beta function."""
        if name not in DDPM_BETA_SCHEDULES:
            raise ValueError(
                f"unknown DDPM schedule {name!r}; expected one of {tuple(DDPM_BETA_SCHEDULES)}"
            )
        return cls.from_betas(DDPM_BETA_SCHEDULES[name](num_steps, **options))

    @property
    def num_steps(self):
        """``N``, the number of discrete steps (static: the table's length)."""
        return self.log_alpha_bar.shape[0]

    def t_of_index(self, index):
        """Continuous time ``(i + 1) / N`` of discrete index ``i``."""
        return (jnp.asarray(index) + 1.0) / self.num_steps

    def index_of_t(self, t):
        """Fractional discrete index ``N t - 1`` of time ``t`` (the network's timestep input)."""
        return jnp.asarray(t) * self.num_steps - 1.0

    def _nodes(self):
        """``log alpha_bar`` at the ``N + 1`` nodes ``t = 0, 1/N, ..., 1`` (0 at data)."""
        return jnp.concatenate([jnp.zeros((1,), self.log_alpha_bar.dtype), self.log_alpha_bar])

    def _segment(self, t):
        """Segment index ``k`` with ``t`` in ``[k/N, (k+1)/N]`` (clamped: linear extrapolation)."""
        t = jnp.asarray(t, dtype=jnp.result_type(float))
        return jnp.clip(jnp.floor(t * self.num_steps), 0, self.num_steps - 1).astype(jnp.int32)

    def _log_alpha_bar_and_slope(self, t):
        t = jnp.asarray(t, dtype=jnp.result_type(float))
        nodes = self._nodes()
        k = self._segment(t)
        slope = (nodes[k + 1] - nodes[k]) * self.num_steps
        return nodes[k] + (t - k.astype(t.dtype) / self.num_steps) * slope, slope

    def alpha(self, t):
        return jnp.exp(0.5 * self._log_alpha_bar_and_slope(t)[0])

    def sigma(self, t):
        return jnp.sqrt(-jnp.expm1(self._log_alpha_bar_and_slope(t)[0]))

    def d_alpha(self, t):
        log_alpha_bar, slope = self._log_alpha_bar_and_slope(t)
        return 0.5 * slope * jnp.exp(0.5 * log_alpha_bar)

    def d_sigma(self, t):
        return -self.alpha(t) * self.d_alpha(t) / self.sigma(t)

    def ve_sigma(self, t):
        return jnp.sqrt(jnp.expm1(-self._log_alpha_bar_and_slope(t)[0]))

    def t_of_ve_sigma(self, ve_sigma):
        # alpha_bar = 1 / (1 + s^2): invert the piecewise-linear log alpha_bar on its segment.
        target = -jnp.log1p(jnp.asarray(ve_sigma) ** 2)
        nodes = self._nodes()
        k = jnp.clip(jnp.searchsorted(-nodes, -target, side="right") - 1, 0, self.num_steps - 1)
        fraction = (target - nodes[k]) / (nodes[k + 1] - nodes[k])
        return (k + fraction) / self.num_steps
