"""Host-side batching: each process gets its slice of a seeded, epoch-reshuffled global batch,
and :func:`to_global_batch` turns the slices into global ``jax.Array`` s on the mesh.

Batch ``step`` is a pure function of ``(seed, step)``: epoch ``e = step // steps_per_epoch`` uses
the permutation ``numpy.random.default_rng([seed, e])``, so resuming from ``start_step`` sees
exactly the batches the uninterrupted run would have seen, whatever the process count
(the global batch does not depend on how it is split over processes).
"""

from __future__ import annotations

import math

import jax
import numpy as np

__all__ = ["ImageBatches", "make_batch_iterator", "to_global_batch"]


def check_process(process_index, process_count, *, default):
    """``(process_index, process_count)``, ``default`` when both are ``None``; ``ValueError`` for
    one without the other, a count below 1 or an index outside ``[0, count)``."""
    if process_index is None and process_count is None:
        return default
    if process_index is None or process_count is None:
        raise ValueError("give both process_index and process_count, or neither")
    if not (isinstance(process_count, int) and process_count >= 1):
        raise ValueError(f"process_count must be a positive int; got {process_count!r}")
    if not (isinstance(process_index, int) and 0 <= process_index < process_count):
        raise ValueError(f"process_index must lie in [0, {process_count}); got {process_index!r}")
    return process_index, process_count


def _check_arrays(arrays):
    if not isinstance(arrays, dict) or not arrays:
        raise ValueError("arrays must be a non-empty dict of numpy arrays")
    sizes = {key: np.shape(value)[0] if np.ndim(value) else None for key, value in arrays.items()}
    if None in sizes.values() or len(set(sizes.values())) != 1:
        raise ValueError(f"all arrays need the same leading (example) axis; got sizes {sizes}")
    return next(iter(sizes.values()))


class ImageBatches:
    """Deterministic, resumable, per-process batches of a dict of equally long numpy arrays.

    Every step's global batch is ``global_batch_size`` examples of a permutation seeded by
    ``(seed, epoch)`` (PyTorch ``DistributedSampler``-style epoch reshuffling, but sliced per
    global batch so that the union over processes is one global batch); process ``p`` of ``P``
    receives rows ``[p B/P, (p+1) B/P)`` of it. With ``drop_remainder=False`` the last batch of an
    epoch is completed with the epoch's first examples and every batch carries a boolean
    ``"mask"`` marking real (first-visit) examples, so shapes stay fixed for ``jit``.
    Iterating starts at ``start_step`` and never ends; :meth:`batch` gives any step directly.
    """

    def __init__(
        self,
        arrays,
        *,
        global_batch_size,
        seed,
        process_index=None,
        process_count=None,
        shuffle=True,
        drop_remainder=True,
        start_step=0,
    ):
        num_examples = _check_arrays(arrays)
        process_index, process_count = check_process(
            process_index, process_count, default=(jax.process_index(), jax.process_count())
        )
        if not (isinstance(global_batch_size, int) and global_batch_size >= 1):
            raise ValueError(f"global_batch_size must be a positive int; got {global_batch_size!r}")
        if global_batch_size % process_count:
            raise ValueError(
                f"global_batch_size {global_batch_size} is not divisible by process_count "
                f"{process_count}"
            )
        if drop_remainder and global_batch_size > num_examples:
            raise ValueError(
                f"global_batch_size {global_batch_size} exceeds the {num_examples} examples; "
                "use drop_remainder=False or a smaller batch"
            )
        if not (isinstance(start_step, int) and start_step >= 0):
            raise ValueError(f"start_step must be a non-negative int; got {start_step!r}")
        self.arrays = {key: np.asarray(value) for key, value in arrays.items()}
        self.num_examples = num_examples
        self.global_batch_size = global_batch_size
        self.local_batch_size = global_batch_size // process_count
        self.seed = seed
        self.process_index = process_index
        self.process_count = process_count
        self.shuffle = shuffle
        self.drop_remainder = drop_remainder
        self.start_step = start_step
        self._cached_epoch = None
        self._cached_order = None

    @property
    def steps_per_epoch(self):
        """Global batches per pass over the data."""
        if self.drop_remainder:
            return self.num_examples // self.global_batch_size
        return math.ceil(self.num_examples / self.global_batch_size)

    def epoch_order(self, epoch):
        """The example order of ``epoch`` (a seeded permutation, or ``arange`` without shuffle)."""
        if self._cached_epoch != epoch:
            if self.shuffle:
                rng = np.random.default_rng([self.seed, epoch])
                self._cached_order = rng.permutation(self.num_examples)
            else:
                self._cached_order = np.arange(self.num_examples)
            self._cached_epoch = epoch
        return self._cached_order

    def global_indices(self, step):
        """Example indices ``(global_batch_size,)`` and real-example mask of batch ``step``."""
        epoch, position = divmod(step, self.steps_per_epoch)
        order = self.epoch_order(epoch)
        positions = position * self.global_batch_size + np.arange(self.global_batch_size)
        mask = positions < self.num_examples
        return order[positions % self.num_examples], mask

    def batch(self, step):
        """This process's slice of global batch ``step``: a dict of numpy arrays."""
        indices, mask = self.global_indices(step)
        local = slice(self.process_index * self.local_batch_size,
                      (self.process_index + 1) * self.local_batch_size)
        batch = {key: value[indices[local]] for key, value in self.arrays.items()}
        if not self.drop_remainder:
            batch["mask"] = mask[local]
        return batch

    def __iter__(self):
        step = self.start_step
        while True:
            yield self.batch(step)
            step += 1


