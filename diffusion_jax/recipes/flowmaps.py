"""The flow-map family's recipe module (``config.model.family = "flowmap"``): a network as a
two-time map ``flow_map(x, sigma, sigma_to, cond) -> x at sigma_to`` in the VE frame
(:mod:`diffusion_jax.flowmaps`), trained by one objective of ``config.flowmap.objective``
(progressive distillation, consistency distillation / training / iCT / ECT, sCM, CTM, MeanFlow,
shortcut) and sampled in ``config.sample.num_steps`` jumps (``sample.py --num_steps 1``).

Distillation and tuning objectives start from a teacher run (``config.flowmap.teacher_workdir``,
any Gaussian-family run, loaded with :func:`diffusion_jax.recipes.load`): the student starts
from the teacher's EMA weights and the teacher denoiser reaches the loss as the train step's
frozen pytree (``context.frozen``). The student's run stores in ``spec["model"]`` everything
sampling needs (never the teacher), so it opens itself.
"""

from __future__ import annotations

import dataclasses
import math
import os

import jax
import jax.numpy as jnp
from flax import nnx

from diffusion_jax import callables, denoisers, training
from diffusion_jax import samplers as core_samplers
from diffusion_jax.flowmaps import base, curricula, meanflow, parameterisations, trigflow
from diffusion_jax.flowmaps import samplers as flow_map_samplers
from diffusion_jax.recipes import datasets, sampling
from diffusion_jax.recipes import evaluation as image_evaluation
from diffusion_jax.recipes.builders import NETWORKS as STANDARD_NETWORKS
from diffusion_jax.recipes.builders import as_config, is_image_data, pick
from diffusion_jax.recipes.builders import network_kwargs as standard_network_kwargs
from diffusion_jax.recipes.objectives import drop_labels
from diffusion_jax.samplers.grids import karras_interpolate, karras_levels

__all__ = ["FAMILY", "NETWORKS", "OBJECTIVES", "SAMPLERS", "GRIDS", "NetworkWithLogVariance",
           "network_kwargs", "model_entry", "model_from_spec", "make_loss_fn", "load_arrays",
           "train_extras", "load_teacher", "copy_teacher_weights", "flow_map_sigmas", "generate",
           "write_samples", "evaluate", "validate"]

FAMILY = "flowmap"


class NetworkWithLogVariance(nnx.Module):
    """A standard network (``network``) and sCM's learned log-variance ``u(t)`` of the adaptive
    weighting (``log_variance``, :class:`diffusion_jax.flowmaps.trigflow.TimeLogVariance`; Lu &
    Song 2024, Sec. 4.3), trained together as one module; calling it calls the network."""

    def __init__(self, *, network, log_variance, rngs):
        cls = pick(STANDARD_NETWORKS, network["name"], "network")
        self.network = cls(rngs=rngs, **{k: tuple(v) if isinstance(v, list) else v
                                          for k, v in network["kwargs"].items()})
        self.log_variance = trigflow.TimeLogVariance(rngs=rngs, **log_variance)

    def __call__(self, *args, **kwargs):
        return self.network(*args, **kwargs)


NETWORKS = {"with_log_variance": NetworkWithLogVariance}  # besides builders.NETWORKS
load_arrays = None  # the standard data path (recipes.datasets)
write_samples = sampling.write_samples
TEACHER_COMMAND = "python train.py --config configs/digits_edm.py --workdir runs/digits"


@dataclasses.dataclass(frozen=True)
class Objective:
    """What an objective needs: the flow map it trains (``parameterisation``), whether the
    teacher is read by the loss (``"loss"``), only starts the student (``"init"``) or is absent
    (``""``), a two-time network, and its default sampler and grid."""

    parameterisation: str
    teacher: str
    two_time: bool
    sampler: str
    grid: str = "karras"


OBJECTIVES = {
    "progressive": Objective("denoiser", "init", False, "flow_map"),
    "cd": Objective("consistency", "loss", False, "consistency"),
    "ct": Objective("consistency", "", False, "consistency"),
    "ict": Objective("consistency", "", False, "consistency"),
    "ect": Objective("consistency", "init", False, "consistency"),
    "scd": Objective("trigflow", "loss", False, "consistency"),
    "sct": Objective("trigflow", "", False, "consistency"),
    "ctm": Objective("ctm", "loss", True, "flow_map"),
    "meanflow": Objective("meanflow", "", True, "flow_map", "uniform_time"),
    "shortcut": Objective("shortcut", "", True, "flow_map", "uniform_time"),
}
SAMPLERS = tuple(info.name for info in flow_map_samplers.FLOW_MAP_SAMPLERS)
GRIDS = ("karras", "uniform_time")


