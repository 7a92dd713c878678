"""Recipes: the layer between the library and the command lines.

It holds the one config -> objects table (:mod:`~diffusion_jax.recipes.builders`), the model spec
stored with every checkpoint, the training loop, sampling and evaluation of a config, metric
writers and run-time plumbing (signals, distributed start-up, compilation cache). ``train.py``,
``sample.py`` and ``evaluate.py`` are thin absl mains over it; notebooks and library users call
it directly::

    import jax
    from diffusion_jax import recipes
    run = recipes.load("runs/digits")               # any directory, the installed package alone
    x0 = jax.jit(samplers.heun)(run.denoiser, noise, sigmas)   # the model as an argument

The core below (processes, denoisers, samplers, losses, likelihood, ...) never takes a config.
"""

from diffusion_jax.recipes.builders import (
    as_config,
    build_model,
    build_process,
    check_spec,
    model_from_spec,
    model_spec,
    network_from_spec,
)
from diffusion_jax.recipes.config_check import check_resume_config, validate_config
from diffusion_jax.recipes.datasets import load_arrays, load_split, preprocess
from diffusion_jax.recipes.defaults import base_config, load_config
from diffusion_jax.recipes.families import family_module, generate, write_samples
from diffusion_jax.recipes.loading import Run, load
from diffusion_jax.recipes.objectives import ema_schedules, make_loss_fn
from diffusion_jax.recipes.runtime import enable_compilation_cache, initialize_distributed
from diffusion_jax.recipes.sampling import build_grid, sample_noise
from diffusion_jax.recipes.training_loop import TrainResult, train

__all__ = [
    "Run",
    "TrainResult",
    "as_config",
    "base_config",
    "load_config",
    "build_grid",
    "build_model",
    "build_process",
    "check_resume_config",
    "check_spec",
    "model_from_spec",
    "ema_schedules",
    "family_module",
    "enable_compilation_cache",
    "generate",
    "initialize_distributed",
    "load",
    "load_arrays",
    "load_split",
    "make_loss_fn",
    "model_spec",
    "network_from_spec",
    "preprocess",
    "sample_noise",
    "train",
    "validate_config",
    "write_samples",
]
