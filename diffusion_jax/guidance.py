"""Guidance as denoiser transforms: the result is again a denoiser (a pytree), usable by every
sampler and solver, with ``cond`` plumbed through. The wrapped denoiser may be a plain function
or a pytree: the transform is a registered dataclass whose ``denoiser`` field is split into array
leaves and static rest by the entry points (:mod:`diffusion_jax.callables`)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

__all__ = ["ClassifierFreeGuidance", "classifier_free"]


@dataclasses.dataclass(frozen=True)
class ClassifierFreeGuidance:
    """``D_w(x, s, c) = D(x, s, null) + w (D(x, s, c) - D(x, s, null))`` (Ho & Salimans 2022,
    "Classifier-free diffusion guidance", eq. 6 written for x0-predictions; their ``1 + w`` is
    ``guidance_scale`` here, so ``1`` is the conditional and ``0`` the unconditional denoiser).
    """

    denoiser: Any
    guidance_scale: Any
    null_cond: Any = None

    def __call__(self, x, sigma, cond=None):
        conditional = self.denoiser(x, sigma, cond)
        unconditional = self.denoiser(x, sigma, self.null_cond)
        return unconditional + self.guidance_scale * (conditional - unconditional)


jax.tree_util.register_dataclass(
    ClassifierFreeGuidance,
    data_fields=["denoiser", "guidance_scale", "null_cond"],
    meta_fields=[],
)


def classifier_free(denoiser, guidance_scale, null_cond=None):
    """Wrap ``denoiser`` with classifier-free guidance (Ho & Salimans 2022, eq. 6);
    ``null_cond`` is the condition of the unconditional branch (``None`` by default)."""
    if not isinstance(guidance_scale, jax.core.Tracer):
        values = np.asarray(guidance_scale)
        if not np.issubdtype(values.dtype, np.number) or not np.all(np.isfinite(values)):
            raise ValueError(f"guidance_scale must be a finite number; got {guidance_scale!r}")
    return ClassifierFreeGuidance(denoiser, guidance_scale, null_cond)
