"""Exactness of the discrete objectives with a perfect (enumerated) model, float64."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.discrete import likelihood, losses, toys
from diffusion_jax.discrete import processes as P

PROBS = np.array([0.5, 0.3, 0.15, 0.05])
MARGINALS = np.array([[0.5, 0.3, 0.15, 0.05], [0.1, 0.1, 0.1, 0.7], [0.25, 0.25, 0.25, 0.25]])


def _exact_d3pm_nelbo(process, data):
    """sum over x0, t, x_t of p(x0) q(x_t | x0) * term, for a single token (L = 1)."""
    network = data.posterior_network(process)
    cumulative = np.asarray(process.cumulative)
    rows = [(x0, t, x_t, math.exp(data.log_probs[x0]) * cumulative[t][x0, x_t])
            for x0, t, x_t in itertools.product(range(data.num_classes),
                                                range(1, process.num_steps + 1),
                                                range(process.num_states))]
    rows = [r for r in rows if r[3] > 0]
    x0 = jnp.array([r[0] for r in rows])[:, None]
    t = jnp.array([r[1] for r in rows])
    x_t = jnp.array([r[2] for r in rows])[:, None]
    vb, _ = jax.jit(lambda *a: losses.d3pm_terms(network, process, *a))(x0, x_t, t)
    weights = np.array([r[3] for r in rows])
    prior = losses.d3pm_prior_kl(process, jnp.arange(data.num_classes)[:, None])
    return float(weights @ np.asarray(vb[:, 0]) + np.exp(data.log_probs) @ np.asarray(prior))


@pytest.mark.parametrize("kind,schedule", [("absorbing", "jsd"), ("uniform", "linear"),
                                           ("gaussian", "linear")])
def test_d3pm_bound_with_true_posterior_is_entropy_plus_prior_term(x64, kind, schedule):
    data = toys.product_of_categoricals(PROBS[None])
    process = P.d3pm(kind, 4, num_steps=8, schedule=schedule, beta_start=0.05, beta_end=0.3,
                     dtype=jnp.float64) if schedule != "jsd" else P.d3pm(
        kind, 4, num_steps=8, schedule="jsd", dtype=jnp.float64)
    marginal_T = np.exp(data.log_probs) @ np.asarray(process.cumulative[-1])[:4]
    prior = np.asarray(process.prior_probs())
    prior_term = float(np.sum(marginal_T[marginal_T > 0]
                              * np.log(marginal_T[marginal_T > 0] / prior[marginal_T > 0])))
    if kind == "absorbing":
        assert prior_term == 0.0
    else:
        assert prior_term > 1e-6  # not mixed after 8 steps: the bound must include it
    np.testing.assert_allclose(_exact_d3pm_nelbo(process, data), data.entropy() + prior_term,
                               rtol=1e-12)


def test_d3pm_bound_is_loose_for_a_wrong_model(x64):
    data = toys.product_of_categoricals(PROBS[None])
    process = P.d3pm("absorbing", 4, num_steps=8, dtype=jnp.float64)
    wrong = toys.product_of_categoricals(np.full((1, 4), 0.25))
    good = _exact_d3pm_nelbo(process, data)

    class Shim:  # the wrong model's posterior, scored on the true data
        log_probs, num_classes = data.log_probs, 4

        @staticmethod
        def posterior_network(process):
            return wrong.posterior_network(process)

    assert _exact_d3pm_nelbo(process, Shim) > good + 0.05


def test_d3pm_hybrid_loss_adds_lambda_times_cross_entropy(x64):
    data = toys.product_of_categoricals(MARGINALS)
    process = P.d3pm("uniform", 4, num_steps=10, dtype=jnp.float64)
    network = data.posterior_network(process)
    x0 = jnp.asarray(data.sample(0, 64))
    loss = jax.jit(lambda c: losses.d3pm_loss(network, process, x0, jax.random.key(0),
                                              hybrid_coeff=c))
    pure, hybrid = loss(0.0), loss(0.5)
    t_key, x_key = jax.random.split(jax.random.key(0))
    t = jax.random.randint(t_key, (64,), 1, 11)
    x_t = process.sample_marginal(x_key, x0, t)
    logits = network(x_t, t / 10)
    ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), x0[..., None], -1)[..., 0].mean(1)
    np.testing.assert_allclose(hybrid - pure, 0.5 * ce, rtol=1e-10)


def _mc(estimate, num, key):
    values = np.asarray(estimate(key))
    return values.mean(), values.std(ddof=1) / math.sqrt(values.size)


@pytest.mark.parametrize("schedule,exponent", [("linear", 1.0), ("cosine", 1.0),
                                               ("polynomial", 3.0)])
def test_masked_nelbo_of_perfect_model_is_entropy(x64, schedule, exponent):
    """Independent tokens: E[NELBO] = sum_i H_i for every schedule (int -alpha' dt = 1)."""
    data = toys.product_of_categoricals(MARGINALS)
    process = P.MaskedDiffusion(4, schedule=schedule, exponent=exponent)
    network = data.posterior_network(process)
    x0 = jnp.asarray(data.sample(1, 40000))
    values = np.asarray(losses.masked_diffusion_loss(network, process, x0, jax.random.key(2)))
    mean, error = values.mean(), values.std(ddof=1) / math.sqrt(values.size)
    assert abs(mean - data.entropy()) < 4 * error, (mean, error, data.entropy())
    assert error < 0.02 * data.entropy()


def test_masked_nelbo_detects_a_wrong_model(x64):
    data = toys.product_of_categoricals(MARGINALS)
    wrong = toys.product_of_categoricals(MARGINALS[::-1].copy())
    process = P.MaskedDiffusion(4)
    x0 = jnp.asarray(data.sample(1, 40000))
    values = np.asarray(losses.masked_diffusion_loss(wrong.posterior_network(process), process,
                                                     x0, jax.random.key(2)))
    cross_entropy = -np.mean(np.sum(np.log(MARGINALS[::-1][np.arange(3), np.asarray(x0)]), 1))
    assert abs(values.mean() - cross_entropy) < 4 * values.std() / 200
    assert values.mean() > data.entropy() + 0.3


def test_dfm_mask_source_generalized_kl_equals_masked_integrand(x64):
    """With alpha_t = kappa_{1-t}, the DFM generalised-KL integrand is the masked NELBO's."""
    data = toys.markov_chain([0.6, 0.3, 0.1], [[0.8, 0.1, 0.1], [0.2, 0.7, 0.1],
                                              [0.3, 0.3, 0.4]], 3)
    path = P.MixturePath(3, source="mask")
    masked = P.MaskedDiffusion(3)
    x1 = jnp.asarray(data.sample(0, 256))
    t = jax.random.uniform(jax.random.key(1), (256,), jnp.float64, 0.01, 0.99)
    x_t = path.sample_marginal(jax.random.key(2), x1, t)
    net = data.posterior_network(path)
    flipped = lambda x, s, cond=None: net(x, 1.0 - s)  # noqa: E731
    got = losses.dfm_terms(net, path, x1, x_t, t)
    want = losses.masked_terms(flipped, masked, x1, x_t, 1.0 - t)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


def test_dfm_mask_source_nelbo_of_perfect_model_is_entropy(x64):
    data = toys.product_of_categoricals(MARGINALS)
    path = P.MixturePath(4, source="mask", schedule="polynomial", exponent=2.0)
    x1 = jnp.asarray(data.sample(3, 40000))
    values = np.asarray(losses.dfm_loss(data.posterior_network(path), path, x1,
                                        jax.random.key(4)))
    error = values.std(ddof=1) / math.sqrt(values.size)
    assert abs(values.mean() - data.entropy()) < 4 * error


def _quadrature_dfm_uniform(data, path, num=4000):
    """E_t E_{x1, x_t}[generalised KL] by midpoint rule in t and enumeration (one token)."""
    network = data.posterior_network(path)
    K = data.num_classes
    pairs = np.array(list(itertools.product(range(K), range(K))))
    t = np.repeat((np.arange(num) + 0.5) / num, len(pairs))
    pairs = np.tile(pairs, (num, 1))
    kappa = np.asarray(path.kappa(jnp.asarray(t)))
    weight = np.exp(data.log_probs)[pairs[:, 0]] * (kappa * (pairs[:, 0] == pairs[:, 1])
                                                     + (1 - kappa) / K)
    terms = jax.jit(lambda a, b, s: losses.dfm_terms(network, path, a, b, s))(
        jnp.asarray(pairs[:, :1]), jnp.asarray(pairs[:, 1:]), jnp.asarray(t))
    return float(weight @ np.asarray(terms[:, 0])) / num


def test_dfm_uniform_source_bound_matches_quadrature_and_exceeds_entropy(x64):
    data = toys.product_of_categoricals(PROBS[None])
    path = P.MixturePath(4, source="uniform", schedule="polynomial", exponent=2.0)
    exact = _quadrature_dfm_uniform(data, path, num=2000)
    assert exact > data.entropy() + 1e-3  # a strict bound: the uniform-source path is not tight
    x1 = jnp.asarray(data.sample(5, 100000))
    values = np.asarray(losses.dfm_loss(data.posterior_network(path), path, x1,
                                        jax.random.key(6)))
    error = values.std(ddof=1) / math.sqrt(values.size)
    assert abs(values.mean() - exact) < 4 * error + 2e-3, (values.mean(), error, exact)


def test_generalized_kl_is_nonnegative_and_zero_only_at_the_target(x64):
    path = P.MixturePath(4, source="uniform")
    x1 = jax.random.randint(jax.random.key(0), (500, 2), 0, 4)
    x_t = jax.random.randint(jax.random.key(1), (500, 2), 0, 4)
    t = jnp.full((500,), 0.3)
    random_net = lambda x, s, cond=None: jax.random.normal(jax.random.key(2), x.shape + (4,))  # noqa: E731
    assert float(losses.dfm_terms(random_net, path, x1, x_t, t).min()) >= 0.0
    oracle = lambda x, s, cond=None: jnp.where(jax.nn.one_hot(x1, 4) > 0, 0.0, -1e30)  # noqa: E731
    np.testing.assert_allclose(losses.dfm_terms(oracle, path, x1, x_t, t), 0.0, atol=1e-12)


def test_likelihood_bits_and_standard_error(x64):
    data = toys.product_of_categoricals(MARGINALS)
    process = P.MaskedDiffusion(4, schedule="cosine")
    tokens = data.sample(7, 20000)
    result = likelihood.nelbo_bits(data.posterior_network(process), process, tokens,
                                   jax.random.key(8), num_draws=2, batch_size=5000)
    true_bits = data.entropy() / (3 * math.log(2))
    assert abs(result["bits"] - true_bits) < 4 * result["std_error"]
    assert 0 < result["std_error"] < 0.05 and result["num_examples"] == 20000


def test_likelihood_bad_input_errors():
    data = toys.product_of_categoricals(MARGINALS)
    process = P.MaskedDiffusion(4)
    network = data.posterior_network(process)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="must lie in \\[0, 4\\)"):
        likelihood.nelbo_bits(network, process, np.full((4, 3), 4), key)
    with pytest.raises(ValueError, match="must lie in"):
        likelihood.nelbo_bits(network, process, np.full((4, 3), -1), key)
    with pytest.raises(ValueError, match="integer class indices"):
        likelihood.nelbo_bits(network, process, np.zeros((4, 3), np.float32), key)
    with pytest.raises(ValueError, match="K = 5 classes"):
        likelihood.nelbo_bits(network, P.MaskedDiffusion(5), np.zeros((4, 3), np.int32), key)


def test_losses_reject_float_tokens_and_out_of_range_classes():
    process = P.MaskedDiffusion(4)
    network = toys.product_of_categoricals(MARGINALS).posterior_network(process)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="integer class indices"):
        losses.masked_diffusion_loss(network, process, jnp.zeros((2, 3)), key)
    with pytest.raises(ValueError, match="must lie in"):
        losses.dfm_loss(network, P.MixturePath(4), jnp.full((2, 3), 4), key)
    with pytest.raises(ValueError, match="integer class indices"):
        losses.d3pm_loss(network, P.d3pm("uniform", 4, num_steps=4), jnp.zeros((2, 3)), key)
