"""Sampling a model the way a config says: grid and sampler by name, classifier-free guidance,
class labels, batching that does not change the samples, progress on stderr.

Sample ``i`` starts from the unit noise ``normal(fold_in(noise_key, i))`` with
``noise_key, sampler_key = split(key(seed))``, so a sample does not depend on the batch size
(deterministic samplers) or on how many samples are drawn.
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import data, guidance, samplers
from diffusion_jax.recipes.builders import as_config, build_process, is_image_data, pick

__all__ = [
    "GRIDS",
    "build_grid",
    "sampler_info",
    "sample_noise",
    "sample_in_batches",
    "make_sample_fn",
    "resolve_labels",
    "generate",
    "write_samples",
    "check_output_path",
    "save_samples",
]

GRIDS = {
    "karras": lambda n, s, process: samplers.karras_sigmas(n, s.sigma_min, s.sigma_max, s.rho),
    "log_uniform": lambda n, s, process: samplers.log_uniform_sigmas(n, s.sigma_min, s.sigma_max),
    "time_uniform": lambda n, s, process: samplers.time_uniform_sigmas(process, n),
    "time_quadratic": lambda n, s, process: samplers.time_quadratic_sigmas(process, n),
    "edm_vp": lambda n, s, process: samplers.edm_vp_sigmas(n),
}

# The grid learned for a run (diffusion_jax.recipes.grid_learning), stored in its directory.
LEARNED = "learned"


def build_grid(config, grid, num_steps, *, workdir=None, sampler=None):
    """The sigma grid ``grid`` of ``num_steps`` steps with ``config.sample``'s range; ``grid =
    "learned"`` reads ``workdir/grids/<sampler>_<num_steps>.json`` (``learn_grid.py``)."""
    config = as_config(config)
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer; got {num_steps!r}")
    if grid == LEARNED:
        from diffusion_jax.recipes.grid_learning import load_learned_grid

        return load_learned_grid(workdir, sampler or config.sample.sampler, num_steps)
    return pick(GRIDS, grid, "grid")(num_steps, config.sample, build_process(config))


def sampler_info(name):
    """The registry entry of sampler ``name`` (:data:`diffusion_jax.samplers.SAMPLERS`)."""
    return samplers.get(name)


def sample_noise(key, start, count, shape, dtype=jnp.float32):
    """Unit noise for samples ``start .. start+count-1``: row ``i`` is
    ``normal(fold_in(key, i))`` (independent of batching)."""
    indices = start + jnp.arange(count)
    return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), shape, dtype))(
        indices
    )


def make_sample_fn(sampler_name, guidance_scale=0.0, null_class=None, options=None,
                   guidance_spec=None):
    """Jitted ``fn(denoiser, noise, sigmas, key, cond, guide=None) -> x0`` for a registered
    sampler with its ``options``, with classifier-free guidance (Ho & Salimans 2022) against the
    label ``null_class`` when ``guidance_scale != 0``, or the guidance of ``guidance_spec`` (a
    :class:`~diffusion_jax.recipes.guided.Guidance`; ``guide`` is its weaker run or classifier)."""
    info = sampler_info(sampler_name)
    options = dict(options or {})
    unknown = sorted(set(options) - set(info.options))
    if unknown:
        raise ValueError(f"sampler {info.name!r} has no option(s) {unknown}; its options are "
                         f"{list(info.options)}")
    if guidance_spec is not None:
        guidance_spec.check(conditional=null_class is not None, sampler=info.name)
    elif guidance_scale and null_class is None:
        raise ValueError("classifier-free guidance needs a class-conditional model "
                         "(train.class_conditional = True)")

    def run(denoiser, noise, sigmas, key, cond, guide=None):
        if guidance_spec is not None:
            null_cond = None if null_class is None else jnp.full(noise.shape[:1], null_class,
                                                                  jnp.int32)
            return guidance_spec.sample(info.fn, denoiser, guide, noise, sigmas, cond=cond,
                                        key=key if info.stochastic else None,
                                        null_cond=null_cond, options=options)
        if guidance_scale:
            null_cond = jnp.full(noise.shape[:1], null_class, jnp.int32)
            denoiser = guidance.classifier_free(denoiser, guidance_scale, null_cond=null_cond)
        key = key if info.stochastic else None
        return info.fn(denoiser, noise, sigmas, key=key, cond=cond, **options)

    return jax.jit(run)


def resolve_labels(config, num_samples, labels=None):
    """Class labels of ``num_samples`` samples: ``labels`` (one int for all, or one per sample),
    else ``i mod num_classes``; ``None`` for an unconditional model."""
    config = as_config(config)
    if not config.train.class_conditional:
        if labels is not None:
            raise ValueError("labels were given but the model is not class-conditional")
        return None
    classes = int(config.data.num_classes)
    if labels is None:
        return np.arange(num_samples) % classes
    labels = np.asarray(labels, np.int64)
    if labels.ndim == 0:
        labels = np.full(num_samples, int(labels))
    if labels.shape != (num_samples,):
        raise ValueError(f"got {labels.shape[0]} labels for {num_samples} samples")
    if labels.min() < 0 or labels.max() >= classes:
        raise ValueError(f"labels must lie in [0, {classes - 1}]; got {sorted(set(labels))}")
    return labels.astype(np.int32)


def generate(denoiser, config, *, num_samples, seed, sampler=None, grid=None, num_steps=None,
             guidance_scale=None, batch_size=None, labels=None, options=None, progress=False,
             workdir=None, guidance_spec=None, guide=None):
    """``num_samples`` samples (host array in model range) and their labels (or ``None``);
    sampler, grid, steps and guidance default to ``config.sample``; ``workdir`` is the run
    directory of ``grid="learned"``; ``guidance_spec`` (a
    :class:`~diffusion_jax.recipes.guided.Guidance`) and its ``guide`` replace the config's CFG."""
    config = as_config(config)
    sc = config.sample
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer; got {num_samples!r}")
    sampler = sampler or sc.sampler
    grid = grid or sc.grid
    num_steps = sc.num_steps if num_steps is None else num_steps
    guidance_scale = sc.guidance_scale if guidance_scale is None else guidance_scale
    batch_size = min(batch_size or sc.batch_size, num_samples)
    sigmas = build_grid(config, grid, num_steps, workdir=workdir, sampler=sampler)
    labels = resolve_labels(config, num_samples, labels)
    null_class = int(config.data.num_classes) if labels is not None else None
    fn = make_sample_fn(sampler, guidance_scale, null_class, options, guidance_spec)
    return sample_in_batches(
        lambda noise, key, cond: fn(denoiser, noise, sigmas, key, cond, guide=guide),
        num_samples=num_samples, batch_size=batch_size, seed=seed,
        shape=tuple(config.data.shape), labels=labels,
        description=f"sampling {num_samples} ({sampler}, {num_steps} steps)" if progress else None,
    ), labels


