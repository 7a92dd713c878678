"""The one name -> constructor table: a config's strings become library objects here and nowhere
else, in two stages.

1. ``model_spec(config)`` turns the config's model-related fields into a JSON-able **model spec**
   (network class and arguments, the family's model entry — for the Gaussian family the process
   and the preconditioning or parameterisation — data shape, value range and class count). Every
   checkpoint stores it, so a run rebuilds its model with the installed package alone
   (:func:`diffusion_jax.recipes.load`).
2. ``network_from_spec`` / ``model_from_spec`` build the objects from a spec (the family's recipe
   module, :mod:`~diffusion_jax.recipes.families`, builds its model). ``build_model(config)`` is
   the composition of the two, so training, sampling and loading share one path.

Training-only choices (noise-level distribution, weighting, compute dtype) are built from the
config by the ``build_*`` functions below; the library core below the recipes takes only the
objects.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from diffusion_jax import denoisers, networks, processes, schedules
from diffusion_jax.recipes.families import family_module

__all__ = [
    "SPEC_FORMAT",
    "PROCESSES",
    "NETWORKS",
    "PRECONDITIONINGS",
    "T_DISTRIBUTIONS",
    "WEIGHTINGS",
    "COMPUTE_DTYPES",
    "as_config",
    "pick",
    "is_image_data",
    "num_classes",
    "network_kwargs",
    "process_entry",
    "model_spec",
    "check_spec",
    "process_from_entry",
    "network_from_spec",
    "model_from_spec",
    "build_process",
    "build_model",
    "build_t_distribution",
    "build_weighting",
    "training_rngs",
    "finite_sigma_max",
]

SPEC_FORMAT = "diffusion_jax.model_spec/1"

# -- the tables ---------------------------------------------------------------------------------

PROCESSES = {
    "edm": processes.EDM,
    "vp": processes.VP,
    "subvp": processes.SubVP,
    "ve": processes.VE,
    "cosine": processes.Cosine,
    "rectified_flow": processes.RectifiedFlow,
    "trigflow": processes.TrigFlow,
}

# config.process fields read by each process (the others belong to other processes)
_PROCESS_FIELDS = {
    "edm": ("sigma_max",),
    "vp": ("beta_min", "beta_max"),
    "subvp": ("beta_min", "beta_max"),
    "ve": ("sigma_min", "sigma_max"),
    "cosine": (),
    "rectified_flow": (),
    "trigflow": ("sigma_data",),
}

NETWORKS = {"mlp": networks.MLP, "unet": networks.UNet}

PRECONDITIONINGS = {
    "edm": denoisers.EDMPreconditioning,
    "vp": denoisers.VPPreconditioning,
    "ve": denoisers.VEPreconditioning,
}

T_DISTRIBUTIONS = {
    "log_normal": lambda c: schedules.LogNormalSigma(p_mean=c.p_mean, p_std=c.p_std),
    "uniform": lambda c: schedules.UniformTime(t_min=c.t_min),
    "logit_normal": lambda c: schedules.LogitNormalTime(mean=c.p_mean, std=c.p_std),
}

WEIGHTINGS = {
    "edm": lambda config: schedules.EDMWeighting(sigma_data=config.model.sigma_data),
    "x0": lambda config: schedules.X0MSE(),
    "epsilon": lambda config: schedules.EpsilonMSE(),
    "v": lambda config: schedules.VMSE(),
    "flow_matching": lambda config: schedules.FlowMatchingWeighting(),
    "min_snr": lambda config: schedules.MinSNR(gamma=config.loss.gamma),
    "soft_min_snr": lambda config: schedules.SoftMinSNR(gamma=config.loss.gamma),
    "likelihood": lambda config: schedules.LikelihoodWeighting(),
}

COMPUTE_DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}


def pick(table, name, what):
    """``table[name]``, or a one-line ``ValueError`` listing the known names."""
    if name not in table:
        raise ValueError(f"unknown {what} {name!r}; expected one of {sorted(table)}")
    return table[name]


def as_config(config) -> ConfigDict:
    """A ``ConfigDict`` view of a config (checkpoints store it as a plain dict)."""
    if isinstance(config, ConfigDict):
        return config
    if not isinstance(config, dict):
        raise ValueError(f"a config must be a dict or ConfigDict; got {type(config).__name__}")
    return ConfigDict(config)


def is_image_data(config) -> bool:
    """Images travel as uint8 ``image`` (dequantised on device); toy data as float ``x``."""
    return len(tuple(as_config(config).data.shape)) == 3


def num_classes(config):
    """The number of classes a class-conditional model sees (``None`` if unconditional)."""
    config = as_config(config)
    return int(config.data.num_classes) if config.train.class_conditional else None


# -- config -> spec ----------------------------------------------------------------------------


def network_kwargs(config):
    """``(name, kwargs)`` of the library's standard networks (``NETWORKS``) from
    ``config.model`` and ``config.data`` (JSON-able; tuples as lists)."""
    config = as_config(config)
    model = config.model
    if model.network == "mlp":
        return "mlp", {
            "data_dim": int(np.prod(config.data.shape)),
            "hidden_dim": model.hidden_dim,
            "num_layers": model.num_layers,
            "embedding_dim": model.embedding_dim,
            "embedding": model.embedding,
            "num_classes": num_classes(config),
        }
    if model.network == "unet":
        return "unet", {
            "image_shape": list(config.data.shape),
            "base_channels": model.base_channels,
            "channel_multipliers": list(model.channel_multipliers),
            "num_res_blocks": model.num_res_blocks,
            "attention_resolutions": list(model.attention_resolutions),
            "dropout": model.dropout,
            "embedding": model.embedding,
            "num_classes": num_classes(config),
        }
    pick(NETWORKS, model.network, "network")
    raise AssertionError("unreachable")


def process_entry(config) -> dict:
    """``{"name", "kwargs"}`` of ``config.process`` (only the fields that process reads)."""
    config = as_config(config)
    name = config.process.name
    pick(PROCESSES, name, "process")
    return {"name": name, "kwargs": {f: config.process[f] for f in _PROCESS_FIELDS[name]}}


def model_spec(config) -> dict:
    """The JSON-able model spec of ``config``: everything that rebuilds its model (network class
    and arguments, the family's model entry, data shape, kind, value range and class count)."""
    config = as_config(config)
    family = family_module(config)
    network_name, kwargs = family.network_kwargs(config)
    image = is_image_data(config)
    classes = num_classes(config)
    return {
        "format": SPEC_FORMAT,
        "family": family.FAMILY,
        "network": {"name": network_name, "kwargs": kwargs},
        "model": family.model_entry(config),
        "data": {
            "name": config.data.name,
            "shape": list(config.data.shape),
            "kind": "image" if image else "points",
            "value_range": [-1.0, 1.0] if image else None,
            "num_classes": classes,
            "null_class": classes,
        },
    }


# -- spec -> objects ---------------------------------------------------------------------------


def _tuples(value):
    """JSON lists back to the tuples the constructors expect."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def check_spec(spec):
    """``spec`` if it is a model spec of this format, else a one-line ``ValueError``."""
    if not isinstance(spec, dict) or spec.get("format") != SPEC_FORMAT:
        found = spec.get("format") if isinstance(spec, dict) else type(spec).__name__
        raise ValueError(f"not a model spec of format {SPEC_FORMAT!r} (found {found!r})")
    return spec


def process_from_entry(entry):
    """The forward process of a ``{"name", "kwargs"}`` entry."""
    return pick(PROCESSES, entry["name"], "process")(**entry["kwargs"])


def network_from_spec(spec, *, seed=0):
    """The NNX network of a model spec, initialised from ``seed`` (restore overwrites it)."""
    entry = check_spec(spec)["network"]
    table = {**NETWORKS, **family_module(spec).NETWORKS}
    cls = pick(table, entry["name"], "network")
    kwargs = {k: _tuples(v) for k, v in entry["kwargs"].items()}
    return cls(rngs=training_rngs(seed), **kwargs)


def model_from_spec(spec, network):
    """``network`` wrapped as the model the spec describes (for the Gaussian family the VE-frame
    denoiser: preconditioning, or a process-time network adapter)."""
    return family_module(check_spec(spec)).model_from_spec(spec, network)


# -- config -> objects (training) -----------------------------------------------------------------


def build_process(config):
    """The forward process named by ``config.process``."""
    return process_from_entry(process_entry(config))


def build_model(config, *, seed=None):
    """``(network, wrap)``: the NNX network of ``config.model`` and ``wrap(network) -> model`` (the
    denoiser for the Gaussian family).
    Also the ``build=`` callback of :func:`diffusion_jax.checkpoints.load_denoiser`."""
    config = as_config(config)
    spec = model_spec(config)
    seed = config.train.seed if seed is None else seed
    network = network_from_spec(spec, seed=seed)
    return network, (lambda net: model_from_spec(spec, net))


def build_t_distribution(config):
    """The training noise-level distribution of ``config.loss``."""
    config = as_config(config)
    return pick(T_DISTRIBUTIONS, config.loss.t_distribution, "t_distribution")(config.loss)


def build_weighting(config):
    """The loss weighting of ``config.loss``."""
    config = as_config(config)
    return pick(WEIGHTINGS, config.loss.weighting, "weighting")(config)


def training_rngs(seed):
    """Flax NNX RNG streams for initialisation (``params``) and dropout."""
    from flax import nnx

    return nnx.Rngs(params=seed, dropout=seed + 1)


def finite_sigma_max(process, fallback: float) -> float:
    """The process's VE noise level at ``t_max`` if finite (the likelihood's prior level), else
    ``fallback``."""
    value = float(process.ve_sigma(process.t_max))
    return value if math.isfinite(value) else float(fallback)

