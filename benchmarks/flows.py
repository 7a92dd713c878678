"""Flow-family benchmark on the torchcfm toy protocol (8 Gaussians -> moons) and couplings.

1. W2 (exact, assignment) between ``--num_eval`` generated and as many target points with one
   Euler step and with Dopri5, for FM (independent), OT-CFM, SB-CFM and 2-RF (reflow on pairs of
   the FM run of the same seed), mean and std over ``--seeds``; also straightness and the
   coupling cost of the generated pairs. Published (C2OT, Fig. 1, same protocol): FM 6.23 +- 0.19
   one step / 0.12 +- 0.05 adaptive; OT 0.072 +- 0.025 / 0.050 +- 0.040. These are on the scale
   of the *squared* W2 (POT's ``emd2`` cost): two independent 2,000-point moons sets are already
   W2 = 0.187 apart (W2^2 = 0.035), which the "floor" entry measures; we report both.
2. Coupling cost and time per batch of the exact assignment (optax Hungarian in JAX, scipy on
   the host) vs Sinkhorn (epsilon 0.5, 100 iterations) at ``--ot_sizes``; the train-step
   overhead of OT relative to the independent coupling is the ratio of the runs' train seconds.
3. ``--digits``: one-step FID (bundled digits classifier) of 1-RF vs 2-RF on 8x8 digits
   (``benchmarks/results/flows_digits.json``).

``python benchmarks/flows.py --train_steps 20000 --seeds 0,1,2`` (protocol size; long on a
2-core CPU); results go to ``benchmarks/results/flows.json``. Library time: t = 0 data.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from diffusion_jax import checkpoints, recipes  # noqa: E402
from diffusion_jax.flows import couplings, metrics, ode, toy  # noqa: E402
from diffusion_jax.recipes import flows as flow_recipe  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("train_steps", 20000, "training steps per run")
flags.DEFINE_string("seeds", "0,1,2", "comma-separated seeds")
flags.DEFINE_integer("num_eval", 2000, "generated and target points per W2")
flags.DEFINE_string("methods", "fm,otcfm,sbcfm,reflow", "which runs")
flags.DEFINE_string("ot_sizes", "256,1024,4096", "batch sizes of the coupling timing")
flags.DEFINE_integer("num_pairs", 65536, "reflow pairs from the FM teacher")
flags.DEFINE_string("output", "benchmarks/results/flows.json", "JSON output")
flags.DEFINE_string("workdir", "", "where runs go (default: a temporary directory)")
flags.DEFINE_bool("digits", False, "run only the digits 1-RF vs 2-RF one-step FID comparison")
flags.DEFINE_integer("digits_rf1_steps", 1600, "digits_rf1 training steps")
flags.DEFINE_integer("digits_rf2_steps", 1000, "digits_rf2 training steps")
flags.DEFINE_integer("digits_pairs", 4096, "reflow pairs from the digits_rf1 run")
flags.DEFINE_integer("digits_eval", 1000, "samples per FID")
flags.DEFINE_string("digits_output", "benchmarks/results/flows_digits.json", "JSON output")

CONFIGS = {"fm": "toy2d_fm", "otcfm": "toy2d_otcfm", "sbcfm": "toy2d_sbcfm",
           "reflow": "toy2d_reflow"}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(workdir):
    """The run's EMA flow model and config (checkpoints API, no CLI)."""
    model, config = checkpoints.load_denoiser(workdir, build=lambda c: recipes.build_model(c))
    return model, recipes.as_config(config)