def _objective(config):
    name = config.flowmap.objective
    if name not in OBJECTIVES:
        raise ValueError(f"unknown flowmap.objective {name!r}; expected one of {list(OBJECTIVES)}")
    return OBJECTIVES[name]


# -- config -> spec -> model ----------------------------------------------------------------------


def network_kwargs(config):
    """The standard network of ``config.model`` (builders), with ``two_time=True`` for the
    objectives whose network sees a second time (CTM's ``s``, MeanFlow's ``r``, shortcut's ``d``)."""
    config = as_config(config)
    name, kwargs = standard_network_kwargs(config)
    if _objective(config).two_time:
        kwargs = {**kwargs, "two_time": True}
    if _objective(config).parameterisation == "trigflow" and config.flowmap.scm_adaptive_weight:
        log_variance = {"embedding": config.model.embedding,
                        "time_scale": float(config.flowmap.time_scale)}
        return "with_log_variance", {"network": {"name": name, "kwargs": kwargs},
                                     "log_variance": log_variance}
    return name, kwargs


def _default_num_steps(config):
    """The student's own step count: progressive distillation's last stage, else 1."""
    fm = config.flowmap
    if fm.objective == "progressive":
        return max(fm.progressive_teacher_steps // 2 ** fm.progressive_num_stages, 1)
    return 1


def model_entry(config) -> dict:
    """``spec["model"]``: the objective, the parameterisation with its constants and the default
    sampling (sampler, grid, steps, gamma): all that rebuilds and samples the flow map."""
    config = as_config(config)
    fm = config.flowmap
    objective = _objective(config)
    return {
        "objective": fm.objective,
        "parameterisation": objective.parameterisation,
        # f(x, boundary_sigma) = x: ECT tunes EDM's unshifted preconditioning (Geng et al. 2024)
        "boundary_sigma": 0.0 if fm.objective == "ect" else float(fm.sigma_min),
        "sigma_min": float(fm.sigma_min),
        "sigma_max": float(fm.sigma_max),
        "sigma_data": float(fm.sigma_data),
        "rho": float(fm.rho),
        "sampler": fm.sampler or objective.sampler,
        "grid": fm.sample_grid or objective.grid,
        "num_steps": _default_num_steps(config),
        "gamma": float(fm.gamma),
        "time_scale": float(fm.time_scale),
    }


def model_from_spec(spec, network):
    """``network`` as the spec's flow map (a jittable pytree)."""
    entry = spec["model"]
    return _make_flow_map(entry["parameterisation"], network, sigma_min=entry["boundary_sigma"],
                          sigma_data=entry["sigma_data"], time_scale=entry["time_scale"])


def _student_denoiser(network, sigma_data):
    return denoisers.PreconditionedDenoiser(network, denoisers.EDMPreconditioning(sigma_data))


def _make_flow_map(parameterisation, network, *, sigma_min, sigma_data, time_scale):
    if parameterisation == "denoiser":  # progressive distillation: one DDIM (VE Euler) step
        return base.TeacherFlowMap(_student_denoiser(network, sigma_data), sampler="euler",
                                   num_steps=1)
    if parameterisation == "consistency":
        return parameterisations.ConsistencyModel(network, sigma_data=sigma_data,
                                                  sigma_min=sigma_min)
    if parameterisation == "ctm":
        return parameterisations.CTMFlowMap(network, sigma_data=sigma_data, sigma_min=sigma_min)
    if parameterisation == "trigflow":
        inner = network.network if isinstance(network, NetworkWithLogVariance) else network
        return trigflow.TrigFlowConsistency(inner, sigma_data=sigma_data, time_scale=time_scale)
    if parameterisation in ("meanflow", "shortcut"):
        return meanflow.AverageVelocityFlowMap(network, time_scale=time_scale)
    raise ValueError(f"unknown flow-map parameterisation {parameterisation!r}")


# -- the teacher ------------------------------------------------------------------------------


def load_teacher(config):
    """The teacher run of ``config.flowmap.teacher_workdir`` (``recipes.load``, EMA weights),
    checked against the config: one-line errors for a missing run, another family, another data
    shape or another class conditioning."""
    from diffusion_jax.recipes.loading import load

    config = as_config(config)
    path = config.flowmap.teacher_workdir
    if not path:
        raise ValueError(f"flowmap.objective {config.flowmap.objective!r} needs a teacher run: "
                         "set flowmap.teacher_workdir")
    if not os.path.isdir(os.path.join(path, "checkpoints")):
        raise ValueError(f"no teacher run at flowmap.teacher_workdir = {path!r}; make it with "
                         f"`{TEACHER_COMMAND.replace('runs/digits', path)}`")
    run = load(path)
    family = run.spec.get("family", "gaussian")
    if family != "gaussian":
        raise ValueError(f"teacher run {path} is of family {family!r}; a teacher is a "
                         "denoiser (family 'gaussian')")
    shape = tuple(run.spec["data"]["shape"])
    if shape != tuple(config.data.shape):
        raise ValueError(f"teacher run {path} has data shape {shape} but the config has "
                         f"data.shape = {tuple(config.data.shape)}")
    classes = run.spec["data"]["num_classes"]
    wanted = int(config.data.num_classes) if config.train.class_conditional else None
    if classes != wanted:
        raise ValueError(f"teacher run {path} has {classes or 'no'} classes but the config has "
                         f"{wanted or 'no'} (train.class_conditional, data.num_classes)")
    return run


def _check_initial_weights(config, run):
    """The student can start from the teacher: same network (up to the second time input) and
    an EDM-preconditioned teacher with the student's sigma_data."""
    path = config.flowmap.teacher_workdir
    name, kwargs = network_kwargs(config)
    kwargs = {k: v for k, v in kwargs.items() if k != "two_time"}
    teacher_entry = run.spec["network"]
    if teacher_entry["name"] != name or teacher_entry["kwargs"] != kwargs:
        different = sorted(k for k in set(kwargs) | set(teacher_entry["kwargs"])
                           if kwargs.get(k) != teacher_entry["kwargs"].get(k))
        raise ValueError(f"the student cannot start from teacher run {path}: its network differs "
                         f"in {different or ['name']}; match config.model to the teacher or set "
                         "flowmap.init_from_teacher=False")
    denoiser = run.spec["model"].get("denoiser", {})
    pre = denoiser.get("preconditioning", {})
    sigma_data = pre.get("kwargs", {}).get("sigma_data")
    if pre.get("name") != "edm" or sigma_data != config.flowmap.sigma_data:
        raise ValueError(f"the student starts from an EDM-preconditioned teacher with sigma_data "
                         f"= flowmap.sigma_data = {config.flowmap.sigma_data}; teacher run {path} "
                         f"has {pre.get('name') or denoiser.get('kind')!r} (sigma_data "
                         f"{sigma_data}); set flowmap.init_from_teacher=False")


def copy_teacher_weights(teacher_network, student):
    """Set ``student``'s parameters to ``teacher_network``'s, in place (the student of every
    distillation and tuning objective starts from its teacher: Salimans & Ho 2022, Song et al.
    2023, Geng et al. 2024, Kim et al. 2023). A two-time student's second time branch
    (``conditioning.*_to_*``) has no counterpart: its output layer is set to zero, so the student
    starts as the teacher whatever the second time."""
    source = {path: variable.get_value()
              for path, variable in nnx.to_flat_state(nnx.state(teacher_network, nnx.Param))}
    updated = []
    for path, variable in nnx.to_flat_state(nnx.state(student, nnx.Param)):
        value = variable.get_value()
        if path in source:
            if source[path].shape != value.shape:
                raise ValueError(f"teacher parameter {'/'.join(map(str, path))} has shape "
                                 f"{source[path].shape}, the student's {value.shape}")
            value = source[path]
        elif any(str(part).endswith("_to_2") for part in path):
            value = jnp.zeros_like(value)
        elif not any("_to" in str(part) for part in path):
            raise ValueError(f"the teacher has no parameter {'/'.join(map(str, path))}")
        updated.append((path, variable.replace(value)))
    nnx.update(student, nnx.from_flat_state(updated))


# -- training -------------------------------------------------------------------------------------


def _teacher_flow_map(denoiser, config, num_steps=1):
    """The teacher denoiser as a flow map: ``num_steps`` of ``flowmap.teacher_sampler``."""
    return base.TeacherFlowMap(denoiser, sampler=config.flowmap.teacher_sampler,
                               num_steps=num_steps)


def _curriculum(config, default_s0, default_s1):
    fm = config.flowmap
    return {"total_steps": int(config.train.num_steps),
            "s0": int(fm.curriculum_s0 or default_s0), "s1": int(fm.curriculum_s1 or default_s1)}


def _ct_target_decay(config):
    """``mu(k)`` of consistency training's EMA target (the released code's form,
    :func:`diffusion_jax.flowmaps.curricula.ct_ema_decay`)."""
    curriculum = _curriculum(config, 2, 150)
    mu0 = float(config.flowmap.mu0)
    return lambda step: curricula.ct_ema_decay(step, mu0=mu0, **curriculum)


def _flow_map_level(fraction, *, sigma_min, sigma_max, rho):
    """Level ``fraction`` (traced, in ``[0, 1]``) of the ``"karras"`` flow-map grid: a Karras
    level, and 0 at ``fraction = 1`` (:func:`flow_map_sigmas` at ``i / num_steps``)."""
    level = karras_interpolate(fraction, sigma_min, sigma_max, rho)
    return jnp.where(fraction >= 1.0, 0.0, level)


def _progressive_loss(config, wrap):
    """Stage ``k = step // stage_steps`` of progressive distillation (Salimans & Ho 2022, Alg. 2):
    the student takes one DDIM step over ``[s, s'']`` of its ``N_k = teacher_steps / 2^(k+1)``
    step grid, the stage teacher (the ``stage_teacher`` average: a copy of the student at the end
    of the previous stage, the teacher run's weights at stage 0) two, through the midpoint ``s'``
    of the ``2 N_k`` grid (``flow_map_sigmas("karras", ...)``, whose halvings nest). The step count
    is traced, so all stages share one compiled step; the target and weight are
    :func:`diffusion_jax.flowmaps.progressive.progressive_target` and ``max(SNR, 1)``."""
    from diffusion_jax.flowmaps import progressive
    from diffusion_jax.samplers.steps import ddim_step

    fm = config.flowmap
    stage_steps, num_stages = _stage_steps(config), int(fm.progressive_num_stages)
    first_steps = int(fm.progressive_teacher_steps) // 2
    grid = {"sigma_min": float(fm.sigma_min), "sigma_max": float(fm.sigma_max),
            "rho": float(fm.rho)}
    sigma_data = float(fm.sigma_data)

    def loss(network, context, x0, cond, key):
        student = wrap(network).denoiser
        teacher = _student_denoiser(context.ema["stage_teacher"], sigma_data)
        stage = jnp.minimum(context.step // stage_steps, num_stages - 1)
        num_steps = (first_steps // 2**stage).astype(jnp.float32)  # the student's N_k
        step_key, noise_key = jax.random.split(key)
        batch = x0.shape[0]
        index = jnp.floor(jax.random.uniform(step_key, (batch,)) * num_steps)
        index = jnp.minimum(index, num_steps - 1.0)
        sigma, sigma_mid, sigma_to = (
            _flow_map_level(fraction, **grid).astype(x0.dtype)
            for fraction in (index / num_steps, (index + 0.5) / num_steps,
                             (index + 1.0) / num_steps))
        x = x0 + base.expand(sigma, x0) * jax.random.normal(noise_key, x0.shape, x0.dtype)
        x_mid = ddim_step(teacher, x, sigma, sigma_mid, cond=cond)
        x_to = ddim_step(teacher, x_mid, sigma_mid, sigma_to, cond=cond)
        target = jax.lax.stop_gradient(progressive.progressive_target(x, sigma, x_to, sigma_to))
        weight = jnp.maximum(1.0 / jnp.square(sigma), 1.0)
        error = jnp.square(student(x, sigma, cond) - target)
        return weight * jnp.mean(error, axis=tuple(range(1, x0.ndim)))

    return loss


def _consistency_losses(config, wrap):
    """The consistency objectives (:mod:`diffusion_jax.flowmaps.consistency`, :mod:`~.ctm`) as
    ``loss(network, context, x0, cond, key)``."""
    from diffusion_jax.flowmaps import consistency, ctm

    fm = config.flowmap
    grid = {"sigma_min": float(fm.sigma_min), "sigma_max": float(fm.sigma_max),
            "rho": float(fm.rho)}
    huber_c = None if fm.huber_c == 0 else max(float(fm.huber_c), 0.0)
    name = fm.objective
    if name == "cd":
        def loss(network, context, x0, cond, key):
            return consistency.consistency_distillation_loss(
                wrap(network), x0, key, target=wrap(context.ema["target"]),
                teacher=_teacher_flow_map(context.frozen, config),
                num_levels=int(fm.teacher_num_steps), cond=cond, **grid)
    elif name == "ct":
        curriculum = _curriculum(config, 2, 150)

        def loss(network, context, x0, cond, key):
            return consistency.consistency_training_loss(
                wrap(network), x0, key, target=wrap(context.ema["target"]),
                num_levels=curricula.ct_num_levels(context.step, **curriculum), cond=cond,
                **grid)
    elif name == "ict":
        curriculum = _curriculum(config, 10, 1280)

        def loss(network, context, x0, cond, key):
            return consistency.ict_loss(
                wrap(network), x0, key, target=wrap(context.detached),
                num_levels=curricula.ict_num_levels(context.step, **curriculum),
                max_levels=curriculum["s1"] + 1, p_mean=float(fm.p_mean),
                p_std=float(fm.p_std), huber_c=huber_c, cond=cond, **grid)
    elif name == "ect":
        steps_per_stage = int(fm.ect_stage_steps or max(config.train.num_steps // 8, 1))

        def loss(network, context, x0, cond, key):
            return consistency.ect_loss(
                wrap(network), x0, key, target=wrap(context.detached),
                stage=curricula.ect_stage(context.step, steps_per_stage=steps_per_stage),
                p_mean=float(fm.p_mean), p_std=float(fm.p_std), q=float(fm.ect_q),
                c=huber_c or 0.0, cond=cond)
    else:  # ctm
        def loss(network, context, x0, cond, key):
            student = wrap(network)
            return ctm.ctm_loss(
                student, x0, key, target=wrap(context.ema["target"]),
                teacher=_teacher_flow_map(context.frozen, config, int(fm.ctm_teacher_steps)),
                num_levels=int(fm.teacher_num_steps), sigma_data=float(fm.sigma_data),
                dsm_weight=float(fm.ctm_dsm_weight), denoiser=student.denoiser, cond=cond,
                **grid)
    return loss


def _objective_loss(config, wrap):
    name = config.flowmap.objective
    if name == "progressive":
        return _progressive_loss(config, wrap)
    if name in ("cd", "ct", "ict", "ect", "ctm"):
        return _consistency_losses(config, wrap)
    return _continuous_loss(config, wrap)


def _continuous_loss(config, wrap):
    """sCM (sCD / sCT), MeanFlow and shortcut models (:mod:`diffusion_jax.flowmaps.trigflow`,
    :mod:`~.meanflow`, :mod:`~.shortcut`) as ``loss(network, context, x0, cond, key)``."""
    from diffusion_jax.flowmaps import shortcut

    fm = config.flowmap
    name = fm.objective
    if name in ("scd", "sct"):
        warmup = int(fm.scm_warmup_steps or config.train.num_steps // 10)

        def loss(network, context, x0, cond, key):
            inner = network.network if isinstance(network, training.CastNetwork) else network
            log_variance = getattr(inner, "log_variance", None)  # the composite's u(t)
            return trigflow.scm_loss(
                wrap(network), wrap(context.detached), x0, key,
                r=trigflow.tangent_warmup(context.step, warmup),
                teacher=context.frozen if name == "scd" else None, log_variance=log_variance,
                p_mean=float(fm.p_mean), p_std=float(fm.p_std),
                tangent_c=float(fm.scm_tangent_c), cond=cond)
    elif name == "meanflow":
        guidance = float(fm.meanflow_guidance)
        conditional = bool(config.train.class_conditional)
        if guidance != 1.0 and not conditional:
            raise ValueError("flowmap.meanflow_guidance != 1 needs a class-conditional model")
        cfg = {}
        if guidance != 1.0:
            cfg = {"cfg_scale": guidance, "null_class": int(config.data.num_classes),
                   "label_dropout": float(config.model.class_dropout)}

        def loss(network, context, x0, cond, key):
            return meanflow.meanflow_loss(
                wrap(network), x0, key, time_mean=float(fm.meanflow_time_mean),
                time_std=float(fm.meanflow_time_std), fraction_r_neq_t=float(fm.meanflow_ratio),
                adaptive_p=float(fm.meanflow_power), adaptive_c=float(fm.meanflow_c),
                cond=cond, **cfg)
    else:  # shortcut
        num_levels = int(round(math.log2(fm.shortcut_max_steps)))

        def loss(network, context, x0, cond, key):
            return shortcut.shortcut_loss(
                wrap(network), wrap(context.ema["target"]), x0, key,
                bootstrap_fraction=float(fm.shortcut_fraction), num_levels=num_levels,
                cond=cond)
    return loss


def make_loss_fn(config, wrap):
    """``loss_fn(network, batch, key, context) -> (batch,)``: the data (dequantised images, label
    dropout for classifier-free guidance), then ``config.flowmap.objective``'s loss reading the
    context (``context.frozen``: the teacher denoiser; ``context.ema``: the EMA target or stage
    teacher; ``context.detached``: iCT / ECT's ``sg(theta)``; ``context.step``: curricula)."""
    config = as_config(config)
    _objective(config)
    objective_loss = _objective_loss(config, wrap)
    image = is_image_data(config)
    random_flip = bool(config.data.random_flip)
    conditional = bool(config.train.class_conditional)
    null_class, class_dropout = config.data.num_classes, config.model.class_dropout
    # MeanFlow's training-time guidance drops the labels itself (and keeps v for those examples)
    drops_own_labels = config.flowmap.objective == "meanflow" and config.flowmap.meanflow_guidance != 1.0

    def loss_fn(network, batch, key, context):
        data_key, drop_key, loss_key = jax.random.split(key, 3)
        x0 = datasets.preprocess(batch, data_key, image=image, random_flip=random_flip)
        cond = None
        if conditional:
            cond = batch["label"]
            if not drops_own_labels:
                cond = drop_labels(cond, drop_key, class_dropout, null_class)
        return objective_loss(network, context, x0, cond, loss_key)

    return loss_fn


def _stage_steps(config):
    return max(config.train.num_steps // config.flowmap.progressive_num_stages, 1)


def _extra_emas(config):
    """The averages the loss reads besides the config's (``context.ema[name]``): the EMA target
    of CD (mu, Song et al. 2023, Alg. 2), CT (mu(k), App. C) and shortcut models (Frans et al.
    2024), and progressive distillation's stage teacher: a copy of the student taken at the end
    of every stage (decay 0 there, 1 elsewhere; Salimans & Ho 2022, Alg. 2)."""
    fm = config.flowmap
    if fm.objective in ("cd", "ctm", "shortcut"):
        return {"target": training.ema_constant(fm.target_decay)}
    if fm.objective == "ct":
        return {"target": _ct_target_decay(config)}
    if fm.objective == "progressive":
        stage_steps = _stage_steps(config)
        return {"stage_teacher": lambda step: jnp.where((step + 1) % stage_steps == 0, 0.0, 1.0)}
    return {}


def train_extras(config):
    """The train step's extras: the loss reads a context; the teacher denoiser is the frozen
    pytree of the objectives that query it (``"loss"``); the student starts from the teacher's
    EMA weights (``flowmap.init_from_teacher``); the objective's extra averages."""
    from diffusion_jax.recipes.training_loop import TrainExtras

    config = as_config(config)
    objective = _objective(config)
    run = load_teacher(config) if objective.teacher else None
    initialise = None
    if run is not None and config.flowmap.init_from_teacher:
        _check_initial_weights(config, run)
        teacher_network = run.denoiser.network
        initialise = lambda network: copy_teacher_weights(teacher_network, network)  # noqa: E731
    frozen = run.denoiser if objective.teacher == "loss" else None
    return TrainExtras(with_context=True, frozen=frozen, emas=_extra_emas(config),
                       initialise=initialise)


# -- sampling -------------------------------------------------------------------------------------


def _check_choice(value, choices, what):
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; expected one of {list(choices)}")
    return value


def flow_map_sigmas(grid, num_steps, *, sigma_min, sigma_max, rho=7.0):
    """The ``num_steps + 1`` noise levels of ``num_steps`` flow-map jumps from ``sigma_max`` to 0:
    ``"karras"``: the Karras levels (Karras et al. 2022, eq. 5) of ``num_steps + 1`` points with
    the last (``sigma_min``) replaced by 0, so every jump counts (one step: ``[sigma_max, 0]``);
    ``"uniform_time"``: uniform in rectified-flow time ``t = sigma / (1 + sigma)`` (MeanFlow's
    and shortcut models' uniform k-step schedule)."""
    _check_choice(grid, GRIDS, "flow-map grid")
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer; got {num_steps!r}")
    if grid == "karras":
        levels = karras_levels(num_steps + 1, sigma_min, sigma_max, rho)
        return levels.at[-1].set(0.0)
    t_max = sigma_max / (1.0 + sigma_max)
    t = t_max * (1.0 - jnp.arange(num_steps + 1, dtype=jnp.float32) / num_steps)
    return t / (1.0 - t)


def _sampler_options(info, entry, options):
    """The sampler's options: the spec's defaults (``gamma``; the consistency boundary) and
    ``options``, unknown names refused in one line."""
    unknown = sorted(set(options) - set(info.options))
    if unknown:
        raise ValueError(f"flow-map sampler {info.name!r} has no option(s) {unknown}; its options "
                         f"are {list(info.options)}")
    defaults = {"gamma": entry["gamma"], "sigma_min": entry["boundary_sigma"]}
    return {name: float(options.get(name, defaults[name])) for name in info.options}


def generate(model, config, *, num_samples, seed, sampler=None, num_steps=None, labels=None,
             options=None, batch_size=None, progress=False, grid=None, guidance_scale=None):
    """``num_samples`` samples (host array, model range) and labels (or ``None``) in
    ``num_steps`` flow-map jumps (default: the student's own, ``spec["model"]["num_steps"]``;
    ``config.sample.num_steps`` when set above 1) on the flow-map grid (``grid`` or
    ``config.flowmap.sample_grid``): ``sampler`` ``flow_map`` (jumps; CTM's gamma-sampling,
    Kim et al. 2023, Alg. 2, with ``options={"gamma": g}``, default ``flowmap.gamma``) or
    ``consistency`` (multistep consistency sampling, Song et al. 2023, Alg. 1). Sample ``i``
    starts from ``normal(fold_in(noise_key, i))``, so samples do not depend on batching."""
    config = as_config(config)
    entry = model_entry(config)
    if guidance_scale:
        raise ValueError("classifier-free guidance is not available for flow maps (MeanFlow "
                         "trains it in: flowmap.meanflow_guidance)")
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer; got {num_samples!r}")
    info = flow_map_samplers.get(sampler or entry["sampler"])
    grid = _check_choice(grid or entry["grid"], GRIDS, "flow-map grid")
    if num_steps is None:
        num_steps = config.sample.num_steps if config.sample.num_steps > 1 else entry["num_steps"]
    options = _sampler_options(info, entry, dict(options or {}))
    sigmas = flow_map_sigmas(grid, num_steps, sigma_min=entry["sigma_min"],
                             sigma_max=entry["sigma_max"], rho=entry["rho"])
    run = callables.filter_jit(lambda model, noise, sigmas, key, cond: info.fn(
        model, noise, sigmas, key=key, cond=cond, **options))
    labels = sampling.resolve_labels(config, num_samples, labels)
    batch_size = min(batch_size or config.sample.batch_size, num_samples)
    samples = sampling.sample_in_batches(
        lambda noise, key, cond: run(model, noise, sigmas, key, cond),
        num_samples=num_samples, batch_size=batch_size, seed=seed,
        shape=tuple(config.data.shape), labels=labels,
        description=f"sampling {num_samples} ({sampler}, {num_steps} steps)" if progress else None,
    )
    return samples, labels


# -- evaluation ---------------------------------------------------------------------------------


def evaluate(model, config, *, num_examples, seed, batch_size, progress=False, num_steps=None,
             sampler=None):
    """FID, KID, precision and recall of ``num_examples`` samples in ``num_steps`` jumps (default:
    the student's own) against the training split, with the data's feature network (the bundled
    digits classifier for digits; :mod:`diffusion_jax.recipes.evaluation`); a dict of floats
    (``{"num_examples", "num_steps"}`` only when no feature network fits the data)."""
    config = as_config(config)
    entry = model_entry(config)
    if num_steps is None:
        num_steps = config.sample.num_steps if config.sample.num_steps > 1 else entry["num_steps"]
    report = {"num_examples": num_examples, "num_steps": num_steps}
    name = image_evaluation.feature_network_name(config)
    if name is None:
        return report
    feature_fn = image_evaluation.feature_function(name)
    split = datasets.load_split(config, config.data.split)
    reference = split["image"] if "image" in split else split["x"]
    features, _ = image_evaluation.extract(feature_fn, reference, batch_size, progress=progress)
    from diffusion_jax import metrics

    statistics = metrics.FeatureStatistics().update(features)
    samples, _ = generate(model, config, num_samples=num_examples, seed=seed, sampler=sampler,
                          num_steps=num_steps, batch_size=batch_size, progress=progress)
    quality = image_evaluation.sample_quality(
        feature_fn, image_evaluation.as_feature_inputs(samples, is_image_data(config)),
        statistics, features, batch_size)
    report.update({k: float(v) for k, v in quality.items()
                   if k in ("fid", "kid_mean", "kid_std", "precision", "recall")})
    return report


# -- validation -----------------------------------------------------------------------------------


def validate(config):
    """One-line errors for the flow-map settings before a run starts (the teacher run is checked
    when training starts, by :func:`load_teacher`)."""
    config = as_config(config)
    fm = config.flowmap
    objective = _objective(config)
    if objective.teacher and not fm.teacher_workdir:
        raise ValueError(f"flowmap.objective {fm.objective!r} starts from a teacher run: set "
                         "flowmap.teacher_workdir")
    if fm.sampler:
        _check_choice(fm.sampler, SAMPLERS, "flowmap.sampler")
    if fm.sample_grid:
        _check_choice(fm.sample_grid, GRIDS, "flowmap.sample_grid")
    if not 0.0 < fm.sigma_min < fm.sigma_max < math.inf:
        raise ValueError(f"need 0 < flowmap.sigma_min < flowmap.sigma_max; got {fm.sigma_min}, "
                         f"{fm.sigma_max}")
    if not 0.0 <= fm.gamma <= 1.0:
        raise ValueError(f"flowmap.gamma must lie in [0, 1]; got {fm.gamma}")
    if fm.gamma and (fm.sampler or objective.sampler) != "flow_map":
        raise ValueError("flowmap.gamma re-noises CTM-style jumps: it needs the 'flow_map' "
                         "sampler")
    if fm.objective in ("ct", "ict"):  # the curriculum reaches two levels and fits the run
        defaults = (2, 150) if fm.objective == "ct" else (10, 1280)
        curriculum = _curriculum(config, *defaults)
        if fm.objective == "ct":
            curricula.ct_num_levels(0, **curriculum)
        else:
            curricula.ict_steps_per_stage(curriculum["total_steps"], s0=curriculum["s0"],
                                          s1=curriculum["s1"])
    if objective.teacher == "loss" and objective.parameterisation != "trigflow":
        if core_samplers.get(fm.teacher_sampler).needs_key:
            raise ValueError(f"flowmap.teacher_sampler {fm.teacher_sampler!r} draws noise; the "
                             "teacher's step must be deterministic")
    if fm.objective == "progressive":
        steps, stages = fm.progressive_teacher_steps, fm.progressive_num_stages
        if stages < 1 or steps < 2 ** stages:
            raise ValueError(f"progressive distillation halves flowmap.progressive_teacher_steps "
                             f"= {steps} in each of flowmap.progressive_num_stages = {stages} "
                             "stages: need teacher steps >= 2^stages and stages >= 1")
        if config.train.num_steps < stages:
            raise ValueError(f"train.num_steps = {config.train.num_steps} is fewer than the "
                             f"{stages} progressive stages")
    if objective.parameterisation == "trigflow" and objective.teacher and fm.init_from_teacher:
        raise ValueError("sCM's TrigFlow network does not share the EDM teacher's time input "
                         "and sign: set flowmap.init_from_teacher=False")
    if objective.teacher == "init" and not fm.init_from_teacher:
        raise ValueError(f"flowmap.objective {fm.objective!r} tunes its teacher's weights: "
                         "flowmap.init_from_teacher must be True")
