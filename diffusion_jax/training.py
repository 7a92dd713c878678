"""Training state, optimiser, EMA and the pure train step.

The train step is a pure function ``step(state, batch) -> (state, metrics)`` of a
:class:`TrainState` pytree; it knows nothing of devices (``diffusion_jax.sharding`` compiles it
over a mesh) and nothing of diffusion: it minimises the mean of any per-example loss
``loss_fn(network, batch, key) -> (batch,)`` (e.g. ``diffusion_jax.losses.denoising_loss`` around a
preconditioned network). Randomness is ``fold_in(state.key, state.step)``, so an interrupted and
resumed run draws the same noise as an uninterrupted one.

The network is a Flax NNX module, split once into a static graph definition and three states:
trainable ``nnx.Param`` leaves (``state.params``, optimised and averaged), other variables such as
fixed Fourier frequencies (``state.buffers``, carried unchanged), and RNG streams (dropout; reseeded
from the step key inside the step, never carried).

For the families beyond plain denoising (consistency training, distillation, latent models):

- **Several trained networks**: give :func:`create_train_state` a mapping ``{name: module}``; the
  parts, ``state.params``, ``state.buffers`` and every ``state.ema[ema_name]`` are then dicts by
  network name, one optimizer updates them all (``optax.multi_transform`` with labels
  ``{name: name}`` gives each its own), and the loss receives ``{name: module}``.
- **EMA and frozen networks in the loss**: with ``make_train_step(..., with_context=True)`` the loss
  is ``loss_fn(network, batch, key, context)`` and reads a :class:`LossContext`: the EMA networks,
  the online network under ``stop_gradient`` and a frozen pytree (a teacher) passed to the step as
  ``step(state, batch, frozen)``, which is never differentiated, never updated, never part of the
  state (so neither optimised nor checkpointed).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from diffusion_jax.networks.wrappers import reseed_rng_streams

__all__ = [
    "TrainState",
    "NetworkParts",
    "split_network",
    "merge_network",
    "make_optimizer",
    "learning_rate_schedule",
    "ema_constant",
    "ema_half_life",
    "ema_power",
    "ema_update",
    "create_train_state",
    "CastNetwork",
    "LossContext",
    "make_loss_and_grad",
    "make_train_step",
    "stack_batches",
]


# -- state ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrainState:
    """Everything a training run carries from step to step (a pytree; all fields are leaves).

    ``step``: int32 scalar. ``params``: trainable ``nnx.Param`` state (a dict by network name when
    several networks are trained). ``buffers``: the networks' other non-RNG variables (not
    trained; same layout). ``opt_state``: optax state. ``ema``: dict name -> params averaged with
    that name's decay (the layout of ``params``: one average per trained network). ``key``: typed
    base key; step ``k`` uses ``fold_in(key, k)``. A frozen teacher is not part of the state.
    """

    step: jax.Array
    params: Any
    buffers: Any
    opt_state: Any
    ema: dict
    key: jax.Array

    def replace(self, **changes):
        """A copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)


jax.tree_util.register_dataclass(
    TrainState,
    data_fields=["step", "params", "buffers", "opt_state", "ema", "key"],
    meta_fields=[],
)


@dataclasses.dataclass(frozen=True)
class NetworkParts:
    """An NNX network split into graph definition, params, buffers and RNG state (Flax NNX
    ``nnx.split`` with filters ``Param``, ``RngState``, ``...``)."""

    graphdef: Any
    params: Any
    rng_state: Any
    buffers: Any


def split_network(network):
    """Split an NNX module into :class:`NetworkParts` (Flax NNX ``nnx.split``); a mapping
    ``{name: module}`` gives ``{name: NetworkParts}`` (names in sorted order)."""
    if isinstance(network, Mapping):
        if not network or not all(isinstance(name, str) for name in network):
            raise ValueError(f"networks must be a non-empty mapping name -> module; got {network!r}")
        return {name: split_network(network[name]) for name in sorted(network)}
    if not isinstance(network, nnx.Module):
        raise ValueError(f"network must be a Flax NNX module; got {type(network).__name__}")
    graphdef, params, rng_state, buffers = nnx.split(network, nnx.Param, nnx.RngState, ...)
    return NetworkParts(graphdef, params, rng_state, buffers)


def _per_network(fn, parts, *trees):
    """``fn(parts, *trees)`` for one network, or ``{name: fn(parts[name], *trees[name])}``."""
    if isinstance(parts, NetworkParts):
        return fn(parts, *trees)
    return {name: fn(part, *(tree[name] for tree in trees)) for name, part in parts.items()}


def _network_keys(parts, key):
    """The dropout key of each network: ``key`` itself for one, ``fold_in(key, i)`` for the
    ``i``-th of several."""
    if isinstance(parts, NetworkParts):
        return key
    return {
        name: None if key is None else jax.random.fold_in(key, i) for i, name in enumerate(parts)
    }


