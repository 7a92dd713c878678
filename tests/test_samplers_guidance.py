"""Classifier-free guidance as a denoiser transform, with ``cond`` plumbed through samplers."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import samplers
from diffusion_jax.analytic import GaussianMixture
from diffusion_jax.guidance import classifier_free

MEANS = jnp.array([[2.0, 0.0], [-2.0, 0.0]])


@dataclasses.dataclass(frozen=True)
class ConditionalMixture:
    """Exact conditional denoiser: ``cond`` holds per-example component weights ``(batch, K)``;
    ``cond=None`` is the unconditional (uniform) mixture."""

    means: jax.Array

    def __call__(self, x, sigma, cond=None):
        if cond is None:
            return GaussianMixture.create(self.means, variances=0.05)(x, sigma)
        sigma = jnp.broadcast_to(jnp.asarray(sigma, x.dtype), x.shape[:1])

        def one(x, sigma, weights):
            mixture = GaussianMixture.create(self.means, variances=0.05, weights=weights)
            return mixture(x, sigma)

        return jax.vmap(one)(x, sigma, cond)


jax.tree_util.register_dataclass(ConditionalMixture, data_fields=["means"], meta_fields=[])


def test_guidance_formula_and_limits():
    denoiser = ConditionalMixture(MEANS)
    x = jnp.array([[0.3, 0.1], [-0.2, 0.5]])
    cond = jnp.array([[0.9, 0.1], [0.9, 0.1]])
    conditional, unconditional = denoiser(x, 1.0, cond), denoiser(x, 1.0)
    guided = classifier_free(denoiser, 3.0)(x, 1.0, cond)
    np.testing.assert_allclose(guided, unconditional + 3.0 * (conditional - unconditional), rtol=1e-6)
    np.testing.assert_allclose(classifier_free(denoiser, 1.0)(x, 1.0, cond), conditional, rtol=1e-6)
    np.testing.assert_allclose(classifier_free(denoiser, 0.0)(x, 1.0, cond), unconditional, rtol=1e-6)


def test_guided_sampling_with_cond_plumbed_through_jit():
    denoiser = ConditionalMixture(MEANS)
    noise = jax.random.normal(jax.random.key(0), (400, 2))
    cond = jnp.tile(jnp.array([[0.8, 0.2]]), (400, 1))
    sigmas = samplers.karras_sigmas(20, 0.01, 20.0)

    @jax.jit
    def fraction_right(guidance_scale):
        guided = classifier_free(denoiser, guidance_scale)
        x0 = samplers.dpmpp_2m(guided, noise, sigmas, cond=cond)
        return jnp.mean(x0[:, 0] > 0)

    conditional, guided = fraction_right(1.0), fraction_right(4.0)
    assert abs(float(conditional) - 0.8) < 0.07  # the conditional distribution's weight
    assert float(guided) > float(conditional) + 0.1  # guidance sharpens toward the condition
    assert fraction_right._cache_size() == 1  # the scale is traced: no recompile


def test_guidance_scale_must_be_finite():
    denoiser = ConditionalMixture(MEANS)
    for scale in (float("nan"), float("inf"), jnp.array(jnp.nan), "2"):
        with pytest.raises(ValueError, match="guidance_scale must be a finite number"):
            classifier_free(denoiser, scale)


def test_guidance_of_a_plain_function_matches_the_pytree():
    """A plain-function denoiser inside classifier-free guidance, through a jitted sampler."""
    denoiser = ConditionalMixture(MEANS)
    plain = lambda x, sigma, cond=None: denoiser(x, sigma, cond)  # noqa: E731
    noise = jax.random.normal(jax.random.key(1), (8, 2))
    cond = jnp.tile(jnp.array([[0.8, 0.2]]), (8, 1))
    tree_x0, _ = samplers.solve_probability_flow(
        classifier_free(denoiser, 2.0), noise, sigma_max=20.0, sigma_min=0.01, cond=cond
    )
    plain_x0, _ = samplers.solve_probability_flow(
        classifier_free(plain, 2.0), noise, sigma_max=20.0, sigma_min=0.01, cond=cond
    )
    np.testing.assert_allclose(plain_x0, tree_x0, rtol=1e-6)
