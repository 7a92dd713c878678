"""Evaluate a trained run: ``python evaluate.py --workdir runs/digits``.

A thin absl main over :mod:`diffusion_jax.recipes.evaluation`. Writes a JSON report (default
``<workdir>/eval/report.json``) with

* **bits/dim** of the test split: probability-flow log-likelihood
  (:func:`diffusion_jax.likelihood.bits_per_dim`, uniform dequantisation, data in ``[-1, 1]`` so
  the offset is ``+7``) from ``sigma_min`` to the process's ``sigma_max``;
* **FID, KID, Inception Score, precision/recall** of ``num_samples`` samples against reference
  features of the data (``--reference_split``, cached as ``.npz`` in ``<workdir>/eval``). Features:
  the bundled digits classifier for ``digits``; FID Inception-v3 for other images when
  ``--inception_weights`` names a local converted weight file (no download); raw coordinates for
  toy 2-D data.
"""

from __future__ import annotations

import json
import os
import time

from absl import app, flags

from diffusion_jax import checkpoints
from diffusion_jax.recipes import guided, runtime

FLAGS = flags.FLAGS


def define_flags():
    """The CLI's flags (defined only when run as a script)."""
    flags.DEFINE_string("workdir", None, "Training run directory (checkpoint).")
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest readable one).")
    flags.DEFINE_string("ema", "first", "'first', 'raw', an EMA name or sigma_rel=0.08 (post-hoc).")
    flags.DEFINE_list("ema_sweep", None, "Post-hoc EMA widths, e.g. 0.05,0.08,0.12: the sample "
                      "quality of each reconstruction (report['ema_sweep']).")
    flags.DEFINE_integer("num_samples", None, "Samples for FID/KID/IS (default config.eval).")
    flags.DEFINE_integer("seed", 0, "Sampling seed (sample i uses fold_in(noise_key, i)).")
    flags.DEFINE_string("sampler", None, "Sampler name (default: the config's).")
    flags.DEFINE_string("grid", None, "Sigma grid name (default: the config's).")
    flags.DEFINE_integer("num_steps", None, "Sampler steps (default: the config's).")
    flags.DEFINE_integer("batch_size", 256, "Batch size for sampling and features.")
    flags.DEFINE_string("split", "test", "Split for bits/dim.")
    flags.DEFINE_string("reference_split", "train", "Split for the reference statistics.")
    flags.DEFINE_string("reference", None, "Reference .npz (mu, sigma[, features]); default: "
                        "computed from --reference_split and cached under workdir/eval.")
    flags.DEFINE_integer("bpd_examples", 256, "Test examples for bits/dim (0: skip).")
    flags.DEFINE_integer("bpd_batch_size", 64, "Examples per likelihood solve batch.")
    flags.DEFINE_float("bpd_sigma_min", 2e-3, "VE noise level where the likelihood is taken.")
    flags.DEFINE_enum("bpd_divergence", "hutchinson", ["hutchinson", "exact"], "Divergence.")
    flags.DEFINE_float("bpd_tolerance", 1e-5, "rtol = atol of the adaptive likelihood solve.")
    flags.DEFINE_string("inception_weights", None, "Converted FID Inception .npz (non-digits).")
    flags.DEFINE_string("output", None, "Report path (default workdir/eval/report.json).")
    flags.DEFINE_string("compilation_cache_dir", runtime.DEFAULT_CACHE_DIR,
                        "Persistent XLA compilation cache ('' disables it).")
    flags.DEFINE_float("guidance_scale", None, "Guidance weight (1: conditional).")
    guided.define_flags(flags)


