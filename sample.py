"""Sample from a trained checkpoint: ``python sample.py --workdir runs/digits``.

Loads the EMA denoiser (``diffusion_jax.checkpoints.load_denoiser``), picks a sampler and a sigma
grid by name from the explicit tables below (defaults from the run's config), and writes
``samples/<sampler>_<grid>_<num_steps>.npz`` (``samples`` in model range, ``labels``) and a PNG
grid next to it. Sample ``i`` starts from the noise ``normal(fold_in(key(seed), i))``, so it does
not depend on the batch size (deterministic samplers).
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from diffusion_jax import checkpoints, samplers

FLAGS = flags.FLAGS


def define_flags():
    """The CLI's flags (defined only when run as a script)."""
    flags.DEFINE_string("workdir", None, "Training run directory.")
    flags.DEFINE_string("sampler", None, "Sampler name (default: the config's).")
    flags.DEFINE_string("grid", None, "Sigma grid name (default: the config's).")
    flags.DEFINE_integer("num_steps", None, "Number of sampler steps.")
    flags.DEFINE_integer("num_samples", None, "Number of samples.")
    flags.DEFINE_integer("seed", None, "Sampling seed.")
    flags.DEFINE_float("guidance_scale", None, "Classifier-free guidance weight.")
    flags.DEFINE_string("ema", None, "'first', 'raw' or an EMA name.")
    flags.DEFINE_string("output", None, "Output .npz path (default under workdir/samples).")
    flags.DEFINE_string(
        "compilation_cache_dir",
        os.path.join(os.path.expanduser("~"), ".cache", "diffusion_jax", "xla"),
        "Persistent XLA compilation cache ('' disables it).",
    )

# -- name -> function tables --------------------------------------------------------------------

SAMPLERS = {
    "euler": samplers.euler,
    "heun": samplers.heun,
    "lms": samplers.lms,
    "ipndm": samplers.ipndm,
    "deis": samplers.deis,
    "unipc": samplers.unipc,
    "dpm_solver_2": samplers.dpm_solver_2,
    "dpm_solver_3": samplers.dpm_solver_3,
    "dpmpp_2m": samplers.dpmpp_2m,
    "dpmpp_3m": samplers.dpmpp_3m,
    "dpmpp_2m_sde": samplers.dpmpp_2m_sde,
    "dpmpp_3m_sde": samplers.dpmpp_3m_sde,
}

GRIDS = {
    "karras": lambda n, s, process: samplers.karras_sigmas(n, s.sigma_min, s.sigma_max, s.rho),
    "log_uniform": lambda n, s, process: samplers.log_uniform_sigmas(n, s.sigma_min, s.sigma_max),
    "time_uniform": lambda n, s, process: samplers.time_uniform_sigmas(process, n),
    "time_quadratic": lambda n, s, process: samplers.time_quadratic_sigmas(process, n),
    "edm_vp": lambda n, s, process: samplers.edm_vp_sigmas(n),
}


def _pick(table, name, what):
    if name not in table:
        raise ValueError(f"unknown {what} {name!r}; expected one of {sorted(table)}")
    return table[name]


def sample_noise(key, start, count, shape, dtype=jnp.float32):
    """Unit noise for samples ``start .. start+count-1``: row ``i`` is
    ``normal(fold_in(key, i))`` (independent of batching)."""
    indices = start + jnp.arange(count)
    return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), shape, dtype))(
        indices
    )


def make_sample_fn(sampler_name, guidance_scale=0.0, null_class=None):
    """Jitted ``fn(denoiser, noise, sigmas, key, cond) -> x0`` for a sampler of the table, with
    classifier-free guidance (Ho & Salimans 2022) against the label ``null_class`` when
    ``guidance_scale > 0``."""
    sampler = _pick(SAMPLERS, sampler_name, "sampler")

    def run(denoiser, noise, sigmas, key, cond):
        if guidance_scale:
            from diffusion_jax import guidance

            if cond is None or null_class is None:
                raise ValueError("classifier-free guidance needs a class-conditional model")
            null_cond = jnp.full(noise.shape[:1], null_class, jnp.int32)
            denoiser = guidance.classifier_free(denoiser, guidance_scale, null_cond=null_cond)
        return sampler(denoiser, noise, sigmas, key=key, cond=cond)

    return jax.jit(run)


