"""The flow family's recipe module (``config.model.family = "flow"``): a network as a velocity
field ``velocity(x, t, cond)`` from a source (``config.flow.source``: ``N(0, I)``, torchcfm's 8
Gaussians, any toy set) to the data, trained by (OT-/SB-)conditional flow matching or on reflow
pairs, sampled by the fixed-grid methods of :mod:`diffusion_jax.flows.ode` or Dopri5.

Library time: **t = 0 is data, t = 1 is the source**; the network sees ``c_noise = time_scale t``.
Training batches: ``{"x": float}`` (points) or ``{"image": uint8, "label"}`` (images); reflow
batches add ``{"source": float}`` and carry the teacher's samples in ``"x"`` (float, model range).
Sample ``i`` starts from ``source(fold_in(noise_key, i))``, so samples do not depend on batching.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import callables, data
from diffusion_jax.flows import couplings, metrics, ode, paths, reflow, toy
from diffusion_jax.recipes import datasets, sampling
from diffusion_jax.recipes.builders import (
    as_config,
    is_image_data,
    network_kwargs,
    pick,
    process_entry,
    process_from_entry,
)
from diffusion_jax.recipes.objectives import drop_labels

__all__ = ["FAMILY", "NETWORKS", "SAMPLERS", "FlowModel", "network_kwargs", "model_entry",
           "model_from_spec", "make_loss_fn", "load_arrays", "generate", "write_samples",
           "evaluate", "validate", "source_points", "write_reflow_pairs", "load_reflow_pairs"]

FAMILY = "flow"
NETWORKS = {}  # the standard networks of builders.NETWORKS
SAMPLERS = (*ode.METHODS, "dopri5")
COUPLINGS = ("independent", "ot", "sinkhorn", "pairs", "teacher")
PATHS = {"deterministic": None, "brownian_bridge": paths.BrownianBridgeNoise,
         "quadratic": paths.QuadraticNoise}
write_samples = sampling.write_samples
PAIRS_FORMAT = "diffusion_jax.reflow_pairs/1"


@dataclasses.dataclass(frozen=True)
class FlowModel:
    """A network as a velocity field in library time: ``v(x, t, cond) = network(x, time_scale
    t, cond)`` with ``t`` broadcast to one value per example."""

    network: Any
    time_scale: float = 1.0

    def __call__(self, x, t, cond=None):
        t = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])
        return self.network(x, self.time_scale * t, cond)


jax.tree_util.register_dataclass(FlowModel, data_fields=["network", "time_scale"], meta_fields=[])


# -- config -> spec -> model --------------------------------------------------------------------


def _sources():
    return ("gaussian", *toy.TOY_SOURCES, *data.TOY_DATASETS)


def model_entry(config) -> dict:
    """``{"process", "time_scale", "source"}``: the path's affine process, the network's time
    scale and the source distribution (validated)."""
    config = as_config(config)
    flow = config.flow
    if flow.source not in _sources():
        raise ValueError(f"unknown flow.source {flow.source!r}; expected one of {list(_sources())}")
    if flow.source != "gaussian" and is_image_data(config):
        raise ValueError(f"flow.source {flow.source!r} is a 2-D set; images need 'gaussian'")
    return {"process": process_entry(config), "time_scale": float(flow.time_scale),
            "source": flow.source}


def model_from_spec(spec, network):
    """``network`` as the spec's :class:`FlowModel` (a jittable pytree)."""
    return FlowModel(network, spec["model"]["time_scale"])


# -- sources ------------------------------------------------------------------------------------


def _one_source_point(name, key, shape):
    if name == "gaussian":
        return jax.random.normal(key, shape)
    return toy.sample_points(name, key, 1)[0]


def source_points(name, key, start, count, shape):
    """Source points ``start .. start+count-1``: row ``i`` is drawn from ``fold_in(key, i)``."""
    return reflow.source_by_index(lambda k: _one_source_point(name, k, tuple(shape)), key,
                                  start + jnp.arange(count))


def _source_batch(name, key, shape):
    if name == "gaussian":
        return jax.random.normal(key, shape)
    return toy.sample_points(name, key, shape[0])


# -- training -----------------------------------------------------------------------------------


