"""End to end: ``train.py`` then ``sample.py`` on the tiny config, and the CLIs' clear errors."""

import json
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import sample as sample_cli  # noqa: E402
import train as train_cli  # noqa: E402
from configs import mnist_edm, tiny  # noqa: E402
from diffusion_jax import checkpoints, data  # noqa: E402


def _run(*args, env_extra=None, timeout=400):
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    env["JAX_PLATFORMS"] = "cpu"
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=timeout,
    )


def _train(workdir, *overrides, **kwargs):
    return _run("train.py", "--config", "configs/tiny.py", "--workdir", str(workdir),
                "--compilation_cache_dir=", *overrides, **kwargs)


def sliced_wasserstein(a, b, *, num_projections=256, seed=0):
    """Sliced 2-Wasserstein distance between equal-size point sets (Rabin et al. 2011):
    ``sqrt(mean over random directions of W2^2 of the 1-D projections)``, sorted matching."""
    rng = np.random.default_rng(seed)
    directions = rng.standard_normal((a.shape[1], num_projections))
    directions /= np.linalg.norm(directions, axis=0)
    pa, pb = np.sort(a @ directions, axis=0), np.sort(b @ directions, axis=0)
    return float(np.sqrt(np.mean((pa - pb) ** 2)))


def test_train_then_sample_beats_untrained_model(tmp_path):
    result = _train(tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "steps/s" in result.stdout and "eta" in result.stdout
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 401))
    assert (tmp_path / "samples" / "step_0000400.png").exists()
    event_files = [f for f in os.listdir(tmp_path) if f.startswith("events.out.tfevents")]
    assert len(event_files) == 1

    result = _run("sample.py", "--workdir", str(tmp_path), "--num_samples", "1000",
                  "--num_steps", "16", "--output", str(tmp_path / "s.npz"),
                  "--compilation_cache_dir=")
    assert result.returncode == 0, result.stderr[-3000:]
    samples = np.load(tmp_path / "s.npz")["samples"]
    assert samples.shape == (1000, 2) and (tmp_path / "s.png").exists()

    config = tiny.get_config()
    target = np.asarray(data.sample_toy("two_moons", jax.random.key(99), 1000))
    network, wrap = train_cli.build_model(config)
    untrained, _ = sample_cli.generate(wrap(network), config, num_samples=1000, seed=0)
    trained_distance = sliced_wasserstein(samples, target)
    untrained_distance = sliced_wasserstein(untrained, target)
    reference = sliced_wasserstein(
        np.asarray(data.sample_toy("two_moons", jax.random.key(5), 1000)), target
    )
    print(f"SWD trained {trained_distance:.4f} untrained {untrained_distance:.4f} "
          f"data-vs-data {reference:.4f}")
    assert trained_distance < 0.25 * untrained_distance
    assert trained_distance < 5 * reference + 0.05

    # evaluate.py on the same checkpoint: a JSON report whose metrics see a good model.
    report_path = tmp_path / "report.json"
    result = _run("evaluate.py", "--workdir", str(tmp_path), "--num_samples", "500",
                  "--output", str(report_path))
    assert result.returncode == 0, result.stderr[-3000:]
    quality = json.loads(report_path.read_text())["sample_quality"]
    assert quality["num_samples"] == 500 and quality["feature_network"] == "identity"
    assert quality["fid"] < 0.1
    assert quality["precision"] > 0.6 and quality["recall"] > 0.6


