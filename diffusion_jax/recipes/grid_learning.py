"""Learned sampling grids of a run: learn (LD3 or GITS), store under ``RUN/grids/``, load back.

``learn_run_grid(workdir, sampler=..., num_steps=...)`` loads the run (``recipes.load``), draws
training and held-out unit noises (sample ``i``'s noise is ``normal(fold_in(key, i))`` with
different keys for the two sets), computes the teacher endpoints, learns the grid with
:func:`diffusion_jax.grid_learning.learn_grid` (or :func:`~diffusion_jax.grid_learning.gits_grid`)
for the model as the run samples it (its sigma range, class labels ``i mod classes``, its
classifier-free guidance scale) and writes ``RUN/grids/<sampler>_<num_steps>.json`` with the
sigmas, the method and its settings, the teacher, the RMS endpoint errors before / after on both
noise sets and the learning cost. ``load_learned_grid`` reads it back for ``--grid learned``.
"""

from __future__ import annotations

import datetime
import glob
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import grid_learning, guidance, samplers
from diffusion_jax.recipes.builders import as_config
from diffusion_jax.recipes.sampling import resolve_labels, sample_noise

__all__ = ["FORMAT", "grid_path", "load_learned_grid", "make_teacher", "learn_run_grid"]

FORMAT = "diffusion_jax.learned_grid/1"
METHODS = ("ld3", "gits")


def grid_path(workdir, sampler, num_steps):
    """``workdir/grids/<sampler>_<num_steps>.json``."""
    return os.path.join(workdir, "grids", f"{sampler}_{num_steps}.json")


def load_learned_grid(workdir, sampler, num_steps):
    """The stored learned grid of ``sampler`` with ``num_steps`` steps (``num_steps + 1`` sigmas);
    a one-line ``ValueError`` naming what exists when it is missing or of another length."""
    if not workdir:
        raise ValueError("grid 'learned' needs the run directory (workdir)")
    path = grid_path(workdir, sampler, num_steps)
    if not os.path.exists(path):
        found = sorted(os.path.basename(p) for p in glob.glob(grid_path(workdir, sampler, "*")))
        raise ValueError(f"no learned grid {path} (found for {sampler}: {found or 'none'}); run "
                         f"learn_grid.py --workdir {workdir} --sampler {sampler} --num_steps "
                         f"{num_steps}")
    with open(path) as f:
        stored = json.load(f)
    if stored.get("format") != FORMAT or stored.get("sampler") != sampler:
        raise ValueError(f"{path} is not a learned grid of {sampler} ({FORMAT})")
    sigmas = grid_learning.check_grid_length(stored["sigmas"], num_steps, f"learned grid {path}")
    return jnp.asarray(sigmas, jnp.float32)


def make_teacher(spec, rtol=1e-5):
    """``"adaptive"`` (Dopri5, ``rtol = atol``) or ``"<sampler>:<num_steps>"`` (a many-step
    deterministic sampler on the Karras grid)."""
    if spec == "adaptive":
        return grid_learning.adaptive_teacher(rtol=rtol, atol=rtol)
    name, sep, steps = spec.partition(":")
    if not sep or not steps.isdigit() or int(steps) < 1:
        raise ValueError(f"teacher must be 'adaptive' or '<sampler>:<num_steps>'; got {spec!r}")
    return grid_learning.sampler_teacher(name, int(steps))


def _guided(denoiser, config, labels, count):
    """The denoiser as ``generate`` samples it: with the config's classifier-free guidance."""
    scale = config.sample.guidance_scale
    if not scale or labels is None:
        return denoiser
    null_cond = jnp.full((count,), int(config.data.num_classes), jnp.int32)
    return guidance.classifier_free(denoiser, scale, null_cond=null_cond)


def _noise_set(config, seed, count):
    noise = sample_noise(jax.random.key(seed), 0, count, tuple(config.data.shape))
    labels = resolve_labels(config, count)
    return noise, None if labels is None else jnp.asarray(labels, jnp.int32)


