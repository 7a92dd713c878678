"""Learn a sampling grid for a trained run: ``python learn_grid.py --workdir runs/digits
--sampler heun --num_steps 10``.

A thin absl main over :mod:`diffusion_jax.recipes.grid_learning`: learns the sigma grid of a
deterministic sampler for a fixed number of steps (``--method ld3``: gradient descent through the
sampler against a teacher, Tong et al. 2025; ``--method gits``: dynamic programming over a fine
grid, Chen et al. 2024), evaluates it on held-out noise and writes
``RUN/grids/<sampler>_<num_steps>.json``; ``sample.py --grid learned`` then samples with it.
"""

from __future__ import annotations

from absl import app, flags

from diffusion_jax import checkpoints
from diffusion_jax.recipes import runtime

FLAGS = flags.FLAGS


def define_flags():
    """The CLI's flags (defined only when run as a script)."""
    flags.DEFINE_string("workdir", None, "Training run directory.")
    flags.DEFINE_string("sampler", None, "Deterministic sampler name (default: the config's).")
    flags.DEFINE_integer("num_steps", None, "Number of sampler steps (default: the config's).")
    flags.DEFINE_enum("method", "ld3", ["ld3", "gits"], "LD3 (gradient) or GITS (DP).")
    flags.DEFINE_string("teacher", "adaptive", "'adaptive' (Dopri5) or '<sampler>:<num_steps>'.")
    flags.DEFINE_float("teacher_rtol", 1e-5, "Tolerance of the adaptive teacher.")
    flags.DEFINE_integer("num_noises", 64, "Training noises (teacher solves).")
    flags.DEFINE_integer("num_eval_noises", 64, "Held-out noises for the reported error.")
    flags.DEFINE_integer("num_iterations", 100, "LD3: optimisation steps.")
    flags.DEFINE_float("learning_rate", 0.05, "LD3: Adam learning rate on the grid logits.")
    flags.DEFINE_float("radius", 0.0, "LD3: soft teacher forcing ball radius (relative).")
    flags.DEFINE_integer("batch_size", None, "LD3: noises per step (default: all).")
    flags.DEFINE_bool("learn_sigma_min", True, "Also learn the last level above 0.")
    flags.DEFINE_integer("num_levels", 128, "GITS: fine Karras levels of the DP.")
    flags.DEFINE_enum("init", "karras", ["karras", "gits"], "LD3: the starting grid.")
    flags.DEFINE_integer("seed", 0, "Seed of the training noises (held-out: seed + 1).")
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest readable one).")
    flags.DEFINE_string("ema", None, "'first', 'raw' or an EMA name (default: the config's).")
    flags.DEFINE_string("output", None, "Output JSON (default RUN/grids/<sampler>_<steps>.json).")
    flags.DEFINE_string("compilation_cache_dir", runtime.DEFAULT_CACHE_DIR,
                        "Persistent XLA compilation cache ('' disables it).")


def main(argv):
    if len(argv) > 1:
        runtime.fail(f"unexpected arguments: {argv[1:]}", runtime.EXIT_USAGE)
    runtime.quiet_libraries(FLAGS["verbosity"].present)
    if not FLAGS.workdir:
        runtime.fail("--workdir is required", runtime.EXIT_USAGE)
    runtime.enable_compilation_cache(FLAGS.compilation_cache_dir)
    from diffusion_jax import recipes
    from diffusion_jax.recipes import grid_learning

    try:
        run = recipes.load(FLAGS.workdir, step=FLAGS.step, ema=FLAGS.ema or "config")
        if recipes.family_module(run.config).FAMILY != "gaussian":
            raise ValueError("learned grids are for the Gaussian family's samplers")
        sampler = FLAGS.sampler or run.config.sample.sampler
        num_steps = FLAGS.num_steps or run.config.sample.num_steps
        print(f"step {run.step}, EMA {run.ema or 'raw'}: learning the {FLAGS.method} grid of "
              f"{sampler} with {num_steps} steps ...", flush=True)
        path, record = grid_learning.learn_run_grid(
            FLAGS.workdir, run=run, sampler=sampler, num_steps=num_steps, method=FLAGS.method,
            num_noises=FLAGS.num_noises, num_eval_noises=FLAGS.num_eval_noises, seed=FLAGS.seed,
            teacher=FLAGS.teacher, teacher_rtol=FLAGS.teacher_rtol,
            num_iterations=FLAGS.num_iterations, learning_rate=FLAGS.learning_rate,
            radius=FLAGS.radius, batch_size=FLAGS.batch_size,
            learn_sigma_min=FLAGS.learn_sigma_min, num_levels=FLAGS.num_levels,
            init=FLAGS.init, output=FLAGS.output,
        )
    except (ValueError, FileNotFoundError, checkpoints.CheckpointError) as error:
        runtime.fail(error)
    held_out = record["held_out_rms"]
    print(f"wrote {path}: sigmas {[round(s, 4) for s in record['sigmas']]}\n"
          f"held-out RMS endpoint error vs teacher: karras {held_out['karras']:.4g} -> learned "
          f"{held_out['learned']:.4g} ({record['num_teacher_solves']} teacher solves, "
          f"{record['wall_time_s']:.1f} s)", flush=True)


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=runtime.parse_flags_or_exit)
