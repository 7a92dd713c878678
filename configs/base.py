"""The base config of every experiment here: ``diffusion_jax.recipes.defaults.base_config``
(EDM's recipe, Karras et al. 2022, Table 1), kept in the package so installed users have it."""

from diffusion_jax.recipes.defaults import base_config


def get_config():
    """The base config (locked ``ConfigDict``: unknown keys are errors)."""
    return base_config()
