"""Consistency models and CTM: exact parameterisations, curricula values, and the CD / CT / iCT /
ECT / CTM objectives' stationarity at the exact flow map of Gaussian data (x64)."""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.analytic import GaussianMixture
from diffusion_jax.flowmaps import base, consistency, ctm, curricula, exact, parameterisations
from diffusion_jax.pytrees import frozen_pytree

MEAN, VARIANCE = np.array([0.5, -0.2]), 0.3  # numpy: float64 under x64
SIGMA_DATA, SIGMA_MIN = 0.5, 0.002


def gaussian():
    return GaussianMixture.create(MEAN[None], variances=jnp.full((1, 2), VARIANCE))


def exact_map():
    return exact.ExactGaussianFlowMap(gaussian())


@frozen_pytree
class ToyFlowMap:
    """``x_to = mean + (x - mean) ratio(variance)``: the exact map at the true parameters."""

    mean: Any
    log_variance: Any

    def __call__(self, x, sigma, sigma_to, cond=None):
        sigma, sigma_to = base.per_example(sigma, x), base.per_example(sigma_to, x)
        ratio = exact.gaussian_ratio(jnp.exp(self.log_variance), sigma, sigma_to)
        return self.mean + (x - self.mean) * base.expand(ratio, x)


TRUTH = dict(mean=MEAN, log_variance=np.log(VARIANCE))
PERTURBED = dict(mean=MEAN + 0.1, log_variance=np.log(VARIANCE) + 0.2)


def data(batch):
    return MEAN + jnp.sqrt(VARIANCE) * jax.random.normal(jax.random.key(1), (batch, 2))


def gradient_z_scores(loss, params, batch=20000):
    """Per-parameter ``mean / standard error`` of the per-example gradients of ``loss(student,
    x0, key, target=sg(student))`` (forward mode: one JVP per parameter), and the mean."""
    x0, key = data(batch), jax.random.key(2)

    def per_example(params):
        student = ToyFlowMap(**params)
        return loss(student, x0, key, target=jax.lax.stop_gradient(student))

    jacobian = jax.jacfwd(per_example)(params)
    leaves = [g.reshape(batch, -1) for g in jax.tree_util.tree_leaves(jacobian)]
    grads = jnp.concatenate(leaves, axis=1)
    mean, error = jnp.mean(grads, 0), jnp.std(grads, 0) / np.sqrt(batch)
    return np.asarray(mean / error), np.asarray(mean)


# -- parameterisations -------------------------------------------------------------------------


def random_network(x, c_noise, cond=None, c_noise_to=None):
    extra = 0.0 if c_noise_to is None else jnp.cos(3.0 * c_noise_to)[:, None]
    return jnp.tanh(x @ jnp.array([[1.3, -0.7], [0.4, 2.0]]) + c_noise[:, None] + extra)


def exact_consistency_network(x_in, c_noise, cond=None):
    """The ``F`` with which the consistency model is the exact map to ``sigma_min``."""
    sigma = jnp.exp(4.0 * c_noise)
    c_skip, c_out, c_in, _ = parameterisations.consistency_coefficients(
        sigma, sigma_data=SIGMA_DATA, sigma_min=SIGMA_MIN
    )
    x = x_in / c_in[:, None]
    return (exact_map()(x, sigma, SIGMA_MIN) - c_skip[:, None] * x) / c_out[:, None]


def test_consistency_boundary_is_exact_for_any_network(x64):
    model = parameterisations.ConsistencyModel(random_network, SIGMA_DATA, SIGMA_MIN)
    x = data(5) * 4.0
    np.testing.assert_array_equal(model.consistency(x, SIGMA_MIN), x)
    c_skip, c_out, _, _ = parameterisations.consistency_coefficients(jnp.asarray(SIGMA_MIN))
    assert float(c_skip) == 1.0 and float(c_out) == 0.0
    np.testing.assert_array_equal(model(x, 3.0, 3.0), x)  # the jump to itself


def test_consistency_model_with_exact_network_is_the_exact_map(x64):
    model = parameterisations.ConsistencyModel(exact_consistency_network, SIGMA_DATA, SIGMA_MIN)
    x, sigma = data(6) * 5.0, jnp.array([0.01, 0.1, 0.5, 2.0, 10.0, 80.0])
    reference = exact_map()(x, sigma, SIGMA_MIN)
    np.testing.assert_allclose(model.consistency(x, sigma), reference, rtol=1e-12)
    np.testing.assert_allclose(model(x, sigma, 0.0), reference, rtol=1e-12)  # below sigma_min


