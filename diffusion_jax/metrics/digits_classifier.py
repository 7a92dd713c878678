"""A small Flax NNX classifier for the 8x8 digits set, used as the digits feature network.

It plays Inception-v3's role for the built-in digits data (Heusel et al. 2017 compute FID on
Inception pool3 features; Salimans et al. 2016 the Inception Score on its class probabilities):
:meth:`DigitsClassifier.features` gives a ``FEATURE_DIM``-d embedding (the penultimate layer, before
its ReLU) for FID / KID / precision-recall and ``__call__`` 10 logits for the Inception Score.
Trained by ``scripts/train_digits_classifier.py``; weights ship in ``assets/digits_classifier.npz``.

Inputs are images ``(N, 8, 8, 1)``: ``uint8`` in ``0..255`` (converted with ``x / 127.5 - 1``) or
floats already in the model range ``[-1, 1]``.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from diffusion_jax.data.pixels import uint8_to_model_range

__all__ = [
    "DigitsClassifier",
    "FEATURE_DIM",
    "DEFAULT_WEIGHTS",
    "images_to_model_range",
    "save_module",
    "load_module",
    "load_digits_classifier",
    "digits_feature_function",
]

FEATURE_DIM = 64
NUM_CLASSES = 10
DEFAULT_WEIGHTS = os.path.join(os.path.dirname(__file__), "assets", "digits_classifier.npz")


def images_to_model_range(images):
    """``uint8`` images to ``[-1, 1]`` floats (``x / 127.5 - 1``); floats are returned as they are."""
    images = jnp.asarray(images)
    if images.dtype == jnp.uint8:
        return uint8_to_model_range(images)
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(f"images must be uint8 or floating point in [-1, 1]; got {images.dtype}")
    return images.astype(jnp.float32)


class DigitsClassifier(nnx.Module):
    """Conv(32) - Conv(64, stride 2) - Dense(``FEATURE_DIM``) - Dense(10) with ReLUs (a LeNet-style
    network, LeCun et al. 1998, sized for 8x8 inputs)."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 32, (3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(32, 64, (3, 3), strides=2, rngs=rngs)
        self.hidden = nnx.Linear(4 * 4 * 64, FEATURE_DIM, rngs=rngs)
        self.head = nnx.Linear(FEATURE_DIM, NUM_CLASSES, rngs=rngs)

    def features(self, images):
        """Penultimate-layer embedding ``(N, FEATURE_DIM)`` (pre-activation)."""
        x = images_to_model_range(images)
        if x.shape[1:] != (8, 8, 1):
            raise ValueError(f"digits images must have shape (N, 8, 8, 1); got {x.shape}")
        x = jax.nn.relu(self.conv1(x))
        x = jax.nn.relu(self.conv2(x))
        return self.hidden(x.reshape(x.shape[0], -1))

    def __call__(self, images):
        """Class logits ``(N, 10)``."""
        return self.head(jax.nn.relu(self.features(images)))


def _flat_state(module):
    _, state = nnx.split(module)
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def save_module(module, path):
    """Write every state leaf of an NNX module to an ``.npz`` keyed by its pytree path."""
    directory = os.path.dirname(os.fspath(path))
    if directory:
        os.makedirs(directory, exist_ok=True)
    np.savez(path, **_flat_state(module))


def load_module(module, path):
    """Return ``module``'s graph with the state read from ``path`` (written by
    :func:`save_module`); ``FileNotFoundError`` / ``ValueError`` name a missing file or key."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"weight file not found: {path}")
    graphdef, state = nnx.split(module)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(state)
    with np.load(path) as data:
        stored = {name: data[name] for name in data.files}
    restored = []
    for key_path, leaf in leaves:
        name = jax.tree_util.keystr(key_path)
        if name not in stored:
            raise ValueError(f"{path} has no array {name!r}")
        if stored[name].shape != leaf.shape:
            raise ValueError(f"{name}: stored shape {stored[name].shape} != model {leaf.shape}")
        restored.append(jnp.asarray(stored[name], leaf.dtype))
    return nnx.merge(graphdef, jax.tree_util.tree_unflatten(treedef, restored))


def load_digits_classifier(path=DEFAULT_WEIGHTS):
    """The trained classifier from ``path`` (default: the committed asset)."""
    return load_module(DigitsClassifier(rngs=nnx.Rngs(0)), path)


def digits_feature_function(model):
    """A jitted ``images -> (features, logits)`` for a :class:`DigitsClassifier` (the graph is
    split once, so repeated calls reuse one compilation per batch shape)."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def apply(state, images):
        classifier = nnx.merge(graphdef, state)
        features = classifier.features(images)
        return features, classifier.head(jax.nn.relu(features))

    return lambda images: apply(state, images)