def merge_network(parts, params=None, buffers=None, *, train=False, key=None):
    """Rebuild the module from its parts (Flax NNX ``nnx.merge``), optionally with other params.

    ``train=True`` puts it in training mode (dropout active) with every RNG stream reseeded from
    ``key`` (:func:`diffusion_jax.networks.wrappers.reseed_rng_streams`); otherwise it is in
    evaluation mode (deterministic). For parts of several networks (a dict by name) ``params`` and
    ``buffers`` are dicts too and the result is ``{name: module}``.
    """
    params = _per_network(lambda part: part.params, parts) if params is None else params
    buffers = _per_network(lambda part: part.buffers, parts) if buffers is None else buffers
    return _per_network(
        lambda part, p, b, k: _merge_one(part, p, b, train=train, key=k),
        parts, params, buffers, _network_keys(parts, key),
    )


def _merge_one(parts: NetworkParts, params, buffers, *, train, key):
    network = nnx.merge(parts.graphdef, params, parts.rng_state, buffers, copy=True)
    if train:
        network.train()
        reseed_rng_streams(network, key)
    else:
        network.eval()
    return network


# -- optimiser --------------------------------------------------------------------------------


def learning_rate_schedule(
    *, learning_rate: float, warmup_steps: int = 0, total_steps: int | None = None, decay="constant"
):
    """Linear warm-up (Goyal et al. 2017, Sec. 2.2) then constant or cosine decay
    (Loshchilov & Hutter 2017, SGDR eq. 5) to 0 at ``total_steps``."""
    if learning_rate <= 0 or not math.isfinite(learning_rate):
        raise ValueError(f"learning_rate must be positive and finite; got {learning_rate}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0; got {warmup_steps}")
    if decay == "constant":
        main = optax.constant_schedule(learning_rate)
    elif decay == "cosine":
        if total_steps is None or total_steps <= warmup_steps:
            raise ValueError(
                f"cosine decay needs total_steps > warmup_steps; got {total_steps}, {warmup_steps}"
            )
        main = optax.cosine_decay_schedule(learning_rate, total_steps - warmup_steps)
    else:
        raise ValueError(f"unknown learning-rate decay {decay!r}; expected 'constant' or 'cosine'")
    if warmup_steps == 0:
        return main
    warmup = optax.linear_schedule(learning_rate / warmup_steps, learning_rate, warmup_steps)
    return optax.join_schedules([warmup, main], [warmup_steps])


def make_optimizer(
    *,
    learning_rate: float,
    warmup_steps: int = 0,
    total_steps: int | None = None,
    decay: str = "constant",
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    grad_clip_norm: float | None = 1.0,
):
    """Adam(W) (Kingma & Ba 2015; Loshchilov & Hutter 2019) with global-norm gradient clipping
    (Pascanu et al. 2013) and the warm-up/decay of :func:`learning_rate_schedule`.

    Returns ``(optimizer, schedule)``.
    """
    schedule = learning_rate_schedule(
        learning_rate=learning_rate,
        warmup_steps=warmup_steps,
        total_steps=total_steps,
        decay=decay,
    )
    parts = []
    if grad_clip_norm is not None:
        if grad_clip_norm <= 0:
            raise ValueError(f"grad_clip_norm must be positive or None; got {grad_clip_norm}")
        parts.append(optax.clip_by_global_norm(grad_clip_norm))
    parts.append(optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay))
    return optax.chain(*parts), schedule


# -- exponential moving averages --------------------------------------------------------------


def ema_constant(decay: float) -> Callable:
    """Fixed EMA decay ``beta`` per step (Polyak & Juditsky 1992; Song & Ermon 2020, Sec. 4.4)."""
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"EMA decay must be in [0, 1); got {decay}")
    return lambda step: jnp.asarray(decay, jnp.float32)


def ema_half_life(half_life_images: float, batch_size: int, rampup_ratio: float | None = None):
    """EMA with a half-life in training images, ``beta = 0.5 ** (batch / half_life)``, optionally
    capped at ``rampup_ratio * images_seen`` early on (Karras et al. 2022, EDM App. F.1:
    ``ema_halflife_kimg``, ``ema_rampup_ratio``)."""
    if half_life_images <= 0:
        raise ValueError(f"EMA half-life must be positive; got {half_life_images}")

    def decay(step):
        half_life = jnp.asarray(half_life_images, jnp.float32)
        if rampup_ratio is not None:
            images_seen = (step + 1).astype(jnp.float32) * batch_size
            half_life = jnp.minimum(half_life, images_seen * rampup_ratio)
        return 0.5 ** (batch_size / jnp.maximum(half_life, 1e-8))

    return decay


