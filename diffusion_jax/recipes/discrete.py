"""The discrete family's recipes (FAMILY protocol): config -> network entry, model spec entry,
loss, data, sampling, sample files, evaluation (NELBO in bits per pixel / character) and checks.

Batches are ``{"tokens": int32 (batch, *data.shape)}`` (plus ``"label"`` int32 for class-
conditional digits): digits as 17-level token images ``(8, 8)``, text as character windows
``(length,)``. Settings live in ``config.discrete`` (``discrete_defaults.add_defaults``).
"""

from __future__ import annotations

import dataclasses
import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.callables import filter_jit
from diffusion_jax.discrete import data as discrete_data
from diffusion_jax.discrete import likelihood, losses, processes, samplers
from diffusion_jax.discrete.networks import NETWORKS as _NETWORKS
from diffusion_jax.recipes.objectives import drop_labels

__all__ = [
    "DATASETS",
    "FAMILY",
    "NETWORKS",
    "PROCESSES",
    "SAMPLERS",
    "DiscreteModel",
    "evaluate",
    "generate",
    "load_arrays",
    "make_loss_fn",
    "model_entry",
    "model_from_spec",
    "network_kwargs",
    "reference_bits",
    "validate",
    "write_samples",
]

FAMILY = "discrete"
NETWORKS = dict(_NETWORKS)
PROCESSES = ("d3pm", "masked", "dfm")
DATASETS = ("digits", "pydoc", "text8", "lm1b")
TEXT_DATASETS = ("pydoc", "text8", "lm1b")  # character streams cut into windows of data.shape
SAMPLERS = {"d3pm": "d3pm_ancestral", "masked": "masked_ancestral", "dfm": "dfm_euler"}
EXTRA_SAMPLERS = {"masked": ("masked_first_hitting",)}  # exact, one evaluation per position
SAMPLE_DTYPES = ("float32", "float64")


def _group(config):
    if "discrete" not in config:
        raise ValueError("config has no 'discrete' group; start from a configs/*.py of the "
                         "discrete family (discrete_defaults.add_defaults)")
    return config.discrete


def _vocabulary(config):
    """The token alphabet: ``None`` for digits (levels 0..16), the corpus characters for text."""
    if config.data.name == "pydoc":
        return discrete_data.build_vocabulary(discrete_data.pydoc_corpus())
    if config.data.name == "text8":
        return discrete_data.TEXT8_VOCABULARY
    if config.data.name == "lm1b":
        return discrete_data.BYTE_VOCABULARY
    return None


def _num_classes(config, vocabulary):
    return discrete_data.DIGIT_LEVELS if vocabulary is None else len(vocabulary)


def _conditional_labels(config):
    return int(config.data.num_classes) if config.train.class_conditional else None


def validate(config) -> None:
    """One-line ``ValueError`` s for settings the family cannot run, before a run starts."""
    group = _group(config)
    if config.data.name not in DATASETS:
        raise ValueError(f"unknown discrete data {config.data.name!r}; expected one of "
                         f"{', '.join(DATASETS)}")
    shape = tuple(config.data.shape)
    if config.data.name == "digits" and shape != (8, 8):
        raise ValueError(f"digits tokens have data.shape (8, 8); got {shape}")
    text = config.data.name in TEXT_DATASETS
    if text and (len(shape) != 1 or shape[0] < 2):
        raise ValueError(f"{config.data.name} text needs data.shape (length,) with length >= 2; "
                         f"got {shape}")
    if text and config.train.class_conditional:
        raise ValueError(f"{config.data.name} text has no labels; set train.class_conditional = "
                         "False")
    if config.data.name in ("text8", "lm1b") and not config.data.data_dir:
        raise ValueError(f"{config.data.name} is read from a local data.data_dir (see "
                         "docs/data_networks.md); set --config.data.data_dir=PATH")
    if group.process not in PROCESSES:
        raise ValueError(f"unknown discrete.process {group.process!r}; expected one of "
                         f"{', '.join(PROCESSES)}")
    if group.network not in NETWORKS:
        raise ValueError(f"unknown discrete.network {group.network!r}; expected one of "
                         f"{', '.join(NETWORKS)}")
    if group.network == "unet_logits" and len(shape) != 2:
        raise ValueError("discrete.network unet_logits needs image tokens (data.shape (H, W))")
    if group.sample_dtype not in SAMPLE_DTYPES:
        raise ValueError(f"unknown discrete.sample_dtype {group.sample_dtype!r}; expected one of "
                         f"{', '.join(SAMPLE_DTYPES)}")
    if group.dfm_loss not in losses.DFM_LOSSES:
        raise ValueError(f"unknown discrete.dfm_loss {group.dfm_loss!r}; expected one of "
                         f"{', '.join(losses.DFM_LOSSES)}")
    if config.train.compute_dtype != "float32":
        raise ValueError("the discrete family trains in float32 (train.compute_dtype); bfloat16 "
                         "would cast the integer tokens")
    if group.sample_steps < 1:
        raise ValueError(f"discrete.sample_steps must be positive; got {group.sample_steps}")
    _process_from_entry(_process_entry(config))  # names of kinds and schedules


