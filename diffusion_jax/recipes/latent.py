"""The latent family's recipe module (``config.model.family = "latent"``): autoencoders, latent
diffusion (LDM, Rombach et al. 2022) and the LSGM joint objective (Vahdat et al. 2021), one
``train.py`` run per stage (``config.latent.stage``; settings in ``recipes/latent_defaults.py``).

* **autoencoder**: the network is a :class:`~diffusion_jax.latent.autoencoders.KLAutoencoder`
  (or :class:`~diffusion_jax.latent.vq.VQAutoencoder`) trained on ``uint8 / 127.5 - 1`` images
  (no dequantisation: LDM's first stage sees the pixels as they are). Its "samples" are
  reconstructions of the test split; its evaluation reports reconstruction error, rFID and the
  latent std.
* **ldm**: ``latent.autoencoder_workdir`` is encoded once (posterior mean, or ``z_e`` for VQ) into
  the latent cache (:mod:`~diffusion_jax.recipes.latent_cache`: shards, resumable,
  deterministic). The **scale factor** is estimated at the start of this stage as ``1 / std`` of
  the cached latents of the whole training split (LDM's ``scale_by_std``) and stored in the LDM
  run's spec. The prior is any Gaussian-family process / loss / preconditioning of
  ``config.process``, ``config.model``, ``config.loss`` (rectified flow included) on
  ``{"latent": float}`` batches, which the data path passes through untouched. The run's spec
  names the autoencoder run by absolute path, step and EMA (its weights are not copied: one
  autoencoder serves many LDM runs and holds their cache); ``load(ldm_run)`` rebuilds the
  :class:`LatentModel` (denoiser + codec), a missing autoencoder run is a one-line error.
  Samples are drawn in latent space by any registered sampler and decoded to pixels.
* **lsgm**: see :func:`make_loss_fn` (encoder, decoder and latent prior trained jointly).

Evaluation in pixel space: FID with the data's feature network (for ``digits32`` the bundled
digits classifier after 4 x 4 averaging back to 8 x 8).
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import callables, data, networks
from diffusion_jax.latent import losses as latent_losses
from diffusion_jax.latent import lsgm, vq
from diffusion_jax.latent.autoencoders import KLAutoencoder
from diffusion_jax.latent.codec import Codec, decode_samples, estimate_scale
from diffusion_jax.pytrees import frozen_pytree
from diffusion_jax.recipes import datasets, gaussian, latent_cache, objectives, sampling
from diffusion_jax.recipes.builders import (
    as_config,
    is_image_data,
    process_entry,
    process_from_entry,
)

__all__ = ["FAMILY", "NETWORKS", "STAGES", "LatentModel", "network_kwargs", "model_entry",
           "model_from_spec", "make_loss_fn", "load_arrays", "generate", "write_samples",
           "evaluate", "validate", "latent_config", "latent_shape", "load_autoencoder"]

FAMILY = "latent"
STAGES = ("autoencoder", "ldm", "lsgm")
KINDS = ("kl", "vq")


def lsgm_network(*, prior, rngs, **kwargs):
    """:class:`~diffusion_jax.latent.lsgm.LSGM` with its prior a
    :class:`~diffusion_jax.networks.UNet` of the JSON-able arguments ``prior``."""
    prior = {k: tuple(v) if isinstance(v, list) else v for k, v in prior.items()}
    return lsgm.LSGM(prior=networks.UNet(rngs=rngs, **prior), rngs=rngs, **kwargs)


NETWORKS = {"kl_autoencoder": KLAutoencoder, "vq_autoencoder": vq.VQAutoencoder,
            "lsgm": lsgm_network}
write_samples = sampling.write_samples


@frozen_pytree
class LatentModel:
    """A latent diffusion model: ``denoiser(z, sigma, cond)`` in the codec's scaled latent space
    and the ``codec`` (:class:`~diffusion_jax.latent.codec.Codec` with its scale) that decodes
    its samples. A pytree: both travel through ``jit`` as arguments."""

    denoiser: Any
    codec: Any

    def __call__(self, z, sigma, cond=None):
        return self.denoiser(z, sigma, cond)


# -- config --------------------------------------------------------------------------------------


def _stage(config):
    config = as_config(config)
    if "latent" not in config:
        raise ValueError("config has no 'latent' group; start from a configs/digits32_*.py of "
                         "the latent family (latent_defaults.add_defaults)")
    stage = config.latent.stage
    if stage not in STAGES:
        raise ValueError(f"unknown latent.stage {stage!r}; expected one of {list(STAGES)}")
    return stage


def _factor(latent):
    return 2 ** (len(tuple(latent.channel_multipliers)) - 1)


def latent_shape(config):
    """``(H/f, W/f, latent_channels)`` of ``config.data.shape`` under ``config.latent``'s
    autoencoder (``f = 2 ** (len(channel_multipliers) - 1)``); one-line error when the image
    size is not divisible by ``f``."""
    config = as_config(config)
    height, width, _ = _image_shape(config)
    f = _factor(config.latent)
    if height % f or width % f:
        raise ValueError(f"data.shape {tuple(config.data.shape)} is not divisible by the "
                         f"autoencoder's down-sampling factor f = {f} (latent.channel_multipliers "
                         f"{tuple(config.latent.channel_multipliers)})")
    return (height // f, width // f, int(config.latent.latent_channels))


def _image_shape(config):
    shape = tuple(config.data.shape)
    if len(shape) != 3:
        raise ValueError(f"the latent family needs images: data.shape (H, W, C); got {shape}")
    return shape


def latent_config(config):
    """The config of the prior in latent space: ``config`` with ``data.shape`` the latent shape,
    ``data.random_flip`` from ``latent.random_flip`` and the Gaussian family, so the Gaussian
    recipes (network, spec entry, loss, sampling) apply unchanged."""
    config = as_config(config).copy_and_resolve_references()
    shape = latent_shape(config)
    with config.unlocked():
        config.data.shape = shape
        config.data.random_flip = bool(config.latent.random_flip)
        config.model.family = "gaussian"
    return config


def _autoencoder_kwargs(config):
    latent = config.latent
    kwargs = {"in_channels": int(_image_shape(config)[-1]),
              "latent_channels": int(latent.latent_channels),
              "base_channels": int(latent.base_channels),
              "channel_multipliers": list(latent.channel_multipliers),
              "num_res_blocks": int(latent.num_res_blocks), "attention": bool(latent.attention),
              "dropout": float(latent.dropout)}
    if latent.kind == "vq":
        return "vq_autoencoder", {**kwargs, "num_codes": int(latent.codebook_size),
                                  "beta": float(latent.commitment_weight)}
    return "kl_autoencoder", kwargs


def network_kwargs(config):
    """``(name, kwargs)``: the autoencoder (stage autoencoder), the latent prior's standard network
    on the latent shape (stage ldm)."""
    config = as_config(config)
    stage = _stage(config)
    if stage == "autoencoder":
        return _autoencoder_kwargs(config)
    if stage == "ldm":
        return gaussian.network_kwargs(latent_config(config))
    latent = config.latent
    _, autoencoder = _autoencoder_kwargs(config)
    prior = {"image_shape": list(latent_shape(config)),
             "base_channels": int(latent.prior_base_channels),
             "channel_multipliers": list(latent.prior_channel_multipliers),
             "num_res_blocks": int(latent.prior_num_res_blocks), "attention_resolutions": [],
             "dropout": float(config.model.dropout), "embedding": config.model.embedding}
    return "lsgm", {**autoencoder, "prior": prior, "time_scale": float(config.model.time_scale),
                    "mixed_score": bool(latent.mixed_score),
                    "decoder_log_scale": float(latent.decoder_log_scale)}


# -- the autoencoder run of an LDM -----------------------------------------------------------------


def _autoencoder_workdir(config):
    workdir = config.latent.autoencoder_workdir
    if not workdir:
        raise ValueError("latent.stage = 'ldm' needs latent.autoencoder_workdir (a finished "
                         "autoencoder run of latent.stage = 'autoencoder')")
    workdir = os.path.abspath(workdir)
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise ValueError(f"latent.autoencoder_workdir {workdir} is not a training run (no "
                         "checkpoints/ directory)")
    return workdir


@functools.lru_cache(maxsize=8)
def _autoencoder_info(workdir, step):
    from diffusion_jax import checkpoints

    return checkpoints.read_run_info(workdir, step=step or None)


def _check_autoencoder_run(config):
    """``(workdir, step, spec)`` of the LDM's autoencoder run, checked: an autoencoder stage of
    this family whose latent shape is the one ``config`` expects."""
    workdir = _autoencoder_workdir(config)
    info = _autoencoder_info(workdir, int(config.latent.autoencoder_step))
    spec = info.spec or {}
    entry = spec.get("model", {})
    if spec.get("family") != FAMILY or entry.get("stage") != "autoencoder":
        raise ValueError(f"{workdir} is not an autoencoder run (family {spec.get('family')!r}, "
                         f"stage {entry.get('stage')!r}); train one with latent.stage = "
                         "'autoencoder'")
    expected = list(latent_shape(config))
    if entry["latent_shape"] != expected or spec["data"]["shape"] != list(config.data.shape):
        raise ValueError(
            f"autoencoder run {workdir} maps images {tuple(spec['data']['shape'])} to latents "
            f"{tuple(entry['latent_shape'])}, but this config's latent model expects images "
            f"{tuple(config.data.shape)} -> latents {tuple(expected)} (latent.latent_channels, "
            "latent.channel_multipliers)")
    return workdir, info.step, spec


@functools.lru_cache(maxsize=8)
def load_autoencoder(workdir, step, ema):
    """The autoencoder network of the run ``workdir`` at ``step`` with EMA ``ema`` (memoised;
    one-line error when the run is missing)."""
    from diffusion_jax.recipes.loading import load

    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise FileNotFoundError(f"the autoencoder run {workdir} of this latent model is missing "
                                "(its spec names it by path: restore it there)")
    return load(workdir, step=step, ema=ema).denoiser


def _ema(config):
    value = config.latent.autoencoder_ema
    return {"first": "first", "raw": "raw"}.get(value, value)


def _cache_dir(config, workdir, step):
    if config.latent.cache_dir:
        return os.path.abspath(config.latent.cache_dir)
    return os.path.join(workdir, "latent_cache",
                        f"{config.data.name}_{config.data.split}_step{step}_{_ema(config)}")


@functools.lru_cache(maxsize=None)
def _encode_fn():
    return callables.filter_jit(
        lambda autoencoder, images: autoencoder.encode(data.uint8_to_model_range(images)))


def _ensure_cache(config):
    """The LDM stage's latent cache (written or resumed first) and its autoencoder."""
    workdir, step, _ = _check_autoencoder_run(config)
    autoencoder = load_autoencoder(workdir, step, _ema(config))
    directory = _cache_dir(config, workdir, step)
    if not latent_cache.cache_is_complete(directory):
        arrays = datasets.load_arrays(_pixel_config(config))
        encode = _encode_fn()
        latent_cache.write_latent_cache(
            lambda images: encode(autoencoder, jnp.asarray(images)), arrays["image"],
            arrays.get("label"), directory, shard_size=int(config.latent.cache_shard_size),
            batch_size=int(config.latent.cache_batch_size), progress=True,
            identity={"autoencoder": workdir, "step": step, "ema": _ema(config),
                      "data": config.data.name, "split": config.data.split})
    return directory, workdir, step


