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
=============  ===============================================================================

Saving is asynchronous through Orbax's ``CheckpointManager`` (v0 API), which keeps the last
``max_to_keep`` steps and only exposes a step after it is completely written. A state with a
non-finite parameter is never saved. On restore, a step that cannot be read (truncated or corrupt
files) is reported and the previous step is tried.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from diffusion_jax.training import TrainState, merge_network, split_network

__all__ = [
    "CheckpointError",
    "make_manager",
    "save",
    "restore_train_state",
    "restore_config",
    "load_denoiser",
    "is_finite",
]

_LOG = logging.getLogger(__name__)

STATE_ITEMS = ("params", "ema", "buffers", "opt_state", "meta")


class CheckpointError(RuntimeError):
    """No readable checkpoint, or a state that must not be saved."""


def make_manager(directory, *, max_to_keep: int = 3, async_save: bool = True):
    """An Orbax ``CheckpointManager`` on ``directory/checkpoints`` keeping ``max_to_keep`` steps
    (Orbax v0 API: every save is written, none is skipped while another is in flight)."""
    directory = os.path.abspath(os.fspath(directory))
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        enable_async_checkpointing=async_save,
        create=True,
    )
    return ocp.CheckpointManager(os.path.join(directory, "checkpoints"), options=options)


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


def save(manager, state: TrainState, config: dict, *, force: bool = False) -> bool:
    """Save ``state`` and ``config`` (JSON-able dict) at ``state.step`` asynchronously.

    Raises :class:`CheckpointError` if the params or EMAs are not finite (a NaN state is never
    written). Returns whether a save was started.
    """
    if not (is_finite(state.params) and is_finite(state.ema)):
        raise CheckpointError(f"refusing to save a non-finite state at step {int(state.step)}")
    step = int(state.step)
    items = {
        name: ocp.args.StandardSave(item)
        for name, item in _state_items(state).items()
        if jax.tree.leaves(item)  # Orbax rejects empty items (e.g. a network without buffers)
    }
    items["config"] = ocp.args.JsonSave(config)
    items["info"] = ocp.args.JsonSave({"step": step, "ema_names": list(state.ema)})
    return manager.save(step, args=ocp.args.Composite(**items), force=force)


def _abstract(tree, shardings=None):
    """ShapeDtypeStructs of ``tree`` (with ``shardings`` where given) as an Orbax restore target."""

    def leaf(x, sharding=None):
        return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)

    if shardings is None:
        return jax.tree.map(leaf, tree)
    return jax.tree.map(leaf, tree, shardings)


def _readable_steps(manager):
    manager.reload()
    return sorted(manager.all_steps(), reverse=True)


def _restore_first_readable(manager, make_args, *, step=None):
    """Restore the newest readable step (or exactly ``step``): ``(step, restored)``."""
    steps = _readable_steps(manager)
    if step is not None:
        if step not in steps:
            raise CheckpointError(f"no checkpoint at step {step}; available: {sorted(steps)}")
        steps = [step]
    if not steps:
        raise CheckpointError(f"no checkpoint found in {manager.directory}")
    errors = []
    for candidate in steps:
        try:
            return candidate, manager.restore(candidate, args=make_args())
        except Exception as error:  # noqa: BLE001 - any read failure means "unreadable"
            message = (
                f"checkpoint step {candidate} in {manager.directory} is unreadable ({error!r})"
            )
            errors.append(message)
            if step is None and candidate != steps[-1]:
                _LOG.warning("%s; falling back to the previous checkpoint", message)
                print(f"WARNING: {message}; falling back to the previous checkpoint", flush=True)
    raise CheckpointError("no readable checkpoint:\n" + "\n".join(errors))


def restore_train_state(manager, target: TrainState, *, shardings=None, step=None):
    """Restore the newest readable :class:`TrainState` onto the structure (and, if given, the
    ``shardings`` pytree) of ``target``. Returns ``(state, config)``."""
    target_items = _state_items(target)
    sharding_items = None if shardings is None else _state_items(shardings, shardings=True)

    def make_args():
        items = {}
        for name in STATE_ITEMS:
            if not jax.tree.leaves(target_items[name]):
                continue
            item_shardings = None if sharding_items is None else sharding_items[name]
            items[name] = ocp.args.StandardRestore(_abstract(target_items[name], item_shardings))
        items["config"] = ocp.args.JsonRestore()
        return ocp.args.Composite(**items)

    _, restored = _restore_first_readable(manager, make_args, step=step)
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
    return state, restored["config"]


def restore_config(directory, *, step=None) -> dict:
    """The config saved with the newest readable checkpoint under ``directory``."""
    return _restore_json(directory, step=step)[0]


def _restore_json(directory, *, step=None):
    manager = make_manager(directory, async_save=False)
    try:
        found, restored = _restore_first_readable(
            manager,
            lambda: ocp.args.Composite(
                config=ocp.args.JsonRestore(), info=ocp.args.JsonRestore()
            ),
            step=step,
        )
    finally:
        manager.close()
    return restored["config"], restored["info"], found


def load_denoiser(
    directory,
    *,
    build: Callable,
    ema: bool | str = True,
    step: int | None = None,
    sharding=None,
):
    """A ready ``denoiser(x, sigma, cond)`` pytree from the newest readable checkpoint, restoring
    only the network's parameters (an EMA copy or the raw params) and buffers, plus the config.

    ``build(config) -> (network, wrap)`` makes the (abstract or concrete) NNX network from the
    saved config and ``wrap(network) -> denoiser`` puts the preconditioning around it (the CLIs'
    name -> constructor table, e.g. ``train.build_model``). ``ema=True`` picks the first EMA,
    a string picks that EMA, ``False`` the raw params. ``sharding`` (e.g. replicated over a
    mesh) places the restored arrays. Returns ``(denoiser, config)``.
    """
    config, info, _ = _restore_json(directory, step=step)
    network, wrap = build(config)
    parts = split_network(network)
    manager = make_manager(directory, async_save=False)
    try:
        if ema is False:
            item = "params"
            target = parts.params
        else:
            names = list(info["ema_names"])
            if not names:
                raise CheckpointError("the checkpoint has no EMA parameters; use ema=False")
            name = names[0] if ema is True else ema
            if name not in names:
                raise CheckpointError(f"unknown EMA {name!r}; the checkpoint has {names}")
            item = "ema"
            target = {n: parts.params for n in names}

        def shard_of(tree):
            return None if sharding is None else jax.tree.map(lambda _: sharding, tree)

        has_buffers = bool(jax.tree.leaves(parts.buffers))

        def make_args():
            items = {item: ocp.args.StandardRestore(_abstract(target, shard_of(target)))}
            if has_buffers:
                items["buffers"] = ocp.args.StandardRestore(
                    _abstract(parts.buffers, shard_of(parts.buffers))
                )
            return ocp.args.Composite(**items)

        _, restored = _restore_first_readable(manager, make_args, step=step)
    finally:
        manager.close()
    params = restored["params"] if item == "params" else restored["ema"][name]
    buffers = restored["buffers"] if has_buffers else parts.buffers
    network = merge_network(parts, params, buffers, train=False)
    return wrap(network), config