# -- spec ----------------------------------------------------------------------------------------


def _process_entry(config):
    group = _group(config)
    name = group.process
    if name == "d3pm":
        return {"name": name, "kind": group.d3pm_kind, "schedule": group.beta_schedule or None,
                "num_steps": int(group.num_timesteps), "beta_start": float(group.beta_start),
                "beta_end": float(group.beta_end)}
    if name == "masked":
        return {"name": name, "schedule": group.mask_schedule, "exponent": float(group.exponent)}
    return {"name": name, "source": group.source, "schedule": group.kappa_schedule,
            "exponent": float(group.exponent)}


def _process_from_entry(entry, num_classes=2):
    name = entry["name"]
    if name == "d3pm":
        kwargs = {}
        if entry["schedule"] == "linear" or (entry["schedule"] is None
                                             and entry["kind"] == "gaussian"):
            kwargs = {"beta_start": entry["beta_start"], "beta_end": entry["beta_end"]}
        return processes.d3pm(entry["kind"], num_classes, num_steps=entry["num_steps"],
                              schedule=entry["schedule"], **kwargs)
    if name == "masked":
        return processes.MaskedDiffusion(num_classes, entry["schedule"], entry["exponent"])
    if name == "dfm":
        return processes.MixturePath(num_classes, entry["source"], entry["schedule"],
                                     entry["exponent"])
    raise ValueError(f"unknown discrete process {name!r}; expected one of {', '.join(PROCESSES)}")


def model_entry(config) -> dict:
    """JSON-able: the process, the token alphabet and shape, the sampling defaults."""
    validate(config)
    vocabulary = _vocabulary(config)
    group = config.discrete
    return {
        "family": FAMILY,
        "process": _process_entry(config),
        "num_classes": _num_classes(config, vocabulary),
        "shape": list(config.data.shape),
        "data": config.data.name,
        "vocabulary": vocabulary,
        "num_labels": _conditional_labels(config),
        "sample": {"steps": int(group.sample_steps), "dtype": group.sample_dtype,
                   "cache": bool(group.cache)},
    }


def _num_states(entry):
    process = _process_from_entry(entry["process"], entry["num_classes"])
    return process.num_states


def network_kwargs(config):
    """``(name, kwargs)``: the family's network (a key of ``NETWORKS``) and JSON-able arguments."""
    entry = model_entry(config)
    group, model = config.discrete, config.model
    common = {
        "num_states": _num_states(entry), "num_classes": entry["num_classes"],
        "shape": list(config.data.shape), "embedding": model.embedding,
        "time_conditioning": bool(group.time_conditioning), "num_labels": entry["num_labels"],
    }
    if group.network == "token_transformer":
        return group.network, {**common, "hidden_dim": model.hidden_dim,
                               "num_layers": model.num_layers, "num_heads": group.num_heads,
                               "embedding_dim": model.embedding_dim}
    return group.network, {**common, "channels": group.unet_channels,
                           "base_channels": model.base_channels,
                           "channel_multipliers": list(model.channel_multipliers),
                           "num_res_blocks": model.num_res_blocks,
                           "attention_resolutions": list(model.attention_resolutions),
                           "dropout": model.dropout}


@dataclasses.dataclass(frozen=True)
class DiscreteModel:
    """A trained discrete model: ``model(tokens, t, cond=None) -> logits`` plus its process,
    token shape and alphabet (a pytree: the network and process are leaves' owners)."""

    network: object
    process: object
    shape: tuple
    vocabulary: str | None

    def __call__(self, tokens, t, cond=None):
        return self.network(tokens, t, cond)


jax.tree_util.register_dataclass(DiscreteModel, data_fields=["network", "process"],
                                 meta_fields=["shape", "vocabulary"])


def _entry_of(spec):
    entry = spec.get("model", spec) if isinstance(spec, dict) else None
    if not isinstance(entry, dict) or entry.get("family") != FAMILY:
        raise ValueError("not a discrete model spec (spec['model']['family'] != 'discrete')")
    return entry


def model_from_spec(spec, network):
    """The jittable :class:`DiscreteModel` of a spec (``spec["model"]`` is ``model_entry``)."""
    entry = _entry_of(spec)
    process = _process_from_entry(entry["process"], entry["num_classes"])
    return DiscreteModel(network, process, tuple(entry["shape"]), entry["vocabulary"])


# -- training ------------------------------------------------------------------------------------


