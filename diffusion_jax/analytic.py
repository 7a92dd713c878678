"""Analytic test bed: Gaussian-mixture data with everything exact.

For data ``x0 ~ sum_k w_k N(mu_k, Sigma_k)`` the VE-frame marginal at noise level ``sigma`` is the
mixture ``sum_k w_k N(mu_k, Sigma_k + sigma^2 I)``, so its log-density, score and the ideal denoiser
``E[x0 | x]`` are closed-form (Karras et al. 2022, eq. 3; Tweedie: ``D = x + sigma^2 score``). For a
single Gaussian the probability-flow ODE ``dx/dsigma = sigma (Sigma + sigma^2 I)^-1 (x - mu)`` has
the exact solution ``x(s1) = mu + U diag(sqrt((lam + s1^2)/(lam + s0^2))) U^T (x(s0) - mu)``.

A :class:`GaussianMixture` is a pytree (means, weights and the eigen-decomposition of the
covariances are leaves) and is itself a denoiser: ``mixture(x, sigma, cond=None) = E[x0 | x]``.
Arrays have the data dimension last: ``x`` has shape ``(..., dim)``; ``sigma`` is a scalar or
broadcasts against ``x.shape[:-1]``.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from diffusion_jax.processes import Process, check_sigma

__all__ = ["GaussianMixture", "gaussian_flow_map", "toy_gaussian_mixture"]


@dataclasses.dataclass(frozen=True)
class GaussianMixture:
    """Mixture ``sum_k w_k N(mu_k, U_k diag(lam_k) U_k^T)``; build it with :meth:`create`.

    Fields: ``means (K, d)``, ``log_weights (K,)``, ``eigenvalues (K, d)`` and ``eigenvectors
    (K, d, d)`` (``None`` for diagonal covariances, whose eigenvalues are the variances).
    """

    means: jax.Array
    log_weights: jax.Array
    eigenvalues: jax.Array
    eigenvectors: jax.Array | None = None

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def create(cls, means, covariances=None, weights=None, *, variances=None):
        """Build a mixture from means ``(K, d)`` and either full ``covariances (K, d, d)`` or
        per-dimension ``variances`` (``(K, d)``, ``(K,)`` or a scalar), with optional ``weights``.
        """
        means = jnp.asarray(means)
        if means.ndim != 2:
            raise ValueError(f"means must have shape (num_components, dim); got {means.shape}")
        num_components, dim = means.shape
        if (covariances is None) == (variances is None):
            raise ValueError("give exactly one of covariances (K, d, d) or variances")
        if weights is None:
            weights = jnp.full((num_components,), 1.0 / num_components, means.dtype)
        weights = jnp.asarray(weights, means.dtype)
        if weights.shape != (num_components,):
            raise ValueError(f"weights must have shape ({num_components},); got {weights.shape}")
        if not isinstance(weights, jax.core.Tracer) and bool(jnp.any(weights < 0)):
            raise ValueError("mixture weights must be non-negative")
        log_weights = jnp.log(weights) - jnp.log(jnp.sum(weights))
        if covariances is not None:
            covariances = jnp.asarray(covariances, means.dtype)
            if covariances.shape != (num_components, dim, dim):
                raise ValueError(
                    f"covariances must have shape ({num_components}, {dim}, {dim}); "
                    f"got {covariances.shape}"
                )
            symmetric = 0.5 * (covariances + jnp.swapaxes(covariances, -1, -2))
            eigenvalues, eigenvectors = jnp.linalg.eigh(symmetric)
            return cls(means, log_weights, eigenvalues, eigenvectors)
        variances = jnp.asarray(variances, means.dtype)
        try:
            variances = jnp.broadcast_to(
                variances.reshape(variances.shape + (1,) * (2 - variances.ndim))
                if variances.ndim < 2
                else variances,
                (num_components, dim),
            )
        except ValueError as error:
            raise ValueError(
                f"variances must broadcast to ({num_components}, {dim}); got {variances.shape}"
            ) from error
        return cls(means, log_weights, variances)

    @property
    def dim(self):
        """Data dimension ``d``."""
        return self.means.shape[-1]

    @property
    def num_components(self):
        """Number of mixture components ``K``."""
        return self.means.shape[0]

    def covariances(self):
        """Dense covariances ``(K, d, d)``."""
        if self.eigenvectors is None:
            return jax.vmap(jnp.diag)(self.eigenvalues)
        scaled = self.eigenvectors * self.eigenvalues[:, None, :]
        return scaled @ jnp.swapaxes(self.eigenvectors, -1, -2)

    def mean(self):
        """Mean of the mixture ``sum_k w_k mu_k``."""
        return jnp.exp(self.log_weights) @ self.means

    # -- per-component quantities in the eigenbasis -----------------------------------------
    def _rotate(self, centred):
        """``U_k^T (x - mu_k)`` for ``centred`` of shape ``(..., K, d)``."""
        if self.eigenvectors is None:
            return centred
        return jnp.einsum("...kd,kde->...ke", centred, self.eigenvectors)

    def _unrotate(self, y):
        if self.eigenvectors is None:
            return y
        return jnp.einsum("...ke,kde->...kd", y, self.eigenvectors)

    def _components(self, x, sigma):
        """Per-component ``(y, variance, log_joint)`` at noise level ``sigma``."""
        x = jnp.asarray(x)
        if x.shape[-1] != self.dim:
            raise ValueError(f"x must have last axis of size {self.dim}; got shape {x.shape}")
        sigma = jnp.asarray(check_sigma(sigma), x.dtype)
        try:
            sigma = jnp.broadcast_to(sigma, x.shape[:-1])
        except ValueError as error:
            raise ValueError(
                f"sigma of shape {sigma.shape} does not broadcast to x.shape[:-1] = {x.shape[:-1]}"
            ) from error
        y = self._rotate(x[..., None, :] - self.means)
        variance = self.eigenvalues + sigma[..., None, None] ** 2
        log_normal = -0.5 * jnp.sum(y**2 / variance + jnp.log(2 * math.pi * variance), axis=-1)
        return y, variance, self.log_weights + log_normal

    # -- exact quantities of the noised marginal --------------------------------------------
    def log_prob(self, x, sigma=0.0):
        """``log p(x; sigma)`` of the data convolved with ``N(0, sigma^2 I)``."""
        _, _, log_joint = self._components(x, sigma)
        return jax.nn.logsumexp(log_joint, axis=-1)

    def responsibilities(self, x, sigma=0.0):
        """Posterior component probabilities ``p(k | x; sigma)``, shape ``(..., K)``."""
        _, _, log_joint = self._components(x, sigma)
        return jax.nn.softmax(log_joint, axis=-1)

    def score(self, x, sigma=0.0):
        """``grad_x log p(x; sigma) = sum_k r_k (Sigma_k + sigma^2 I)^-1 (mu_k - x)``."""
        y, variance, log_joint = self._components(x, sigma)
        weights = jax.nn.softmax(log_joint, axis=-1)
        per_component = self._unrotate(-y / variance)
        return jnp.einsum("...k,...kd->...d", weights, per_component)

    def denoise(self, x, sigma):
        """Ideal denoiser ``E[x0 | x0 + sigma n = x]`` (posterior mean, Tweedie)."""
        y, variance, log_joint = self._components(x, sigma)
        weights = jax.nn.softmax(log_joint, axis=-1)
        shrink = self._unrotate(y * (1.0 - self.eigenvalues / variance))  # sigma^2/(lam+sigma^2) y
        return jnp.asarray(x) - jnp.einsum("...k,...kd->...d", weights, shrink)

    def __call__(self, x, sigma, cond=None):
        """The mixture as a denoiser (``cond`` is ignored): :meth:`denoise`."""
        del cond
        return self.denoise(x, sigma)

    # -- sampling and process-frame marginals -----------------------------------------------
    def sample(self, key, num_samples, sigma=0.0):
        """Exact samples ``(num_samples, d)`` of the marginal at noise level ``sigma``."""
        component_key, normal_key = jax.random.split(key)
        components = jax.random.categorical(component_key, self.log_weights, shape=(num_samples,))
        z = jax.random.normal(normal_key, (num_samples, self.dim), self.means.dtype)
        sigma = jnp.asarray(check_sigma(sigma), self.means.dtype)
        scale = jnp.sqrt(self.eigenvalues[components] + sigma**2)
        y = scale * z
        if self.eigenvectors is not None:
            y = jnp.einsum("ne,nde->nd", y, self.eigenvectors[components])
        return self.means[components] + y

    def marginal(self, process: Process, t):
        """The process-frame marginal ``p_t`` of ``x_t = alpha x0 + sigma n`` as a mixture
        ``sum_k w_k N(alpha mu_k, alpha^2 Sigma_k + sigma^2 I)`` (scalar ``t``)."""
        alpha, sigma = process.alpha(t), process.sigma(t)
        return GaussianMixture(
            alpha * self.means,
            self.log_weights,
            alpha**2 * self.eigenvalues + sigma**2,
            self.eigenvectors,
        )


jax.tree_util.register_dataclass(
    GaussianMixture,
    data_fields=["means", "log_weights", "eigenvalues", "eigenvectors"],
    meta_fields=[],
)


def gaussian_flow_map(gaussian: GaussianMixture, x, sigma_from, sigma_to):
    """Exact VE probability-flow map ``x(sigma_from) -> x(sigma_to)`` for one Gaussian component
    (the solution of Karras et al. 2022, eq. 4 for Gaussian data; component 0 is used)."""
    if gaussian.num_components != 1:
        raise ValueError(
            f"the closed-form flow map needs a single Gaussian; got {gaussian.num_components}"
        )
    sigma_from = jnp.asarray(check_sigma(sigma_from, "sigma_from"))
    sigma_to = jnp.asarray(check_sigma(sigma_to, "sigma_to"))
    x = jnp.asarray(x)
    mean, eigenvalues = gaussian.means[0], gaussian.eigenvalues[0]
    ratio = jnp.sqrt(
        (eigenvalues + sigma_to[..., None] ** 2) / (eigenvalues + sigma_from[..., None] ** 2)
    )
    centred = x - mean
    if gaussian.eigenvectors is None:
        return mean + ratio * centred
    basis = gaussian.eigenvectors[0]
    return mean + ((centred @ basis) * ratio) @ basis.T


def toy_gaussian_mixture(dtype=jnp.float32):
    """The exact mixture behind ``data.sample_toy("gaussian_mixture")``: means
    ``(-1.5, -0.5), (1.5, -0.5), (0, 1.25)``, weights ``0.3, 0.3, 0.4``, covariances
    ``[[0.3, 0.15], [0.15, 0.2]]``, ``[[0.2, -0.1], [-0.1, 0.3]]`` and ``0.1 I``."""
    from diffusion_jax.data import toy

    return GaussianMixture.create(
        jnp.asarray(toy.TOY_MIXTURE_MEANS, dtype), jnp.asarray(toy.TOY_MIXTURE_COVARIANCES, dtype),
        jnp.asarray(toy.TOY_MIXTURE_WEIGHTS, dtype),
    )
