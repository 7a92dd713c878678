"""Learned sampling grids (LD3, GITS) on the analytic Gaussian mixture (x64).

The teacher is a Dopri5 probability-flow solve at rtol = atol = 1e-10 (the exact endpoint up to
~1e-9, far below the errors compared); grids are learned on one set of noises and judged on
another. The parameterisation is checked for arbitrary logits, the DP against brute force, the
gradient of a sampler with respect to the logits against central finite differences.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import grid_learning, samplers
from diffusion_jax.analytic import GaussianMixture

SIGMA_MAX, SIGMA_MIN = 20.0, 0.01


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def _mixture():
    means = jnp.array([[1.0, -1.0], [-1.5, 0.5], [0.2, 1.5]])
    variances = jnp.array([[0.05, 0.2], [0.1, 0.04], [0.2, 0.02]])
    return GaussianMixture.create(means, variances=variances, weights=jnp.array([0.5, 0.3, 0.2]))


def _teacher_endpoints(denoiser, noise):
    teacher = grid_learning.adaptive_teacher(rtol=1e-10, atol=1e-10)
    return teacher(denoiser, noise, SIGMA_MAX, SIGMA_MIN)[0]


@pytest.fixture(scope="module")
def problem():
    with jax.enable_x64(True):
        denoiser = _mixture()
        train, test = jax.random.normal(jax.random.key(0), (2, 32, 2), jnp.float64)
        return denoiser, train, _teacher_endpoints(denoiser, train), test, _teacher_endpoints(
            denoiser, test)


def _assert_valid_grid(sigmas, num_steps):
    sigmas = np.asarray(sigmas)
    assert sigmas.shape == (num_steps + 1,)
    assert sigmas[-1] == 0.0
    assert np.all(np.diff(sigmas) < 0)
    np.testing.assert_allclose(sigmas[0], SIGMA_MAX, rtol=1e-12)


@pytest.mark.parametrize("scale", [0.0, 1.0, 30.0])
@pytest.mark.parametrize("sigma_floor", [None, 1e-4])
def test_every_logit_vector_is_a_monotone_grid_ending_in_zero(scale, sigma_floor):
    num_steps = 7
    size = grid_learning.num_logits(num_steps, sigma_floor)
    logits = scale * jax.random.normal(jax.random.key(3), (size,), jnp.float64)
    sigmas = grid_learning.grid_from_logits(logits, SIGMA_MAX, SIGMA_MIN, sigma_floor)
    _assert_valid_grid(sigmas, num_steps)
    if sigma_floor is None:
        np.testing.assert_allclose(sigmas[-2], SIGMA_MIN, rtol=1e-12)
    else:
        assert sigma_floor <= sigmas[-2] <= SIGMA_MAX


@pytest.mark.parametrize("sigma_floor", [None, 1e-3])
def test_logits_from_grid_inverts_grid_from_logits(sigma_floor):
    karras = samplers.karras_sigmas(6, SIGMA_MIN, SIGMA_MAX, 7.0)
    logits = grid_learning.logits_from_grid(karras, sigma_floor)
    back = grid_learning.grid_from_logits(jnp.asarray(logits), SIGMA_MAX, SIGMA_MIN, sigma_floor)
    np.testing.assert_allclose(back, karras, rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    "sampler, num_steps, radius", [("euler", 4, 0.0), ("dpmpp_2m", 7, 0.05), ("unipc", 10, 0.0)])
def test_learned_grid_lowers_held_out_endpoint_error(problem, sampler, num_steps, radius):
    denoiser, train, train_targets, test, test_targets = problem
    result = grid_learning.learn_grid(
        denoiser, sampler, num_steps, noises=train, targets=train_targets, sigma_max=SIGMA_MAX,
        sigma_min=SIGMA_MIN, sigma_floor=1e-4, num_iterations=25, learning_rate=0.1,
        radius=radius)
    _assert_valid_grid(result.sigmas, num_steps)
    karras = samplers.karras_sigmas(num_steps, SIGMA_MIN, SIGMA_MAX, 7.0)
    before = grid_learning.endpoint_rms(denoiser, sampler, karras, test, test_targets)
    after = grid_learning.endpoint_rms(denoiser, sampler, result.sigmas, test, test_targets)
    assert after < 0.75 * before, (before, after)
    assert result.rms_after < result.rms_before
    np.testing.assert_allclose(result.rms_before, grid_learning.endpoint_rms(
        denoiser, sampler, karras, train, train_targets), rtol=1e-9)


def test_scan_options_change_no_learned_grid(problem):
    denoiser, train, train_targets, _, _ = problem

    def learn(options):
        return grid_learning.learn_grid(
            denoiser, "dpmpp_2m", 4, noises=train, targets=train_targets, sigma_max=SIGMA_MAX,
            sigma_min=SIGMA_MIN, num_iterations=4, options=options).sigmas

    plain = learn(None)
    for options in ({"unroll": True}, {"unroll": 2, "checkpoint": True}):
        np.testing.assert_allclose(learn(options), plain, rtol=1e-10)


def test_default_teacher_is_the_adaptive_solve(problem):
    denoiser, train, train_targets, _, _ = problem
    teacher = grid_learning.adaptive_teacher(rtol=1e-10, atol=1e-10)
    given = grid_learning.learn_grid(denoiser, "euler", 3, noises=train, targets=train_targets,
                                     sigma_max=SIGMA_MAX, sigma_min=SIGMA_MIN, num_iterations=3)
    solved = grid_learning.learn_grid(denoiser, "euler", 3, noises=train, teacher=teacher,
                                      sigma_max=SIGMA_MAX, sigma_min=SIGMA_MIN, num_iterations=3)
    np.testing.assert_allclose(solved.sigmas, given.sigmas, rtol=1e-7)
    assert solved.num_teacher_solves == 32 and given.num_teacher_solves == 0
    assert solved.settings["teacher_nfe"] > 0


def test_sampler_on_a_learned_grid_jits_vmaps_and_differentiates(problem):
    denoiser, train, train_targets, _, _ = problem
    logits = jnp.asarray(grid_learning.logits_from_grid(
        samplers.karras_sigmas(5, SIGMA_MIN, SIGMA_MAX, 7.0), 1e-4)) + 0.1 * jnp.arange(5.0)

    def loss(logits, noise):
        sigmas = grid_learning.grid_from_logits(logits, SIGMA_MAX, SIGMA_MIN, 1e-4)
        return jnp.mean((samplers.dpmpp_2m(denoiser, noise, sigmas) - train_targets[:4]) ** 2)

    noise = train[:4]
    jitted = jax.jit(loss)
    np.testing.assert_allclose(jitted(logits, noise), loss(logits, noise), rtol=1e-12)
    per_seed = jax.vmap(loss, in_axes=(None, 0))(logits, jnp.stack([noise, noise[::-1]]))
    np.testing.assert_allclose(per_seed, [jitted(logits, noise), jitted(logits, noise[::-1])],
                               rtol=1e-12)
    gradient = jax.jit(jax.grad(loss))(logits, noise)
    assert np.all(np.isfinite(gradient)) and np.any(np.abs(gradient) > 1e-6)
    for i in range(logits.shape[0]):
        step = 1e-5 * jnp.eye(logits.shape[0])[i]
        finite = (jitted(logits + step, noise) - jitted(logits - step, noise)) / 2e-5
        np.testing.assert_allclose(gradient[i], finite, rtol=1e-5, atol=1e-9)


def test_shortest_path_equals_brute_force():
    rng = np.random.default_rng(0)
    size, num_steps = 8, 4
    cost, final = rng.uniform(0, 1, (size, size)), rng.uniform(0, 1, size)
    for free_end in (True, False):
        path = grid_learning._shortest_path(cost, final, num_steps, free_end)
        candidates = [
            (0, *rest) for rest in itertools.combinations(range(1, size), num_steps - 1)
            if free_end or rest[-1] == size - 1
        ]
        totals = [sum(cost[a, b] for a, b in itertools.pairwise(p)) + (
            final[p[-1]] if free_end else 0.0) for p in candidates]
        assert tuple(path) == candidates[int(np.argmin(totals))]


def test_gits_grid_lowers_held_out_euler_error(problem):
    denoiser, train, _, test, test_targets = problem
    result = grid_learning.gits_grid(denoiser, 4, noises=train, sigma_max=SIGMA_MAX,
                                     sigma_min=SIGMA_MIN, num_levels=48)
    _assert_valid_grid(result.sigmas, 4)
    karras = samplers.karras_sigmas(4, SIGMA_MIN, SIGMA_MAX, 7.0)
    before = grid_learning.endpoint_rms(denoiser, "euler", karras, test, test_targets)
    after = grid_learning.endpoint_rms(denoiser, "euler", result.sigmas, test, test_targets)
    assert after < 0.75 * before, (before, after)
    assert result.rms_after < result.rms_before


def test_projection_keeps_the_start_in_the_ball():
    noise = jax.random.normal(jax.random.key(0), (5, 3), jnp.float64)
    delta = 10.0 * jax.random.normal(jax.random.key(1), (5, 3), jnp.float64)
    projected = grid_learning._project_to_ball(delta, noise, 0.1)
    ratio = jnp.linalg.norm(projected, axis=1) / jnp.linalg.norm(noise, axis=1)
    np.testing.assert_allclose(ratio, 0.1, rtol=1e-12)
    small = 1e-3 * delta
    np.testing.assert_allclose(grid_learning._project_to_ball(small, noise, 0.1), small)


def test_bad_input_is_a_one_line_error(problem):
    denoiser, train, train_targets, _, _ = problem
    with pytest.raises(ValueError, match="has 5 steps but the sampler is asked for 10"):
        grid_learning.check_grid_length(np.zeros(6), 10)
    with pytest.raises(ValueError, match="draws noise"):
        grid_learning.learn_grid(denoiser, "ancestral", 4, noises=train, targets=train_targets)
    with pytest.raises(ValueError, match="radius"):
        grid_learning.learn_grid(denoiser, "euler", 4, noises=train, targets=train_targets,
                                 radius=2.0)
    with pytest.raises(ValueError, match="targets must have"):
        grid_learning.learn_grid(denoiser, "euler", 4, noises=train, targets=train_targets[:3])
    with pytest.raises(ValueError, match="init_sigmas has 3 steps"):
        grid_learning.learn_grid(denoiser, "euler", 4, noises=train, targets=train_targets,
                                 init_sigmas=samplers.karras_sigmas(3))
    with pytest.raises(ValueError, match="unknown sampler"):
        grid_learning.gits_grid(denoiser, 4, noises=train, sampler="nope")


# -- stored with a run: recipes.grid_learning, learn_grid.py, sample.py --grid learned ----------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny two-moons run trained for a few steps (the grid is learned for whatever it is)."""
    from configs import tiny
    from diffusion_jax import recipes

    workdir = tmp_path_factory.mktemp("grid_run")
    config = tiny.get_config()
    config.train.num_steps = 20
    config.train.checkpoint_every = 20
    config.train.num_grid_samples = 8
    recipes.train(config, str(workdir))
    return str(workdir)


