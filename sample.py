"""Sample a trained run: ``python sample.py --workdir runs/digits``.

A thin absl main over :mod:`diffusion_jax.recipes`: loads the run (``recipes.load``), samples
with any registered sampler (``--sampler``, ``--option name=value`` for its options) on a named
grid, and writes ``samples/<sampler>_<grid>_<steps>_seed<seed>_n<count>.npz`` (``samples`` in
model range, ``labels``) with a PNG grid beside it. Sample ``i`` starts from the noise
``normal(fold_in(key(seed), i))``, so it does not depend on the batch size.
"""

from __future__ import annotations

import os

from absl import app, flags

from diffusion_jax import checkpoints
from diffusion_jax.recipes import guided, runtime

FLAGS = flags.FLAGS


def define_flags():
    """The CLI's flags (defined only when run as a script)."""
    flags.DEFINE_string("workdir", None, "Training run directory.")
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest readable one).")
    flags.DEFINE_string("sampler", None, "Sampler name (default: the config's); "
                        "--list_samplers shows them.")
    flags.DEFINE_bool("list_samplers", False, "Print the sampler table and exit.")
    flags.DEFINE_multi_string("option", [], "Sampler option name=value, e.g. s_churn=40.")
    flags.DEFINE_string("grid", None, "Sigma grid name (default: the config's); 'learned': "
                        "the run's grids/<sampler>_<num_steps>.json (learn_grid.py).")
    flags.DEFINE_integer("num_steps", None, "Number of sampler steps (>= 1).")
    flags.DEFINE_integer("num_samples", None, "Number of samples (>= 1).")
    flags.DEFINE_integer("batch_size", None, "Samples per batch (does not change the samples).")
    flags.DEFINE_integer("seed", None, "Sampling seed.")
    flags.DEFINE_float("guidance_scale", None, "Classifier-free guidance weight (1: conditional).")
    flags.DEFINE_integer("class", None, "Class label of every sample (class-conditional runs).")
    flags.DEFINE_list("labels", None, "Comma-separated class label per sample.")
    flags.DEFINE_string("ema", None, "'first', 'raw', an EMA name or sigma_rel=0.08 (post-hoc "
                        "EMA from the run's snapshots; default: the config's).")
    flags.DEFINE_string("output", None, "Output .npz path (default under workdir/samples).")
    flags.DEFINE_string("compilation_cache_dir", runtime.DEFAULT_CACHE_DIR,
                        "Persistent XLA compilation cache ('' disables it).")
    guided.define_flags(flags)


def _options(pairs):
    options = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--option {pair!r} must be name=value")
        for cast in (int, float):
            try:
                options[name] = cast(value)
                break
            except ValueError:
                continue
        else:
            options[name] = {"true": True, "false": False}.get(value.lower(), value)
    return options


def main(argv):
    if len(argv) > 1:
        runtime.fail(f"unexpected arguments: {argv[1:]}", runtime.EXIT_USAGE)
    runtime.quiet_libraries(FLAGS["verbosity"].present)
    from diffusion_jax import recipes, samplers

    if FLAGS.list_samplers:
        print(samplers.registry.markdown_table())
        return
    if not FLAGS.workdir:
        runtime.fail("--workdir is required", runtime.EXIT_USAGE)
    runtime.enable_compilation_cache(FLAGS.compilation_cache_dir)
    try:
        labels = FLAGS["class"].value
        if FLAGS.labels is not None:
            if labels is not None:
                raise ValueError("pass --class or --labels, not both")
            labels = [int(label) for label in FLAGS.labels]
        run = recipes.load(FLAGS.workdir, step=FLAGS.step, ema=FLAGS.ema or "config")
        sc = run.config.sample
        num_samples = sc.num_samples if FLAGS.num_samples is None else FLAGS.num_samples
        if labels is not None and not isinstance(labels, int) and FLAGS.num_samples is None:
            num_samples = len(labels)
        if isinstance(labels, int):
            labels = [labels] * max(num_samples, 0)
        seed = sc.seed if FLAGS.seed is None else FLAGS.seed
        family = recipes.family_module(run.config)
        if family.FAMILY == "gaussian":  # samplers of the registry on a named sigma grid
            sampler, grid = FLAGS.sampler or sc.sampler, FLAGS.grid or sc.grid
            num_steps = sc.num_steps if FLAGS.num_steps is None else FLAGS.num_steps
            spec, guide = guided.from_flags(FLAGS, FLAGS.guidance_scale, FLAGS.workdir)
            method = dict(sampler=sampler, grid=grid, num_steps=num_steps,
                          guidance_scale=FLAGS.guidance_scale, workdir=FLAGS.workdir,
                          guidance_spec=spec, guide=guide)
            name = f"{sampler}_{grid}_{num_steps}" + (f"_{spec.name or 'dt'}{spec.scale:g}"
                                                      if spec else "")
        else:  # the family's own samplers (its default when --sampler is not given)
            sampler, num_steps = FLAGS.sampler, FLAGS.num_steps
            method = dict(sampler=sampler, num_steps=num_steps)
            name = f"{family.FAMILY}_{sampler or 'default'}_{num_steps or 'default'}"
        output = FLAGS.output or os.path.join(
            FLAGS.workdir, "samples", f"{name}_seed{seed}_n{num_samples}.npz")
        recipes.sampling.check_output_path(output)
        print(f"step {run.step}, EMA {run.ema or 'raw'}: sampling {num_samples} ({name}) ...",
              flush=True)
        samples, labels = recipes.generate(
            run.denoiser, run.config, num_samples=num_samples, seed=seed,
            batch_size=FLAGS.batch_size, labels=labels, options=_options(FLAGS.option),
            progress=True, **method,
        )
        png = recipes.sampling.save_samples(output, samples, labels, run.config)
    except (ValueError, FileNotFoundError, checkpoints.CheckpointError) as error:
        runtime.fail(error)
    print(f"wrote {output} and {png} ({len(samples)} samples, {name}, checkpoint step "
          f"{run.step})", flush=True)


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=runtime.parse_flags_or_exit)
