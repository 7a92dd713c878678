"""The noise-conditional classifier of classifier guidance: per-example logits, the guided x0
against finite differences through the preconditioned network, training that learns, a checkpoint
that loads back to the same classifier, and the errors of the guidance recipe."""

import json
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from diffusion_jax import guidance, recipes
from diffusion_jax.denoisers import EDMPreconditioning
from diffusion_jax.networks import EncoderClassifier
from diffusion_jax.recipes import classifier as classifier_recipe
from diffusion_jax.recipes import guided

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _network(dtype=jnp.float32):
    return EncoderClassifier(image_shape=(8, 8, 1), num_classes=10, base_channels=8,
                             channel_multipliers=(1, 2), dtype=dtype, rngs=nnx.Rngs(0))


def test_logits_of_one_example_do_not_depend_on_the_others():
    """Per-example logits, so the gradient of the summed log-likelihood is per example."""
    network = _network()
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
    c_noise = jnp.array([-1.0, 0.0, 0.5, 1.0])
    logits = jax.jit(lambda network, x, c_noise: network(x, c_noise))
    together = logits(network, x, c_noise)
    for i in range(4):
        alone = logits(network, x[i:i + 1], c_noise[i:i + 1])
        np.testing.assert_allclose(alone[0], together[i], rtol=1e-5, atol=1e-5)
    assert float(jnp.std(together)) > 0  # not a constant head


def test_classifier_guidance_through_the_network_matches_finite_differences(x64):
    network = _network(jnp.float64)
    classifier = guidance.NoiseConditionalClassifier(network, EDMPreconditioning(0.5))

    def zero_denoiser(x, sigma, cond=None):
        return jnp.zeros_like(x)

    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 1), jnp.float64)
    labels, sigma, scale = jnp.array([3, 7]), 0.7, 2.0
    shift = jax.jit(lambda c, x: guidance.classifier_guidance(zero_denoiser, c, scale)(
        x, sigma, labels))(classifier, x)

    @jax.jit
    def log_likelihood_of(classifier, x):  # the network as an argument, not a closure constant
        return jnp.sum(jax.nn.log_softmax(classifier(x, sigma))[jnp.arange(2), labels])

    def log_likelihood(x):
        return log_likelihood_of(classifier, x)

    step = 1e-4  # central differences: O(step^2) truncation, far below the tolerance
    for index in [(0, 2, 3, 0), (1, 5, 1, 0)]:
        bump = jnp.zeros_like(x).at[index].set(step)
        derivative = (log_likelihood(x + bump) - log_likelihood(x - bump)) / (2 * step)
        np.testing.assert_allclose(shift[index], scale * sigma**2 * derivative, rtol=1e-6,
                                   atol=1e-12)


def _classifier_config(**overrides):
    settings = {"classifier.base_channels": 8, "classifier.channel_multipliers": "(1,)",
                "classifier.ema_half_life": 500.0, "train.num_steps": 80, "train.batch_size": 64,
                "train.log_every": 40, "optim.learning_rate": 3e-3, "optim.warmup_steps": 10}
    settings.update(overrides)
    return recipes.load_config(os.path.join(ROOT, "configs", "digits_classifier.py"), settings)


def test_training_learns_and_the_checkpoint_loads_back(tmp_path):
    config = _classifier_config()
    report = classifier_recipe.train_classifier(config, str(tmp_path))
    accuracy = report["test_accuracy_by_sigma"]
    assert accuracy[0.05] > 0.18  # chance is 0.1 (359 test images: standard error 0.016)
    assert accuracy[0.2] > accuracy[5.0] + 0.05  # noise makes it harder
    assert json.loads((tmp_path / "classifier_eval.json").read_text())["steps"] == 80
    loaded, loaded_config = classifier_recipe.load_classifier(str(tmp_path))
    test = recipes.load_split(loaded_config, "test")
    again = classifier_recipe.classifier_accuracy(loaded, test["image"], test["label"],
                                                  sigmas=tuple(accuracy))
    assert again == accuracy  # the same weights on the same noise
    assert isinstance(loaded, guidance.NoiseConditionalClassifier)


def test_errors_are_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        classifier_recipe.load_classifier(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="needs class labels but the model is not class"):
        guided.Guidance("classifier", 2.0).check(conditional=False, sampler="heun")
    with pytest.raises(ValueError, match="pass --sampler euler"):
        guided.Guidance("cfgpp", 0.5).check(conditional=True, sampler="heun")
    with pytest.raises(ValueError, match="unknown guidance"):
        guided.Guidance("cgf", 2.0).check(conditional=True, sampler="heun")
    with pytest.raises(ValueError, match="needs --guide_workdir"):
        guided.load_guide("autoguidance", None)
    flag_values = types.SimpleNamespace(
        guidance="cfg", guidance_interval=["0.5"], dynamic_threshold=None, rescale_phi=0.7,
        apg_eta=0.0, apg_norm_threshold=float("inf"), guide_workdir=None, guide_step=None)
    with pytest.raises(ValueError, match="sigma_lo,sigma_hi"):
        guided.from_flags(flag_values, 2.0, "unused")
