"""Structural types of the library's contracts (DESIGN.md): the denoiser and the sampler."""

from __future__ import annotations

from typing import Any, Protocol

import jax

__all__ = ["Denoiser", "Sampler", "Model"]


class Denoiser(Protocol):
    """``D(x, sigma, cond=None) -> x0_hat`` in the VE frame (Karras et al. 2022, eq. 2): a plain
    function or a pytree (its array leaves are what ``grad`` sees; diffusion_jax.callables)."""

    def __call__(self, x: jax.Array, sigma: jax.Array | float, cond: Any = None) -> jax.Array: ...


class Model(Protocol):
    """``model(x_t, t, cond) -> prediction`` in a process's own frame and time (used by losses)."""

    def __call__(self, x_t: jax.Array, t: jax.Array, cond: Any = None) -> jax.Array: ...


class Sampler(Protocol):
    """``sampler(denoiser, noise, sigmas, *, key=None, cond=None, **options) -> x0``: ``noise`` is
    unit Gaussian, ``sigmas`` a descending grid ending in 0 (its length fixes the step count)."""

    def __call__(
        self,
        denoiser: Denoiser,
        noise: jax.Array,
        sigmas: jax.Array,
        *,
        key: jax.Array | None = None,
        cond: Any = None,
        **options: Any,
    ) -> jax.Array: ...
