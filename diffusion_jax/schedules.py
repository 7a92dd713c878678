"""Training side: noise-level distributions and loss weightings.

**Noise-level distributions** draw a process time ``t`` per example. Each is defined by its inverse
CDF ``from_uniform(u, process)`` of ``u in (0, 1)``, so every one supports plain i.i.d. draws,
stratified draws (``u_i = (i + U_i) / B``) and the shifted grid of Kingma et al. 2021
(VDM, App. I.1: ``u_i = (U + i / B) mod 1``, "antithetic"/low-discrepancy). Distributions given in
VE noise level (log-normal, Karras levels) are mapped to time with ``process.t_of_ve_sigma``.

**Loss weightings** follow Kingma & Gao 2023 ("Understanding diffusion objectives"): every
objective is a weighted MSE in one *native* parameterisation. A weighting names it (``native``) and
its weight there (``native_weight``); :meth:`Weighting.weight_for` gives the exact weight on the MSE of
any other parameterisation via :func:`diffusion_jax.denoisers.x0_error_scale`. SNR is
``alpha^2 / sigma^2``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.special import ndtri

from diffusion_jax.denoisers import check_parameterisation, x0_error_scale
from diffusion_jax.processes import Process
from diffusion_jax.pytrees import frozen_pytree as _pytree
from diffusion_jax.samplers.grids import karras_levels

__all__ = [
    "STRATIFICATIONS",
    "uniform_draws",
    "UniformTime",
    "LogNormalSigma",
    "LogUniformSigma",
    "LogitNormalTime",
    "KarrasLevels",
    "karras_levels",
    "Weighting",
    "X0MSE",
    "EpsilonMSE",
    "VMSE",
    "EDMWeighting",
    "MinSNR",
    "SoftMinSNR",
    "P2",
    "LikelihoodWeighting",
    "FlowMatchingWeighting",
    "snr",
]

STRATIFICATIONS = ("iid", "stratified", "shifted_grid")





def uniform_draws(key, num_samples, stratification="iid", dtype=jnp.float32):
    """``num_samples`` values in (0, 1): i.i.d., stratified ``(i + U_i)/B``, or the shifted grid
    ``(U + i/B) mod 1`` of Kingma et al. 2021 (VDM, App. I.1)."""
    if stratification not in STRATIFICATIONS:
        raise ValueError(
            f"unknown stratification {stratification!r}; expected one of {STRATIFICATIONS}"
        )
    if stratification == "iid":
        u = jax.random.uniform(key, (num_samples,), dtype)
    elif stratification == "stratified":
        u = jnp.arange(num_samples, dtype=dtype) + jax.random.uniform(key, (num_samples,), dtype)
        u = u / num_samples
    else:
        u = jnp.mod(
            jax.random.uniform(key, (), dtype) + jnp.arange(num_samples, dtype=dtype) / num_samples,
            1.0,
        )
    tiny = jnp.finfo(dtype).tiny
    return jnp.clip(u, tiny, 1.0 - jnp.finfo(dtype).epsneg)


class _TimeDistribution:
    """Shared ``sample`` for distributions defined by an inverse CDF ``from_uniform``."""

    def sample(
        self, key, num_samples, process: Process, *, stratification="iid", dtype=jnp.float32
    ):
        """Draw ``num_samples`` process times (shape ``(num_samples,)``)."""
        return self.from_uniform(uniform_draws(key, num_samples, stratification, dtype), process)


@_pytree
class UniformTime(_TimeDistribution):
    """``t ~ U[t_min, t_max]`` (Song et al. 2021, Alg. 1 with ``t_min = 1e-5``; Ho et al. 2020);
    ``t_max = None`` means the process's ``t_max``."""

    t_min: float = 1e-5
    t_max: float | None = None

    def from_uniform(self, u, process):
        """Inverse CDF."""
        t_max = process.t_max if self.t_max is None else self.t_max
        return self.t_min + u * (t_max - self.t_min)

    def log_density(self, t, process):
        """Log-density of ``t`` (for importance weighting)."""
        t_max = process.t_max if self.t_max is None else self.t_max
        return jnp.full_like(jnp.asarray(t, float), -jnp.log(t_max - self.t_min))


