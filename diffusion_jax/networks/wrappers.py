"""Pytree adapters around networks, and the one way a network's dropout gets its key."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
from flax import nnx

__all__ = ["WithDropoutKey", "reseed_rng_streams"]


def reseed_rng_streams(network: nnx.Module, key) -> None:
    """Reseed, in place, every RNG stream of the NNX module ``network`` from ``key``: the ``i``-th
    stream name in sorted order gets ``fold_in(key, i)`` (Flax NNX ``nnx.reseed``). With
    ``key = fold_in(base_key, step)`` every step draws fresh dropout masks and a resumed run draws
    the same ones (as in Karras et al. 2022's training loop)."""
    streams = sorted(
        {node.tag for _, node in nnx.iter_graph(network) if isinstance(node, nnx.RngStream)}
    )
    if not streams:
        return
    if key is None:
        raise ValueError("a key is needed to reseed the network's RNG streams for training")
    nnx.reseed(network, **{name: jax.random.fold_in(key, i) for i, name in enumerate(streams)})


@dataclasses.dataclass(frozen=True)
class WithDropoutKey:
    """``network(x, c_noise, cond)`` run on a copy whose RNG streams are reseeded from ``key``
    (:func:`reseed_rng_streams`), so a dropout network fits ``PreconditionedDenoiser`` inside a
    jitted function with a fresh key per call. Dropout follows the network's ``train()`` /
    ``eval()`` mode; ``key=None`` uses the network's own streams. A pytree (network and key are
    leaves), so it passes through ``jit`` and ``grad``.
    """

    network: Any
    key: Any

    def __call__(self, x, c_noise, cond=None, c_noise_to=None):
        network = nnx.clone(self.network)
        if self.key is not None:
            reseed_rng_streams(network, self.key)
        if c_noise_to is None:
            return network(x, c_noise, cond)
        return network(x, c_noise, cond, c_noise_to=c_noise_to)


jax.tree_util.register_dataclass(WithDropoutKey, data_fields=["network", "key"], meta_fields=[])
