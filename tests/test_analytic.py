"""The analytic Gaussian-mixture test bed against independent closed forms."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from diffusion_jax import processes as P
from diffusion_jax.analytic import GaussianMixture, gaussian_flow_map
from diffusion_jax.denoisers import probability_flow_derivative


def _full_mixture(dim=3, key=0):
    keys = jax.random.split(jax.random.key(key), 3)
    a = jax.random.normal(keys[0], (2, dim, dim))
    covariances = a @ jnp.swapaxes(a, 1, 2) / dim + 0.05 * jnp.eye(dim)
    means = 2.0 * jax.random.normal(keys[1], (2, dim))
    return GaussianMixture.create(means, covariances, jnp.array([0.3, 0.7])), covariances


def test_log_prob_matches_scipy(x64):
    mixture, covariances = _full_mixture()
    x = jax.random.normal(jax.random.key(5), (7, 3)) * 2
    for sigma in [0.0, 0.4, 3.0]:
        expected = np.log(
            0.3
            * stats.multivariate_normal(
                mixture.means[0], covariances[0] + sigma**2 * np.eye(3)
            ).pdf(x)
            + 0.7
            * stats.multivariate_normal(
                mixture.means[1], covariances[1] + sigma**2 * np.eye(3)
            ).pdf(x)
        )
        np.testing.assert_allclose(mixture.log_prob(x, sigma), expected, rtol=1e-10)


def test_score_is_gradient_of_log_prob_and_tweedie_holds(x64):
    mixture, _ = _full_mixture()
    x = jax.random.normal(jax.random.key(6), (9, 3)) * 2
    sigma = jnp.geomspace(0.01, 10.0, 9)
    autodiff = jax.vmap(jax.grad(lambda xi, si: mixture.log_prob(xi, si)))(x, sigma)
    np.testing.assert_allclose(mixture.score(x, sigma), autodiff, rtol=1e-9, atol=1e-12)
    tweedie = x + sigma[:, None] ** 2 * mixture.score(x, sigma)
    np.testing.assert_allclose(mixture(x, sigma), tweedie, rtol=1e-9, atol=1e-10)


def test_denoiser_is_posterior_mean_by_monte_carlo(x64):
    """E[x0 | x] estimated by self-normalised importance sampling over exact prior samples."""
    mixture, _ = _full_mixture(dim=2, key=3)
    x0 = mixture.sample(jax.random.key(7), 400000)
    x = jnp.array([[0.5, -0.3]])
    sigma = 0.8
    log_w = -0.5 * jnp.sum((x - x0) ** 2, axis=1) / sigma**2
    w = jax.nn.softmax(log_w)
    estimate = w @ x0
    ess = 1.0 / jnp.sum(w**2)
    spread = jnp.sqrt(w @ (x0 - estimate) ** 2 / ess)
    np.testing.assert_array_less(jnp.abs(estimate - mixture(x, sigma)[0]), 5 * spread + 1e-3)


def test_diagonal_and_full_covariances_agree(x64):
    variances = jnp.array([[0.5, 1.5], [0.2, 0.1]])
    means = jnp.array([[0.0, 1.0], [2.0, -1.0]])
    diagonal = GaussianMixture.create(means, variances=variances)
    full = GaussianMixture.create(means, jax.vmap(jnp.diag)(variances))
    x = jax.random.normal(jax.random.key(1), (5, 2))
    for method in ["log_prob", "score", "denoise"]:
        np.testing.assert_allclose(
            getattr(diagonal, method)(x, 0.3), getattr(full, method)(x, 0.3), rtol=1e-10, atol=1e-12
        )
    np.testing.assert_allclose(full.covariances(), jax.vmap(jnp.diag)(variances), atol=1e-12)


def test_samples_have_the_mixture_moments(x64):
    mixture, covariances = _full_mixture()
    samples = mixture.sample(jax.random.key(2), 200000, sigma=0.5)
    weights = jnp.array([0.3, 0.7])
    mean = weights @ mixture.means
    second = sum(
        w * (c + 0.25 * jnp.eye(3) + jnp.outer(m, m))
        for w, c, m in zip(weights, covariances, mixture.means, strict=True)
    )
    np.testing.assert_allclose(jnp.mean(samples, 0), mean, atol=0.02)
    np.testing.assert_allclose(jnp.cov(samples.T), second - jnp.outer(mean, mean), atol=0.05)


@pytest.mark.parametrize(
    "process", [P.VP(), P.RectifiedFlow(), P.TrigFlow()], ids=["vp", "rf", "trig"]
)
def test_process_marginal_is_change_of_variables_of_ve_marginal(x64, process):
    mixture, _ = _full_mixture()
    t = 0.6 * float(process.t_max)
    alpha = process.alpha(t)
    x = jax.random.normal(jax.random.key(3), (4, 3))
    expected = mixture.log_prob(x / alpha, process.ve_sigma(t)) - 3 * jnp.log(alpha)
    np.testing.assert_allclose(mixture.marginal(process, t).log_prob(x), expected, rtol=1e-10)


def test_gaussian_flow_map_solves_the_probability_flow_ode(x64):
    gaussian, _ = _full_mixture(key=9)
    gaussian = GaussianMixture.create(gaussian.means[:1], gaussian.covariances()[:1])
    x_start = gaussian.sample(jax.random.key(4), 3, sigma=20.0)

    def field(sigma, x, denoiser):
        return probability_flow_derivative(denoiser, x, sigma)

    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(field),
        diffrax.Dopri8(),
        20.0,
        0.05,
        -0.1,
        x_start,
        args=gaussian,
        stepsize_controller=diffrax.PIDController(rtol=1e-11, atol=1e-12),
        max_steps=10000,
    )
    np.testing.assert_allclose(
        solution.ys[-1], gaussian_flow_map(gaussian, x_start, 20.0, 0.05), rtol=1e-8, atol=1e-9
    )
    # The map pushes N(mu, Sigma + s0^2) forward to N(mu, Sigma + s1^2): check the covariance.
    many = gaussian.sample(jax.random.key(5), 100000, sigma=20.0)
    pushed = gaussian_flow_map(gaussian, many, 20.0, 0.05)
    np.testing.assert_allclose(
        jnp.cov(pushed.T), gaussian.covariances()[0] + 0.0025 * jnp.eye(3), atol=0.03
    )


def test_bad_input_errors():
    with pytest.raises(ValueError, match="means"):
        GaussianMixture.create(jnp.zeros(3), variances=1.0)
    with pytest.raises(ValueError, match="exactly one"):
        GaussianMixture.create(jnp.zeros((1, 3)))
    with pytest.raises(ValueError, match="covariances"):
        GaussianMixture.create(jnp.zeros((1, 3)), jnp.eye(2)[None])
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture.create(jnp.zeros((2, 3)), variances=1.0, weights=jnp.ones(3))
    mixture = GaussianMixture.create(jnp.zeros((2, 3)), variances=1.0)
    with pytest.raises(ValueError, match="last axis"):
        mixture(jnp.zeros((4, 2)), 1.0)
    with pytest.raises(ValueError, match="broadcast"):
        mixture(jnp.zeros((4, 3)), jnp.ones(3))
    with pytest.raises(ValueError, match="non-negative"):
        mixture(jnp.zeros((4, 3)), -0.5)
    with pytest.raises(ValueError, match="single Gaussian"):
        gaussian_flow_map(mixture, jnp.zeros((1, 3)), 1.0, 0.5)
