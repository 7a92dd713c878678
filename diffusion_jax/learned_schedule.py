"""Learned noise schedule: VDM's monotone network for ``gamma(t) = -log SNR(t)``.

Kingma et al. 2021 ("Variational diffusion models", Sec. 5 and App. H): ``gamma`` is a monotone
network ``l1(t) + l3(sigmoid(l2(l1(t))))`` with non-negative weights, rescaled so that
``gamma(0) = gamma_min`` and ``gamma(1) = gamma_max``; the process is variance preserving with
``alpha^2 = sigmoid(-gamma)`` and ``sigma^2 = sigmoid(gamma)``. The continuous-time VLB depends on
``gamma`` only through its end points (VDM eq. 14-15), so training the interior only changes the
variance of the Monte Carlo estimator; VDM minimises that variance by the squared loss's gradient.

:class:`LearnedVP` is a :class:`~diffusion_jax.processes.Process`, so samplers, losses and
likelihoods use it like any other. Its continuous VDM loss ``gamma'(t)/2 ||eps - eps_hat||^2`` is
:class:`~diffusion_jax.schedules.LikelihoodWeighting` (``g^2 / sigma^2 = gamma'`` for VP paths).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from diffusion_jax.losses import denoising_loss
from diffusion_jax.processes import Process
from diffusion_jax.schedules import LikelihoodWeighting, UniformTime

__all__ = [
    "MonotoneLogSNR",
    "LearnedVP",
    "EpsilonNetworkModel",
    "vdm_diffusion_loss",
    "vdm_prior_loss",
    "vdm_reconstruction_loss",
    "vdm_vlb",
    "variance_minimising_gradients",
]

_BISECTION_STEPS = 60


@dataclasses.dataclass(frozen=True)
class MonotoneLogSNR:
    """Monotone ``gamma(t)`` on [0, 1] (Kingma et al. 2021, App. H); build with :meth:`init`.

    Raw parameters are mapped through ``softplus`` to non-negative weights, so ``gamma`` is
    non-decreasing for any parameter values; ``gamma_min``/``gamma_max`` fix the end points (VDM:
    -13.3 and 5.0).
    """

    w1: jax.Array
    b1: jax.Array
    w2: jax.Array
    b2: jax.Array
    w3: jax.Array
    gamma_min: float = -13.3
    gamma_max: float = 5.0

    @classmethod
    def init(cls, key, *, hidden=1024, gamma_min=-13.3, gamma_max=5.0, dtype=jnp.float32):
        """Random initialisation; near-linear ``gamma`` at the start."""
        k2, k3 = jax.random.split(key)
        return cls(
            w1=jnp.ones((), dtype),
            b1=jnp.zeros((), dtype),
            w2=jax.random.normal(k2, (hidden,), dtype),
            b2=jnp.zeros((hidden,), dtype),
            w3=0.1 * jax.random.normal(k3, (hidden,), dtype) - 3.0,
            gamma_min=gamma_min,
            gamma_max=gamma_max,
        )

    def _unnormalised(self, t):
        t = jnp.asarray(t)
        l1 = jax.nn.softplus(self.w1) * t + self.b1
        hidden = jax.nn.sigmoid(jax.nn.softplus(self.w2) * l1[..., None] + self.b2)
        hidden = 2.0 * (hidden - 0.5)  # VDM centres the sigmoid features
        return l1 + hidden @ jax.nn.softplus(self.w3)

    def __call__(self, t):
        """``gamma(t)``, rescaled to the end points."""
        start, end = self._unnormalised(0.0), self._unnormalised(1.0)
        fraction = (self._unnormalised(t) - start) / (end - start)
        return self.gamma_min + (self.gamma_max - self.gamma_min) * fraction

    def derivative(self, t):
        """``d gamma / dt`` (forward-mode autodiff; non-negative)."""
        t = jnp.asarray(t)
        return jax.jvp(self.__call__, (t,), (jnp.ones_like(t),))[1]

    def inverse(self, gamma):
        """``t`` with ``gamma(t) = gamma``: bisection on the monotone map, then one Newton step so
        that derivatives with respect to ``gamma`` and the parameters are first-order exact."""
        gamma = jnp.asarray(gamma)
        low = jnp.zeros_like(gamma)
        high = jnp.ones_like(gamma)

        def bisect(_, bounds):
            low, high = bounds
            middle = 0.5 * (low + high)
            above = self(middle) > gamma
            return jnp.where(above, low, middle), jnp.where(above, middle, high)

        low, high = jax.lax.fori_loop(
            0, _BISECTION_STEPS, bisect, jax.lax.stop_gradient((low, high))
        )
        t = jax.lax.stop_gradient(0.5 * (low + high))
        return t - (self(t) - gamma) / self.derivative(t)


jax.tree_util.register_dataclass(
    MonotoneLogSNR,
    data_fields=["w1", "b1", "w2", "b2", "w3", "gamma_min", "gamma_max"],
    meta_fields=[],
)


@dataclasses.dataclass(frozen=True)
class LearnedVP(Process):
    """Variance-preserving process with a learned schedule (Kingma et al. 2021, eq. 3-4):
    ``alpha = sqrt(sigmoid(-gamma(t)))``, ``sigma = sqrt(sigmoid(gamma(t)))``, t in [0, 1]."""

    schedule: MonotoneLogSNR
    t_max: float = 1.0

    def alpha(self, t):
        return jnp.sqrt(jax.nn.sigmoid(-self.schedule(t)))

    def sigma(self, t):
        return jnp.sqrt(jax.nn.sigmoid(self.schedule(t)))

    def d_alpha(self, t):
        # alpha^2 = sigmoid(-gamma)  =>  alpha' = -alpha sigma^2 gamma' / 2.
        return -0.5 * self.alpha(t) * self.sigma(t) ** 2 * self.schedule.derivative(t)

    def d_sigma(self, t):
        return 0.5 * self.sigma(t) * self.alpha(t) ** 2 * self.schedule.derivative(t)

    def log_snr(self, t):
        return -self.schedule(t)

    def ve_sigma(self, t):
        return jnp.exp(0.5 * self.schedule(t))

    def t_of_ve_sigma(self, ve_sigma):
        return self.schedule.inverse(2.0 * jnp.log(ve_sigma))


jax.tree_util.register_dataclass(LearnedVP, data_fields=["schedule", "t_max"], meta_fields=[])


# -- VDM's variational bound and its variance-minimising schedule gradient -------------------------


@dataclasses.dataclass(frozen=True)
class EpsilonNetworkModel:
    """An epsilon-predicting ``network(z_t, c_noise, cond)`` as a model in process time, conditioned
    on the normalised log-SNR ``c_noise = 1000 (gamma(t) - gamma_min) / (gamma_max - gamma_min)``
    (Kingma et al. 2021, App. B: the network sees ``gamma_t``, so the schedule's shape reaches it).
    """

    network: object
    schedule: MonotoneLogSNR

    def __call__(self, z_t, t, cond=None):
        fraction = (self.schedule(t) - self.schedule.gamma_min) / (
            self.schedule.gamma_max - self.schedule.gamma_min)
        c_noise = jnp.broadcast_to(1000.0 * fraction, z_t.shape[:1])
        return self.network(z_t, c_noise, cond)


jax.tree_util.register_dataclass(EpsilonNetworkModel, data_fields=["network", "schedule"],
                                 meta_fields=[])


def vdm_diffusion_loss(model, schedule, x0, key, *, cond=None, prediction="epsilon",
                       stratification="shifted_grid"):
    """Per-example continuous-time diffusion loss ``1/2 gamma'(t) ||eps - eps_hat(z_t, t)||^2``
    (Kingma et al. 2021, eq. 17; summed over data axes, nats) with ``t ~ U(0, 1)`` drawn on VDM's
    shifted grid (App. I.1). ``model(z_t, t, cond)`` predicts ``prediction`` in process time; the
    likelihood weighting makes any prediction the same bound."""
    process = LearnedVP(schedule)
    loss = denoising_loss(model, x0, key, process=process, prediction=prediction,
                          t_distribution=UniformTime(t_min=0.0, t_max=1.0),
                          weighting=LikelihoodWeighting(), cond=cond,
                          stratification=stratification, reduce="sum")
    return 0.5 * loss


def vdm_prior_loss(schedule, x0):
    """``KL(q(z_1 | x) || N(0, I))`` per example (Kingma et al. 2021, eq. 11), closed form:
    ``1/2 sum(alpha_1^2 x^2 + sigma_1^2 - 1 - log sigma_1^2)``."""
    gamma_1 = schedule(1.0)
    alpha_sq, sigma_sq = jax.nn.sigmoid(-gamma_1), jax.nn.sigmoid(gamma_1)
    per_dim = alpha_sq * x0**2 + sigma_sq - 1.0 - jnp.log(sigma_sq)
    return 0.5 * jnp.sum(per_dim.reshape(x0.shape[0], -1), axis=-1)


def vdm_reconstruction_loss(schedule, x0, key):
    """``-log p(x | z_0)`` per example for continuous data with the Gaussian decoder
    ``p(x | z_0) = N(z_0 / alpha_0, e^{gamma_0})`` (Kingma et al. 2021, Sec. 3.3 and App. C, the
    continuous-data form): ``1/2 sum(log 2 pi + gamma_0 + eps^2)`` at ``z_0 = alpha_0 x + sigma_0
    eps`` (an unbiased one-sample estimate)."""
    gamma_0 = schedule(0.0)
    eps = jax.random.normal(key, x0.shape, x0.dtype)
    per_dim = jnp.log(2.0 * jnp.pi) + gamma_0 + eps**2
    return 0.5 * jnp.sum(per_dim.reshape(x0.shape[0], -1), axis=-1)


def vdm_vlb(model, schedule, x0, key, *, cond=None, prediction="epsilon"):
    """Per-example estimate of VDM's negative bound ``-log p(x) <= L_prior + L_recon + L_diff``
    (Kingma et al. 2021, eq. 10; nats per example, continuous data)."""
    diffusion_key, reconstruction_key = jax.random.split(key)
    return (vdm_diffusion_loss(model, schedule, x0, diffusion_key, cond=cond,
                               prediction=prediction)
            + vdm_prior_loss(schedule, x0)
            + vdm_reconstruction_loss(schedule, x0, reconstruction_key))


def variance_minimising_gradients(per_example_loss, model_params, schedule_params):
    """VDM's split gradient (Kingma et al. 2021, Sec. 5.2 and App. I.2): the model parameters get
    the gradient of the mean loss, the schedule's parameters the gradient of the mean SQUARED loss,
    ``grad E[L^2] = grad Var[L] + 2 E[L] grad E[L]``: in the interior the bound is invariant to the
    schedule (eq. 15), so this lowers the Monte Carlo variance of the estimator; at the end points
    it trades the bound against its variance.

    ``per_example_loss(model_params, schedule_params) -> (batch,)``. One forward pass and two
    backward passes (``jax.vjp`` pulled back with cotangents ``1/B`` and ``2 L/B``). Returns
    ``(losses, model_gradient, schedule_gradient)``.
    """
    losses, pullback = jax.vjp(per_example_loss, model_params, schedule_params)
    if losses.ndim != 1:
        raise ValueError(f"per_example_loss must return losses of shape (batch,); got "
                         f"{losses.shape}")
    count = losses.shape[0]
    model_gradient, _ = pullback(jnp.full_like(losses, 1.0 / count))
    _, schedule_gradient = pullback(2.0 * jax.lax.stop_gradient(losses) / count)
    return losses, model_gradient, schedule_gradient