def _coupling(config):
    flow = config.flow
    name = flow.coupling
    if name in ("pairs", "independent"):
        return couplings.independent_coupling
    if name == "ot":
        return couplings.make_coupling("ot", num_blocks=flow.num_blocks, solver=flow.ot_solver)
    if name == "sinkhorn":
        return couplings.make_coupling(
            "sinkhorn", epsilon=_sinkhorn_epsilon(flow), num_iters=flow.sinkhorn_iters,
            replace=flow.sample_replace, num_blocks=flow.num_blocks)
    if name == "teacher":
        teacher = _load_teacher(flow.teacher_workdir).denoiser
        method, steps = flow.pair_sampler, flow.pair_num_steps
        return reflow.teacher_coupling(teacher, method=method if method != "dopri5" else "rk4",
                                       num_steps=steps, adaptive=method == "dopri5")
    raise ValueError(f"unknown flow.coupling {name!r}; expected one of {list(COUPLINGS)}")


def _sinkhorn_epsilon(flow):
    epsilon = flow.sinkhorn_epsilon or 2.0 * flow.sigma**2
    if not epsilon > 0:
        raise ValueError("flow.coupling = 'sinkhorn' needs flow.sinkhorn_epsilon > 0 or "
                         "flow.sigma > 0 (epsilon = 2 sigma^2)")
    return epsilon


def _noise_schedule(config, process):
    flow = config.flow
    cls = pick(PATHS, flow.path, "flow.path")
    if cls is None:
        return None
    if not flow.sigma > 0:
        raise ValueError(f"flow.path = {flow.path!r} needs flow.sigma > 0")
    return cls(flow.sigma, process.t_max)


def make_loss_fn(config, wrap):
    """``loss_fn(network, batch, key) -> (batch,)``: draw the source, couple, (label dropout),
    then the interpolant loss of :mod:`diffusion_jax.flows.paths` (or one-step distillation)."""
    config = as_config(config)
    flow = config.flow
    process = process_from_entry(process_entry(config))
    schedule = _noise_schedule(config, process)
    coupling = _coupling(config)
    image = is_image_data(config)
    conditional = bool(config.train.class_conditional)
    condition_aware = flow.condition_aware and flow.coupling in ("ot", "sinkhorn")
    null_class, class_dropout = config.data.num_classes, config.model.class_dropout
    pairs = flow.coupling == "pairs"
    source, t_min, distill = flow.source, flow.t_min, flow.distill

    def loss_fn(network, batch, key):
        data_key, source_key, couple_key, drop_key, loss_key = jax.random.split(key, 5)
        if pairs:
            x, x_source = batch["x"], batch["source"]
        else:
            x = datasets.preprocess(batch, data_key, image=image)
            x_source = _source_batch(source, source_key, x.shape).astype(x.dtype)
        cond = batch["label"] if conditional else None
        if condition_aware:
            x, x_source, cond = coupling(x, x_source, couple_key, cond)
        else:
            x, x_source, _ = coupling(x, x_source, couple_key)
        if conditional:
            cond = drop_labels(cond, drop_key, class_dropout, null_class)
        model = wrap(network)
        if distill:
            return reflow.distillation_loss(model, x, x_source, cond)
        return paths.interpolant_loss(model, x, x_source, loss_key, process=process,
                                      noise_schedule=schedule, cond=cond, t_min=t_min)

    return loss_fn


def load_arrays(config):
    """Training arrays: the torchcfm target sets by name, reflow pairs for ``coupling =
    "pairs"`` (generated first from ``flow.teacher_workdir`` if missing), else the standard data
    path (:func:`diffusion_jax.recipes.datasets.load_arrays`)."""
    config = as_config(config)
    if config.flow.coupling == "pairs":
        directory = _pairs_dir(config.flow)
        if not _pairs_complete(directory):
            if not config.flow.teacher_workdir:
                raise ValueError(f"no complete reflow pairs in {directory!r} and no "
                                 "flow.teacher_workdir to generate them from")
            teacher = _load_teacher(config.flow.teacher_workdir)
            write_reflow_pairs(teacher.denoiser, teacher.config, directory,
                               teacher_id=f"{os.path.abspath(config.flow.teacher_workdir)}"
                                          f"@{teacher.step}",
                               num_pairs=config.flow.num_pairs or 64 * config.train.batch_size,
                               shard_size=config.flow.pair_shard_size, seed=config.train.seed,
                               sampler=config.flow.pair_sampler,
                               num_steps=config.flow.pair_num_steps, progress=True)
        return load_reflow_pairs(directory)
    name = config.data.name
    if name in toy.TOY_SOURCES:
        num = config.data.dataset_size or 65536
        return {"x": np.asarray(toy.sample_points(name, jax.random.key(config.train.seed + 12345),
                                                  num), np.float32)}
    return datasets.load_arrays(config)


