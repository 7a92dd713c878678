"""Tests for diffusion_jax.networks: embeddings, the residual MLP and the DDPM++-style U-Net."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from diffusion_jax.denoisers import EDMPreconditioning, PreconditionedDenoiser
from diffusion_jax.networks import (
    MLP,
    AttentionBlock,
    FourierEmbedding,
    PositionalEmbedding,
    UNet,
    WithDropoutKey,
    count_params,
    group_count,
)
from diffusion_jax.networks.init import CHUNK, chunked_normal, lecun_normal

DIGITS_UNET = dict(image_shape=(8, 8, 1), base_channels=32, channel_multipliers=(1, 2),
                   num_res_blocks=2, attention_resolutions=(4,), num_classes=10)


def _tiny_unet(**overrides):
    """One small U-Net structure shared by the tests, so XLA compiles it as few times as possible:
    two levels (8x8 and 4x4), attention at 4x4, 3 classes + the null class."""
    config = dict(image_shape=(8, 8, 1), base_channels=8, channel_multipliers=(1, 2),
                  num_res_blocks=1, attention_resolutions=(4,), num_classes=3, dropout=0.0)
    config.update(overrides)
    return UNet(**config, rngs=nnx.Rngs(0))


@jax.jit
def _apply(network, x, c_noise, cond):
    """The network called under ``jit`` with the module passed as a pytree argument."""
    return network(x, c_noise, cond)


@jax.jit
def _apply_with_key(network, x, c_noise, key):
    """The network with an explicit dropout key, through the ``WithDropoutKey`` pytree adapter."""
    return WithDropoutKey(network, key)(x, c_noise)


def _randomise(module, name, key):
    """Replace the zero-initialised parameter ``name`` of ``module`` by small random values."""
    param = getattr(module, name)
    param[...] = 0.1 * jax.random.normal(key, param[...].shape)


def _train(model, loss_fn, *, num_steps, learning_rate, optimizer="sgd"):
    """``num_steps`` jitted gradient steps on the model's ``nnx.Param`` state via split/grad/merge.

    Returns the trained model, the losses and the gradients of the first step.
    """
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    transform = (optax.sgd if optimizer == "sgd" else optax.adam)(learning_rate)

    @jax.jit
    def step(params, opt_state):
        loss, grads = jax.value_and_grad(lambda p: loss_fn(nnx.merge(graphdef, p, rest)))(params)
        updates, opt_state = transform.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, grads

    opt_state, losses, first_grads = transform.init(params), [], None
    for _ in range(num_steps):
        params, opt_state, loss, grads = step(params, opt_state)
        losses.append(float(loss))
        first_grads = grads if first_grads is None else first_grads
    return nnx.merge(graphdef, params, rest), losses, first_grads


# -- initialisation ---------------------------------------------------------------------------


def test_chunked_init_is_identical_eager_and_traced_and_lecun_scaled():
    key = jax.random.key(3)
    shape = (3, 3, 16, 2 * CHUNK // 144 + 5)  # spans several chunks, not a multiple of CHUNK
    eager = chunked_normal(key, shape)
    traced = jax.jit(lambda k: chunked_normal(k, shape))(key)
    np.testing.assert_array_equal(eager, traced)
    assert eager.shape == shape and eager.dtype == jnp.float32
    kernel = np.asarray(lecun_normal()(key, (64, 4096)))
    assert abs(kernel.std() - 1 / 8) < 0.002 and abs(kernel.mean()) < 0.002
    # Distinct chunks are independent draws (no repeated block).
    flat = np.asarray(chunked_normal(key, (3 * CHUNK,)))
    assert abs(np.corrcoef(flat[:CHUNK], flat[CHUNK:2 * CHUNK])[0, 1]) < 0.05


# -- embeddings ---------------------------------------------------------------------------------


def test_positional_embedding_closed_form():
    embedding = PositionalEmbedding(6, max_positions=100.0)
    c = jnp.array([0.0, 1.5, -2.0])
    frequencies = 100.0 ** (-np.arange(3) / 3)
    angles = np.asarray(c)[:, None] * frequencies
    expected = np.concatenate([np.cos(angles), np.sin(angles)], axis=1)
    np.testing.assert_allclose(embedding(c), expected, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="even"):
        PositionalEmbedding(5)


def test_fourier_embedding_is_fixed_gaussian_features():
    embedding = FourierEmbedding(64, scale=16.0, rngs=nnx.Rngs(0))
    frequencies = np.asarray(embedding.frequencies[...])
    assert count_params(embedding) == 0  # frequencies are fixed, not trained
    assert abs(frequencies.std() - 16.0) < 16.0 * 0.35  # ~ N(0, 16^2), 32 draws
    c = jnp.array([0.25])
    angles = 2 * math.pi * 0.25 * frequencies
    expected = np.concatenate([np.sin(angles), np.cos(angles)])[None]
    np.testing.assert_allclose(embedding(c), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["positional", "fourier"])
def test_embeddings_distinguish_noise_levels(kind):
    # EDM's c_noise = ln(sigma)/4 for sigma in [0.002, 80] spans about [-1.6, 1.1].
    c = jnp.linspace(-1.6, 1.1, 28)
    if kind == "positional":
        features = PositionalEmbedding(64)(c)
    else:
        features = FourierEmbedding(64, scale=16.0, rngs=nnx.Rngs(1))(c)
    features = np.asarray(features)
    distances = np.linalg.norm(features[:, None] - features[None], axis=-1)
    off_diagonal = distances[~np.eye(len(c), dtype=bool)]
    assert off_diagonal.min() > 0.1  # neighbours 0.1 apart in c_noise stay apart
    if kind == "positional":  # smooth: distance grows with |delta c| over this range
        assert np.all(np.diff(distances[0]) > 0)


# -- MLP ---------------------------------------------------------------------------------------


def test_mlp_starts_as_skip_connection_in_a_preconditioned_denoiser():
    model = MLP(2, hidden_dim=32, num_layers=2, rngs=nnx.Rngs(0))
    denoiser = PreconditionedDenoiser(model, EDMPreconditioning(sigma_data=0.5))
    x = jax.random.normal(jax.random.key(0), (5, 2))
    sigma = jnp.array([0.01, 0.3, 1.0, 4.0, 80.0])
    c_skip = 0.25 / (sigma**2 + 0.25)
    output = jax.jit(lambda d, x, s: d(x, s))(denoiser, x, sigma)
    np.testing.assert_array_equal(output, c_skip[:, None] * x)


def test_mlp_learns_labels_and_null_class_is_the_default():
    model = MLP(2, hidden_dim=32, num_layers=2, embedding="positional", num_classes=2,
                rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (32, 2))
    labels = jnp.arange(32) % 2
    target = jnp.where(labels[:, None] == 0, 1.0, -1.0) * jnp.ones((32, 2))

    def loss_fn(net):
        return jnp.mean((net(x, 0.1, labels) - target) ** 2)

    model, losses, _ = _train(model, loss_fn, num_steps=30, learning_rate=1e-2,
                              optimizer="adam")
    assert losses[-1] < 0.1 * losses[0]
    c_noise = jnp.full((32,), 0.1)
    out_0 = _apply(model, x, c_noise, jnp.zeros(32, jnp.int32))
    out_1 = _apply(model, x, c_noise, jnp.ones(32, jnp.int32))
    assert float(jnp.mean(out_0 - out_1)) > 1.0  # the label selects the sign of the target
    np.testing.assert_array_equal(_apply(model, x, c_noise, None),
                                  _apply(model, x, c_noise, jnp.full(32, 2)))


def test_mlp_bfloat16_compute_keeps_float32_params_and_output():
    x = jax.random.normal(jax.random.key(4), (8, 2))
    outputs = []
    for dtype in (None, jnp.bfloat16):
        model = MLP(2, hidden_dim=32, num_layers=2, dtype=dtype, rngs=nnx.Rngs(0))
        _randomise(model.output_layer, "kernel", jax.random.key(5))
        assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
        outputs.append(_apply(model, x, jnp.linspace(-1.0, 1.0, 8), None))
    assert outputs[1].dtype == jnp.float32
    scale = float(jnp.max(jnp.abs(outputs[0])))
    assert scale > 0.1
    np.testing.assert_allclose(outputs[1], outputs[0], atol=0.05 * scale)  # bf16: ~3 digits


def test_mlp_rejects_bad_inputs():
    unconditional = MLP(2, hidden_dim=8, num_layers=1, rngs=nnx.Rngs(0))
    conditional = MLP(2, hidden_dim=8, num_layers=1, num_classes=3, rngs=nnx.Rngs(0))
    x = jnp.zeros((4, 2))
    with pytest.raises(ValueError, match="num_classes=None"):
        unconditional(x, 0.0, jnp.zeros(4, jnp.int32))
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        conditional(x, 0.0, jnp.array([0, 1, 4, 2]))
    with pytest.raises(ValueError, match="shape"):
        unconditional(jnp.zeros((4, 3)), 0.0)
    with pytest.raises(ValueError, match="c_noise"):
        unconditional(x, jnp.zeros(3))
    with pytest.raises(ValueError, match="unknown noise embedding"):
        MLP(2, embedding="sinusoid", rngs=nnx.Rngs(0))


# -- U-Net -------------------------------------------------------------------------------------


def test_unet_zero_init_gives_c_skip_through_jit():
    model = _tiny_unet()
    denoiser = PreconditionedDenoiser(model, EDMPreconditioning(sigma_data=0.5))
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
    sigma = jnp.array([0.01, 0.5, 2.0, 80.0])
    c_skip = 0.25 / (sigma**2 + 0.25)
    output = jax.jit(lambda d, x, s, cond: d(x, s, cond))(denoiser, x, sigma, jnp.arange(4))
    np.testing.assert_array_equal(output, c_skip[:, None, None, None] * x)
    # A larger 3-level Fourier-embedded colour U-Net: shapes without compiling (eval_shape).
    big = UNet(image_shape=(16, 16, 3), base_channels=8, channel_multipliers=(1, 2, 2),
               num_res_blocks=1, attention_resolutions=(8,), embedding="fourier",
               rngs=nnx.Rngs(1))
    out = jax.eval_shape(lambda m, x: m(x, jnp.zeros(2)), big, jnp.zeros((2, 16, 16, 3)))
    assert out.shape == (2, 16, 16, 3) and out.dtype == jnp.float32
    assert big.up_levels[1].attentions is not None and big.down_levels[0].attentions is None


def test_unet_trains_through_split_grad_merge_and_labels_start_to_matter():
    model = _tiny_unet()
    x = jax.random.normal(jax.random.key(2), (4, 8, 8, 1))
    labels = jnp.array([0, 1, 2, 3])  # 3 = null class
    c_noise = jnp.full((4,), 0.3)
    np.testing.assert_array_equal(_apply(model, x, c_noise, labels), 0.0)

    def loss_fn(net):
        return jnp.mean((net(x, c_noise, labels) - x) ** 2)

    model, losses, grads = _train(model, loss_fn, num_steps=4, learning_rate=1e-2,
                                  optimizer="adam")
    # At init the zero output convolution blocks every gradient but its own.
    assert float(jnp.max(jnp.abs(grads["output_conv"]["kernel"][...]))) > 0.0
    inner = grads["down_levels"][0]["resnets"][0]["conv_1"]["kernel"][...]
    np.testing.assert_array_equal(inner, 0.0)
    assert losses[-1] < losses[0]
    same_x = jnp.broadcast_to(x[:1], x.shape)
    outputs = _apply(model, same_x, c_noise, labels)  # one input, four different labels
    for k in range(1, 4):
        assert float(jnp.max(jnp.abs(outputs[0] - outputs[k]))) > 1e-5
    # Noise levels change the output, and split/merge reproduces the module exactly.
    other_noise = _apply(model, same_x, jnp.array([0.3, -1.0, 0.3, 0.3]), labels)
    assert float(jnp.max(jnp.abs(other_noise[1] - outputs[1]))) > 1e-5
    graphdef, state = nnx.split(model)
    np.testing.assert_array_equal(_apply(nnx.merge(graphdef, state), same_x, c_noise, labels),
                                  outputs)


def test_unet_dropout_train_and_eval_modes():
    model = _tiny_unet(dropout=0.5)
    _randomise(model.output_conv, "kernel", jax.random.key(5))
    for level in model.down_levels:
        for resnet in level.resnets:
            _randomise(resnet.conv_2, "kernel", jax.random.key(6))
    x = jax.random.normal(jax.random.key(6), (4, 8, 8, 1))
    c = jnp.zeros(4)
    first = _apply_with_key(model, x, c, jax.random.key(0))
    again = _apply_with_key(model, x, c, jax.random.key(0))
    other = _apply_with_key(model, x, c, jax.random.key(1))
    np.testing.assert_array_equal(first, again)
    assert float(jnp.max(jnp.abs(first - other))) > 1e-4
    model.eval()
    deterministic = _apply_with_key(model, x, c, jax.random.key(0))
    np.testing.assert_array_equal(deterministic, _apply_with_key(model, x, c, jax.random.key(1)))
    assert float(jnp.max(jnp.abs(deterministic - first))) > 1e-4
    model.train()
    np.testing.assert_array_equal(_apply_with_key(model, x, c, jax.random.key(1)), other)


def test_attention_is_permutation_equivariant_and_global():
    block = AttentionBlock(8, num_heads=2, dtype=None, rngs=nnx.Rngs(0))
    _randomise(block.output, "kernel", jax.random.key(7))
    x = jax.random.normal(jax.random.key(8), (1, 4, 4, 8))
    permutation = np.random.default_rng(0).permutation(16)
    permuted = x.reshape(1, 16, 8)[:, permutation].reshape(1, 4, 4, 8)
    expected = block(x).reshape(1, 16, 8)[:, permutation].reshape(1, 4, 4, 8)
    np.testing.assert_allclose(block(permuted), expected, rtol=1e-5, atol=1e-5)
    # The output at pixel (0, 0) depends on the far corner (3, 3) directly through attention.
    far = x.at[0, 3, 3].add(1.0)
    assert float(jnp.max(jnp.abs(block(far)[0, 0, 0] - block(x)[0, 0, 0]))) > 1e-3


def test_unet_rejects_bad_configs_and_inputs():
    with pytest.raises(ValueError, match="image_shape"):
        UNet(in_channels=1, rngs=nnx.Rngs(0))  # default attention needs resolutions
    with pytest.raises(ValueError, match="divisible"):
        UNet(image_shape=(6, 6, 1), channel_multipliers=(1, 2, 2), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="dropout"):
        UNet(image_shape=(8, 8, 1), dropout=1.0, rngs=nnx.Rngs(0))
    model = _tiny_unet()
    with pytest.raises(ValueError, match="shape"):
        model(jnp.zeros((2, 16, 16, 1)), jnp.zeros(2))
    with pytest.raises(ValueError, match="c_noise"):
        model(jnp.zeros((2, 8, 8, 1)), jnp.zeros(3))
    with pytest.raises(ValueError, match="cond"):
        model(jnp.zeros((2, 8, 8, 1)), jnp.zeros(2), jnp.zeros(3, jnp.int32))
    any_size = UNet(in_channels=1, base_channels=8, channel_multipliers=(1, 2),
                    num_res_blocks=1, attention_resolutions=(), rngs=nnx.Rngs(0))
    out = jax.eval_shape(lambda m, x: m(x, 0.0), any_size, jnp.zeros((1, 12, 12, 1)))
    assert out.shape == (1, 12, 12, 1)
    with pytest.raises(ValueError, match="divisible"):
        any_size(jnp.zeros((1, 7, 8, 1)), 0.0)


def test_group_count_and_digits_config_size():
    assert [group_count(c) for c in (8, 24, 32, 48, 64, 96)] == [8, 24, 32, 24, 32, 32]
    abstract = nnx.eval_shape(lambda: UNet(**DIGITS_UNET, rngs=nnx.Rngs(0)))
    assert 0.5e6 < count_params(abstract) < 2e6
