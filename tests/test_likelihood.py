"""Probability-flow log-likelihood against exact Gaussian-mixture densities."""

import math

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import norm

from diffusion_jax.analytic import GaussianMixture
from diffusion_jax.likelihood import (
    bits_per_dim,
    log_likelihood,
    process_log_likelihood,
)
from diffusion_jax.processes import VP

SIGMA_MIN = 1e-2


def _mixture(dtype=jnp.float64):
    """A 3-d two-component mixture with full, anisotropic covariances."""
    rotation = jnp.linalg.qr(jnp.array([[1.0, 0.3, -0.2], [0.1, 1.0, 0.4], [0.5, -0.3, 1.0]]))[0]
    cov_a = rotation @ jnp.diag(jnp.array([0.6, 0.15, 0.05])) @ rotation.T
    cov_b = jnp.diag(jnp.array([0.2, 0.4, 0.1]))
    return GaussianMixture.create(
        jnp.array([[1.0, -0.5, 0.2], [-0.8, 0.6, -0.3]], dtype),
        covariances=jnp.stack([cov_a, cov_b]).astype(dtype),
        weights=jnp.array([0.3, 0.7], dtype),
    )


_CALLS = [0]


def _count_call():
    _CALLS[0] += 1


@jax.tree_util.register_pytree_node_class
class CountingDenoiser:
    """Wraps a denoiser and counts its executed calls on the host (checks the reported NFE)."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, x, sigma, cond=None):
        jax.debug.callback(_count_call)
        return self.inner(x, sigma, cond)

    def tree_flatten(self):
        return (self.inner,), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children)


def test_exact_divergence_matches_mixture_density_with_exact_prior(x64):
    """Exact prior ``p(.; sigma_max)``: only solver error remains (< 1e-3 nats/dim). The reported
    NFE equals the number of denoiser calls actually executed."""
    mixture = _mixture()
    x = mixture.sample(jax.random.key(0), 6)
    sigma_max = 20.0
    _CALLS[0] = 0
    log_p, nfe = log_likelihood(
        CountingDenoiser(mixture), x, sigma_min=SIGMA_MIN, sigma_max=sigma_max,
        divergence="exact", rtol=1e-7, atol=1e-7,
        prior_log_prob=lambda z: mixture.log_prob(z, sigma_max),
    )
    jax.effects_barrier()
    expected = mixture.log_prob(x, SIGMA_MIN)
    np.testing.assert_allclose(log_p, expected, atol=1e-3 * mixture.dim)
    assert np.max(np.abs(log_p - expected)) < 1e-5  # in practice far below the requirement
    # Under vmap all lanes step until the slowest finishes and a batched callback fires once per
    # batched evaluation, so the host count is the NFE of the slowest example.
    assert _CALLS[0] == int(np.max(nfe))
    assert int(np.min(nfe)) < int(np.max(nfe))  # but the per-example counts do differ
    assert np.all(nfe > 10)


def test_exact_divergence_with_default_gaussian_prior(x64):
    """Default prior ``N(0, sigma_max^2 I)``: the mismatch is O(|mean| / sigma_max) per example;
    sigma_max = 1e3 brings it under 1e-3 nats/dim, and the error shrinks as sigma_max grows."""
    mixture = _mixture()
    x = mixture.sample(jax.random.key(1), 6)
    expected = mixture.log_prob(x, SIGMA_MIN)
    errors = []
    for sigma_max in (1e2, 1e3):
        log_p, _ = log_likelihood(
            mixture, x, sigma_min=SIGMA_MIN, sigma_max=sigma_max, divergence="exact",
            rtol=1e-7, atol=1e-7,
        )
        errors.append(float(jnp.max(jnp.abs(log_p - expected))))
    assert errors[1] < 1e-3 * mixture.dim
    assert errors[1] < 0.3 * errors[0]


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased_within_standard_error(x64, probe):
    mixture = _mixture()
    point = mixture.sample(jax.random.key(2), 1)
    copies = 48  # each copy of the point gets its own probe (one per example per solve)
    x = jnp.repeat(point, copies, axis=0)
    options = dict(sigma_min=SIGMA_MIN, sigma_max=20.0, rtol=1e-6, atol=1e-6,
                   prior_log_prob=lambda z: mixture.log_prob(z, 20.0))
    exact, _ = log_likelihood(mixture, point, divergence="exact", **options)
    estimates, _ = log_likelihood(
        mixture, x, key=jax.random.key(3), divergence="hutchinson", probe=probe, **options
    )
    standard_error = float(jnp.std(estimates, ddof=1)) / math.sqrt(copies)
    assert standard_error > 1e-4  # anisotropic data: the estimator really is random
    assert abs(float(jnp.mean(estimates) - exact[0])) < 4.0 * standard_error


def test_rademacher_has_zero_variance_for_isotropic_gaussian(x64):
    """Isotropic Gaussian data: the PF Jacobian is a multiple of I, so eps^T J eps = tr J for every
    Rademacher probe (Gaussian probes stay random). Two identical components keep the pytree and
    shapes of the other tests, so the compiled solve is reused."""
    mean = jnp.array([0.5, -1.0, 2.0])
    gaussian = GaussianMixture.create(jnp.stack([mean, mean]),
                                      covariances=jnp.stack([0.3 * jnp.eye(3)] * 2))
    x = jnp.repeat(gaussian.sample(jax.random.key(4), 1), 48, axis=0)
    options = dict(sigma_min=SIGMA_MIN, sigma_max=20.0, rtol=1e-6, atol=1e-6,
                   key=jax.random.key(5), prior_log_prob=lambda z: gaussian.log_prob(z, 20.0))
    rademacher, _ = log_likelihood(gaussian, x, probe="rademacher", **options)
    gaussian_probe, _ = log_likelihood(gaussian, x, probe="gaussian", **options)
    assert float(jnp.std(rademacher)) < 1e-9
    assert float(jnp.std(gaussian_probe)) > 1e-2
    np.testing.assert_allclose(rademacher, gaussian.log_prob(x, SIGMA_MIN), atol=1e-5)


def test_gradient_wrt_mixture_means_matches_finite_differences(x64):
    mixture = _mixture()
    x = mixture.sample(jax.random.key(6), 3)

    def total_log_likelihood(means):
        model = GaussianMixture(means, mixture.log_weights, mixture.eigenvalues,
                                mixture.eigenvectors)
        log_p, nfe = log_likelihood(model, x, sigma_min=SIGMA_MIN, sigma_max=20.0,
                                    divergence="exact", solver="tsit5", num_steps=24)
        return jnp.sum(log_p), nfe

    _, nfe = total_log_likelihood(mixture.means)
    assert np.all(nfe == 1 + 24 * 6)  # Tsit5: 7 stages, first same as last

    value_and_grad = jax.jit(jax.value_and_grad(total_log_likelihood, has_aux=True))
    _, gradient = value_and_grad(mixture.means)
    function = jax.jit(lambda means: total_log_likelihood(means)[0])
    step = 1e-5
    finite_differences = np.zeros(mixture.means.shape)
    for index in np.ndindex(mixture.means.shape):
        shift = jnp.zeros_like(mixture.means).at[index].set(step)
        finite_differences[index] = (
            function(mixture.means + shift) - function(mixture.means - shift)
        ) / (2 * step)
    np.testing.assert_allclose(gradient, finite_differences, rtol=1e-6, atol=1e-6)
    assert np.max(np.abs(finite_differences)) > 0.1


def test_jit_vmap_and_process_frame_vp(x64):
    """VP process: ``log p_t(x) = log p^VE(x / alpha; s) - D log alpha`` equals the exact
    process-frame marginal of the mixture at ``t_eps``; jit gives the same answer."""
    process = VP()
    mixture = GaussianMixture.create(jnp.array([[0.2, -0.1, 0.0]]), variances=jnp.array(
        [[0.3, 0.8, 0.5]]))
    t_eps = 0.05  # alpha(t_eps) = 0.986: the Jacobian term matters
    x = mixture.sample(jax.random.key(8), 4)
    run = jax.jit(lambda x: process_log_likelihood(
        mixture, x, process=process, t_eps=t_eps, divergence="exact", rtol=1e-7, atol=1e-7)[0])
    log_p = run(x)
    expected = mixture.marginal(process, t_eps).log_prob(x)
    np.testing.assert_allclose(log_p, expected, atol=1e-3 * mixture.dim)
    # The VE-frame answer without the Jacobian would be off by D log alpha ~ 0.04 nats.
    assert float(-3 * jnp.log(process.alpha(t_eps))) > 0.03


def test_bits_per_dim_importance_weighted_matches_discrete_probability(x64):
    """1-d, 2-bit data: P(k) is the model's mass on bin k. The importance-weighted bound with many
    dequantisation samples converges to -log2 P(k); the uniform (K = 1) bound is not below it."""
    variance, sigma_min = 1.0, 1e-3
    gaussian = GaussianMixture.create(jnp.array([[0.1]]), variances=variance)
    levels = jnp.array([[0], [1], [2], [3]])
    edges = np.linspace(-1.0, 1.0, 5)
    scale = math.sqrt(variance + sigma_min**2)
    mass = norm.cdf(edges[1:], 0.1, scale) - norm.cdf(edges[:-1], 0.1, scale)
    exact_bits = -np.log2(mass)
    options = dict(key=jax.random.key(9), sigma_min=sigma_min, sigma_max=30.0, num_bits=2,
                   divergence="exact", rtol=1e-6, atol=1e-6,
                   prior_log_prob=lambda z: gaussian.log_prob(z, 30.0))
    draws = 512  # both calls solve 4 x 512 one-dimensional ODEs: one compilation
    weighted, nfe = bits_per_dim(gaussian, levels, num_dequantization_samples=draws, **options)
    np.testing.assert_allclose(weighted, exact_bits, atol=0.025)
    uniform, _ = bits_per_dim(gaussian, jnp.repeat(levels, draws, axis=0), **options)
    uniform = uniform.reshape(4, draws)
    standard_error = uniform.std(axis=1, ddof=1) / math.sqrt(draws)
    assert np.all(uniform.mean(axis=1) > exact_bits - 4 * standard_error)
    assert np.all(nfe > draws * 10)  # NFE is summed over the dequantisation samples


def test_bits_per_dim_offset_is_scaling_invariant(x64):
    """The same pixel distribution modelled in [0, 1] or in [-1, 1] gives the same bits/dim:
    the "+8" and "+7" offsets are the two cases of -log2(hi - lo) + num_bits."""
    base = _mixture()
    unit = GaussianMixture.create(0.5 + 0.1 * base.means, covariances=0.01 * base.covariances())
    signed = GaussianMixture.create(2.0 * unit.means - 1.0, covariances=4.0 * unit.covariances())
    pixels = np.random.default_rng(0).integers(90, 170, (6, 3)).astype(np.uint8)
    common = dict(key=jax.random.key(10), divergence="exact", rtol=1e-7, atol=1e-7)
    bpd_unit, _ = bits_per_dim(unit, pixels, data_range=(0.0, 1.0), sigma_min=1e-3,
                               sigma_max=10.0, prior_log_prob=lambda z: unit.log_prob(z, 10.0),
                               **common)
    bpd_signed, _ = bits_per_dim(signed, pixels, data_range=(-1.0, 1.0), sigma_min=2e-3,
                                 sigma_max=20.0,
                                 prior_log_prob=lambda z: signed.log_prob(z, 20.0), **common)
    np.testing.assert_allclose(bpd_unit, bpd_signed, atol=1e-5)
    assert np.all(np.isfinite(bpd_unit) & (bpd_unit > 0.0))


def test_bad_inputs_raise_clear_errors():
    gaussian = GaussianMixture.create(jnp.zeros((1, 2)), variances=1.0)
    x = jnp.zeros((2, 2))
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        log_likelihood(gaussian, x, sigma_min=1.0, sigma_max=0.5, divergence="exact")
    with pytest.raises(ValueError, match="needs a key"):
        log_likelihood(gaussian, x, sigma_min=0.01, sigma_max=5.0)
    with pytest.raises(ValueError, match="unknown divergence"):
        log_likelihood(gaussian, x, sigma_min=0.01, sigma_max=5.0, divergence="trace")
    with pytest.raises(ValueError, match="unknown solver"):
        log_likelihood(gaussian, x, sigma_min=0.01, sigma_max=5.0, divergence="exact",
                       solver="rk45")
    with pytest.raises(ValueError, match="no error estimate"):
        log_likelihood(gaussian, x, sigma_min=0.01, sigma_max=5.0, divergence="exact",
                       solver="euler")
    with pytest.raises(ValueError, match="NaN"):
        log_likelihood(gaussian, x.at[0, 0].set(jnp.nan), sigma_min=0.01, sigma_max=5.0,
                       divergence="exact")
    with pytest.raises(ValueError, match="explicit Runge-Kutta"):
        log_likelihood(gaussian, x, sigma_min=0.01, sigma_max=5.0, divergence="exact",
                       solver=diffrax.Kvaerno5())
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        bits_per_dim(gaussian, jnp.array([[0, 256]]), key=jax.random.key(0), sigma_min=0.01,
                     sigma_max=5.0)