# -- sampling -----------------------------------------------------------------------------------


def _check_sampler(sampler):
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown flow sampler {sampler!r}; expected one of {list(SAMPLERS)}")
    return sampler


def _make_solve(sampler, num_steps, t_end, rtol, atol):
    if sampler == "dopri5":
        def solve(model, x, cond):
            return ode.solve_adaptive(model, x, t_end=t_end, cond=cond, rtol=rtol, atol=atol)[0]
    else:
        times = ode.time_grid(num_steps, t_end=t_end)

        def solve(model, x, cond):
            return ode.integrate(model, x, times, method=sampler, cond=cond)
    return callables.filter_jit(solve)


def generate(model, config, *, num_samples, seed, sampler=None, num_steps=None, labels=None,
             options=None, batch_size=None, progress=False, grid=None, guidance_scale=None):
    """``num_samples`` samples (host array, model range) and labels (or ``None``): ``sampler``
    (``euler | midpoint | heun | rk4 | dopri5``, default ``config.sample.sampler``) integrates
    the velocity from the source at ``t = 1`` to ``t = flow.t_end`` on a uniform grid of
    ``num_steps``. ``options``: ``rtol``, ``atol``, ``t_end``. ``grid`` is ignored (flows use a
    uniform time grid); classifier-free guidance is not offered for flows."""
    config = as_config(config)
    flow, sc = config.flow, config.sample
    if guidance_scale:
        raise ValueError("classifier-free guidance is not available for the flow family")
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer; got {num_samples!r}")
    sampler = _check_sampler(sampler or sc.sampler)
    num_steps = sc.num_steps if num_steps is None else num_steps
    options = {"rtol": flow.rtol, "atol": flow.atol, "t_end": flow.t_end, **(options or {})}
    unknown = sorted(set(options) - {"rtol", "atol", "t_end"})
    if unknown:
        raise ValueError(f"flow samplers have no option(s) {unknown}; options: rtol, atol, t_end")
    solve = _make_solve(sampler, num_steps, options["t_end"], options["rtol"], options["atol"])
    labels = sampling.resolve_labels(config, num_samples, labels)
    batch_size = min(batch_size or sc.batch_size, num_samples)
    noise_key = jax.random.split(jax.random.key(seed))[0]
    shape = tuple(config.data.shape)
    starts = range(0, num_samples, batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc=f"sampling {num_samples} ({sampler})", unit="batch",
                      file=sys.stderr, leave=False)
    outputs = []
    for start in starts:
        count = min(batch_size, num_samples - start)
        x_source = source_points(flow.source, noise_key, start, batch_size, shape)
        cond = None
        if labels is not None:
            cond = jnp.asarray(np.resize(labels[start:start + count], batch_size), jnp.int32)
        outputs.append(np.asarray(jax.device_get(solve(model, x_source, cond)))[:count])
    samples = np.concatenate(outputs)
    if not np.all(np.isfinite(samples)):
        print("WARNING: some samples are not finite", file=sys.stderr)
    return samples, labels


# -- evaluation ---------------------------------------------------------------------------------


