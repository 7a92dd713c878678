"""diffusion_jax: diffusion and flow models in JAX, one affine-process core.

Modules: ``processes`` (forward processes), ``denoisers`` (parameterisations, preconditioning, the
denoiser contract), ``schedules`` (training noise levels and loss weightings), ``losses``,
``analytic`` (exact Gaussian-mixture test bed).
"""

__version__ = "0.1.0"
