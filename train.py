"""Train a diffusion model: ``python train.py --config configs/digits_edm.py --workdir DIR``.

A thin absl main over :mod:`diffusion_jax.recipes` (``recipes.train``). Override any config field
with ``--config.group.field=value``. Multi-host: pass ``--coordinator_address``,
``--num_processes`` and ``--process_id`` (or set ``JAX_COORDINATOR_ADDRESS``,
``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``); every process runs this same script.

Exit codes: 0 finished, 1 error (one line on stderr), 2 bad flags, 3 stopped by SIGTERM/SIGINT
after saving a checkpoint (run the same command to resume).
"""

from __future__ import annotations

import os

from absl import app, flags

from diffusion_jax import checkpoints, runlock
from diffusion_jax.recipes import runtime

FLAGS = flags.FLAGS
DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs",
                              "digits_edm.py")


def define_flags():
    """The CLI's flags (defined only when run as a script)."""
    flags.DEFINE_string("config", DEFAULT_CONFIG, "Experiment config (.py file); override its "
                        "fields with --config.group.field=value.")
    flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
    flags.DEFINE_bool("allow_config_change", False, "Resume although the config changes the "
                      "model or objective (recorded in workdir/config_changes.jsonl).")
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host).")
    flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
    flags.DEFINE_integer("process_id", None, "This process's index (multi-host).")
    flags.DEFINE_string("compilation_cache_dir", runtime.DEFAULT_CACHE_DIR,
                        "Persistent XLA compilation cache ('' disables it).")


def main(argv):
    if not FLAGS.workdir:
        runtime.fail("--workdir is required", runtime.EXIT_USAGE)
    runtime.quiet_libraries(FLAGS["verbosity"].present)
    runtime.enable_compilation_cache(FLAGS.compilation_cache_dir)
    from diffusion_jax import recipes
    from diffusion_jax.recipes import classifier as classifier_recipe
    from diffusion_jax.recipes import vdm as vdm_recipe

    try:
        config = recipes.load_config(FLAGS.config, recipes.defaults.parse_overrides(argv[1:]))
    except ValueError as error:
        runtime.fail(error, runtime.EXIT_USAGE)
    try:
        runtime.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                       FLAGS.process_id)
        if classifier_recipe.is_classifier_config(config):  # classifier guidance's classifier
            classifier_recipe.train_classifier(config, FLAGS.workdir)
            return
        if vdm_recipe.is_vdm_config(config):  # VDM with a variance-minimising learned schedule
            vdm_recipe.train_vdm(config, FLAGS.workdir)
            return
        result = recipes.train(config, FLAGS.workdir,
                               allow_config_change=FLAGS.allow_config_change)
    except (FloatingPointError, ValueError, FileNotFoundError, checkpoints.CheckpointError,
            runlock.RunLockedError) as e:
        runtime.fail(e)
    if result.stopped:
        raise SystemExit(runtime.EXIT_STOPPED)


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=runtime.parse_flags_or_exit)
