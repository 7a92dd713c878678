"""Train-step throughput of the U-Net and the overhead of the diffusion machinery.

For each case: steps/s and images/s of the full compiled train step (EDM loss with
preconditioning, AdamW with clipping, one EMA, state donated), and of a bare forward+backward
pass of the same network (``grad`` of an MSE against a fixed target; no noise sampling, no
preconditioning, no optimiser, no EMA), and of that pass plus the same AdamW update and EMA. The
ratio full/bare is the whole training machinery's overhead (target: within 5 %); full/(bare +
AdamW + EMA) isolates the diffusion part (noise levels, noise, preconditioning, weighting). Timings interleave the two so that load changes hit both alike; the median
of ``--repeats`` rounds is reported.

``python benchmarks/train_step.py [--quick] [--cases "digits 8x8x1"]`` prints a table and writes
``benchmarks/results/train_step.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from diffusion_jax import (  # noqa: E402
    denoisers,
    losses,
    networks,
    processes,
    schedules,
    sharding,
    training,
)

CASES = {
    "digits 8x8x1": dict(
        image_shape=(8, 8, 1), base_channels=32, channel_multipliers=(1, 2), num_res_blocks=1,
        attention_resolutions=(), batch_size=64,
    ),
    "32x32x3": dict(
        image_shape=(32, 32, 3), base_channels=32, channel_multipliers=(1, 2, 2),
        num_res_blocks=1, attention_resolutions=(8,), batch_size=16,
    ),
}


def build(case, steps_per_call=1):
    """Network, full compiled step with its state and batch, and the bare gradient function
    (with ``steps_per_call > 1`` the step takes that many stacked copies of the batch)."""
    options = dict(case)
    batch_size = options.pop("batch_size")
    network = networks.UNet(**options, rngs=nnx.Rngs(0))
    process = processes.EDM()

    def loss_fn(net, batch, key):
        denoiser = denoisers.PreconditionedDenoiser(net, denoisers.EDMPreconditioning(0.5))
        return losses.denoising_loss(
            denoisers.ProcessModel(denoiser, process), batch["x"], key, process=process,
            prediction="x0", t_distribution=schedules.LogNormalSigma(),
            weighting=schedules.EDMWeighting(0.5),
        )

    optimizer, _ = training.make_optimizer(learning_rate=1e-4, warmup_steps=10)
    emas = {"ema": training.ema_half_life(50_000.0, batch_size, 0.05)}
    state, parts = training.create_train_state(
        network, optimizer, key=jax.random.key(0), ema_names=tuple(emas)
    )
    mesh = sharding.make_mesh()
    state_sharding = sharding.state_shardings(state, mesh)
    data_sharding = sharding.batch_sharding(mesh, stacked=steps_per_call > 1)
    state = sharding.place_state(state, state_sharding)
    step = sharding.compile_train_step(
        training.make_train_step(parts, loss_fn, optimizer, ema_decays=emas,
                                 steps_per_call=steps_per_call),
        state_sharding, data_sharding,
    )
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (batch_size, *case["image_shape"])).astype(np.float32)
    host = {"x": x}
    if steps_per_call > 1:
        host = training.stack_batches([host] * steps_per_call)
    batch = sharding.shard_batch(host, data_sharding)

    def bare_loss(params, x, c_noise, target):
        net = training.merge_network(parts, params, parts.buffers, train=True,
                                     key=jax.random.key(0))
        return jnp.mean((net(x, c_noise, None) - target) ** 2)

    bare = jax.jit(jax.grad(bare_loss))
    params = jax.tree.map(jnp.copy, state.params)
    bare_args = (params, jnp.asarray(x), jnp.zeros((batch_size,)), jnp.asarray(x))

    def bare_update(params, opt_state, ema, x, c_noise, target):
        grads = jax.grad(bare_loss)(params, x, c_noise, target)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, training.ema_update(ema, params, 0.999)

    update = jax.jit(bare_update)
    update_args = (params, optimizer.init(params), jax.tree.map(jnp.copy, params), *bare_args[1:])
    return network, step, state, batch, bare, bare_args, update, update_args, batch_size


def time_case(name, case, *, iterations, repeats):
    """Median seconds per call of the full step and of the bare pass."""
    network, step, state, batch, bare, bare_args, update, update_args, batch_size = build(case)
    start = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    compile_full = time.perf_counter() - start
    start = time.perf_counter()
    jax.block_until_ready(bare(*bare_args))
    compile_bare = time.perf_counter() - start
    jax.block_until_ready(update(*update_args))
    full_times, bare_times, update_times = [], [], []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(iterations):
            state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        full_times.append((time.perf_counter() - start) / iterations)
        start = time.perf_counter()
        for _ in range(iterations):
            grads = bare(*bare_args)
        jax.block_until_ready(grads)
        bare_times.append((time.perf_counter() - start) / iterations)
        start = time.perf_counter()
        for _ in range(iterations):
            out = update(*update_args)
        jax.block_until_ready(out)
        update_times.append((time.perf_counter() - start) / iterations)
    full, bare_time = statistics.median(full_times), statistics.median(bare_times)
    update_time = statistics.median(update_times)
    return {
        "case": name,
        "batch_size": batch_size,
        "params": networks.count_params(network),
        "full_step_s": full,
        "bare_fwd_bwd_s": bare_time,
        "steps_per_s": 1.0 / full,
        "images_per_s": batch_size / full,
        "overhead_ratio": full / bare_time,
        "bare_with_optimizer_s": update_time,
        "diffusion_overhead_ratio": full / update_time,
        "compile_full_s": compile_full,
        "compile_bare_s": compile_bare,
        "ratio_per_repeat": [f / b for f, b in zip(full_times, bare_times, strict=True)],
        "diffusion_ratio_per_repeat": [
            f / u for f, u in zip(full_times, update_times, strict=True)
        ],
    }


def time_steps_per_call(name, case, *, steps_per_call, repeats):
    """Seconds per optimiser step of one call of ``steps_per_call`` steps against single-step
    calls (the multi-step call used to be a ``lax.scan``: 10.7x slower per step on XLA:CPU)."""
    runs = {1: list(build(case)[1:4]), steps_per_call: list(build(case, steps_per_call)[1:4])}
    per_step = {count: [] for count in runs}
    for run in runs.values():  # compile; the state is donated, so keep the new one
        step, state, batch = run
        run[1], metrics = step(state, batch)
        jax.block_until_ready(metrics)
    for _ in range(repeats):  # interleaved, so load changes hit both alike
        for count, run in runs.items():
            step, state, batch = run
            start = time.perf_counter()
            for _ in range(steps_per_call // count):
                state, metrics = step(state, batch)
            jax.block_until_ready(metrics)
            per_step[count].append((time.perf_counter() - start) / steps_per_call)
            run[1] = state
    one, many = (statistics.median(per_step[c]) for c in (1, steps_per_call))
    return {"case": name, "steps_per_call": steps_per_call, "single_step_s": one,
            "multi_step_per_step_s": many, "ratio": many / one}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="3 iterations x 2 repeats")
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=sorted(CASES),
                        help="which cases to time (default: all)")
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results",
                                                         "train_step.json"))
    parser.add_argument("--steps_per_call", type=int, default=0,
                        help="> 1: time one call of that many steps against single steps only")
    args = parser.parse_args()
    if args.steps_per_call > 1:
        rows = [time_steps_per_call(name, CASES[name], steps_per_call=args.steps_per_call,
                                    repeats=args.repeats) for name in args.cases]
        for row in rows:
            print(f"{row['case']}: {1e3 * row['single_step_s']:.1f} ms per single step, "
                  f"{1e3 * row['multi_step_per_step_s']:.1f} ms per step in calls of "
                  f"{row['steps_per_call']} (ratio {row['ratio']:.2f})", flush=True)
        output = args.output.replace("train_step.json", "train_steps_per_call.json")
        with open(output, "w") as f:
            json.dump({"load_average_1min": os.getloadavg()[0], "cases": rows}, f, indent=2)
        print(f"wrote {output}")
        return
    iterations, repeats = (3, 2) if args.quick else (args.iterations, args.repeats)
    device = jax.devices()[0]
    results = {
        "device": f"{device.platform} {device.device_kind} x{jax.device_count()}",
        "cpu_count": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
        "machine": platform.machine(),
        "jax": jax.__version__,
        "iterations": iterations,
        "repeats": repeats,
        "cases": [],
    }
    print(f"device: {results['device']}, cpus {results['cpu_count']}, "
          f"load {results['load_average_1min']:.1f}")
    header = ("| case | batch | params | steps/s | images/s | full step ms | bare fwd+bwd ms "
              "| full/bare | bare+AdamW+EMA ms | full/(bare+AdamW+EMA) |")
    print(header)
    print("|" + "---|" * 10)
    for name, case in CASES.items():
        if name not in args.cases:
            continue
        row = time_case(name, case, iterations=iterations, repeats=repeats)
        results["cases"].append(row)
        print(f"| {name} | {row['batch_size']} | {row['params']:,} | {row['steps_per_s']:.2f} | "
              f"{row['images_per_s']:.1f} | {1e3 * row['full_step_s']:.1f} | "
              f"{1e3 * row['bare_fwd_bwd_s']:.1f} | {row['overhead_ratio']:.3f} | "
              f"{1e3 * row['bare_with_optimizer_s']:.1f} | "
              f"{row['diffusion_overhead_ratio']:.3f} |", flush=True)
    results["load_average_1min_end"] = os.getloadavg()[0]
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
