"""The discrete family's recipe functions (FAMILY protocol), at toy sizes."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import training
from diffusion_jax.recipes import discrete as recipe
from diffusion_jax.recipes.builders import training_rngs
from diffusion_jax.recipes.defaults import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(name, **overrides):
    config = load_config(os.path.join(ROOT, "configs", f"{name}.py"))
    config.model.hidden_dim = 32
    config.model.num_layers = 1
    config.discrete.num_heads = 2
    config.model.embedding_dim = 16
    config.discrete.sample_steps = 8
    config.discrete.num_timesteps = 10
    for key, value in overrides.items():
        group, field = key.split(".")
        config[group][field] = value
    return config


def _build(config):
    name, kwargs = recipe.network_kwargs(config)
    json.dumps(kwargs)
    spec = {"model": recipe.model_entry(config)}
    json.dumps(spec)
    network = recipe.NETWORKS[name](rngs=training_rngs(0), **{
        k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()})
    return network, spec, (lambda net: recipe.model_from_spec(spec, net))


@pytest.mark.parametrize("name,overrides", [
    ("digits_masked", {}),
    ("digits_d3pm", {"discrete.d3pm_kind": "uniform"}),
    ("text_masked", {"data.shape": (16,), "discrete.mask_schedule": "cosine"}),
    ("text_dfm", {"data.shape": (16,), "discrete.source": "uniform"}),
])
def test_recipe_round_trip(tmp_path, name, overrides):
    config = _config(name, **overrides)
    recipe.validate(config)
    network, spec, wrap = _build(config)
    arrays = recipe.load_arrays(config)
    assert arrays["tokens"].dtype == np.int32
    assert arrays["tokens"].shape[1:] == tuple(config.data.shape)
    batch = {k: jnp.asarray(v[:8]) for k, v in arrays.items()}
    loss_fn = recipe.make_loss_fn(config, wrap)
    optimizer, _ = training.make_optimizer(learning_rate=1e-3)
    state, parts = training.create_train_state(network, optimizer, key=jax.random.key(0))
    step = jax.jit(training.make_train_step(parts, loss_fn, optimizer))
    state, metrics = step(state, batch)
    assert np.isfinite(float(metrics["loss"])) and float(metrics["loss"]) > 0
    model = wrap(training.merge_network(parts, state.params))
    samples, _ = recipe.generate(model, config, num_samples=3, seed=0)
    assert samples.shape == (3,) + tuple(config.data.shape)
    assert samples.min() >= 0 and samples.max() < spec["model"]["num_classes"]
    recipe.write_samples(samples, config, tmp_path / "samples.npz")
    written = os.listdir(tmp_path)
    assert written == (["samples.png"] if name.startswith("digits") else ["samples.txt"])
    report = recipe.evaluate(model, config, num_examples=16, seed=0, batch_size=8)
    unit = "bits_per_dim" if name.startswith("digits") else "bits_per_char"
    assert report[unit] > 0 and report["std_error"] > 0 and report["num_examples"] == 16


def test_untrained_model_scores_about_log2_K_and_references_are_below():
    """At initialisation (zero head: uniform logits) the masked NELBO is exactly log2 K per
    token in expectation; the unigram/bigram references are well below."""
    config = _config("text_masked", **{"data.shape": (32,)})
    network, spec, wrap = _build(config)
    report = recipe.evaluate(wrap(network), config, num_examples=256, seed=1, batch_size=128)
    log2_k = np.log2(spec["model"]["num_classes"])
    assert abs(report["bits_per_char"] - log2_k) < 4 * report["std_error"] + 1e-3
    assert report["bigram_bits"] < report["unigram_bits"] < log2_k


def test_unet_logits_network_entry_builds():
    config = _config("digits_d3pm", **{"discrete.network": "unet_logits",
                                       "model.base_channels": 8, "discrete.unet_channels": 8})
    network, spec, wrap = _build(config)
    tokens = jnp.zeros((2, 8, 8), jnp.int32)
    assert wrap(network)(tokens, jnp.full((2,), 0.5)).shape == (2, 8, 8, 17)


def test_validation_messages():
    config = _config("digits_masked")
    for field, value, message in [
        ("discrete.process", "sedd", "unknown discrete.process"),
        ("data.name", "mnist", "unknown discrete data"),
        ("discrete.network", "mlp", "unknown discrete.network"),
        ("discrete.sample_dtype", "float16", "sample_dtype"),
        ("discrete.mask_schedule", "sqrt", "masking schedule"),
        ("train.compute_dtype", "bfloat16", "float32"),
        ("data.shape", (8, 8, 1), "data.shape"),
    ]:
        broken = _config("digits_masked", **{field: value})
        with pytest.raises(ValueError, match=message):
            recipe.validate(broken)
    recipe.validate(config)
    with pytest.raises(ValueError, match="does not fit"):
        network, spec, wrap = _build(config)
        recipe.generate(wrap(network), config, num_samples=2, seed=0, sampler="dfm_euler")


def test_masked_runs_sample_with_the_exact_first_hitting_sampler():
    config = _config("digits_masked", **{"model.base_channels": 8, "discrete.unet_channels": 8})
    network, spec, wrap = _build(config)
    tokens, _ = recipe.generate(wrap(network), config, num_samples=3, seed=0,
                                sampler="masked_first_hitting")
    assert tokens.shape == (3, 8, 8) and tokens.min() >= 0 and tokens.max() < 17  # no mask left
