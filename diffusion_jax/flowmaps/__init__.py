"""Flow maps and distillation: two-time maps ``flow_map(x, sigma, sigma_to, cond)`` of the VE
probability-flow ODE, their parameterisations (consistency models, CTM), the objectives that
train them (progressive distillation, consistency distillation / training, iCT, ECT, CTM) and
their samplers. See ``docs/flowmaps.md``.

Modules are imported explicitly (``from diffusion_jax.flowmaps import base``); this package
imports nothing at import time.
"""
