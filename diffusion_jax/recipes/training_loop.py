"""The training run of a config: build, resume, loop, log, checkpoint, sample, stop on a signal.

Outputs in ``workdir``: ``checkpoints/`` (Orbax, with the config and the model spec in every
step), ``metrics.jsonl``, TensorBoard event files (scalars and sample grids), sample grids
``samples/step_XXXXXXX.png``, ``config_changes.jsonl`` when a resumed run changed its config.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any

import jax
import numpy as np

from diffusion_jax import callables, checkpoints, data, posthoc_ema, runlock, sharding, training
from diffusion_jax.recipes import runtime
from diffusion_jax.recipes.builders import COMPUTE_DTYPES, as_config, build_model, model_spec
from diffusion_jax.recipes.config_check import check_resume_config, validate_config
from diffusion_jax.recipes.datasets import is_whole_dataset_on_every_host, load_arrays
from diffusion_jax.recipes.families import family_module
from diffusion_jax.recipes.objectives import ema_schedules, posthoc_ema_gammas
from diffusion_jax.recipes.writers import MetricWriter

__all__ = ["TrainExtras", "TrainResult", "check_workdir", "train"]


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """How a run ended: the last logged metrics, the step reached, and whether a signal stopped
    it before ``train.num_steps`` (resume by running the same command again)."""

    metrics: dict
    step: int
    stopped: bool


@dataclasses.dataclass(frozen=True)
class TrainExtras:
    """What a family's optional ``train_extras(config)`` hook adds to the train step.

    ``with_context``: the family's loss is ``loss_fn(network, batch, key, context)`` reading a
    :class:`diffusion_jax.training.LossContext` (step, EMA networks, the stop-gradient online
    network, ``frozen``). ``frozen``: any pytree (a distillation teacher, a codec) passed to every
    step, replicated over the mesh, never differentiated, updated or checkpointed; ``None`` when
    the loss needs none. ``emas``: name -> ``decay(step)`` of extra parameter averages the loss
    reads as ``context.ema[name]`` (a consistency target, a stage teacher), kept after the
    config's own (so ``load(ema="first")`` is unchanged). ``initialise``: ``fn(network) -> None``
    setting the new network's weights in place before the state is made (a student starting from
    its teacher; a resumed run restores over it).
    """

    with_context: bool = False
    frozen: Any = None
    emas: Any = None
    initialise: Any = None


def train_extras(family, config) -> TrainExtras:
    """The family's :class:`TrainExtras` (``family.train_extras(config)``; none by default)."""
    hook = getattr(family, "train_extras", None)
    extras = hook(config) if hook is not None else TrainExtras()
    if not isinstance(extras, TrainExtras):
        raise TypeError(f"{family.__name__}.train_extras must return a TrainExtras; got "
                        f"{type(extras).__name__}")
    if extras.frozen is not None and not extras.with_context:
        raise ValueError(f"{family.__name__}.train_extras gives a frozen pytree but "
                         "with_context=False: the loss could not read it")
    return extras


def _compile_step(step_fn, state_sharding, data_sharding, mesh, frozen):
    """``step(state, batch)`` compiled over the mesh; a frozen pytree is split once into its
    arrays (placed replicated, an argument of every call) and its static rest (merged inside)."""
    if frozen is None:
        return sharding.compile_train_step(step_fn, state_sharding, data_sharding)
    arrays, static = callables.split(frozen)

    def step_with_frozen(state, batch, frozen_arrays):
        return step_fn(state, batch, callables.merge(frozen_arrays, static))

    placed = sharding.place_state(arrays, sharding.state_shardings(arrays, mesh))
    compiled = sharding.compile_train_step(step_with_frozen, state_sharding, data_sharding,
                                           frozen_sharding=sharding.replicated(mesh))
    return lambda state, batch: compiled(state, batch, placed)


def check_workdir(workdir):
    """Create ``workdir`` if needed; one-line errors for a path that is a file, lies under a file
    or is not writable."""
    workdir = os.path.abspath(os.fspath(workdir))
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ValueError(f"--workdir {workdir} is a file, not a directory")
    parent = workdir
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"--workdir {workdir} lies under {parent}, which is a file")
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as error:
        raise ValueError(f"cannot create --workdir {workdir}: {error.strerror}") from None
    if not os.access(workdir, os.W_OK | os.X_OK):
        raise ValueError(f"--workdir {workdir} is not writable")
    return workdir


def _format_eta(seconds):
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _make_optimizer(config):
    optim = config.optim
    return training.make_optimizer(
        learning_rate=optim.learning_rate,
        warmup_steps=optim.warmup_steps,
        total_steps=config.train.num_steps,
        decay=optim.decay,
        b1=optim.b1,
        b2=optim.b2,
        eps=optim.eps,
        weight_decay=optim.weight_decay,
        grad_clip_norm=optim.grad_clip_norm or None,
    )


