"""Closed forms for Gaussian endpoints: the marginal flow-matching field of the independent
coupling, the exact OT (Monge) map and the W2 distance between two Gaussians.

Time convention: library time, ``t = 0`` is data, ``t = 1`` is the source.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from diffusion_jax.processes import Process, RectifiedFlow, _broadcast_like

__all__ = [
    "IndependentGaussianVelocity",
    "gaussian_ot_map",
    "gaussian_w2_squared",
    "matrix_sqrt",
]


@dataclasses.dataclass(frozen=True)
class IndependentGaussianVelocity:
    """The exact marginal velocity of conditional flow matching with the *independent* coupling
    between data ``N(mean_data, diag(std_data^2))`` and source ``N(mean_source,
    diag(std_source^2))`` along an affine path ``x_t = alpha(t) x_data + sigma(t) x_source``
    (library time, t = 0 data; default rectified flow ``alpha = 1 - t, sigma = t``).

    Derivation: ``(x_t, u)`` with ``u = alpha' x_data + sigma' x_source`` is jointly Gaussian per
    coordinate, so ``E[u | x_t = x] = E u + Cov(u, x_t) / Var(x_t) (x - E x_t)``:

        v(x, t) = alpha' m_d + sigma' m_s
                  + (alpha alpha' s_d^2 + sigma sigma' s_s^2) / (alpha^2 s_d^2 + sigma^2 s_s^2)
                    (x - alpha m_d - sigma m_s).

    With ``m_s = 0, s_s = 1`` and torchcfm's time ``tau = 1 - t`` this is REFERENCES 4.2's
    ``v = m + (tau s^2 - (1 - tau)) / ((1 - tau)^2 + tau^2 s^2) (x - tau m)`` (up to the sign of
    the time). A ``noise_schedule`` (:mod:`diffusion_jax.flows.paths`) adds ``gamma(t) z`` to
    the path: ``gamma^2`` joins the variance and ``gamma gamma'`` the covariance.
    :meth:`marginal_log_prob` and :meth:`marginal_score` are the exact ``log p_t`` and its
    gradient.
    """

    mean_data: Any
    std_data: Any
    mean_source: Any = 0.0
    std_source: Any = 1.0
    process: Process = dataclasses.field(default_factory=RectifiedFlow)
    noise_schedule: Any = None

    def _moments(self, t, x):
        a, s = self.process.alpha(t), self.process.sigma(t)
        da, ds = self.process.d_alpha(t), self.process.d_sigma(t)
        a, s, da, ds = (_broadcast_like(c, x) for c in (a, s, da, ds))
        mean = a * self.mean_data + s * self.mean_source
        var = a**2 * self.std_data**2 + s**2 * self.std_source**2
        cov = a * da * self.std_data**2 + s * ds * self.std_source**2
        if self.noise_schedule is not None:
            gamma = _broadcast_like(self.noise_schedule.gamma(t), x)
            var = var + gamma**2
            cov = cov + gamma * _broadcast_like(self.noise_schedule.d_gamma(t), x)
        return mean, var, cov, da * self.mean_data + ds * self.mean_source

    def __call__(self, x, t, cond=None):
        mean, var, cov, mean_u = self._moments(t, x)
        return mean_u + cov / var * (x - mean)

    def marginal_log_prob(self, x, t):
        """``log p_t(x)`` per example (the path's marginal is Gaussian)."""
        mean, var, _, _ = self._moments(t, x)
        var = jnp.broadcast_to(var, x.shape)
        terms = -0.5 * ((x - mean) ** 2 / var + jnp.log(2 * jnp.pi * var))
        return jnp.sum(jnp.reshape(terms, (x.shape[0], -1)), axis=-1)

    def marginal_score(self, x, t, cond=None):
        """``grad log p_t(x) = -(x - E x_t) / Var x_t``."""
        mean, var, _, _ = self._moments(t, x)
        return -(x - mean) / var


jax.tree_util.register_dataclass(
    IndependentGaussianVelocity,
    data_fields=["mean_data", "std_data", "mean_source", "std_source", "process", "noise_schedule"],
    meta_fields=[],
)


def matrix_sqrt(matrix):
    """Principal square root of a symmetric positive semi-definite matrix (eigendecomposition)."""
    values, vectors = jnp.linalg.eigh(matrix)
    return (vectors * jnp.sqrt(jnp.clip(values, 0.0))) @ vectors.T


def gaussian_ot_map(mean_a, cov_a, mean_b, cov_b):
    """``(A, mean_a, mean_b)`` of the exact OT map ``T(x) = mean_b + A (x - mean_a)`` from
    ``N(mean_a, cov_a)`` to ``N(mean_b, cov_b)`` for the squared Euclidean cost:
    ``A = cov_a^{-1/2} (cov_a^{1/2} cov_b cov_a^{1/2})^{1/2} cov_a^{-1/2}`` (Peyre & Cuturi
    2019, "Computational OT", Remark 2.31; Knott & Smith 1984)."""
    root_a = matrix_sqrt(cov_a)
    inv_root_a = jnp.linalg.inv(root_a)
    middle = matrix_sqrt(root_a @ cov_b @ root_a)
    return inv_root_a @ middle @ inv_root_a, jnp.asarray(mean_a), jnp.asarray(mean_b)


def gaussian_w2_squared(mean_a, cov_a, mean_b, cov_b):
    """``W2^2 = |m_a - m_b|^2 + tr(cov_a + cov_b - 2 (cov_a^{1/2} cov_b cov_a^{1/2})^{1/2})``
    (Peyre & Cuturi 2019, Remark 2.31; Dowson & Landau 1982)."""
    root_a = matrix_sqrt(cov_a)
    cross = matrix_sqrt(root_a @ cov_b @ root_a)
    return jnp.sum((jnp.asarray(mean_a) - mean_b) ** 2) + jnp.trace(cov_a + cov_b - 2.0 * cross)
