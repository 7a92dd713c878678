"""Runs open themselves: ``load(workdir)`` rebuilds a run's denoiser from the model spec stored
in its checkpoint, with the installed package alone (no ``train.py``, no ``configs/``)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from diffusion_jax import checkpoints, posthoc_ema
from diffusion_jax.recipes.builders import (
    as_config,
    model_from_spec,
    model_spec,
    network_from_spec,
)

__all__ = ["Run", "load", "spec_of", "check_run_directory"]


@dataclasses.dataclass(frozen=True)
class Run:
    """A loaded run: ``denoiser(x, sigma, cond) -> x0_hat`` (a jittable pytree), the run's
    ``config`` (``ConfigDict``), its model ``spec``, the checkpoint ``step`` and the ``ema`` name
    the weights came from (``None`` for the raw parameters)."""

    denoiser: Any
    config: Any
    spec: dict
    step: int
    ema: str | None


def check_run_directory(workdir):
    """Raise a one-line ``FileNotFoundError`` unless ``workdir`` holds a run's checkpoints
    (never creates anything)."""
    workdir = os.fspath(workdir)
    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"run directory {workdir} does not exist")
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise FileNotFoundError(f"{workdir} is not a training run (no checkpoints/ directory)")
    return workdir


def spec_of(config, stored_spec=None):
    """The stored model spec, or for checkpoints written before specs existed the spec derived
    from their stored config (same fields, same result)."""
    return stored_spec if stored_spec is not None else model_spec(config)


def _ema_choice(ema):
    if ema in (True, "first"):
        return True
    if ema in (False, "raw", None):
        return False
    return ema


def load(workdir, *, step: int | None = None, ema: bool | str = "first",
         build: Callable | None = None, sharding=None) -> Run:
    """Load the run in ``workdir``: the newest readable checkpoint (or exactly ``step``), the
    first EMA (``ema="first"``), the raw parameters (``"raw"``), a named EMA, or the run's own
    choice ``config.sample.ema`` (``"config"``), or ``"sigma_rel=0.08"``: the post-hoc EMA of that
    width reconstructed from the run's snapshots (:mod:`diffusion_jax.posthoc_ema`).

    ``build(config) -> (network, wrap)`` overrides the spec for custom networks. ``sharding``
    places the restored arrays (default: this process's first device). Config, spec and weights
    all come from the same step, verified against the checksums saved with it.
    """
    check_run_directory(workdir)

    def build_from_spec(config, spec):
        spec = spec_of(as_config(config), spec)
        network = network_from_spec(spec)
        return network, (lambda net: model_from_spec(spec, net))

    def build_override(config, spec):
        return build(config)

    if ema == "config":
        ema = as_config(checkpoints.read_run_info(workdir, step=step).config).sample.ema
    sigma_rel = posthoc_ema.parse_sigma_rel(ema)
    if sigma_rel is not None:
        return _load_posthoc_ema(workdir, sigma_rel, build=build, step=step, sharding=sharding)
    loaded = checkpoints.load_run(
        workdir, build=build_override if build else build_from_spec, ema=_ema_choice(ema),
        step=step, sharding=sharding,
    )
    config = as_config(loaded.config)
    return Run(
        denoiser=loaded.denoiser, config=config, spec=spec_of(config, loaded.spec),
        step=loaded.step, ema=loaded.ema,
    )


def _load_posthoc_ema(workdir, sigma_rel, *, build, step, sharding):
    """:func:`load` with the parameters of the power-function EMA of width ``sigma_rel`` at the
    checkpoint's step, the least-squares combination of the snapshots in ``workdir/posthoc_ema``
    up to that step (Karras et al. 2024, EDM2 App. C.3); ``Run.ema`` is ``"sigma_rel=<value>"``."""
    from flax import nnx

    networks = []

    def keep(network, wrap):
        def wrap_and_keep(net):
            networks.append(net)
            return wrap(net)

        return network, wrap_and_keep

    def build_from_spec(config, spec):
        spec = spec_of(as_config(config), spec)
        return keep(network_from_spec(spec), lambda net: model_from_spec(spec, net))

    loaded = checkpoints.load_run(
        workdir, build=(lambda config, spec: keep(*build(config))) if build else build_from_spec,
        ema=False, step=step, sharding=sharding,
    )
    network = networks[-1]
    template = nnx.state(network, nnx.Param)
    snapshots = posthoc_ema.load_snapshots(
        os.path.join(workdir, "posthoc_ema"), template, up_to_step=loaded.step
    )
    params, _ = posthoc_ema.reconstruct(snapshots, sigma_rel=sigma_rel, step=loaded.step)
    nnx.update(network, jax.tree.map(jnp.asarray, params))
    config = as_config(loaded.config)
    return Run(
        denoiser=loaded.denoiser, config=config, spec=spec_of(config, loaded.spec),
        step=loaded.step, ema=f"sigma_rel={sigma_rel:g}",
    )
