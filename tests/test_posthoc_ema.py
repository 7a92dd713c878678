"""Post-hoc EMA (EDM2, Karras et al. 2024, Sec. 3.1 and App. C): the width <-> exponent map, the
closed-form inner products of power profiles against quadrature, a profile tracked directly
during training reproduced from snapshots of two other widths, the snapshot files, and one-line
errors for profiles the snapshots cannot represent."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import posthoc_ema, training


def test_gamma_and_sigma_rel_are_inverse_and_match_edm2():
    # EDM2 Sec. 3.1: sigma_rel 0.05 and 0.10 are gamma 16.97 and 6.94.
    assert posthoc_ema.gamma_of_sigma_rel(0.05) == pytest.approx(16.97, abs=0.01)
    assert posthoc_ema.gamma_of_sigma_rel(0.10) == pytest.approx(6.94, abs=0.01)
    for sigma_rel in (0.01, 0.08, 0.2, 0.28):
        gamma = posthoc_ema.gamma_of_sigma_rel(sigma_rel)
        assert gamma > 0
        assert posthoc_ema.sigma_rel_of_gamma(gamma) == pytest.approx(sigma_rel, rel=1e-10)


def test_inner_products_match_quadrature():
    steps, gammas = np.array([300.0, 1000.0]), np.array([16.97, 6.94])
    closed = posthoc_ema.profile_inner_products(steps, gammas, steps, gammas)
    for i in range(2):
        for j in range(2):
            # both profiles vanish after the earlier snapshot: integrate up to it
            tau = np.linspace(0.0, min(steps[i], steps[j]), 1_000_001)
            product = np.prod([(g + 1) * tau**g / t ** (g + 1)
                               for t, g in ((steps[i], gammas[i]), (steps[j], gammas[j]))], axis=0)
            assert closed[i, j] == pytest.approx(np.trapezoid(product, tau), rel=1e-6)


def _train_toy(gammas, num_steps=2000, every=100, dim=64):
    """Power EMAs (``training.ema_power`` / ``ema_update``) of a synthetic parameter trajectory
    (drift, oscillation and a random walk), with snapshots every ``every`` steps."""
    rng = np.random.default_rng(0)
    drift, phase = rng.normal(size=dim), rng.uniform(0, 2 * np.pi, size=dim)
    walk = np.cumsum(rng.normal(scale=0.05, size=(num_steps, dim)), axis=0)
    decays = [training.ema_power(g) for g in gammas]
    emas = [jnp.zeros(dim) for _ in gammas]
    snapshots = []
    for step in range(num_steps):
        t = step + 1
        params = jnp.asarray(drift * np.log(t) + np.sin(t / 150.0 + phase) + walk[step],
                             jnp.float32)
        emas = [training.ema_update(e, params, d(jnp.int32(step))) for e, d in zip(emas, decays, strict=True)]
        if t % every == 0:
            snapshots += [posthoc_ema.Snapshot(t, g, {"w": np.asarray(e)})
                          for g, e in zip(gammas, emas, strict=True)]
    return snapshots, [np.asarray(e) for e in emas], params


def test_reconstruction_reproduces_a_directly_tracked_profile():
    tracked = [posthoc_ema.gamma_of_sigma_rel(s) for s in (0.05, 0.10)]
    target_sigma_rel = 0.08
    target = posthoc_ema.gamma_of_sigma_rel(target_sigma_rel)
    snapshots, emas, last = _train_toy(tracked + [target])
    stored = [s for s in snapshots if s.gamma != target]
    direct = emas[2]
    rebuilt, error = posthoc_ema.reconstruct(stored, sigma_rel=target_sigma_rel)
    assert error < 1e-2
    # Within 2 % of how far the EMA lies from the last iterate (the quantity EMA is about), and
    # much nearer the directly tracked EMA than either snapshot width is.
    scale = np.linalg.norm(direct - np.asarray(last))
    assert np.linalg.norm(rebuilt["w"] - direct) < 0.02 * scale
    for other in emas[:2]:
        assert np.linalg.norm(rebuilt["w"] - direct) < 0.1 * np.linalg.norm(other - direct)
    # At an earlier step (only the snapshots up to it are used).
    early, _ = posthoc_ema.reconstruct(stored, sigma_rel=0.05, step=1000)
    exact = [s.params["w"] for s in stored if s.step == 1000 and s.gamma == tracked[0]][0]
    np.testing.assert_allclose(early["w"], exact, rtol=1e-6, atol=1e-6 * np.abs(exact).max())


def test_snapshot_files_round_trip(tmp_path):
    template = {"conv": {"kernel": np.zeros((3, 2)), "bias": np.zeros(2)}, "scale": np.zeros(())}
    trees = [jax.tree.map(lambda x, k=k: x + k, template) for k in (1.0, 2.0)]
    posthoc_ema.save_snapshot(tmp_path, 100, [16.97, 6.94], trees)
    posthoc_ema.save_snapshot(tmp_path, 200, [16.97, 6.94], trees)
    loaded = posthoc_ema.load_snapshots(tmp_path, template, up_to_step=150)
    assert [(s.step, s.gamma) for s in loaded] == [(100, 16.97), (100, 6.94)]
    np.testing.assert_array_equal(loaded[1].params["conv"]["kernel"], np.full((3, 2), 2.0))
    with pytest.raises(ValueError, match="does not match the model: 1 parameters missing"):
        posthoc_ema.load_snapshots(tmp_path, dict(template, extra=np.zeros(1)))
    with pytest.raises(ValueError, match="no post-hoc EMA snapshots in .* at or before step 50"):
        posthoc_ema.load_snapshots(tmp_path, template, up_to_step=50)


@pytest.mark.parametrize(
    "sigma_rel, steps, message",
    [
        (0.4, range(100, 2001, 100), r"sigma_rel must lie in \(0, 0.2887\)"),
        (0.005, range(100, 2001, 100), "cannot represent sigma_rel 0.005 at step 2000"),
        (0.15, [2000], "the 2 snapshots .* cannot represent sigma_rel 0.15"),
    ],
)
def test_unrepresentable_profiles_are_one_line_errors(sigma_rel, steps, message):
    gammas = [posthoc_ema.gamma_of_sigma_rel(s) for s in (0.05, 0.10)]
    snapshots = [posthoc_ema.Snapshot(t, g, {"w": np.zeros(2)}) for t in steps for g in gammas]
    with pytest.raises(ValueError, match=message) as error:
        posthoc_ema.reconstruct(snapshots, sigma_rel=sigma_rel, step=2000)
    assert "\n" not in str(error.value)


def test_parse_sigma_rel():
    assert posthoc_ema.parse_sigma_rel("sigma_rel=0.08") == 0.08
    assert posthoc_ema.parse_sigma_rel("half_life_5000") is None
    with pytest.raises(ValueError, match="expected sigma_rel=<number>"):
        posthoc_ema.parse_sigma_rel("sigma_rel=wide")


def test_training_run_stores_snapshots_and_load_reconstructs_them(tmp_path):
    from diffusion_jax import recipes
    from diffusion_jax.recipes.defaults import load_config

    config = load_config("configs/tiny.py", {
        "train.num_steps": "40", "train.log_every": "20", "train.checkpoint_every": "40",
        "train.sample_every": "0", "train.num_grid_samples": "8", "train.posthoc_ema_every": "10",
    })
    workdir = tmp_path / "run"
    recipes.train(config, workdir)
    files = sorted(os.listdir(workdir / "posthoc_ema"))
    assert files == [f"step_{s:09d}.npz" for s in range(10, 41, 10)]
    x = jax.random.normal(jax.random.key(0), (16, 2))
    # The widest tracked width, reconstructed: the stored power EMA itself (weight 1 on it).
    tracked = recipes.load(workdir, ema="power_sigma_rel_0.1")
    rebuilt = recipes.load(workdir, ema="sigma_rel=0.1")
    assert rebuilt.ema == "sigma_rel=0.1" and rebuilt.step == 40
    np.testing.assert_allclose(rebuilt.denoiser(x, 0.5), tracked.denoiser(x, 0.5), atol=1e-4)
    between = recipes.load(workdir, ema="sigma_rel=0.07").denoiser(x, 0.5)
    assert float(jnp.max(jnp.abs(between - tracked.denoiser(x, 0.5)))) > 1e-4
    with pytest.raises(ValueError, match="cannot represent sigma_rel 0.25"):
        recipes.load(workdir, ema="sigma_rel=0.25")
    with pytest.raises(ValueError, match="posthoc_ema_every = 7 must be 0"):
        recipes.validate_config(load_config("configs/tiny.py", {
            "train.posthoc_ema_every": "7", "train.steps_per_call": "2",
            "train.log_every": "100", "train.checkpoint_every": "200"}))
