"""Model families and their recipe modules: ``config.model.family`` (stored in the model spec as
``spec["family"]``) picks the module that builds, trains, samples and evaluates the model.

Every family module exposes one protocol (``docs/architecture.md``): ``FAMILY``, ``NETWORKS``,
``network_kwargs(config)``, ``model_entry(config)``, ``model_from_spec(spec, network)``,
``make_loss_fn(config, wrap)``, ``load_arrays(config)`` (or ``None``), ``generate(model, config,
...)``, ``write_samples(samples, config, path)``, ``evaluate(model, config, ...)``,
``validate(config)``. Modules are imported when first used, so a family's dependencies cost
nothing to the others.
"""

from __future__ import annotations

import importlib

__all__ = ["FAMILY_MODULES", "family_name", "family_module", "generate", "write_samples"]

FAMILY_MODULES = {
    "gaussian": "diffusion_jax.recipes.gaussian",
    "flow": "diffusion_jax.recipes.flows",
    "discrete": "diffusion_jax.recipes.discrete",
    "flowmap": "diffusion_jax.recipes.flowmaps",
    "latent": "diffusion_jax.recipes.latent",
}


def family_name(config_or_spec) -> str:
    """The family of a config (``config.model.family``, ``"gaussian"`` when absent, as in runs
    written before families existed) or of a model spec (``spec["family"]``)."""
    if isinstance(config_or_spec, dict) and "format" in config_or_spec:
        name = config_or_spec.get("family", "gaussian")
    else:
        model = config_or_spec["model"]
        name = model.get("family", "gaussian") if hasattr(model, "get") else "gaussian"
    if name not in FAMILY_MODULES:
        raise ValueError(f"unknown model family {name!r}; expected one of {sorted(FAMILY_MODULES)}")
    return name


def family_module(config_or_spec):
    """The recipe module of the family of a config or spec."""
    name = family_name(config_or_spec)
    try:
        return importlib.import_module(FAMILY_MODULES[name])
    except ModuleNotFoundError as error:
        if error.name == FAMILY_MODULES[name]:
            raise ValueError(f"model family {name!r} is not available in this installation") from None
        raise


def generate(model, config, **kwargs):
    """Samples of any family's model: ``(samples, labels or None)`` (see the family's
    ``generate`` for its options)."""
    return family_module(config).generate(model, config, **kwargs)


def write_samples(samples, config, path):
    """The family's picture (PNG) or text file of ``samples`` at ``path``."""
    return family_module(config).write_samples(samples, config, path)
