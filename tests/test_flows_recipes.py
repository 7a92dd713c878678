"""The flow family's recipe functions, called directly (the CLI dispatch is the lead's): configs
validate, the spec round-trips, the loss trains toward the exact field, sampling is
batch-independent, reflow pair shards resume and are deterministic per index, evaluation reports
W2, and bad settings get one-line errors."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import callables, recipes
from diffusion_jax.flows import gaussian
from diffusion_jax.recipes import flows as recipe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = ("toy2d_fm", "toy2d_otcfm", "toy2d_sbcfm", "toy2d_reflow", "digits_rf1", "digits_rf2")


def _config(name, **overrides):
    return recipes.load_config(os.path.join(ROOT, "configs", f"{name}.py"), overrides)


@pytest.mark.parametrize("name", CONFIGS)
def test_configs_build_a_json_spec_and_validate(name):
    overrides = {"flow.teacher_workdir": "/tmp/teacher"} if "reflow" in name or "rf2" in name else {}
    config = _config(name, **overrides)
    assert config.model.family == "flow"
    recipe.validate(config)
    entry = recipe.model_entry(config)
    assert json.loads(json.dumps(entry)) == entry
    network_name, kwargs = recipe.network_kwargs(config)
    assert json.loads(json.dumps(kwargs)) == kwargs and network_name in ("mlp", "unet")


def _exact_model():
    """The closed-form velocity of N(0, I) -> N(m, s^2) as a 'network' of the flow model."""
    field = gaussian.IndependentGaussianVelocity(jnp.array([1.0, -2.0]), jnp.array([0.5, 0.3]))
    return recipe.FlowModel(lambda x, c_noise, cond=None: field(x, c_noise), 1.0)


def _gaussian_config(**overrides):
    config = _config("toy2d_fm", **{"flow.source": "gaussian", **overrides})
    return config


def test_loss_is_minimised_by_the_exact_field():
    config = _gaussian_config(**{"flow.coupling": "independent"})
    loss_fn = recipe.make_loss_fn(config, lambda net: net)
    key = jax.random.key(0)
    x = 1.0 + 0.5 * jax.random.normal(key, (4096, 2)) * jnp.array([1.0, 0.6])
    x = x.at[:, 1].set(-2.0 + 0.3 * jax.random.normal(jax.random.key(1), (4096,)))
    exact = _exact_model()
    wrong = recipe.FlowModel(lambda x, c, cond=None: 1.2 * exact.network(x, c), 1.0)
    assert float(jnp.mean(loss_fn(exact, {"x": x}, key))) < float(
        jnp.mean(loss_fn(wrong, {"x": x}, key)))


@pytest.mark.parametrize("coupling,extra", [("ot", {}), ("sinkhorn", {"flow.sigma": 0.5,
                                                                       "flow.path": "brownian_bridge"})])
def test_coupled_losses_run_under_jit(coupling, extra):
    config = _config("toy2d_fm", **{"flow.coupling": coupling, **extra})
    loss_fn = callables.filter_jit(recipe.make_loss_fn(config, lambda net: net))
    x = jax.random.normal(jax.random.key(0), (32, 2))
    values = loss_fn(_exact_model(), {"x": x}, jax.random.key(1))
    assert values.shape == (32,) and bool(jnp.all(jnp.isfinite(values)))


def test_generate_lands_on_the_data_and_does_not_depend_on_batching():
    config = _gaussian_config()
    model = _exact_model()
    big, _ = recipe.generate(model, config, num_samples=400, seed=3, sampler="rk4", num_steps=16,
                             batch_size=400)
    small, _ = recipe.generate(model, config, num_samples=400, seed=3, sampler="rk4",
                               num_steps=16, batch_size=150)
    np.testing.assert_allclose(big, small, atol=1e-5)
    np.testing.assert_allclose(big.mean(0), [1.0, -2.0], atol=0.08)
    np.testing.assert_allclose(big.std(0), [0.5, 0.3], atol=0.05)
    adaptive, _ = recipe.generate(model, config, num_samples=8, seed=3, sampler="dopri5")
    np.testing.assert_allclose(adaptive, big[:8], atol=1e-3)


def test_reflow_pairs_are_deterministic_per_index_and_resume(tmp_path):
    config = _gaussian_config()
    model = _exact_model()
    directory = str(tmp_path / "pairs")
    kwargs = dict(num_pairs=50, shard_size=20, seed=1, sampler="rk4", num_steps=8, teacher_id="t")
    recipe.write_reflow_pairs(model, config, directory, **kwargs)
    pairs = recipe.load_reflow_pairs(directory)
    assert pairs["x"].shape == (50, 2) and pairs["source"].shape == (50, 2)
    np.testing.assert_allclose(pairs["x"], jnp.array([1.0, -2.0]) + jnp.array([0.5, 0.3])
                               * pairs["source"], atol=1e-4)
    # remove a shard: the rerun writes only that shard and gets the same pairs
    os.remove(os.path.join(directory, "shard_00001.npz"))
    stamp = os.path.getmtime(os.path.join(directory, "shard_00000.npz"))
    recipe.write_reflow_pairs(model, config, directory, **kwargs)
    assert os.path.getmtime(os.path.join(directory, "shard_00000.npz")) == stamp
    np.testing.assert_array_equal(recipe.load_reflow_pairs(directory)["x"], pairs["x"])
    # other shard sizes give the same pair for the same index
    other = str(tmp_path / "other")
    recipe.write_reflow_pairs(model, config, other, **{**kwargs, "shard_size": 7})
    np.testing.assert_allclose(recipe.load_reflow_pairs(other)["source"], pairs["source"])
    with pytest.raises(ValueError, match="other settings"):
        recipe.write_reflow_pairs(model, config, directory, **{**kwargs, "num_steps": 4})
    # training on pairs reads them through load_arrays
    reflow_config = _config("toy2d_reflow", **{"flow.pairs_dir": directory,
                                               "flow.source": "gaussian"})
    arrays = recipe.load_arrays(reflow_config)
    np.testing.assert_array_equal(arrays["source"], pairs["source"])
    loss = recipe.make_loss_fn(reflow_config, lambda net: net)(
        recipe.FlowModel(lambda x, c, cond=None: 0.0 * x, 1.0),
        {"x": jnp.asarray(arrays["x"][:8]), "source": jnp.asarray(arrays["source"][:8])},
        jax.random.key(0))
    np.testing.assert_allclose(loss, np.mean((arrays["source"][:8] - arrays["x"][:8]) ** 2, -1),
                               rtol=1e-5)


def test_evaluate_reports_w2_for_points():
    config = _gaussian_config(**{"flow.target": "moons_torchcfm"})
    report = recipe.evaluate(_exact_model(), config, num_examples=200, seed=0, batch_size=200)
    for key in ("w2", "w2_one_step", "sliced_w2", "straightness", "endpoint_gap"):
        assert np.isfinite(report[key])
    assert report["w2"] > 1.0  # the Gaussian is far from the moons


def test_bad_settings_get_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown flow.coupling"):
        recipe.validate(_config("toy2d_fm", **{"flow.coupling": "emd"}))
    with pytest.raises(ValueError, match="unknown flow.source"):
        recipe.validate(_config("toy2d_fm", **{"flow.source": "uniform"}))
    with pytest.raises(ValueError, match="needs flow.sigma"):
        recipe.validate(_config("toy2d_fm", **{"flow.path": "brownian_bridge"}))
    with pytest.raises(ValueError, match="epsilon"):
        recipe.validate(_config("toy2d_fm", **{"flow.coupling": "sinkhorn"}))
    with pytest.raises(ValueError, match="teacher_workdir"):
        recipe.validate(_config("toy2d_fm", **{"flow.coupling": "teacher"}))
    with pytest.raises(ValueError, match="unknown flow sampler"):
        recipe.validate(_config("toy2d_fm", **{"sample.sampler": "dpm2"}))
    with pytest.raises(ValueError, match="divide"):
        recipe.validate(_config("toy2d_otcfm", **{"flow.num_blocks": 3}))
    with pytest.raises(ValueError, match="no complete set"):
        recipe.load_reflow_pairs(str(tmp_path))
    with pytest.raises(ValueError, match="guidance"):
        recipe.generate(_exact_model(), _gaussian_config(), num_samples=2, seed=0,
                        guidance_scale=2.0)
