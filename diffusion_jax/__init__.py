"""diffusion_jax: diffusion and flow models in JAX, one affine-process core.

Layers (``docs/architecture.md``): infrastructure (``networks``, ``data``, ``training``,
``sharding``, ``checkpoints``, ``metrics``) < the Gaussian core (``processes``, ``denoisers``,
``schedules``, ``losses``, ``samplers``, ``likelihood``, ``guidance``, ``analytic``) < family
subpackages < ``recipes`` (config -> objects, training loop, sampling, evaluation, ``load``).

``diffusion_jax.load(workdir)`` opens a training run from any directory (see
:func:`diffusion_jax.recipes.load`); ``diffusion_jax.enable_compilation_cache()`` turns on the
persistent XLA cache for notebooks and scripts.
"""

__version__ = "0.1.0"


def load(workdir, **kwargs):
    """Open the run in ``workdir``: :func:`diffusion_jax.recipes.load` (denoiser, config, spec,
    step, EMA name)."""
    from diffusion_jax.recipes import load as _load

    return _load(workdir, **kwargs)


def enable_compilation_cache(cache_dir=None, **kwargs):
    """Persistent XLA compilation cache (default ``~/.cache/diffusion_jax/xla``):
    :func:`diffusion_jax.recipes.runtime.enable_compilation_cache`."""
    from diffusion_jax.recipes import runtime

    return runtime.enable_compilation_cache(cache_dir or runtime.DEFAULT_CACHE_DIR, **kwargs)