def make_batch_iterator(arrays, **options):
    """Infinite iterator of per-process batches (dicts of numpy arrays) from ``start_step`` on;
    ``options`` are :class:`ImageBatches`' keywords (``global_batch_size``, ``seed``,
    ``process_index``, ``process_count``, ``shuffle``, ``drop_remainder``, ``start_step``), which
    also fix the exact order (deterministic given ``seed``)."""
    return iter(ImageBatches(arrays, **options))


def _batch_axis_devices(sharding):
    """Number of shards along axis 0 of a ``NamedSharding``."""
    spec = sharding.spec
    if len(spec) == 0 or spec[0] is None:
        return 1
    names = spec[0] if isinstance(spec[0], tuple) else (spec[0],)
    return math.prod(sharding.mesh.shape[name] for name in names)


def to_global_batch(local_batch, sharding):
    """Global ``jax.Array`` s from this process's slices with
    ``jax.make_array_from_process_local_data`` (JAX multi-process guide), sharded along the batch
    axis by the ``NamedSharding`` ``sharding`` (only its first axis spec is used, so images and
    labels share it). The global batch must divide evenly over the batch-axis devices.
    """
    if not isinstance(sharding, jax.sharding.NamedSharding):
        raise ValueError(f"sharding must be a jax.sharding.NamedSharding; got {type(sharding)}")
    num_shards = _batch_axis_devices(sharding)
    batch_spec = jax.sharding.PartitionSpec(*sharding.spec[:1])
    batch_sharding = jax.sharding.NamedSharding(sharding.mesh, batch_spec)
    global_batch = {}
    for key, value in local_batch.items():
        value = np.asarray(value)
        if value.ndim == 0:
            raise ValueError(f"batch entry {key!r} must have a batch axis; got a scalar")
        global_size = value.shape[0] * jax.process_count()
        if global_size % num_shards:
            raise ValueError(
                f"global batch size {global_size} (entry {key!r}) is not divisible by the "
                f"{num_shards} devices on the batch axis {sharding.spec[0]!r}"
            )
        global_batch[key] = jax.make_array_from_process_local_data(batch_sharding, value)
    return global_batch