def exact_ctm_network(x_in, c_noise, cond=None, c_noise_to=None):
    """CTM's inner ``F`` for which ``G`` is the exact map: ``g = (G - (s/t) x) / (1 - s/t)``, and
    the exact denoiser at ``s = t``."""
    t = jnp.exp(4.0 * c_noise)
    s = jnp.exp(4.0 * c_noise_to) - SIGMA_MIN
    c_skip, c_out, c_in, _ = parameterisations.consistency_coefficients(
        t, sigma_data=SIGMA_DATA, sigma_min=0.0
    )
    x = x_in / c_in[:, None]
    same = jnp.abs(t - s) < 1e-9 * t
    ratio = jnp.where(same, 0.0, s / t)[:, None]
    inner = (exact_map()(x, t, jnp.where(same, 0.0, s)) - ratio * x) / (1.0 - ratio)
    inner = jnp.where(same[:, None], gaussian()(x, t), inner)
    return (inner - c_skip[:, None] * x) / c_out[:, None]


def test_ctm_with_exact_network_is_the_exact_map_anytime_to_anytime(x64):
    model = parameterisations.CTMFlowMap(exact_ctm_network, SIGMA_DATA, SIGMA_MIN)
    x = data(6) * 5.0
    sigma = jnp.array([0.05, 0.3, 1.0, 4.0, 20.0, 80.0])
    sigma_to = jnp.array([0.0, 0.1, 0.9, 0.002, 5.0, 0.0])
    np.testing.assert_allclose(model(x, sigma, sigma_to), exact_map()(x, sigma, sigma_to),
                               rtol=1e-10)
    np.testing.assert_allclose(model.denoiser(x, sigma), gaussian()(x, sigma), rtol=1e-10)
    any_net = parameterisations.CTMFlowMap(random_network, SIGMA_DATA, SIGMA_MIN)
    np.testing.assert_array_equal(any_net(x, sigma, sigma), x)  # G(x, t, t) = x
    implied = base.denoiser_from_flow_map(any_net)(x, sigma)
    np.testing.assert_allclose(implied, any_net.inner(x, sigma, sigma), rtol=1e-9)


# -- curricula ---------------------------------------------------------------------------------


def test_ct_curriculum_values():
    total = 800_000
    assert int(curricula.ct_num_levels(0, total_steps=total)) == 2
    assert int(curricula.ct_num_levels(total, total_steps=total)) == 151
    levels = np.array([int(curricula.ct_num_levels(k, total_steps=total))
                       for k in range(0, total + 1, 40_000)])
    assert np.all(np.diff(levels) >= 0)
    # released code (our choice): mu(0) = exp(s0 ln mu0 / (N(0) - 1)) = 0.9^2; paper: 0.9
    np.testing.assert_allclose(float(curricula.ct_ema_decay(0, total_steps=total)), 0.81, 1e-6)
    np.testing.assert_allclose(
        float(curricula.ct_ema_decay(total, total_steps=total)), 0.9 ** (2 / 150), rtol=1e-6
    )


def test_ict_curriculum_stages():
    total = 400_000
    per_stage = curricula.ict_steps_per_stage(total)
    assert per_stage == 50_000
    stages = [int(curricula.ict_num_levels(k * per_stage, total_steps=total)) for k in range(9)]
    assert stages == [11, 21, 41, 81, 161, 321, 641, 1281, 1281]
    traced = jax.jit(lambda k: curricula.ict_num_levels(k, total_steps=total))(3 * per_stage - 1)
    assert int(traced) == 41


def test_ect_mapping_halves_the_gap_every_stage(x64):
    t = jnp.array([0.01, 0.5, 2.0, 80.0])
    for stage in range(4):
        r = curricula.ect_r(t, stage)
        expected_gap = t * 2.0 ** -(stage + 1) * (1 + 8 * jax.nn.sigmoid(-t))
        np.testing.assert_allclose(r, jnp.maximum(t - expected_gap, 0.0), rtol=1e-12)
    assert float(curricula.ect_r(jnp.array(0.01), 0)) == 0.0  # small t: the data itself
    assert int(curricula.ect_stage(25_000, steps_per_stage=10_000)) == 2


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: curricula.ct_num_levels(0, total_steps=100, s0=1), "never reaches two levels"),
        (lambda: curricula.ict_num_levels(0, total_steps=100, s0=20, s1=10), "never reaches"),
        (lambda: curricula.ict_num_levels(0, total_steps=5), "shorter than the 8 stages"),
        (lambda: curricula.ct_num_levels(-1, total_steps=100), "step must be >= 0"),
        (lambda: curricula.ct_ema_decay(0, total_steps=10, mu0=1.5), "mu0"),
        (lambda: consistency.consistency_training_loss(
            ToyFlowMap(**TRUTH), data(4), jax.random.key(0), target=ToyFlowMap(**TRUTH),
            num_levels=1), "never reaches two levels"),
        (lambda: consistency.ict_loss(
            ToyFlowMap(**TRUTH), data(4), jax.random.key(0), target=ToyFlowMap(**TRUTH),
            num_levels=1281, max_levels=641), "exceeds max_levels"),
    ],
)
def test_curricula_reject_bad_arguments(call, message):
    with pytest.raises(ValueError, match=message) as error:
        call()
    assert "\n" not in str(error.value)