def make_loss_fn(config, wrap):
    """``loss_fn(network, batch, key) -> (batch,)`` nats per token for ``{"tokens": int32}``
    batches: D3PM hybrid loss, masked-diffusion NELBO or DFM loss (the latter two divided by the
    number of positions), with label dropout for class-conditional digits."""
    validate(config)
    group = config.discrete
    labels = _conditional_labels(config)
    class_dropout = float(config.model.class_dropout)
    hybrid_coeff, dfm_kind = float(group.hybrid_coeff), group.dfm_loss
    num_positions = int(np.prod(config.data.shape))

    def loss_fn(network, batch, key):
        drop_key, loss_key = jax.random.split(key)
        model = wrap(network)
        tokens = batch["tokens"].astype(jnp.int32)
        cond = None
        if labels is not None:
            cond = drop_labels(batch["label"], drop_key, class_dropout, labels)
        process = model.process
        if isinstance(process, processes.D3PM):
            return losses.d3pm_loss(model, process, tokens, loss_key, hybrid_coeff=hybrid_coeff,
                                    cond=cond)
        if isinstance(process, processes.MaskedDiffusion):
            return losses.masked_diffusion_loss(model, process, tokens, loss_key,
                                                cond=cond) / num_positions
        return losses.dfm_loss(model, process, tokens, loss_key, kind=dfm_kind,
                               cond=cond) / num_positions

    return loss_fn


def _split_arrays(config, split):
    if config.data.name == "digits":
        tokens, labels = discrete_data.load_digits_tokens(split)
        return {"tokens": tokens, "label": labels}
    vocabulary = _vocabulary(config)
    ids = discrete_data.encode(_load_text(config, split), vocabulary)
    return {"tokens": discrete_data.text_windows(ids, int(config.data.shape[0]))}


def _load_text(config, split):
    if config.data.name == "text8":
        return discrete_data.load_text8(split, data_dir=config.data.data_dir)
    if config.data.name == "lm1b":
        return discrete_data.load_lm1b(split, data_dir=config.data.data_dir)
    return discrete_data.load_text(split)


def load_arrays(config) -> dict:
    """Host arrays of the training split: ``{"tokens": int32 (N, *shape)[, "label"]}``."""
    validate(config)
    return _split_arrays(config, "train")


# -- sampling ------------------------------------------------------------------------------------


def _dtype(name):
    return jnp.float64 if name == "float64" else jnp.float32


def generate(model, config, *, num_samples, seed, sampler=None, num_steps=None, labels=None,
             options=None, batch_size=None, progress=False):
    """``(tokens int32 (num_samples, *shape), labels or None)`` from ``model``. ``sampler``:
    the process's own (``d3pm_ancestral`` / ``masked_ancestral`` / ``dfm_euler``), or for masked
    diffusion the exact ``masked_first_hitting`` (one evaluation per position); ``num_steps``
    the masked / DFM grid size (default ``discrete.sample_steps``); ``options``: ``dtype``
    (``"float32"`` / ``"float64"``), ``cache`` (masked). Per-batch keys are
    ``fold_in(key(seed), batch index)``."""
    group = config.discrete
    process_name = _process_name(model.process)
    name = SAMPLERS[process_name] if sampler is None else sampler
    if name not in (SAMPLERS[process_name], *EXTRA_SAMPLERS.get(process_name, ())):
        fits = ", ".join((SAMPLERS[process_name], *EXTRA_SAMPLERS.get(process_name, ())))
        raise ValueError(f"sampler {sampler!r} does not fit this model; use one of {fits}")
    options = dict(options or {})
    unknown = set(options) - {"dtype", "cache"}
    if unknown:
        raise ValueError(f"unknown sampler options {sorted(unknown)}; expected dtype, cache")
    dtype_name = options.get("dtype", group.sample_dtype)
    if dtype_name not in SAMPLE_DTYPES:
        raise ValueError(f"sample dtype must be one of {', '.join(SAMPLE_DTYPES)}; got "
                         f"{dtype_name!r}")
    dtype = _dtype(dtype_name)
    steps = int(num_steps or group.sample_steps)
    batch_size = int(batch_size or min(num_samples, config.sample.batch_size))
    if labels is not None:
        labels = np.asarray(labels, np.int32)
        if labels.shape != (num_samples,):
            raise ValueError(f"labels must have shape ({num_samples},); got {labels.shape}")
    run = filter_jit(_sampler_call(name, steps, dtype, bool(options.get("cache", group.cache))))
    outputs = []
    for index, start in enumerate(range(0, num_samples, batch_size)):
        count = min(batch_size, num_samples - start)
        cond = None if labels is None else jnp.asarray(labels[start:start + count])
        outputs.append(np.asarray(run(model, jax.random.fold_in(jax.random.key(seed), index),
                                      (count,) + tuple(model.shape), cond)))
        if progress:
            print(f"sampled {start + count}/{num_samples}", flush=True)
    return np.concatenate(outputs), labels


