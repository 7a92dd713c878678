"""Checkpoints of a training run: the library's only Orbax user.

A checkpoint step directory holds separate items so that sampling restores only what it needs:

=============  ===============================================================================
``params``     trainable network parameters (float32)
``ema``        dict of EMA parameter copies, one per decay / half-life name
``buffers``    the network's non-trainable variables (e.g. fixed Fourier frequencies)
``opt_state``  optimiser state
``meta``       ``step`` and the raw data of the typed base key
``config``     the run's configuration as JSON
``info``       JSON with the step and the EMA names
``spec``       optional JSON: what rebuilds the denoiser (its content is the recipes' business)
``checksums``  JSON: a SHA-256 digest of every array leaf and of each JSON item
=============  ===============================================================================

Guarantees:

- Saving is asynchronous through Orbax's ``CheckpointManager`` (v0 API), which keeps the last
  ``max_to_keep`` steps and only exposes a step after all its items are written (the checksums
  are an item of the same step, so they are committed with it). A state with a non-finite
  parameter is never saved. Saving a step that already exists is a no-op.
- Every restore path verifies the digests of what it read (checkpoints written before checksums
  existed load unverified). A step whose files cannot be read, or whose digests differ, is
  *unreadable*: restore falls back to the previous step with a one-line warning. Resuming
  training (:func:`restore_train_state`) moves the newer unreadable steps aside, into
  ``WORKDIR/checkpoints_corrupt/<step>_<time>`` (never deleted), once an older step has been
  read, so that the step can be written again and ``max_to_keep`` never prunes the good step in
  favour of a broken one. Read-only loaders (:func:`load_run`, :func:`load_denoiser`,
  :func:`restore_config`) fall back the same way but never move anything.
- Before any array is read, the stored shapes, dtypes and tree paths are compared with the
  target: a mismatch (changed model size, optimiser or EMA names) raises one
  :class:`CheckpointMismatchError` line naming the first differing leaves and moves nothing.

Reading: :func:`restore_train_state` (resume), :func:`load_run` (denoiser, config, spec, step and
EMA name, all from one step), :func:`read_run_info` (the JSON items of one step, to pin the step
before loading), and the older :func:`load_denoiser`, :func:`restore_config`, :func:`restore_spec`.
A failed Orbax read leaves hundreds of lines of asyncio noise behind; the first restore installs
narrow filters that send only those to the debug log.

What is not guaranteed: the digests detect accidental corruption, not tampering (they are stored
beside the data); a step is moved aside only when an older one is readable, so a run whose every
step fails to load (e.g. a broken installation) raises instead of starting over.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import hashlib
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from diffusion_jax.training import TrainState, merge_network, split_network

__all__ = [
    "CheckpointError",
    "CheckpointMismatchError",
    "LoadedRun",
    "make_manager",
    "save",
    "restore_train_state",
    "restore_config",
    "restore_spec",
    "read_run_info",
    "RunInfo",
    "load_run",
    "load_denoiser",
    "is_finite",
]

_LOG = logging.getLogger(__name__)

STATE_ITEMS = ("params", "ema", "buffers", "opt_state", "meta")
JSON_ITEMS = ("config", "info", "spec")
CHECKPOINT_DIR = "checkpoints"
CORRUPT_DIR = "checkpoints_corrupt"
_MAX_DIFFS = 3


class CheckpointError(RuntimeError):
    """No readable checkpoint, or a state that must not be saved."""


class CheckpointMismatchError(CheckpointError):
    """The stored tree (paths, shapes, dtypes) differs from the one being restored."""


class _Unreadable(Exception):
    """A step that cannot be used: ``reason`` is short, ``detail`` goes to the debug log."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


# --------------------------------------------------------------------------------- checksums