def sample_in_batches(run, *, num_samples, batch_size, seed, shape, labels, description=None):
    """``run(noise, key, cond) -> x0`` over full batches of ``batch_size`` (one compile; the last
    batch is cut): sample ``i``'s noise is ``fold_in(noise_key, i)`` whatever the batching
    (:func:`sample_noise`), the sampler key of a batch ``fold_in(sampler_key, start)``, labels
    cycled to fill a batch. ``description`` shows a progress bar. A warning when some sample is
    not finite."""
    noise_key, sampler_key = jax.random.split(jax.random.key(seed))
    starts = range(0, num_samples, batch_size)
    if description:
        from tqdm import tqdm

        starts = tqdm(starts, desc=description, unit="batch", file=sys.stderr, leave=False)
    outputs = []
    for start in starts:
        count = min(batch_size, num_samples - start)
        noise = sample_noise(noise_key, start, batch_size, shape)  # full batch: one compile
        cond = None
        if labels is not None:
            batch_labels = np.resize(labels[start:start + count], batch_size)
            cond = jnp.asarray(batch_labels, jnp.int32)
        x0 = run(noise, jax.random.fold_in(sampler_key, start), cond)
        outputs.append(np.asarray(jax.device_get(x0))[:count])
    samples = np.concatenate(outputs)
    if not np.all(np.isfinite(samples)):
        print("WARNING: some samples are not finite", file=sys.stderr)
    return samples


def write_samples(samples, config, path):
    """A PNG grid of images, or a scatter plot of 2-D points; returns the uint8 picture."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if is_image_data(config):
        return data.save_image_grid(samples, path)
    return data.scatter_png(samples, path)


def check_output_path(path):
    """Fail before sampling (one line) if the ``.npz`` output cannot be written."""
    path = os.path.abspath(os.fspath(path))
    if not path.endswith(".npz"):
        raise ValueError(f"--output must be a .npz path; got {path}")
    parent = os.path.dirname(path)
    existing = parent
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(f"cannot write {path}: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write {path}: {existing} is not writable")
    if os.path.isdir(path):
        raise ValueError(f"cannot write {path}: it is a directory")
    return path


def save_samples(path, samples, labels, config):
    """Write ``samples`` (and ``labels``) to the ``.npz`` at ``path`` and a PNG beside it;
    returns the PNG's path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    arrays = {"samples": samples}
    if labels is not None:
        arrays["labels"] = labels
    np.savez(path, **arrays)
    png = os.path.splitext(path)[0] + ".png"
    from diffusion_jax.recipes.families import write_samples as family_write_samples

    family_write_samples(samples, config, png)
    return png