def _pixel_config(config):
    config = as_config(config).copy_and_resolve_references()
    with config.unlocked():
        config.model.family = "gaussian"
    return config


@functools.lru_cache(maxsize=8)
def _cached_scale(directory):
    return float(estimate_scale(latent_cache.load_latent_cache(directory)["latent"]))


def model_entry(config) -> dict:
    """Stage autoencoder: ``{"stage", "kind", "latent_shape"}``. Stage ldm: the Gaussian entry of
    the prior (``process``, ``denoiser``) plus ``latent_shape`` and ``codec`` (the autoencoder
    run's absolute path, step, EMA and the scale factor ``1 / std`` of the cached latents; the
    cache is written here, once, if it is not complete)."""
    config = as_config(config)
    stage = _stage(config)
    entry = {"stage": stage, "kind": config.latent.kind, "latent_shape": list(latent_shape(config))}
    if stage == "lsgm":
        entry.update(process=process_entry(config), t_min=float(config.loss.t_min),
                     importance_sampling=bool(config.latent.importance_sampling))
    if stage == "ldm":
        directory, workdir, step = _ensure_cache(config)
        entry.update(gaussian.model_entry(latent_config(config)))
        entry["codec"] = {"autoencoder_workdir": workdir, "step": int(step),
                          "ema": _ema(config), "scale": _cached_scale(directory),
                          "scale_estimate": "1 / std of the cached training-split latents"}
    return entry


