"""The training objective of a config: model adapter, loss, label dropout, EMA schedules."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffusion_jax import denoisers, losses, posthoc_ema, training
from diffusion_jax.recipes.builders import (
    as_config,
    build_process,
    build_t_distribution,
    build_weighting,
    is_image_data,
)
from diffusion_jax.recipes.datasets import preprocess

__all__ = ["LOSSES", "make_loss_fn", "ema_schedules", "posthoc_ema_gammas", "drop_labels"]

LOSSES = ("denoising", "flow_matching")


def _training_model(config, wrap, process):
    """``(make_model(network), prediction)`` for the loss: the network itself in process time
    (``preconditioning = "process"``), else the VE denoiser as an x0 model (``ProcessModel``)."""
    if config.model.preconditioning == "process":
        scale = config.model.time_scale
        return (
            lambda net: (lambda x_t, t, cond=None: net(x_t, scale * t, cond)),
            config.model.parameterisation,
        )
    return (lambda net: denoisers.ProcessModel(wrap(net), process)), "x0"


def drop_labels(labels, key, rate, null_class):
    """Label dropout for classifier-free guidance (Ho & Salimans 2022, Alg. 1): each label is
    replaced by the null class ``null_class`` with probability ``rate``."""
    drop = jax.random.bernoulli(key, rate, labels.shape)
    return jnp.where(drop, null_class, labels)


def make_loss_fn(config, wrap):
    """``loss_fn(network, batch, key) -> (batch,)`` from ``config.loss`` (explicit keywords into
    :mod:`diffusion_jax.losses`), with label dropout for classifier-free guidance."""
    config = as_config(config)
    process = build_process(config)
    make_model, prediction = _training_model(config, wrap, process)
    image = is_image_data(config)
    random_flip = bool(config.data.random_flip)
    conditional = bool(config.train.class_conditional)
    null_class = config.data.num_classes
    class_dropout = config.model.class_dropout
    loss_name = config.loss.name
    if loss_name not in LOSSES:
        raise ValueError(f"unknown loss {loss_name!r}; expected one of {list(LOSSES)}")
    t_distribution = build_t_distribution(config)
    weighting = build_weighting(config)
    stratification = config.loss.stratification

    def loss_fn(network, batch, key):
        data_key, drop_key, loss_key = jax.random.split(key, 3)
        x0 = preprocess(batch, data_key, image=image, random_flip=random_flip)
        cond = None
        if conditional:
            cond = drop_labels(batch["label"], drop_key, class_dropout, null_class)
        model = make_model(network)
        if loss_name == "flow_matching":
            return losses.flow_matching_loss(
                model, x0, loss_key, process=process, t_distribution=t_distribution, cond=cond,
                stratification=stratification,
            )
        return losses.denoising_loss(
            model, x0, loss_key, process=process, prediction=prediction,
            t_distribution=t_distribution, weighting=weighting, cond=cond,
            stratification=stratification,
        )

    return loss_fn


def ema_schedules(config):
    """Name -> decay(step) for every EMA of ``config.train`` (half-lives in images, EDM App. F.1;
    fixed decays)."""
    train = as_config(config).train
    schedules = {}
    for half_life in train.ema_half_lives:
        schedules[f"half_life_{half_life:g}"] = training.ema_half_life(
            half_life, train.batch_size, train.ema_rampup_ratio or None
        )
    for decay in train.ema_decays:
        schedules[f"decay_{decay:g}"] = training.ema_constant(decay)
    for name, gamma in posthoc_ema_gammas(config).items():
        schedules[name] = training.ema_power(gamma)
    return schedules


def posthoc_ema_gammas(config):
    """EMA name -> power exponent of the post-hoc EMA snapshots (EDM2 Sec. 3.1; empty when
    ``train.posthoc_ema_every`` is 0)."""
    train = as_config(config).train
    if not train.get("posthoc_ema_every", 0):
        return {}
    return {f"power_sigma_rel_{s:g}": posthoc_ema.gamma_of_sigma_rel(s)
            for s in train.posthoc_ema_sigma_rels}
