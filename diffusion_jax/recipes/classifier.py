"""Training and loading the noise-conditional classifier of classifier guidance (Dhariwal &
Nichol 2021, Sec. 4): cross-entropy of ``p(y | x0 + sigma n, sigma)`` with ``sigma`` drawn from
the diffusion run's own training distribution (EDM's log-normal, Karras et al. 2022, Table 1).

``train.py --config configs/digits_classifier.py --workdir DIR`` reaches :func:`train_classifier`
(a config with a ``classifier`` group); ``sample.py --guidance classifier --guide_workdir DIR``
loads it with :func:`load_classifier`.
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from diffusion_jax import checkpoints, data, guidance, training
from diffusion_jax.denoisers import EDMPreconditioning
from diffusion_jax.networks.classifier import EncoderClassifier
from diffusion_jax.recipes.builders import as_config
from diffusion_jax.recipes.datasets import load_arrays, load_split, preprocess

CLASSIFIER_SPEC = "diffusion_jax.classifier/1"

__all__ = ["CLASSIFIER_SPEC", "is_classifier_config", "classifier_spec", "build_classifier", "classifier_loss", "train_classifier",
           "classifier_accuracy", "load_classifier"]


def is_classifier_config(config) -> bool:
    """Whether ``config`` trains a classifier (it has a ``classifier`` group)."""
    return "classifier" in as_config(config)


def classifier_spec(config):
    """The JSON spec stored with a classifier checkpoint (what rebuilds it)."""
    config = as_config(config)
    return {"format": CLASSIFIER_SPEC, "data": {"shape": list(config.data.shape),
                                                "num_classes": int(config.data.num_classes)},
            "classifier": config.classifier.to_dict()}


def build_classifier(config, *, key=None):
    """``(network, wrap)`` of a classifier config: ``wrap(network)`` is the
    :class:`~diffusion_jax.guidance.NoiseConditionalClassifier` ``logits(x, sigma)``."""
    config = as_config(config)
    cc = config.classifier
    if not int(config.data.num_classes) >= 2:
        raise ValueError("a classifier needs data.num_classes >= 2")
    network = EncoderClassifier(
        image_shape=tuple(config.data.shape), num_classes=int(config.data.num_classes),
        base_channels=cc.base_channels, channel_multipliers=tuple(cc.channel_multipliers),
        num_res_blocks=cc.num_res_blocks, dropout=cc.dropout,
        rngs=nnx.Rngs(0 if key is None else key),
    )
    preconditioning = EDMPreconditioning(sigma_data=cc.sigma_data)
    return network, lambda net: guidance.NoiseConditionalClassifier(net, preconditioning)


def classifier_loss(config, wrap):
    """Per-example ``loss(network, batch, key)``: cross-entropy at ``x0 + sigma n`` with
    ``ln sigma ~ N(P_mean, P_std^2)`` (Karras et al. 2022, Table 1)."""
    cc = as_config(config).classifier

    def loss(network, batch, key):
        data_key, sigma_key, noise_key = jax.random.split(key, 3)
        x0 = preprocess(batch, data_key, image=True)
        sigma = jnp.exp(cc.p_mean + cc.p_std * jax.random.normal(sigma_key, x0.shape[:1]))
        x = x0 + sigma[:, None, None, None] * jax.random.normal(noise_key, x0.shape)
        logits = wrap(network)(x, sigma)
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])

    return loss


def classifier_accuracy(classifier, images, labels, *, sigmas, seed=0):
    """Top-1 accuracy of ``classifier`` on ``images`` (uint8) noised to each level of ``sigmas``
    (dict sigma -> accuracy)."""
    x0 = data.to_model_range(jnp.asarray(images, jnp.float32) / 255.0)
    logits_at = jax.jit(lambda c, x, s: c(x, s))
    accuracy = {}
    for index, sigma in enumerate(sigmas):
        noise = jax.random.normal(jax.random.key(seed + index), x0.shape)
        logits = logits_at(classifier, x0 + sigma * noise, jnp.float32(sigma))
        accuracy[float(sigma)] = float(jnp.mean(jnp.argmax(logits, -1) == jnp.asarray(labels)))
    return accuracy


def train_classifier(config, workdir):
    """Train the classifier of ``config`` into ``workdir`` (checkpoint with config, one EMA) and
    write ``workdir/classifier_eval.json`` (test accuracy by noise level); returns it."""
    config = as_config(config)
    tc, cc = config.train, config.classifier
    arrays = load_arrays(config)
    if "label" not in arrays:
        raise ValueError(f"data {config.data.name!r} has no labels to train a classifier on")
    network, wrap = build_classifier(config, key=tc.seed)
    optimizer, _ = training.make_optimizer(learning_rate=config.optim.learning_rate,
                                           warmup_steps=config.optim.warmup_steps,
                                           total_steps=tc.num_steps)
    state, parts = training.create_train_state(network, optimizer, key=jax.random.key(tc.seed),
                                               ema_names=("ema",))
    step = jax.jit(training.make_train_step(
        parts, classifier_loss(config, wrap), optimizer,
        ema_decays={"ema": training.ema_half_life(cc.ema_half_life, tc.batch_size)}))
    batches = data.make_batch_iterator(arrays, global_batch_size=tc.batch_size, seed=tc.seed)
    start, losses = time.time(), []
    for index in range(tc.num_steps):
        state, metrics = step(state, next(batches))
        losses.append(metrics["loss"])
        if (index + 1) % tc.log_every == 0 or index + 1 == tc.num_steps:
            print(f"classifier step {index + 1}/{tc.num_steps}: cross-entropy "
                  f"{float(np.mean(jax.device_get(losses))):.4f}", flush=True)
            losses = []
    manager = checkpoints.make_manager(workdir, max_to_keep=1, async_save=False)
    checkpoints.save(manager, state, config.to_dict(), spec=classifier_spec(config))
    manager.wait_until_finished()
    manager.close()
    test = load_split(config, "test")
    ema_network = training.merge_network(parts, state.ema["ema"], state.buffers)
    report = {"steps": tc.num_steps, "seconds": time.time() - start,
              "test_accuracy_by_sigma": classifier_accuracy(
                  wrap(ema_network), test["image"], test["label"], sigmas=(0.05, 0.2, 0.5, 1.0,
                                                                           2.0, 5.0))}
    with open(os.path.join(workdir, "classifier_eval.json"), "w") as handle:
        json.dump(report, handle, indent=2)
    print(f"test accuracy by sigma: {report['test_accuracy_by_sigma']}", flush=True)
    return report


def load_classifier(workdir, *, step=None):
    """The :class:`~diffusion_jax.guidance.NoiseConditionalClassifier` trained in ``workdir``
    (EMA parameters) and its config."""
    from diffusion_jax.recipes.loading import check_run_directory, load

    check_run_directory(workdir)
    spec = checkpoints.read_run_info(workdir, step=step).spec
    if not spec or spec.get("format") != CLASSIFIER_SPEC:
        raise ValueError(f"{workdir} is not a classifier run (train one with "
                         "configs/digits_classifier.py)")
    run = load(workdir, step=step, ema="first", build=build_classifier)
    return run.denoiser, run.config
