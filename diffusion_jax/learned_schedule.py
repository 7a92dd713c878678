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

from diffusion_jax.processes import Process

__all__ = ["MonotoneLogSNR", "LearnedVP"]

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
