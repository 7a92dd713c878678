"""The Gaussian family's recipe module: a network wrapped as a VE-frame denoiser (EDM / VP / VE
preconditioning, or a network trained in a process's own time), trained with the denoising or
flow-matching loss and sampled by every sampler of :mod:`diffusion_jax.samplers`."""

from __future__ import annotations

from diffusion_jax import denoisers
from diffusion_jax.recipes import objectives, sampling
from diffusion_jax.recipes.builders import (
    PRECONDITIONINGS,
    as_config,
    network_kwargs,
    pick,
    process_entry,
    process_from_entry,
)

__all__ = ["FAMILY", "NETWORKS", "network_kwargs", "model_entry", "model_from_spec",
           "make_loss_fn", "load_arrays", "generate", "write_samples", "validate"]

FAMILY = "gaussian"
NETWORKS = {}  # the standard networks of builders.NETWORKS
load_arrays = None  # the standard data path (recipes.datasets)
make_loss_fn = objectives.make_loss_fn
generate = sampling.generate
write_samples = sampling.write_samples


def _preconditioning_kwargs(config) -> dict:
    name = config.model.preconditioning
    if name == "edm":
        return {"sigma_data": config.model.sigma_data}
    if name == "vp":
        return {"beta_min": config.process.beta_min, "beta_max": config.process.beta_max}
    return {}


def model_entry(config) -> dict:
    """``{"process", "denoiser"}``: the forward process and how the network becomes a denoiser
    (``"preconditioned"`` with its preconditioning, or ``"process"`` with the parameterisation
    and time scale of a network trained in the process's own time)."""
    config = as_config(config)
    model = config.model
    if model.preconditioning == "process":
        denoiser = {
            "kind": "process",
            "parameterisation": denoisers.check_parameterisation(model.parameterisation),
            "time_scale": float(model.time_scale),
        }
    else:
        pick(PRECONDITIONINGS, model.preconditioning, "preconditioning")
        denoiser = {
            "kind": "preconditioned",
            "preconditioning": {"name": model.preconditioning,
                                "kwargs": _preconditioning_kwargs(config)},
        }
    return {"process": process_entry(config), "denoiser": denoiser}


def model_from_spec(spec, network):
    """``network`` as the VE-frame denoiser of the spec."""
    entry = spec["model"]["denoiser"]
    if entry["kind"] == "process":
        return denoisers.ProcessDenoiser(
            network, process_from_entry(spec["model"]["process"]), entry["parameterisation"],
            entry["time_scale"],
        )
    pre = entry["preconditioning"]
    cls = pick(PRECONDITIONINGS, pre["name"], "preconditioning")
    return denoisers.PreconditionedDenoiser(network, cls(**pre["kwargs"]))


def validate(config):
    """The sampler and grid of ``config.sample`` exist (checked before training starts)."""
    config = as_config(config)
    sampling.sampler_info(config.sample.sampler)
    sampling.build_grid(config, config.sample.grid, config.sample.num_steps)
