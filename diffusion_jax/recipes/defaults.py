"""The base config, grouped along the data's path: data, process, model, loss, optim, train,
sample, eval. Every experiment file in ``configs/`` overrides a few fields; the recipes map the
names to constructors (``builders.py``). ``load_config(path)`` reads such a file.

Defaults are EDM's recipe (Karras et al. 2022, Table 1): EDM process and preconditioning with
sigma_data = 0.5, ln sigma ~ N(-1.2, 1.2^2), lambda(sigma) = 1/c_out^2, Heun sampling on the
Karras grid (rho = 7).
"""

import ast
import difflib
import importlib.util
import os
import sys
import traceback

import ml_collections

from diffusion_jax.recipes import (
    discrete_defaults,
    flowmaps_defaults,
    flows_defaults,
    latent_defaults,
)

__all__ = ["base_config", "load_config", "parse_overrides"]


def base_config():
    """The base config (ml_collections ``ConfigDict``, locked: unknown keys are errors)."""
    config = ml_collections.ConfigDict()

    config.data = data = ml_collections.ConfigDict()
    data.name = "digits"  # toy 2-D name, "digits", or a TFDS name (mnist, cifar10, celeb_a, ...)
    data.data_dir = ""  # local TFDS data_dir (TFDS datasets only)
    data.split = "train"
    data.shape = (8, 8, 1)  # per-example shape in model range; (2,) for toy 2-D data
    data.num_classes = 0  # > 0 with train.class_conditional for class-conditional training
    data.dataset_size = 0  # toy 2-D data: number of points drawn once (0 = fresh every step)
    data.random_flip = False
    data.image_size = 0  # TFDS images are resized/cropped to this if > 0

    config.process = process = ml_collections.ConfigDict()
    process.name = "edm"  # edm | vp | subvp | ve | cosine | rectified_flow | trigflow
    process.sigma_max = 80.0  # edm, ve
    process.sigma_min = 0.01  # ve
    process.beta_min = 0.1  # vp, subvp
    process.beta_max = 20.0  # vp, subvp
    process.sigma_data = 0.5  # trigflow

    config.model = model = ml_collections.ConfigDict()
    model.family = "gaussian"  # gaussian | flow | discrete (recipes/families.py)
    model.network = "unet"  # unet | mlp
    model.preconditioning = "edm"  # edm | vp | ve | process (ProcessDenoiser: network predicts
    model.parameterisation = "x0"  # ... this in process time; with edm/vp/ve the loss is on x0)
    model.time_scale = 1.0  # c_noise = time_scale * t for preconditioning = process
    model.sigma_data = 0.5
    model.embedding = "positional"  # positional | fourier
    model.embedding_dim = 64
    model.hidden_dim = 256  # mlp
    model.num_layers = 4  # mlp
    model.base_channels = 32  # unet
    model.channel_multipliers = (1, 2)
    model.num_res_blocks = 1
    model.attention_resolutions = ()
    model.dropout = 0.0
    model.class_dropout = 0.1  # label dropout for classifier-free guidance (conditional only)

    config.loss = loss = ml_collections.ConfigDict()
    loss.name = "denoising"  # denoising | flow_matching
    loss.t_distribution = "log_normal"  # log_normal | uniform | logit_normal
    loss.p_mean = -1.2
    loss.p_std = 1.2
    loss.t_min = 1e-5
    loss.weighting = "edm"  # edm | x0 | epsilon | v | min_snr | soft_min_snr | likelihood
    loss.gamma = 5.0  # min_snr / soft_min_snr
    loss.stratification = "iid"

    config.optim = optim = ml_collections.ConfigDict()
    optim.learning_rate = 1e-3
    optim.warmup_steps = 100
    optim.decay = "constant"  # constant | cosine
    optim.b1 = 0.9
    optim.b2 = 0.999
    optim.eps = 1e-8
    optim.weight_decay = 0.0
    optim.grad_clip_norm = 1.0

    config.train = train = ml_collections.ConfigDict()
    train.num_steps = 2000
    train.batch_size = 128  # global batch size
    train.seed = 0
    train.class_conditional = False
    train.ema_half_lives = (5000.0,)  # in training images (Karras et al. 2022)
    train.ema_rampup_ratio = 0.05
    train.ema_decays = ()  # fixed per-step decays, e.g. (0.9999,)
    # post-hoc EMA (EDM2): power EMAs of these widths, snapshots every N steps (0: off) under
    # workdir/posthoc_ema; sample.py / evaluate.py --ema sigma_rel=0.08 reconstruct any width
    train.posthoc_ema_sigma_rels = (0.05, 0.10)
    train.posthoc_ema_every = 0
    train.compute_dtype = "float32"  # float32 | bfloat16 (network compute; state stays float32)
    train.steps_per_call = 1
    train.mesh_data = -1
    train.mesh_model = 1
    train.log_every = 100
    train.sample_every = 1000  # 0: only at the end
    train.checkpoint_every = 1000
    train.max_to_keep = 3
    train.num_grid_samples = 64
    train.eval_every = 0  # > 0: FID/KID (+ precision/recall) of fresh samples every N steps
    train.eval_num_samples = 512

    config.sample = sample = ml_collections.ConfigDict()
    sample.sampler = "heun"
    sample.grid = "karras"
    sample.num_steps = 18
    sample.sigma_min = 0.002
    sample.sigma_max = 80.0
    sample.rho = 7.0
    sample.num_samples = 64
    sample.batch_size = 256
    sample.seed = 0
    sample.guidance_scale = 0.0  # classifier-free guidance weight (conditional models)
    sample.ema = "first"  # first | raw | an EMA name

    config.eval = eval_ = ml_collections.ConfigDict()
    eval_.num_samples = 1000
    eval_.num_projections = 128  # sliced Wasserstein distance for toy data

    discrete_defaults.add_defaults(config)  # config.discrete: the discrete family's settings
    flows_defaults.add_defaults(config)  # config.flow: the flow family's settings
    flowmaps_defaults.add_defaults(config)  # config.flowmap: the flow-map family's settings
    latent_defaults.add_defaults(config)  # config.latent: the latent family's settings
    config.lock()
    return config


