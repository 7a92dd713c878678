"""Helpers for the training tests: a tiny problem, and subprocess entry points.

``python tests/_multihost_worker.py devices OUT.json``: run under
``XLA_FLAGS=--xla_force_host_platform_device_count=8``; compares the 8-device sharded step with
the 1-device step and writes the differences.

``python tests/_multihost_worker.py process OUT.json PORT PROCESS_ID NUM_PROCESSES``: one process
of a ``jax.distributed`` run on 127.0.0.1 (gloo CPU collectives); trains a few steps, each
process feeding its half of every global batch, and writes the losses and final params.
``NUM_PROCESSES = 1`` without a port (``-``) is the single-process reference.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

NUM_STEPS = 4
GLOBAL_BATCH = 16


def tiny_problem(*, seed=0):
    """``(network, loss_fn, optimizer, schedule, ema_decays)``: an EDM denoising loss on 2-D data
    with a small residual MLP."""
    from flax import nnx

    from diffusion_jax import denoisers, losses, networks, processes, schedules, training

    network = networks.MLP(2, hidden_dim=32, num_layers=2, embedding_dim=16, rngs=nnx.Rngs(seed))
    process = processes.EDM()

    def loss_fn(net, batch, key):
        denoiser = denoisers.PreconditionedDenoiser(net, denoisers.EDMPreconditioning(1.0))
        model = denoisers.ProcessModel(denoiser, process)
        return losses.denoising_loss(
            model, batch["x"], key, process=process, prediction="x0",
            t_distribution=schedules.LogNormalSigma(), weighting=schedules.EDMWeighting(1.0),
        )

    optimizer, schedule = training.make_optimizer(learning_rate=1e-2, warmup_steps=2)
    ema = {"fast": training.ema_constant(0.5), "slow": training.ema_half_life(64.0, GLOBAL_BATCH)}
    return network, loss_fn, optimizer, schedule, ema


def batches(num_steps=NUM_STEPS, batch_size=GLOBAL_BATCH, seed=0):
    """Deterministic global batches of 2-D points (two clusters)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(num_steps):
        centres = rng.choice([-1.5, 1.5], size=(batch_size, 1))
        out.append({"x": (centres + 0.3 * rng.standard_normal((batch_size, 2))).astype(np.float32)})
    return out


def _flat(tree):
    import jax

    return [np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(tree)]


def _max_diff(a, b):
    return max(float(np.max(np.abs(x - y))) for x, y in zip(_flat(a), _flat(b), strict=True))


def run_devices(out_path):
    """8-device sharded step vs 1-device step on the same global batch."""
    import jax

    from diffusion_jax import sharding, training

    assert len(jax.devices()) == 8, jax.devices()
    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda name, duration, **kwargs: compiles.append(name)
        if name == "/jax/core/compile/backend_compile_duration" else None
    )
    network, loss_fn, optimizer, schedule, ema = tiny_problem()
    state0, parts = training.create_train_state(
        network, optimizer, key=jax.random.key(0), ema_names=tuple(ema)
    )
    step = training.make_train_step(parts, loss_fn, optimizer, ema_decays=ema)
    loss_and_grad = training.make_loss_and_grad(parts, loss_fn)
    batch = batches(num_steps=2)
    results = {}
    for name, devices in (("one", jax.devices()[:1]), ("eight", jax.devices())):
        mesh = sharding.make_mesh(devices=devices)
        state_sharding = sharding.state_shardings(state0, mesh)
        data_sharding = sharding.batch_sharding(mesh)
        state = sharding.place_state(state0, state_sharding)
        grad_fn = jax.jit(loss_and_grad, in_shardings=(
            state_sharding.params, state_sharding.buffers, data_sharding,
            sharding.replicated(mesh)))
        key = sharding.place_state(jax.random.key(3), sharding.replicated(mesh))
        global_batch = sharding.shard_batch(batch[0], data_sharding)
        loss, grads = grad_fn(state.params, state.buffers, global_batch, key)
        compiled = sharding.compile_train_step(step, state_sharding, data_sharding)
        new_state, metrics = compiled(state, global_batch)
        shardings_kept = all(
            a.sharding == b
            for a, b in zip(jax.tree.leaves(new_state), jax.tree.leaves(state_sharding), strict=True)
        )
        compiles_before = len(compiles)
        new_state, _ = compiled(new_state, sharding.shard_batch(batch[1], data_sharding))
        recompiles = len(compiles) - compiles_before
        results[name] = dict(
            loss=float(loss), grads=jax.device_get(grads), metrics=jax.device_get(metrics),
            params=jax.device_get(new_state.params), ema=jax.device_get(new_state.ema),
            recompiles=recompiles, shardings_kept=shardings_kept,
            batch_sharding=str(global_batch["x"].sharding.spec),
            num_shards=len(global_batch["x"].addressable_shards),
        )
    try:
        sharding.check_batch_size(12, sharding.make_mesh())
        divisible_error = ""
    except ValueError as error:
        divisible_error = str(error)
    one, eight = results["one"], results["eight"]
    summary = dict(
        loss_one=one["loss"], loss_eight=eight["loss"],
        grad_diff=_max_diff(one["grads"], eight["grads"]),
        grad_scale=max(float(np.max(np.abs(x))) for x in _flat(one["grads"])),
        params_diff=_max_diff(one["params"], eight["params"]),
        ema_diff=_max_diff(one["ema"], eight["ema"]),
        metrics_loss_diff=abs(float(one["metrics"]["loss"]) - float(eight["metrics"]["loss"])),
        recompiles_eight=eight["recompiles"], shardings_kept=eight["shardings_kept"],
        num_shards=eight["num_shards"], divisible_error=divisible_error,
    )
    with open(out_path, "w") as f:
        json.dump(summary, f)


def run_process(out_path, port, process_id, num_processes):
    """One process of a (possibly 1-process) data-parallel run."""
    import jax

    if num_processes > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=f"127.0.0.1:{port}", num_processes=num_processes,
            process_id=process_id, initialization_timeout=120,
        )
    from diffusion_jax import sharding, training

    network, loss_fn, optimizer, schedule, ema = tiny_problem()
    state, parts = training.create_train_state(
        network, optimizer, key=jax.random.key(0), ema_names=tuple(ema)
    )
    mesh = sharding.make_mesh()
    local = sharding.check_batch_size(GLOBAL_BATCH, mesh)
    state_sharding = sharding.state_shardings(state, mesh)
    data_sharding = sharding.batch_sharding(mesh)
    state = sharding.place_state(state, state_sharding)
    compiled = sharding.compile_train_step(
        training.make_train_step(parts, loss_fn, optimizer, ema_decays=ema),
        state_sharding, data_sharding,
    )
    losses = []
    for global_batch in batches():
        rows = {k: v[process_id * local:(process_id + 1) * local] for k, v in global_batch.items()}
        state, metrics = compiled(state, sharding.shard_batch(rows, data_sharding))
        losses.append(float(metrics["loss"]))
    params = [np.asarray(x.addressable_data(0)).tolist() for x in jax.tree.leaves(state.params)]
    with open(out_path, "w") as f:
        json.dump({"losses": losses, "params": params, "devices": jax.device_count()}, f)
    if num_processes > 1:
        jax.distributed.shutdown()


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    mode = sys.argv[1]
    if mode == "devices":
        run_devices(sys.argv[2])
    elif mode == "process":
        run_process(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
