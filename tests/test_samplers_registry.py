"""The sampler registry (``samplers.SAMPLERS``, ``samplers.get``) is the one table: every entry is
exported under its name, its declared NFE is the number of denoiser evaluations actually made,
its options exist in the function's signature, and every sampler takes plain Python functions
as well as pytrees (equal results and gradients) and reports each step to a callback."""

import dataclasses
import inspect
import pathlib

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import samplers
from diffusion_jax.analytic import GaussianMixture
from diffusion_jax.callables import filter_jit

NAMES = [info.name for info in samplers.SAMPLERS]
KEY = jax.random.key(5)


def _mixture():
    means = jnp.array([[1.0, -1.0], [-1.5, 0.5], [0.2, 1.5]])
    return GaussianMixture.create(means, variances=jnp.array([0.3, 0.1, 0.2]))


def _key_for(info):
    return {"key": KEY} if info.stochastic else {}


def test_registry_is_an_immutable_table_of_unique_exported_samplers():
    assert isinstance(samplers.SAMPLERS, tuple) and len(set(NAMES)) == len(NAMES)
    expected = {"euler", "heun", "lms", "ipndm", "unipc", "deis", "dpm_solver_2", "dpm_solver_3",
                "dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde", "dpmpp_3m_sde", "ddim", "ancestral",
                "edm_stochastic", "euler_maruyama", "predictor_corrector"}
    assert set(NAMES) == expected
    for info in samplers.SAMPLERS:
        assert getattr(samplers, info.name) is info.fn and info.name in samplers.__all__
        assert samplers.get(info.name) is info
        with pytest.raises(dataclasses.FrozenInstanceError):
            info.order = 5
        parameters = inspect.signature(info.fn).parameters
        for option in info.options + samplers.COMMON_KEYWORDS:
            assert parameters[option].kind is inspect.Parameter.KEYWORD_ONLY, (info.name, option)
        declared = set(info.options) | set(samplers.COMMON_KEYWORDS)
        assert set(list(parameters)[3:]) == declared, info.name  # no undeclared option
        for variant in info.variants:
            assert set(variant.options) <= set(info.options), (info.name, variant.options)


def test_get_names_the_known_samplers():
    with pytest.raises(ValueError, match="unknown sampler 'eulr'; expected one of deis, ") as error:
        samplers.get("eulr")
    assert "\n" not in str(error.value)


def _counting(denoiser, counter):
    """``denoiser`` that adds the batch size of every call to ``counter`` at run time."""

    def record(batch):
        counter.append(int(batch))

    def counted(x, sigma, cond=None):
        jax.debug.callback(record, x.shape[0])
        return denoiser(x, sigma, cond)

    return counted


@pytest.mark.parametrize("name", NAMES)
def test_declared_nfe_is_the_number_of_evaluations(name):
    info = samplers.get(name)
    mixture, noise = _mixture(), jax.random.normal(jax.random.key(0), (4, 2))
    settings = [({}, info.nfe)]
    settings += [(dict(v.options), v.nfe) for v in info.variants if v.nfe is not info.nfe]
    for options, nfe in settings:
        for num_steps in (1, 3):
            counter = []
            sigmas = samplers.karras_sigmas(num_steps, 0.05, 5.0)
            jax.block_until_ready(
                filter_jit(info.fn)(
                    _counting(mixture, counter), noise, sigmas, **options, **_key_for(info)
                )
            )
            assert len(counter) == nfe(num_steps), (name, options, num_steps)
    assert info.steps_for_nfe(info.nfe(7)) == 7


class Denoiser(eqx.Module):
    """A pytree denoiser: the mixture means are its array leaf."""

    means: jax.Array

    def __call__(self, x, sigma, cond=None):
        return GaussianMixture.create(self.means, variances=jnp.array([0.3, 0.2]))(x, sigma)


@pytest.mark.parametrize("name", NAMES)
def test_plain_function_and_pytree_give_equal_samples_and_gradients(name):
    info = samplers.get(name)
    means = jnp.array([[1.0, -1.0], [-1.5, 0.5]])
    noise = jax.random.normal(jax.random.key(0), (3, 2))
    sigmas = samplers.karras_sigmas(4, 0.05, 5.0)
    weights = jax.random.normal(jax.random.key(1), (3, 2))
    options = _key_for(info)

    def pytree_objective(denoiser):
        return jnp.sum(weights * info.fn(denoiser, noise, sigmas, **options))

    def plain_objective(means):
        def denoiser(x, sigma, cond=None):  # a plain closure: no pytree at all
            return Denoiser(means)(x, sigma)

        return jnp.sum(weights * info.fn(denoiser, noise, sigmas, **options))

    pytree_value, pytree_grad = filter_jit(eqx.filter_value_and_grad(pytree_objective))(
        Denoiser(means)
    )
    plain_value, plain_grad = jax.jit(jax.value_and_grad(plain_objective))(means)
    np.testing.assert_allclose(plain_value, pytree_value, rtol=1e-6)
    np.testing.assert_allclose(plain_grad, pytree_grad.means, rtol=1e-5, atol=1e-6)
    assert float(jnp.max(jnp.abs(plain_grad))) > 0
    # a plain function passed as an argument through filter_jit
    plain = lambda x, s, c=None: Denoiser(means)(x, s)  # noqa: E731
    sample = filter_jit(info.fn)(plain, noise, sigmas, **options)
    np.testing.assert_allclose(jnp.sum(weights * sample), pytree_value, rtol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_callback_reports_every_step_under_jit(name):
    info = samplers.get(name)
    mixture = _mixture()
    noise = jax.random.normal(jax.random.key(0), (4, 2))
    sigmas = samplers.karras_sigmas(5, 0.05, 5.0)
    reports = []
    run = jax.jit(lambda d, n, s: info.fn(d, n, s, callback=reports.append, return_trajectory=True,
                                          **_key_for(info)))
    x0, trajectory = run(mixture, noise, sigmas)
    jax.effects_barrier()
    reports.sort(key=lambda r: r["i"])
    assert [r["i"] for r in reports] == list(range(5)), name
    for r in reports:
        i = r["i"]
        np.testing.assert_allclose(r["sigma"], sigmas[i], rtol=1e-6)
        np.testing.assert_allclose(r["sigma_next"], sigmas[i + 1], rtol=1e-6)
        np.testing.assert_allclose(r["x"], trajectory[i], rtol=1e-6, atol=1e-6)
        if r["x0_hat"] is not None and name not in ("unipc", "edm_stochastic"):
            # the denoiser output at the state the step starts from
            np.testing.assert_allclose(r["x0_hat"], mixture(trajectory[i], sigmas[i]),
                                       rtol=1e-4, atol=1e-5)
    assert reports[-1]["sigma_next"] == 0.0
    np.testing.assert_allclose(trajectory[-1], x0)


def test_docs_table_is_the_registry():
    docs = (pathlib.Path(__file__).parents[1] / "docs" / "samplers.md").read_text()
    assert samplers.registry.markdown_table() in docs
