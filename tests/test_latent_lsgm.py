"""LSGM (Vahdat et al. 2021): on the linear-Gaussian toy (x64) the reported ELBO is unbiased for
the closed-form ELBO, below the exact log-likelihood, and equal to it for the exact posterior and
the exact latent prior; importance sampling of t cuts the estimator's spread; the parts add up;
the mixed score; and the NNX module trains as one network."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _latent_toy import linear_gaussian_toy
from flax import nnx

from diffusion_jax import training
from diffusion_jax.latent.lsgm import (
    LSGM,
    diffusion_cross_entropy,
    lsgm_loss,
    lsgm_terms,
    prior_denoiser,
)
from diffusion_jax.networks import MLP
from diffusion_jax.processes import VE, VP

X = jnp.array([[0.5, -1.0, 0.3], [1.2, 0.4, -0.7]])


def _toy(prior_mean=(0.0, 0.0), prior_variances=(1.0, 1.0)):
    return linear_gaussian_toy(prior_mean, np.diag(prior_variances))


def _estimate(model, num=4000, seed=0, **options):
    """Monte Carlo mean and standard error of every term of ``lsgm_terms`` at ``X``."""
    terms = jax.jit(jax.vmap(lambda key: lsgm_terms(model, X, key, process=VP(), **options)))(
        jax.random.split(jax.random.key(seed), num))
    return {name: (jnp.mean(values, axis=0), jnp.std(values, axis=0) / math.sqrt(num))
            for name, values in terms.items()}


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("prior_mean, prior_variances", [((0.0, 0.0), (1.0, 1.0)),
                                                         ((0.4, -0.3), (0.5, 1.5))])
def test_elbo_is_exact_for_the_exact_posterior_and_prior(prior_mean, prior_variances):
    exact = _toy(prior_mean, prior_variances).with_exact_posterior()
    negative_elbo, error = _estimate(exact)["negative_elbo"]
    log_p = exact.log_marginal(X)
    assert np.all(error < 0.35)
    assert np.all(np.abs(-negative_elbo - log_p) < 4 * error), (-negative_elbo, log_p, error)


@pytest.mark.usefixtures("x64")
def test_elbo_is_unbiased_and_below_the_log_likelihood():
    toy = _toy((0.4, -0.3), (0.5, 1.5))
    estimates = _estimate(toy, seed=1)
    negative_elbo, error = estimates["negative_elbo"]
    assert np.all(np.abs(-negative_elbo - toy.elbo(X)) < 4 * error)
    assert np.all(-negative_elbo + 4 * error < toy.log_marginal(X))
    # its parts: the reconstruction and the KL against their closed forms
    reconstruction, error = estimates["reconstruction"]
    assert np.all(np.abs(reconstruction + toy.expected_log_likelihood(X)) < 4 * error)
    kl, error = estimates["kl"]
    assert np.all(np.abs(kl - toy.kl(X)) < 4 * error)


@pytest.mark.usefixtures("x64")
def test_parts_add_up_and_bits_per_dim():
    toy = _toy()
    terms = lsgm_terms(toy, X, jax.random.key(0), process=VP(), num_bits=8)
    np.testing.assert_allclose(terms["kl"], terms["cross_entropy"] - terms["entropy"])
    np.testing.assert_allclose(terms["negative_elbo"], terms["reconstruction"] + terms["kl"])
    np.testing.assert_allclose(terms["bits_per_dim"],
                               terms["negative_elbo"] / (3 * math.log(2)) + 8 - 1, rtol=1e-12)
    np.testing.assert_allclose(lsgm_loss(toy, X, jax.random.key(0), process=VP()),
                               terms["negative_elbo"])
    # the process may travel through jit as an argument (its t_max then is traced)
    jitted = jax.jit(lambda process, key: lsgm_loss(toy, X, key, process=process, num_bits=8))
    np.testing.assert_allclose(jitted(VP(), jax.random.key(0)), terms["negative_elbo"],
                               rtol=1e-10)


@pytest.mark.usefixtures("x64")
def test_importance_sampling_reduces_the_variance():
    exact = _toy().with_exact_posterior()
    with_is, error_is = _estimate(exact, seed=2)["cross_entropy"]
    uniform, error_uniform = _estimate(exact, seed=2, importance_sampling=False)["cross_entropy"]
    assert np.all(np.abs(with_is - uniform) < 4 * np.hypot(error_is, error_uniform))
    assert np.all(error_uniform > 3 * error_is), (error_uniform, error_is)


@pytest.mark.usefixtures("x64")
def test_prior_denoiser_is_the_exact_latent_denoiser():
    toy = _toy((0.4, -0.3), (0.5, 1.5))
    z = jax.random.normal(jax.random.key(0), (5, 2))
    sigma = jnp.array([0.01, 0.3, 1.0, 5.0, 40.0])
    np.testing.assert_allclose(prior_denoiser(toy, VP())(z, sigma), toy.prior().denoise(z, sigma),
                               rtol=1e-8, atol=1e-10)


def _tiny_lsgm(mixed_score=True, seed=0):
    return LSGM(in_channels=1, latent_channels=2, base_channels=8, channel_multipliers=(1,),
                attention=False, prior=_LatentMLP(2 * 8 * 8, rngs=nnx.Rngs(seed)),
                mixed_score=mixed_score, rngs=nnx.Rngs(seed))


class _LatentMLP(nnx.Module):
    """An epsilon network on (B, h, w, c) latents: the library's MLP on the flattened latent."""

    def __init__(self, features, *, rngs):
        self.mlp = MLP(features, hidden_dim=32, num_layers=2, rngs=rngs)

    def __call__(self, z_t, c_noise, cond=None):
        return self.mlp(z_t.reshape(z_t.shape[0], -1), c_noise, cond).reshape(z_t.shape)


