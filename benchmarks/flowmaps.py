"""Flow-map family benchmark on 8x8 digits: FID, KID and precision/recall (bundled digits
classifier features, against the training split) of every recipe at 1, 2 and 4 network
evaluations, beside its teacher (the default job's run, Heun 18 steps = 35 evaluations), with the
training time of each recipe on this machine.

Each recipe is its ``configs/digits_<name>.py`` (``--train_steps`` overrides its length; the
distillation / tuning recipes start from ``--teacher_workdir``). Progressive distillation is
scored per stage: its n-step result is the student of the stage trained for n steps (the
checkpoint at the end of that stage). One-step and two-step grids are written beside the JSON
(``benchmarks/results/flowmaps_<name>_<n>step.png``).

``python benchmarks/flowmaps.py --teacher_workdir runs/digits`` (CPU-sized: a few minutes of
training per recipe); results in ``benchmarks/results/flowmaps.json``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from diffusion_jax import recipes  # noqa: E402
from diffusion_jax.recipes import evaluation  # noqa: E402
from diffusion_jax.recipes import flowmaps as flowmap_recipe  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("teacher_workdir", "runs/digits", "the default job's run (the teacher)")
flags.DEFINE_string("recipes", "progressive,cd,ict,ect,scm,ctm,meanflow,shortcut",
                    "configs/digits_<name>.py to train and score")
flags.DEFINE_string("train_steps", "", "name=steps overrides, e.g. ict=2000,cd=600")
flags.DEFINE_string("steps", "1,2,4", "numbers of network evaluations to score")
flags.DEFINE_integer("num_eval", 1000, "samples per FID")
flags.DEFINE_integer("seed", 0, "sampling seed")
flags.DEFINE_string("workdir", "", "where the runs go (default: a temporary directory)")
flags.DEFINE_string("output", "benchmarks/results/flowmaps.json", "JSON output (updated)")
flags.DEFINE_bool("teacher", True, "score the teacher (Heun, 18 steps)")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEEP = ("fid", "kid_mean", "precision", "recall")


def _overrides():
    pairs = [item.split("=") for item in FLAGS.train_steps.split(",") if item]
    return {name: int(steps) for name, steps in pairs}


def _teacher_row(root):
    """The teacher with its own sampler: Heun on 18 Karras steps (35 evaluations)."""
    run = recipes.load(FLAGS.teacher_workdir)
    quality = evaluation.evaluate_samples(
        run.denoiser, run.config, num_samples=FLAGS.num_eval, seed=FLAGS.seed,
        reference_dir=os.path.join(root, "eval"), sampler="heun", grid="karras", num_steps=18)
    return {"nfe": 35, **{k: float(quality[k]) for k in KEEP}}


def _score(run, steps, name, result_dir):
    row = flowmap_recipe.evaluate(run.denoiser, run.config, num_examples=FLAGS.num_eval,
                                  seed=FLAGS.seed, batch_size=250, num_steps=steps)
    if steps <= 2:
        samples, _ = flowmap_recipe.generate(run.denoiser, run.config, num_samples=64,
                                             seed=FLAGS.seed, num_steps=steps)
        flowmap_recipe.write_samples(samples, run.config,
                                     os.path.join(result_dir, f"flowmaps_{name}_{steps}step.png"))
    return {k: row[k] for k in KEEP}


def _recipe_rows(name, root, result_dir, steps_list):
    overrides = {"flowmap.teacher_workdir": FLAGS.teacher_workdir, "train.sample_every": 0}
    if name in _overrides():
        overrides["train.num_steps"] = _overrides()[name]
    config = recipes.load_config(os.path.join(ROOT, "configs", f"digits_{name}.py"), overrides)
    progressive = config.flowmap.objective == "progressive"
    if progressive:  # keep the checkpoint at the end of every stage
        stages = config.flowmap.progressive_num_stages
        overrides["train.checkpoint_every"] = config.train.num_steps // stages
        overrides["train.max_to_keep"] = stages + 1
        config = recipes.load_config(os.path.join(ROOT, "configs", f"digits_{name}.py"),
                                     overrides)
    workdir = os.path.join(root, name)
    start = time.time()
    recipes.train(config, workdir)
    seconds = time.time() - start
    rows = {}
    for steps in steps_list:
        if progressive:
            stage_steps = config.train.num_steps // config.flowmap.progressive_num_stages
            student_steps = [config.flowmap.progressive_teacher_steps // 2 ** (k + 1)
                             for k in range(config.flowmap.progressive_num_stages)]
            if steps not in student_steps:
                continue
            run = recipes.load(workdir, step=(student_steps.index(steps) + 1) * stage_steps)
        else:
            run = recipes.load(workdir)
        rows[str(steps)] = _score(run, steps, name, result_dir)
        print(name, steps, json.dumps(rows[str(steps)]), flush=True)
    return {"objective": config.flowmap.objective, "train_steps": config.train.num_steps,
            "batch_size": config.train.batch_size, "train_seconds": seconds, "nfe": rows}


def main(argv):
    del argv
    root = FLAGS.workdir or tempfile.mkdtemp(prefix="flowmaps_bench_")
    result_dir = os.path.dirname(os.path.abspath(FLAGS.output))
    os.makedirs(result_dir, exist_ok=True)
    steps_list = [int(s) for s in FLAGS.steps.split(",")]
    protocol = (f"{FLAGS.num_eval} samples, seed {FLAGS.seed}, digits classifier features vs "
                "the training split; CPU shared with other jobs (times are noisy)")
    if FLAGS.teacher:
        teacher = _teacher_row(root)
        print("teacher", json.dumps(teacher), flush=True)
        _merge({"protocol": protocol, "teacher": teacher})
    for name in [n for n in FLAGS.recipes.split(",") if n]:
        try:
            row = _recipe_rows(name, root, result_dir, steps_list)
        except Exception as error:  # noqa: BLE001 - one failing recipe must not lose the table
            row = {"error": f"{type(error).__name__}: {error}"}
            print(name, "failed:", error, flush=True)
        _merge({"protocol": protocol, "recipes": {name: row}})
    print(f"wrote {FLAGS.output}", flush=True)


def _merge(update):
    """Update the JSON output in place (several invocations may each add recipes)."""
    report = {}
    if os.path.exists(FLAGS.output):
        with open(FLAGS.output) as handle:
            report = json.load(handle)
    recipes_part = {**report.get("recipes", {}), **update.pop("recipes", {})}
    report.update(update, recipes=recipes_part)
    with open(FLAGS.output + ".tmp", "w") as handle:
        json.dump(report, handle, indent=1)
    os.replace(FLAGS.output + ".tmp", FLAGS.output)


if __name__ == "__main__":
    app.run(main)
