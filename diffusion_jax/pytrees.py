"""The one decorator for the library's small frozen dataclasses (processes, parameterisations,
preconditionings, weightings, paths, ...): fields are pytree leaves, so the objects pass through
``jit``, ``vmap``, ``grad`` and Diffrax's ``args``; fields named in ``meta`` are static."""

from __future__ import annotations

import dataclasses
import functools

import jax

__all__ = ["frozen_pytree"]


def frozen_pytree(cls=None, *, meta=()):
    """Freeze ``cls`` (``dataclasses.dataclass(frozen=True)``) and register it with
    ``jax.tree_util.register_dataclass``; use as ``@frozen_pytree`` or
    ``@frozen_pytree(meta=("name",))``."""
    if cls is None:
        return functools.partial(frozen_pytree, meta=meta)
    cls = dataclasses.dataclass(frozen=True)(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    return jax.tree_util.register_dataclass(
        cls, data_fields=[n for n in names if n not in meta], meta_fields=list(meta)
    )
