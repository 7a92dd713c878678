"""Denoisers as users write them: a plain Python function and a pytree (registered dataclass,
Equinox module, Flax NNX module) give the same results and the same gradients with respect to a
parameter in every entry point of the likelihood, the Diffrax solvers, guidance, the losses and
the denoiser adapters."""

import dataclasses
from typing import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from diffusion_jax import denoisers as D
from diffusion_jax import samplers, schedules
from diffusion_jax.guidance import classifier_free
from diffusion_jax.likelihood import bits_per_dim, log_likelihood, process_log_likelihood
from diffusion_jax.losses import denoising_loss, flow_matching_loss
from diffusion_jax.processes import VP

# numpy constants: float64 inside the tests' x64 context
MEAN = np.array([0.5, -0.25])
X = np.array([[0.3, -0.2], [1.1, 0.4], [-0.7, 0.9]])
NOISE = np.array([[0.5, -1.2], [0.3, 0.8], [-1.0, 0.1]])
COND = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])


def _gaussian_denoiser(variance, x, sigma, cond=None):
    """Exact denoiser of ``N(MEAN, variance I)``, shifted by ``0.1 cond`` when conditioned."""
    sigma = jnp.reshape(jnp.broadcast_to(sigma, x.shape[:1]), (-1, 1))
    x0 = MEAN + (x - MEAN) * variance / (variance + sigma**2)
    return x0 if cond is None else x0 + 0.1 * cond


@dataclasses.dataclass(frozen=True)
class DataclassDenoiser:
    variance: jax.Array

    def __call__(self, x, sigma, cond=None):
        return _gaussian_denoiser(self.variance, x, sigma, cond)


jax.tree_util.register_dataclass(DataclassDenoiser, data_fields=["variance"], meta_fields=[])


class EquinoxDenoiser(eqx.Module):
    """An Equinox module with a non-array leaf (a function), which ``jax.jit`` cannot take."""

    variance: jax.Array
    formula: Callable = _gaussian_denoiser

    def __call__(self, x, sigma, cond=None):
        return self.formula(self.variance, x, sigma, cond)


def _plain(variance):
    def denoiser(x, sigma, cond=None):
        return _gaussian_denoiser(variance, x, sigma, cond)

    return denoiser


PYTREES = {"dataclass": DataclassDenoiser, "equinox": EquinoxDenoiser}


def _assert_same_value_and_gradient(objective, make_pytree, make_plain, parameter):
    """``objective(make(parameter))`` and its gradient agree for both forms, and the gradient is
    not zero (so the comparison is not vacuous)."""
    value_tree, grad_tree = jax.value_and_grad(lambda p: objective(make_pytree(p)))(parameter)
    value_plain, grad_plain = jax.value_and_grad(lambda p: objective(make_plain(p)))(parameter)
    np.testing.assert_allclose(value_plain, value_tree, rtol=1e-10)
    np.testing.assert_allclose(grad_plain, grad_tree, rtol=1e-8)
    assert np.all(np.abs(np.asarray(grad_tree)) > 1e-8)


def _log_likelihood(denoiser):
    log_p, _ = log_likelihood(
        denoiser, X, sigma_min=0.05, sigma_max=10.0, divergence="exact", num_steps=12
    )
    return jnp.sum(log_p)


def _process_log_likelihood(denoiser):
    log_p, _ = process_log_likelihood(
        denoiser, X, process=VP(), t_eps=1e-3, divergence="exact", num_steps=12
    )
    return jnp.sum(log_p)


def _bits_per_dim(denoiser):
    x_int = jnp.array([[0, 3], [1, 2], [2, 2]], jnp.int32)
    bpd, _ = bits_per_dim(
        denoiser, x_int, key=jax.random.key(0), num_bits=2, sigma_min=0.05, sigma_max=10.0,
        divergence="hutchinson", num_steps=12,
    )
    return jnp.sum(bpd)


def _probability_flow(denoiser):
    x0, _ = samplers.solve_probability_flow(
        denoiser, NOISE, sigma_max=5.0, sigma_min=0.05, cond=COND,
        stepsize_controller=diffrax.ConstantStepSize(), num_steps=10,
    )
    return jnp.sum(x0 * NOISE)


def _adaptive_probability_flow(denoiser):
    x0, _ = samplers.solve_probability_flow(denoiser, NOISE, sigma_max=5.0, sigma_min=0.05)
    return jnp.sum(x0 * NOISE)


def _reverse_sde(denoiser):
    x0, _ = samplers.solve_reverse_sde(
        denoiser, NOISE, key=jax.random.key(1), sigma_max=5.0, sigma_min=0.05, num_steps=12
    )
    return jnp.sum(x0 * NOISE)


def _guided_probability_flow(denoiser):
    return _probability_flow(classifier_free(denoiser, 2.5))


ENTRY_POINTS = {
    "log_likelihood": _log_likelihood,
    "process_log_likelihood": _process_log_likelihood,
    "bits_per_dim": _bits_per_dim,
    "solve_probability_flow": _probability_flow,
    "solve_probability_flow_adaptive": _adaptive_probability_flow,
    "solve_reverse_sde": _reverse_sde,
    "classifier_free": _guided_probability_flow,
}


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_plain_function_and_pytree_agree_with_gradients(x64, entry):
    kind = sorted(PYTREES)[sorted(ENTRY_POINTS).index(entry) % len(PYTREES)]  # alternate kinds
    _assert_same_value_and_gradient(
        ENTRY_POINTS[entry], PYTREES[kind], _plain, jnp.asarray(0.7)
    )


