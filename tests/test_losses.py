"""Noise-level distributions, loss weightings and the objectives."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

from diffusion_jax import processes as P
from diffusion_jax import schedules as S
from diffusion_jax.analytic import GaussianMixture
from diffusion_jax.denoisers import PARAMETERISATIONS, ProcessModel, convert
from diffusion_jax.losses import (
    denoising_loss,
    elbo_constant,
    flow_matching_loss,
    uncertainty_weighted,
)

WEIGHTINGS = [
    S.X0MSE(),
    S.EpsilonMSE(),
    S.VMSE(),
    S.FlowMatchingWeighting(),
    S.EDMWeighting(0.5),
    S.MinSNR(5.0),
    S.SoftMinSNR(4.0),
    S.P2(1.0, 0.5),
    S.LikelihoodWeighting(),
]


def _mixture():
    return GaussianMixture.create(
        jnp.array([[1.0, -1.0], [-1.0, 0.5]]), variances=jnp.array([[0.1, 0.2], [0.3, 0.05]])
    )


# -- distributions ------------------------------------------------------------------------------


def test_stratifications():
    key = jax.random.key(0)
    u = S.uniform_draws(key, 8, "stratified")
    np.testing.assert_array_equal(jnp.floor(u * 8), jnp.arange(8))
    grid = jnp.sort(S.uniform_draws(key, 8, "shifted_grid"))
    np.testing.assert_allclose(jnp.diff(grid), 1 / 8, atol=1e-6)
    with pytest.raises(ValueError, match="stratification"):
        S.uniform_draws(key, 8, "sobol")


def test_lognormal_sigma_statistics(x64):
    dist = S.LogNormalSigma(-1.2, 1.2)
    t = dist.sample(jax.random.key(1), 100000, P.EDM(), dtype=jnp.float64)
    np.testing.assert_allclose([jnp.mean(jnp.log(t)), jnp.std(jnp.log(t))], [-1.2, 1.2], atol=0.015)
    vp_t = dist.sample(jax.random.key(1), 1000, P.VP(), dtype=jnp.float64)
    np.testing.assert_allclose(P.VP().ve_sigma(vp_t), t[:1000], rtol=1e-9)


def test_uniform_and_logit_normal_ranges(x64):
    t = S.UniformTime(1e-5).sample(jax.random.key(2), 10000, P.TrigFlow(), dtype=jnp.float64)
    assert float(t.min()) >= 1e-5 and float(t.max()) <= math.pi / 2
    np.testing.assert_allclose(jnp.mean(t), (math.pi / 2 + 1e-5) / 2, rtol=0.02)
    logit = S.LogitNormalTime(0.0, 1.0).sample(
        jax.random.key(3), 100000, P.RectifiedFlow(), dtype=jnp.float64
    )
    z = jnp.log(logit / (1 - logit))
    np.testing.assert_allclose([jnp.mean(z), jnp.std(z)], [0.0, 1.0], atol=0.015)


def test_karras_levels_published_values(x64):
    expected = [
        80,
        57.586,
        40.786,
        28.375,
        19.353,
        12.910,
        8.401,
        5.315,
        3.257,
        1.923,
        1.088,
        0.585,
        0.296,
        0.140,
        0.060,
        0.023,
        0.0075,
        0.002,
    ]
    np.testing.assert_allclose(
        S.karras_levels(18, 0.002, 80.0, 7.0), expected, rtol=2e-5, atol=5e-4
    )  # table rounded to 3 decimals
    t = S.KarrasLevels(18).sample(jax.random.key(4), 5000, P.EDM(), dtype=jnp.float64)
    assert set(np.round(np.asarray(t), 6)) <= set(
        np.round(np.asarray(S.karras_levels(18, 0.002, 80.0, 7.0)), 6)
    )
    assert len(set(np.round(np.asarray(t), 6))) == 18


@pytest.mark.parametrize(
    "process", [P.VP(), P.SubVP(), P.RectifiedFlow()], ids=["vp", "subvp", "rf"]
)
def test_log_uniform_sigma_density_is_normalised_and_proportional_to_g2_over_sigma2(x64, process):
    dist = S.LogUniformSigma(0.01, 50.0)
    t_lo, t_hi = float(process.t_of_ve_sigma(0.01)), float(process.t_of_ve_sigma(50.0))
    total, _ = integrate.quad(
        lambda t: float(jnp.exp(dist.log_density(jnp.array([t]), process))[0]),
        t_lo,
        t_hi,
        limit=200,
    )
    np.testing.assert_allclose(total, 1.0, rtol=1e-6)
    t = jnp.linspace(t_lo, t_hi, 7)
    ratio = jnp.exp(dist.log_density(t, process)) / (
        process.diffusion_squared(t) / process.sigma(t) ** 2
    )
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-8)


# -- weightings ---------------------------------------------------------------------------------


def test_weighting_published_forms(x64):
    vp = P.VP()
    t = jnp.linspace(0.05, 0.95, 5)
    snr = vp.alpha(t) ** 2 / vp.sigma(t) ** 2
    np.testing.assert_allclose(S.MinSNR(5.0).x0_weight(vp, t), jnp.minimum(snr, 5.0), rtol=1e-10)
    np.testing.assert_allclose(S.EpsilonMSE().x0_weight(vp, t), snr, rtol=1e-10)
    np.testing.assert_allclose(S.VMSE().x0_weight(vp, t), snr + 1.0, rtol=1e-10)  # VP: 1/sigma^2
    np.testing.assert_allclose(
        S.LikelihoodWeighting().weight_for("epsilon", vp, t),
        vp.beta(t) / vp.sigma(t) ** 2,
        rtol=1e-10,
    )
    np.testing.assert_allclose(
        S.P2(1.0, 1.0).weight_for("epsilon", vp, t), 1 / (1 + snr), rtol=1e-10
    )
    sigma_data = 0.5
    soft = S.SoftMinSNR(1 / sigma_data**2).x0_weight(P.EDM(), jnp.array([0.1, 1.0, 10.0]))
    np.testing.assert_allclose(
        soft, 1 / (jnp.array([0.1, 1.0, 10.0]) ** 2 + sigma_data**2), rtol=1e-10
    )
    edm = S.EDMWeighting(sigma_data).x0_weight(P.EDM(), jnp.array([2.0]))
    np.testing.assert_allclose(edm, (4 + 0.25) / (4 * 0.25), rtol=1e-12)
    rf = P.RectifiedFlow()
    np.testing.assert_allclose(
        S.FlowMatchingWeighting().x0_weight(rf, jnp.array([0.25])), 16.0, rtol=1e-10
    )


@pytest.mark.parametrize(
    "process", [P.VP(), P.VE(), P.RectifiedFlow(), P.Cosine()], ids=["vp", "ve", "rf", "cos"]
)
@pytest.mark.parametrize("weighting", WEIGHTINGS, ids=lambda w: type(w).__name__)
def test_loss_does_not_depend_on_the_models_parameterisation(x64, process, weighting):
    """One imperfect denoiser, expressed in each parameterisation, gives the same weighted loss."""
    mixture = _mixture()
    denoiser = GaussianMixture.create(mixture.means * 0.9, variances=mixture.eigenvalues * 1.2)
    x0 = mixture.sample(jax.random.key(0), 16)
    t_dist = S.UniformTime(0.05, 0.9 * float(process.t_max))
    base = ProcessModel(denoiser, process)
    losses = []
    for name in PARAMETERISATIONS:
        model = lambda x_t, t, cond, name=name: convert(base(x_t, t), "x0", name, x_t, t, process)
        losses.append(
            denoising_loss(
                model,
                x0,
                jax.random.key(1),
                process=process,
                prediction=name,
                t_distribution=t_dist,
                weighting=weighting,
            )
        )
    for loss in losses[1:]:
        np.testing.assert_allclose(loss, losses[0], rtol=1e-7)


@pytest.mark.parametrize(
    "process,prediction,weighting",
    [
        (P.EDM(), "x0", S.EDMWeighting(0.5)),
        (P.VP(), "epsilon", S.EpsilonMSE()),
        (P.Cosine(), "v", S.VMSE()),
        (P.RectifiedFlow(), "velocity", S.FlowMatchingWeighting()),
    ],
    ids=["edm", "vp-eps", "cos-v", "rf-velocity"],
)
def test_exact_denoiser_is_a_stationary_point_of_the_dsm_loss(x64, process, prediction, weighting):
    """d/dtheta E[loss] = 0 at theta = 1 for D_theta = theta * D* (Vincent 2011), within MC error."""
    mixture = _mixture()
    n = 20000
    x0 = mixture.sample(jax.random.key(0), n)
    t_dist = S.UniformTime(0.02, 0.95 * float(process.t_max))

    def per_example_grad(theta, shift):
        def loss(theta):
            base = ProcessModel(mixture, process)
            model = lambda x_t, t, cond: convert(
                theta * base(x_t, t) + shift, "x0", prediction, x_t, t, process
            )
            return denoising_loss(
                model,
                x0,
                jax.random.key(3),
                process=process,
                prediction=prediction,
                t_distribution=t_dist,
                weighting=weighting,
            )

        return jax.jacfwd(loss)(theta)

    grads = per_example_grad(1.0, 0.0)
    standard_error = jnp.std(grads) / math.sqrt(n)
    assert abs(float(jnp.mean(grads))) < 4 * float(standard_error)
    perturbed = per_example_grad(1.0, 0.5)  # a biased denoiser is not stationary
    assert abs(float(jnp.mean(perturbed))) > 6 * float(jnp.std(perturbed) / math.sqrt(n))


def test_flow_matching_loss_matches_the_closed_form_marginal_velocity(x64):
    """Independent coupling, x0 ~ N(m, s^2), noise ~ N(0, 1): in the papers' time tau = 1 - t the
    marginal field is m + (tau s^2 - (1 - tau))/((1 - tau)^2 + tau^2 s^2) (x - tau m) (REFERENCES
    4.2); ours is its negative. It minimises the conditional FM loss."""
    m, s = 1.5, 0.4
    gaussian = GaussianMixture.create(jnp.array([[m]]), variances=s**2)
    process = P.RectifiedFlow()

    def exact_velocity(x_t, t, cond=None):
        tau = 1.0 - t[:, None]
        field = m + (tau * s**2 - (1 - tau)) / ((1 - tau) ** 2 + tau**2 * s**2) * (x_t - tau * m)
        return -field

    base = ProcessModel(gaussian, process)
    x_t = jnp.array([[0.3], [-1.0], [2.0]])
    t = jnp.array([0.7, 0.2, 0.5])
    np.testing.assert_allclose(
        convert(base(x_t, t), "x0", "velocity", x_t, t, process), exact_velocity(x_t, t), rtol=1e-10
    )
    x0 = gaussian.sample(jax.random.key(0), 20000)
    t_dist = S.UniformTime(0.01, 0.99)

    def mean_grad(shift):
        model = lambda x_t, t, cond, c: exact_velocity(x_t, t) * c + shift
        f = lambda c: flow_matching_loss(
            jax.tree_util.Partial(model, c=c), x0, jax.random.key(5), t_distribution=t_dist
        )
        grads = jax.jacfwd(f)(1.0)
        return float(jnp.mean(grads)), float(jnp.std(grads) / math.sqrt(x0.shape[0]))

    mean, error = mean_grad(0.0)
    assert abs(mean) < 4 * error
    mean, error = mean_grad(0.5)
    assert abs(mean) > 10 * error


@pytest.mark.parametrize("process", [P.VP(), P.SubVP()], ids=["vp", "subvp"])
def test_likelihood_weighted_loss_gives_the_elbo_with_its_constant(x64, process):
    """With the exact score the bound's mean over data is H(p_0) + KL(p_T || prior) (Song et al.
    2021b, Thm. 1: the score-matching gap vanishes). Importance sampling t ~ LogUniformSigma."""
    v = 0.5
    gaussian = GaussianMixture.create(jnp.zeros((1, 1)), variances=v)
    t_min = 1e-5
    n = 200000
    keys = jax.random.split(jax.random.key(0), 3)
    x0 = gaussian.sample(keys[0], n)
    dist = S.LogUniformSigma(process.ve_sigma(t_min), process.ve_sigma(process.t_max))
    loss, t = denoising_loss(
        ProcessModel(gaussian, process),
        x0,
        keys[1],
        process=process,
        prediction="x0",
        t_distribution=dist,
        weighting=S.LikelihoodWeighting(),
        reduce="sum",
        stratification="stratified",
        return_t=True,
    )
    bound = 0.5 * loss / jnp.exp(dist.log_density(t, process)) + elbo_constant(
        process, x0, keys[2], t_min=t_min
    )
    alpha_T, sigma_T = process.alpha(process.t_max), process.sigma(process.t_max)
    var_T = alpha_T**2 * v + sigma_T**2
    kl = 0.5 * (var_T / sigma_T**2 - 1 - math.log(var_T / sigma_T**2))
    entropy = 0.5 * math.log(2 * math.pi * math.e * v)
    standard_error = float(jnp.std(bound)) / math.sqrt(n)
    assert standard_error < 0.08
    assert abs(float(jnp.mean(bound)) - (entropy + kl)) < 4 * standard_error


def test_uncertainty_weighting_learns_the_log_of_the_expected_loss(x64):
    """EDM2 eq. 21: d/du mean(L e^-u + u) = 0 at u = log mean(L), and it is a minimum."""
    losses = jnp.exp(jax.random.normal(jax.random.key(0), (1000,)))
    objective = lambda u: jnp.mean(uncertainty_weighted(losses, u))
    optimum = jnp.log(jnp.mean(losses))
    np.testing.assert_allclose(jax.grad(objective)(optimum), 0.0, atol=1e-12)
    assert float(objective(optimum)) < min(
        float(objective(optimum - 0.1)), float(objective(optimum + 0.1))
    )


def test_bad_input_errors():
    mixture = _mixture()
    x0 = jnp.zeros((4, 2))
    model = ProcessModel(mixture, P.VP())
    kwargs = dict(process=P.VP(), t_distribution=S.UniformTime(), weighting=S.EpsilonMSE())
    with pytest.raises(ValueError, match="unknown parameterisation"):
        denoising_loss(model, x0, jax.random.key(0), prediction="eps", **kwargs)
    with pytest.raises(ValueError, match="reduce"):
        denoising_loss(model, x0, jax.random.key(0), prediction="x0", reduce="max", **kwargs)
    with pytest.raises(ValueError, match="noise shape"):
        denoising_loss(
            model, x0, jax.random.key(0), prediction="x0", noise=jnp.zeros((4, 3)), **kwargs
        )
    with pytest.raises(ValueError, match="batch axis"):
        denoising_loss(model, jnp.zeros(3), jax.random.key(0), prediction="x0", **kwargs)
    with pytest.raises(ValueError, match="model output shape"):
        denoising_loss(lambda x, t, c: x[:, :1], x0, jax.random.key(0), prediction="x0", **kwargs)