def load_config(path, overrides=None):
    """The ``get_config()`` of an ml_collections config file, with ``overrides``
    (``{"train.num_steps": 200}``; string values such as ``"200"`` or ``"(1, 2)"`` are parsed as
    the command line's ``--config.train.num_steps=200``) applied. The file's directory's parent is
    on ``sys.path`` while it loads, so ``from configs import base`` in a repository config works.
    Errors (a missing file, a misspelt field, a value of the wrong type) are one-line
    ``ValueError`` s; a config file is code and runs as such."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.isfile(path):
        raise ValueError(f"config file {path} does not exist")
    root = os.path.dirname(os.path.dirname(path))
    spec = importlib.util.spec_from_file_location(f"_diffusion_jax_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, root)
    try:
        spec.loader.exec_module(module)
        if not hasattr(module, "get_config"):
            raise ValueError(f"config file {path} has no get_config()")
        config = module.get_config()
    except ValueError:
        raise
    except Exception as error:  # noqa: BLE001 - the config file's own code failed
        frame = traceback.extract_tb(error.__traceback__)[-1]
        raise ValueError(f"config file {path} failed ({frame.filename}:{frame.lineno}): "
                         f"{type(error).__name__}: {error}") from None
    finally:
        sys.path.remove(root)
    for name, value in (overrides or {}).items():
        _override(config, name, value)
    return config


def _override(config, name, value):
    group, _, field = name.rpartition(".")
    target = config
    for part in group.split(".") if group else ():
        if part not in target or not isinstance(target[part], ml_collections.ConfigDict):
            raise ValueError(f"unknown config group {part!r} in {name!r}")
        target = target[part]
    if field not in target:
        close = difflib.get_close_matches(field, list(target.keys()), n=1)
        hint = f"; did you mean {group + '.' if group else ''}{close[0]}?" if close else ""
        raise ValueError(f"unknown config field {name!r}{hint}")
    current = target[field]
    if isinstance(value, str) and not isinstance(current, str):
        value = _parse_value(name, value)
    if isinstance(current, tuple) and isinstance(value, list):
        value = tuple(value)
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    try:
        target[field] = value
    except (TypeError, ValueError) as error:
        raise ValueError(f"bad value {value!r} for config field {name!r} "
                         f"(a {type(current).__name__}): {str(error).splitlines()[0]}") from None


def _parse_value(name, text):
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise ValueError(f"cannot parse {text!r} for config field {name!r}") from None


def parse_overrides(args):
    """``{"train.num_steps": "200"}`` from command-line words ``--config.train.num_steps=200``;
    other words raise a one-line ``ValueError``."""
    overrides = {}
    for arg in args:
        if not arg.startswith("--config."):
            raise ValueError(f"unexpected argument {arg!r}")
        name, sep, value = arg[len("--config."):].partition("=")
        if not sep:
            raise ValueError(f"{arg!r} needs a value: --config.{name}=VALUE")
        overrides[name] = value
    return overrides