def main(argv):
    if len(argv) > 1:
        runtime.fail(f"unexpected arguments: {argv[1:]}", runtime.EXIT_USAGE)
    if not FLAGS.workdir:
        runtime.fail("--workdir is required", runtime.EXIT_USAGE)
    runtime.quiet_libraries(FLAGS["verbosity"].present)
    runtime.enable_compilation_cache(FLAGS.compilation_cache_dir)
    import jax

    from diffusion_jax import recipes
    from diffusion_jax.recipes import evaluation

    start_time = time.time()
    try:
        run = recipes.load(FLAGS.workdir, step=FLAGS.step, ema=FLAGS.ema)
        eval_dir = os.path.join(FLAGS.workdir, "eval")
        output = FLAGS.output or os.path.join(eval_dir, "report.json")
        if os.path.isdir(output):
            raise ValueError(f"--output {output} is a directory")
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        config = run.config
        report = {"workdir": os.path.abspath(FLAGS.workdir), "data": config.data.name,
                  "step": run.step, "ema": run.ema, "seed": FLAGS.seed}
        family = recipes.family_module(config)
        if family.FAMILY != "gaussian":  # the family's own evaluation (e.g. NELBO bits)
            report.update(family.evaluate(
                run.denoiser, config, num_examples=FLAGS.bpd_examples, seed=FLAGS.seed,
                batch_size=FLAGS.bpd_batch_size, progress=True))
            quality = None
        elif recipes.builders.is_image_data(config) and FLAGS.bpd_examples > 0:
            images = recipes.load_split(config, FLAGS.split)["image"][:FLAGS.bpd_examples]
            bpd = evaluation.bits_per_dim_report(
                run.denoiser, config, images, key=jax.random.key(FLAGS.seed + 1),
                sigma_min=FLAGS.bpd_sigma_min, divergence=FLAGS.bpd_divergence,
                tolerance=FLAGS.bpd_tolerance,
                batch_size=min(FLAGS.bpd_batch_size, len(images)), progress=True,
            )
            report["bits_per_dim"] = dict(bpd, split=FLAGS.split)
            print(f"bits/dim on {FLAGS.split}: {bpd['mean']:.4f}", flush=True)
        spec, guide = (guided.from_flags(FLAGS, FLAGS.guidance_scale, FLAGS.workdir)
                       if family.FAMILY == "gaussian" else (None, None))

        def sample_quality(denoiser, progress=True):
            return evaluation.evaluate_samples(
                denoiser, config, num_samples=FLAGS.num_samples or config.eval.num_samples,
                seed=FLAGS.seed, reference_dir=eval_dir, reference_split=FLAGS.reference_split,
                reference=FLAGS.reference, inception_weights=FLAGS.inception_weights,
                sampler=FLAGS.sampler, grid=FLAGS.grid, num_steps=FLAGS.num_steps,
                batch_size=FLAGS.batch_size, progress=progress, workdir=FLAGS.workdir,
                guidance_scale=FLAGS.guidance_scale, guidance_spec=spec, guide=guide,
            )

        if family.FAMILY == "gaussian":
            quality = sample_quality(run.denoiser)
        if FLAGS.ema_sweep and family.FAMILY != "gaussian":
            raise ValueError("--ema_sweep evaluates sample quality: a Gaussian-family run only")
        for width in FLAGS.ema_sweep or ():  # post-hoc EMA (EDM2): one evaluation per width
            swept = recipes.load(FLAGS.workdir, step=FLAGS.step, ema=f"sigma_rel={width}")
            scores = report.setdefault("ema_sweep", {})[width] = sample_quality(swept.denoiser,
                                                                                progress=False)
            print(f"sigma_rel={width}: " + (", ".join(f"{k} {v:.4g}" for k, v in scores.items()
                  if isinstance(v, float)) if isinstance(scores, dict) else scores), flush=True)
    except (ValueError, FileNotFoundError, checkpoints.CheckpointError) as error:
        runtime.fail(error)
    if quality is not None:
        report["sample_quality"] = quality
    if isinstance(quality, dict):
        print("sample quality: " + ", ".join(
            f"{k} {v:.4g}" for k, v in quality.items() if isinstance(v, float)), flush=True)
    report["seconds"] = time.time() - start_time
    with open(output, "w") as handle:
        json.dump(report, handle, indent=2)
    print(f"wrote {output}", flush=True)


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=runtime.parse_flags_or_exit)
