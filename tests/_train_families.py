"""Tiny networks and losses for the train-step paths of the families to come (a loss reading the
EMA, a frozen teacher, two networks trained together), shared by ``test_training_families.py``
and the 8-device subprocess of ``test_sharding.py``.

``python tests/_train_families.py OUT.json`` (under
``XLA_FLAGS=--xla_force_host_platform_device_count=8``) runs the joint step with a teacher and an
EMA target on 1 and on 8 devices, and ``sharding.shard_batch`` on an 8-device mesh, and writes
what it found.
"""

from __future__ import annotations

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

BATCH = 16


def small_network(seed, *, dropout=0.0):
    """``x -> W2 tanh(W1 x)`` on 2-D points (randomly initialised, so every layer has a
    gradient from the first step), called as ``network(x, c_noise, cond=None)``."""
    class Small(nnx.Module):
        def __init__(self, rngs):
            self.inner = nnx.Linear(2, 8, rngs=rngs)
            self.outer = nnx.Linear(8, 2, rngs=rngs)
            self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout else None

        def __call__(self, x, c_noise=None, cond=None):
            h = jnp.tanh(self.inner(x))
            if self.dropout is not None:
                h = self.dropout(h)
            return self.outer(h)

    return Small(nnx.Rngs(params=seed, dropout=seed + 100))


def points(num_steps, *, seed=0, batch_size=BATCH):
    """Batches ``{"x": (batch_size, 2)}`` of points on two clusters."""
    rng = np.random.default_rng(seed)
    return [
        {"x": (rng.choice([-1.0, 1.0], size=(batch_size, 1))
               + 0.3 * rng.standard_normal((batch_size, 2))).astype(np.float32)}
        for _ in range(num_steps)
    ]


def consistency_loss(network, batch, key, context):
    """A consistency-style loss: the online network at ``x`` against the EMA target at a
    perturbed ``x`` (Song et al. 2023's form, without the noise process)."""
    x = batch["x"]
    target = context.ema["target"](x + 0.3 * jax.random.normal(key, x.shape))
    return jnp.sum((network(x) - target) ** 2, axis=-1)


def distillation_loss(network, batch, key, context):
    """Match the frozen teacher passed to the step (``context.frozen``)."""
    x = batch["x"]
    return jnp.sum((network(x) - context.frozen(x)) ** 2, axis=-1)


def autoencoder_loss(networks, batch, key, context):
    """Two networks trained together (``{"encoder", "decoder"}``), plus a teacher on the code and
    a consistency term on the EMA decoder: every path at once."""
    x = batch["x"]
    code = networks["encoder"](x)
    recon = jnp.sum((networks["decoder"](code) - x) ** 2, axis=-1)
    teacher = jnp.sum((code - context.frozen(x)) ** 2, axis=-1)
    ema = context.ema["target"]
    consistency = jnp.sum((networks["decoder"](code) - ema["decoder"](code)) ** 2, axis=-1)
    return recon + 0.1 * teacher + consistency


def run_devices(out_path):
    """The joint step (two networks, teacher, EMA target) on 1 device and on 8 devices."""
    from diffusion_jax import sharding, training

    assert len(jax.devices()) == 8, jax.devices()
    optimizer, _ = training.make_optimizer(learning_rate=1e-2)
    ema = {"target": training.ema_constant(0.9)}
    networks = {"encoder": small_network(1), "decoder": small_network(2)}
    state0, parts = training.create_train_state(
        networks, optimizer, key=jax.random.key(0), ema_names=tuple(ema)
    )
    teacher = small_network(3)
    step = training.make_train_step(
        parts, autoencoder_loss, optimizer, ema_decays=ema, with_context=True
    )
    results = {}
    for name, devices in (("one", jax.devices()[:1]), ("eight", jax.devices())):
        mesh = sharding.make_mesh(devices=devices)
        state_sharding = sharding.state_shardings(state0, mesh)
        data_sharding = sharding.batch_sharding(mesh)
        state = sharding.place_state(state0, state_sharding)
        frozen = sharding.place_state(teacher, sharding.state_shardings(teacher, mesh))
        compiled = sharding.compile_train_step(
            step, state_sharding, data_sharding, frozen_sharding=sharding.replicated(mesh)
        )
        losses = []
        for batch in points(3):
            global_batch = sharding.shard_batch(batch, data_sharding)
            state, metrics = compiled(state, global_batch, frozen)
            losses.append(float(metrics["loss"]))
        results[name] = dict(
            losses=losses, state=jax.device_get(state.params), ema=jax.device_get(state.ema),
            num_shards=len(global_batch["x"].addressable_shards),
            teacher_replicated=all(
                leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(frozen)
            ),
        )

    def max_diff(a, b):
        return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
                   for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))

    one, eight = results["one"], results["eight"]
    summary = dict(
        losses_one=one["losses"], losses_eight=eight["losses"],
        params_diff=max_diff(one["state"], eight["state"]),
        ema_diff=max_diff(one["ema"], eight["ema"]),
        params_moved=max_diff(one["state"], jax.device_get(state0.params)),
        num_shards=eight["num_shards"], teacher_replicated=eight["teacher_replicated"],
    )
    summary.update(batch_checks())
    with open(out_path, "w") as f:
        json.dump(summary, f)


def batch_checks():
    """``shard_batch`` on 8 devices: images and labels under one 4-D spec, a multi-step stack, and
    the errors for a batch that does not split and for a scalar entry."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from diffusion_jax import sharding

    mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
    images = np.arange(16 * 4 * 4).reshape(16, 4, 4, 1).astype(np.float32)
    labels = np.arange(16, dtype=np.int32)
    batch = sharding.shard_batch({"image": images, "label": labels},
                                 NamedSharding(mesh, PartitionSpec("data", None, None, None)))
    stacked = sharding.shard_batch({"x": np.zeros((3, 16, 2), np.float32)},
                                   sharding.batch_sharding(sharding.make_mesh(), stacked=True))
    errors = []
    for bad in ({"label": np.arange(12)}, {"scale": np.float32(1.0)}):
        try:
            sharding.shard_batch(bad, sharding.batch_sharding(sharding.make_mesh()))
            errors.append("")
        except ValueError as error:
            errors.append(str(error))
    return dict(
        values_kept=bool(np.array_equal(np.asarray(batch["image"]), images)
                         and np.array_equal(np.asarray(batch["label"]), labels)),
        label_row_blocks=len({s.index[0].indices(16) for s in batch["label"].addressable_shards}),
        image_spec=str(batch["image"].sharding.spec), label_spec=str(batch["label"].sharding.spec),
        stacked_row_blocks=len({s.index[1].indices(16) for s in stacked["x"].addressable_shards}),
        indivisible_error=errors[0], scalar_error=errors[1],
    )


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    run_devices(sys.argv[1])
