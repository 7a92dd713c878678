"""Forward processes of the discrete family: matrices, marginals, posteriors (float64)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.discrete import processes as P

KINDS = [("uniform", "cosine"), ("uniform", "linear"), ("absorbing", "jsd"),
         ("absorbing", "linear"), ("gaussian", "linear"), ("uniform", "jsd")]


@pytest.mark.parametrize("kind,schedule", KINDS)
def test_rows_sum_to_one_and_product_equals_cumulative(x64, kind, schedule):
    process = P.d3pm(kind, 5, num_steps=12, schedule=schedule, dtype=jnp.float64)
    onestep, cumulative = np.asarray(process.onestep), np.asarray(process.cumulative)
    assert onestep.shape == (12, process.num_states, process.num_states)
    np.testing.assert_allclose(onestep.sum(-1), 1.0, atol=1e-13)  # row-stochastic
    assert onestep.min() >= 0.0
    np.testing.assert_allclose(cumulative[0], np.eye(process.num_states), atol=0)
    product = np.eye(process.num_states)
    for t in range(1, 13):
        product = product @ onestep[t - 1]
        np.testing.assert_allclose(cumulative[t], product, atol=1e-13)
    np.testing.assert_allclose(cumulative.sum(-1), 1.0, atol=1e-13)


def test_convention_is_row_stochastic_not_column(x64):
    """``Q[i, j] = q(x_t = j | x_{t-1} = i)``: an absorbing row i jumps to column K (the mask)."""
    process = P.d3pm("absorbing", 3, num_steps=4, schedule="linear", beta_start=0.25,
                     beta_end=0.25, dtype=jnp.float64)
    q = np.asarray(process.onestep[0])
    np.testing.assert_allclose(q[0], [0.75, 0, 0, 0.25])
    np.testing.assert_allclose(q[3], [0, 0, 0, 1.0])  # the mask row is absorbing
    assert not np.allclose(q.sum(0), 1.0)  # columns do not sum to 1


def test_uniform_and_gaussian_converge_to_uniform(x64):
    for kind, schedule in [("uniform", "cosine"), ("gaussian", "linear")]:
        process = P.d3pm(kind, 6, num_steps=1000, schedule=schedule, dtype=jnp.float64)
        np.testing.assert_allclose(process.cumulative[-1], 1.0 / 6, atol=1e-3)
    exact = P.d3pm("uniform", 6, num_steps=50, schedule="jsd", dtype=jnp.float64)
    np.testing.assert_allclose(exact.cumulative[-1], 1.0 / 6, atol=1e-15)


def test_absorbing_jsd_is_all_mask_exactly_at_T(x64):
    process = P.d3pm("absorbing", 4, num_steps=20, schedule="jsd", dtype=jnp.float64)
    final = np.asarray(process.cumulative[-1])
    np.testing.assert_array_equal(final[:, :4], 0.0)
    np.testing.assert_array_equal(final[:, 4], 1.0)
    # before T some mass is still clean: jsd gives abar_t = (T - t)/T
    np.testing.assert_allclose(process.cumulative[5][0, 0], 15 / 20, atol=1e-15)
    linear = P.d3pm("absorbing", 4, num_steps=20, schedule="linear", beta_start=0.02,
                    beta_end=0.2, dtype=jnp.float64)
    assert 0.0 < float(linear.cumulative[-1][0, 0]) < 0.5  # converges but not exactly


def test_gaussian_matrix_is_banded_and_symmetric(x64):
    process = P.d3pm("gaussian", 7, num_steps=5, dtype=jnp.float64)
    q = np.asarray(process.onestep[0])
    np.testing.assert_allclose(q, q.T, atol=1e-15)
    assert q[3, 4] > q[3, 5] > q[3, 6] > 0  # decays with distance from the diagonal


def _brute_force_posterior(process, x0, x_t, t):
    """Bayes: q(x_{t-1} = j | x_t, x_0) = q(x_t | j) q(j | x_0) / q(x_t | x_0), by enumeration."""
    q, cum = np.asarray(process.onestep), np.asarray(process.cumulative)
    joint = np.array([q[t - 1][j, x_t] * cum[t - 1][x0, j] for j in range(process.num_states)])
    evidence = cum[t][x0, x_t]
    return joint / evidence


@pytest.mark.parametrize("num_classes", [2, 5])
@pytest.mark.parametrize("kind", ["uniform", "absorbing", "gaussian"])
def test_posterior_equals_brute_force_bayes(x64, kind, num_classes):
    process = P.d3pm(kind, num_classes, num_steps=6, schedule="linear", beta_start=0.1,
                     beta_end=0.5, dtype=jnp.float64)
    states = process.num_states
    cases = [(x0, x_t, t) for x0, x_t, t in itertools.product(range(num_classes), range(states),
                                                               range(1, 7))
             if process.cumulative[t][x0, x_t] > 0]
    x0 = jnp.array([c[0] for c in cases])[:, None]
    x_t = jnp.array([c[1] for c in cases])[:, None]
    t = jnp.array([c[2] for c in cases])
    got = process.posterior_probs(jax.nn.one_hot(x0, states, dtype=jnp.float64), x_t, t)
    want = np.stack([_brute_force_posterior(process, *c) for c in cases])[:, None]
    np.testing.assert_allclose(got, want, atol=1e-13)


def test_marginal_and_sampling_agree(x64):
    process = P.d3pm("uniform", 3, num_steps=10, dtype=jnp.float64)
    x0 = jnp.zeros((40000, 1), jnp.int32)
    draws = process.sample_marginal(jax.random.key(0), x0, jnp.full((40000,), 4))
    freq = np.bincount(np.asarray(draws[:, 0]), minlength=3) / 40000
    want = np.asarray(process.marginal_probs(x0[:1], jnp.array([4])))[0, 0]
    np.testing.assert_allclose(freq, want, atol=4 * np.sqrt(0.25 / 40000))


@pytest.mark.parametrize("schedule", P.MASK_SCHEDULES)
def test_masked_schedule_derivative_weight_and_ends(x64, schedule):
    process = P.MaskedDiffusion(4, schedule=schedule, exponent=2.0)
    t = jnp.linspace(0.05, 0.95, 7, dtype=jnp.float64)
    derivative = jax.vmap(jax.grad(process.alpha))(t)
    np.testing.assert_allclose(process.alpha_prime(t), derivative, rtol=1e-12)
    np.testing.assert_allclose(process.weight(t),
                               -process.alpha_prime(t) / (1 - process.alpha(t)), rtol=1e-12)
    assert float(process.alpha(0.0)) == 1.0 and abs(float(process.alpha(1.0))) < 1e-15
    # the weight integrates against (1 - alpha) to 1: int_0^1 -alpha' dt = alpha_0 - alpha_1
    grid = np.linspace(0, 1, 20001)
    integrand = -np.asarray(process.alpha_prime(jnp.asarray(grid[1:])))
    np.testing.assert_allclose(np.trapezoid(integrand, grid[1:]), 1.0, atol=1e-3)


def test_masked_posterior_equals_bayes(x64):
    """q(x_s | x_t, x_0) from the joint q(x_s | x_0) q(x_t | x_s) (mask absorbing), by enumeration."""
    process = P.MaskedDiffusion(3, schedule="cosine")
    t, s = 0.7, 0.4
    a_t, a_s = float(process.alpha(t)), float(process.alpha(s))
    m = 3
    for x0 in range(3):
        for x_t in (x0, m):
            # q(x_t | x_s): clean stays clean w.p. a_t/a_s, else masked; mask stays mask
            def step(x_s, x_t=x_t):
                if x_s == m:
                    return float(x_t == m)
                return a_t / a_s if x_t == x_s else (1 - a_t / a_s) * (x_t == m)
            prior = [a_s * (j == x0) + (1 - a_s) * (j == m) for j in range(4)]
            joint = np.array([prior[j] * step(j) for j in range(4)])
            got = process.posterior_probs(jax.nn.one_hot(jnp.array([[x0]]), 3, dtype=jnp.float64),
                                          jnp.array([[x_t]]), jnp.array([t]), jnp.array([s]))
            np.testing.assert_allclose(got[0, 0], joint / joint.sum(), atol=1e-14)


@pytest.mark.parametrize("schedule", P.KAPPA_SCHEDULES)
@pytest.mark.parametrize("source", P.SOURCES)
def test_dfm_rates_are_a_rate_matrix(x64, source, schedule):
    path = P.MixturePath(5, source=source, schedule=schedule, exponent=2.0)
    key = jax.random.key(1)
    probs = jax.nn.softmax(jax.random.normal(key, (64, 3, 5), jnp.float64) * 3, axis=-1)
    x_t = jax.random.randint(jax.random.key(2), (64, 3), 0, path.num_states)
    t = jax.random.uniform(jax.random.key(3), (64,), jnp.float64, 0.01, 0.99)
    rates = np.asarray(path.rates(probs, x_t, t))
    off_diagonal = np.where(np.asarray(jax.nn.one_hot(x_t, path.num_states)) > 0, 0.0, rates)
    assert off_diagonal.min() >= 0.0
    np.testing.assert_allclose(rates.sum(-1), 0.0, atol=1e-12)
    np.testing.assert_allclose(path.kappa_prime(t), jax.vmap(jax.grad(path.kappa))(t), rtol=1e-12)
    assert float(path.kappa(0.0)) == 0.0 and abs(float(path.kappa(1.0)) - 1) < 1e-15


def test_bad_names_and_classes():
    with pytest.raises(ValueError, match="unknown D3PM kind"):
        P.d3pm("banded", 4)
    with pytest.raises(ValueError, match="unknown beta schedule"):
        P.d3pm("uniform", 4, schedule="sqrt")
    with pytest.raises(ValueError, match="num_classes"):
        P.MaskedDiffusion(1)
    with pytest.raises(ValueError, match="unknown source"):
        P.MixturePath(4, source="gaussian")


def test_processes_are_pytrees_through_jit():
    process = P.d3pm("absorbing", 4, num_steps=8)
    marginal = jax.jit(lambda p, x: p.marginal_probs(x, jnp.array([8])))(process, jnp.zeros((1, 2), jnp.int32))
    np.testing.assert_allclose(marginal[0, 0], [0, 0, 0, 0, 1])
    masked = P.MaskedDiffusion(4, "polynomial", 3.0)
    assert jax.tree_util.tree_leaves(masked) == []
    assert float(jax.jit(lambda p: p.alpha(0.5))(masked)) == pytest.approx(1 - 0.125)
