"""Forward-mode differentiation (``jax.jvp``) through the real networks, as the JVP objectives
(sCM, MeanFlow) need it: the NNX U-Net with attention, dropout (fixed key), a second time input and
bf16 compute (``training.CastNetwork``) against central finite differences, and a data-parallel
JVP train step on 8 devices against 1 device.

``python tests/test_flowmaps_jvp.py OUT.json`` (under
``XLA_FLAGS=--xla_force_host_platform_device_count=8``) runs the sCM and MeanFlow train steps on
1 and on 8 devices and writes what it found (used by the last test, in a subprocess).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from diffusion_jax.flowmaps.meanflow import AverageVelocityFlowMap, meanflow_loss
from diffusion_jax.flowmaps.trigflow import (
    TimeLogVariance,
    TrigFlowConsistency,
    scm_loss,
    scm_tangent,
    tangent_warmup,
)
from diffusion_jax.networks import MLP, UNet, WithDropoutKey
from diffusion_jax.training import CastNetwork

TINY_UNET = dict(image_shape=(4, 4, 1), base_channels=8, channel_multipliers=(1,),
                 num_res_blocks=1, attention_resolutions=(4,), num_classes=3, dropout=0.2)


def _map_floats(module, fn):
    """``module`` with ``fn(leaf, key)`` applied to every floating state leaf (RNG state kept)."""
    graphdef, state = nnx.split(module)
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(11), len(leaves))
    leaves = [fn(leaf, key) if jnp.issubdtype(leaf.dtype, jnp.floating) else leaf
              for leaf, key in zip(leaves, keys, strict=True)]
    return nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))


def _cast_floats(module, dtype):
    """``module`` with every parameter moved by ``0.1 N(0, 1)`` (the zero-initialised output
    convolutions would hide the inputs) and every floating state leaf cast to ``dtype``."""
    return _map_floats(
        module, lambda leaf, key: (leaf + 0.1 * jax.random.normal(key, leaf.shape)).astype(dtype)
    )


def _inputs(dtype):
    key_x, key_dx = jax.random.split(jax.random.key(3))
    x = jax.random.normal(key_x, (2, 4, 4, 1), dtype)
    dx = jax.random.normal(key_dx, (2, 4, 4, 1), dtype)
    c, c_to = jnp.array([0.3, -0.8], dtype), jnp.array([0.5, 0.1], dtype)
    dc, dc_to = jnp.array([1.0, -0.5], dtype), jnp.array([0.7, 0.4], dtype)
    return (x, c, c_to), (dx, dc, dc_to)


def _network_fn(network, key):
    """``(x, c_noise, c_noise_to) -> F`` in training mode with dropout masks fixed by ``key``."""
    labels = jnp.array([1, 3])  # 3 = the null class
    return lambda x, c, c_to: WithDropoutKey(network, key)(x, c, labels, c_noise_to=c_to)


@jax.jit
def _apply(network, key, primals):
    """The network under ``jit``, passed as an argument (never a closure constant)."""
    return _network_fn(network, key)(*primals)


@jax.jit
def _jvp(network, key, primals, tangents):
    return jax.jvp(_network_fn(network, key), primals, tangents)


def _relative(a, b):
    return float(jnp.linalg.norm((a - b).ravel()) / jnp.linalg.norm(b.ravel()))


def test_jvp_through_the_unet_equals_central_finite_differences(x64):
    network = _cast_floats(UNet(**TINY_UNET, two_time=True, rngs=nnx.Rngs(0)), jnp.float64)
    key = jax.random.key(5)
    primals, tangents = _inputs(jnp.float64)
    output = _apply(network, key, primals)
    assert _relative(output, _apply(network, jax.random.key(6), primals)) > 1e-3  # dropout is on
    h = 1e-5
    for index in (None, 0, 1, 2):  # all directions at once, then x, the time, the second time
        direction = tuple(t if index in (None, i) else jnp.zeros_like(t)
                          for i, t in enumerate(tangents))
        primal_out, jvp = _jvp(network, key, primals, direction)
        np.testing.assert_allclose(primal_out, output, rtol=1e-12, atol=1e-14)  # same mask
        plus = tuple(p + h * t for p, t in zip(primals, direction, strict=True))
        minus = tuple(p - h * t for p, t in zip(primals, direction, strict=True))
        finite_difference = (_apply(network, key, plus) - _apply(network, key, minus)) / (2 * h)
        assert float(jnp.max(jnp.abs(jvp))) > 1e-3
        assert _relative(jvp, finite_difference) < 1e-7, (index, _relative(jvp, finite_difference))


def test_jvp_in_bfloat16_compute_matches_the_float32_jvp_within_bf16_precision():
    base = UNet(**TINY_UNET, two_time=True, rngs=nnx.Rngs(0))
    network = _cast_floats(base, jnp.float32)
    # The params cast as make_train_step(compute_dtype=bfloat16) does, then CastNetwork.
    bf16 = CastNetwork(_map_floats(network, lambda leaf, _: leaf.astype(jnp.bfloat16)),
                       jnp.bfloat16)
    key = jax.random.key(5)
    primals, tangents = _inputs(jnp.float32)
    _, reference = _jvp(network, key, primals, tangents)
    output, jvp = _jvp(bf16, key, primals, tangents)
    assert output.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(jvp)))
    # bf16 keeps 8 mantissa bits (relative rounding 2^-9 per operation); through ~20 layers the
    # stated tolerance on the tangent is 10% in L2.
    assert _relative(jvp, reference) < 0.1


def test_scm_tangent_through_the_unet_matches_finite_differences(x64):
    config = dict(TINY_UNET, num_classes=None)
    network = _cast_floats(UNet(**config, rngs=nnx.Rngs(1)), jnp.float64)
    model = TrigFlowConsistency(WithDropoutKey(network, jax.random.key(2)), sigma_data=0.5)
    x_t = jax.random.normal(jax.random.key(7), (2, 4, 4, 1), jnp.float64)
    dxt_dt = jax.random.normal(jax.random.key(8), (2, 4, 4, 1), jnp.float64)
    t = jnp.array([0.4, 1.2])
    _, tangent = scm_tangent(model, x_t, t, dxt_dt, r=1.0)
    h = 1e-5
    df_dt = (model.consistency(x_t + h * dxt_dt, t + h)
             - model.consistency(x_t - h * dxt_dt, t - h)) / (2 * h)
    assert _relative(tangent, jnp.cos(t)[:, None, None, None] * df_dt) < 1e-7


# -- data parallelism -----------------------------------------------------------------------------


BATCH = 16


def _scm_loss(networks, batch, key, context):
    sigma_data = 0.5
    model = TrigFlowConsistency(networks["consistency"], sigma_data=sigma_data)
    target = TrigFlowConsistency(context.detached["consistency"], sigma_data=sigma_data)
    return scm_loss(model, target, batch["x"], key, r=tangent_warmup(context.step, 2),
                    log_variance=networks["log_variance"])


def _meanflow_loss(network, batch, key, context):
    del context
    return meanflow_loss(AverageVelocityFlowMap(network), batch["x"], key, fraction_r_neq_t=0.5)


def run_devices(out_path):
    """sCM (two networks: consistency + log-variance) and MeanFlow train steps on 1 and 8
    devices, three steps each."""
    from diffusion_jax import sharding, training

    assert len(jax.devices()) == 8, jax.devices()
    rng = np.random.default_rng(0)
    batches = [{"x": (rng.choice([-1.0, 1.0], size=(BATCH, 1))
                      + 0.3 * rng.standard_normal((BATCH, 2))).astype(np.float32)}
               for _ in range(3)]
    cases = {
        "scm": ({"consistency": MLP(2, hidden_dim=16, num_layers=1, rngs=nnx.Rngs(0)),
                 "log_variance": TimeLogVariance(embedding_dim=8, embedding="fourier",
                                                 rngs=nnx.Rngs(1))}, _scm_loss),
        "meanflow": (MLP(2, hidden_dim=16, num_layers=1, two_time=True, rngs=nnx.Rngs(2)),
                     _meanflow_loss),
    }
    summary = {}
    for case, (networks, loss_fn) in cases.items():
        optimizer, _ = training.make_optimizer(learning_rate=1e-2)
        state0, parts = training.create_train_state(networks, optimizer, key=jax.random.key(0))
        step = training.make_train_step(parts, loss_fn, optimizer, with_context=True)
        results = {}
        for name, devices in (("one", jax.devices()[:1]), ("eight", jax.devices())):
            mesh = sharding.make_mesh(devices=devices)
            state_sharding = sharding.state_shardings(state0, mesh)
            data_sharding = sharding.batch_sharding(mesh)
            state = sharding.place_state(state0, state_sharding)
            compiled = sharding.compile_train_step(step, state_sharding, data_sharding)
            metrics_list = []
            for batch in batches:
                global_batch = sharding.shard_batch(batch, data_sharding)
                state, metrics = compiled(state, global_batch)
                metrics_list.append({k: float(v) for k, v in metrics.items()})
            results[name] = dict(metrics=metrics_list, params=jax.device_get(state.params),
                                 shards=len(global_batch["x"].addressable_shards))

        def max_diff(a, b):
            return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
                       for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))

        one, eight = results["one"], results["eight"]
        summary[case] = dict(
            losses_one=[m["loss"] for m in one["metrics"]],
            losses_eight=[m["loss"] for m in eight["metrics"]],
            grad_norms_one=[m["grad_norm"] for m in one["metrics"]],
            grad_norms_eight=[m["grad_norm"] for m in eight["metrics"]],
            params_diff=max_diff(one["params"], eight["params"]),
            params_moved=max_diff(one["params"], jax.device_get(state0.params)),
            shards=eight["shards"],
        )
    with open(out_path, "w") as f:
        json.dump(summary, f)


def test_jvp_objectives_give_the_same_training_on_8_devices_as_on_1(tmp_path):
    out = tmp_path / "jvp_devices.json"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8",
               PYTHONPATH=os.pathsep.join([root, env.get("PYTHONPATH", "")]))
    subprocess.run([sys.executable, os.path.abspath(__file__), str(out)], check=True,
                   timeout=400, env=env)
    result = json.loads(out.read_text())
    for case in ("scm", "meanflow"):
        found = result[case]
        assert found["shards"] == 8  # the batch really is split over 8 devices
        np.testing.assert_allclose(found["losses_eight"], found["losses_one"], rtol=1e-5)
        np.testing.assert_allclose(found["grad_norms_eight"], found["grad_norms_one"], rtol=1e-5)
        assert found["params_moved"] > 1e-3  # it trained, so the equality below means something
        assert found["params_diff"] < 1e-5, found


if __name__ == "__main__":
    run_devices(sys.argv[1])
