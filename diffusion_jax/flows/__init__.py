"""Flow matching between arbitrary distributions: minibatch couplings (independent, exact OT,
Sinkhorn, condition-aware), the velocity contract ``velocity(x, t, cond)`` and its exact
conversion to and from the Gaussian denoiser, probability paths and objectives (CFM on any affine
process, Schrodinger-bridge CFM, stochastic interpolants, SF2M), time-grid and adaptive ODE
solvers, likelihood with a known source density, reflow pairs, and metrics (straightness,
coupling cost, endpoint gap, exact and sliced W2).

Time convention throughout (this library's): **t = 0 is data, t = 1 is the source**. The
flow-matching papers' time is ``1 - t`` and their velocity is minus ours.
"""

from diffusion_jax.flows import (
    couplings,
    gaussian,
    likelihood,
    metrics,
    ode,
    paths,
    reflow,
    toy,
    velocity,
)
from diffusion_jax.flows.couplings import (
    COUPLINGS,
    exact_ot_permutation,
    independent_coupling,
    make_coupling,
    ot_coupling,
    sample_plan,
    sinkhorn_coupling,
    sinkhorn_plan,
)
from diffusion_jax.flows.ode import METHODS, integrate, solve_adaptive, time_grid
from diffusion_jax.flows.velocity import (
    DataTimeVelocity,
    denoiser_from_velocity,
    velocity_from_denoiser,
)

__all__ = [
    "COUPLINGS",
    "METHODS",
    "DataTimeVelocity",
    "couplings",
    "denoiser_from_velocity",
    "exact_ot_permutation",
    "gaussian",
    "independent_coupling",
    "integrate",
    "likelihood",
    "make_coupling",
    "metrics",
    "ode",
    "ot_coupling",
    "paths",
    "reflow",
    "sample_plan",
    "sinkhorn_coupling",
    "sinkhorn_plan",
    "solve_adaptive",
    "time_grid",
    "toy",
    "velocity",
    "velocity_from_denoiser",
]