def model_from_spec(spec, network):
    """Stage autoencoder: the autoencoder network itself. Stage ldm: a :class:`LatentModel` of the
    spec's denoiser and the codec of its autoencoder run with the stored scale."""
    entry = spec["model"]
    if entry["stage"] == "autoencoder":
        return network
    if entry["stage"] == "lsgm":  # the prior as a denoiser; the LSGM network is its own codec
        process = process_from_entry(entry["process"])
        return LatentModel(lsgm.prior_denoiser(network, process), Codec(network).with_scale(1.0))
    codec = entry["codec"]
    if codec.get("scale") is None:
        raise ValueError("this latent model's spec has no codec scale factor; it cannot decode")
    autoencoder = load_autoencoder(codec["autoencoder_workdir"], codec["step"], codec["ema"])
    return LatentModel(gaussian.model_from_spec(spec, network),
                       Codec(autoencoder).with_scale(codec["scale"]))


# -- training --------------------------------------------------------------------------------------


def _images(batch, key, random_flip):
    """Autoencoder inputs: ``uint8 / 127.5 - 1`` (no dequantisation), optional flips."""
    x = data.uint8_to_model_range(batch["image"])
    if random_flip:
        flip = jax.random.bernoulli(key, 0.5, (x.shape[0], 1, 1, 1))
        x = jnp.where(flip, x[:, :, ::-1, :], x)
    return x


