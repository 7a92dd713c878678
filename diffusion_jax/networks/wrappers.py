"""Pytree adapters around networks."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

__all__ = ["WithDropoutKey"]


@dataclasses.dataclass(frozen=True)
class WithDropoutKey:
    """``network(x, c_noise, cond, dropout_key=key)`` as a plain ``(x, c_noise, cond)`` network, so
    a dropout network fits ``PreconditionedDenoiser`` inside a jitted train step with a fresh key
    per step (``key = fold_in(base_key, step)``, as in Karras et al. 2022's training loop). A pytree
    (network and key are leaves), so it passes through ``jit`` and ``grad``.
    """

    network: Any
    key: Any

    def __call__(self, x, c_noise, cond=None):
        return self.network(x, c_noise, cond, dropout_key=self.key)


jax.tree_util.register_dataclass(WithDropoutKey, data_fields=["network", "key"], meta_fields=[])