def _train(name, seed, workdir, extra=None):
    overrides = {"train.num_steps": FLAGS.train_steps, "train.seed": seed,
                 "train.checkpoint_every": FLAGS.train_steps, "train.log_every":
                 max(FLAGS.train_steps // 4, 1), **(extra or {})}
    config = recipes.load_config(os.path.join(ROOT, "configs", f"{CONFIGS[name]}.py"), overrides)
    start = time.time()
    result = recipes.train(config, workdir)
    return time.time() - start, result


def _evaluate(model, config, seed):
    n = FLAGS.num_eval
    x_source = flow_recipe.source_points(config.flow.source, jax.random.key(seed + 99991), 0, n,
                                         (2,))
    target = np.asarray(toy.moons(jax.random.key(seed + 31337), n))
    adaptive, nfe = ode.solve_adaptive(model, x_source, rtol=1e-5, atol=1e-5)
    one_step = ode.integrate(model, x_source, ode.time_grid(1))
    straight, _ = metrics.straightness(model, x_source[:500], num_steps=32, method="rk4")
    w2_one, w2_adaptive = (metrics.wasserstein2_exact(one_step, target),
                           metrics.wasserstein2_exact(adaptive, target))
    return {"w2_one_step": w2_one, "w2_adaptive": w2_adaptive,
            "w2sq_one_step": w2_one**2, "w2sq_adaptive": w2_adaptive**2,
            "adaptive_nfe": int(nfe), "straightness": float(straight),
            "generated_coupling_cost": float(metrics.coupling_cost(adaptive, x_source))}


def _floor(seeds):
    """W2 between two independent target sets of ``--num_eval`` points (the sampling floor)."""
    values = [metrics.wasserstein2_exact(np.asarray(toy.moons(jax.random.key(s), FLAGS.num_eval)),
                                         np.asarray(toy.moons(jax.random.key(100 + s),
                                                              FLAGS.num_eval)))
              for s in seeds]
    return {"w2": {"mean": float(np.mean(values)), "std": float(np.std(values))},
            "w2sq": {"mean": float(np.mean(np.square(values))),
                     "std": float(np.std(np.square(values)))}}


def _toy_table(root):
    seeds = [int(s) for s in FLAGS.seeds.split(",")]
    rows = {"floor": _floor(seeds)}
    for name in FLAGS.methods.split(","):
        per_seed = []
        for seed in seeds:
            workdir = os.path.join(root, f"{name}_{seed}")
            extra = None
            if name == "reflow":
                teacher_dir = os.path.join(root, f"fm_{seed}")
                if not os.path.isdir(teacher_dir):
                    _train("fm", seed, teacher_dir)
                teacher, teacher_config = _load(teacher_dir)
                pairs = os.path.join(root, f"pairs_{seed}")
                flow_recipe.write_reflow_pairs(
                    teacher, teacher_config, pairs, num_pairs=FLAGS.num_pairs, shard_size=8192,
                    seed=seed, sampler="dopri5", teacher_id=teacher_dir)
                extra = {"flow.pairs_dir": pairs}
            seconds, result = _train(name, seed, workdir, extra)
            model, config = _load(workdir)
            row = _evaluate(model, config, seed)
            row.update(train_seconds=seconds, final_loss=result.metrics.get("loss"))
            print(name, seed, json.dumps(row), flush=True)
            per_seed.append(row)
        rows[name] = {
            key: {"mean": float(np.mean([r[key] for r in per_seed])),
                  "std": float(np.std([r[key] for r in per_seed]))}
            for key in per_seed[0] if per_seed[0][key] is not None
        }
    return rows


def _time(fn, *args, repeats=3):
    jax.block_until_ready(fn(*args))
    start = time.time()
    for _ in range(repeats):
        jax.block_until_ready(fn(*args))
    return (time.time() - start) / repeats


def _coupling_table():
    rows = []
    for size in [int(s) for s in FLAGS.ot_sizes.split(",")]:
        x_data = toy.moons(jax.random.key(0), size)
        x_source = toy.eight_gaussians(jax.random.key(1), size)
        independent = float(metrics.coupling_cost(x_data, x_source))
        hungarian = jax.jit(lambda a, b: couplings.ot_coupling(a, b)[1])
        host = jax.jit(lambda a, b: couplings.ot_coupling(a, b, solver="scipy")[1])
        sinkhorn = jax.jit(lambda a, b, k: couplings.sinkhorn_coupling(
            a, b, k, epsilon=0.5, num_iters=100)[:2])
        paired = hungarian(x_data, x_source)
        sink_data, sink_source = sinkhorn(x_data, x_source, jax.random.key(2))
        row = {"batch": size, "independent_cost": independent,
               "hungarian_cost": float(metrics.coupling_cost(x_data, paired)),
               "hungarian_seconds": _time(hungarian, x_data, x_source, repeats=1 if size > 2048
                                          else 3),
               "scipy_seconds": _time(host, x_data, x_source),
               "scipy_equals_hungarian": bool(jnp.all(host(x_data, x_source) == paired)),
               "sinkhorn_cost": float(metrics.coupling_cost(sink_data, sink_source)),
               "sinkhorn_seconds": _time(sinkhorn, x_data, x_source, jax.random.key(2))}
        print("coupling", json.dumps(row), flush=True)
        rows.append(row)
    return rows


def _digits(root):
    """1-RF (``configs/digits_rf1.py``) vs 2-RF (``digits_rf2.py`` on RK4 pairs of it): FID of
    one Euler step and of Dopri5 with the bundled digits classifier, straightness, endpoint gap."""
    report = {}
    rf1_dir, rf2_dir, pairs = (os.path.join(root, n) for n in ("rf1", "rf2", "pairs"))
    config = recipes.load_config(os.path.join(ROOT, "configs", "digits_rf1.py"), {
        "train.num_steps": FLAGS.digits_rf1_steps, "train.sample_every": 0,
        "train.checkpoint_every": FLAGS.digits_rf1_steps})
    recipes.train(config, rf1_dir)
    teacher, teacher_config = _load(rf1_dir)
    report["rf1"] = flow_recipe.evaluate(teacher, teacher_config, num_examples=FLAGS.digits_eval,
                                         seed=0, batch_size=250)
    flow_recipe.write_reflow_pairs(teacher, teacher_config, pairs, num_pairs=FLAGS.digits_pairs,
                                   shard_size=1024, sampler="rk4", num_steps=16,
                                   teacher_id=rf1_dir)
    config = recipes.load_config(os.path.join(ROOT, "configs", "digits_rf2.py"), {
        "flow.pairs_dir": pairs, "train.num_steps": FLAGS.digits_rf2_steps,
        "train.sample_every": 0, "train.checkpoint_every": FLAGS.digits_rf2_steps})
    recipes.train(config, rf2_dir)
    student, student_config = _load(rf2_dir)
    report["rf2"] = flow_recipe.evaluate(student, student_config, num_examples=FLAGS.digits_eval,
                                         seed=0, batch_size=250)
    print("digits", json.dumps(report), flush=True)
    with open(FLAGS.digits_output, "w") as handle:
        json.dump(report, handle, indent=1)


def main(argv):
    del argv
    root = FLAGS.workdir or tempfile.mkdtemp(prefix="flows_bench_")
    if FLAGS.digits:
        _digits(root)
        return
    results = {"device": str(jax.devices()[0]), "train_steps": FLAGS.train_steps,
               "seeds": FLAGS.seeds, "num_eval": FLAGS.num_eval, "num_pairs": FLAGS.num_pairs}
    results["couplings"] = _coupling_table()
    results["toy"] = _toy_table(root)
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
    with open(FLAGS.output, "w") as handle:
        json.dump(results, handle, indent=1)
    print("| method | W2 one Euler step | W2 Dopri5 | straightness | train s |")
    print("|---|---|---|---|---|")
    for name, row in results["toy"].items():
        if name == "floor":
            continue
        print(f"| {name} | {row['w2_one_step']['mean']:.3f} +- {row['w2_one_step']['std']:.3f} | "
              f"{row['w2_adaptive']['mean']:.3f} +- {row['w2_adaptive']['std']:.3f} | "
              f"{row['straightness']['mean']:.3f} | {row['train_seconds']['mean']:.0f} |")
    print(f"wrote {FLAGS.output}")


if __name__ == "__main__":
    jnp.zeros(())  # initialise the backend before absl parses flags
    app.run(main)