def make_loss_fn(config, wrap):
    """Stage autoencoder: LDM's KL autoencoder loss (summed L1/L2 + ``kl_weight`` KL) or the
    VQ-VAE loss. Stage ldm: the Gaussian family's loss of ``config.loss`` on the cached, scaled
    latents (``batch["latent"]``, untouched by the data path)."""
    config = as_config(config)
    stage = _stage(config)
    latent = config.latent
    if stage == "autoencoder":
        flip, kind = bool(config.data.random_flip), latent.kind
        reconstruction, kl_weight = latent.reconstruction, float(latent.kl_weight)

        def autoencoder_loss(network, batch, key):
            flip_key, posterior_key = jax.random.split(key)
            x = _images(batch, flip_key, flip)
            if kind == "vq":
                return vq.vq_autoencoder_loss(network, x, reconstruction=reconstruction)
            return latent_losses.kl_autoencoder_loss(network, x, posterior_key,
                                                     kl_weight=kl_weight,
                                                     reconstruction=reconstruction)

        return autoencoder_loss
    if stage == "lsgm":
        options = _lsgm_options(config)

        def lsgm_loss(network, batch, key):
            data_key, loss_key = jax.random.split(key)
            x = datasets.preprocess(batch, data_key, image=True,
                                    random_flip=bool(config.data.random_flip))
            return lsgm.lsgm_loss(network, x, loss_key, **options)

        return lsgm_loss
    prior = latent_config(config)
    entry = gaussian.model_entry(prior)
    spec = {"model": entry}
    return objectives.make_loss_fn(prior, lambda network: gaussian.model_from_spec(spec, network))


def _lsgm_options(config):
    """Keywords of :func:`diffusion_jax.latent.lsgm.lsgm_terms` from the config."""
    return {"process": process_from_entry(process_entry(config)),
            "t_min": float(config.loss.t_min),
            "importance_sampling": bool(config.latent.importance_sampling)}


def load_arrays(config):
    """Stage autoencoder: the image split (standard data path). Stage ldm: the cached latents,
    multiplied by the scale factor once on the host: ``{"latent": float32[, "label"]}``."""
    config = as_config(config)
    if _stage(config) in ("autoencoder", "lsgm"):
        return datasets.load_arrays(_pixel_config(config))
    directory, _, _ = _ensure_cache(config)
    arrays = latent_cache.load_latent_cache(directory)
    arrays["latent"] = (arrays["latent"] * np.float32(_cached_scale(directory))).astype(np.float32)
    if not config.train.class_conditional:
        arrays.pop("label", None)
    return arrays


# -- sampling --------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _decode_fn(shape):
    """Jitted ``(codec, z) -> images`` clipped to ``[-1, 1]``; latents of another shape than the
    codec's ``shape`` are a one-line error."""
    return callables.filter_jit(lambda codec, z: jnp.clip(
        decode_samples(codec, z, latent_shape=shape), -1.0, 1.0))


