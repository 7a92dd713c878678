"""Denoisers (and other model callables) as users write them: plain Python functions, closures,
``functools.partial``, registered pytrees, Flax NNX modules or Equinox modules.

Inside ``jit``, ``grad`` and Diffrax's ``args`` only arrays may travel as traced values. Following
Equinox's filtering (``eqx.partition`` / ``eqx.combine``), a callable is split into its array
leaves (traced, differentiated) and everything else (static, hashed by identity), so one code path
serves all of them and gradients with respect to the array leaves are preserved.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx

__all__ = ["split", "merge", "filter_jit"]


def split(fn: Any) -> tuple[Any, Any]:
    """``(arrays, static)`` of a callable: ``arrays`` holds its array leaves (``None`` elsewhere),
    ``static`` the rest; ``merge(arrays, static)`` rebuilds it. A plain function has no arrays."""
    return eqx.partition(fn, eqx.is_array)


def merge(arrays: Any, static: Any) -> Any:
    """Inverse of :func:`split`."""
    return eqx.combine(arrays, static)


def filter_jit(fn, **kwargs):
    """``jax.jit`` that accepts callables and other non-array arguments (Equinox's
    ``filter_jit``: arrays are traced, everything else is static). Use it to jit a sampler call
    whose denoiser is a plain function: ``filter_jit(samplers.heun)(denoiser, noise, sigmas)``."""
    return eqx.filter_jit(fn, **kwargs)
