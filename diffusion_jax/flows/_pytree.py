"""The one decorator for the flow family's small frozen dataclasses whose fields are all pytree
leaves (``jax.tree_util.register_dataclass``), so they pass through ``jit``, ``vmap``, ``grad``."""

import dataclasses

import jax


def frozen_pytree(cls):
    """Freeze ``cls`` and register every field as a pytree leaf."""
    cls = dataclasses.dataclass(frozen=True)(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    return jax.tree_util.register_dataclass(cls, data_fields=names, meta_fields=[])