def _in_batches(fn, arrays, batch_size):
    """``fn`` over fixed-size batches of ``arrays`` (last padded; one compilation)."""
    outputs = []
    for start in range(0, len(arrays), batch_size):
        batch = arrays[start:start + batch_size]
        count = len(batch)
        if count < batch_size:
            batch = np.concatenate([batch, np.repeat(batch[-1:], batch_size - count, 0)])
        outputs.append(np.asarray(fn(jnp.asarray(batch)))[:count])
    return np.concatenate(outputs)


@functools.lru_cache(maxsize=None)
def _reconstruct_fn():
    return callables.filter_jit(lambda autoencoder, images: jnp.clip(
        autoencoder.decode(autoencoder.encode(data.uint8_to_model_range(images))), -1.0, 1.0))


def generate(model, config, *, num_samples, seed, sampler=None, num_steps=None, labels=None,
             options=None, batch_size=None, progress=False, grid=None, guidance_scale=None):
    """Pixel-space samples (host array in ``[-1, 1]``) and labels (or ``None``).

    Stage ldm: ``num_samples`` latents from any registered sampler (``sampler``, ``grid``,
    ``num_steps``, ``options``, guidance: as the Gaussian family, default ``config.sample``),
    decoded by the model's codec (``decode(z / scale)``). Stage autoencoder: reconstructions of the
    first ``num_samples`` test images (the sampler arguments do not apply)."""
    config = as_config(config)
    stage = _stage(config)
    batch_size = min(batch_size or config.sample.batch_size, num_samples)
    if stage == "autoencoder":
        images = datasets.load_split(_pixel_config(config), "test")["image"][:num_samples]
        reconstruct = _reconstruct_fn()
        return _in_batches(lambda x: reconstruct(model, x), images, batch_size), None
    latents, labels = sampling.generate(
        model.denoiser, latent_config(config), num_samples=num_samples, seed=seed,
        sampler=sampler, grid=grid, num_steps=num_steps, guidance_scale=guidance_scale,
        batch_size=batch_size, labels=labels, options=options, progress=progress)
    decode = _decode_fn(latent_shape(config))
    return _in_batches(lambda z: decode(model.codec, z), latents, batch_size), labels


# -- evaluation ------------------------------------------------------------------------------------


def _quality(config, samples, reference_images, batch_size):
    """FID (and KID, precision / recall) of uint8-quantised ``samples`` against
    ``reference_images`` with the data's feature network; ``{}`` without one."""
    from diffusion_jax import metrics
    from diffusion_jax.recipes import evaluation

    name = evaluation.feature_network_name(_pixel_config(config))
    if name is None:
        return {}
    feature_fn = evaluation.feature_function(name)
    reference, _ = evaluation.extract(feature_fn, reference_images, batch_size)
    statistics = metrics.FeatureStatistics().update(reference)
    quality = evaluation.sample_quality(feature_fn, data.to_uint8(samples), statistics,
                                        reference, batch_size)
    return {"feature_network": name, **{k: float(v) for k, v in quality.items()}}


BPD_SIGMA_MIN = 2e-3  # the latent prior's density is taken at this VE noise level


def _decoder_std(autoencoder, images, key):
    """Maximum-likelihood std of a Gaussian decoder ``p(x|z) = N(D(z), s^2 I)`` shared by all
    pixels: the RMS reconstruction error of dequantised images at the posterior mean."""
    x = data.to_model_range(data.dequantize(jnp.asarray(images), key))
    error = x - autoencoder.decode(autoencoder.encode(x))
    return float(jnp.sqrt(jnp.mean(error**2)))