def evaluate(model, config, *, num_examples, seed, batch_size, progress=False):
    """Straightness and the one-step endpoint gap on ``num_examples`` source draws, and for
    point clouds the exact W2 between the samples (Dopri5 and one Euler step) and as many fresh
    target points plus sliced W2; for images with a feature network (digits) the FID of the
    Dopri5 and the one-step samples against the training split. Floats in a dict."""
    config = as_config(config)
    flow = config.flow
    shape = tuple(config.data.shape)
    key = jax.random.key(seed + 99991)
    x_source = source_points(flow.source, key, 0, num_examples, shape)
    labels = sampling.resolve_labels(config, num_examples)
    cond = None if labels is None else jnp.asarray(labels, jnp.int32)
    adaptive, _ = ode.solve_adaptive(model, x_source, cond=cond, rtol=flow.rtol, atol=flow.atol)
    gap, _ = metrics.endpoint_gap(model, x_source, cond=cond, reference=adaptive)
    straight, _ = metrics.straightness(model, x_source, num_steps=16, method="rk4", cond=cond)
    report = {"endpoint_gap": float(gap), "straightness": float(straight),
              "num_examples": num_examples}
    one_step = ode.integrate(model, x_source, ode.time_grid(1), cond=cond)
    if is_image_data(config):
        report.update(_image_quality(config, {"fid": adaptive, "fid_one_step": one_step},
                                     batch_size, progress))
    else:
        target = flow.target or config.data.name
        reference = np.asarray(toy.sample_points(target, jax.random.key(seed + 31337),
                                                 num_examples))
        report["w2"] = metrics.wasserstein2_exact(adaptive, reference)
        report["w2_one_step"] = metrics.wasserstein2_exact(one_step, reference)
        report["sliced_w2"] = float(metrics.sliced_wasserstein2(adaptive, reference,
                                                                jax.random.key(seed)))
    return report


def _image_quality(config, sample_sets, batch_size, progress):
    """FID of each sample set against the training split, with the data's feature network (the
    bundled digits classifier for digits; nothing for data without one)."""
    from diffusion_jax import metrics as feature_metrics
    from diffusion_jax.recipes import evaluation

    name = evaluation.feature_network_name(config)
    if name is None:
        return {}
    feature_fn = evaluation.feature_function(name)
    images = datasets.load_split(config, config.data.split)["image"]
    reference, _ = evaluation.extract(feature_fn, images, batch_size, progress=progress)
    statistics = feature_metrics.FeatureStatistics().update(reference)
    report = {}
    for key, samples in sample_sets.items():
        inputs = evaluation.as_feature_inputs(np.asarray(samples), True)
        report[key] = evaluation.sample_quality(feature_fn, inputs, statistics, None,
                                                batch_size)["fid"]
    return report


def validate(config):
    """One-line errors for the flow settings before a run starts."""
    config = as_config(config)
    flow = config.flow
    if flow.coupling not in COUPLINGS:
        raise ValueError(f"unknown flow.coupling {flow.coupling!r}; expected one of "
                         f"{list(COUPLINGS)}")
    model_entry(config)
    process = process_from_entry(process_entry(config))
    _noise_schedule(config, process)
    _check_sampler(config.sample.sampler)
    if flow.pair_sampler not in SAMPLERS:
        raise ValueError(f"unknown flow.pair_sampler {flow.pair_sampler!r}; expected one of "
                         f"{list(SAMPLERS)}")
    if flow.coupling == "sinkhorn":
        _sinkhorn_epsilon(flow)
    if flow.ot_solver not in couplings.SOLVERS:
        raise ValueError(f"unknown flow.ot_solver {flow.ot_solver!r}; expected one of "
                         f"{list(couplings.SOLVERS)}")
    if flow.coupling == "teacher" and not flow.teacher_workdir:
        raise ValueError("flow.coupling = 'teacher' needs flow.teacher_workdir")
    if flow.coupling == "pairs" and not (flow.pairs_dir or flow.teacher_workdir):
        raise ValueError("flow.coupling = 'pairs' needs flow.pairs_dir or flow.teacher_workdir")
    if flow.distill and flow.coupling not in ("pairs", "teacher"):
        raise ValueError("flow.distill trains on teacher pairs: set flow.coupling to 'pairs' or "
                         "'teacher'")
    if flow.num_blocks < 1 or config.train.batch_size % flow.num_blocks:
        raise ValueError(f"flow.num_blocks = {flow.num_blocks} must divide train.batch_size = "
                         f"{config.train.batch_size}")
    if not 0.0 <= flow.t_min < 0.5:
        raise ValueError(f"flow.t_min must lie in [0, 0.5); got {flow.t_min}")


# -- reflow pairs on disk -----------------------------------------------------------------------


def _pairs_dir(flow):
    if flow.pairs_dir:
        return flow.pairs_dir
    return os.path.join(flow.teacher_workdir, "reflow_pairs")


