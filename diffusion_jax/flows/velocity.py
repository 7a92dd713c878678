"""The velocity contract of a flow between an arbitrary source and the data, and its exact
conversion to and from the library's Gaussian denoiser.

Contract: ``velocity(x, t, cond=None) -> dx/dt`` with ``x`` of shape ``(batch, ...)`` and ``t`` a
scalar or one value per example, in **this library's time: t = 0 is data, t = 1 is the source**
(noise). Samples are drawn by integrating from ``t = 1`` down to ``t = 0``
(:mod:`diffusion_jax.flows.ode`). The flow-matching papers (Lipman et al. 2023, Liu et al. 2023,
torchcfm, Meta ``flow_matching``) put data at ``tau = 1``: their field is
``v_fm(x, tau) = -velocity(x, 1 - tau)`` (:class:`DataTimeVelocity` wraps one of theirs).

The source is anything one can sample (a function or a data set), e.g. torchcfm's 8 Gaussians.
When the source is ``N(0, I)`` and the path is an affine process ``x_t = alpha(t) x0 + sigma(t)
eps`` of :mod:`diffusion_jax.processes`, the marginal velocity is the probability-flow velocity
``alpha' E[x0|x_t] + sigma' E[eps|x_t]`` (Lipman et al. 2023, Thm. 1; Song et al. 2021, eq. 13),
so a velocity and a VE-frame denoiser determine each other exactly
(:func:`velocity_from_denoiser`, :func:`denoiser_from_velocity`) and every sampler of the library
applies. Both conversions divide by ``sigma(t)`` or ``alpha(t)``: a converted denoiser's velocity
is singular at ``t = 0`` (end grids at ``t_end > 0``, e.g. 1e-3) and a converted velocity's
denoiser at ``alpha(t) = 0``.
"""

from __future__ import annotations

from typing import Any

from diffusion_jax.denoisers import ProcessDenoiser, ProcessModel, convert
from diffusion_jax.processes import Process
from diffusion_jax.pytrees import frozen_pytree

__all__ = [
    "DenoiserVelocity",
    "DataTimeVelocity",
    "velocity_from_denoiser",
    "denoiser_from_velocity",
]


@frozen_pytree
class DenoiserVelocity:
    """A VE-frame denoiser as the velocity of ``process`` (library time, t = 0 data):
    ``v(x_t, t) = alpha'(t) x0_hat + sigma'(t) eps_hat`` with ``x0_hat = D(x_t / alpha,
    sigma / alpha)`` and ``eps_hat = (x_t - alpha x0_hat) / sigma`` (Karras et al. 2022, eq. 2;
    Lipman et al. 2023, eq. 15)."""

    denoiser: Any
    process: Process

    def __call__(self, x, t, cond=None):
        x0 = ProcessModel(self.denoiser, self.process)(x, t, cond)
        return convert(x0, "x0", "velocity", x, t, self.process)


@frozen_pytree
class DataTimeVelocity:
    """A field written in the flow-matching papers' time (data at ``tau = 1``, source at 0) as a
    velocity of this library: ``velocity(x, t) = -field(x, 1 - t)``."""

    field: Any

    def __call__(self, x, t, cond=None):
        return -self.field(x, 1.0 - t, cond)


def velocity_from_denoiser(denoiser, process: Process) -> DenoiserVelocity:
    """The exact velocity (library time) of a VE-frame denoiser along ``process``."""
    return DenoiserVelocity(denoiser, process)


def denoiser_from_velocity(velocity, process: Process) -> ProcessDenoiser:
    """The exact VE-frame denoiser of a velocity along ``process`` with an ``N(0, I)`` source:
    ``x0_hat = (sigma' x_t - sigma v) / (alpha sigma' - sigma alpha')`` at ``t = t(sigma)``
    (:class:`~diffusion_jax.denoisers.ProcessDenoiser` with the ``velocity`` parameterisation)."""
    return ProcessDenoiser(velocity, process, "velocity", 1.0)