def learn_run_grid(workdir, *, sampler, num_steps, method="ld3", run=None, num_noises=64,
                   num_eval_noises=64, seed=0, teacher="adaptive", teacher_rtol=1e-5,
                   num_iterations=100, learning_rate=0.05, radius=0.0, batch_size=None,
                   learn_sigma_min=True, num_levels=128, init="karras", step=None,
                   ema="config", output=None):
    """Learn, evaluate on held-out noise and store the grid of ``sampler`` with ``num_steps``
    steps for the run in ``workdir`` (``run``: an already loaded ``recipes.load`` result).
    ``init``: LD3's starting grid, ``"karras"`` (rho 7) or ``"gits"`` (the GITS grid, one
    adaptive teacher trajectory per training noise more). Returns ``(path, record)``;
    ``record`` is the stored JSON dict."""
    from diffusion_jax.recipes.loading import load

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    run = load(workdir, step=step, ema=ema) if run is None else run
    config = as_config(run.config)
    sc = config.sample
    info, _ = grid_learning.deterministic_sampler(sampler)
    noises, cond = _noise_set(config, seed, num_noises)
    eval_noises, eval_cond = _noise_set(config, seed + 1, num_eval_noises)
    denoiser = _guided(run.denoiser, config, cond, num_noises)
    eval_denoiser = _guided(run.denoiser, config, eval_cond, num_eval_noises)
    teach = make_teacher(teacher, teacher_rtol)
    sigma_max, sigma_min = float(sc.sigma_max), float(sc.sigma_min)
    if init not in ("karras", "gits"):
        raise ValueError(f"init must be 'karras' or 'gits'; got {init!r}")
    init_sigmas, gits_seconds = None, 0.0
    if method == "gits" or init == "gits":
        gits = grid_learning.gits_grid(
            denoiser, num_steps, noises=noises, cond=cond, sigma_max=sigma_max,
            sigma_min=sigma_min, num_levels=num_levels, free_end=learn_sigma_min, sampler=info,
            rtol=teacher_rtol,
        )
        init_sigmas, gits_seconds, result = gits.sigmas, gits.wall_time_s, gits
    if method == "ld3":
        result = grid_learning.learn_grid(
            denoiser, info, num_steps, noises=noises, teacher=teach, cond=cond,
            init_sigmas=init_sigmas,
            sigma_max=sigma_max, sigma_min=sigma_min,
            sigma_floor=sigma_min / 10 if learn_sigma_min else None,
            num_iterations=num_iterations, learning_rate=learning_rate, radius=radius,
            batch_size=batch_size, key=jax.random.key(seed),
        )
    eval_targets, _ = teach(eval_denoiser, eval_noises, sigma_max, sigma_min, eval_cond)
    karras = samplers.karras_sigmas(num_steps, sigma_min, sigma_max, float(sc.rho))
    held_out = {
        name: grid_learning.endpoint_rms(eval_denoiser, info, grid, eval_noises, eval_targets,
                                         cond=eval_cond)
        for name, grid in (("karras", karras), ("learned", result.sigmas))
    }
    record = {
        "format": FORMAT, "sampler": info.name, "num_steps": num_steps,
        "nfe": info.nfe(num_steps), "sigmas": [float(s) for s in result.sigmas],
        "method": result.method, "teacher": teacher, "teacher_rtol": teacher_rtol,
        "train_rms": {"karras": result.rms_before, "learned": result.rms_after},
        "held_out_rms": held_out, "num_teacher_solves": result.num_teacher_solves,
        "num_eval_teacher_solves": num_eval_noises, "init": init if method == "ld3" else None,
        "wall_time_s": result.wall_time_s + (gits_seconds if method == "ld3" else 0.0),
        "loss_history": [float(v) for v in result.loss_history],
        "settings": {k: v for k, v in result.settings.items() if k != "path"},
        "seed": seed, "run_step": run.step, "ema": run.ema,
        "guidance_scale": float(sc.guidance_scale or 0.0),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    path = output or grid_path(workdir, info.name, num_steps)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(record, f, indent=1, default=_json_default)
    return path, record


def _json_default(value):
    if isinstance(value, (np.generic, jax.Array)):
        return np.asarray(value).tolist()
    raise TypeError(f"cannot store {type(value).__name__} in a learned-grid record")