@_pytree
class LogNormalSigma(_TimeDistribution):
    """``ln s ~ N(p_mean, p_std^2)`` on the VE noise level (Karras et al. 2022, Table 1: -1.2, 1.2;
    iCT/ECT: -1.1, 2.0; EDM2: -0.4, 1.0), mapped to time by ``process.t_of_ve_sigma``."""

    p_mean: float = -1.2
    p_std: float = 1.2

    def sigma_from_uniform(self, u):
        """VE noise level at CDF value ``u``."""
        return jnp.exp(self.p_mean + self.p_std * ndtri(u))

    def from_uniform(self, u, process):
        """Inverse CDF in process time."""
        return process.t_of_ve_sigma(self.sigma_from_uniform(u))


@_pytree
class LogUniformSigma(_TimeDistribution):
    """``ln s ~ U[ln sigma_min, ln sigma_max]``: uniform in log-SNR (Kingma et al. 2021, VDM;
    Lu et al. 2022 "logSNR" spacing). For every affine process its density in ``t`` is proportional
    to ``g(t)^2 / sigma(t)^2``, so it is the importance distribution of the likelihood weighting
    (Song et al. 2021b, Sec. 5): the importance weight ``(g^2/sigma^2) / p(t)`` is constant."""

    sigma_min: float = 0.002
    sigma_max: float = 80.0

    def from_uniform(self, u, process):
        """Inverse CDF in process time."""
        log_min, log_max = jnp.log(self.sigma_min), jnp.log(self.sigma_max)
        return process.t_of_ve_sigma(jnp.exp(log_min + u * (log_max - log_min)))

    def log_density(self, t, process):
        """Log-density of ``t``: ``-log(ln smax - ln smin) + log |d ln s / dt|``."""
        d_log_sigma = jax.vmap(jax.grad(lambda tt: jnp.log(process.ve_sigma(tt))))(jnp.ravel(t))
        return (
            jnp.log(jnp.abs(d_log_sigma))
            - jnp.log(jnp.log(self.sigma_max) - jnp.log(self.sigma_min))
        ).reshape(jnp.shape(t))


@_pytree
class LogitNormalTime(_TimeDistribution):
    """``t / t_max = sigmoid(m + s z)``, ``z ~ N(0, 1)`` (Esser et al. 2024, "SD3", eq. 19)."""

    mean: float = 0.0
    std: float = 1.0

    def from_uniform(self, u, process):
        """Inverse CDF."""
        return process.t_max * jax.nn.sigmoid(self.mean + self.std * ndtri(u))


@_pytree(meta=("num_levels",))
class KarrasLevels(_TimeDistribution):
    """Uniform choice among ``num_levels`` Karras noise levels (Karras et al. 2022, eq. 5; the
    discretised sigmas of consistency training, Song et al. 2023, Sec. 5)."""

    num_levels: int = 18
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0

    def from_uniform(self, u, process):
        """Inverse CDF in process time."""
        levels = karras_levels(self.num_levels, self.sigma_min, self.sigma_max, self.rho)
        index = jnp.minimum(jnp.floor(u * self.num_levels).astype(jnp.int32), self.num_levels - 1)
        return process.t_of_ve_sigma(levels[index].astype(u.dtype))


# -- loss weightings ---------------------------------------------------------------------------


def snr(process: Process, t):
    """Signal-to-noise ratio ``alpha^2 / sigma^2`` (Kingma et al. 2021, eq. 2)."""
    return jnp.exp(process.log_snr(t))