def test_gradient_reaches_the_pytree_leaves(x64):
    """The gradient with respect to the denoiser itself (``eqx.filter_grad``: it holds a
    function) is its array leaf's gradient."""
    grads = eqx.filter_grad(_probability_flow)(EquinoxDenoiser(jnp.asarray(0.7)))
    expected = jax.grad(lambda v: _probability_flow(_plain(v)))(jnp.asarray(0.7))
    np.testing.assert_allclose(grads.variance, expected, rtol=1e-8)


# -- losses --------------------------------------------------------------------------------------


def _dsm_loss(model):
    return jnp.sum(
        denoising_loss(
            model, X, jax.random.key(2), process=VP(), prediction="x0",
            t_distribution=schedules.UniformTime(), weighting=schedules.EpsilonMSE(),
        )
    )


def _flow_matching(model):
    return jnp.sum(flow_matching_loss(model, X, jax.random.key(3), cond=COND))


@dataclasses.dataclass(frozen=True)
class ScaledVelocity:
    scale: jax.Array

    def __call__(self, x_t, t, cond=None):
        return self.scale * x_t * t[:, None] + cond


jax.tree_util.register_dataclass(ScaledVelocity, data_fields=["scale"], meta_fields=[])


def _plain_velocity(scale):
    return lambda x_t, t, cond=None: scale * x_t * t[:, None] + cond


def test_denoising_loss_with_a_plain_denoiser_in_process_model(x64):
    _assert_same_value_and_gradient(
        _dsm_loss,
        lambda v: D.ProcessModel(DataclassDenoiser(v), VP()),
        lambda v: D.ProcessModel(_plain(v), VP()),
        jnp.asarray(0.7),
    )


def test_flow_matching_loss_with_a_plain_model(x64):
    _assert_same_value_and_gradient(
        _flow_matching, ScaledVelocity, _plain_velocity, jnp.asarray(-0.4)
    )


# -- adapters with a plain-function network --------------------------------------------------


def _network_output(weight, x_in, c_noise):
    return jnp.tanh(weight * x_in) * jnp.cos(c_noise)[:, None]


@dataclasses.dataclass(frozen=True)
class Network:
    weight: jax.Array

    def __call__(self, x_in, c_noise, cond=None):
        return _network_output(self.weight, x_in, c_noise)


jax.tree_util.register_dataclass(Network, data_fields=["weight"], meta_fields=[])


def _plain_network(weight):
    return lambda x_in, c_noise, cond=None: _network_output(weight, x_in, c_noise)


def test_preconditioned_and_process_denoisers_with_plain_networks(x64):
    edm = D.EDMPreconditioning()
    _assert_same_value_and_gradient(
        _probability_flow,
        lambda w: D.PreconditionedDenoiser(Network(w), edm),
        lambda w: D.PreconditionedDenoiser(_plain_network(w), edm),
        jnp.asarray(0.9),
    )
    _assert_same_value_and_gradient(
        _reverse_sde,
        lambda w: D.ProcessDenoiser(Network(w), VP(), "epsilon", 999.0),
        lambda w: D.ProcessDenoiser(_plain_network(w), VP(), D.Epsilon(), 999.0),
        jnp.asarray(0.9),
    )


class NNXNetwork(nnx.Module):
    def __init__(self, rngs):
        self.linear = nnx.Linear(2, 2, param_dtype=jnp.float64, rngs=rngs)

    def __call__(self, x_in, c_noise, cond=None):
        return jnp.tanh(self.linear(x_in)) * jnp.cos(c_noise)[:, None]


def test_nnx_network_in_preconditioned_denoiser_matches_a_plain_function(x64):
    network = NNXNetwork(nnx.Rngs(0))
    edm = D.EDMPreconditioning()

    def plain(kernel, bias):
        return lambda x_in, c_noise, cond=None: jnp.tanh(x_in @ kernel + bias) * jnp.cos(
            c_noise
        )[:, None]

    value_nnx, grads = jax.value_and_grad(
        lambda net: _probability_flow(D.PreconditionedDenoiser(net, edm))
    )(network)
    kernel, bias = network.linear.kernel[...], network.linear.bias[...]
    value_plain, (grad_kernel, grad_bias) = jax.value_and_grad(
        lambda k, b: _probability_flow(D.PreconditionedDenoiser(plain(k, b), edm)), argnums=(0, 1)
    )(kernel, bias)
    np.testing.assert_allclose(value_plain, value_nnx, rtol=1e-10)
    np.testing.assert_allclose(grad_kernel, grads.linear.kernel[...], rtol=1e-8)
    np.testing.assert_allclose(grad_bias, grads.linear.bias[...], rtol=1e-8)
    assert np.max(np.abs(grad_kernel)) > 1e-6


def test_a_plain_function_is_not_retraced_on_the_second_call(x64):
    """The static part is compared by value (the same function object), so Diffrax's and the
    likelihood's jit caches hit: the function's Python body runs only while tracing."""
    traces = [0]

    def denoiser(x, sigma, cond=None):
        traces[0] += 1
        return _gaussian_denoiser(0.7, x, sigma, cond)

    for call in (
        lambda: samplers.solve_probability_flow(
            denoiser, NOISE, sigma_max=5.0, sigma_min=0.05,
            stepsize_controller=diffrax.ConstantStepSize(), num_steps=4, denoise_final=False,
        )[0],
        lambda: log_likelihood(
            denoiser, X, sigma_min=0.05, sigma_max=5.0, divergence="exact", num_steps=4
        )[0],
    ):
        jax.block_until_ready(call())
        traced = traces[0]
        jax.block_until_ready(call())
        assert traces[0] == traced > 0