def ema_power(gamma: float) -> Callable:
    """Power-function EMA ``beta_t = (1 - 1/t)^(gamma + 1)`` at update ``t = step + 1``
    (Karras et al. 2024, EDM2, eq. 2-3); ``sigma_rel = (gamma+1)^0.5 (gamma+2)^-1 (gamma+3)^-0.5``.
    """
    if gamma <= 0:
        raise ValueError(f"power EMA needs gamma > 0; got {gamma}")
    return lambda step: (1.0 - 1.0 / (step + 1).astype(jnp.float32)) ** (gamma + 1.0)


def ema_update(ema_params, params, decay):
    """``ema <- beta ema + (1 - beta) params`` leaf by leaf (Polyak averaging), through optax's
    ``incremental_update(a, b, s) = s a + (1 - s) b`` with ``a = ema``, ``s = beta``: this operand
    order is the formula's, so jitted runs keep their bits (``optax.tree.update_moment`` and
    ``incremental_update(params, ema, 1 - beta)`` order the products the other way, which XLA
    fuses into different multiply-adds: up to 1 ulp apart under ``jit``)."""
    return optax.incremental_update(ema_params, params, decay)


def create_train_state(network, optimizer, *, key, ema_names=()):
    """Initial :class:`TrainState` and :class:`NetworkParts` of ``network`` (EMAs start at params).

    ``network`` is an NNX module, or a mapping ``{name: module}`` of networks trained together
    (the parts and the state's ``params``, ``buffers`` and each EMA are then dicts by name).
    ``key`` must be a typed key (``jax.random.key``).
    """
    if not jnp.issubdtype(jnp.asarray(key).dtype, jax.dtypes.prng_key):
        raise ValueError("key must be a typed key from jax.random.key(seed)")
    parts = split_network(network)
    params = _per_network(lambda part: part.params, parts)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        buffers=_per_network(lambda part: part.buffers, parts),
        opt_state=optimizer.init(params),
        ema={name: jax.tree.map(jnp.copy, params) for name in ema_names},
        key=key,
    )
    return state, parts


# -- loss and gradient ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CastNetwork:
    """Mixed precision: run ``network`` in ``dtype`` (e.g. bfloat16) on inputs cast to it and
    return float32 (Micikevicius et al. 2018, "Mixed precision training"; state stays float32)."""

    network: Any
    dtype: Any

    def __call__(self, x, c_noise, cond=None, c_noise_to=None):
        x, c_noise = x.astype(self.dtype), jnp.asarray(c_noise).astype(self.dtype)
        if c_noise_to is None:
            output = self.network(x, c_noise, cond)
        else:
            c_noise_to = jnp.asarray(c_noise_to).astype(self.dtype)
            output = self.network(x, c_noise, cond, c_noise_to=c_noise_to)
        return output.astype(jnp.float32)


jax.tree_util.register_dataclass(CastNetwork, data_fields=["network"], meta_fields=["dtype"])


@dataclasses.dataclass(frozen=True)
class LossContext:
    """What a loss ``loss_fn(network, batch, key, context)`` reads beside its own network
    (``make_train_step(..., with_context=True)``). None of it is differentiated or updated.

    ``step``: the step being taken (int32 scalar; for curricula such as consistency training's
    discretisation schedule). ``ema``: dict EMA name -> network(s) with that EMA's parameters (the
    kind of the loss's first argument: a module, or ``{name: module}``). ``detached``: the online
    network(s) with ``stop_gradient`` parameters, the target ``theta^- = sg(theta)`` of improved
    consistency training (Song & Dhariwal 2023, Sec. 3.2). Both run in training mode with the same
    dropout key as the online network, so dropout masks agree between student and target (as
    openai/consistency_models restores the RNG state before its target network; call
    ``.eval()`` on one for a deterministic target). ``frozen``: the pytree passed to the step as
    ``step(state, batch, frozen)`` (e.g. a distillation teacher), unchanged.
    """

    step: Any
    ema: dict
    detached: Any
    frozen: Any


