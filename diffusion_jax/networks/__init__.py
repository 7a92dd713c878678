"""Flax NNX backbones (they know nothing of sigma; preconditioning wraps them).

``MLP`` for low-dimensional data, ``UNet`` (DDPM++/NCSN++ family) for images, ``EncoderClassifier``
(its encoder half with a pooled head: classifier guidance's noisy classifier), and the noise
embeddings ``FourierEmbedding`` / ``PositionalEmbedding``. Every network is called as
``network(x, c_noise, cond=None)`` and is a pytree usable inside
``diffusion_jax.denoisers.PreconditionedDenoiser``.
"""

from diffusion_jax.networks.classifier import EncoderClassifier
from diffusion_jax.networks.conditioning import EMBEDDINGS, NoiseConditioning, check_labels
from diffusion_jax.networks.conv import with_fast_conv_gradients
from diffusion_jax.networks.embeddings import FourierEmbedding, PositionalEmbedding
from diffusion_jax.networks.layers import group_count
from diffusion_jax.networks.mlp import MLP
from diffusion_jax.networks.unet import AttentionBlock, ResnetBlock, UNet
from diffusion_jax.networks.wrappers import WithDropoutKey, reseed_rng_streams

__all__ = [
    "EMBEDDINGS",
    "AttentionBlock",
    "EncoderClassifier",
    "FourierEmbedding",
    "MLP",
    "NoiseConditioning",
    "PositionalEmbedding",
    "ResnetBlock",
    "UNet",
    "WithDropoutKey",
    "check_labels",
    "count_params",
    "group_count",
    "reseed_rng_streams",
    "with_fast_conv_gradients",
]


def count_params(module):
    """Number of trainable scalars (``nnx.Param`` leaves) in ``module``."""
    import jax
    from flax import nnx

    return sum(leaf.size for leaf in jax.tree.leaves(nnx.state(module, nnx.Param)))
