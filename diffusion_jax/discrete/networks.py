"""Token networks of the discrete family: ``network(tokens, t, cond=None) -> logits (B, ..., K)``.

Both embed ``num_states`` token ids (data classes plus a mask where the process has one) and
condition on ``c_noise = time_scale * t`` through the library's noise embeddings
(``diffusion_jax.networks.NoiseConditioning``), optionally plus class labels with a null class.
With ``time_conditioning=False`` the output does not depend on ``t`` (MDLM's choice; masked
diffusion's true ``p(x_0 | x_t)`` is time-independent, and the sampler's cache is then exact).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from diffusion_jax.networks import UNet, layers
from diffusion_jax.networks.conditioning import NoiseConditioning

__all__ = ["NETWORKS", "TokenTransformer", "UNetLogits"]


def _positive(**values):
    for name, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int; got {value!r}")


def _noise_input(t, time_conditioning, time_scale, batch):
    t = jnp.asarray(t, jnp.float32)
    if t.ndim == 0:
        t = jnp.broadcast_to(t, (batch,))
    if t.shape != (batch,):
        raise ValueError(f"t must be a scalar or have shape (batch,) = ({batch},); got {t.shape}")
    return time_scale * t if time_conditioning else jnp.zeros_like(t)


def _check_token_input(tokens, num_states, shape):
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"tokens must be integer class indices; got dtype {tokens.dtype}")
    if tuple(tokens.shape[1:]) != tuple(shape):
        raise ValueError(f"tokens must have shape (batch, *{tuple(shape)}); got {tokens.shape}")


class _Block(nnx.Module):
    """Pre-LayerNorm transformer block (Vaswani et al. 2017; Xiong et al. 2020) whose input is
    shifted by a per-block projection of the conditioning vector."""

    def __init__(self, dim, num_heads, mlp_ratio, *, dtype, rngs):
        self.condition = layers.linear(dim, dim, dtype=dtype, rngs=rngs)
        self.norm_1 = layers.layer_norm(dim, dtype=dtype, rngs=rngs)
        self.attention = nnx.MultiHeadAttention(num_heads, dim, qkv_features=dim, out_features=dim,
                                                decode=False, dtype=dtype, rngs=rngs)
        self.norm_2 = layers.layer_norm(dim, dtype=dtype, rngs=rngs)
        self.mlp_in = layers.linear(dim, mlp_ratio * dim, dtype=dtype, rngs=rngs)
        self.mlp_out = layers.linear(mlp_ratio * dim, dim, zero_init=True, dtype=dtype, rngs=rngs)

    def __call__(self, h, emb):
        h = h + self.condition(emb)[:, None, :]
        h = h + self.attention(self.norm_1(h))
        return h + self.mlp_out(jax.nn.gelu(self.mlp_in(self.norm_2(h))))


class TokenTransformer(nnx.Module):
    """Bidirectional transformer over a token grid ``(B, *shape)`` (flattened to a sequence) with
    learned position embeddings, the DDPM-style noise conditioning and a logits head over
    ``num_classes``; the head is zero-initialised, so the model starts at the uniform prediction.
    A small DiT/MDLM-style backbone (Peebles & Xie 2023; Sahoo et al. 2024 use a DiT)."""

    def __init__(self, *, num_states: int, num_classes: int, shape: tuple[int, ...],
                 hidden_dim: int = 128, num_layers: int = 4, num_heads: int = 4,
                 mlp_ratio: int = 4, embedding: str = "positional", embedding_dim: int = 64,
                 time_conditioning: bool = True, time_scale: float = 1000.0,
                 num_labels: int | None = None, dtype=None, rngs: nnx.Rngs):
        shape = tuple(int(s) for s in shape)
        _positive(num_states=num_states, num_classes=num_classes, hidden_dim=hidden_dim,
                  num_layers=num_layers, num_heads=num_heads, mlp_ratio=mlp_ratio)
        if num_classes > num_states:
            raise ValueError(f"num_classes ({num_classes}) exceeds num_states ({num_states})")
        if hidden_dim % num_heads:
            raise ValueError(f"hidden_dim {hidden_dim} is not divisible by num_heads {num_heads}")
        self.num_states, self.num_classes, self.shape = num_states, num_classes, shape
        self.time_conditioning, self.time_scale = time_conditioning, float(time_scale)
        length = 1
        for s in shape:
            length *= s
        self.token_embedding = layers.embed(num_states, hidden_dim, dtype=dtype, rngs=rngs)
        self.position_embedding = nnx.Param(
            0.02 * jax.random.normal(rngs.params(), (length, hidden_dim)))
        self.conditioning = NoiseConditioning(embedding_dim, hidden_dim, embedding=embedding,
                                              num_classes=num_labels, dtype=dtype, rngs=rngs)
        self.blocks = nnx.List([_Block(hidden_dim, num_heads, mlp_ratio, dtype=dtype, rngs=rngs)
                                for _ in range(num_layers)])
        self.output_norm = layers.layer_norm(hidden_dim, dtype=dtype, rngs=rngs)
        self.head = layers.linear(hidden_dim, num_classes, zero_init=True, dtype=dtype, rngs=rngs)

    def __call__(self, tokens, t, cond=None):
        """``tokens (B, *shape)`` int, ``t`` scalar or ``(B,)`` -> logits ``(B, *shape, K)``."""
        _check_token_input(tokens, self.num_states, self.shape)
        batch = tokens.shape[0]
        emb = self.conditioning(_noise_input(t, self.time_conditioning, self.time_scale, batch),
                                cond, batch)
        h = self.token_embedding(tokens.reshape(batch, -1)) + self.position_embedding[...][None]
        for block in self.blocks:
            h = block(h, emb)
        logits = self.head(self.output_norm(h))
        return logits.reshape(tokens.shape + (self.num_classes,)).astype(jnp.float32)


class UNetLogits(nnx.Module):
    """The library's U-Net (``diffusion_jax.networks.UNet``) adapted to categorical pixels:
    tokens ``(B, H, W)`` are embedded to ``channels`` features, the U-Net adds its residual, and a
    zero-initialised 1x1 projection gives ``K`` logits per pixel (Austin et al. 2021 use the
    DDPM U-Net with a per-pixel logits output the same way)."""

    def __init__(self, *, num_states: int, num_classes: int, shape: tuple[int, int],
                 channels: int = 32, base_channels: int = 32,
                 channel_multipliers: tuple[int, ...] = (1, 2), num_res_blocks: int = 1,
                 attention_resolutions: tuple[int, ...] = (), dropout: float = 0.0,
                 embedding: str = "positional", time_conditioning: bool = True,
                 time_scale: float = 1000.0, num_labels: int | None = None, dtype=None,
                 rngs: nnx.Rngs):
        shape = tuple(int(s) for s in shape)
        if len(shape) != 2:
            raise ValueError(f"UNetLogits needs an image token shape (H, W); got {shape}")
        _positive(num_states=num_states, num_classes=num_classes, channels=channels)
        self.num_states, self.num_classes, self.shape = num_states, num_classes, shape
        self.time_conditioning, self.time_scale = time_conditioning, float(time_scale)
        self.token_embedding = layers.embed(num_states, channels, dtype=dtype, rngs=rngs)
        self.unet = UNet(image_shape=shape + (channels,), in_channels=channels,
                         base_channels=base_channels, channel_multipliers=channel_multipliers,
                         num_res_blocks=num_res_blocks,
                         attention_resolutions=attention_resolutions, dropout=dropout,
                         embedding=embedding, num_classes=num_labels, dtype=dtype, rngs=rngs)
        self.head = layers.linear(channels, num_classes, zero_init=True, dtype=dtype, rngs=rngs)

    def __call__(self, tokens, t, cond=None):
        """``tokens (B, H, W)`` int, ``t`` scalar or ``(B,)`` -> logits ``(B, H, W, K)``."""
        _check_token_input(tokens, self.num_states, self.shape)
        c_noise = _noise_input(t, self.time_conditioning, self.time_scale, tokens.shape[0])
        h = self.token_embedding(tokens)
        h = h + self.unet(h, c_noise, cond)
        return self.head(h).astype(jnp.float32)


#: Network classes of this family by the name a model spec stores.
NETWORKS = {"token_transformer": TokenTransformer, "unet_logits": UNetLogits}
