"""Data-parallel sharding: 8 forced host devices and two ``jax.distributed`` processes give the
same step as one device."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from _multihost_worker import run_process

from diffusion_jax import sharding

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_multihost_worker.py")


def _env(**extra):
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    env.update(JAX_PLATFORMS="cpu", **extra)
    return env


def test_eight_device_step_equals_one_device_step(tmp_path):
    out = tmp_path / "devices.json"
    subprocess.run(
        [sys.executable, WORKER, "devices", str(out)], check=True, timeout=400,
        env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=8"),
    )
    result = json.loads(out.read_text())
    assert result["num_shards"] == 8  # the batch really is split over 8 devices
    np.testing.assert_allclose(result["loss_eight"], result["loss_one"], rtol=1e-6)
    assert result["grad_diff"] <= 1e-5 * result["grad_scale"]
    assert result["params_diff"] < 1e-5 and result["ema_diff"] < 1e-5
    assert result["metrics_loss_diff"] < 1e-6
    assert result["shardings_kept"]
    assert result["recompiles_eight"] == 0
    assert "not divisible by the 8 devices" in result["divisible_error"]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_agree_with_one_process(tmp_path):
    port = _free_port()
    outs = [tmp_path / f"process_{i}.json" for i in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, WORKER, "process", str(outs[i]), str(port), str(i), "2"],
            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for i in range(2)
    ]
    reference = tmp_path / "single.json"
    run_process(str(reference), None, 0, 1)  # in this process, meanwhile
    logs = [p.communicate(timeout=400)[0] for p in procs]
    if any(p.returncode for p in procs):
        if "gloo" in "".join(logs).lower() and "not" in "".join(logs).lower():
            pytest.skip("this jaxlib has no gloo CPU collectives:\n" + logs[0][-2000:])
        raise AssertionError("multi-process run failed:\n" + "\n".join(log[-3000:] for log in logs))
    single = json.loads(reference.read_text())
    multi = [json.loads(out.read_text()) for out in outs]
    assert multi[0]["devices"] == 2  # one CPU device per process, one global mesh
    np.testing.assert_allclose(multi[0]["losses"], single["losses"], rtol=1e-5)
    np.testing.assert_allclose(multi[1]["losses"], single["losses"], rtol=1e-5)
    for a, b in zip(multi[0]["params"], single["params"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert single["losses"][-1] < single["losses"][0]


def test_mesh_and_batch_errors():
    with pytest.raises(ValueError, match="needs 3 devices"):
        sharding.make_mesh(data=3)
    with pytest.raises(ValueError, match="model axis"):
        sharding.make_mesh(model=0)
    mesh = sharding.make_mesh()
    with pytest.raises(ValueError, match="not divisible"):
        sharding.check_batch_size(0, mesh)
    assert sharding.check_batch_size(4, mesh) == 4


def test_stacked_batches_split_along_the_batch_axis():
    mesh = sharding.make_mesh()
    stacked = sharding.shard_batch(
        {"x": np.zeros((3, 4, 2), np.float32)}, sharding.batch_sharding(mesh, stacked=True)
    )
    assert stacked["x"].shape == (3, 4, 2)
    assert stacked["x"].sharding.spec == jax.sharding.PartitionSpec(None, sharding.DATA_AXIS)


FAMILIES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_train_families.py")


def test_eight_device_joint_step_with_teacher_equals_one_device(tmp_path):
    """Two trained networks, an EMA target and a replicated frozen teacher; and the one
    global-batch builder on the same 8-device run."""
    out = tmp_path / "families.json"
    subprocess.run(
        [sys.executable, FAMILIES, str(out)], check=True, timeout=400,
        env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=8"),
    )
    result = json.loads(out.read_text())
    assert result["num_shards"] == 8 and result["teacher_replicated"]
    np.testing.assert_allclose(result["losses_eight"], result["losses_one"], rtol=1e-6)
    assert result["params_moved"] > 1e-3  # it trained, so the equality below means something
    assert result["params_diff"] < 1e-6 and result["ema_diff"] < 1e-6
    # shard_batch: one 4-D spec serves images and (1-D) labels; stacks split along axis 1
    assert result["values_kept"] and result["label_row_blocks"] == 4
    assert result["stacked_row_blocks"] == 8
    assert "not divisible by the 8 devices" in result["indivisible_error"]
    assert "needs at least 1 axes" in result["scalar_error"]


def test_shard_batch_and_place_state_errors():
    mesh = sharding.make_mesh()
    with pytest.raises(ValueError, match="NamedSharding"):
        sharding.shard_batch({"x": np.zeros((4, 2))}, None)
    with pytest.raises(ValueError, match="not an array"):
        sharding.place_state({"teacher": lambda x: x}, {"teacher": sharding.replicated(mesh)})
