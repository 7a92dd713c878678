"""The flow-map family's recipes: configs validate into JSON specs that hold no teacher, the
flow-map grids nest (progressive distillation's halving), sampling through the recipe with the
exact Gaussian flow map lands on the data and composes, a student starts exactly as its teacher,
teacher runs are checked with one-line errors, the extra averages (EMA target, stage teacher)
follow their schedules, and a distilled run trains, samples (``sample.py --num_steps 1``) and
opens itself with ``load()``."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import analytic, checkpoints, recipes
from diffusion_jax.flowmaps import curricula, exact, parameterisations
from diffusion_jax.recipes import flowmaps as recipe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = ("progressive", "cd", "ict", "ect", "scm", "ctm", "meanflow", "shortcut")
CIFAR = ("ict", "ect", "scm", "meanflow")
TINY_NETWORK = {"model.base_channels": 8, "model.channel_multipliers": (1,)}


def _config(name, **overrides):
    return recipes.load_config(os.path.join(ROOT, "configs", f"{name}.py"), overrides)


@pytest.mark.parametrize("name", [f"digits_{n}" for n in DIGITS] + [f"cifar10_{n}" for n in CIFAR])
def test_configs_validate_into_json_specs_without_the_teacher(name):
    config = _config(name)
    assert config.model.family == "flowmap"
    recipe.validate(config)
    spec = recipes.model_spec(config)
    assert json.loads(json.dumps(spec)) == spec
    assert "teacher" not in json.dumps(spec["model"])  # a run samples without its teacher
    kwargs = spec["network"]["kwargs"]
    two_time = kwargs.get("two_time", kwargs.get("network", {}).get("kwargs", {}).get("two_time"))
    assert bool(two_time) == (config.flowmap.objective in ("ctm", "meanflow", "shortcut"))


def test_flow_map_grids_nest_and_end_at_zero():
    levels = {n: recipe.flow_map_sigmas("karras", n, sigma_min=0.002, sigma_max=80.0)
              for n in (1, 2, 4, 8, 16)}
    np.testing.assert_allclose(levels[1], [80.0, 0.0], rtol=1e-6)
    for n in (1, 2, 4, 8):  # the 2n-step grid holds the n-step one: a student step = 2 teacher steps
        np.testing.assert_allclose(levels[2 * n][::2], levels[n], rtol=1e-5)
        assert levels[n].shape == (n + 1,) and bool(jnp.all(jnp.diff(levels[n]) < 0))
    # the last level before 0 is a Karras level of n + 1 points (sigma_min is replaced by 0)
    np.testing.assert_allclose(levels[2][1], ((80 ** (1 / 7) + 0.002 ** (1 / 7)) / 2) ** 7,
                               rtol=1e-5)
    uniform = recipe.flow_map_sigmas("uniform_time", 4, sigma_min=0.002, sigma_max=1000.0)
    t = uniform / (1.0 + uniform)
    np.testing.assert_allclose(t, 0.999 * np.array([1.0, 0.75, 0.5, 0.25, 0.0]), rtol=1e-5)
    with pytest.raises(ValueError, match="unknown flow-map grid"):
        recipe.flow_map_sigmas("cosine", 2, sigma_min=0.002, sigma_max=80.0)
    with pytest.raises(ValueError, match="positive integer"):
        recipe.flow_map_sigmas("karras", 0, sigma_min=0.002, sigma_max=80.0)


def _exact_map(mean=0.3, std=0.2):
    """The exact VE flow map of per-pixel N(mean, std^2) data (the last axis is the data axis)."""
    gaussian = analytic.GaussianMixture.create(jnp.array([[mean]]), variances=std**2)
    return exact.ExactGaussianFlowMap(gaussian)


def test_generate_with_the_exact_flow_map_lands_on_the_data_and_composes():
    config = _config("digits_cd")
    model = _exact_map()
    one, labels = recipe.generate(model, config, num_samples=300, seed=1, num_steps=1,
                                  batch_size=300, sampler="flow_map")
    assert one.shape == (300, 8, 8, 1) and labels.shape == (300,)
    np.testing.assert_allclose(one.mean(), 0.3, atol=0.01)
    np.testing.assert_allclose(one.std(), 0.2, rtol=0.02)
    rebatched, _ = recipe.generate(model, config, num_samples=300, seed=1, num_steps=1,
                                   batch_size=70, sampler="flow_map")
    np.testing.assert_allclose(rebatched, one, atol=1e-6)
    # deterministic jumps of the exact map compose: 4 jumps = 1 jump
    four, _ = recipe.generate(model, config, num_samples=300, seed=1, num_steps=4,
                              sampler="flow_map")
    np.testing.assert_allclose(four, one, atol=1e-4)
    # consistency sampling re-noises between jumps and still samples the data
    renoised, _ = recipe.generate(model, config, num_samples=300, seed=1, num_steps=2)
    assert np.abs(renoised - one).max() > 0.05
    np.testing.assert_allclose(renoised.std(), 0.2, rtol=0.05)
    with pytest.raises(ValueError, match="no option"):
        recipe.generate(model, config, num_samples=2, seed=0, options={"s_churn": 1.0})
    with pytest.raises(ValueError, match="guidance"):
        recipe.generate(model, config, num_samples=2, seed=0, guidance_scale=2.0)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    """A tiny class-conditional EDM teacher on digits (a few steps: only its weights matter)."""
    workdir = tmp_path_factory.mktemp("teacher")
    config = _config("digits_edm", **TINY_NETWORK, **{
        "train.num_steps": 3, "train.batch_size": 16, "train.log_every": 3,
        "train.checkpoint_every": 3, "train.sample_every": 0, "train.num_grid_samples": 4})
    recipes.train(config, str(workdir))
    return str(workdir)


def test_student_starts_exactly_as_its_teacher(teacher_run):
    teacher = recipes.load(teacher_run)
    x = 0.5 * jax.random.normal(jax.random.key(0), (3, 8, 8, 1))
    labels = jnp.array([0, 4, 9])
    for name, make in (("ect", lambda net: parameterisations.ConsistencyModel(net, sigma_min=0.0)),
                       ("ctm", lambda net: parameterisations.CTMFlowMap(net).denoiser)):
        config = _config(f"digits_{name}", **TINY_NETWORK,
                         **{"flowmap.teacher_workdir": teacher_run})
        student, _ = recipes.build_model(config, seed=7)
        recipe.copy_teacher_weights(teacher.denoiser.network, student)
        for sigma in (0.05, 1.0, 20.0):
            expected = teacher.denoiser(x, sigma, labels)
            if name == "ect":  # the consistency function of EDM's preconditioning is D
                got = make(student)(x, sigma, 0.0, labels)
            else:  # the two-time student's second time branch starts at zero
                got = parameterisations.CTMFlowMap(student).inner(x, sigma, 0.3 * sigma, labels)
            np.testing.assert_allclose(got, expected, atol=1e-5)


def test_teacher_runs_are_checked_in_one_line(teacher_run, tmp_path):
    missing = str(tmp_path / "nothing")
    with pytest.raises(ValueError, match="no teacher run at.*nothing.*train.py --config "
                                         "configs/digits_edm.py"):
        recipe.load_teacher(_config("digits_cd", **{"flowmap.teacher_workdir": missing}))
    with pytest.raises(ValueError, match=r"data shape \(8, 8, 1\).*data.shape = \(4, 4, 1\)"):
        recipe.load_teacher(_config("digits_cd", **{"flowmap.teacher_workdir": teacher_run,
                                                    "data.shape": (4, 4, 1)}))
    with pytest.raises(ValueError, match="10 classes but the config has no"):
        recipe.load_teacher(_config("digits_cd", **{"flowmap.teacher_workdir": teacher_run,
                                                    "train.class_conditional": False}))
    with pytest.raises(ValueError, match="network differs in.*base_channels"):
        recipe.train_extras(_config("digits_cd", **{"flowmap.teacher_workdir": teacher_run}))


@pytest.mark.parametrize("overrides,message", [
    ({"flowmap.objective": "dmd"}, "unknown flowmap.objective"),
    ({"flowmap.teacher_workdir": ""}, "set flowmap.teacher_workdir"),
    ({"flowmap.objective": "progressive", "flowmap.progressive_teacher_steps": 4,
      "flowmap.progressive_num_stages": 3}, "2\\^stages"),
    ({"flowmap.objective": "ect", "flowmap.init_from_teacher": False}, "init_from_teacher"),
    ({"flowmap.objective": "scd", "flowmap.init_from_teacher": True}, "TrigFlow"),
    ({"flowmap.objective": "ict", "train.num_steps": 4}, "stages of the curriculum"),
    ({"flowmap.objective": "ct", "flowmap.curriculum_s0": 1}, "never reaches two levels"),
    ({"flowmap.sampler": "heun"}, "unknown flowmap.sampler"),
    ({"flowmap.gamma": 0.5}, "flow_map"),
])
def test_bad_settings_get_one_line_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        recipe.validate(_config("digits_cd", **overrides))


def test_extra_averages_follow_their_schedules():
    config = _config("digits_progressive", **{"train.num_steps": 40})
    stage_teacher = recipe._extra_emas(config)["stage_teacher"]  # 4 stages of 10 steps
    decays = np.array([float(stage_teacher(jnp.int32(k))) for k in range(40)])
    np.testing.assert_array_equal(np.flatnonzero(decays == 0.0), [9, 19, 29, 39])
    assert set(decays) == {0.0, 1.0}
    ct = recipe._extra_emas(_config("digits_cd", **{"flowmap.objective": "ct",
                                                    "train.num_steps": 100}))["target"]
    np.testing.assert_allclose(float(ct(jnp.int32(0))), 0.81, rtol=1e-6)  # mu0^(s0/(N(0)-1))
    np.testing.assert_allclose(float(ct(jnp.int32(100))),
                               float(curricula.ct_ema_decay(100, total_steps=100)), rtol=1e-6)
    cd = recipe._extra_emas(_config("digits_cd"))["target"]
    np.testing.assert_allclose(float(cd(jnp.int32(5))), 0.95)
    assert recipe._extra_emas(_config("digits_ict")) == {}


def _run(*args):
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "PYTHONPATH")}
    env["JAX_PLATFORMS"] = "cpu"
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=400)


def test_distilled_run_trains_samples_in_one_step_and_opens_itself(teacher_run, tmp_path):
    workdir = str(tmp_path / "student")
    result = _run("train.py", "--config", "configs/digits_cd.py", "--workdir", workdir,
                  "--compilation_cache_dir=", f"--config.flowmap.teacher_workdir={teacher_run}",
                  "--config.model.base_channels=8", "--config.model.channel_multipliers=(1,)",
                  "--config.train.num_steps=2", "--config.train.batch_size=16",
                  "--config.train.log_every=1", "--config.train.checkpoint_every=2",
                  "--config.train.num_grid_samples=4")
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "one_step.npz"
    result = _run("sample.py", "--workdir", workdir, "--num_steps", "1", "--num_samples", "6",
                  "--output", str(out), "--compilation_cache_dir=")
    assert result.returncode == 0, result.stderr[-3000:]
    samples = np.load(out)["samples"]
    assert samples.shape == (6, 8, 8, 1) and np.all(np.isfinite(samples))
    run = recipes.load(workdir)  # the teacher is not needed to open or sample the student
    assert run.spec["family"] == "flowmap" and run.spec["model"]["objective"] == "cd"
    assert isinstance(run.denoiser, parameterisations.ConsistencyModel)
    again, _ = recipe.generate(run.denoiser, run.config, num_samples=6, seed=0, num_steps=1)
    np.testing.assert_allclose(again, samples, atol=1e-5)
    two, _ = recipe.generate(run.denoiser, run.config, num_samples=6, seed=0, num_steps=2)
    assert np.all(np.isfinite(two)) and np.abs(two - samples).max() > 0
    # the EMA target of CD is kept beside the config's average, which sampling reads first
    names = checkpoints.read_run_info(workdir).ema_names
    assert names[0] == "half_life_2000" and "target" in names


def test_progressive_stages_draw_student_steps_of_their_own_nested_grid():
    """Stage k of digits_progressive (16 teacher steps, 4 stages) trains an N_k = 8, 4, 2, 1 step
    student: its sigmas are the levels of the N_k-step grid, and its target is the point two
    teacher DDIM steps (through the 2 N_k grid's midpoint) reach: a student that returns the
    exact x~ has zero loss, a constant one does not."""
    config = _config("digits_progressive", **{"train.num_steps": 40})
    seen = []

    class Recorder:
        def __init__(self, exact):
            self.exact = exact

        def __call__(self, x, sigma, cond=None):
            seen.append(np.asarray(sigma))
            if not self.exact:
                return jnp.ones_like(x)
            # the x~ of the two teacher steps, from the levels the loss drew
            grid = np.asarray(recipe.flow_map_sigmas("karras", 2 * num_steps, sigma_min=0.002,
                                                     sigma_max=80.0))
            index = np.searchsorted(-grid, -np.asarray(sigma))
            mid, to = grid[index + 1], grid[index + 2]
            teacher = lambda x, s: x * (0.25 / (s**2 + 0.25))  # EDM with a zero network  # noqa: E731
            x_mid = teacher(x, sigma[:, None, None, None]) + (mid / sigma)[:, None, None, None] * (
                x - teacher(x, sigma[:, None, None, None]))
            d_mid = teacher(x_mid, mid[:, None, None, None])
            x_to = d_mid + (to / mid)[:, None, None, None] * (x_mid - d_mid)
            ratio = (to / sigma)[:, None, None, None]
            return (x_to - ratio * x) / (1 - ratio)

    zero_network = lambda x, c_noise, cond=None: jnp.zeros_like(x)  # noqa: E731
    x0 = 0.5 * jax.random.normal(jax.random.key(0), (64, 8, 8, 1))
    for step, num_steps in ((0, 8), (10, 4), (25, 2), (39, 1)):
        for exact_student in (True, False):
            seen.clear()
            loss_fn = recipe._progressive_loss(
                config, lambda net, e=exact_student: type("M", (), {"denoiser": Recorder(e)})())
            context = recipes.training_loop.training.LossContext(
                step=jnp.int32(step), ema={"stage_teacher": zero_network}, detached=None,
                frozen=None)
            loss = np.asarray(loss_fn(None, context, x0, None, jax.random.key(step)))
            student_grid = np.asarray(recipe.flow_map_sigmas("karras", num_steps,
                                                             sigma_min=0.002, sigma_max=80.0))
            drawn = np.unique(np.round(seen[0], 4))
            assert set(drawn) <= set(np.round(student_grid[:-1], 4)), (step, drawn)
            assert len(drawn) == min(num_steps, len(drawn)) and len(drawn) >= min(num_steps, 2)
            if exact_student:
                np.testing.assert_allclose(loss, 0.0, atol=1e-4)
            else:
                assert loss.mean() > 0.1