def _negative_elbo_fn(sigma_max, decoder_log_std, null_class):
    """Jitted per-example negative ELBO in nats of dequantised images under the LDM: Gaussian
    decoder, the KL autoencoder's posterior entropy and the prior's probability-flow density
    of the scaled latent (Song et al. 2021, App. D.2), whose change of variables adds
    ``dim(z) log scale``: ``-log p(x) <= E_q[-log p(x|z) - log p(z) + log q(z|x)]`` (Kingma &
    Welling 2014, eq. 3; one sample of ``z``)."""
    from diffusion_jax import likelihood

    def negative_elbo(model, images, key):
        dequant_key, posterior_key, probe_key = jax.random.split(key, 3)
        autoencoder, scale = model.codec.autoencoder, model.codec.scale
        x = data.to_model_range(data.dequantize(images, dequant_key))
        mean, log_variance = autoencoder.posterior(x)
        z = mean + jnp.exp(0.5 * log_variance) * jax.random.normal(posterior_key, mean.shape)
        log_decoder = latent_losses.gaussian_log_likelihood(x, autoencoder.decode(z),
                                                            decoder_log_std)
        cond = None if null_class is None else jnp.full(x.shape[:1], null_class, jnp.int32)
        log_prior, _ = likelihood.log_likelihood(
            model.denoiser, z * scale, sigma_min=BPD_SIGMA_MIN, sigma_max=sigma_max,
            key=probe_key, cond=cond)
        log_prior = log_prior + math.prod(z.shape[1:]) * jnp.log(scale)
        return -(log_decoder + latent_losses.gaussian_entropy(log_variance) + log_prior)

    return callables.filter_jit(negative_elbo)


def _ldm_bits_per_dim(model, config, images, *, seed, batch_size):
    """Mean and standard error of the LDM's negative ELBO in bits/dim of uint8 ``images``
    (offset ``+7`` for 8-bit data in ``[-1, 1]``), for the KL autoencoder (the unconditional
    prior: the null class of a class-conditional model)."""
    from diffusion_jax.recipes.builders import build_process, finite_sigma_max, num_classes

    prior = latent_config(config)
    sigma_max = finite_sigma_max(build_process(prior), prior.sample.sigma_max)
    train = datasets.load_split(_pixel_config(config), config.data.split)["image"][:512]
    decoder_std = _decoder_std(model.codec.autoencoder, train, jax.random.key(seed + 7))
    null_class = num_classes(prior)
    fn = _negative_elbo_fn(sigma_max, math.log(decoder_std), null_class)
    key = jax.random.key(seed + 3)
    nats = []
    for start in range(0, len(images), batch_size):  # batch k draws from fold_in(key, k)
        nats.append(_in_batches(
            lambda x, start=start: fn(model, x, jax.random.fold_in(key, start)),
            images[start:start + batch_size], batch_size))
    nats = np.concatenate(nats)
    bits = nats / (math.prod(images.shape[1:]) * math.log(2.0)) + 7.0
    return {"bits_per_dim": float(bits.mean()),
            "bits_per_dim_std_error": float(bits.std(ddof=1) / math.sqrt(len(bits))),
            "decoder_std": decoder_std,
            "bits_per_dim_note": "negative ELBO: Gaussian decoder (ML std on the training "
                                 "split) + posterior entropy + PF-ODE prior density at sigma "
                                 f"{BPD_SIGMA_MIN}; test split"}


def _lsgm_elbo(network, config, images, *, seed, batch_size):
    """Mean negative ELBO of LSGM in bits/dim of uint8 ``images`` (uniformly dequantised into
    ``[-1, 1]``, offset ``+7``) with its standard error and the mean of each part (nats)."""
    options = _lsgm_options(config)

    def terms(network, images, key):
        dequant_key, key = jax.random.split(key)
        x = data.to_model_range(data.dequantize(images, dequant_key))
        return lsgm.lsgm_terms(network, x, key, num_bits=8, **options)

    fn = callables.filter_jit(terms)
    key = jax.random.key(seed + 5)
    parts = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        count = len(batch)
        if count < batch_size:
            batch = np.concatenate([batch, np.repeat(batch[-1:], batch_size - count, 0)])
        values = fn(network, jnp.asarray(batch), jax.random.fold_in(key, start))
        parts.append({k: np.asarray(v)[:count] for k, v in values.items()})
    values = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    bits = values["bits_per_dim"]
    return {"bits_per_dim": float(bits.mean()),
            "bits_per_dim_std_error": float(bits.std(ddof=1) / math.sqrt(len(bits))),
            **{f"{k}_nats": float(v.mean()) for k, v in values.items() if k != "bits_per_dim"},
            "bits_per_dim_note": "negative ELBO (one posterior sample, one t per example, "
                                 "importance-sampled), test split"}