def _batch_iterator(config, arrays, local_batch, start_step):
    tc = config.train
    if is_whole_dataset_on_every_host(config):
        # every process holds the (small) whole set and takes its rows of each global batch
        return data.make_batch_iterator(
            arrays, global_batch_size=tc.batch_size, seed=tc.seed, start_step=start_step
        )
    # every process holds only its shard of a TFDS set and batches it on its own
    return data.make_batch_iterator(
        arrays, global_batch_size=local_batch, seed=tc.seed + 7919 * jax.process_index(),
        process_index=0, process_count=1, start_step=start_step,
    )


def _metric_rows(pending, fetched):
    """Host rows ``{"step", **metrics}`` of the pending device metrics (stacked or not)."""
    rows = []
    for (first_step, _), values in zip(pending, fetched, strict=True):
        values = {k: np.atleast_1d(np.asarray(v, np.float64)) for k, v in values.items()}
        for i in range(len(values["loss"])):
            row = {k: float(v[i]) for k, v in values.items()}
            row["step"] = first_step + i + 1
            rows.append(row)
    return rows


def train(config, workdir, *, allow_config_change: bool = False) -> TrainResult:
    """Run (or resume) training of ``config`` in ``workdir``, holding the run's lock (process 0
    of a multi-host run) so that a second run on the same directory fails at once."""
    config = as_config(config)
    validate_config(config)
    workdir = check_workdir(workdir)
    with runlock.RunLock(workdir, primary=runtime.is_primary()):
        return _train_locked(config, workdir, allow_config_change)