def test_event_file_is_readable_by_tensorflow(tmp_path):
    tf = pytest.importorskip("tensorflow")
    writer = train_cli.EventWriter(str(tmp_path))
    writer.scalars(7, {"loss": 0.25, "grad_norm": 1.5})
    writer.close()
    (name,) = os.listdir(tmp_path)
    events = list(tf.compat.v1.train.summary_iterator(str(tmp_path / name)))
    assert events[0].file_version == "brain.Event:2"
    assert events[1].step == 7
    values = {v.tag: v.simple_value for v in events[1].summary.value}
    assert values == {"loss": 0.25, "grad_norm": 1.5}


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    ok = _train(tmp_path, "--config.train.num_steps=100", "--config.train.checkpoint_every=100")
    assert ok.returncode == 0, ok.stderr[-3000:]
    bad = _train(tmp_path, "--config.train.num_steps=300", "--config.optim.learning_rate=1e30",
                 "--config.train.log_every=50")
    assert bad.returncode != 0
    assert "non-finite loss" in bad.stderr and "last good checkpoint" in bad.stderr
    manager = checkpoints.make_manager(tmp_path)
    assert manager.all_steps() == [100]
    denoiser, _ = checkpoints.load_denoiser(tmp_path, build=train_cli.build_model)
    assert bool(jnp.all(jnp.isfinite(denoiser(jnp.ones((2, 2)), 1.0))))


def test_unknown_config_key_is_an_error(tmp_path):
    result = _train(tmp_path, "--config.train.no_such_field=3")
    assert result.returncode != 0
    assert "no_such_field" in result.stderr


def test_batch_not_divisible_by_devices(tmp_path):
    result = _train(tmp_path, "--config.train.batch_size=12",
                    env_extra={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
    assert result.returncode != 0
    assert "not divisible by the 8 devices" in result.stderr


def test_missing_dataset_says_how_to_prepare_it(tmp_path):
    config = mnist_edm.get_config()
    with pytest.raises(ValueError, match="data_dir"):
        train_cli.load_arrays(config)
    config.data.data_dir = str(tmp_path / "no_tfds_here")
    with pytest.raises(FileNotFoundError, match="mnist"):
        train_cli.load_arrays(config)


def test_bad_names_and_settings():
    config = tiny.get_config()
    config.sample.sampler = "no_such_sampler"
    with pytest.raises(ValueError, match="unknown sampler"):
        sample_cli.generate(None, config, num_samples=4, seed=0)
    config = tiny.get_config()
    config.process.name = "nope"
    with pytest.raises(ValueError, match="unknown process"):
        train_cli.build_process(config)
    config = tiny.get_config()
    config.train.log_every = 3
    config.train.steps_per_call = 2
    with pytest.raises(ValueError, match="multiple of steps_per_call"):
        train_cli.validate_config(config)


def test_sample_noise_does_not_depend_on_batching():
    key = jax.random.key(3)
    whole = sample_cli.sample_noise(key, 0, 6, (2,))
    parts = jnp.concatenate([sample_cli.sample_noise(key, 0, 4, (2,)),
                             sample_cli.sample_noise(key, 4, 2, (2,))])
    np.testing.assert_array_equal(whole, parts)


def test_quickstart_notebook_executes(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(os.path.join(ROOT, "notebooks", "quickstart.ipynb"), as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=240, kernel_name="python3",
        resources={"metadata": {"path": os.path.join(ROOT, "notebooks")}},
    )
    client.execute()
    outputs = "".join(
        output.get("text", "") for cell in notebook.cells for output in cell.get("outputs", [])
    )
    assert "finite: True" in outputs and "directional derivative" in outputs


def test_sigterm_saves_and_stops_cleanly(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    process = subprocess.Popen(
        [sys.executable, "train.py", "--config", "configs/tiny.py", "--workdir", str(tmp_path),
         "--compilation_cache_dir=", "--config.train.num_steps=1000000",
         "--config.train.checkpoint_every=1000000"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        for line in process.stdout:
            if line.startswith("step"):
                break
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=120)[0]
    finally:
        process.kill()
    assert process.returncode == 0
    assert "saving a checkpoint and stopping" in output
    stopped_at = int(output.split("done: step ")[1].split(",")[0])
    assert stopped_at >= 100
    assert checkpoints.make_manager(tmp_path).latest_step() == stopped_at