def evaluate(model, config, *, num_examples, seed, batch_size, progress=False):
    """Stage autoencoder: per-pixel reconstruction MSE / L1 in ``[-1, 1]`` and PSNR (on
    ``[0, 255]``) of the test split, rFID (reconstructions vs. originals), the std of the
    latents and the scale ``1 / std`` an LDM would use. Stage ldm: FID of ``num_examples``
    decoded samples against the training split (pixel space), and the scale factor."""
    config = as_config(config)
    stage = _stage(config)
    pixel = _pixel_config(config)
    if stage == "autoencoder":
        images = datasets.load_split(pixel, "test")["image"][:num_examples]
        batch = min(batch_size, len(images))
        reconstructions, _ = generate(model, config, num_samples=len(images), seed=seed,
                                      batch_size=batch)
        originals = data.uint8_to_model_range(images)
        error = np.asarray(reconstructions, np.float64) - np.asarray(originals, np.float64)
        mse = float(np.mean(error**2))
        quantised = data.to_uint8(reconstructions).astype(np.float64)
        mse_255 = float(np.mean((quantised - images.astype(np.float64)) ** 2))
        encode = _encode_fn()
        latents = _in_batches(lambda x: encode(model, x), images, batch)
        std = float(np.std(latents))
        report = {"reconstruction_mse": mse, "reconstruction_l1": float(np.mean(np.abs(error))),
                  "psnr": float(10 * math.log10(255.0**2 / max(mse_255, 1e-12))),
                  "latent_std": std, "scale": 1.0 / std, "num_examples": len(images)}
        rfid = _quality(config, reconstructions, images, batch)
        if rfid:
            report["rfid"] = rfid["fid"]
        return report
    samples, _ = generate(model, config, num_samples=num_examples, seed=seed,
                          batch_size=batch_size, progress=progress)
    reference = datasets.load_split(pixel, config.data.split)["image"]
    report = {"num_examples": num_examples, "scale": float(model.codec.scale)}
    quality = _quality(config, samples, reference, min(batch_size, num_examples))
    if quality:
        report.update(fid=quality["fid"], kid_mean=quality.get("kid_mean"))
    if stage == "lsgm":
        test = datasets.load_split(pixel, "test")["image"][:num_examples]
        report.update(_lsgm_elbo(model.codec.autoencoder, config, test, seed=seed,
                                 batch_size=min(batch_size, len(test))))
    elif config.latent.kind == "kl":
        test = datasets.load_split(pixel, "test")["image"][:num_examples]
        report.update(_ldm_bits_per_dim(model, config, test, seed=seed,
                                        batch_size=min(batch_size, len(test))))
    return report


def validate(config):
    """One-line errors before a run starts: stage, kind, reconstruction, the image shape against
    the down-sampling factor, and for stage ldm the autoencoder run (present, an autoencoder,
    the latent shape this config expects) and the prior's Gaussian settings."""
    config = as_config(config)
    stage = _stage(config)
    latent = config.latent
    if latent.kind not in KINDS:
        raise ValueError(f"unknown latent.kind {latent.kind!r}; expected one of {list(KINDS)}")
    if latent.reconstruction not in latent_losses.RECONSTRUCTIONS:
        raise ValueError(f"unknown latent.reconstruction {latent.reconstruction!r}; expected one "
                         f"of {list(latent_losses.RECONSTRUCTIONS)}")
    latent_shape(config)
    if not is_image_data(config):
        raise ValueError("the latent family needs image data")
    if stage == "lsgm":
        if latent.kind != "kl":
            raise ValueError("latent.stage = 'lsgm' needs latent.kind = 'kl' (a Gaussian "
                             "posterior)")
        if config.train.class_conditional:
            raise ValueError("the LSGM recipe is unconditional; set train.class_conditional = "
                             "False")
        process = process_from_entry(process_entry(config))
        t = 0.5 * process.t_max
        if latent.mixed_score and not np.isclose(
                float(process.alpha(t) ** 2 + process.sigma(t) ** 2), 1.0, rtol=1e-4):
            raise ValueError(f"latent.mixed_score needs a variance-preserving process (vp, "
                             f"cosine); got process.name = {config.process.name!r}")
        gaussian.validate(latent_config(config))
    if stage == "ldm":
        _check_autoencoder_run(config)
        prior = latent_config(config)
        gaussian.validate(prior)
        objectives.make_loss_fn(prior, lambda network: network)
