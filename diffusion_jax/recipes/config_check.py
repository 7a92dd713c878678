"""Checks of a config before a run starts, and of a changed config when a run resumes."""

from __future__ import annotations

import json
import os
import time

from diffusion_jax.posthoc_ema import gamma_of_sigma_rel
from diffusion_jax.recipes.builders import (
    COMPUTE_DTYPES,
    as_config,
    build_t_distribution,
    build_weighting,
    model_spec,
    pick,
)
from diffusion_jax.recipes.families import family_module

__all__ = [
    "RESUMABLE_FIELDS",
    "validate_config",
    "flatten",
    "config_changes",
    "check_resume_config",
]

# fields that may change between a run and its resumption: they change neither the model nor the
# objective (logging, checkpointing, the run's length, sampling and evaluation settings)
RESUMABLE_FIELDS = (
    "train.num_steps", "train.log_every", "train.checkpoint_every", "train.sample_every",
    "train.max_to_keep", "train.num_grid_samples", "train.mesh_data", "train.mesh_model",
    "train.steps_per_call", "train.eval_every", "train.eval_num_samples", "data.data_dir",
    "sample.", "eval.",
)


def validate_config(config):
    """One-line ``ValueError`` for settings a run cannot use, checked before anything starts
    (so a bad ``sample.sampler`` is not found only after training)."""
    config = as_config(config)
    train = config.train
    if train.num_steps < 1:
        raise ValueError(f"train.num_steps must be >= 1; got {train.num_steps}")
    if train.steps_per_call < 1:
        raise ValueError(f"train.steps_per_call must be >= 1; got {train.steps_per_call}")
    for every in ("log_every", "checkpoint_every"):
        value = getattr(train, every)
        if value < 1 or value % train.steps_per_call:
            raise ValueError(
                f"train.{every} = {value} must be a positive multiple of steps_per_call = "
                f"{train.steps_per_call}"
            )
    every = train.get("posthoc_ema_every", 0)
    if every < 0 or every % train.steps_per_call:
        raise ValueError(f"train.posthoc_ema_every = {every} must be 0 (off) or a positive "
                         f"multiple of steps_per_call = {train.steps_per_call}")
    if every:
        for sigma_rel in train.posthoc_ema_sigma_rels:
            gamma_of_sigma_rel(sigma_rel)  # one line for a width no power EMA has
    if train.max_to_keep < 1:
        raise ValueError(f"train.max_to_keep must be >= 1 (0 would delete every checkpoint); "
                         f"got {train.max_to_keep}")
    if train.batch_size < 1:
        raise ValueError(f"train.batch_size must be >= 1; got {train.batch_size}")
    pick(COMPUTE_DTYPES, train.compute_dtype, "compute_dtype")
    if train.class_conditional and config.data.num_classes < 1:
        raise ValueError("train.class_conditional needs data.num_classes > 0")
    if not (train.ema_half_lives or train.ema_decays):
        raise ValueError("configure at least one EMA (train.ema_half_lives or train.ema_decays)")
    model_spec(config)  # unknown family / network / process / preconditioning / parameterisation
    build_t_distribution(config)
    build_weighting(config)
    family_module(config).validate(config)


def flatten(tree, prefix="") -> dict:
    """``{"group.field": value}`` of a nested config dict (tuples as lists, for comparison)."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = list(value) if isinstance(value, tuple) else value
    return flat


def _resumable(name):
    return any(name == f or (f.endswith(".") and name.startswith(f)) for f in RESUMABLE_FIELDS)


def config_changes(stored: dict, current: dict):
    """``(blocking, allowed)``: lists of ``(field, stored, current)`` that differ, split into
    fields that change the model or objective and fields that do not. A field the stored config
    lacks (added to the base config since the run started) counts as its default."""
    from diffusion_jax.recipes.defaults import base_config

    old = {**flatten(base_config().to_dict()), **flatten(stored)}
    new = flatten(current)
    blocking, allowed = [], []
    for name in sorted(set(old) | set(new)):
        before, after = old.get(name, "<absent>"), new.get(name, "<absent>")
        if before != after:
            (allowed if _resumable(name) else blocking).append((name, before, after))
    return blocking, allowed


def _describe(changes):
    return ", ".join(f"{name}: {before!r} -> {after!r}" for name, before, after in changes)


def check_resume_config(workdir, stored: dict, current: dict, *, allow_change=False):
    """Refuse (one-line ``ValueError``) to resume a run whose config changes the model or the
    objective, unless ``allow_change``; such a forced change, and every harmless one, is
    printed and appended to ``workdir/config_changes.jsonl`` (call it on the primary process).
    Returns ``(blocking, allowed)``."""
    if not isinstance(stored, dict):
        raise ValueError(f"the stored config in {workdir} is not a dict "
                         f"({type(stored).__name__}); the run directory is damaged")
    blocking, allowed = config_changes(stored, current)
    if blocking and not allow_change:
        raise ValueError(
            f"the config differs from the run's in fields that change the model or objective "
            f"({_describe(blocking)}); use another --workdir, or pass --allow_config_change "
            f"to resume anyway"
        )
    if blocking or allowed:
        print(f"resuming with a changed config: {_describe(blocking + allowed)}", flush=True)
        with open(os.path.join(workdir, "config_changes.jsonl"), "a") as handle:
            handle.write(json.dumps({
                "time": time.time(),
                "forced": bool(blocking),
                "changes": [list(c) for c in blocking + allowed],
            }, default=str) + "\n")
    return blocking, allowed
