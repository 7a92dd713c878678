"""End to end: ``train.py`` then ``sample.py`` / ``evaluate.py`` on the tiny config, runs that open
themselves from any directory, and the CLIs' one-line errors and exit codes."""

import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from diffusion_jax import data, metrics, recipes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny.py")


def _run(*args, env_extra=None, timeout=400, cwd=ROOT):
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    env.pop("PYTHONPATH", None)
    env["JAX_PLATFORMS"] = "cpu"
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=timeout,
    )


def _cli(name):
    return os.path.join(ROOT, name)


def _train(workdir, *overrides, config=TINY, **kwargs):
    return _run(_cli("train.py"), "--config", config, "--workdir", str(workdir),
                "--compilation_cache_dir=", *overrides, **kwargs)


def _one_error_line(result):
    """The CLI failed with exactly one ``ERROR:`` line and no traceback."""
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("ERROR:")]
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One trained tiny run (400 steps, two moons) shared by the read-only tests."""
    workdir = tmp_path_factory.mktemp("tiny_run")
    result = _train(workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, result


def test_train_then_sample_beats_untrained_model(tiny_run, tmp_path):
    workdir, result = tiny_run
    assert "compiling the train step" in result.stdout
    assert "steps/s" in result.stdout and "eta" in result.stdout
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 401))
    assert (workdir / "samples" / "step_0000400.png").exists()
    event_files = [f for f in os.listdir(workdir) if f.startswith("events.out.tfevents")]
    assert len(event_files) == 1

    result = _run(_cli("sample.py"), "--workdir", str(workdir), "--num_samples", "1000",
                  "--num_steps", "16", "--output", str(tmp_path / "s.npz"),
                  "--compilation_cache_dir=")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "checkpoint step 400" in result.stdout
    samples = np.load(tmp_path / "s.npz")["samples"]
    assert samples.shape == (1000, 2) and (tmp_path / "s.png").exists()

    config = recipes.load_config(TINY)
    target = np.asarray(data.sample_toy("two_moons", jax.random.key(99), 1000))
    network, wrap = recipes.build_model(config)
    untrained, _ = recipes.generate(wrap(network), config, num_samples=1000, seed=0)
    trained_distance = metrics.sliced_wasserstein(samples, target)
    untrained_distance = metrics.sliced_wasserstein(untrained, target)
    reference = metrics.sliced_wasserstein(
        np.asarray(data.sample_toy("two_moons", jax.random.key(5), 1000)), target
    )
    print(f"SWD trained {trained_distance:.4f} untrained {untrained_distance:.4f} "
          f"data-vs-data {reference:.4f}")
    assert trained_distance < 0.25 * untrained_distance
    assert trained_distance < 5 * reference + 0.05

    # evaluate.py on the same checkpoint: a JSON report whose metrics see a good model, and
    # no library INFO noise on stderr
    report_path = tmp_path / "report.json"
    result = _run(_cli("evaluate.py"), "--workdir", str(workdir), "--num_samples", "500",
                  "--output", str(report_path), "--compilation_cache_dir=")
    assert result.returncode == 0, result.stderr[-3000:]
    noisy = [line for line in result.stderr.splitlines() if line.startswith(("I", "INFO"))]
    assert not noisy, noisy[:5]
    report = json.loads(report_path.read_text())
    quality = report["sample_quality"]
    assert report["step"] == 400
    assert quality["num_samples"] == 500 and quality["feature_network"] == "identity"
    assert quality["fid"] < 0.1
    assert quality["precision"] > 0.6 and quality["recall"] > 0.6


def test_run_opens_itself_from_another_directory(tiny_run, tmp_path):
    """With only the installed package (the repository not on sys.path, another cwd), a run
    written by train.py loads and samples, and agrees with the in-process load."""
    workdir, _ = tiny_run
    script = (
        "import sys, jax, numpy as np\n"
        "import diffusion_jax\n"
        "from diffusion_jax import samplers\n"
        "try:\n"
        "    import train\n"
        "    sys.exit('train.py is importable: the repository is on sys.path')\n"
        "except ImportError:\n"
        "    pass\n"
        f"run = diffusion_jax.load({str(workdir)!r})\n"
        "noise = jax.random.normal(jax.random.key(0), (8, 2))\n"
        "sigmas = samplers.karras_sigmas(8)\n"
        "x0 = jax.jit(samplers.heun)(run.denoiser, noise, sigmas)\n"
        "np.save(sys.argv[1], np.asarray(x0))\n"
        "print('step', run.step, 'ema', run.ema, run.spec['network']['name'])\n"
    )
    out = tmp_path / "x0.npy"
    result = _run("-c", script, str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "step 400" in result.stdout and "mlp" in result.stdout
    run = recipes.load(workdir)
    from diffusion_jax import samplers

    noise = jax.random.normal(jax.random.key(0), (8, 2))
    expected = jax.jit(samplers.heun)(run.denoiser, noise, samplers.karras_sigmas(8))
    np.testing.assert_allclose(np.load(out), np.asarray(expected), rtol=1e-6, atol=1e-6)


def test_rerunning_a_finished_run_reports_it(tiny_run):
    workdir, _ = tiny_run
    result = _train(workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "already finished: step 400" in result.stdout
    assert "nan" not in result.stdout


def test_config_change_at_resume_is_refused_unless_allowed(tmp_path):
    ok = _train(tmp_path, "--config.train.num_steps=100", "--config.train.checkpoint_every=100",
                "--config.train.eval_every=100", "--config.train.eval_num_samples=256")
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert "fid" in ok.stdout and "precision" in ok.stdout  # periodic evaluation during training
    # same array shapes, different model: EDM -> VP process and preconditioning
    changed = ("--config.process.name=vp", "--config.model.preconditioning=vp",
               "--config.train.num_steps=200")
    refused = _train(tmp_path, *changed)
    line = _one_error_line(refused)
    assert "process.name" in line and "model.preconditioning" in line
    assert "--allow_config_change" in line
    assert recipes.load(tmp_path).step == 100
    allowed = _train(tmp_path, *changed, "--allow_config_change",
                     "--config.train.checkpoint_every=100")
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    record = json.loads((tmp_path / "config_changes.jsonl").read_text().splitlines()[-1])
    assert record["forced"] and any(c[0] == "process.name" for c in record["changes"])
    # harmless fields (the run's length) resume without a flag
    longer = _train(tmp_path, *changed, "--config.train.num_steps=300",
                    "--config.train.checkpoint_every=100")
    assert longer.returncode == 0, longer.stderr[-3000:]
    assert "resuming with a changed config: train.num_steps: 200 -> 300" in longer.stdout


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    ok = _train(tmp_path, "--config.train.num_steps=100", "--config.train.checkpoint_every=100")
    assert ok.returncode == 0, ok.stderr[-3000:]
    bad = _train(tmp_path, "--config.train.num_steps=300", "--config.optim.learning_rate=1e30",
                 "--config.train.log_every=50", "--allow_config_change")
    line = _one_error_line(bad)
    assert "non-finite loss" in line and "last good checkpoint" in line
    run = recipes.load(tmp_path)
    assert run.step == 100
    assert bool(np.all(np.isfinite(np.asarray(run.denoiser(np.ones((2, 2), np.float32), 1.0)))))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (("--config.train.no_such_field=3",), "no_such_field"),
        (("--config.train.max_to_keep=0",), "max_to_keep"),
        (("--config.sample.sampler=no_such_sampler",), "no_such_sampler"),
    ],
)
def test_bad_config_is_one_line_before_training(tmp_path, overrides, message):
    result = _train(tmp_path / "run", *overrides)
    assert message in _one_error_line(result)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_bad_paths_are_one_line_errors(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert "is a file" in _one_error_line(_train(a_file))
    assert "which is a file" in _one_error_line(_train(a_file / "run"))
    missing_config = _train(tmp_path / "run", config=str(tmp_path / "missing.py"))
    assert "missing.py" in _one_error_line(missing_config)
    assert missing_config.returncode == 2
    # sample.py / evaluate.py refuse a directory that is no run, and create nothing
    for cli in ("sample.py", "evaluate.py"):
        result = _run(_cli(cli), "--workdir", str(tmp_path / "nothing"))
        assert "does not exist" in _one_error_line(result)
        assert not (tmp_path / "nothing").exists()


def test_sample_cli_rejects_bad_counts_and_outputs_before_sampling(tiny_run, tmp_path):
    workdir, _ = tiny_run
    for flag, value in (("--num_samples", "0"), ("--num_samples", "-4"), ("--num_steps", "0")):
        result = _run(_cli("sample.py"), "--workdir", str(workdir), flag, value,
                      "--output", str(tmp_path / "x.npz"))
        assert "positive integer" in _one_error_line(result)
        assert not (tmp_path / "x.npz").exists()
    blocked = tmp_path / "blocked"
    blocked.write_text("x")
    result = _run(_cli("sample.py"), "--workdir", str(workdir), "--output",
                  str(blocked / "s.npz"))
    line = _one_error_line(result)
    assert "is a file" in line
    assert "sampling" not in result.stdout  # refused before any sampling
    unknown = _run(_cli("sample.py"), "--workdir", str(workdir), "--option", "bogus=1")
    assert "bogus" in _one_error_line(unknown)


def test_sample_cli_names_files_by_seed_and_count(tiny_run):
    workdir, _ = tiny_run
    for seed in ("1", "2"):
        result = _run(_cli("sample.py"), "--workdir", str(workdir), "--num_samples", "8",
                      "--num_steps", "4", "--seed", seed, "--compilation_cache_dir=")
        assert result.returncode == 0, result.stderr[-3000:]
    names = sorted(os.listdir(workdir / "samples"))
    assert "heun_karras_4_seed1_n8.npz" in names and "heun_karras_4_seed2_n8.npz" in names


def test_sample_cli_lists_every_registered_sampler():
    from diffusion_jax import samplers

    result = _run(_cli("sample.py"), "--list_samplers")
    assert result.returncode == 0, result.stderr[-3000:]
    for info in samplers.SAMPLERS:
        assert info.name in result.stdout


def test_default_job_from_another_directory_is_class_conditional_with_guidance(tmp_path):
    """train.py's default --config resolves from any cwd; the default job is class-conditional,
    so sample.py --guidance_scale with --class works on it."""
    workdir = tmp_path / "digits"
    result = _run(_cli("train.py"), "--workdir", str(workdir), "--compilation_cache_dir=",
                  "--config.train.num_steps=4", "--config.train.log_every=2",
                  "--config.train.checkpoint_every=2", "--config.train.sample_every=0",
                  "--config.train.num_grid_samples=4", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert recipes.load(workdir).spec["data"]["num_classes"] == 10
    out = tmp_path / "guided.npz"
    result = _run(_cli("sample.py"), "--workdir", str(workdir), "--guidance_scale", "2",
                  "--class", "3", "--num_samples", "4", "--num_steps", "3",
                  "--output", str(out), "--compilation_cache_dir=", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    np.testing.assert_array_equal(np.load(out)["labels"], [3, 3, 3, 3])
    result = _run(_cli("sample.py"), "--workdir", str(workdir), "--labels", "0,1,2",
                  "--num_steps", "3", "--output", str(out), "--compilation_cache_dir=",
                  cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    np.testing.assert_array_equal(np.load(out)["labels"], [0, 1, 2])


def test_batch_not_divisible_by_devices(tmp_path):
    result = _train(tmp_path, "--config.train.batch_size=12",
                    env_extra={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
    assert "not divisible by the 8 devices" in _one_error_line(result)


def test_sigterm_saves_stops_with_a_distinct_code_and_resumes(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    process = subprocess.Popen(
        [sys.executable, _cli("train.py"), "--config", TINY, "--workdir", str(tmp_path),
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
    assert process.returncode == 3
    assert "saving a checkpoint and stopping" in output
    assert "run the same command to resume" in output
    stopped_at = int(output.split("stopped at step ")[1].split(" ")[0])
    assert stopped_at >= 100
    assert recipes.load(tmp_path).step == stopped_at


def test_discrete_family_runs_through_the_three_clis(tmp_path):
    """A discrete (masked diffusion) run trains, samples tokens and reports NELBO bits through
    the same CLIs, dispatched on config.model.family."""
    config = os.path.join(ROOT, "configs", "digits_masked.py")
    result = _train(tmp_path, "--config.train.num_steps=4", "--config.train.log_every=2",
                    "--config.train.checkpoint_every=2", "--config.train.num_grid_samples=4",
                    "--config.model.hidden_dim=32", "--config.model.num_layers=1", config=config)
    assert result.returncode == 0, result.stderr[-3000:]
    assert recipes.load(tmp_path).spec["family"] == "discrete"
    out = tmp_path / "tokens.npz"
    result = _run(_cli("sample.py"), "--workdir", str(tmp_path), "--num_samples", "3",
                  "--num_steps", "4", "--output", str(out), "--compilation_cache_dir=")
    assert result.returncode == 0, result.stderr[-3000:]
    tokens = np.load(out)["samples"]
    assert tokens.shape == (3, 8, 8) and tokens.min() >= 0 and tokens.max() <= 16
    report = tmp_path / "report.json"
    result = _run(_cli("evaluate.py"), "--workdir", str(tmp_path), "--bpd_examples", "8",
                  "--bpd_batch_size", "8", "--output", str(report), "--compilation_cache_dir=")
    assert result.returncode == 0, result.stderr[-3000:]
    bits = json.loads(report.read_text())["bits_per_dim"]
    assert 0 < bits < 2 * np.log2(17)  # a few steps in: near the uniform log2(17) = 4.09


def test_flow_family_runs_through_the_three_clis(tmp_path):
    """A flow-matching run from the torchcfm 8-Gaussians source trains, samples with one Euler
    step and reports W2 / straightness through the same CLIs."""
    config = os.path.join(ROOT, "configs", "toy2d_otcfm.py")
    result = _train(tmp_path, "--config.train.num_steps=20", "--config.train.log_every=10",
                    "--config.train.checkpoint_every=10", "--config.train.num_grid_samples=64",
                    "--config.train.batch_size=64", config=config)
    assert result.returncode == 0, result.stderr[-3000:]
    assert recipes.load(tmp_path).spec["family"] == "flow"
    out = tmp_path / "points.npz"
    result = _run(_cli("sample.py"), "--workdir", str(tmp_path), "--sampler", "euler",
                  "--num_steps", "1", "--num_samples", "200", "--output", str(out),
                  "--compilation_cache_dir=")
    assert result.returncode == 0, result.stderr[-3000:]
    points = np.load(out)["samples"]
    assert points.shape == (200, 2) and np.all(np.isfinite(points))
    report = tmp_path / "report.json"
    result = _run(_cli("evaluate.py"), "--workdir", str(tmp_path), "--bpd_examples", "128",
                  "--output", str(report), "--compilation_cache_dir=")
    assert result.returncode == 0, result.stderr[-3000:]
    values = json.loads(report.read_text())
    assert values["w2"] > 0 and values["straightness"] >= 0 and values["num_examples"] == 128
