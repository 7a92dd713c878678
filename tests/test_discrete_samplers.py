"""Samplers of the discrete family: tail-keeping categorical draws and exact-model histograms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.discrete import processes as P
from diffusion_jax.discrete import samplers, toys

RARE = 1e-6
TAILED = np.array([0.7, 0.3 - RARE, RARE])
CHAIN = toys.markov_chain([0.5, 0.3, 0.2], [[0.9, 0.05, 0.05], [0.05, 0.9, 0.05],
                                            [0.1, 0.1, 0.8]], 3)


def _count(dtype, draws=10_000_000, chunk=1_000_000):
    logits = jnp.log(jnp.asarray(TAILED, jnp.float32))
    draw = jax.jit(lambda key: jnp.bincount(
        samplers.categorical(key, jnp.broadcast_to(logits, (chunk, 3)), dtype=dtype), length=3))
    return sum(np.asarray(draw(jax.random.key(i))) for i in range(draws // chunk))


def test_categorical_keeps_a_one_in_a_million_class():
    """10^7 draws: the 1e-6 class appears ~10 times (Poisson), the others match p."""
    counts = _count(None)
    assert 2 <= counts[2] <= 25, counts
    freq = counts / counts.sum()
    np.testing.assert_allclose(freq[:2], TAILED[:2], atol=5 * np.sqrt(0.21 / counts.sum()))


def test_low_precision_sampling_loses_the_tail():
    """The same test catches an unsafe draw: in float16 the Gumbel noise is capped, so the 1e-6
    class is never drawn (the histogram test has the power to fail)."""
    counts = _count(jnp.float16, draws=2_000_000)
    assert counts[2] == 0


def test_tail_uniform_reaches_far_below_the_float32_grid():
    values = samplers.uniform_with_tail(jax.random.key(0), (2_000_000,), jnp.float32)
    assert float(values.min()) > 0 and float(values.max()) < 1
    small = np.asarray(values[values < 2.0**-14], np.float64)
    assert small.size > 50
    # a single float32 uniform is a multiple of 2^-23; these carry bits below that grid
    off_grid = np.mod(small * 2.0**23, 1.0) != 0.0
    assert off_grid.mean() > 0.9
    np.testing.assert_allclose(float(values.mean()), 0.5, atol=1e-3)


def test_float64_without_x64_is_an_error():
    if jax.config.jax_enable_x64:
        pytest.skip("x64 is on")
    with pytest.raises(ValueError, match="jax_enable_x64"):
        samplers.categorical(jax.random.key(0), jnp.zeros(3), dtype=jnp.float64)


def _total_variation(data, tokens):
    return 0.5 * np.abs(data.histogram(tokens) - np.exp(data.log_probs)).sum()


def test_masked_sampler_with_exact_posterior_matches_the_joint(x64):
    process = P.MaskedDiffusion(3, schedule="cosine")
    network = CHAIN.posterior_network(process)
    sample = jax.jit(lambda key, n: samplers.sample_masked(network, process, key, (20000, 3),
                                                           num_steps=n), static_argnums=1)
    fine = sample(jax.random.key(0), 400)
    assert _total_variation(CHAIN, fine) < 0.03
    # one step unmasks all tokens at once from their marginals: the dependence is lost, and the
    # same test sees it
    coarse = sample(jax.random.key(1), 1)
    assert _total_variation(CHAIN, coarse) > 0.2


def test_masked_sampler_cache_is_exact_and_saves_evaluations(x64):
    process = P.MaskedDiffusion(3)
    network = CHAIN.posterior_network(process)
    run = lambda cache: samplers.sample_masked(network, process, jax.random.key(3), (2, 3),  # noqa: E731
                                               num_steps=64, cache=cache, return_nfe=True)
    cached, nfe_cached = run(True)
    plain, nfe_plain = run(False)
    np.testing.assert_array_equal(cached, plain)
    assert int(nfe_plain) == 64 and int(nfe_cached) <= 7  # at most one evaluation per change + 1
    assert int(cached.max()) < 3  # nothing left masked


@pytest.mark.parametrize("source,steps,tolerance", [("mask", 400, 0.03), ("uniform", 400, 0.04)])
def test_dfm_euler_with_exact_posterior_matches_the_joint(x64, source, steps, tolerance):
    path = P.MixturePath(3, source=source)
    network = CHAIN.posterior_network(path)
    tokens = jax.jit(lambda key: samplers.sample_dfm_euler(network, path, key, (20000, 3),
                                                           num_steps=steps))(jax.random.key(4))
    assert _total_variation(CHAIN, tokens) < tolerance


@pytest.mark.parametrize("kind", ["uniform", "absorbing"])
def test_d3pm_ancestral_with_exact_posterior_matches_independent_tokens(x64, kind):
    data = toys.product_of_categoricals([[0.6, 0.3, 0.1], [0.05, 0.15, 0.8]])
    process = P.d3pm(kind, 3, num_steps=20, dtype=jnp.float64)
    network = data.posterior_network(process)
    tokens = jax.jit(lambda key: samplers.sample_d3pm(network, process, key, (20000, 2)))(
        jax.random.key(5))
    assert _total_variation(data, tokens) < 0.03


def test_sampler_rejects_a_network_with_the_wrong_class_count():
    process = P.MaskedDiffusion(4)
    network = lambda x, t, cond=None: jnp.zeros(x.shape + (5,))  # noqa: E731
    with pytest.raises(ValueError, match="K = 4 classes"):
        samplers.sample_masked(network, process, jax.random.key(0), (2, 3), num_steps=4)


@pytest.mark.parametrize("schedule", ["linear", "cosine", "polynomial"])
def test_time_of_alpha_inverts_every_masking_schedule(x64, schedule):
    process = P.MaskedDiffusion(3, schedule=schedule, exponent=2.5)
    t = jnp.linspace(0.0, 1.0, 101)
    np.testing.assert_allclose(process.time_of_alpha(process.alpha(t)), t, atol=1e-7)


def test_next_unmask_time_is_the_latest_of_the_masking_times(x64):
    """The inversion formula against brute force: the maximum of n masking times, each drawn
    from its conditional CDF (1 - alpha_s)/(1 - alpha_t) on [0, t] (two-sample KS test)."""
    process = P.MaskedDiffusion(3, schedule="cosine")
    t, n, draws = 0.8, 5, 20000
    key_a, key_b = jax.random.split(jax.random.key(0))
    fast = process.next_unmask_time(jnp.full((draws,), t), n, jax.random.uniform(key_a, (draws,)))
    single = jax.random.uniform(key_b, (draws, n))
    each = process.time_of_alpha(1.0 - (1.0 - process.alpha(t)) * single)
    brute = jnp.max(each, axis=1)
    grid = np.linspace(0.0, t, 400)
    ks = np.max(np.abs(np.mean(np.asarray(fast)[:, None] <= grid, 0)
                       - np.mean(np.asarray(brute)[:, None] <= grid, 0)))
    assert ks < 1.63 * np.sqrt(2.0 / draws)  # KS at the 1% level
    assert float(jnp.max(fast)) < t


def test_first_hitting_sampler_with_exact_posterior_matches_the_joint(x64):
    """Exact in L = 3 evaluations: the correlated chain's joint is recovered (the one-step ancestral
    sampler, which unmasks all tokens at once, is > 0.2 away under the same test)."""
    process = P.MaskedDiffusion(3, schedule="cosine")
    network = CHAIN.posterior_network(process)
    sample = jax.jit(lambda key: samplers.sample_masked_first_hitting(network, process, key,
                                                                      (20000, 3)))
    tokens = sample(jax.random.key(0))
    assert _total_variation(CHAIN, tokens) < 0.03
    assert int(jnp.sum(tokens == process.mask_index)) == 0