def _manifest_path(directory):
    return os.path.join(directory, "manifest.json")


def _shard_path(directory, index):
    return os.path.join(directory, f"shard_{index:05d}.npz")


def _pairs_complete(directory):
    path = _manifest_path(directory)
    if not os.path.isfile(path):
        return False
    with open(path) as handle:
        manifest = json.load(handle)
    return all(os.path.isfile(_shard_path(directory, k)) for k in range(manifest["num_shards"]))


def _load_teacher(workdir):
    """The frozen teacher run (``recipes.load``) of a reflow config."""
    from diffusion_jax.recipes.loading import load

    return load(workdir)


def write_reflow_pairs(teacher, teacher_config, directory, *, num_pairs, shard_size, seed=0,
                       sampler="dopri5", num_steps=32, progress=False, teacher_id=""):
    """Write ``num_pairs`` (source, teacher sample) pairs of the flow model ``teacher`` (with its
    run's config ``teacher_config``; ``teacher_id`` names it in the manifest) to
    ``directory`` in shards of ``shard_size`` (``shard_00000.npz``: ``source``, ``x``,
    ``index`` and ``label`` for class-conditional runs) with a ``manifest.json``. Pair ``i`` is
    deterministic given its index (source from ``fold_in(key(seed), i)``); existing shards are
    kept, so an interrupted generation resumes; a manifest with other settings is an error.
    Each shard is written to a temporary file and renamed (atomic). Returns ``directory``."""
    if not isinstance(num_pairs, int) or num_pairs < 1:
        raise ValueError(f"num_pairs must be a positive int; got {num_pairs!r}")
    if not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"shard_size must be a positive int; got {shard_size!r}")
    config = as_config(teacher_config)
    manifest = {"format": PAIRS_FORMAT, "teacher": teacher_id, "num_pairs": num_pairs, "shard_size": shard_size,
                "num_shards": -(-num_pairs // shard_size), "seed": seed, "sampler": sampler,
                "num_steps": num_steps, "source": config.flow.source,
                "shape": list(config.data.shape)}
    os.makedirs(directory, exist_ok=True)
    path = _manifest_path(directory)
    if os.path.isfile(path):
        with open(path) as handle:
            existing = json.load(handle)
        if existing != manifest:
            changed = sorted(k for k in manifest if existing.get(k) != manifest[k])
            raise ValueError(f"{directory} holds reflow pairs with other settings ({changed}); "
                             "use another flow.pairs_dir")
    else:
        with open(path + ".tmp", "w") as handle:
            json.dump(manifest, handle, indent=1)
        os.replace(path + ".tmp", path)
    _check_sampler(sampler)
    solve = _make_solve(sampler, num_steps, config.flow.t_end, config.flow.rtol, config.flow.atol)
    noise_key = jax.random.split(jax.random.key(seed))[0]
    labels = sampling.resolve_labels(config, num_pairs)
    shards = range(manifest["num_shards"])
    if progress:
        from tqdm import tqdm

        shards = tqdm(shards, desc=f"reflow pairs ({num_pairs})", unit="shard", file=sys.stderr)
    for k in shards:
        target = _shard_path(directory, k)
        if os.path.isfile(target):
            continue
        start = k * shard_size
        count = min(shard_size, num_pairs - start)
        x_source = source_points(config.flow.source, noise_key, start, count,
                                 tuple(config.data.shape))
        cond = None if labels is None else jnp.asarray(labels[start:start + count], jnp.int32)
        arrays = {"source": np.asarray(x_source, np.float32),
                  "x": np.asarray(solve(teacher, x_source, cond), np.float32),
                  "index": np.arange(start, start + count)}
        if cond is not None:
            arrays["label"] = np.asarray(cond)
        with open(target + ".tmp", "wb") as handle:
            np.savez(handle, **arrays)
        os.replace(target + ".tmp", target)
    return directory


def load_reflow_pairs(directory):
    """All pairs of a complete pair directory: ``{"x", "source"[, "label"]}`` host arrays in
    index order (one-line error if shards are missing)."""
    if not _pairs_complete(directory):
        raise ValueError(f"{directory} has no complete set of reflow pairs (manifest.json and "
                         "every shard)")
    return datasets.read_index_shards(directory)

