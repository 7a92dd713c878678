"""Float32 / half-precision numerics of the samplers (issue: lms's full-order step to 0 amplified
rounding; unipc's small linear solves failed in LAPACK for bfloat16 / float16)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import samplers
from diffusion_jax.analytic import GaussianMixture


def _mixture(dtype):
    means = jnp.array([[1.0, -1.0], [-1.5, 0.5], [0.2, 1.5]], dtype)
    return GaussianMixture.create(means, variances=jnp.array([0.3, 0.1, 0.2], dtype))


@pytest.mark.parametrize("name", ["lms", "ipndm"])
def test_multistep_float32_on_a_fine_grid_matches_float64(name):
    # Before the step to 0 became first order, lms in float32 was off by 3.8e-5 RMS here (its
    # last, full-order step to 0 multiplies differences of nearly equal derivatives).
    sampler = samplers.get(name).fn
    noise = jax.random.normal(jax.random.key(0), (64, 2), jnp.float32)
    sigmas = samplers.karras_sigmas(500, 0.002, 80.0)
    with jax.enable_x64(True):
        reference = np.asarray(
            jax.jit(sampler)(_mixture(jnp.float64), noise.astype(jnp.float64), sigmas)
        )
    result = np.asarray(jax.jit(sampler)(_mixture(jnp.float32), noise, sigmas), np.float64)
    assert np.sqrt(np.mean((result - reference) ** 2)) < 5e-6


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_unipc_runs_in_half_precision(dtype):
    noise = jax.random.normal(jax.random.key(0), (16, 2), jnp.float32)
    sigmas = samplers.karras_sigmas(10, 0.05, 20.0)
    reference = samplers.unipc(_mixture(jnp.float32), noise, sigmas)
    half = jax.jit(samplers.unipc)(_mixture(dtype), noise.astype(dtype), sigmas)
    assert half.dtype == dtype
    np.testing.assert_allclose(np.asarray(half, np.float32), reference, atol=0.1)
