"""Learned vs fixed sampling grids on the digits run: FID at NFE 5 and 10.

Run: ``python benchmarks/learned_grids.py [--workdir /work/runs/digits]``. Writes
``benchmarks/results/learned_grids_digits.json`` and prints a table.

For each deterministic sampler below and NFE 5 / 10 (the largest step count whose NFE fits):
FID (digits classifier features, ``recipes.evaluation``; ``--num_samples`` samples against the
training split's statistics) with the Karras grid (rho 7, sigma 0.002..80), the other fixed grids
of the sampler benchmark, the GITS grid (Chen et al. 2024) and the LD3 grid learned from it (Tong
et al. 2025), both from ``recipes.grid_learning.learn_run_grid`` (64 training noises with an
adaptive Dopri5 teacher; the held-out endpoint RMS error is reported too). The run directory is
read only: the grids go to a scratch run directory that links to its checkpoints.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

from diffusion_jax import recipes
from diffusion_jax.recipes import evaluation, sampling
from diffusion_jax.recipes import grid_learning as run_grids

SAMPLERS = ("heun", "dpmpp_2m", "ipndm")
NFES = (5, 10)
FIXED = {  # name: (grid, sample-config overrides)
    "karras": ("karras", {}),
    "karras_rho3": ("karras", {"rho": 3.0}),
    "log_uniform": ("log_uniform", {}),
    "karras_rho5_smin0.01": ("karras", {"rho": 5.0, "sigma_min": 0.01}),
}


def scratch_run(workdir):
    """A directory whose ``checkpoints`` links to the run's, for the learned grids."""
    scratch = tempfile.mkdtemp(prefix="learned_grids_")
    os.symlink(os.path.abspath(os.path.join(workdir, "checkpoints")),
               os.path.join(scratch, "checkpoints"))
    return scratch


def fid(run, config, *, sampler, grid, num_steps, num_samples, reference_dir, workdir):
    quality = evaluation.evaluate_samples(
        run.denoiser, config, num_samples=num_samples, seed=0, reference_dir=reference_dir,
        sampler=sampler, grid=grid, num_steps=num_steps, batch_size=500, workdir=workdir)
    return {k: float(v) for k, v in quality.items() if k in ("fid", "kid", "precision", "recall")}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/work/runs/digits")
    parser.add_argument("--num_samples", type=int, default=2000)
    parser.add_argument("--num_iterations", type=int, default=100)
    parser.add_argument("--samplers", default=",".join(SAMPLERS))
    parser.add_argument("--batch_size", type=int, default=16,
                        help="LD3 training noises per iteration (of the 64)")
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results",
                                                         "learned_grids_digits.json"))
    args = parser.parse_args()
    run = recipes.load(args.workdir, ema="config")
    scratch = scratch_run(args.workdir)
    reference_dir = os.path.join(scratch, "eval")
    report = {"workdir": args.workdir, "step": run.step, "ema": run.ema,
              "num_samples": args.num_samples, "num_iterations": args.num_iterations,
              "batch_size": args.batch_size, "fid": {}, "learning": {},
              "note": "FID on digits-classifier features vs the training split; CPU shared"}
    for sampler in args.samplers.split(","):
        info = sampling.sampler_info(sampler)
        for nfe in NFES:
            num_steps = info.steps_for_nfe(nfe)
            row = {"nfe": info.nfe(num_steps), "num_steps": num_steps}
            for name, (grid, overrides) in FIXED.items():
                config = recipes.as_config(run.config).copy_and_resolve_references()
                with config.unlocked():
                    config.sample.update(overrides)
                row[name] = fid(run, config, sampler=sampler, grid=grid, num_steps=num_steps,
                                num_samples=args.num_samples, reference_dir=reference_dir,
                                workdir=scratch)
            for method in ("gits", "ld3"):
                start = time.perf_counter()
                _, record = run_grids.learn_run_grid(
                    scratch, run=run, sampler=sampler, num_steps=num_steps, method=method,
                    init="gits", num_iterations=args.num_iterations, num_noises=64,
                    num_eval_noises=64, batch_size=args.batch_size)
                report["learning"][f"{sampler}_{nfe}_{method}"] = {
                    "wall_s": time.perf_counter() - start, "sigmas": record["sigmas"],
                    "held_out_rms": record["held_out_rms"], "train_rms": record["train_rms"],
                    "teacher_solves": record["num_teacher_solves"]
                    + (64 if method == "ld3" else 0)}
                row[method] = fid(run, run.config, sampler=sampler, grid="learned",
                                  num_steps=num_steps, num_samples=args.num_samples,
                                  reference_dir=reference_dir, workdir=scratch)
            report["fid"][f"{sampler}_{nfe}"] = row
            cells = ", ".join(f"{k} {v['fid']:.3f}" for k, v in row.items() if isinstance(v, dict))
            print(f"{sampler} NFE {row['nfe']}: {cells}", flush=True)
            with open(args.output, "w") as f:
                json.dump(report, f, indent=1)
    print("\n| sampler | NFE | " + " | ".join(list(FIXED) + ["gits", "ld3"]) + " |")
    print("|---|---|" + "---|" * (len(FIXED) + 2))
    for key, row in report["fid"].items():
        sampler = key.rsplit("_", 1)[0]
        cells = " | ".join(f"{row[name]['fid']:.3f}" for name in list(FIXED) + ["gits", "ld3"])
        print(f"| {sampler} | {row['nfe']} | {cells} |")
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
