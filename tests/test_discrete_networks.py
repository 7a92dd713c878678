"""Token networks and categorical data of the discrete family."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from diffusion_jax.discrete import data
from diffusion_jax.discrete.networks import TokenTransformer, UNetLogits


def test_digits_tokens_are_the_original_17_levels():
    from sklearn.datasets import load_digits

    tokens, labels = data.load_digits_tokens("test")
    original = load_digits()
    assert tokens.dtype == np.int32 and tokens.shape[1:] == (8, 8)
    assert tokens.min() == 0 and tokens.max() == 16
    # every test image is one of sklearn's images exactly, with its label
    flat = original.images.reshape(len(original.images), -1).astype(np.int32)
    index = {row.tobytes(): i for i, row in enumerate(flat)}
    for image, label in zip(tokens[:50], labels[:50], strict=True):
        assert original.target[index[image.reshape(-1).tobytes()]] == label
    train, _ = data.load_digits_tokens("train")
    assert len(train) + len(tokens) == 1797


def test_text_split_vocabulary_and_round_trip():
    train, test = data.load_text("train"), data.load_text("test")
    corpus = data.pydoc_corpus()
    assert train + test == corpus and abs(len(test) / len(corpus) - 0.1) < 1e-4
    vocabulary = data.build_vocabulary(corpus)
    assert len(vocabulary) > 90 and list(vocabulary) == sorted(vocabulary)
    ids = data.encode(test[:500], vocabulary)
    assert data.decode(ids, vocabulary) == test[:500]
    windows = data.text_windows(ids, 64)
    assert windows.shape == (7, 64) and data.decode(windows, vocabulary)[1] == test[64:128]
    with pytest.raises(ValueError, match="not in the vocabulary"):
        data.encode("abc\x00", "abc")


def test_transformer_logits_shape_time_dependence_and_errors():
    net = TokenTransformer(num_states=5, num_classes=4, shape=(6,), hidden_dim=32, num_layers=2,
                           num_heads=2, num_labels=3, rngs=nnx.Rngs(0))
    tokens = jnp.array([[0, 1, 2, 3, 4, 4], [4, 4, 4, 0, 1, 2]])
    # zero-initialised head: uniform prediction at init; perturb it to see dependence
    net.head.kernel[...] = jax.random.normal(jax.random.key(1), net.head.kernel.shape)
    out = net(tokens, jnp.array([0.1, 0.9]), jnp.array([0, 3]))
    assert out.shape == (2, 6, 4) and out.dtype == jnp.float32
    assert not np.allclose(net(tokens, 0.1), net(tokens, 0.9))
    assert not np.allclose(net(tokens[:1], 0.5)[0, 0], net(tokens[:1].at[0, 5].set(0), 0.5)[0, 0])
    frozen = TokenTransformer(num_states=5, num_classes=4, shape=(6,), hidden_dim=32,
                              num_layers=1, num_heads=2, time_conditioning=False,
                              rngs=nnx.Rngs(0))
    frozen.head.kernel[...] = 1.0
    np.testing.assert_array_equal(frozen(tokens, 0.1), frozen(tokens, 0.9))
    with pytest.raises(ValueError, match="integer class indices"):
        net(tokens.astype(jnp.float32), 0.5)
    with pytest.raises(ValueError, match="shape"):
        net(tokens[:, :5], 0.5)


def test_unet_logits_on_token_images():
    net = UNetLogits(num_states=18, num_classes=17, shape=(8, 8), channels=16, base_channels=16,
                     channel_multipliers=(1, 2), rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(0), (3, 8, 8), 0, 18)
    out = net(tokens, jnp.full((3,), 0.5))
    assert out.shape == (3, 8, 8, 17)
    np.testing.assert_array_equal(out, 0.0)  # zero-initialised head
    with pytest.raises(ValueError, match="image token shape"):
        UNetLogits(num_states=3, num_classes=2, shape=(8,), rngs=nnx.Rngs(0))
