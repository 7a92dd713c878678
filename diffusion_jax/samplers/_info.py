"""The sampler descriptor: what a sampler declares about itself, as data next to its code."""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Mapping
from typing import Any

# Keyword arguments every sampler takes besides its own ``options``.
# ``unroll`` and ``checkpoint`` are the scan options of the one driver (``_core.integrate``).
COMMON_KEYWORDS = ("key", "cond", "return_trajectory", "callback", "unroll", "checkpoint")


@dataclasses.dataclass(frozen=True)
class Variant:
    """Another setting of a sampler's options with its own order and NFE (e.g. ``order=2``)."""

    options: Mapping[str, Any]
    order: int | None
    nfe: Callable[[int], int]

    def __post_init__(self):
        object.__setattr__(self, "options", types.MappingProxyType(dict(self.options)))


@dataclasses.dataclass(frozen=True)
class SamplerInfo:
    """Descriptor of one sampler ``fn(denoiser, noise, sigmas, *, key=None, cond=None,
    return_trajectory=False, callback=None, unroll=None, checkpoint=False, **options)``.

    * ``name``: the name ``samplers.get`` and the CLIs use (also ``fn``'s attribute name in
      :mod:`diffusion_jax.samplers`).
    * ``stochastic``: whether it can draw noise (with its defaults or some option values).
    * ``needs_key``: whether a ``key`` is required with the default options.
    * ``order``: global order of convergence of the endpoint error with the default options, as
      measured by ``tests/test_samplers_order.py`` (float64, exact Gaussian-mixture denoiser);
      ``None`` when the defaults draw noise.
    * ``nfe``: denoiser evaluations for a grid of ``N`` steps (``len(sigmas) - 1``), defaults.
    * ``options``: the sampler's own keyword options (besides :data:`COMMON_KEYWORDS`).
    * ``summary`` and ``source``: one line each, for the docs.
    * ``variants``: other option settings with their own order and NFE.
    """

    name: str
    fn: Callable
    stochastic: bool
    needs_key: bool
    order: int | None
    nfe: Callable[[int], int]
    options: tuple[str, ...]
    summary: str
    source: str
    variants: tuple[Variant, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "options", tuple(self.options))
        object.__setattr__(self, "variants", tuple(self.variants))

    def steps_for_nfe(self, nfe, options=None):
        """The largest number of steps whose NFE (defaults, or the variant with ``options``) is at
        most ``nfe`` (at least 1)."""
        count = self.nfe_function(options)
        num_steps = 1
        while count(num_steps + 1) <= nfe:
            num_steps += 1
        return num_steps

    def nfe_function(self, options=None):
        """The NFE function of the defaults (``options`` empty) or of the variant with ``options``."""
        if not options:
            return self.nfe
        for variant in self.variants:
            if dict(variant.options) == dict(options):
                return variant.nfe
        raise ValueError(f"{self.name}: no variant with options {dict(options)}")


def one_per_step(num_steps):
    """NFE ``N``."""
    return num_steps


def two_per_step(num_steps):
    """NFE ``2N``."""
    return 2 * num_steps


def two_per_step_then_one(num_steps):
    """NFE ``2N - 1`` (two per step, one on the step to 0)."""
    return 2 * num_steps - 1


def three_per_step_then_one(num_steps):
    """NFE ``3N - 2``."""
    return 3 * num_steps - 2


def one_per_step_and_warmup(num_steps):
    """NFE ``N + 1`` for a singlestep warm-up (``N`` when the grid has a single step)."""
    return num_steps + 1 if num_steps > 1 else num_steps
