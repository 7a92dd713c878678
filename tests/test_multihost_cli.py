"""``train.py`` as two ``jax.distributed`` processes (gloo on 127.0.0.1): checkpoint save and
restore across a stop and a resume give the same run as one process."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np

from diffusion_jax import recipes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny.py")
COMMON = ("--compilation_cache_dir=", "--config.train.log_every=50",
          "--config.train.checkpoint_every=50", "--config.train.sample_every=0")


def _env():
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_two_processes(workdir, num_steps):
    port = _free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "train.py"), "--config", TINY,
             "--workdir", str(workdir), f"--config.train.num_steps={num_steps}", *COMMON,
             f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
             f"--process_id={i}"],
            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=400)[0] for p in procs]
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]
    return outputs


def _losses(workdir):
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return np.array([row["loss"] for row in rows]), [row["step"] for row in rows]


def test_two_process_train_stop_resume_equals_one_process(tmp_path):
    multi, single = tmp_path / "multi", tmp_path / "single"
    _train_two_processes(multi, 100)
    outputs = _train_two_processes(multi, 200)
    assert "resumed from step 100" in outputs[0]
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "train.py"), "--config", TINY, "--workdir",
         str(single), "--config.train.num_steps=200", *COMMON],
        env=_env(), capture_output=True, text=True, timeout=400,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    multi_losses, multi_steps = _losses(multi)
    single_losses, single_steps = _losses(single)
    assert multi_steps == single_steps == list(range(1, 201))  # only process 0 logs, once
    np.testing.assert_allclose(multi_losses, single_losses, rtol=2e-5, atol=1e-6)
    x = jax.random.normal(jax.random.key(0), (16, 2))
    for ema in ("raw", "first"):
        a, b = recipes.load(multi, ema=ema), recipes.load(single, ema=ema)
        assert a.step == b.step == 200
        np.testing.assert_allclose(np.asarray(a.denoiser(x, 1.5)), np.asarray(b.denoiser(x, 1.5)),
                                   rtol=1e-4, atol=1e-5)
