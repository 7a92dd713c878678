"""Metrics against exact values (W2 of a shift, sorted 1-D W2, sliced W2 of a shift,
straightness of a straight line at varying speed, the one-step gap of the Gaussian FM field) and
reflow: teacher pairs never cost more than the independent coupling and the rectified field is
straighter (exact Gaussian fields)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.flows import gaussian, metrics, reflow, toy


def test_exact_w2_of_a_shift_and_of_1d_sets():
    x = np.asarray(jax.random.normal(jax.random.key(0), (300, 2)))
    shift = np.array([0.6, -0.8])
    assert metrics.wasserstein2_exact(x, x + shift) == pytest.approx(1.0, rel=1e-9)
    a = np.asarray(jax.random.normal(jax.random.key(1), (200, 1)))
    b = np.asarray(jax.random.uniform(jax.random.key(2), (200, 1)))
    sorted_w2 = np.sqrt(np.mean((np.sort(a[:, 0]) - np.sort(b[:, 0])) ** 2))
    assert metrics.wasserstein2_exact(a, b) == pytest.approx(sorted_w2, rel=1e-9)


def test_sliced_w2_of_a_shift_is_its_length_over_sqrt_d():
    x = jax.random.normal(jax.random.key(0), (500, 2))
    value = metrics.sliced_wasserstein2(x, x + jnp.array([0.6, -0.8]), jax.random.key(1),
                                        num_projections=4000)
    assert float(value) == pytest.approx(1.0 / np.sqrt(2.0), rel=0.02)
    a = jax.random.normal(jax.random.key(2), (200, 1))
    b = jax.random.uniform(jax.random.key(3), (200, 1))
    assert float(metrics.sliced_wasserstein2(a, b, jax.random.key(4))) == pytest.approx(
        metrics.wasserstein2_exact(a, b), rel=1e-5)


def test_straightness_of_a_straight_line_at_varying_speed(x64):
    c = jnp.array([3.0, 4.0])

    def accelerating(x, t, cond=None):
        return jnp.broadcast_to(c * t, x.shape)

    def constant(x, t, cond=None):
        return jnp.broadcast_to(c, x.shape)

    x1 = jnp.zeros((3, 2), jnp.float64)
    s, x0 = metrics.straightness(accelerating, x1, num_steps=64)
    np.testing.assert_allclose(x0, -c / 2 * jnp.ones((3, 1)), atol=1e-12)
    assert float(s) == pytest.approx(25.0 / 12.0, rel=1e-3)  # |c|^2 int (1/2 - t)^2 dt
    assert float(metrics.straightness(constant, x1)[0]) == pytest.approx(0.0, abs=1e-20)


def test_endpoint_gap_of_the_independent_gaussian_field(x64):
    """One Euler step lands on the data mean, the adaptive solve on m + s x: gap = sum s^2."""
    std = jnp.array([0.4, 1.5])
    field = gaussian.IndependentGaussianVelocity(jnp.array([1.0, -1.0]), std)
    noise = jax.random.normal(jax.random.key(5), (4000, 2), jnp.float64)
    gap, _ = metrics.endpoint_gap(field, noise, rtol=1e-8, atol=1e-8)
    expected = float(jnp.mean(jnp.sum((std * noise) ** 2, -1)))
    assert float(gap) == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(float(jnp.sum(std**2)), rel=0.05)


def test_reflow_never_increases_the_coupling_cost_and_straightens_the_flow(x64):
    """Exact 1-RF field between 1-D Gaussians (independent coupling); its pairs
    (x_s, Phi(x_s)) follow the monotone map T(x) = m_d + r (x - m_s); the 2-RF field of that
    coupling is v(x_t) = (1 - r)(x - m_s) + m_s - m_d with x - m_s from x_t (exact, straight)."""
    m_d, s_d, m_s, s_s = 1.5, 0.4, -1.0, 1.2
    r = s_d / s_s
    field = gaussian.IndependentGaussianVelocity(m_d, s_d, m_s, s_s)
    x_source = m_s + s_s * jax.random.normal(jax.random.key(6), (2000, 1), jnp.float64)
    x_data = m_d + s_d * jax.random.normal(jax.random.key(7), (2000, 1), jnp.float64)
    samples = reflow.teacher_samples(field, x_source, num_steps=64)
    np.testing.assert_allclose(samples, m_d + r * (x_source - m_s), atol=1e-8)
    independent = float(metrics.coupling_cost(x_data, x_source))
    rectified = float(metrics.coupling_cost(samples, x_source))
    assert rectified < independent  # 2.25 + 0.16 + 1.44 -> (m_d - m_s)^2 + (s_s - s_d)^2
    assert rectified == pytest.approx((m_d - m_s) ** 2 + (s_s - s_d) ** 2, rel=0.05)

    def two_rf(x, t, cond=None):
        offset = (x - (1 - t) * m_d - t * m_s) / ((1 - t) * r + t)
        return (1 - r) * offset + m_s - m_d

    s1, _ = metrics.straightness(field, x_source[:200], num_steps=64)
    s2, ends = metrics.straightness(two_rf, x_source[:200], num_steps=64)
    assert float(s1) > 0.1 and float(s2) < 1e-12
    np.testing.assert_allclose(ends, samples[:200], atol=1e-8)  # same marginals, same map


def test_online_teacher_coupling_and_distillation_loss(x64):
    field = gaussian.IndependentGaussianVelocity(1.5, 0.4)
    coupling = reflow.teacher_coupling(field, num_steps=64)
    x_source = jax.random.normal(jax.random.key(8), (16, 1), jnp.float64)
    x_data, paired_source, _ = coupling(jnp.zeros_like(x_source), x_source)
    np.testing.assert_allclose(x_data, 1.5 + 0.4 * x_source, atol=1e-8)
    # the straight student v = x - T(x) distils the teacher exactly in one step
    student = lambda x, t, c=None: x - (1.5 + 0.4 * x)  # noqa: E731
    np.testing.assert_allclose(reflow.distillation_loss(student, x_data, paired_source), 0.0,
                               atol=1e-14)


def test_source_by_index_is_deterministic_per_index():
    def one_point(key):
        return toy.eight_gaussians(key, 1)[0]

    key = jax.random.key(9)
    whole = reflow.source_by_index(one_point, key, jnp.arange(10))
    part = reflow.source_by_index(one_point, key, jnp.arange(6, 10))
    np.testing.assert_array_equal(whole[6:], part)


def test_torchcfm_toy_sets_have_the_protocol_moments():
    source = np.asarray(toy.eight_gaussians(jax.random.key(0), 40000))
    radius = np.linalg.norm(source, axis=-1)
    assert np.mean(radius) == pytest.approx(5.0, abs=0.05)
    centres = 5.0 * np.stack([np.cos(np.arange(8) * np.pi / 4), np.sin(np.arange(8) * np.pi / 4)], -1)
    nearest = centres[np.argmin(((source[:, None] - centres) ** 2).sum(-1), 1)]
    assert np.std(source - nearest) == pytest.approx(0.1 ** 0.25, rel=0.02)
    target = np.asarray(toy.moons(jax.random.key(1), 40000))
    # make_moons: mean (0.5, 0.25), x 3 - 1 -> (0.5, -0.25)
    np.testing.assert_allclose(target.mean(0), [0.5, -0.25], atol=0.03)


def test_bad_input_gets_one_line_errors():
    with pytest.raises(ValueError, match="one shape"):
        metrics.wasserstein2_exact(np.zeros((3, 2)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="NaN"):
        metrics.wasserstein2_exact(np.full((3, 2), np.nan), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="one shape"):
        metrics.coupling_cost(jnp.zeros((3, 2)), jnp.zeros((3, 1)))
    with pytest.raises(ValueError, match="positive int"):
        toy.moons(jax.random.key(0), 0)