class _ChecksumHandler(ocp.JsonCheckpointHandler):
    """Writes the digests of the host copy of a step's arrays as JSON, hashing in Orbax's
    background commit (so the train loop only waits for the device-to-host copy)."""

    async def _save_fn(self, x, directory):
        primary = getattr(self, "_primary_host", 0)
        if primary is not None and jax.process_index() != primary:
            return
        digests = await asyncio.to_thread(_checksums, x["arrays"], x["json"])
        await super()._save_fn(digests, directory)


@ocp.args.register_with_handler(_ChecksumHandler, for_save=True)
@dataclasses.dataclass
class _ChecksumSave(ocp.args.CheckpointArgs):
    item: Any  # {"arrays": {item: host tree}, "json": {item: JSON-able}}


@ocp.args.register_with_handler(_ChecksumHandler, for_restore=True)
@dataclasses.dataclass
class _ChecksumRestore(ocp.args.CheckpointArgs):
    item: Any = None


def _key_name(key) -> str:
    for attribute in ("key", "idx", "name"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def _path_name(path) -> str:
    return "/".join(_key_name(key) for key in path)


def _flat(tree, is_leaf=None) -> dict:
    """``{"a/b/0": leaf}`` over a pytree (dict keys, sequence indices and attribute names)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
    return {_path_name(path): leaf for path, leaf in flat}


def _array_digest(x: np.ndarray) -> str:
    """SHA-256 of an array's dtype, shape and C-order bytes."""
    h = hashlib.sha256(f"{np.dtype(x.dtype).name}{tuple(x.shape)}".encode())
    h.update(np.ascontiguousarray(x).reshape(-1).view(np.uint8))  # no copy of the bytes
    return h.hexdigest()


def _json_digest(obj) -> str:
    """SHA-256 of the canonical JSON text (sorted keys) of a JSON value."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _checksums(arrays: dict, json_items: dict) -> dict:
    return {
        "algorithm": "sha256",
        "arrays": {
            name: {path: _array_digest(x) for path, x in _flat(tree).items()}
            for name, tree in arrays.items()
        },
        "json": {name: _json_digest(obj) for name, obj in json_items.items()},
    }


def _host(x) -> np.ndarray:
    """The whole value of a (possibly multi-host) array on this host."""
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return np.asarray(x)
    if x.is_fully_replicated:
        return np.asarray(x.addressable_data(0))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _host_copy(tree):
    """The host value of every leaf of ``tree`` (device-to-host transfers started together). On
    CPU these are views of the device buffers; JAX then declines to donate those buffers, so a
    donated train step cannot overwrite them while they are hashed."""
    for leaf in jax.tree.leaves(tree):
        if isinstance(leaf, jax.Array) and leaf.is_fully_addressable:
            leaf.copy_to_host_async()
    return jax.tree.map(_host, tree)


def _verify_arrays(name: str, tree, checksums: dict | None) -> None:
    """Raise :class:`_Unreadable` unless every leaf of item ``name`` has its stored digest."""
    if checksums is None:
        return
    stored = checksums["arrays"].get(name)
    if stored is None:
        raise _Unreadable(f"no checksums for {name}")
    for path, leaf in _flat(_host_copy(tree)).items():
        if stored.get(path) != _array_digest(leaf):
            raise _Unreadable(f"checksum mismatch in {name}/{path}")


def _verify_json(name: str, obj, checksums: dict | None) -> None:
    if checksums is not None and checksums["json"].get(name) != _json_digest(obj):
        raise _Unreadable(f"checksum mismatch in {name}")


# ------------------------------------------------------------------------------------ saving


def make_manager(directory, *, max_to_keep: int | None = 3, async_save: bool = True):
    """An Orbax ``CheckpointManager`` on ``directory/checkpoints`` keeping the newest
    ``max_to_keep`` steps (``None`` keeps every step; 0 or less is rejected, since it would delete
    every checkpoint). Orbax v0 API: every save is written, none is skipped while another is in
    flight."""
    if max_to_keep is not None and (
        isinstance(max_to_keep, bool) or not isinstance(max_to_keep, int) or max_to_keep < 1
    ):
        raise ValueError(
            f"max_to_keep must be a positive integer or None (keep all), got {max_to_keep!r}"
        )
    directory = os.path.abspath(os.fspath(directory))
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        enable_async_checkpointing=async_save,
        create=True,
    )
    return ocp.CheckpointManager(os.path.join(directory, CHECKPOINT_DIR), options=options)


def is_finite(tree) -> bool:
    """Whether every floating-point leaf of ``tree`` is finite."""
    leaves = [
        jnp.all(jnp.isfinite(x))
        for x in jax.tree.leaves(tree)
        if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)
    ]
    return bool(jnp.all(jnp.stack(leaves))) if leaves else True


def _state_items(state: TrainState, *, shardings: bool = False) -> dict:
    """The items of a state (or, with ``shardings=True``, of a pytree of its shardings)."""
    key_data = state.key if shardings else jax.random.key_data(state.key)
    return {
        "params": state.params,
        "ema": state.ema,
        "buffers": state.buffers,
        "opt_state": state.opt_state,
        "meta": {"step": state.step, "key_data": key_data},
    }


def save(
    manager, state: TrainState, config: dict, *, spec: dict | None = None, force: bool = False
) -> bool:
    """Save ``state``, ``config`` and the optional model ``spec`` (JSON-able dicts) at
    ``state.step``, asynchronously, with the SHA-256 digests of everything in the same step.

    Blocks only for the device-to-host copy that the digests need (hashing and writing run in
    Orbax's background thread). Raises :class:`CheckpointError` if the params or EMAs are not
    finite (a NaN state is never written). Returns whether a save was started: ``False`` when
    the step already exists (saving twice is a no-op) or Orbax declines it.
    """
    if not (is_finite(state.params) and is_finite(state.ema)):
        raise CheckpointError(f"refusing to save a non-finite state at step {int(state.step)}")
    step = int(state.step)
    if step in manager.all_steps():
        return False
    arrays = {
        name: item
        for name, item in _state_items(state).items()
        if jax.tree.leaves(item)  # Orbax rejects empty items (e.g. a network without buffers)
    }
    json_items = {"config": config, "info": {"step": step, "ema_names": list(state.ema)}}
    if spec is not None:
        json_items["spec"] = spec
    try:  # what is read back is the JSON round trip: digest that
        json_items = json.loads(json.dumps(json_items))
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"config and spec must be JSON-able: {error}") from None
    items = {name: ocp.args.StandardSave(item) for name, item in arrays.items()}
    items.update({name: ocp.args.JsonSave(obj) for name, obj in json_items.items()})
    items["checksums"] = _ChecksumSave({"arrays": _host_copy(arrays), "json": json_items})
    try:
        return manager.save(step, args=ocp.args.Composite(**items), force=force)
    except ocp.checkpoint_manager.StepAlreadyExistsError:
        return False


# --------------------------------------------------------------------------------- restoring


def _abstract(tree, shardings=None):
    """ShapeDtypeStructs of ``tree`` (with ``shardings`` where given) as an Orbax restore target."""

    def leaf(x, sharding=None):
        return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)

    if shardings is None:
        return jax.tree.map(leaf, tree)
    return jax.tree.map(leaf, tree, shardings)


def _step_dir(manager, step: int) -> str:
    return os.path.join(os.fspath(manager.directory), str(step))


def _stored_items(manager, step: int) -> set:
    try:
        return set(os.listdir(_step_dir(manager, step)))
    except OSError as error:
        raise _Unreadable(f"step directory unreadable ({error.strerror})") from None


def _describe(shape, dtype) -> str:
    return f"{tuple(shape)} {np.dtype(dtype).name}"


def _tree_differences(name: str, stored, target) -> list:
    """Human-readable differences between stored Orbax metadata and a target tree."""
    stored_flat = _flat(stored, is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"))
    target_flat = _flat(target)
    diffs = []
    for path in sorted(stored_flat.keys() | target_flat.keys()):
        where = f"{name}/{path}" if path else name
        if path not in target_flat:
            diffs.append(f"{where}: only in the checkpoint")
        elif path not in stored_flat:
            diffs.append(f"{where}: not in the checkpoint")
        else:
            have, want = stored_flat[path], target_flat[path]
            if tuple(have.shape) != tuple(np.shape(want)) or np.dtype(have.dtype) != want.dtype:
                diffs.append(
                    f"{where}: stored {_describe(have.shape, have.dtype)}, "
                    f"expected {_describe(np.shape(want), want.dtype)}"
                )
    return diffs


def _check_structure(manager, step: int, targets: dict) -> None:
    """Compare the stored metadata of array items with ``targets`` (name -> tree, an empty tree
    meaning "not saved") before reading any data. Raises :class:`CheckpointMismatchError`
    naming the first differences; unreadable metadata is :class:`_Unreadable`."""
    present = _stored_items(manager, step)
    diffs = []
    for name, target in targets.items():
        if not jax.tree.leaves(target):
            if name in present:
                diffs.append(f"{name}: only in the checkpoint")
            continue
        if name not in present:
            diffs.append(f"{name}: not in the checkpoint")
            continue
        try:
            stored = ocp.StandardCheckpointHandler().metadata(
                epath.Path(os.path.join(_step_dir(manager, step), name))
            ).tree
        except Exception as error:  # noqa: BLE001 - any read failure means "unreadable"
            raise _Unreadable(f"metadata of {name} unreadable", repr(error)) from None
        diffs += _tree_differences(name, stored, target)
    if diffs:
        more = f" (and {len(diffs) - _MAX_DIFFS} more)" if len(diffs) > _MAX_DIFFS else ""
        raise CheckpointMismatchError(
            f"checkpoint step {step} in {manager.directory} does not match the model being "
            f"restored: {'; '.join(diffs[:_MAX_DIFFS])}{more}. Was the config changed? "
            "Nothing was moved or deleted."
        )


def _restore(manager, step: int, items: dict) -> dict:
    """Orbax restore of ``items`` (name -> restore args) at ``step``; failures are unreadable."""
    _silence_abandoned_reads()
    try:
        return manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as error:  # noqa: BLE001 - any read failure means "unreadable"
        first_line = (str(error).strip().splitlines() or [""])[0]
        summary = first_line if len(first_line) <= 80 else first_line[:77] + "..."
        unreadable = _Unreadable(
            f"cannot read {'/'.join(sorted(items))}: {type(error).__name__} {summary}".strip(),
            repr(error),
        )
    gc.collect()  # the abandoned reads: reported now (to the debug log) rather than later
    raise unreadable


def _is_abandoned_read(exc_value, obj) -> bool:
    """Whether an unraisable exception comes from the reads that a failed Orbax restore leaves
    behind: its coroutines, or their callbacks on Orbax's closed event loop."""
    if isinstance(exc_value, RuntimeError) and str(exc_value) == "Event loop is closed":
        return True
    code = getattr(obj, "cr_code", None)
    return code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename


_READ_ERRORS = ("while reading array", "OCDBT", "TensorStore")  # Orbax's and TensorStore's


class _AbandonedReadFilter(logging.Filter):
    """Drops asyncio's "exception was never retrieved" about an abandoned Orbax read."""

    def filter(self, record):
        message = record.getMessage()
        if "never retrieved" in message and any(mark in message for mark in _READ_ERRORS):
            _LOG.debug("after a failed read: %s", message[:200])
            return False
        return True


_SILENCED = []


def _silence_abandoned_reads() -> None:
    """A failed Orbax restore abandons its other reads, which print hundreds of lines ("exception
    was never retrieved", "Event loop is closed", "coroutine ... was never awaited") from
    TensorStore threads and the garbage collector, during and after the failure. The first restore installs, for the rest of the
    process, filters that send exactly those to the debug log (every other unraisable exception
    and log record passes through)."""
    if _SILENCED:
        return
    previous = sys.unraisablehook

    def hook(unraisable):
        if _is_abandoned_read(unraisable.exc_value, unraisable.object):
            _LOG.debug("after a failed read: %r", unraisable.exc_value)
        else:
            previous(unraisable)

    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(_AbandonedReadFilter())
    warnings.filterwarnings(
        "ignore", r"coroutine '_read_array_index_and_device_put' was never awaited",
        RuntimeWarning,
    )
    _SILENCED.append(hook)


def _restore_json(manager, step: int, names) -> tuple[dict, dict | None]:
    """The JSON items ``names`` present at ``step`` (absent ones are ``None``), verified, and the
    step's checksums (``None`` for a checkpoint written before checksums existed)."""
    present = _stored_items(manager, step)
    items = {name: ocp.args.JsonRestore() for name in names if name in present}
    if "checksums" in present:
        items["checksums"] = _ChecksumRestore()
    restored = _restore(manager, step, items)
    checksums = restored.get("checksums") if "checksums" in present else None
    if checksums is not None and not (
        isinstance(checksums, dict)
        and isinstance(checksums.get("arrays"), dict)
        and isinstance(checksums.get("json"), dict)
    ):
        raise _Unreadable("checksums malformed")
    values = {}
    for name in names:
        value = restored[name] if name in items else None
        if value is not None:
            _verify_json(name, value, checksums)
        values[name] = value
    if values.get("config") is not None and not isinstance(values["config"], dict):
        raise _Unreadable("config is not a JSON object")
    return values, checksums


def _move_aside(manager, step: int) -> str:
    """Move step ``step`` to ``WORKDIR/checkpoints_corrupt/<step>_<time>`` (process 0 only)."""
    workdir = os.path.dirname(os.fspath(manager.directory))
    target = os.path.join(workdir, CORRUPT_DIR, f"{step}_{time.strftime('%Y%m%dT%H%M%S')}")
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        suffix, final = 0, target
        while os.path.exists(final):
            suffix += 1
            final = f"{target}.{suffix}"
        try:
            os.rename(_step_dir(manager, step), final)
        except OSError as error:
            raise CheckpointError(
                f"cannot move unreadable checkpoint step {step} to {final}: {error.strerror}"
            ) from None
        target = final
        _LOG.warning("moved unreadable checkpoint step %d to %s", step, target)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"diffusion_jax checkpoint {step} moved aside")
    return target


def _first_readable(manager, load_step: Callable, *, step=None, move_aside=False):
    """``(step, load_step(step))`` for the newest step that ``load_step`` reads (or exactly
    ``step``). An unreadable step is skipped with a one-line warning; with ``move_aside``, the
    skipped steps are moved aside once an older one has been read."""
    manager.reload()
    steps = sorted(manager.all_steps(), reverse=True)
    if step is not None:
        if step not in steps:
            raise CheckpointError(f"no checkpoint at step {step}; available: {sorted(steps)}")
        steps = [step]
    if not steps:
        raise CheckpointError(f"no checkpoint found in {manager.directory}")
    skipped = []
    for candidate in steps:
        try:
            result = load_step(candidate)
        except _Unreadable as error:
            skipped.append(f"step {candidate}: {error.reason}")
            _LOG.debug("checkpoint step %d unreadable: %s", candidate, error.detail)
            if candidate != steps[-1]:
                _LOG.warning(
                    "checkpoint step %d is unreadable (%s); trying the previous step",
                    candidate, error.reason,
                )
            continue
        if move_aside:
            for bad in steps[: steps.index(candidate)]:
                _move_aside(manager, bad)
            if candidate != steps[0]:
                manager.reload()
        _LOG.info("restored checkpoint step %d from %s", candidate, manager.directory)
        return candidate, result
    raise CheckpointError(
        f"no readable checkpoint in {manager.directory} ({'; '.join(skipped)}); nothing moved"
    )


def restore_train_state(manager, target: TrainState, *, shardings=None, step=None):
    """Restore the newest readable :class:`TrainState` onto the structure (and, if given, the
    ``shardings`` pytree) of ``target``. Returns ``(state, config)``; ``state.step`` is the step
    restored.

    Newer unreadable steps (bad files or digests) are moved to ``WORKDIR/checkpoints_corrupt``
    once an older step is read (see the module docstring). A stored structure that differs from
    ``target`` raises :class:`CheckpointMismatchError`. When this raises, ``manager`` has been
    closed (no stray async threads); make a new one to continue.
    """
    target_items = _state_items(target)
    sharding_items = None if shardings is None else _state_items(shardings, shardings=True)

    def load_step(candidate):
        _check_structure(manager, candidate, target_items)
        json_values, checksums = _restore_json(manager, candidate, ("config",))
        items = {}
        for name in STATE_ITEMS:
            if not jax.tree.leaves(target_items[name]):
                continue
            item_shardings = None if sharding_items is None else sharding_items[name]
            items[name] = ocp.args.StandardRestore(_abstract(target_items[name], item_shardings))
        restored = _restore(manager, candidate, items)
        for name in items:
            _verify_arrays(name, restored[name], checksums)
        if int(restored["meta"]["step"]) != candidate:
            raise _Unreadable(f"meta holds step {int(restored['meta']['step'])}")
        return restored, json_values["config"]

    try:
        _, (restored, config) = _first_readable(manager, load_step, step=step, move_aside=True)
    except CheckpointError:
        manager.close()
        raise
    meta = restored["meta"]

    def item(name):  # empty items were not saved: keep the target's (empty) structure
        return restored[name] if jax.tree.leaves(target_items[name]) else target_items[name]

    state = TrainState(
        step=meta["step"],
        params=item("params"),
        buffers=item("buffers"),
        opt_state=item("opt_state"),
        ema=item("ema"),
        key=jax.random.wrap_key_data(meta["key_data"], impl=jax.random.key_impl(target.key)),
    )
    return state, config


def _read_only_manager(directory):
    """A synchronous manager on an existing ``directory/checkpoints`` (never creates it)."""
    path = os.path.join(os.path.abspath(os.fspath(directory)), CHECKPOINT_DIR)
    if not os.path.isdir(path):
        raise CheckpointError(f"no checkpoints in {directory} ({path} does not exist)")
    options = ocp.CheckpointManagerOptions(enable_async_checkpointing=False, create=False)
    return ocp.CheckpointManager(path, options=options)


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """The JSON items of one checkpoint step (verified): ``spec`` is ``None`` for checkpoints
    saved without one."""

    step: int
    config: dict
    spec: dict | None
    ema_names: tuple


def read_run_info(directory, *, step=None) -> RunInfo:
    """Step, config, spec and EMA names of the newest readable checkpoint (or of ``step``).
    Pass ``step=info.step`` to :func:`load_run` to read the weights of that same step."""

    def load_step(candidate):
        values = _restore_json(manager, candidate, JSON_ITEMS)[0]
        if values["config"] is None or values["info"] is None:
            raise _Unreadable("config or info missing")
        return values

    manager = _read_only_manager(directory)
    try:
        found, values = _first_readable(manager, load_step, step=step)
    finally:
        manager.close()
    names = tuple(values["info"].get("ema_names", ()))
    return RunInfo(found, values["config"], values["spec"], names)


def restore_config(directory, *, step=None) -> dict:
    """The config saved with the newest readable checkpoint under ``directory`` (verified)."""
    return read_run_info(directory, step=step).config


def restore_spec(directory, *, step=None) -> dict | None:
    """The model spec saved with the newest readable checkpoint under ``directory`` (``None``
    for a checkpoint saved without one, e.g. before specs existed)."""
    return read_run_info(directory, step=step).spec


@dataclasses.dataclass(frozen=True)
class LoadedRun:
    """What :func:`load_run` read, all from the one checkpoint ``step``.

    ``ema`` is the EMA name whose parameters the denoiser holds (``None``: the raw params);
    ``spec`` is ``None`` for checkpoints saved without one.
    """

    denoiser: Any
    config: dict
    spec: dict | None
    step: int
    ema: str | None


def load_run(
    directory,
    *,
    build: Callable,
    ema: bool | str = True,
    step: int | None = None,
    sharding=None,
) -> LoadedRun:
    """The denoiser, config and spec of one checkpoint step (the newest readable one, or
    ``step``), restoring only the network's parameters (an EMA copy or the raw params) and
    buffers, every item verified against its digest.

    ``build(config, spec) -> (network, wrap)`` makes the (abstract or concrete) NNX network from
    the step's config and spec (``None`` for older checkpoints); ``wrap(network) -> denoiser``
    puts the preconditioning around it. ``ema=True`` picks the first EMA, a string picks that EMA,
    ``False`` the raw params. ``sharding`` (e.g. replicated over a mesh) places the restored
    arrays. An unreadable step is skipped for the previous one with a one-line warning (nothing
    is moved: this is a reader).
    """
    manager = _read_only_manager(directory)

    def load_step(candidate):
        values, checksums = _restore_json(manager, candidate, JSON_ITEMS)
        config, info, spec = values["config"], values["info"], values["spec"]
        if config is None or info is None:
            raise _Unreadable("config or info missing")
        if ema is False:
            name = None
        else:
            names = list(info["ema_names"])
            if not names:
                raise CheckpointError("the checkpoint has no EMA parameters; use ema=False")
            name = names[0] if ema is True else ema
            if name not in names:
                raise CheckpointError(f"unknown EMA {name!r}; the checkpoint has {names}")
        network, wrap = build(config, spec)
        parts = split_network(network)
        item = "params" if name is None else "ema"
        target = parts.params if name is None else {n: parts.params for n in info["ema_names"]}
        _check_structure(manager, candidate, {item: target, "buffers": parts.buffers})

        # default: this process's first device, so a checkpoint written by several processes
        # (another topology) restores in one process (Orbax refuses a target without shardings)
        target_sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

        def shard_of(tree):
            return jax.tree.map(lambda _: target_sharding, tree)

        items = {item: ocp.args.StandardRestore(_abstract(target, shard_of(target)))}
        has_buffers = bool(jax.tree.leaves(parts.buffers))
        if has_buffers:
            items["buffers"] = ocp.args.StandardRestore(
                _abstract(parts.buffers, shard_of(parts.buffers))
            )
        restored = _restore(manager, candidate, items)
        for key in items:
            _verify_arrays(key, restored[key], checksums)
        params = restored["params"] if name is None else restored["ema"][name]
        buffers = restored["buffers"] if has_buffers else parts.buffers
        network = merge_network(parts, params, buffers, train=False)
        return LoadedRun(wrap(network), config, spec, candidate, name)

    try:
        return _first_readable(manager, load_step, step=step)[1]
    finally:
        manager.close()


def load_denoiser(
    directory,
    *,
    build: Callable,
    ema: bool | str = True,
    step: int | None = None,
    sharding=None,
):
    """``(denoiser, config)`` of :func:`load_run` with ``build(config) -> (network, wrap)`` (the
    CLIs' name -> constructor table, e.g. ``train.build_model``); config and weights come from the
    same step."""
    run = load_run(
        directory, build=lambda config, spec: build(config), ema=ema, step=step, sharding=sharding
    )
    return run.denoiser, run.config
