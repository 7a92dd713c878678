"""Samplers: pure, jittable, differentiable functions of one signature.

``sampler(denoiser, noise, sigmas, *, key=None, cond=None, return_trajectory=False,
callback=None, **options)`` returns ``x0`` (or ``(x0, trajectory)`` with ``trajectory`` of shape
``(num_steps + 1, *x.shape)``). ``noise`` is UNIT Gaussian and is scaled by ``sigmas[0]`` here (a
warning says so when its RMS is far from 1); ``sigmas`` is a descending VE-frame grid ending in 0
whose length fixes the number of steps and whose values stay traced. ``callback(info)``, if given,
is called at run time after every step (also under ``jit``) with ``info = {"i", "sigma",
"sigma_next", "x", "x0_hat"}``: the step index, its two noise levels, the state at ``sigma`` and
the denoiser output there.

The table of samplers: :data:`SAMPLERS` (a tuple of :class:`SamplerInfo`: name, fn, stochastic,
needs_key, order, nfe, options, summary, source, variants) and ``get(name)``. Each sampler module
declares its own descriptors in a module-level ``SAMPLERS`` tuple next to its code;
:mod:`.registry` concatenates them (no mutable registry), so adding a sampler is one module plus
its test. ``checked(sampler)`` adds ``checkify`` value checks usable inside ``jit``.
"""

from diffusion_jax.samplers.deis import deis
from diffusion_jax.samplers.diffrax_solvers import (
    evaluations_per_step,
    solve_probability_flow,
    solve_reverse_sde,
)
from diffusion_jax.samplers.dpm_solver import (
    dpm_solver_2,
    dpm_solver_3,
    dpmpp_2m,
    dpmpp_2m_sde,
    dpmpp_3m,
    dpmpp_3m_sde,
)
from diffusion_jax.samplers.grids import (
    edm_vp_sigmas,
    karras_sigmas,
    log_uniform_sigmas,
    time_quadratic_sigmas,
    time_uniform_sigmas,
)
from diffusion_jax.samplers.ode import euler, heun, ipndm, lms
from diffusion_jax.samplers.registry import (
    COMMON_KEYWORDS,
    SAMPLERS,
    SamplerInfo,
    Variant,
    get,
    names,
)
from diffusion_jax.samplers.steps import ancestral_sigmas, ancestral_step, ddim_step, euler_step
from diffusion_jax.samplers.stochastic import (
    ancestral,
    ddim,
    edm_stochastic,
    euler_maruyama,
    langevin_step_size,
    predictor_corrector,
)
from diffusion_jax.samplers.unipc import unipc
from diffusion_jax.samplers.validation import checked

__all__ = [
    "SAMPLERS",
    "SamplerInfo",
    "Variant",
    "COMMON_KEYWORDS",
    "get",
    "names",
    "checked",
    "karras_sigmas",
    "log_uniform_sigmas",
    "time_uniform_sigmas",
    "time_quadratic_sigmas",
    "edm_vp_sigmas",
    "euler",
    "heun",
    "lms",
    "ipndm",
    "unipc",
    "deis",
    "dpm_solver_2",
    "dpm_solver_3",
    "dpmpp_2m",
    "dpmpp_3m",
    "dpmpp_2m_sde",
    "ddim",
    "ancestral",
    "edm_stochastic",
    "euler_maruyama",
    "predictor_corrector",
    "langevin_step_size",
    "dpmpp_3m_sde",
    "solve_probability_flow",
    "solve_reverse_sde",
    "evaluations_per_step",
    "euler_step",
    "ddim_step",
    "ancestral_step",
    "ancestral_sigmas",
]
