"""Device mesh, shardings and compilation of the train step.

Data parallelism is written as per-global-batch code: ``jax.jit`` with ``NamedSharding`` over a
``Mesh`` partitions it (GSPMD; Xu et al. 2021), no ``pmap`` or collectives by hand. The mesh has
two axes, ``data`` (batch) and ``model`` (size 1 by default; a ``param_spec`` rule can shard
parameters along it). The same code runs on one CPU, on 8 forced host devices and on several
processes after ``jax.distributed.initialize()``: each process feeds its own rows of the batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = [
    "DATA_AXIS",
    "MODEL_AXIS",
    "make_mesh",
    "replicated",
    "batch_sharding",
    "state_shardings",
    "check_batch_size",
    "local_batch_size",
    "place_state",
    "shard_batch",
    "compile_train_step",
]

DATA_AXIS = "data"
MODEL_AXIS = "model"


def make_mesh(data: int = -1, model: int = 1, *, devices=None) -> Mesh:
    """A ``(data, model)`` device mesh over all (global) devices; ``-1`` takes what is left
    (Xu et al. 2021, "GSPMD"; JAX ``jax.sharding.Mesh``)."""
    devices = list(jax.devices() if devices is None else devices)
    if model < 1:
        raise ValueError(f"model axis size must be >= 1; got {model}")
    if data == -1:
        if len(devices) % model:
            raise ValueError(f"{len(devices)} devices do not split into a model axis of {model}")
        data = len(devices) // model
    if data < 1 or data * model != len(devices):
        raise ValueError(
            f"mesh (data={data}, model={model}) needs {data * model} devices; have {len(devices)}"
        )
    return Mesh(np.asarray(devices, dtype=object).reshape(data, model), (DATA_AXIS, MODEL_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding that keeps a full copy on every device of ``mesh``."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, *, stacked: bool = False) -> NamedSharding:
    """Batch axis split over ``data`` (axis 0, or axis 1 of a multi-step stack of batches)."""
    spec = PartitionSpec(None, DATA_AXIS) if stacked else PartitionSpec(DATA_AXIS)
    return NamedSharding(mesh, spec)


def state_shardings(state, mesh: Mesh, *, param_spec: Callable | None = None):
    """Shardings for a state pytree: replicated, or ``param_spec(path, leaf) -> PartitionSpec``
    (e.g. split a weight's output axis over ``model``) for leaves where it returns one."""

    def sharding(path, leaf):
        spec = param_spec(path, leaf) if param_spec is not None else None
        return NamedSharding(mesh, spec if spec is not None else PartitionSpec())

    return jax.tree_util.tree_map_with_path(sharding, state)


def check_batch_size(global_batch_size: int, mesh: Mesh) -> int:
    """Raise ``ValueError`` unless the global batch splits evenly over the ``data`` axis and over
    the processes; return the per-process batch size."""
    data_size = mesh.shape[DATA_AXIS]
    if global_batch_size <= 0 or global_batch_size % data_size:
        raise ValueError(
            f"global batch size {global_batch_size} is not divisible by the {data_size} devices "
            f"of the mesh's data axis; choose a multiple of {data_size}"
        )
    return local_batch_size(global_batch_size)


def local_batch_size(global_batch_size: int) -> int:
    """Rows of the global batch that this process feeds (``global / process_count``)."""
    count = jax.process_count()
    if global_batch_size % count:
        raise ValueError(
            f"global batch size {global_batch_size} is not divisible by {count} processes"
        )
    return global_batch_size // count


def _is_key(leaf) -> bool:
    return hasattr(leaf, "dtype") and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _place_leaf(path, leaf, sharding):
    if _is_key(leaf):
        data = _place_leaf(path, jax.random.key_data(leaf), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
    host = np.asarray(leaf)
    if host.dtype == object:
        raise ValueError(
            f"leaf {jax.tree_util.keystr(path)} is a {type(leaf).__name__}, not an array; a plain "
            "function or module holding one must be split first (diffusion_jax.callables.split)"
        )
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def place_state(state, shardings):
    """Put a host-identical pytree onto its global ``shardings`` (works across processes: every
    process provides the same full value, as for a freshly initialised or restored state, or a
    frozen teacher placed on ``state_shardings(teacher, mesh)``)."""
    return jax.tree_util.tree_map_with_path(_place_leaf, state, shardings)


def _batch_axis(sharding: NamedSharding) -> int | None:
    """The first array axis that ``sharding`` splits (``None`` when it splits none)."""
    return next((axis for axis, names in enumerate(sharding.spec) if names is not None), None)


def _shards_along(sharding: NamedSharding, axis: int) -> int:
    names = sharding.spec[axis]
    names = names if isinstance(names, tuple) else (names,)
    return math.prod(sharding.mesh.shape[name] for name in names)


def shard_batch(local_batch, sharding: NamedSharding):
    """Global ``jax.Array``s from each process's rows of the batch (JAX
    ``make_array_from_process_local_data``); the global batch is the processes' rows in order.

    ``sharding`` is :func:`batch_sharding` (axis 0, or axis 1 of a multi-step stack) or any
    ``NamedSharding``; its spec is cut to each entry's rank, so images and labels share one. The
    global batch must split evenly over the devices of the batch axis.
    """
    if not isinstance(sharding, NamedSharding):
        raise ValueError(f"sharding must be a jax.sharding.NamedSharding; got {type(sharding)}")
    axis = _batch_axis(sharding)

    def place(path, value):
        value = np.asarray(value)
        name = jax.tree_util.keystr(path)
        if axis is not None:
            if value.ndim <= axis:
                raise ValueError(
                    f"batch entry {name} has shape {value.shape}; the sharding splits its axis "
                    f"{axis}, so it needs at least {axis + 1} axes"
                )
            global_size = value.shape[axis] * jax.process_count()
            shards = _shards_along(sharding, axis)
            if global_size % shards:
                raise ValueError(
                    f"global batch size {global_size} (entry {name}) is not divisible by the "
                    f"{shards} devices on the batch axis {sharding.spec[axis]!r}"
                )
        entry = NamedSharding(sharding.mesh, PartitionSpec(*tuple(sharding.spec)[: value.ndim]))
        return jax.make_array_from_process_local_data(entry, value)

    return jax.tree_util.tree_map_with_path(place, local_batch)


def compile_train_step(
    step: Callable, state_sharding, data_sharding: NamedSharding, *, frozen_sharding=None
):
    """``jax.jit`` of ``step(state, batch)`` with the state donated and kept on its shardings and
    the batch split over ``data``; metrics come back replicated.

    With ``frozen_sharding`` (a sharding or pytree of them for the frozen pytree, e.g.
    ``replicated(mesh)``) the compiled function is ``step(state, batch, frozen)``: the frozen
    networks (a distillation teacher) are an argument of every call, never donated or returned.
    """
    metrics_sharding = NamedSharding(data_sharding.mesh, PartitionSpec())
    in_shardings = (state_sharding, data_sharding)
    if frozen_sharding is not None:
        in_shardings += (frozen_sharding,)
    return jax.jit(
        step,
        in_shardings=in_shardings,
        out_shardings=(state_sharding, metrics_sharding),
        donate_argnums=0,
    )
