"""The networks' optional second time input ``network(x, c_noise, cond, c_noise_to)`` (flow maps:
CTM / MeanFlow / shortcut models embed both times and add the embeddings)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from diffusion_jax.networks import (
    MLP,
    FourierEmbedding,
    PositionalEmbedding,
    UNet,
    WithDropoutKey,
    count_params,
)
from diffusion_jax.training import CastNetwork

TINY_UNET = dict(image_shape=(8, 8, 1), base_channels=8, channel_multipliers=(1, 2),
                 num_res_blocks=1, attention_resolutions=(4,), num_classes=3)
SECOND_TIME = ("embed_to", "linear_to_1", "linear_to_2")


def _paths(module):
    return {tuple(str(k) for k in path) for path, _ in nnx.to_flat_state(nnx.state(module))}


def _second_mlp_size(feature_dim, output_dim):
    return feature_dim * output_dim + output_dim + output_dim * output_dim + output_dim


def _perturbed(model, key):
    """``model`` with every parameter moved by ``0.1 N(0, 1)`` (the zero-initialised output
    convolutions would otherwise hide every input but ``x``)."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    leaves = [p + 0.1 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys, strict=True)]
    return nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves), rest)


@pytest.mark.parametrize("build, feature_dim, output_dim", [
    (lambda two_time: MLP(2, hidden_dim=16, num_layers=1, embedding_dim=8, two_time=two_time,
                          rngs=nnx.Rngs(0)), 8, 16),
    (lambda two_time: UNet(**TINY_UNET, two_time=two_time, rngs=nnx.Rngs(0)), 8, 32),
])
def test_two_time_adds_exactly_one_embedding_mlp_and_default_adds_nothing(build, feature_dim,
                                                                          output_dim):
    one = nnx.eval_shape(lambda: build(False))
    two = nnx.eval_shape(lambda: build(True))
    extra = {p for p in _paths(two) if any(name in p for name in SECOND_TIME)}
    assert extra and not any(any(name in p for name in SECOND_TIME) for p in _paths(one))
    assert _paths(two) - extra == _paths(one)  # the one-time tree is untouched
    assert count_params(two) - count_params(one) == _second_mlp_size(feature_dim, output_dim)


@pytest.mark.parametrize("kind, embedding_class", [("fourier", FourierEmbedding),
                                                   ("positional", PositionalEmbedding)])
def test_second_embedding_is_of_the_same_kind_and_is_added(kind, embedding_class):
    model = MLP(2, hidden_dim=16, num_layers=1, embedding_dim=8, embedding=kind, two_time=True,
                rngs=nnx.Rngs(0))
    conditioning = model.conditioning
    assert isinstance(conditioning.embed_to, embedding_class)
    if kind == "fourier":  # its own random frequencies
        assert not np.allclose(conditioning.embed_to.frequencies[...],
                               conditioning.embed.frequencies[...])
    c = jnp.array([0.1, -0.7, 1.3])
    c_to = jnp.array([0.5, 0.2, -0.4])
    emb = lambda a, b: conditioning(a, None, 3, b)  # noqa: E731
    # Additive in the two times: e(a, b) + e(a', b') == e(a, b') + e(a', b).
    np.testing.assert_allclose(emb(c, c_to) + emb(-c, 2 * c_to), emb(c, 2 * c_to) + emb(-c, c_to),
                               rtol=1e-5, atol=1e-5)
    assert float(jnp.max(jnp.abs(emb(c, c_to) - emb(c, 2 * c_to)))) > 1e-3


def test_unet_output_depends_on_second_time_and_wrappers_forward_it():
    model = _perturbed(UNet(**TINY_UNET, two_time=True, rngs=nnx.Rngs(0)), jax.random.key(1))
    x = jax.random.normal(jax.random.key(2), (2, 8, 8, 1))
    apply = jax.jit(lambda net, c_to: net(x, 0.3, jnp.array([0, 3]), c_noise_to=c_to))
    out_a, out_b = apply(model, 0.1), apply(model, 0.9)
    assert float(jnp.max(jnp.abs(out_a - out_b))) > 1e-3
    np.testing.assert_array_equal(apply(WithDropoutKey(model, None), 0.1), out_a)
    bf16 = apply(CastNetwork(model, jnp.bfloat16), 0.1)
    assert bf16.dtype == jnp.float32
    scale = float(jnp.max(jnp.abs(out_a)))
    np.testing.assert_allclose(bf16, out_a, atol=0.05 * scale)


def test_two_time_rejects_bad_inputs_and_is_json_able():
    one = MLP(2, hidden_dim=8, num_layers=1, rngs=nnx.Rngs(0))
    two = MLP(2, hidden_dim=8, num_layers=1, two_time=True, rngs=nnx.Rngs(0))
    x = jnp.zeros((3, 2))
    with pytest.raises(ValueError, match="two_time=False"):
        one(x, 0.0, c_noise_to=0.5)
    with pytest.raises(ValueError, match="c_noise_to"):
        two(x, 0.0)
    with pytest.raises(ValueError, match="c_noise must be a scalar"):
        two(x, 0.0, c_noise_to=jnp.zeros(4))
    with pytest.raises(ValueError, match="two_time must be a bool"):
        MLP(2, two_time="yes", rngs=nnx.Rngs(0))
    kwargs = json.loads(json.dumps({"data_dim": 2, "hidden_dim": 8, "two_time": True}))
    assert MLP(**kwargs, rngs=nnx.Rngs(0))(x, 0.0, c_noise_to=0.5).shape == (3, 2)