def test_mixed_score_at_zero_mix_is_the_standard_normal_prior():
    model = _tiny_lsgm()
    model.mixing_logit[...] = jnp.full((2,), -60.0)
    z0 = jax.random.normal(jax.random.key(0), (2, 8, 8, 2)) * jnp.array([0.5, 1.5])

    @jax.jit
    def estimate(lsgm, keys):  # the module travels as an argument, never a closure constant
        network = lambda z_t, t, cond: lsgm.prior_epsilon(z_t, t, cond, process=VP())  # noqa: E731
        return jax.vmap(lambda key: diffusion_cross_entropy(network, z0, key, process=VP()))(keys)

    estimates = estimate(model, jax.random.split(jax.random.key(1), 2000))
    exact = 0.5 * jnp.sum(z0**2, axis=(1, 2, 3)) + 64 * math.log(2 * math.pi)
    error = jnp.std(estimates, axis=0) / math.sqrt(2000)
    assert np.all(np.abs(jnp.mean(estimates, axis=0) - exact) < 4 * error), (estimates, exact)
    with pytest.raises(ValueError, match="variance-preserving"):
        model.prior_epsilon(z0, jnp.full((2,), 0.5), process=VE())


def test_lsgm_trains_as_one_network():
    """The library's train step on the one LSGM module: 60 steps lower the negative ELBO by a
    quarter, and every part (encoder, decoder, its scale, prior, mixing) was updated."""
    model = _tiny_lsgm()
    x = jnp.tanh(jax.random.normal(jax.random.key(0), (16, 8, 8, 1)))
    optimizer, _ = training.make_optimizer(learning_rate=3e-3)
    state, parts = training.create_train_state(model, optimizer, key=jax.random.key(1))
    loss_fn = lambda net, batch, key: lsgm_loss(net, batch, key, process=VP())  # noqa: E731
    step = jax.jit(training.make_train_step(parts, loss_fn, optimizer))
    evaluate = jax.jit(lambda params: jnp.mean(loss_fn(
        training.merge_network(parts, params), jnp.tile(x, (8, 1, 1, 1)), jax.random.key(3))))
    before = float(evaluate(state.params))
    trained = state
    for _ in range(60):
        trained, _ = step(trained, x)
    after = float(evaluate(trained.params))
    assert after < before - 0.25 * abs(before), (before, after)
    for name in ("encoder", "decoder", "prior", "log_scale", "mixing_logit"):
        change = optax.tree.norm(jax.tree.map(jnp.subtract, trained.params[name],
                                              state.params[name]))
        assert float(change) > 0, name