def _cli(*args):
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "PYTHONPATH")}
    return subprocess.run([sys.executable, *args, "--compilation_cache_dir="], cwd=root,
                          env=dict(env, JAX_PLATFORMS="cpu"), capture_output=True, text=True,
                          timeout=400)


def test_run_grid_is_stored_and_used_by_grid_learned(tiny_run):
    import json

    from diffusion_jax import recipes
    from diffusion_jax.recipes import grid_learning as run_grids

    with jax.enable_x64(False):
        path, record = run_grids.learn_run_grid(
            tiny_run, sampler="dpmpp_2m", num_steps=4, num_noises=8, num_eval_noises=8,
            num_iterations=5, learning_rate=0.1, teacher="heun:8")
        assert path == run_grids.grid_path(tiny_run, "dpmpp_2m", 4)
        stored = json.load(open(path))
        for field in ("sigmas", "method", "teacher", "train_rms", "held_out_rms",
                      "num_teacher_solves", "wall_time_s", "settings"):
            assert field in stored
        assert stored["train_rms"]["learned"] < stored["train_rms"]["karras"]
        run = recipes.load(tiny_run)
        sigmas = recipes.build_grid(run.config, "learned", 4, workdir=tiny_run, sampler="dpmpp_2m")
        np.testing.assert_allclose(sigmas, stored["sigmas"], rtol=1e-6)
        _assert_valid_grid_at(sigmas, 4, run.config.sample.sigma_max)
        samples, _ = recipes.generate(run.denoiser, run.config, num_samples=4, seed=0,
                                      sampler="dpmpp_2m", grid="learned", num_steps=4,
                                      workdir=tiny_run)
        direct = samplers.dpmpp_2m(run.denoiser, recipes.sample_noise(jax.random.split(
            jax.random.key(0))[0], 0, 4, (2,)), sigmas)
        np.testing.assert_allclose(samples, direct, rtol=1e-5, atol=1e-5)
        with pytest.raises(ValueError, match="has 4 steps but the sampler is asked for 6"):
            with open(run_grids.grid_path(tiny_run, "dpmpp_2m", 6), "w") as f:
                json.dump(dict(stored, num_steps=6), f)
            recipes.build_grid(run.config, "learned", 6, workdir=tiny_run, sampler="dpmpp_2m")


def _assert_valid_grid_at(sigmas, num_steps, sigma_max):
    sigmas = np.asarray(sigmas)
    assert sigmas.shape == (num_steps + 1,) and sigmas[-1] == 0.0
    assert np.all(np.diff(sigmas) < 0)
    np.testing.assert_allclose(sigmas[0], sigma_max, rtol=1e-6)


def test_learn_grid_cli_then_sample_cli(tiny_run):
    learned = _cli("learn_grid.py", "--workdir", tiny_run, "--sampler", "euler", "--num_steps",
                   "3", "--method", "gits", "--num_noises", "8", "--num_eval_noises", "8",
                   "--num_levels", "16")
    assert learned.returncode == 0, learned.stderr[-3000:]
    assert "held-out RMS endpoint error" in learned.stdout
    missing = _cli("sample.py", "--workdir", tiny_run, "--sampler", "euler", "--num_steps", "5",
                   "--grid", "learned", "--num_samples", "4")
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    errors = [line for line in missing.stderr.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 1 and "euler_3.json" in errors[0], missing.stderr[-2000:]
