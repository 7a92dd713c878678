"""Paths and objectives: the conditional targets regress onto the closed-form marginal field
(with and without Brownian-bridge noise), the SF2M score target onto the exact score, the exact
field minimises the CFM loss, the SDE with the exact drift and score lands on the data, and the
CFM loss agrees with the core's flow-matching loss."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import losses
from diffusion_jax.flows import gaussian, ode, paths
from diffusion_jax.processes import RectifiedFlow, TrigFlow

M_D, S_D, M_S, S_S = 1.5, 0.4, -0.5, 1.2


def _pairs(key, n):
    kd, ks, kz = jax.random.split(key, 3)
    x_data = M_D + S_D * jax.random.normal(kd, (n, 1), jnp.float64)
    x_source = M_S + S_S * jax.random.normal(ks, (n, 1), jnp.float64)
    return x_data, x_source, jax.random.normal(kz, (n, 1), jnp.float64)


@pytest.mark.parametrize("schedule", [None, paths.BrownianBridgeNoise(0.5),
                                      paths.QuadraticNoise(0.8)], ids=["cfm", "sb", "quadratic"])
@pytest.mark.parametrize("process", [RectifiedFlow(), TrigFlow()], ids=["rf", "trig"])
def test_conditional_targets_regress_onto_the_closed_form_field(schedule, process, x64):
    if schedule is not None:
        schedule = dataclasses.replace(schedule, t_max=process.t_max)
    x_data, x_source, z = _pairs(jax.random.key(0), 200_000)
    field = gaussian.IndependentGaussianVelocity(M_D, S_D, M_S, S_S, process, schedule)
    for fraction in (0.3, 0.7):
        t = fraction * process.t_max
        x_t, u_t = paths.interpolate(x_data, x_source, t, process=process, noise_schedule=schedule,
                                     z=z)
        slope, intercept = np.polyfit(np.asarray(x_t[:, 0]), np.asarray(u_t[:, 0]), 1)
        grid = jnp.array([[0.0], [1.0]])
        exact = field(grid, t)
        assert slope == pytest.approx(float(exact[1, 0] - exact[0, 0]), abs=0.01)
        assert intercept == pytest.approx(float(exact[0, 0]), abs=0.01)
        if schedule is not None:  # SF2M score target -z / gamma regresses onto the exact score
            target = -z / schedule.gamma(t)
            s_slope, s_int = np.polyfit(np.asarray(x_t[:, 0]), np.asarray(target[:, 0]), 1)
            score = field.marginal_score(grid, t)
            assert s_slope == pytest.approx(float(score[1, 0] - score[0, 0]), rel=0.02)
            assert s_int == pytest.approx(float(score[0, 0]), abs=0.02)


def test_noisy_path_field_still_maps_source_to_data(x64):
    """The Brownian-bridge path has the same endpoints, so its marginal field's flow is again
    the monotone map of N(m_s, s_s^2) onto N(m_d, s_d^2)."""
    field = gaussian.IndependentGaussianVelocity(M_D, S_D, M_S, S_S,
                                                 noise_schedule=paths.BrownianBridgeNoise(0.5))
    ends = ode.solve_adaptive(field, jnp.array([[M_S], [M_S + S_S]]), rtol=1e-9, atol=1e-9)[0]
    np.testing.assert_allclose(ends[:, 0], [M_D, M_D + S_D], atol=1e-6)


def test_exact_field_minimises_the_loss_and_score_term(x64):
    schedule = paths.BrownianBridgeNoise(0.5)
    field = gaussian.IndependentGaussianVelocity(M_D, S_D, M_S, S_S, noise_schedule=schedule)
    x_data, x_source, _ = _pairs(jax.random.key(1), 100_000)
    key = jax.random.key(2)

    def loss(velocity, score=None):
        return float(jnp.mean(paths.interpolant_loss(
            velocity, x_data, x_source, key, noise_schedule=schedule, score_model=score,
            t_min=1e-3)))

    best = loss(field)
    for wrong in (gaussian.IndependentGaussianVelocity(M_D + 0.2, S_D, M_S, S_S,
                                                       noise_schedule=schedule),
                  gaussian.IndependentGaussianVelocity(M_D, S_D, M_S, S_S)):
        assert loss(wrong) > best + 1e-3
    with_score = loss(field, field.marginal_score)
    assert with_score > best
    assert with_score < loss(field, lambda x, t, c=None: 1.1 * field.marginal_score(x, t))


def test_sde_with_exact_drift_and_score_lands_on_the_data(x64):
    field = gaussian.IndependentGaussianVelocity(M_D, S_D, M_S, S_S)
    source = M_S + S_S * jax.random.normal(jax.random.key(3), (20_000, 1), jnp.float64)
    x = paths.sde_sample(field, field.marginal_score, source, ode.time_grid(400, dtype=jnp.float64),
                         diffusion=0.8, key=jax.random.key(4))
    assert float(jnp.mean(x)) == pytest.approx(M_D, abs=0.02)
    assert float(jnp.std(x)) == pytest.approx(S_D, abs=0.02)
    # the wrong sign of the score term spreads the samples instead
    wrong = paths.sde_sample(field, lambda y, t, c=None: -field.marginal_score(y, t), source,
                             ode.time_grid(400, dtype=jnp.float64), diffusion=0.8,
                             key=jax.random.key(4))
    assert float(jnp.std(wrong)) > S_D + 0.2


def test_cfm_loss_equals_the_core_flow_matching_loss_for_the_same_times(x64):
    x_data, x_source, _ = _pairs(jax.random.key(5), 16)
    seen = {}

    def model(x_t, t, cond=None):
        seen.setdefault("t", []).append(t)
        return jnp.sin(x_t) + t[:, None]

    ours = paths.interpolant_loss(model, x_data, x_source, jax.random.key(6))
    t = seen["t"][0]
    x_t, u_t = paths.interpolate(x_data, x_source, t, process=RectifiedFlow())
    np.testing.assert_allclose(ours, jnp.mean((model(x_t, t) - u_t) ** 2, -1), rtol=1e-6)
    core = losses.flow_matching_loss(
        lambda x, s, c=None: model(x, t), x_data, jax.random.key(7), noise=x_source,
        t_distribution=_Fixed(t))
    np.testing.assert_allclose(ours, core, rtol=1e-5)


class _Fixed:
    """A time distribution that returns the given times (to compare losses at equal t)."""

    def __init__(self, t):
        self.t = t

    def from_uniform(self, u, process):
        return self.t


def test_bad_input_gets_one_line_errors():
    x = jnp.zeros((4, 2))
    with pytest.raises(ValueError, match="needs a path with noise"):
        paths.interpolant_loss(lambda x, t, c=None: x, x, x, jax.random.key(0),
                               score_model=lambda x, t, c=None: x)
    with pytest.raises(ValueError, match="paired batches"):
        paths.interpolant_loss(lambda x, t, c=None: x, x, jnp.zeros((3, 2)), jax.random.key(0))
    with pytest.raises(ValueError, match="output shape"):
        paths.interpolant_loss(lambda x, t, c=None: x[:, :1], x, x, jax.random.key(0))
    with pytest.raises(ValueError, match="differs from the process"):
        paths.interpolant_loss(lambda x, t, c=None: x, x, x, jax.random.key(0),
                               process=TrigFlow(), noise_schedule=paths.BrownianBridgeNoise())
    with pytest.raises(ValueError, match="the Gaussian draw z"):
        paths.interpolate(x, x, 0.5, process=RectifiedFlow(),
                          noise_schedule=paths.BrownianBridgeNoise())
