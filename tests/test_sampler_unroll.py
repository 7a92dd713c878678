"""The scan options of every sampler (``unroll``, ``checkpoint``) change speed and memory, never
the result: outputs, trajectories and gradients equal the plain scan's on the analytic mixture
(x64), jit / vmap / grad hold, rematerialisation keeps the residuals of the backward pass at the
size of the carry, and bad values are one-line errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import samplers
from diffusion_jax.analytic import GaussianMixture

KEY = jax.random.key(3)
# Samplers with different carries: none (Heun), a history and a warm-up step (3M), per-step
# inputs and its own final step (UniPC), noise drawn per step (SDE).
CASES = {
    "heun": {},
    "dpmpp_3m": {"singlestep_warmup": True},
    "unipc": {},
    "dpmpp_2m_sde": {"key": KEY},
}
SETTINGS = [
    {"unroll": 1, "checkpoint": True},
    {"unroll": 3, "checkpoint": False},
    {"unroll": True, "checkpoint": jax.checkpoint_policies.dots_with_no_batch_dims_saveable},
]


def _mixture(means):
    return GaussianMixture.create(means, variances=jnp.array([0.3, 0.2]))


def _problem(dtype=jnp.float64):
    means = jnp.array([[1.0, -1.0], [-1.5, 0.5]], dtype)
    noise = jax.random.normal(jax.random.key(0), (3, 2), dtype)
    weights = jax.random.normal(jax.random.key(1), (3, 2), dtype)
    return means, noise, weights, samplers.karras_sigmas(7, 0.05, 5.0)


def _value_and_grad(name, options, scan):
    means, noise, weights, sigmas = _problem()
    sampler = samplers.get(name).fn

    def objective(means):
        x0 = sampler(_mixture(means), noise, sigmas, **options, **scan)
        return jnp.sum(weights * x0), x0

    (_, x0), gradient = jax.value_and_grad(objective, has_aux=True)(means)
    return x0, gradient


@pytest.mark.parametrize("name", sorted(CASES))
def test_outputs_and_gradients_do_not_depend_on_the_scan_options(x64, name):
    reference_x0, reference_gradient = _value_and_grad(
        name, CASES[name], {"unroll": 1, "checkpoint": False}
    )
    assert float(jnp.max(jnp.abs(reference_gradient))) > 1e-3  # a gradient that can differ
    for scan in SETTINGS:
        x0, gradient = _value_and_grad(name, CASES[name], scan)
        np.testing.assert_allclose(x0, reference_x0, rtol=1e-12, atol=1e-12, err_msg=str(scan))
        np.testing.assert_allclose(
            gradient, reference_gradient, rtol=1e-10, atol=1e-12, err_msg=str(scan)
        )


def test_trajectory_and_callbacks_are_those_of_the_plain_scan(x64):
    means, noise, _, sigmas = _problem()
    runs = []
    for scan in ({"unroll": 1}, {"unroll": 4, "checkpoint": True}):
        seen = []
        x0, trajectory = samplers.dpmpp_3m(
            _mixture(means), noise, sigmas, return_trajectory=True,
            callback=lambda info, seen=seen: seen.append((info["i"], np.asarray(info["x"]))),
            **scan,
        )
        runs.append((x0, trajectory, sorted(seen, key=lambda item: item[0])))
    (x0_a, trajectory_a, seen_a), (x0_b, trajectory_b, seen_b) = runs
    np.testing.assert_allclose(trajectory_b, trajectory_a, rtol=1e-12, atol=1e-12)
    assert [i for i, _ in seen_b] == list(range(sigmas.shape[0] - 1))
    for (_, x_a), (_, x_b) in zip(seen_a, seen_b, strict=True):
        np.testing.assert_allclose(x_b, x_a, rtol=1e-12, atol=1e-12)


def test_jit_and_vmap_of_grad_hold_with_unroll_and_checkpoint():
    means, noise, weights, sigmas = _problem(jnp.float32)

    def per_example(means, noise, weights):
        x0 = samplers.heun(_mixture(means), noise[None], sigmas, unroll=2, checkpoint=True)
        return jnp.sum(weights * x0[0])

    grad = jax.grad(per_example)
    batched = jax.jit(jax.vmap(grad, in_axes=(None, 0, 0)))(means, noise, weights)
    one_by_one = jnp.stack([grad(means, n, w) for n, w in zip(noise, weights, strict=True)])
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        jnp.sum(batched, axis=0), jax.grad(lambda m: jnp.sum(jax.vmap(
            per_example, in_axes=(None, 0, 0))(m, noise, weights)))(means),
        rtol=1e-5, atol=1e-6,
    )


def _residual_size(checkpoint, num_steps, width=64):
    """Number of array elements the backward pass of Euler keeps through a denoiser with a
    hidden layer of ``width`` units (the residuals are the leaves of ``jax.vjp``'s function)."""
    weights_in = jax.random.normal(jax.random.key(0), (2, width)) / 2.0
    weights_out = jax.random.normal(jax.random.key(1), (width, 2)) / width

    def denoiser(x, sigma, cond=None):
        hidden = jnp.tanh(x @ weights_in + sigma[..., None])
        return x / (1.0 + sigma[..., None] ** 2) + hidden @ weights_out

    noise = jax.random.normal(jax.random.key(2), (16, 2))
    sigmas = samplers.karras_sigmas(num_steps, 0.05, 5.0)
    _, backward = jax.vjp(
        lambda noise: samplers.euler(denoiser, noise, sigmas, checkpoint=checkpoint), noise
    )
    return sum(leaf.size for leaf in jax.tree.leaves(backward))


def test_checkpoint_keeps_only_the_carry_per_step():
    growth = {c: _residual_size(c, 20) - _residual_size(c, 10) for c in (False, True)}
    carry = 16 * 2  # one state per step
    # Without rematerialisation every step keeps its hidden activations (16 x 64 and more);
    # with it only the carry and the step's two noise levels.
    assert growth[False] >= 10 * 16 * 64, growth
    assert growth[True] <= 10 * (carry + 4), growth


def _compiled_gradient_temp_bytes(scan, num_steps=12, width=256):
    """XLA's temporary buffer size of the compiled gradient of Euler through a one-hidden-layer
    denoiser (batch 64, ``width`` hidden units)."""
    weights_in = jax.random.normal(jax.random.key(0), (2, width)) / 2.0
    weights_out = jax.random.normal(jax.random.key(1), (width, 2)) / width
    noise = jax.random.normal(jax.random.key(2), (64, 2))
    sigmas = samplers.karras_sigmas(num_steps, 0.05, 5.0)

    def loss(weights_in):
        def denoiser(x, sigma, cond=None):
            hidden = jnp.tanh(x @ weights_in + sigma[..., None])
            return x / (1.0 + sigma[..., None] ** 2) + jnp.tanh(hidden) @ weights_out

        return jnp.sum(samplers.euler(denoiser, noise, sigmas, **scan) ** 2)

    compiled = jax.jit(jax.grad(loss)).lower(weights_in).compile()
    analysis = compiled.memory_analysis()
    if analysis is None:
        pytest.skip("this backend reports no memory analysis")
    return analysis.temp_size_in_bytes


@pytest.mark.parametrize("unroll", [1, 4, True])
def test_checkpoint_lowers_the_compiled_gradient_memory(unroll):
    # The buffers XLA assigns, not only the jaxpr's residuals: unrolled steps need the
    # optimisation barrier, or XLA schedules the recomputation next to the forward pass and the
    # memory is that of no checkpointing (``unroll=True`` once lost it because ``True == 1``).
    plain = _compiled_gradient_temp_bytes({"unroll": unroll})
    remat = _compiled_gradient_temp_bytes({"unroll": unroll, "checkpoint": True})
    assert remat < 0.6 * plain, (plain, remat)


@pytest.mark.parametrize(
    "scan, message",
    [
        ({"unroll": 0}, "unroll must be None, True or an int >= 1; got 0"),
        ({"unroll": "8"}, "unroll must be None, True or an int >= 1; got '8'"),
        ({"unroll": False}, "unroll must be None, True or an int >= 1; got False"),
        ({"checkpoint": "yes"}, "checkpoint must be True, False or a jax.checkpoint_policies"),
    ],
)
def test_bad_scan_options_are_one_line_errors(scan, message):
    means, noise, _, sigmas = _problem(jnp.float32)
    with pytest.raises(ValueError, match=message) as error:
        samplers.euler(_mixture(means), noise, sigmas, **scan)
    assert "\n" not in str(error.value)
