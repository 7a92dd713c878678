"""The recipes layer in-process: model specs, the one name table, config checks, sampling
helpers, metric writers."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import checkpoints, denoisers, recipes, training
from diffusion_jax.recipes import config_check, sampling, writers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(name, **overrides):
    return recipes.load_config(os.path.join(ROOT, "configs", f"{name}.py"), overrides)


@pytest.mark.parametrize("name", ["tiny", "digits_edm", "cifar10_ddpmpp_vp", "celeba64_vp",
                                  "mnist_flow", "toy2d_flow"])
def test_spec_is_json_and_rebuilds_the_same_denoiser(name):
    config = _config(name)
    spec = json.loads(json.dumps(recipes.model_spec(config)))  # survives JSON
    network, wrap = recipes.build_model(config)
    rebuilt = recipes.model_from_spec(spec, recipes.network_from_spec(spec, seed=0))
    original = wrap(network)
    assert type(rebuilt) is type(original)
    shape = tuple(config.data.shape)
    if np.prod(shape) > 64:  # large U-Nets: the structure is enough, skip the forward pass
        return
    x = jax.random.normal(jax.random.key(0), (2, *shape))
    cond = jnp.array([1, 2]) if config.train.class_conditional else None
    np.testing.assert_array_equal(original(x, 0.7, cond), rebuilt(x, 0.7, cond))


def test_spec_names_what_rebuilds_the_model():
    spec = recipes.model_spec(_config("cifar10_ddpmpp_vp"))
    assert spec["network"]["name"] == "unet"
    assert spec["network"]["kwargs"]["base_channels"] == 128
    assert spec["family"] == "gaussian"
    assert spec["model"]["process"] == {"name": "vp",
                                        "kwargs": {"beta_min": 0.1, "beta_max": 20.0}}
    assert spec["model"]["denoiser"] == {"kind": "process", "parameterisation": "epsilon",
                                         "time_scale": 999.0}
    assert spec["data"]["shape"] == [32, 32, 3] and spec["data"]["value_range"] == [-1.0, 1.0]
    digits = recipes.model_spec(_config("digits_edm"))
    assert digits["data"]["num_classes"] == 10  # the default job is class-conditional
    assert digits["model"]["denoiser"]["preconditioning"] == {"name": "edm",
                                                              "kwargs": {"sigma_data": 0.5}}
    assert isinstance(recipes.model_from_spec(digits, None), denoisers.PreconditionedDenoiser)


def test_spec_errors_are_one_line():
    with pytest.raises(ValueError, match="not a model spec"):
        recipes.check_spec({"format": "something else"})
    with pytest.raises(ValueError, match="unknown model family 'nope'"):
        recipes.model_spec(_config("tiny", **{"model.family": "nope"}))
    config = _config("tiny")
    config.model.network = "transformer"
    with pytest.raises(ValueError, match="unknown network 'transformer'"):
        recipes.model_spec(config)
    config = _config("tiny")
    config.process.name = "nope"
    with pytest.raises(ValueError, match="unknown process"):
        recipes.build_process(config)


def _save_tiny_run(workdir, config, *, spec=True):
    network, wrap = recipes.build_model(config)
    optimizer, _ = training.make_optimizer(learning_rate=1e-3)
    emas = recipes.ema_schedules(config)
    state, _ = training.create_train_state(network, optimizer, key=jax.random.key(0),
                                           ema_names=tuple(emas))
    manager = checkpoints.make_manager(workdir)
    kwargs = {"spec": recipes.model_spec(config)} if spec else {}
    checkpoints.save(manager, state, config.to_dict(), **kwargs)
    manager.wait_until_finished()
    manager.close()
    return wrap(network)


@pytest.mark.parametrize("with_spec", [True, False])
def test_load_rebuilds_runs_with_and_without_a_stored_spec(tmp_path, with_spec):
    """Checkpoints written before specs existed (config only) still load."""
    config = _config("tiny")
    expected = _save_tiny_run(tmp_path, config, spec=with_spec)
    run = recipes.load(tmp_path)
    assert run.step == 0 and run.spec == recipes.model_spec(config)
    x = jax.random.normal(jax.random.key(1), (4, 2))
    np.testing.assert_array_equal(run.denoiser(x, 2.0), expected(x, 2.0))
    raw = recipes.load(tmp_path, ema="raw")
    assert raw.ema is None


def test_load_refuses_a_directory_that_is_not_a_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        recipes.load(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no checkpoints"):
        recipes.load(tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_validate_config_catches_bad_settings_before_a_run():
    for field, value, message in [
        ("train.max_to_keep", 0, "max_to_keep"),
        ("train.num_steps", 0, "num_steps"),
        ("sample.sampler", "nope", "unknown sampler"),
        ("sample.grid", "nope", "unknown grid"),
        ("loss.weighting", "nope", "unknown weighting"),
        ("train.compute_dtype", "float8", "unknown compute_dtype"),
    ]:
        config = _config("tiny", **{field: value})
        with pytest.raises(ValueError, match=message):
            recipes.validate_config(config)
    config = _config("tiny", **{"train.log_every": 3, "train.steps_per_call": 2})
    with pytest.raises(ValueError, match="multiple of steps_per_call"):
        recipes.validate_config(config)


def test_fields_added_since_a_run_started_are_not_changes():
    stored = _config("tiny").to_dict()
    del stored["model"]["family"], stored["train"]["eval_every"]
    assert config_check.config_changes(stored, _config("tiny").to_dict()) == ([], [])


def test_config_changes_split_model_from_harmless_fields(tmp_path):
    stored = _config("tiny").to_dict()
    current = _config("tiny", **{"model.embedding": "positional", "train.num_steps": 900,
                                 "sample.num_steps": 3}).to_dict()
    blocking, allowed = config_check.config_changes(stored, current)
    assert [c[0] for c in blocking] == ["model.embedding"]
    assert sorted(c[0] for c in allowed) == ["sample.num_steps", "train.num_steps"]
    with pytest.raises(ValueError, match="model.embedding: 'fourier' -> 'positional'"):
        recipes.check_resume_config(tmp_path, stored, current)
    assert not (tmp_path / "config_changes.jsonl").exists()
    recipes.check_resume_config(tmp_path, stored, current, allow_change=True)
    record = json.loads((tmp_path / "config_changes.jsonl").read_text())
    assert record["forced"] is True
    with pytest.raises(ValueError, match="not a dict"):
        recipes.check_resume_config(tmp_path, ["not", "a", "dict"], current)


def test_missing_dataset_says_how_to_prepare_it(tmp_path):
    config = _config("mnist_edm")
    with pytest.raises(ValueError, match="data_dir"):
        recipes.load_arrays(config)
    config.data.data_dir = str(tmp_path / "no_tfds_here")
    with pytest.raises(FileNotFoundError, match="mnist"):
        recipes.load_arrays(config)


def test_sample_noise_does_not_depend_on_batching():
    key = jax.random.key(3)
    whole = recipes.sample_noise(key, 0, 6, (2,))
    parts = jnp.concatenate([recipes.sample_noise(key, 0, 4, (2,)),
                             recipes.sample_noise(key, 4, 2, (2,))])
    np.testing.assert_array_equal(whole, parts)


def test_generate_does_not_depend_on_batch_size_and_labels_are_checked():
    config = _config("digits_edm", **{"model.base_channels": 8})
    network, wrap = recipes.build_model(config)
    denoiser = wrap(network)
    whole, labels = recipes.generate(denoiser, config, num_samples=5, seed=1, num_steps=2)
    parts, _ = recipes.generate(denoiser, config, num_samples=5, seed=1, num_steps=2,
                                batch_size=2)
    np.testing.assert_allclose(whole, parts, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(labels, [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(sampling.resolve_labels(config, 3, 7), [7, 7, 7])
    with pytest.raises(ValueError, match=r"\[0, 9\]"):
        sampling.resolve_labels(config, 2, [3, 10])
    with pytest.raises(ValueError, match="positive integer"):
        recipes.generate(denoiser, config, num_samples=0, seed=0)
    with pytest.raises(ValueError, match="not class-conditional"):
        sampling.resolve_labels(_config("tiny"), 2, 1)
    with pytest.raises(ValueError, match="class-conditional"):
        sampling.make_sample_fn("heun", guidance_scale=2.0, null_class=None)


def test_guided_generation_follows_the_guidance_formula():
    """generate with guidance_scale w equals the sampler on D_null + w (D_c - D_null)."""
    from diffusion_jax import guidance, samplers

    config = _config("digits_edm", **{"model.base_channels": 8})
    network, wrap = recipes.build_model(config)
    denoiser = wrap(network)
    x, labels = recipes.generate(denoiser, config, num_samples=3, seed=0, num_steps=2,
                                 guidance_scale=2.5, labels=4)
    noise_key, _ = jax.random.split(jax.random.key(0))
    noise = recipes.sample_noise(noise_key, 0, 3, (8, 8, 1))
    guided = guidance.classifier_free(denoiser, 2.5, null_cond=jnp.full((3,), 10))
    expected = jax.jit(samplers.heun)(guided, noise, recipes.build_grid(config, "karras", 2),
                                      cond=jnp.full((3,), 4))
    np.testing.assert_allclose(x, expected, rtol=1e-5, atol=1e-5)


def test_metric_writer_events_are_readable_by_tensorboard(tmp_path):
    tf = pytest.importorskip("tensorflow")
    writer = writers.MetricWriter(str(tmp_path))
    writer.rows([{"step": 7, "loss": 0.25, "grad_norm": 1.5}])
    writer.image(7, "samples", np.full((4, 5, 1), 200, np.uint8))
    writer.close()
    assert writer.last_row() == {"step": 7, "loss": 0.25, "grad_norm": 1.5}
    (name,) = [f for f in os.listdir(tmp_path) if f.startswith("events.out.tfevents")]
    scalars, images = {}, []
    for event in tf.compat.v1.train.summary_iterator(str(tmp_path / name)):
        for value in event.summary.value:
            if value.HasField("image"):
                images.append((event.step, value.tag, value.image.height, value.image.width))
            elif value.HasField("simple_value"):
                scalars[value.tag] = (event.step, value.simple_value)
    assert scalars == {"loss": (7, 0.25), "grad_norm": (7, 1.5)}
    assert images == [(7, "samples", 4, 5)]


def test_load_config_applies_overrides_and_rejects_unknown_fields():
    config = _config("tiny", **{"train.num_steps": 7})
    assert config.train.num_steps == 7 and config.data.name == "two_moons"
    with pytest.raises(ValueError, match="unknown config field"):
        _config("tiny", **{"train.nope": 1})
    with pytest.raises(ValueError, match="does not exist"):
        recipes.load_config("/no/such/config.py")
    with pytest.raises(ValueError, match=r"did you mean train\.num_steps\?"):
        _config("tiny", **{"train.num_stepz": 1})
    parsed = _config("tiny", **recipes.defaults.parse_overrides([
        "--config.train.num_steps=12", "--config.model.channel_multipliers=(1, 2, 2)",
        "--config.optim.learning_rate=1", "--config.process.name=vp",
        "--config.data.random_flip=true"]))
    assert parsed.train.num_steps == 12 and parsed.model.channel_multipliers == (1, 2, 2)
    assert parsed.optim.learning_rate == 1.0 and isinstance(parsed.optim.learning_rate, float)
    assert parsed.process.name == "vp" and parsed.data.random_flip is True
    with pytest.raises(ValueError, match="cannot parse 'ten'"):
        _config("tiny", **{"train.num_steps": "ten"})
    with pytest.raises(ValueError, match="bad value"):
        _config("tiny", **{"train.num_steps": "2.5"})