# -- distances and iCT pair sampling -----------------------------------------------------------


def test_pseudo_huber_is_on_the_whole_vector():
    a, b = jnp.array([[3.0, 4.0]]), jnp.zeros((1, 2))
    np.testing.assert_allclose(consistency.pseudo_huber(a, b, 1.0), [np.sqrt(26.0) - 1.0])
    np.testing.assert_allclose(consistency.pseudo_huber(a, b, 0.0), [5.0])
    assert abs(consistency.ict_huber_constant((32, 32, 3)) - 0.0299) < 1e-4
    grad = jax.grad(lambda a: consistency.pseudo_huber(a, a, 0.0)[0])(a)
    assert np.all(np.isfinite(grad))


def test_ict_pair_probabilities_are_the_lognormal_masses(x64):
    logits = consistency.ict_level_logits(11, 1281)
    probabilities = np.asarray(jax.nn.softmax(logits))
    assert np.all(probabilities[10:] == 0.0) and abs(probabilities.sum() - 1.0) < 1e-12
    from scipy.stats import norm

    levels = np.asarray(curricula.karras_level(jnp.arange(11), 11))
    cdf = norm.cdf((np.log(levels) + 1.1) / 2.0)
    expected = (cdf[:-1] - cdf[1:]) / (cdf[0] - cdf[-1])
    np.testing.assert_allclose(probabilities[:10], expected, rtol=1e-10)


# -- objectives at the exact map ---------------------------------------------------------------


def test_cd_with_an_exact_teacher_is_exactly_stationary(x64):
    def loss(student, x0, key, target):
        return consistency.consistency_distillation_loss(
            student, x0, key, target=target, teacher=exact_map()
        )

    _, mean = gradient_z_scores(loss, TRUTH, batch=2000)
    assert np.max(np.abs(mean)) < 1e-14
    z, _ = gradient_z_scores(loss, PERTURBED, batch=2000)
    assert np.max(np.abs(z)) > 10.0


@pytest.mark.parametrize(
    "name, loss",
    [
        ("ct", lambda s, x0, key, target: consistency.consistency_training_loss(
            s, x0, key, target=target, num_levels=151)),
        ("ict", lambda s, x0, key, target: consistency.ict_loss(
            s, x0, key, target=target, num_levels=1281)),
        ("ect", lambda s, x0, key, target: consistency.ect_loss(
            s, x0, key, target=target, stage=10)),
        ("ctm", lambda s, x0, key, target: ctm.ctm_loss(
            s, x0, key, target=target, teacher=exact_map(), num_levels=40)),
    ],
)
def test_objectives_are_stationary_at_the_exact_map(x64, name, loss):
    """Zero gradient within Monte Carlo error (|mean / standard error| < 4) at the truth, and a
    clearly nonzero one (> 8 standard errors) at perturbed parameters, on the same draws."""
    z_truth, _ = gradient_z_scores(loss, TRUTH)
    z_perturbed, _ = gradient_z_scores(loss, PERTURBED)
    assert np.max(np.abs(z_truth)) < 4.0, (name, z_truth)
    assert np.max(np.abs(z_perturbed)) > 8.0, (name, z_perturbed)


def test_ctm_consistency_term_is_zero_with_an_exact_teacher(x64):
    x0 = data(64)
    losses = ctm.ctm_loss(
        exact_map(), x0, jax.random.key(0), target=exact_map(), teacher=exact_map(),
        dsm_weight=0.0,
    )
    assert float(jnp.max(jnp.abs(losses))) < 1e-24


@pytest.mark.parametrize("sampler, factor", [("euler", 10.0), ("heun", 30.0),
                                             ("dpm_solver_2", 30.0)])
def test_cd_with_a_solver_teacher_is_stationary_as_the_grid_refines(x64, sampler, factor):
    """With a one-step solver teacher the stationary point moves by the step's local error: the
    gradient at the exact map falls, from 10 to 40 levels (x64), 22x for Euler (local error
    O(h^2)), 116x for Heun and 85x for DPM-Solver-2 (O(h^3)). DPM-Solver++(2M) with one step is
    DDIM = Euler (identical numbers)."""

    def mean_gradient(num_levels):
        def loss(student, x0, key, target):
            teacher = base.TeacherFlowMap(gaussian(), sampler=sampler, num_steps=1)
            return consistency.consistency_distillation_loss(
                student, x0, key, target=target, teacher=teacher, num_levels=num_levels
            )

        return np.max(np.abs(gradient_z_scores(loss, TRUTH, batch=4000)[1]))

    coarse, fine = mean_gradient(10), mean_gradient(40)
    assert fine < coarse / factor, (coarse, fine)
