"""Train a diffusion model: ``python train.py --config configs/digits_edm.py --workdir DIR``.

A thin CLI: it maps the config's names to constructors with the explicit tables below, then runs
the library's pure train step (``diffusion_jax.training``) compiled over a device mesh
(``diffusion_jax.sharding``), checkpointing with ``diffusion_jax.checkpoints``. Override any config
field with ``--config.group.field=value``. Multi-host: pass ``--coordinator_address``,
``--num_processes`` and ``--process_id`` (or set ``JAX_COORDINATOR_ADDRESS``,
``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``); every process runs this same script.

Outputs in ``workdir``: ``checkpoints/`` (Orbax), ``metrics.jsonl``, TensorBoard event files
(``events.out.tfevents.*``), sample grids ``samples/step_XXXXXXX.png``.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import struct
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from ml_collections import ConfigDict, config_flags

from diffusion_jax import (
    checkpoints,
    denoisers,
    losses,
    networks,
    processes,
    schedules,
    sharding,
    training,
)

FLAGS = flags.FLAGS


def define_flags():
    """The CLI's flags (defined only when run as a script, so ``import train`` has no side
    effects and ``sample.py`` can reuse the tables)."""
    config_flags.DEFINE_config_file("config", "configs/digits_edm.py", "Experiment config.")
    flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host).")
    flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
    flags.DEFINE_integer("process_id", None, "This process's index (multi-host).")
    flags.DEFINE_string(
        "compilation_cache_dir",
        os.path.join(os.path.expanduser("~"), ".cache", "diffusion_jax", "xla"),
        "Persistent XLA compilation cache ('' disables it).",
    )

# -- name -> constructor tables (the only place where config strings become objects) ----------

PROCESSES = {
    "edm": lambda c: processes.EDM(sigma_max=c.sigma_max),
    "vp": lambda c: processes.VP(beta_min=c.beta_min, beta_max=c.beta_max),
    "subvp": lambda c: processes.SubVP(beta_min=c.beta_min, beta_max=c.beta_max),
    "ve": lambda c: processes.VE(sigma_min=c.sigma_min, sigma_max=c.sigma_max),
    "cosine": lambda c: processes.Cosine(),
    "rectified_flow": lambda c: processes.RectifiedFlow(),
    "trigflow": lambda c: processes.TrigFlow(sigma_data=c.sigma_data),
}


def _num_classes(config):
    return config.data.num_classes if config.train.class_conditional else None


NETWORKS = {
    "mlp": lambda config, rngs: networks.MLP(
        int(np.prod(config.data.shape)),
        hidden_dim=config.model.hidden_dim,
        num_layers=config.model.num_layers,
        embedding_dim=config.model.embedding_dim,
        embedding=config.model.embedding,
        num_classes=_num_classes(config),
        rngs=rngs,
    ),
    "unet": lambda config, rngs: networks.UNet(
        image_shape=tuple(config.data.shape),
        base_channels=config.model.base_channels,
        channel_multipliers=tuple(config.model.channel_multipliers),
        num_res_blocks=config.model.num_res_blocks,
        attention_resolutions=tuple(config.model.attention_resolutions),
        dropout=config.model.dropout,
        embedding=config.model.embedding,
        num_classes=_num_classes(config),
        rngs=rngs,
    ),
}

PRECONDITIONINGS = {
    "edm": lambda config: denoisers.EDMPreconditioning(sigma_data=config.model.sigma_data),
    "vp": lambda config: denoisers.VPPreconditioning(
        beta_min=config.process.beta_min, beta_max=config.process.beta_max
    ),
    "ve": lambda config: denoisers.VEPreconditioning(),
}

T_DISTRIBUTIONS = {
    "log_normal": lambda c: schedules.LogNormalSigma(p_mean=c.p_mean, p_std=c.p_std),
    "uniform": lambda c: schedules.UniformTime(t_min=c.t_min),
    "logit_normal": lambda c: schedules.LogitNormalTime(mean=c.p_mean, std=c.p_std),
}

WEIGHTINGS = {
    "edm": lambda config: schedules.EDMWeighting(sigma_data=config.model.sigma_data),
    "x0": lambda config: schedules.X0MSE(),
    "epsilon": lambda config: schedules.EpsilonMSE(),
    "v": lambda config: schedules.VMSE(),
    "flow_matching": lambda config: schedules.FlowMatchingWeighting(),
    "min_snr": lambda config: schedules.MinSNR(gamma=config.loss.gamma),
    "soft_min_snr": lambda config: schedules.SoftMinSNR(gamma=config.loss.gamma),
    "likelihood": lambda config: schedules.LikelihoodWeighting(),
}

COMPUTE_DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}


def _pick(table, name, what):
    if name not in table:
        raise ValueError(f"unknown {what} {name!r}; expected one of {sorted(table)}")
    return table[name]


def as_config(config) -> ConfigDict:
    """A ``ConfigDict`` view of a config (restored checkpoints store it as a plain dict)."""
    return config if isinstance(config, ConfigDict) else ConfigDict(config)


def build_process(config):
    """The forward process named by ``config.process.name``."""
    config = as_config(config)
    return _pick(PROCESSES, config.process.name, "process")(config.process)


def build_model(config, *, seed=None):
    """``(network, wrap)``: the NNX network of ``config.model`` and ``wrap(network) -> denoiser``
    (preconditioned, or a :class:`ProcessDenoiser` for ``preconditioning = "process"``)."""
    config = as_config(config)
    seed = config.train.seed if seed is None else seed
    rngs = training_rngs(seed)
    network = _pick(NETWORKS, config.model.network, "network")(config, rngs)
    if config.model.preconditioning == "process":
        process = build_process(config)

        def wrap(net):
            return denoisers.ProcessDenoiser(
                net, process, config.model.parameterisation, config.model.time_scale
            )

    else:
        preconditioning = _pick(
            PRECONDITIONINGS, config.model.preconditioning, "preconditioning"
        )(config)

        def wrap(net):
            return denoisers.PreconditionedDenoiser(net, preconditioning)

    return network, wrap


def training_rngs(seed):
    """Flax NNX RNG streams for initialisation (``params``) and dropout."""
    from flax import nnx

    return nnx.Rngs(params=seed, dropout=seed + 1)


def _training_model(config, wrap, process):
    """``(model(x_t, t, cond), prediction)`` for the loss: the network itself in process time
    (``preconditioning = "process"``), else the VE denoiser as an x0 model (``ProcessModel``)."""
    if config.model.preconditioning == "process":
        scale = config.model.time_scale
        return (
            lambda net: (lambda x_t, t, cond=None: net(x_t, scale * t, cond)),
            config.model.parameterisation,
        )
    return (lambda net: denoisers.ProcessModel(wrap(net), process)), "x0"


def is_image_data(config) -> bool:
    """Images travel as uint8 ``image`` (dequantised on device); toy data as float ``x``."""
    return len(tuple(config.data.shape)) == 3


def preprocess(batch, key, *, image: bool, random_flip: bool = False):
    """Model-range float data: uniform dequantisation ``(x_uint8 + U[0,1)) / 256`` then
    ``[0, 1) -> [-1, 1]`` for images (Theis et al. 2016; Ho et al. 2020), with optional random
    horizontal flips (Song et al. 2021, App. H); toy data as is."""
    if not image:
        return batch["x"]
    from diffusion_jax import data

    dequant_key, flip_key = jax.random.split(key)
    x = data.to_model_range(data.dequantize(batch["image"], dequant_key))
    if random_flip:
        flip = jax.random.bernoulli(flip_key, 0.5, (x.shape[0], 1, 1, 1))
        x = jnp.where(flip, x[:, :, ::-1, :], x)
    return x


def make_loss_fn(config, wrap):
    """``loss_fn(network, batch, key) -> (batch,)`` from ``config.loss`` (explicit keywords into
    ``diffusion_jax.losses``), with label dropout for classifier-free guidance."""
    process = build_process(config)
    make_model, prediction = _training_model(config, wrap, process)
    image = is_image_data(config)
    random_flip = bool(config.data.random_flip)
    conditional = bool(config.train.class_conditional)
    null_class = config.data.num_classes
    class_dropout = config.model.class_dropout
    loss_name = config.loss.name
    if loss_name not in ("denoising", "flow_matching"):
        raise ValueError(f"unknown loss {loss_name!r}; expected 'denoising' or 'flow_matching'")
    t_distribution = _pick(T_DISTRIBUTIONS, config.loss.t_distribution, "t_distribution")(
        config.loss
    )
    weighting = _pick(WEIGHTINGS, config.loss.weighting, "weighting")(config)
    stratification = config.loss.stratification

    def loss_fn(network, batch, key):
        data_key, drop_key, loss_key = jax.random.split(key, 3)
        x0 = preprocess(batch, data_key, image=image, random_flip=random_flip)
        cond = None
        if conditional:
            labels = batch["label"]
            drop = jax.random.bernoulli(drop_key, class_dropout, labels.shape)
            cond = jnp.where(drop, null_class, labels)
        model = make_model(network)
        if loss_name == "flow_matching":
            return losses.flow_matching_loss(
                model, x0, loss_key, process=process, t_distribution=t_distribution, cond=cond,
                stratification=stratification,
            )
        return losses.denoising_loss(
            model, x0, loss_key, process=process, prediction=prediction,
            t_distribution=t_distribution, weighting=weighting, cond=cond,
            stratification=stratification,
        )

    return loss_fn


def ema_schedules(config):
    """Name -> decay(step) for every EMA of ``config.train`` (half-lives in images, EDM App. F.1;
    fixed decays)."""
    train = config.train
    schedules_ = {}
    for half_life in train.ema_half_lives:
        schedules_[f"half_life_{half_life:g}"] = training.ema_half_life(
            half_life, train.batch_size, train.ema_rampup_ratio or None
        )
    for decay in train.ema_decays:
        schedules_[f"decay_{decay:g}"] = training.ema_constant(decay)
    return schedules_


# -- data ---------------------------------------------------------------------------------------


def load_arrays(config):
    """The training set as host arrays: ``{"image": uint8, "label": int32}`` or ``{"x": float}``."""
    from diffusion_jax import data

    name = config.data.name
    if name in data.TOY_DATASETS:
        num = config.data.dataset_size or 65536
        points = data.sample_toy(name, jax.random.key(config.train.seed + 12345), num)
        return {"x": np.asarray(points, np.float32)}
    if name == "digits":
        images, labels = data.load_digits(config.data.split)
    else:
        if not config.data.data_dir:
            raise ValueError(
                f"dataset {name!r} is read from a local TFDS directory: set "
                "--config.data.data_dir=DIR (prepare it with `tfds build "
                f"{name} --data_dir DIR` on a machine with network access)"
            )
        images, labels = data.load_tfds(
            name, config.data.split, data_dir=config.data.data_dir,
            image_size=config.data.image_size or None,
            label_key="label" if config.data.num_classes else None,
            # multi-host: each process reads only its shard of the examples
            process_index=jax.process_index(), process_count=jax.process_count(),
        )
    images = np.asarray(images, np.uint8)
    if images.shape[1:] != tuple(config.data.shape):
        raise ValueError(f"dataset images have shape {images.shape[1:]}, config.data.shape is "
                         f"{tuple(config.data.shape)}")
    arrays = {"image": images}
    if labels is not None:
        arrays["label"] = np.asarray(labels, np.int32)
    return arrays


# -- logging: JSONL and TensorBoard event files ------------------------------------------------


def _crc32c_table():
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc32c_table()


def _masked_crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint((number << 3) | 2) + _varint(len(payload)) + payload


class EventWriter:
    """Scalars as TensorBoard event files (TFRecord-framed ``Event`` protos written by hand:
    ``Event{wall_time=1, step=2, file_version=3, summary=5}``, ``Summary.Value{tag=1,
    simple_value=2}``), so no TensorFlow/TensorBoard import is needed to log."""

    def __init__(self, directory):
        os.makedirs(directory, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}"
        self._file = open(os.path.join(directory, name), "ab")
        self._write(struct.pack("<Bd", 0x09, time.time()) + _field(3, b"brain.Event:2"))

    def _write(self, event: bytes):
        header = struct.pack("<Q", len(event))
        self._file.write(header + struct.pack("<I", _masked_crc32c(header)))
        self._file.write(event + struct.pack("<I", _masked_crc32c(event)))

    def scalars(self, step: int, values: dict):
        """Write one ``simple_value`` summary per entry of ``values`` at ``step``."""
        summary = b"".join(
            _field(1, _field(1, tag.encode()) + struct.pack("<Bf", 0x15, float(value)))
            for tag, value in values.items()
        )
        event = struct.pack("<Bd", 0x09, time.time()) + bytes([0x10]) + _varint(step)
        self._write(event + _field(5, summary))
        self._file.flush()

    def close(self):
        """Close the file."""
        self._file.close()


# -- sampling during training -------------------------------------------------------------------


def sample_grid(denoiser, config, *, num_samples, seed):
    """Samples of ``config.sample`` from ``denoiser`` (see ``sample.py``), as a host array."""
    import sample as sample_cli

    samples, _ = sample_cli.generate(denoiser, config, num_samples=num_samples, seed=seed)
    return samples


def write_samples(samples, config, path):
    """A PNG grid of images, or a scatter plot of 2-D points."""
    from diffusion_jax import data

    os.makedirs(os.path.dirname(path), exist_ok=True)
    if is_image_data(config):
        data.save_image_grid(samples, path)
    else:
        data.scatter_png(samples, path)


# -- the training run ---------------------------------------------------------------------------


class _StopRequest:
    """Records SIGTERM/SIGINT so the loop can save and stop cleanly."""

    def __init__(self):
        self.signal = None

    def __call__(self, signum, frame):
        if self.signal is not None:  # second signal: stop immediately
            raise KeyboardInterrupt
        self.signal = signum
        print(f"\nreceived signal {signum}; saving a checkpoint and stopping", flush=True)


def validate_config(config):
    """Clear errors for settings the run cannot use."""
    train = config.train
    if train.num_steps < 1:
        raise ValueError(f"train.num_steps must be >= 1; got {train.num_steps}")
    if train.steps_per_call < 1:
        raise ValueError(f"train.steps_per_call must be >= 1; got {train.steps_per_call}")
    for every in ("log_every", "checkpoint_every"):
        value = getattr(train, every)
        if value < 1 or value % train.steps_per_call:
            raise ValueError(
                f"train.{every} = {value} must be a positive multiple of steps_per_call = "
                f"{train.steps_per_call}"
            )
    _pick(COMPUTE_DTYPES, train.compute_dtype, "compute_dtype")
    if train.class_conditional and config.data.num_classes < 1:
        raise ValueError("train.class_conditional needs data.num_classes > 0")
    if not (train.ema_half_lives or train.ema_decays):
        raise ValueError("configure at least one EMA (train.ema_half_lives or train.ema_decays)")


def initialize_distributed(address=None, num_processes=None, process_id=None):
    """One ``jax.distributed.initialize()`` path: arguments (flags) first, then the
    ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID`` environment; CPU
    processes use gloo collectives."""
    address = address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if not address:
        return
    num = num_processes or int(os.environ["JAX_NUM_PROCESSES"])
    pid = process_id if process_id is not None else int(os.environ["JAX_PROCESS_ID"])
    if jax.default_backend() == "cpu" or os.environ.get("JAX_PLATFORMS", "") == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=address, num_processes=num, process_id=pid)


def _is_primary():
    return jax.process_index() == 0


def _format_eta(seconds):
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def train(config, workdir):
    """Run (or resume) training of ``config`` in ``workdir``; returns the final host metrics."""
    validate_config(config)
    os.makedirs(workdir, exist_ok=True)
    tc = config.train
    mesh = sharding.make_mesh(tc.mesh_data, tc.mesh_model)
    local_batch = sharding.check_batch_size(tc.batch_size, mesh)
    arrays = load_arrays(config)

    network, wrap = build_model(config)
    optimizer, lr_schedule = training.make_optimizer(
        learning_rate=config.optim.learning_rate,
        warmup_steps=config.optim.warmup_steps,
        total_steps=tc.num_steps,
        decay=config.optim.decay,
        b1=config.optim.b1,
        b2=config.optim.b2,
        eps=config.optim.eps,
        weight_decay=config.optim.weight_decay,
        grad_clip_norm=config.optim.grad_clip_norm or None,
    )
    emas = ema_schedules(config)
    state, parts = training.create_train_state(
        network, optimizer, key=jax.random.key(tc.seed), ema_names=tuple(emas)
    )
    state_sharding = sharding.state_shardings(state, mesh)
    manager = checkpoints.make_manager(workdir, max_to_keep=tc.max_to_keep)
    config_dict = config.to_dict()
    if manager.latest_step() is not None:
        state, _ = checkpoints.restore_train_state(manager, state, shardings=state_sharding)
        print(f"resumed from step {int(state.step)} in {workdir}", flush=True)
    state = sharding.place_state(state, state_sharding)
    start_step = int(state.step)

    step_fn = training.make_train_step(
        parts,
        make_loss_fn(config, wrap),
        optimizer,
        ema_decays=emas,
        learning_rate=lr_schedule,
        compute_dtype=COMPUTE_DTYPES[tc.compute_dtype],
        steps_per_call=tc.steps_per_call,
    )
    stacked = tc.steps_per_call > 1
    data_sharding = sharding.batch_sharding(mesh, stacked=stacked)
    compiled = sharding.compile_train_step(step_fn, state_sharding, data_sharding)

    from diffusion_jax import data

    if config.data.name in data.TOY_DATASETS or config.data.name == "digits":
        # every process holds the (small) whole set and takes its rows of each global batch
        batches = data.make_batch_iterator(
            arrays, global_batch_size=tc.batch_size, seed=tc.seed, start_step=start_step
        )
    else:
        # every process holds only its shard of a TFDS set and batches it on its own
        batches = data.make_batch_iterator(
            arrays, global_batch_size=local_batch, seed=tc.seed + 7919 * jax.process_index(),
            process_index=0, process_count=1, start_step=start_step,
        )

    stop = _StopRequest()
    previous_handlers = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    writer = EventWriter(workdir) if _is_primary() else None
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    pending = []  # (step, device metrics) not yet checked on the host
    last = {}
    step = start_step
    window_start, window_step = time.time(), step
    run_start = time.time()

    def flush_metrics():
        """Fetch pending metrics; raise on a non-finite loss (before anything is saved)."""
        nonlocal last
        if not pending:
            return
        fetched = jax.device_get([m for _, m in pending])
        rows = []
        for (first_step, _), values in zip(pending, fetched, strict=True):
            values = {k: np.atleast_1d(np.asarray(v, np.float64)) for k, v in values.items()}
            for i in range(len(values["loss"])):
                row = {k: float(v[i]) for k, v in values.items()}
                row["step"] = first_step + i + 1
                if not math.isfinite(row["loss"]):
                    pending.clear()
                    raise FloatingPointError(
                        f"non-finite loss {row['loss']} at step {row['step']}; training stopped. "
                        f"The last good checkpoint in {workdir} is kept (step "
                        f"{manager.latest_step()}); lower optim.learning_rate or check the data."
                    )
                rows.append(row)
        pending.clear()
        last = rows[-1]
        if _is_primary():
            with open(metrics_path, "a") as f:
                for row in rows:
                    f.write(json.dumps(row) + "\n")
            for row in rows[-1:]:
                writer.scalars(row["step"], {k: v for k, v in row.items() if k != "step"})

    def save(force=False):
        flush_metrics()
        if manager.latest_step() == int(state.step):
            return
        checkpoints.save(manager, state, config_dict, force=force)

    def write_grid(at_step):
        if jax.process_count() > 1:  # sample after training with sample.py on one host
            return
        denoiser = wrap(training.merge_network(parts, state.ema[next(iter(emas))], state.buffers))
        samples = sample_grid(denoiser, config, num_samples=tc.num_grid_samples, seed=tc.seed)
        if _is_primary():
            path = os.path.join(workdir, "samples", f"step_{at_step:07d}.png")
            write_samples(samples, config, path)
            print(f"wrote {path}", flush=True)

    try:
        while step < tc.num_steps and stop.signal is None:
            if stacked:
                host = training.stack_batches([next(batches) for _ in range(tc.steps_per_call)])
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
                window_start, window_step = now, step
                if _is_primary():
                    eta = _format_eta((tc.num_steps - step) / max(rate, 1e-9))
                    print(
                        f"step {step:>7d}/{tc.num_steps}  loss {last['loss']:.4f}  "
                        f"{rate:6.2f} steps/s  {rate * tc.batch_size:8.1f} examples/s  "
                        f"eta {eta}",
                        flush=True,
                    )
            if step % tc.checkpoint_every == 0:
                save()
            if tc.sample_every and step % tc.sample_every == 0 and step < tc.num_steps:
                flush_metrics()
                write_grid(step)
        save(force=True)
        manager.wait_until_finished()
        if stop.signal is None:
            write_grid(step)
    finally:
        manager.wait_until_finished()
        manager.close()
        if writer is not None:
            writer.close()
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)
    elapsed = time.time() - run_start
    if _is_primary():
        print(f"done: step {step}, final loss {last.get('loss', float('nan')):.4f}, "
              f"{elapsed:.1f} s", flush=True)
    return last


def quiet_libraries():
    """Orbax logs every save at INFO; show warnings and errors only unless --verbosity is set."""
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)


def configure_jax(cache_dir):
    """Persistent compilation cache (CPU too) so that a restarted CLI skips recompiling."""
    if cache_dir:
        jax.config.update("jax_compilation_cache_dir", cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.workdir:
        raise app.UsageError("--workdir is required")
    quiet_libraries()
    configure_jax(FLAGS.compilation_cache_dir)
    initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    try:
        train(FLAGS.config, FLAGS.workdir)
    except (FloatingPointError, ValueError, FileNotFoundError, checkpoints.CheckpointError) as e:
        logging.error("%s", e)
        print(f"ERROR: {e}", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    define_flags()
    app.run(main)