def make_loss_and_grad(parts, loss_fn: Callable, *, compute_dtype=None, with_context=False):
    """``fn(params, buffers, batch, key, *, ema=None, frozen=None, step=None) -> (mean loss,
    grads)`` for a per-example ``loss_fn(network, batch, key)`` (the gradient of the minibatch mean
    with respect to ``params`` only; Robbins & Monro 1951).

    With ``with_context`` the loss is ``loss_fn(network, batch, key, context)`` with a
    :class:`LossContext` built from ``ema`` (dict name -> params), ``frozen`` and ``step``. With
    ``compute_dtype`` the networks run in that dtype via :class:`CastNetwork` while the gradient is
    taken with respect to the float32 params (``frozen`` is passed as given).
    """

    def build(params, buffers, key):
        if compute_dtype is not None:
            params = optax.tree.cast(params, compute_dtype)
        network = merge_network(parts, params, buffers, train=True, key=key)
        if compute_dtype is None:
            return network
        if isinstance(parts, NetworkParts):
            return CastNetwork(network, compute_dtype)
        return {name: CastNetwork(net, compute_dtype) for name, net in network.items()}

    def mean_loss(params, buffers, batch, key, *, ema=None, frozen=None, step=None):
        network_key, loss_key = jax.random.split(key)
        network = build(params, buffers, network_key)
        if with_context:
            context = LossContext(
                step=step,
                ema={name: build(e, buffers, network_key) for name, e in (ema or {}).items()},
                detached=build(jax.lax.stop_gradient(params), buffers, network_key),
                frozen=frozen,
            )
            losses = loss_fn(network, batch, loss_key, context)
        elif frozen is not None or ema is not None:
            raise ValueError(
                "an EMA or frozen pytree reaches the loss only with with_context=True "
                "(loss_fn(network, batch, key, context))"
            )
        else:
            losses = loss_fn(network, batch, loss_key)
        if losses.ndim != 1:
            raise ValueError(f"loss_fn must return per-example losses (batch,); got {losses.shape}")
        return jnp.mean(losses.astype(jnp.float32))

    return jax.value_and_grad(mean_loss)


def make_train_step(
    parts,
    loss_fn: Callable,
    optimizer,
    *,
    ema_decays: Mapping[str, Callable] | None = None,
    learning_rate=None,
    compute_dtype=None,
    steps_per_call: int = 1,
    with_context: bool = False,
):
    """Pure ``step(state, batch, frozen=None) -> (state, metrics)``: one optimiser update on the
    minibatch mean of ``loss_fn`` and an EMA update per entry of ``ema_decays`` (name ->
    decay(step)) of every trained network.

    ``parts`` are those of :func:`create_train_state` (one network, or a dict by name). With
    ``with_context`` the loss is ``loss_fn(network, batch, key, context)`` reading a
    :class:`LossContext` (EMA networks, the stop-gradient online network, and ``frozen``: any
    pytree of arrays, such as a teacher module, passed to every call and never differentiated,
    updated or stored in the state). With ``steps_per_call > 1`` the batch carries a leading axis
    of that length (see :func:`stack_batches`) and the steps run unrolled in one dispatch
    (score_sde's ``n_jitted_steps``; compile time grows with the count); metrics then have that
    leading axis. ``learning_rate`` (a
    schedule) only adds the current rate to the metrics. Metrics: ``loss``, ``grad_norm``,
    ``learning_rate``.
    """
    ema_decays = dict(ema_decays or {})
    if steps_per_call < 1:
        raise ValueError(f"steps_per_call must be >= 1; got {steps_per_call}")
    loss_and_grad = make_loss_and_grad(
        parts, loss_fn, compute_dtype=compute_dtype, with_context=with_context
    )

    def single_step(state: TrainState, batch, frozen=None):
        key = jax.random.fold_in(state.key, state.step)
        context = {"ema": state.ema, "step": state.step} if with_context else {}
        loss, grads = loss_and_grad(
            state.params, state.buffers, batch, key, frozen=frozen, **context
        )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        if set(state.ema) != set(ema_decays):
            raise ValueError(
                f"state EMA names {sorted(state.ema)} != ema_decays names {sorted(ema_decays)}"
            )
        ema = {
            name: ema_update(state.ema[name], params, decay(state.step))
            for name, decay in ema_decays.items()
        }
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
        if learning_rate is not None:
            metrics["learning_rate"] = jnp.asarray(learning_rate(state.step), jnp.float32)
        new_state = state.replace(
            step=state.step + 1, params=params, opt_state=opt_state, ema=ema
        )
        return new_state, metrics

    if steps_per_call == 1:
        return single_step

    def multi_step(state: TrainState, batches, frozen=None):
        # Unrolled, not a lax.scan: on XLA:CPU convolutions and their gradients inside a while
        # loop run several times slower (measured 10.7x per step for the digits U-Net).
        all_metrics = []
        for index in range(steps_per_call):
            batch = jax.tree.map(lambda leaf, index=index: leaf[index], batches)
            state, metrics = single_step(state, batch, frozen)
            all_metrics.append(metrics)
        return state, jax.tree.map(lambda *values: jnp.stack(values), *all_metrics)

    return multi_step


def stack_batches(batches):
    """Stack a list of batch dicts along a new leading axis (input of a multi-step call)."""
    if not batches:
        raise ValueError("stack_batches needs at least one batch")
    return jax.tree.map(lambda *xs: np.stack(xs), *batches)
