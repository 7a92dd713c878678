"""Autoencoders, VQ and the codec of the latent family: shapes by down-sampling factor, one-line
errors, the scale factor (LDM's scale_by_std) and its round trip, the VQ straight-through
estimator and codebook usage, and a tiny KL autoencoder that learns to reconstruct held-out
digits."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from diffusion_jax import training
from diffusion_jax.data.images import load_digits
from diffusion_jax.data.pixels import uint8_to_model_range
from diffusion_jax.latent import losses
from diffusion_jax.latent.autoencoders import KLAutoencoder
from diffusion_jax.latent.codec import Codec, decode_samples, estimate_scale
from diffusion_jax.latent.vq import (
    VectorQuantizer,
    VQAutoencoder,
    codebook_usage,
    vq_autoencoder_loss,
)


def _tiny(levels=2, latent_channels=2, seed=0):
    return KLAutoencoder(in_channels=1, latent_channels=latent_channels, base_channels=8,
                         channel_multipliers=(1,) * levels, attention=False,
                         rngs=nnx.Rngs(seed))


@pytest.mark.parametrize("levels, factor", [(2, 2), (3, 4), (4, 8)])
def test_downsampling_factor_and_latent_shape(levels, factor):
    autoencoder = _tiny(levels)
    x = jax.random.normal(jax.random.key(0), (2, 16, 24, 1))
    z = autoencoder.encode(x)
    assert autoencoder.downsampling_factor == factor
    assert z.shape == (2, 16 // factor, 24 // factor, 2) == (2, *autoencoder.latent_shape(
        (16, 24, 1)))
    assert autoencoder.decode(z).shape == x.shape


def test_wrong_sizes_are_one_line_errors():
    autoencoder = _tiny(3)  # f = 4
    with pytest.raises(ValueError, match="divisible by the down-sampling factor f = 4"):
        autoencoder.encode(jnp.zeros((1, 10, 8, 1)))
    with pytest.raises(ValueError, match="must have 1 channels"):
        autoencoder.encode(jnp.zeros((1, 8, 8, 3)))
    with pytest.raises(ValueError, match=r"shape \(batch, H, W, C\)"):
        autoencoder.encode(jnp.zeros((8, 8, 1)))
    with pytest.raises(ValueError, match=r"latents must have shape \(batch, h, w, 2\)"):
        autoencoder.decode(jnp.zeros((1, 2, 2, 3)))
    with pytest.raises(ValueError, match="divisible"):
        autoencoder.latent_shape((6, 8, 1))
    codec = Codec(autoencoder, 1.0)
    with pytest.raises(ValueError, match="codec's latents are"):
        decode_samples(codec, jnp.zeros((1, 4, 4, 2)), latent_shape=codec.latent_shape((8, 8, 1)))


def test_posterior_sample_is_mean_plus_std_noise():
    autoencoder = _tiny()
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))
    mean, log_variance = autoencoder.posterior(x)
    key = jax.random.key(2)
    noise = jax.random.normal(key, mean.shape)
    np.testing.assert_allclose(autoencoder.encode(x, key), mean + jnp.exp(log_variance / 2) * noise,
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(autoencoder.encode(x), mean)


def test_estimate_scale_is_inverse_std():
    latents = 3.0 + 2.5 * jax.random.normal(jax.random.key(0), (64, 4, 4, 2))
    np.testing.assert_allclose(estimate_scale(latents), 1.0 / np.std(np.asarray(latents)),
                               rtol=1e-5)
    with pytest.raises(ValueError, match="std 0.0"):
        estimate_scale(jnp.ones((4, 2, 2, 1)))


def test_codec_scale_round_trip_and_missing_scale():
    autoencoder = _tiny()
    x = jax.random.normal(jax.random.key(3), (8, 8, 8, 1))
    codec = Codec(autoencoder).with_estimated_scale(x)
    assert not np.isclose(float(codec.scale), 1.0, rtol=0.05)  # the division matters here
    z = codec.encode(x)
    np.testing.assert_allclose(jnp.std(z), 1.0, rtol=1e-5)
    np.testing.assert_allclose(z, autoencoder.encode(x) * codec.scale, rtol=1e-6)
    # decode undoes the scale: the images of the unscaled autoencoder
    reference = autoencoder.decode(autoencoder.encode(x))
    np.testing.assert_allclose(codec.decode(z), reference, rtol=1e-4, atol=1e-5)
    # jittable with the codec as an argument
    round_trip = jax.jit(lambda c, images: decode_samples(c, c.encode(images)))
    np.testing.assert_allclose(round_trip(codec, x), reference, rtol=1e-4, atol=1e-5)
    for action in (lambda c: c.encode(x), lambda c: c.decode(z)):
        with pytest.raises(ValueError, match="codec has no scale factor"):
            action(Codec(autoencoder))
    with pytest.raises(ValueError, match="positive"):
        codec.with_scale(-1.0)


def test_vq_straight_through_gradient_and_losses():
    quantizer = VectorQuantizer(4, 2, beta=0.25, rngs=nnx.Rngs(0))
    codebook = jnp.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    quantizer.codebook[...] = codebook
    z = jnp.array([[[[0.2, 0.1], [0.9, -0.2]], [[0.1, 0.7], [-0.6, -0.9]]]])  # (1, 2, 2, 2)
    z_q, indices, codebook_loss, commitment_loss = quantizer(z)
    np.testing.assert_array_equal(indices, [[[0, 1], [2, 3]]])
    np.testing.assert_allclose(z_q, codebook[indices])
    squared = jnp.mean((z - codebook[indices]) ** 2)
    np.testing.assert_allclose(codebook_loss, [squared], rtol=1e-6)
    np.testing.assert_allclose(commitment_loss, [0.25 * squared], rtol=1e-6)
    # straight-through: d(sum(g * z_q)) / dz = g
    upstream = jax.random.normal(jax.random.key(0), z.shape)
    gradient = jax.grad(lambda v: jnp.sum(upstream * quantizer(v)[0]))(z)
    np.testing.assert_allclose(gradient, upstream, rtol=1e-6)
    # the codebook term moves only codes (towards z), the commitment term only the encoder output
    grad_z = jax.grad(lambda v: quantizer(v)[2][0])(z)
    np.testing.assert_allclose(grad_z, 0.0)
    grad_z = jax.grad(lambda v: quantizer(v)[3][0])(z)
    np.testing.assert_allclose(grad_z, 0.25 * 2 * (z - codebook[indices]) / z.size, rtol=1e-5)


def test_codebook_usage_perplexity():
    perplexity, used = codebook_usage(jnp.array([0, 1, 2, 3] * 5), 8)
    np.testing.assert_allclose(perplexity, 4.0, rtol=1e-6)
    np.testing.assert_allclose(used, 0.5)
    perplexity, used = codebook_usage(jnp.zeros((3, 4), jnp.int32), 8)
    np.testing.assert_allclose(perplexity, 1.0)
    np.testing.assert_allclose(used, 1 / 8)
    frequencies = np.array([0.5, 0.25, 0.25])
    perplexity, _ = codebook_usage(jnp.array([0, 0, 1, 2]), 3)
    np.testing.assert_allclose(perplexity, math.exp(-np.sum(frequencies * np.log(frequencies))),
                               rtol=1e-6)


def test_vq_autoencoder_decodes_quantised_latents():
    autoencoder = VQAutoencoder(in_channels=1, latent_channels=2, num_codes=8, base_channels=8,
                                channel_multipliers=(1, 1), attention=False, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
    z_e = autoencoder.encode(x)
    z_q = autoencoder.quantizer(z_e)[0]
    np.testing.assert_allclose(autoencoder.decode(z_e), autoencoder.decoder(z_q), rtol=1e-6)
    reconstruction, indices, codebook_loss, commitment_loss = autoencoder(x)
    np.testing.assert_allclose(reconstruction, autoencoder.decode(z_e), rtol=1e-6)
    loss = losses.reconstruction_error(x, reconstruction, kind="l2", reduce="mean")
    np.testing.assert_allclose(vq_autoencoder_loss(autoencoder, x),
                               loss + codebook_loss + commitment_loss, rtol=1e-6)
    assert indices.shape == (2, 4, 4)


def test_kl_autoencoder_reconstructs_held_out_digits():
    """200 Adam steps of a 2-level f = 2 KL autoencoder (2 latent channels: half the pixel count)
    on the 8x8 digits in [-1, 1]: the held-out MSE falls below 0.1 (the data variance is 0.57;
    the untrained model's error is above 1), and the scaled held-out latents have std ~1."""
    train = np.asarray(uint8_to_model_range(load_digits("train")[0]))
    test = jnp.asarray(uint8_to_model_range(load_digits("test")[0]))
    optimizer, _ = training.make_optimizer(learning_rate=3e-3)
    state, parts = training.create_train_state(_tiny(2), optimizer, key=jax.random.key(0))
    step = jax.jit(training.make_train_step(
        parts, lambda net, batch, key: losses.kl_autoencoder_loss(net, batch, key), optimizer))

    def held_out_mse(params):
        autoencoder = training.merge_network(parts, params)
        return float(jnp.mean((autoencoder.decode(autoencoder.encode(test)) - test) ** 2))

    bound = 0.1
    assert held_out_mse(state.params) > bound
    rng = np.random.default_rng(0)
    for _ in range(200):
        state, _ = step(state, train[rng.choice(len(train), 32)])
    assert held_out_mse(state.params) < bound
    codec = Codec(training.merge_network(parts, state.params)).with_estimated_scale(train[:512])
    np.testing.assert_allclose(jnp.std(codec.encode(test)), 1.0, atol=0.1)