class Weighting:
    """A loss weighting: weight ``native_weight(process, t)`` on the MSE of ``native``."""

    native: str = "x0"

    def native_weight(self, process: Process, t):
        """Weight on the native parameterisation's squared error."""
        return jnp.ones_like(process.sigma(t))

    def x0_weight(self, process: Process, t):
        """The same objective as a weight on the x0 squared error (Kingma & Gao 2023, eq. 8)."""
        return self.weight_for("x0", process, t)

    def weight_for(self, parameterisation, process: Process, t):
        """Exact weight on the squared error of ``parameterisation`` (at fixed ``x_t`` the errors
        of two parameterisations differ by the factor ``x0_error_scale``)."""
        check_parameterisation(parameterisation)
        weight = self.native_weight(process, t)
        if parameterisation == self.native:
            return weight
        ratio = x0_error_scale(self.native, process, t) / x0_error_scale(
            parameterisation, process, t
        )
        return weight * ratio**2


@_pytree
class X0MSE(Weighting):
    """Plain x0 (data) MSE, weight 1 on ``||x0_hat - x0||^2``."""

    native = "x0"


@_pytree
class EpsilonMSE(Weighting):
    """Noise-prediction MSE, weight 1 on ``||eps_hat - eps||^2`` (Ho et al. 2020, eq. 14)."""

    native = "epsilon"


@_pytree
class VMSE(Weighting):
    """v-prediction MSE, weight 1 on ``||v_hat - v||^2`` (Salimans & Ho 2022, Sec. 4)."""

    native = "v"


@_pytree
class FlowMatchingWeighting(Weighting):
    """Flow-matching MSE, weight 1 on the velocity error (Lipman et al. 2023, eq. 23)."""

    native = "velocity"


@_pytree
class EDMWeighting(Weighting):
    """``lambda(s) = (s^2 + sd^2) / (s sd)^2`` on the x0 error, s the VE noise level (Karras et al.
    2022, Table 1; = 1 / c_out^2, unit weight on the preconditioned network's target)."""

    native = "x0"
    sigma_data: float = 0.5

    def native_weight(self, process, t):
        sigma = process.ve_sigma(t)
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2


@_pytree
class MinSNR(Weighting):
    """Min-SNR-gamma (Hang et al. 2023, eq. 9): ``min(SNR, gamma)/SNR`` on the epsilon MSE, i.e.
    ``min(SNR, gamma)`` on the x0 MSE."""

    native = "epsilon"
    gamma: float = 5.0

    def native_weight(self, process, t):
        ratio = snr(process, t)
        return jnp.minimum(ratio, self.gamma) / ratio


@_pytree
class SoftMinSNR(Weighting):
    """Soft-min-SNR (Crowson et al. 2024, "Hourglass", Sec. 4): x0 weight
    ``SNR gamma / (SNR + gamma)``, i.e. ``gamma / (SNR + gamma)`` on the epsilon MSE. With
    ``gamma = 1 / sigma_data^2`` it is ``1 / (s^2 + sigma_data^2)`` on the x0 error."""

    native = "epsilon"
    gamma: float = 5.0

    def native_weight(self, process, t):
        return self.gamma / (snr(process, t) + self.gamma)


@_pytree
class P2(Weighting):
    """Perception-prioritised weighting (Choi et al. 2022, eq. 8): ``1 / (k + SNR)^gamma`` on the
    epsilon MSE."""

    native = "epsilon"
    k: float = 1.0
    gamma: float = 1.0

    def native_weight(self, process, t):
        return (self.k + snr(process, t)) ** (-self.gamma)


@_pytree
class LikelihoodWeighting(Weighting):
    """Likelihood weighting ``lambda(t) = g(t)^2`` on the score error (Song et al. 2021b,
    "Maximum likelihood training of score-based diffusion models", Thm. 1), i.e. ``g^2 / sigma^2``
    on the epsilon MSE. See :func:`diffusion_jax.losses.elbo_constant` for the bound it gives."""

    native = "epsilon"

    def native_weight(self, process, t):
        return process.diffusion_squared(t) / process.sigma(t) ** 2