def _process_name(process):
    if isinstance(process, processes.D3PM):
        return "d3pm"
    return "masked" if isinstance(process, processes.MaskedDiffusion) else "dfm"


def _sampler_call(name, steps, dtype, cache):
    def run(model, key, shape, cond):
        if name == "d3pm_ancestral":
            return samplers.sample_d3pm(model, model.process, key, shape, cond=cond, dtype=dtype)
        if name == "masked_first_hitting":
            return samplers.sample_masked_first_hitting(model, model.process, key, shape,
                                                        cond=cond, dtype=dtype)
        if name == "masked_ancestral":
            return samplers.sample_masked(model, model.process, key, shape, num_steps=steps,
                                          cond=cond, dtype=dtype, cache=cache)
        return samplers.sample_dfm_euler(model, model.process, key, shape, num_steps=steps,
                                         cond=cond, dtype=dtype)

    return run


def write_samples(samples, config, path) -> None:
    """Digits: a PNG grid beside ``path``; text: the decoded windows as a ``.txt`` file."""
    stem = os.path.splitext(os.fspath(path))[0]
    samples = np.asarray(samples)
    if config.data.name == "digits":
        from diffusion_jax.data.png import save_image_grid

        images = samples[..., None].astype(np.float32) / (discrete_data.DIGIT_LEVELS - 1)
        save_image_grid(images * 2.0 - 1.0, stem + ".png", scale=4)
        return
    text = discrete_data.decode(samples, _vocabulary(config))
    if config.data.name == "lm1b":
        text = [discrete_data.bytes_to_text(t) for t in text]
    with open(stem + ".txt", "w", encoding="utf-8") as handle:
        handle.write("\n\n=====\n\n".join(text))


# -- evaluation ----------------------------------------------------------------------------------


def reference_bits(config):
    """Simple references on the test split, bits per dimension, fitted on the train split with
    add-one smoothing: digits: independent per-pixel categoricals; text: unigram and bigram
    character models."""
    train, test = _split_arrays(config, "train")["tokens"], _split_arrays(config, "test")["tokens"]
    vocabulary = _vocabulary(config)
    num_classes = _num_classes(config, vocabulary)
    if config.data.name == "digits":
        flat_train, flat_test = train.reshape(len(train), -1), test.reshape(len(test), -1)
        counts = np.stack([np.bincount(col, minlength=num_classes) for col in flat_train.T]) + 1.0
        log_p = np.log2(counts / counts.sum(1, keepdims=True))
        nll = -log_p[np.arange(flat_test.shape[1]), flat_test].mean()
        return {"independent_pixels_bits": float(nll)}
    stream_train, stream_test = train.reshape(-1), test.reshape(-1)
    unigram = np.bincount(stream_train, minlength=num_classes) + 1.0
    unigram_bits = -np.log2(unigram / unigram.sum())[stream_test].mean()
    pair_index = stream_train[:-1].astype(np.int64) * num_classes + stream_train[1:]
    pairs = np.bincount(pair_index, minlength=num_classes ** 2).reshape(
        num_classes, num_classes) + 1.0
    conditional = np.log2(pairs / pairs.sum(1, keepdims=True))
    bigram_bits = -np.concatenate([[np.log2(unigram[stream_test[0]] / unigram.sum())],
                                   conditional[stream_test[:-1], stream_test[1:]]]).mean()
    return {"unigram_bits": float(unigram_bits), "bigram_bits": float(bigram_bits)}


def evaluate(model, config, *, num_examples, seed, batch_size, progress=False) -> dict:
    """NELBO of the test split in bits per pixel (digits) or per character (text), with its
    Monte Carlo standard error, beside the ``reference_bits``."""
    arrays = _split_arrays(config, "test")
    tokens = arrays["tokens"][:num_examples] if num_examples else arrays["tokens"]
    cond = None
    if _conditional_labels(config) is not None:
        cond = arrays["label"][:len(tokens)]
    report = None
    if progress:
        report = lambda done, total: print(f"NELBO batch {done}/{total}", flush=True)  # noqa: E731
    result = likelihood.nelbo_bits(model, model.process, tokens, jax.random.key(seed),
                                   num_draws=int(config.discrete.eval_draws),
                                   batch_size=batch_size, cond=cond, progress=report)
    unit = "bits_per_dim" if config.data.name == "digits" else "bits_per_char"
    out = {unit: result["bits"], "std_error": result["std_error"],
           "num_examples": result["num_examples"]}
    out.update(reference_bits(config))
    if not all(math.isfinite(v) for v in out.values()):
        raise ValueError(f"evaluation produced a non-finite value: {out}")
    return out
