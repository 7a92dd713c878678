"""Guidance sweeps on digits: FID / precision / recall (digits-classifier features) against the
guidance scale for classifier-free guidance (Ho & Salimans 2022), CFG limited to an interval of
noise levels (Kynkaanniemi et al. 2024), autoguidance (Karras et al. 2024; guide: an early
checkpoint of the same run) and, given a classifier run, classifier guidance (Dhariwal & Nichol
2021).

Every setting samples the same noise and labels (``i mod 10``) with the same sampler and grid; the
scale is traced, so each method compiles once. ``python benchmarks/guidance.py --workdir
runs/digits --guide_step 800 [--classifier_workdir runs/digits_classifier]`` writes
``benchmarks/results/guidance_digits.json`` and ``docs/img/guidance_digits.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from diffusion_jax import callables, guidance, recipes, samplers  # noqa: E402
from diffusion_jax.recipes import evaluation  # noqa: E402
from diffusion_jax.recipes.classifier import load_classifier  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCALES = {
    "cfg": (1.0, 1.5, 2.0, 3.0, 4.0),
    "cfg_interval": (1.0, 1.5, 2.0, 3.0, 4.0),
    "autoguidance": (1.0, 1.5, 2.0, 3.0),
    "classifier": (0.0, 0.5, 1.0, 2.0, 4.0),
}


def guided_denoiser(method, denoiser, guide, scale, null_cond, interval):
    """The method's transform of ``denoiser`` at ``scale`` (traced)."""
    if method == "cfg":
        return guidance.classifier_free(denoiser, scale, null_cond)
    if method == "cfg_interval":
        cfg = guidance.classifier_free(denoiser, scale, null_cond)
        return guidance.guidance_interval(cfg, *interval, plain=denoiser)
    if method == "autoguidance":
        return guidance.autoguidance(denoiser, guide, scale)
    return guidance.classifier_guidance(denoiser, guide, scale)


@callables.filter_jit
def sample_batch(method, denoiser, guide, scale, noise, sigmas, labels, null_cond, interval):
    guided = guided_denoiser(method, denoiser, guide, scale, null_cond, interval)
    return samplers.heun(guided, noise, sigmas, cond=labels)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/work/runs/digits")
    parser.add_argument("--guide_step", type=int, default=800)
    parser.add_argument("--classifier_workdir", default=None)
    parser.add_argument("--num_samples", type=int, default=1000)
    parser.add_argument("--batch_size", type=int, default=500)
    parser.add_argument("--num_steps", type=int, default=10)
    parser.add_argument("--interval", default="0.3,3.0", help="sigma_lo,sigma_hi of cfg_interval")
    parser.add_argument("--methods", default=",".join(SCALES))
    parser.add_argument("--reference", default=None, help="reference .npz (default: evaluate.py's "
                        "cache under workdir/eval)")
    parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "results",
                                                         "guidance_digits.json"))
    parser.add_argument("--plot", default=os.path.join(ROOT, "docs", "img", "guidance_digits.png"))
    args = parser.parse_args()

    run = recipes.load(args.workdir, ema="config")
    config = run.config
    guides = {"autoguidance": recipes.load(args.workdir, step=args.guide_step,
                                           ema="config").denoiser}
    if args.classifier_workdir:
        guides["classifier"] = load_classifier(args.classifier_workdir)[0]
    methods = [m for m in args.methods.split(",") if m in guides or not m.endswith(("guidance",
                                                                                     "classifier"))]
    feature_fn = evaluation.feature_function("digits_classifier")
    reference_path = args.reference or os.path.join(
        args.workdir, "eval", "reference_digits_train_digits_classifier.npz")
    reference_stats, reference_feats = evaluation.reference_features(
        config, feature_fn, "digits_classifier", split="train", path=reference_path,
        batch_size=256)
    num_classes = int(config.data.num_classes)
    noise_key, _ = jax.random.split(jax.random.key(0))
    noise = recipes.sample_noise(noise_key, 0, args.num_samples, tuple(config.data.shape))
    labels = jnp.arange(args.num_samples, dtype=jnp.int32) % num_classes
    sigmas = recipes.build_grid(config, "karras", args.num_steps)
    interval = tuple(jnp.float32(float(v)) for v in args.interval.split(","))
    rows = []
    for method in methods:
        for scale in SCALES[method]:
            start = time.time()
            batches = []
            for first in range(0, args.num_samples, args.batch_size):
                part = slice(first, first + args.batch_size)
                null_cond = jnp.full(labels[part].shape, num_classes, jnp.int32)
                x0 = sample_batch(method, run.denoiser, guides.get(method), jnp.float32(scale),
                                  noise[part], sigmas, labels[part], null_cond, interval)
                batches.append(np.asarray(jax.device_get(x0)))
            samples = np.concatenate(batches)
            quality = evaluation.sample_quality(
                feature_fn, evaluation.as_feature_inputs(samples, True), reference_stats,
                reference_feats, 256)
            row = {"method": method, "scale": scale, "seconds": time.time() - start,
                   **{k: float(quality[k]) for k in ("fid", "precision", "recall", "kid_mean")}}
            rows.append(row)
            print(f"{method:13s} scale {scale:4.1f}: FID {row['fid']:7.3f}  precision "
                  f"{row['precision']:.3f}  recall {row['recall']:.3f}  ({row['seconds']:.1f} s)",
                  flush=True)
    result = {
        "workdir": os.path.abspath(args.workdir), "step": run.step, "ema": run.ema,
        "guide_step": args.guide_step, "classifier_workdir": args.classifier_workdir,
        "sampler": f"heun, karras grid, {args.num_steps} steps", "num_samples": args.num_samples,
        "interval": args.interval, "features": "digits_classifier (train split reference)",
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores shared (times are noisy)",
        "rows": rows,
    }
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as handle:
        json.dump(result, handle, indent=2)
    plot(rows, args.plot)
    print(f"wrote {args.output} and {args.plot}")


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for method in dict.fromkeys(row["method"] for row in rows):
        chosen = [row for row in rows if row["method"] == method]
        for axis, metric in zip(axes, ("fid", "precision", "recall"), strict=True):
            axis.plot([r["scale"] for r in chosen], [r[metric] for r in chosen], "o-",
                      label=method)
            axis.set_xlabel("guidance scale (1 = conditional)")
            axis.set_title(metric.upper() if metric == "fid" else metric)
    axes[0].legend()
    figure.suptitle("Guidance on digits (digits-classifier features)")
    figure.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
