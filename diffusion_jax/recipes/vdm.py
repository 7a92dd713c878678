"""VDM on digits with a learned schedule (Kingma et al. 2021): the epsilon network minimises the
bound's estimate ``L_prior + L_recon + L_diff`` (eq. 10, continuous time, eq. 17) and the monotone
log-SNR network :class:`~diffusion_jax.learned_schedule.MonotoneLogSNR` (end points and shape)
minimises its second moment, i.e. the estimator's variance (Sec. 5.2, App. I.2).

``train.py --config configs/digits_vdm.py --workdir DIR`` reaches :func:`train_vdm` (a config with
a ``vdm`` group). It writes ``DIR/vdm_report.json``: the bound in bits/dim and the variance of the
per-example estimate over training, the learned end points and ``gamma(t)`` on a grid.
"""

from __future__ import annotations

import json
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from diffusion_jax import data, training
from diffusion_jax.learned_schedule import (
    EpsilonNetworkModel,
    MonotoneLogSNR,
    variance_minimising_gradients,
    vdm_vlb,
)
from diffusion_jax.recipes.builders import as_config, build_model
from diffusion_jax.recipes.datasets import load_arrays, load_split, preprocess

__all__ = ["is_vdm_config", "initial_schedule", "make_vdm_step", "train_vdm"]


def is_vdm_config(config) -> bool:
    """Whether ``config`` trains VDM with a learned schedule (it has a ``vdm`` group)."""
    return "vdm" in as_config(config)


def initial_schedule(config):
    """The config's :class:`MonotoneLogSNR` with array end points (so they can be learned)."""
    vc = as_config(config).vdm
    schedule = MonotoneLogSNR.init(jax.random.key(as_config(config).train.seed + 17),
                                   hidden=vc.hidden)
    return MonotoneLogSNR(schedule.w1, schedule.b1, schedule.w2, schedule.b2, schedule.w3,
                          gamma_min=jnp.float32(vc.gamma_min),
                          gamma_max=jnp.float32(vc.gamma_max))


def make_vdm_step(parts, model_optimizer, schedule_optimizer, *, learn_schedule):
    """Pure ``step(params, model_state, schedule, schedule_state, batch, key) -> (..., metrics)``:
    the network descends ``E[L]``, the schedule (if ``learn_schedule``) ``E[L^2]``
    (:func:`~diffusion_jax.learned_schedule.variance_minimising_gradients`)."""

    def per_example(params, schedule, batch, key):
        network_key, data_key, loss_key = jax.random.split(key, 3)
        network = training.merge_network(parts, params, parts.buffers, train=True,
                                         key=network_key)
        x0 = preprocess(batch, data_key, image=True)
        return vdm_vlb(EpsilonNetworkModel(network, schedule), schedule, x0, loss_key)

    def step(params, model_state, schedule, schedule_state, batch, key):
        losses, model_gradient, schedule_gradient = variance_minimising_gradients(
            lambda p, s: per_example(p, s, batch, key), params, schedule)
        updates, model_state = model_optimizer.update(model_gradient, model_state, params)
        params = optax.apply_updates(params, updates)
        if learn_schedule:
            updates, schedule_state = schedule_optimizer.update(schedule_gradient, schedule_state)
            schedule = optax.apply_updates(schedule, updates)
        metrics = {"vlb": jnp.mean(losses), "vlb_variance": jnp.var(losses)}
        return params, model_state, schedule, schedule_state, metrics

    return step


def _bits_per_dim(nats, dim):
    # data in [-1, 1] dequantised from 256 levels: + log2(256 / 2) = 7 (REFERENCES, likelihood)
    return nats / (dim * math.log(2.0)) + 7.0


def train_vdm(config, workdir):
    """Train ``config``'s VDM into ``workdir``; returns (and writes) the report."""
    config = as_config(config)
    tc, vc = config.train, config.vdm
    arrays = load_arrays(config)
    network, _ = build_model(config)
    parts = training.split_network(network)
    model_optimizer, _ = training.make_optimizer(
        learning_rate=config.optim.learning_rate, warmup_steps=config.optim.warmup_steps,
        total_steps=tc.num_steps)
    schedule_optimizer = optax.adam(vc.schedule_learning_rate)
    params, schedule = parts.params, initial_schedule(config)
    model_state, schedule_state = model_optimizer.init(params), schedule_optimizer.init(schedule)
    step = jax.jit(make_vdm_step(parts, model_optimizer, schedule_optimizer,
                                 learn_schedule=vc.learn_schedule))
    batches = data.make_batch_iterator(arrays, global_batch_size=tc.batch_size, seed=tc.seed)
    dim = int(np.prod(config.data.shape))
    base_key, history, window, start = jax.random.key(tc.seed), [], [], time.time()
    for index in range(tc.num_steps):
        params, model_state, schedule, schedule_state, metrics = step(
            params, model_state, schedule, schedule_state, next(batches),
            jax.random.fold_in(base_key, index))
        window.append(metrics)
        if (index + 1) % tc.log_every == 0 or index + 1 == tc.num_steps:
            fetched = jax.device_get(window)
            row = {"step": index + 1,
                   "bits_per_dim": _bits_per_dim(float(np.mean([m["vlb"] for m in fetched])), dim),
                   "vlb_variance": float(np.mean([m["vlb_variance"] for m in fetched])),
                   "gamma_min": float(schedule.gamma_min), "gamma_max": float(schedule.gamma_max)}
            history.append(row)
            window = []
            print(f"vdm step {row['step']}: bound {row['bits_per_dim']:.4f} bits/dim, estimator "
                  f"variance {row['vlb_variance']:.1f} nats^2, gamma in [{row['gamma_min']:.2f}, "
                  f"{row['gamma_max']:.2f}]", flush=True)
    report = {"learn_schedule": bool(vc.learn_schedule), "steps": tc.num_steps,
              "seconds": time.time() - start, "history": history,
              "test": _test_estimate(parts, params, schedule, config, dim),
              "gamma_on_grid": {f"{t:.2f}": float(schedule(t)) for t in np.linspace(0, 1, 11)}}
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "vdm_report.json"), "w") as handle:
        json.dump(report, handle, indent=2)
    return report


def _test_estimate(parts, params, schedule, config, dim, repeats=4):
    """The bound (bits/dim) and its per-example estimator variance on the test split (``repeats``
    draws of ``t`` and noise per image)."""
    network = training.merge_network(parts, params, parts.buffers)
    images = load_split(config, "test")["image"]

    @jax.jit
    def estimate(network, schedule, key):
        data_key, loss_key = jax.random.split(key)
        x0 = preprocess({"image": images}, data_key, image=True)
        return vdm_vlb(EpsilonNetworkModel(network, schedule), schedule, x0, loss_key)

    losses = np.concatenate([np.asarray(estimate(network, schedule, jax.random.key(i)))
                             for i in range(repeats)])
    return {"bits_per_dim": _bits_per_dim(float(losses.mean()), dim),
            "standard_error_bits": float(losses.std() / np.sqrt(losses.size)) / (dim * math.log(2)),
            "vlb_variance": float(losses.var()), "num_estimates": int(losses.size)}