def generate(denoiser, config, *, num_samples, seed, sampler=None, grid=None, num_steps=None,
             guidance_scale=None, batch_size=None):
    """``num_samples`` samples (host array in model range) and their labels (or ``None``)."""
    import train as train_cli

    config = train_cli.as_config(config)
    sc = config.sample
    sampler = sampler or sc.sampler
    grid = grid or sc.grid
    num_steps = num_steps or sc.num_steps
    guidance_scale = sc.guidance_scale if guidance_scale is None else guidance_scale
    batch_size = min(batch_size or sc.batch_size, num_samples)
    process = train_cli.build_process(config)
    sigmas = _pick(GRIDS, grid, "grid")(num_steps, sc, process)
    conditional = bool(config.train.class_conditional)
    fn = make_sample_fn(
        sampler, guidance_scale, config.data.num_classes if conditional else None
    )
    shape = tuple(config.data.shape)
    key = jax.random.key(seed)
    noise_key, sampler_key = jax.random.split(key)
    outputs, labels = [], []
    for start in range(0, num_samples, batch_size):
        count = min(batch_size, num_samples - start)
        noise = sample_noise(noise_key, start, batch_size, shape)  # full batch: one compile
        cond = None
        if conditional:
            cond = (start + jnp.arange(batch_size)) % config.data.num_classes
            labels.append(np.asarray(cond[:count]))
        x0 = fn(denoiser, noise, sigmas, jax.random.fold_in(sampler_key, start), cond)
        outputs.append(np.asarray(jax.device_get(x0))[:count])
    samples = np.concatenate(outputs)
    if not np.all(np.isfinite(samples)):
        print("WARNING: some samples are not finite", file=sys.stderr)
    return samples, (np.concatenate(labels) if labels else None)


def load(workdir, ema="first"):
    """``(denoiser, config)`` of the run in ``workdir`` (EMA ``'first'``, ``'raw'`` or a name)."""
    import train as train_cli

    choice = {"first": True, "raw": False}.get(ema, ema)
    return checkpoints.load_denoiser(workdir, build=train_cli.build_model, ema=choice)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.workdir:
        raise app.UsageError("--workdir is required")
    import train as train_cli

    train_cli.quiet_libraries()
    train_cli.configure_jax(FLAGS.compilation_cache_dir)
    try:
        saved = checkpoints.restore_config(FLAGS.workdir)
        ema = FLAGS.ema or saved["sample"]["ema"]
        denoiser, config = load(FLAGS.workdir, ema)
        config = train_cli.as_config(config)
        sc = config.sample
        sampler = FLAGS.sampler or sc.sampler
        grid = FLAGS.grid or sc.grid
        num_steps = FLAGS.num_steps or sc.num_steps
        num_samples = FLAGS.num_samples or sc.num_samples
        seed = sc.seed if FLAGS.seed is None else FLAGS.seed
        samples, labels = generate(
            denoiser, config, num_samples=num_samples, seed=seed, sampler=sampler, grid=grid,
            num_steps=num_steps, guidance_scale=FLAGS.guidance_scale,
        )
    except (ValueError, checkpoints.CheckpointError) as error:
        print(f"ERROR: {error}", file=sys.stderr, flush=True)
        sys.exit(1)
    output = FLAGS.output or os.path.join(
        FLAGS.workdir, "samples", f"{sampler}_{grid}_{num_steps}.npz"
    )
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    arrays = {"samples": samples}
    if labels is not None:
        arrays["labels"] = labels
    np.savez(output, **arrays)
    png = os.path.splitext(output)[0] + ".png"
    train_cli.write_samples(samples, config, png)
    print(f"wrote {output} and {png} ({len(samples)} samples, {sampler}, {grid}, "
          f"{num_steps} steps)", flush=True)


if __name__ == "__main__":
    define_flags()
    app.run(main)
