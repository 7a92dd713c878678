"""Latent-space benchmark on the built-in 32x32 digits (CPU-sized).

1. The KL-f4 autoencoder of ``configs/digits32_autoencoder.py`` (``--ae_steps``): per-pixel
   reconstruction MSE in ``[-1, 1]``, PSNR and rFID (reconstructions vs. originals) on the
   held-out test split, the latent std and scale factor.
2. LDM (``configs/digits32_ldm.py``) vs. pixel-space EDM (``configs/digits32_edm.py``) with the
   same training budget (``--steps`` x batch 64, same optimiser): FID of ``--num_eval`` samples
   (Heun, 18 steps, Karras grid) against the training split, features of the bundled digits
   classifier after 4 x 4 averaging back to 8 x 8; the real-data floor is the FID of the test
   split against the same reference.
3. Throughput: training steps/s (median of the logged windows, compilation excluded) and sampling
   samples/s (second call, compiled; the LDM's includes decoding) in pixel vs. latent space.
4. The LSGM run of ``configs/digits32_lsgm.py``: negative ELBO in bits/dim
   on the test split and FID.

The CPU of the machine these numbers come from is shared with other jobs: times are noisy.
``python benchmarks/latent.py`` writes ``benchmarks/results/latent.json``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import statistics
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from diffusion_jax import data, metrics, recipes  # noqa: E402
from diffusion_jax.recipes import evaluation  # noqa: E402
from diffusion_jax.recipes import latent as latent_recipe  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("ae_steps", 1000, "autoencoder training steps")
flags.DEFINE_integer("steps", 1200, "training steps of the LDM and of the pixel-space EDM")
flags.DEFINE_integer("lsgm_steps", 1200, "LSGM training steps")
flags.DEFINE_integer("num_eval", 512, "samples per FID")
flags.DEFINE_integer("num_throughput", 256, "samples of the timed sampling call")
flags.DEFINE_string("parts", "autoencoder,ldm,pixel_edm,lsgm", "which parts to run (the LDM "
                    "needs the autoencoder run of the same --workdir); results merge into "
                    "--output")
flags.DEFINE_string("workdir", "", "where runs go (default: a temporary directory)")
flags.DEFINE_string("output", "benchmarks/results/latent.json", "JSON output")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RATE = re.compile(r"([0-9.]+) steps/s")


def _config(name, **overrides):
    return recipes.load_config(os.path.join(ROOT, "configs", f"{name}.py"), overrides)


def _train(config, workdir):
    """Train, echoing the log; ``(seconds, median steps/s of the logged windows but the
    first)``."""
    buffer = io.StringIO()
    start = time.time()
    with contextlib.redirect_stdout(buffer):
        recipes.train(config, workdir)
    seconds = time.time() - start
    print(buffer.getvalue()[-600:], flush=True)
    rates = [float(r) for r in RATE.findall(buffer.getvalue())][1:]
    return seconds, (statistics.median(rates) if rates else None)


def _sampling_rate(model, config, family, num):
    """Samples/s without compilation: ``num / (t(2 num) - t(num))`` at batch size ``num``."""
    def seconds(count):
        start = time.time()
        family.generate(model, config, num_samples=count, seed=1, batch_size=num)
        return time.time() - start

    return num / max(seconds(2 * num) - seconds(num), 1e-9)


def _data_floor(config):
    name = evaluation.feature_network_name(config)
    feature_fn = evaluation.feature_function(name)
    train = recipes.load_split(config, "train")["image"]
    test = recipes.load_split(config, "test")["image"]
    reference, _ = evaluation.extract(feature_fn, train, 256)
    stats = metrics.FeatureStatistics().update(reference)
    return evaluation.sample_quality(feature_fn, test, stats, reference, 256)["fid"]


def main(argv):
    del argv
    recipes.runtime.quiet_libraries()
    root = FLAGS.workdir or tempfile.mkdtemp(prefix="latent_bench_")
    parts = FLAGS.parts.split(",")
    results = {}
    if os.path.isfile(FLAGS.output):
        with open(FLAGS.output) as handle:
            results = json.load(handle)
    results |= {"cpu_note": "2-core CPU shared with other jobs: times are noisy",
                "protocol": {"ae_steps": FLAGS.ae_steps, "steps": FLAGS.steps, "batch_size": 64,
                            "num_eval": FLAGS.num_eval, "sampler": "heun, 18 steps, karras",
                            "features": "digits classifier after 4x4 averaging (32 -> 8)",
                            "reference": "digits32 train split"}}

    ae_dir = os.path.join(root, "autoencoder")
    if "autoencoder" in parts:
        ae_config = _config("digits32_autoencoder", **{"train.num_steps": FLAGS.ae_steps})
        seconds, rate = _train(ae_config, ae_dir)
        ae = recipes.load(ae_dir)
        report = latent_recipe.evaluate(ae.denoiser, ae.config, num_examples=10_000, seed=0,
                                        batch_size=128)
        results["autoencoder"] = {**report, "train_seconds": seconds, "train_steps_per_s": rate,
                                  "latent_shape": list(latent_recipe.latent_shape(ae.config))}
        print("autoencoder:", results["autoencoder"], flush=True)
        results["data_fid_floor_test_vs_train"] = _data_floor(ae.config)
        _write(results)

    runs = {"ldm": ("digits32_ldm", {"train.num_steps": FLAGS.steps,
                                     "latent.autoencoder_workdir": ae_dir}),
            "pixel_edm": ("digits32_edm", {"train.num_steps": FLAGS.steps}),
            "lsgm": ("digits32_lsgm", {"train.num_steps": FLAGS.lsgm_steps})}
    for name, (config_name, overrides) in runs.items():
        if name not in parts:
            continue
        config = _config(config_name, **overrides)
        workdir = os.path.join(root, name)
        seconds, rate = _train(config, workdir)
        run = recipes.load(workdir)
        family = recipes.family_module(run.config)
        entry = {"train_seconds": seconds, "train_steps_per_s": rate,
                 "sampling_samples_per_s": _sampling_rate(run.denoiser, run.config, family,
                                                          FLAGS.num_throughput)}
        if family.FAMILY == "gaussian":
            quality = evaluation.evaluate_samples(
                run.denoiser, run.config, num_samples=FLAGS.num_eval, seed=0,
                reference_dir=os.path.join(workdir, "eval"), batch_size=256)
            entry["fid"] = quality["fid"]
        else:
            entry.update(family.evaluate(run.denoiser, run.config, num_examples=FLAGS.num_eval,
                                         seed=0, batch_size=256))
        samples, _ = family.generate(run.denoiser, run.config, num_samples=64, seed=0)
        picture = os.path.join(os.path.dirname(os.path.abspath(FLAGS.output)),
                               f"latent_{name}.png")
        data.save_image_grid(np.asarray(samples), picture)
        results[name] = entry
        print(name, entry, flush=True)
        _write(results)  # after every part: a later one may fail


def _write(results):
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
    with open(FLAGS.output, "w") as handle:
        json.dump(results, handle, indent=2)
    print(f"wrote {FLAGS.output}", flush=True)


if __name__ == "__main__":
    app.run(main)
