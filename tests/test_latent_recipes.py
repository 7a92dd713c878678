"""The latent family's recipes end to end at toy sizes: autoencoder run -> LDM run (latent cache,
scale factor in the spec) -> sample.py (decoded PNG grid) -> load(); latents pass through the
data path untouched; the cache resumes deterministically; bad input gets one-line errors."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import data, recipes
from diffusion_jax.latent.codec import Codec
from diffusion_jax.recipes import datasets, latent_cache, sampling
from diffusion_jax.recipes import latent as recipe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"latent.base_channels": 8, "latent.channel_multipliers": (1, 2),
        "latent.latent_channels": 2, "train.num_steps": 4, "train.batch_size": 16,
        "train.checkpoint_every": 4, "train.log_every": 2, "train.sample_every": 0,
        "train.num_grid_samples": 4, "train.ema_half_lives": (100.0,)}
TINY_PRIOR = {"model.base_channels": 8, "model.channel_multipliers": (1,),
              "model.embedding_dim": 16, "sample.num_steps": 2, "sample.batch_size": 8}


def _config(name, **overrides):
    return recipes.load_config(os.path.join(ROOT, "configs", f"{name}.py"), overrides)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("latent")
    autoencoder = str(root / "autoencoder")
    recipes.train(_config("digits32_autoencoder", **TINY), autoencoder)
    ldm = str(root / "ldm")
    config = _config("digits32_ldm", **TINY, **TINY_PRIOR,
                     **{"latent.autoencoder_workdir": autoencoder})
    recipes.train(config, ldm)
    return autoencoder, ldm, config


def test_ldm_run_samples_with_sample_py_and_opens_itself(runs, tmp_path):
    autoencoder, ldm, config = runs
    output = str(tmp_path / "samples.npz")
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "sample.py"), f"--workdir={ldm}", "--num_samples=4",
         "--sampler=euler", "--num_steps=3", f"--output={output}"],
        capture_output=True, text=True, cwd=str(tmp_path), timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert os.path.isfile(str(tmp_path / "samples.png"))
    written = np.load(output)["samples"]
    assert written.shape == (4, 32, 32, 1) and written.min() >= -1 and written.max() <= 1

    run = recipes.load(ldm)
    assert isinstance(run.denoiser, recipe.LatentModel)
    codec_entry = run.spec["model"]["codec"]
    assert codec_entry["autoencoder_workdir"] == os.path.abspath(autoencoder)
    # the stored scale is 1 / std of the cached (unscaled) training-split latents
    directory = recipe._cache_dir(config, os.path.abspath(autoencoder), codec_entry["step"])
    cached = latent_cache.load_latent_cache(directory)["latent"]
    np.testing.assert_allclose(codec_entry["scale"], 1.0 / cached.std(), rtol=1e-5)
    # sample.py decoded exactly the latent samples of the same seed, divided by the scale
    labels = np.arange(4) % 10
    latents, _ = sampling.generate(run.denoiser.denoiser, recipe.latent_config(run.config),
                                   num_samples=4, seed=run.config.sample.seed, sampler="euler",
                                   num_steps=3, labels=labels)
    assert latents.shape == (4, 16, 16, 2)
    decoded = run.denoiser.codec.autoencoder.decode(jnp.asarray(latents) / codec_entry["scale"])
    np.testing.assert_allclose(written, np.clip(np.asarray(decoded), -1, 1), atol=1e-4)


def test_latents_pass_through_the_batch_pipeline_untouched(runs):
    autoencoder, _, config = runs
    arrays = recipe.load_arrays(config)
    workdir, step, _ = recipe._check_autoencoder_run(config)
    cached = latent_cache.load_latent_cache(recipe._cache_dir(config, workdir, step))
    scale = np.float32(1.0 / cached["latent"].std())
    np.testing.assert_allclose(arrays["latent"], cached["latent"] * scale, rtol=1e-5)
    batch = next(data.make_batch_iterator(arrays, global_batch_size=8, seed=0))
    assert batch["latent"].dtype == np.float32
    key = jax.random.key(0)
    prior = recipe.latent_config(config)
    x = datasets.preprocess(jax.tree.map(jnp.asarray, batch), key, image=True,
                            random_flip=prior.data.random_flip)
    np.testing.assert_array_equal(np.asarray(x), batch["latent"])  # bit for bit: no dequantising
    flipped = np.asarray(datasets.preprocess(jax.tree.map(jnp.asarray, batch), key, image=True,
                                             random_flip=True))
    same = np.all(flipped == batch["latent"], axis=(1, 2, 3))
    mirrored = np.all(flipped == batch["latent"][:, :, ::-1], axis=(1, 2, 3))
    assert np.all(same | mirrored) and mirrored.any()  # flips only when asked


def test_latent_cache_resumes_and_is_deterministic(runs, tmp_path):
    _, _, config = runs
    images = data.load_digits32("test")[0][:50]

    def encode(batch):  # a stand-in encoder: 2 x 2 block means
        return data.box_downsample(batch.astype(np.float32), 2)

    identity = {"autoencoder": "toy", "step": 1}
    directory = str(tmp_path / "cache")
    latent_cache.write_latent_cache(encode, images, None, directory, shard_size=20,
                                    batch_size=8, identity=identity)
    first = latent_cache.load_latent_cache(directory)["latent"]
    np.testing.assert_allclose(first, encode(images))
    os.remove(os.path.join(directory, "shard_00001.npz"))
    assert not latent_cache.cache_is_complete(directory)
    stamp = os.path.getmtime(os.path.join(directory, "shard_00000.npz"))
    latent_cache.write_latent_cache(encode, images, None, directory, shard_size=20,
                                    batch_size=8, identity=identity)
    assert os.path.getmtime(os.path.join(directory, "shard_00000.npz")) == stamp
    np.testing.assert_array_equal(latent_cache.load_latent_cache(directory)["latent"], first)
    with pytest.raises(ValueError, match="other settings"):
        latent_cache.write_latent_cache(encode, images, None, directory, shard_size=20,
                                        batch_size=8, identity={**identity, "step": 2})


def test_autoencoder_run_reconstructs_and_reports(runs):
    autoencoder, _, _ = runs
    run = recipes.load(autoencoder)
    report = recipe.evaluate(run.denoiser, run.config, num_examples=32, seed=0, batch_size=16)
    assert 0 < report["reconstruction_mse"] < 4 and np.isfinite(report["rfid"])
    np.testing.assert_allclose(report["scale"], 1 / report["latent_std"])
    reconstructions, _ = recipe.generate(run.denoiser, run.config, num_samples=4, seed=0)
    assert reconstructions.shape == (4, 32, 32, 1)


@pytest.mark.parametrize("name", ["digits32_autoencoder", "cifar10_autoencoder",
                                  "celeba64_autoencoder"])
def test_autoencoder_configs_give_a_json_spec(name):
    config = _config(name)
    recipe.validate(config)
    spec = recipes.model_spec(config)
    assert json.loads(json.dumps(spec)) == spec and spec["model"]["stage"] == "autoencoder"
    assert spec["model"]["latent_shape"] == list(recipe.latent_shape(config))


@pytest.mark.parametrize("name", ["digits32_ldm", "cifar10_ldm", "celeba64_ldm"])
def test_ldm_configs_need_their_autoencoder_run(name, tmp_path):
    with pytest.raises(ValueError, match="not a training run"):
        recipe.validate(_config(name, **{"latent.autoencoder_workdir": str(tmp_path / "none")}))


def test_bad_input_gets_one_line_errors(runs):
    autoencoder, ldm, config = runs
    mismatched = _config("digits32_ldm", **{**TINY, **TINY_PRIOR,
                                            "latent.autoencoder_workdir": autoencoder,
                                            "latent.latent_channels": 3})
    with pytest.raises(ValueError, match=r"to latents \(16, 16, 2\).*expects .*\(16, 16, 3\)"):
        recipe.validate(mismatched)
    with pytest.raises(ValueError, match="not an autoencoder run"):
        recipe.validate(_config("digits32_ldm", **TINY, **TINY_PRIOR,
                                **{"latent.autoencoder_workdir": ldm}))
    with pytest.raises(ValueError, match="needs latent.autoencoder_workdir"):
        recipe.validate(_config("digits32_ldm", **{"latent.autoencoder_workdir": ""}))
    with pytest.raises(ValueError, match="not divisible"):
        recipe.latent_shape(_config("digits32_autoencoder", **{"data.shape": (30, 30, 1)}))
    run = recipes.load(ldm)
    with pytest.raises(ValueError, match="divisible"):  # images of the wrong size for the encoder
        run.denoiser.codec.encode(jnp.zeros((1, 31, 31, 1)))
    with pytest.raises(ValueError, match="no scale"):
        Codec(run.denoiser.codec.autoencoder).decode(jnp.zeros((1, 16, 16, 2)))
    spec = json.loads(json.dumps(run.spec))
    spec["model"]["codec"]["scale"] = None
    with pytest.raises(ValueError, match="no codec scale"):
        recipe.model_from_spec(spec, None)
    with pytest.raises(FileNotFoundError, match="is missing"):
        recipe.load_autoencoder("/nonexistent/autoencoder", 4, "first")


@pytest.mark.parametrize("overrides", [
    {"process.name": "rectified_flow", "model.preconditioning": "process",
     "model.parameterisation": "velocity", "model.time_scale": 1000.0,
     "loss.name": "flow_matching", "loss.t_distribution": "logit_normal", "loss.p_mean": 0.0,
     "loss.p_std": 1.0, "sample.sampler": "euler", "sample.grid": "time_uniform"},
    {"process.name": "vp", "model.preconditioning": "vp", "loss.weighting": "epsilon",
     "loss.t_distribution": "uniform", "sample.sampler": "euler", "sample.grid": "time_uniform"},
])
def test_other_gaussian_processes_train_and_sample_in_latent_space(runs, overrides):
    autoencoder, _, _ = runs
    config = _config("digits32_ldm", **{**TINY, **TINY_PRIOR, **overrides,
                                        "latent.autoencoder_workdir": autoencoder})
    model = _one_step(config)
    samples, labels = recipe.generate(model, config, num_samples=2, seed=0)
    assert samples.shape == (2, 32, 32, 1) and list(labels) == [0, 1]


def _one_step(config):
    from diffusion_jax import training
    from diffusion_jax.recipes.builders import build_model

    recipe.validate(config)
    network, wrap = build_model(config)
    arrays = recipe.load_arrays(config)
    batch = {k: jnp.asarray(v[:8]) for k, v in arrays.items()}
    optimizer, _ = training.make_optimizer(learning_rate=1e-3)
    state, parts = training.create_train_state(network, optimizer, key=jax.random.key(0))
    step = jax.jit(training.make_train_step(parts, recipe.make_loss_fn(config, wrap), optimizer))
    state, metrics = step(state, batch)
    assert np.isfinite(float(metrics["loss"]))
    return wrap(training.merge_network(parts, state.params))


def test_lsgm_stage_trains_samples_and_reports_its_elbo_in_bits_per_dim():
    config = _config("digits32_lsgm", **{**TINY, "latent.prior_base_channels": 8,
                                         "latent.prior_channel_multipliers": (1,),
                                         "model.embedding_dim": 16, "sample.num_steps": 2})
    spec = recipes.model_spec(config)
    assert json.loads(json.dumps(spec)) == spec and spec["network"]["name"] == "lsgm"
    model = _one_step(config)
    assert isinstance(model, recipe.LatentModel) and float(model.codec.scale) == 1.0
    samples, labels = recipe.generate(model, config, num_samples=2, seed=0)
    assert samples.shape == (2, 32, 32, 1) and labels is None
    images = data.load_digits32("test")[0][:4]
    report = recipe._lsgm_elbo(model.codec.autoencoder, config, images, seed=0, batch_size=4)
    # bits/dim is the negative ELBO per dimension in bits, plus 7 for 8-bit data in [-1, 1]
    np.testing.assert_allclose(report["bits_per_dim"],
                               report["negative_elbo_nats"] / (1024 * np.log(2)) + 7, rtol=1e-5)
    np.testing.assert_allclose(report["kl_nats"],
                               report["cross_entropy_nats"] - report["entropy_nats"], rtol=1e-4)
    with pytest.raises(ValueError, match="variance-preserving"):
        recipe.validate(_config("digits32_lsgm", **{"process.name": "edm"}))
    with pytest.raises(ValueError, match="unconditional"):
        recipe.validate(_config("digits32_lsgm", **{"train.class_conditional": True}))


def test_vq_autoencoder_stage_trains():
    config = _config("digits32_autoencoder", **{**TINY, "latent.kind": "vq",
                                                "latent.codebook_size": 16,
                                                "latent.reconstruction": "l2"})
    assert recipes.model_spec(config)["network"]["name"] == "vq_autoencoder"
    model = _one_step(config)
    reconstructions, _ = recipe.generate(model, config, num_samples=3, seed=0)
    assert reconstructions.shape == (3, 32, 32, 1)