def _train_locked(config, workdir, allow_config_change):
    tc = config.train
    family = family_module(config)
    primary = runtime.is_primary()
    mesh = sharding.make_mesh(tc.mesh_data, tc.mesh_model)
    local_batch = sharding.check_batch_size(tc.batch_size, mesh)

    extras = train_extras(family, config)
    network, wrap = build_model(config)
    if extras.initialise is not None:
        extras.initialise(network)
    optimizer, lr_schedule = _make_optimizer(config)
    emas = ema_schedules(config)
    clash = sorted(set(emas) & set(extras.emas or {}))
    if clash:
        raise ValueError(f"{family.__name__}.train_extras EMA names {clash} clash with the "
                         "config's")
    emas.update(extras.emas or {})
    state, parts = training.create_train_state(
        network, optimizer, key=jax.random.key(tc.seed), ema_names=tuple(emas)
    )
    state_sharding = sharding.state_shardings(state, mesh)
    config_dict = config.to_dict()
    spec = model_spec(config)
    manager = checkpoints.make_manager(workdir, max_to_keep=tc.max_to_keep)
    try:
        if manager.latest_step() is not None:
            # compare the stored config before touching the arrays: one line naming the fields
            stored = checkpoints.restore_config(workdir)
            if primary:
                check_resume_config(workdir, stored, config_dict,
                                    allow_change=allow_config_change)
            state, _ = checkpoints.restore_train_state(manager, state, shardings=state_sharding)
            print(f"resumed from step {int(state.step)} in {workdir}", flush=True)
        arrays = (family.load_arrays or load_arrays)(config)
    except BaseException:
        manager.close()  # restore_train_state closes it when it raises; closing twice is safe
        raise
    state = sharding.place_state(state, state_sharding)
    start_step = int(state.step)
    writer = MetricWriter(workdir, enabled=primary)
    if start_step >= tc.num_steps:
        manager.close()
        previous = writer.last_row() or {}
        writer.close()
        loss = previous.get("loss")
        print(f"already finished: step {start_step} of {tc.num_steps}"
              + (f", final loss {loss:.4f}" if loss is not None else "")
              + " (raise --config.train.num_steps to train longer)", flush=True)
        return TrainResult(metrics=previous, step=start_step, stopped=False)

    step_fn = training.make_train_step(
        parts,
        family.make_loss_fn(config, wrap),
        optimizer,
        ema_decays=emas,
        learning_rate=lr_schedule,
        compute_dtype=COMPUTE_DTYPES[tc.compute_dtype],
        steps_per_call=tc.steps_per_call,
        with_context=extras.with_context,
    )
    stacked = tc.steps_per_call > 1
    data_sharding = sharding.batch_sharding(mesh, stacked=stacked)
    compiled = _compile_step(step_fn, state_sharding, data_sharding, mesh, extras.frozen)
    batches = _batch_iterator(config, arrays, local_batch, start_step)

    pending = []  # (step, device metrics) not yet checked on the host
    last = {}
    step = start_step
    run_start = time.time()

    def flush_metrics():
        """Fetch pending metrics; raise on a non-finite loss (before anything is saved)."""
        nonlocal last
        if not pending:
            return
        rows = _metric_rows(pending, jax.device_get([m for _, m in pending]))
        pending.clear()
        for row in rows:
            if not math.isfinite(row["loss"]):
                raise FloatingPointError(
                    f"non-finite loss {row['loss']} at step {row['step']}; training stopped. "
                    f"The last good checkpoint in {workdir} is kept (step "
                    f"{manager.latest_step()}); lower optim.learning_rate or check the data."
                )
        last = rows[-1]
        writer.rows(rows)

    def save(force=False):
        flush_metrics()
        checkpoints.save(manager, state, config_dict, spec=spec, force=force)

    posthoc = posthoc_ema_gammas(config)

    def save_posthoc_snapshot(at_step):
        """The power EMAs after ``at_step`` updates to workdir/posthoc_ema (EDM2 Sec. 3.1)."""
        from jax.experimental import multihost_utils

        flush_metrics()  # a non-finite loss raises before anything is saved
        trees = [multihost_utils.process_allgather(state.ema[n], tiled=True) for n in posthoc]
        if primary:
            posthoc_ema.save_snapshot(os.path.join(workdir, "posthoc_ema"), at_step,
                                      list(posthoc.values()), trees)

    def ema_model():
        return wrap(training.merge_network(parts, state.ema[next(iter(emas))], state.buffers))

    def write_grid(at_step):
        if jax.process_count() > 1:  # sample after training with sample.py on one host
            return
        print(f"sampling a grid of {tc.num_grid_samples} at step {at_step} ...", flush=True)
        samples, _ = family.generate(ema_model(), config, num_samples=tc.num_grid_samples,
                                     seed=tc.seed)
        if primary:
            path = os.path.join(workdir, "samples", f"step_{at_step:07d}.png")
            picture = family.write_samples(samples, config, path)
            if picture is not None:
                writer.image(at_step, "samples", picture)
            print(f"wrote {path}", flush=True)

    def evaluate(at_step):
        if jax.process_count() > 1:
            return
        if family.FAMILY == "gaussian":
            from diffusion_jax.recipes.evaluation import evaluate_samples

            quality = evaluate_samples(
                ema_model(), config, num_samples=tc.eval_num_samples, seed=tc.seed,
                reference_dir=os.path.join(workdir, "eval"),
            )
            keep = ("fid", "kid_mean", "precision", "recall")
        else:
            quality = family.evaluate(ema_model(), config, num_examples=tc.eval_num_samples,
                                      seed=tc.seed, batch_size=tc.batch_size)
            keep = tuple(k for k, v in quality.items() if isinstance(v, float))
        if isinstance(quality, dict):
            scores = {f"eval/{k}": v for k, v in quality.items() if k in keep}
            writer.scalars(at_step, scores)
            print(f"step {at_step:>7d}  " + "  ".join(f"{k[5:]} {v:.4g}"
                                                       for k, v in scores.items()), flush=True)

    print(f"compiling the train step ({type(network).__name__}, batch {tc.batch_size}, "
          f"{len(jax.devices())} device(s)) ...", flush=True)
    window_start, window_step = time.time(), step
    stop = runtime.StopRequest()
    try:
        with stop:
            while step < tc.num_steps and stop.signal is None:
                if stacked:
                    host = training.stack_batches(
                        [next(batches) for _ in range(tc.steps_per_call)]
                    )
                else:
                    host = next(batches)
                batch = sharding.shard_batch(host, data_sharding)
                state, metrics = compiled(state, batch)
                pending.append((step, metrics))
                step += tc.steps_per_call
                if step % tc.log_every == 0 or step >= tc.num_steps:
                    flush_metrics()
                    now = time.time()
                    rate = (step - window_step) / max(now - window_start, 1e-9)
                    if primary:
                        eta = _format_eta((tc.num_steps - step) / max(rate, 1e-9))
                        print(
                            f"step {step:>7d}/{tc.num_steps}  loss {last['loss']:.4f}  "
                            f"{rate:6.2f} steps/s  {rate * tc.batch_size:8.1f} examples/s  "
                            f"eta {eta}",
                            flush=True,
                        )
                    window_start, window_step = time.time(), step
                if step % tc.checkpoint_every == 0:
                    save()
                if posthoc and step % tc.posthoc_ema_every == 0:
                    save_posthoc_snapshot(step)
                extra = False
                if tc.sample_every and step % tc.sample_every == 0 and step < tc.num_steps:
                    flush_metrics()
                    write_grid(step)
                    extra = True
                if tc.eval_every and step % tc.eval_every == 0:
                    flush_metrics()
                    evaluate(step)
                    extra = True
                if extra:  # sampling time does not count in steps/s or the ETA
                    window_start, window_step = time.time(), step
            save(force=True)
            manager.wait_until_finished()
        stopped = stop.signal is not None and step < tc.num_steps
        if not stopped:
            write_grid(step)
    finally:
        manager.wait_until_finished()
        manager.close()
        writer.close()
    elapsed = time.time() - run_start
    if primary:
        loss = last.get("loss")
        summary = f"final loss {loss:.4f}" if loss is not None else "no step logged"
        if stopped:
            print(f"stopped at step {step} of {tc.num_steps} ({summary}, {elapsed:.1f} s); "
                  f"the checkpoint is saved: run the same command to resume", flush=True)
        else:
            print(f"done: step {step}, {summary}, {elapsed:.1f} s", flush=True)
    return TrainResult(metrics=last, step=step, stopped=stopped)
