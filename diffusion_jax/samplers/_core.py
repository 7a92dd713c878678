"""Shared pieces of every sampler: input validation, the denoiser call and the scan driver.

Validation follows the contract of :mod:`diffusion_jax.samplers`: ``noise`` is unit Gaussian with
a batch axis, ``sigmas`` is a 1-D descending grid ending in 0. Concrete values are checked eagerly;
traced values (inside ``jit``) cannot be inspected, only their shapes are checked there, and
:func:`diffusion_jax.samplers.checked` adds the value checks through ``checkify``.
"""

from __future__ import annotations

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.processes import _broadcast_like

# Options that are non-negative numbers wherever a sampler accepts them.
NONNEGATIVE_OPTIONS = ("eta", "s_churn", "s_noise", "s_tmin", "s_tmax", "snr")
# A noise RMS outside this range is not unit Gaussian (k-diffusion-style ``randn * sigma_max``).
_NOISE_RMS_RANGE = (0.1, 3.0)


def _is_concrete(value):
    return not isinstance(value, jax.core.Tracer)


def check_inputs(noise, sigmas):
    """Validate ``noise`` and ``sigmas``; return them as arrays of one floating dtype."""
    noise = jnp.asarray(noise)
    if noise.ndim < 2:
        raise ValueError(
            f"noise must have a batch axis and at least one data axis; got shape {noise.shape}"
        )
    if not jnp.issubdtype(noise.dtype, jnp.floating):
        raise ValueError(f"noise must be a floating-point array; got dtype {noise.dtype}")
    sigmas = jnp.asarray(sigmas)
    if sigmas.ndim != 1:
        raise ValueError(f"sigmas must be a 1-D grid; got shape {sigmas.shape}")
    if sigmas.shape[0] < 2:
        raise ValueError(f"sigmas needs at least 2 values (one step); got {sigmas.shape[0]}")
    sigmas = sigmas.astype(noise.dtype)
    check_grid_values(sigmas)
    warn_if_not_unit(noise)
    return noise, sigmas


def check_grid_values(sigmas):
    """Raise ``ValueError`` for a concrete grid with NaN/inf, not ending in 0, not descending, or
    with a positive value below the dtype's smallest normal number (subnormal)."""
    if not _is_concrete(sigmas):
        return
    values = np.asarray(sigmas, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise ValueError(f"sigmas must be finite (no NaN or inf); got {values}")
    if values[-1] != 0.0:
        raise ValueError(f"sigmas must end in 0; the last value is {values[-1]}")
    if not np.all(np.diff(values) < 0):
        raise ValueError(f"sigmas must be strictly descending; got {values}")
    tiny = float(jnp.finfo(sigmas.dtype).tiny)
    if values[-2] < tiny:
        raise ValueError(
            f"sigmas above 0 must be at least {tiny:.3g} (the smallest normal {sigmas.dtype}); "
            f"got {values[-2]:.3g}"
        )


def warn_if_not_unit(noise):
    """Warn when concrete ``noise`` is clearly not unit Gaussian (its RMS far from 1)."""
    if not _is_concrete(noise) or noise.size < 8:
        return
    rms = float(np.sqrt(np.mean(np.square(np.asarray(noise, np.float64)))))
    low, high = _NOISE_RMS_RANGE
    if not low <= rms <= high:
        warnings.warn(
            f"noise has RMS {rms:.3g}: samplers take UNIT Gaussian noise and scale it by "
            "sigmas[0] themselves (do not pass randn * sigma_max)",
            stacklevel=3,
        )


def check_key(key, sampler):
    """A stochastic sampler needs a typed PRNG key (``jax.random.key``)."""
    if key is None:
        raise ValueError(f"{sampler} is stochastic: pass key=jax.random.key(seed)")
    if not jnp.issubdtype(jnp.asarray(key).dtype, jax.dtypes.prng_key):
        raise ValueError(
            f"{sampler} needs a typed key from jax.random.key(seed); got dtype {jnp.asarray(key).dtype}"
        )
    return key


def check_order(order, allowed, sampler):
    """Raise ``ValueError`` unless ``order`` is one of ``allowed``."""
    if order not in allowed:
        raise ValueError(f"{sampler}: order must be one of {tuple(allowed)}; got {order!r}")
    return order


def check_nonnegative(sampler, **options):
    """Raise ``ValueError`` for a concrete option that is negative or NaN (``inf`` is allowed only
    for ``s_tmax``)."""
    for name, value in options.items():
        if not _is_concrete(value):
            continue
        number = float(np.asarray(value))
        finite_or_tmax = math.isfinite(number) or (name == "s_tmax" and number == math.inf)
        if not (number >= 0.0 and finite_or_tmax):
            raise ValueError(f"{sampler}: {name} must be a finite number >= 0; got {value!r}")


def checked_denoiser(denoiser):
    """``denoiser`` with its output checked to have the input's shape and cast to its dtype, so
    a wrong shape raises instead of broadcasting."""

    def checked(x, sigma, cond=None):
        x0_hat = denoiser(x, sigma, cond)
        if jnp.shape(x0_hat) != x.shape:
            raise ValueError(
                f"denoiser returned shape {jnp.shape(x0_hat)} for input shape {x.shape}"
            )
        return jnp.asarray(x0_hat).astype(x.dtype)

    return checked


def denoise(denoiser, x, sigma, cond):
    """``x0_hat = denoiser(x, sigma, cond)`` with a shape check and ``x``'s dtype."""
    return checked_denoiser(denoiser)(x, sigma, cond)


def step_noise(key, index, x):
    """Unit Gaussian noise of ``x``'s shape for step ``index`` (``fold_in(key, index)``)."""
    return jax.random.normal(jax.random.fold_in(key, index), x.shape, x.dtype)


def safe_sqrt(value):
    """``sqrt(max(value, 0))`` with a zero (not NaN) gradient at 0."""
    positive = value > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, value, 1.0)), 0.0)


def expand(coefficient, x):
    """Broadcast a scalar or per-example coefficient against ``x``."""
    return _broadcast_like(coefficient, x)


def report(callback, index, sigma, sigma_next, x, x0_hat):
    """Call ``callback({"i", "sigma", "sigma_next", "x", "x0_hat"})`` at run time (through
    ``jax.debug.callback``, so it works under ``jit``, ``vmap`` and ``grad``); ``x`` is the state
    at ``sigma`` before the step, ``x0_hat`` the denoiser output the step used there (``None``
    where the sampler has none)."""
    if callback is None:
        return

    def call(index, sigma, sigma_next, x, x0_hat=None):
        callback(
            {"i": int(index), "sigma": sigma, "sigma_next": sigma_next, "x": x, "x0_hat": x0_hat}
        )

    arrays = (index, sigma, sigma_next, x) + (() if x0_hat is None else (x0_hat,))
    jax.debug.callback(call, *arrays)


def final_denoise(denoiser, carry, sigma, index, cond):
    """The first-order step to ``sigma = 0``: ``x0 = D(x, sigma_{N-1})`` (for ``carry[0] = x``)."""
    del index
    x0 = denoiser(carry[0], sigma, cond)
    return x0, x0


# The scan stays rolled by default on every backend: unrolling makes compile time grow with the
# number of steps, which plain sampling would pay for nothing. On XLA:CPU a convolution's gradient
# inside a rolled scan runs off the fast path (85x slower per step than unrolled for one 3x3
# conv); differentiate through a copy from ``networks.with_fast_conv_gradients`` (as
# ``grid_learning`` does), or pass ``unroll=True``.
DEFAULT_UNROLL = 1


def check_scan_options(unroll, checkpoint):
    """Validate the scan options of :func:`integrate`; a one-line ``ValueError`` otherwise."""
    valid_unroll = unroll is None or unroll is True or (
        isinstance(unroll, int) and not isinstance(unroll, bool) and unroll >= 1
    )
    if not valid_unroll:
        raise ValueError(f"unroll must be None, True or an int >= 1; got {unroll!r}")
    if not (isinstance(checkpoint, bool) or callable(checkpoint)):
        raise ValueError(
            "checkpoint must be True, False or a jax.checkpoint_policies policy; "
            f"got {checkpoint!r}"
        )
    return unroll, checkpoint


def sample(
    step,
    denoiser,
    noise,
    sigmas,
    *,
    cond,
    callback,
    return_trajectory,
    carry_rest=(),
    per_step=(),
    warmup=None,
    final=final_denoise,
    unroll=None,
    checkpoint=False,
):
    """Check the inputs, start at ``noise * sigmas[0]`` and :func:`integrate` to 0.

    ``step(denoiser, carry, inputs, cond)`` and ``final(denoiser, carry, sigma, index, cond)``
    (default :func:`final_denoise`) as in :func:`integrate`, with ``carry = (x_start, *(part(
    x_start, sigmas) for part in carry_rest))`` and ``per_step`` a tuple of functions
    ``num_interior -> array``. ``warmup(denoiser, carry, sigmas, cond) -> (carry, x0_hat)``, when
    given, takes the first step in place of ``step`` on grids of more than one step.
    ``unroll`` and ``checkpoint``: see :func:`integrate`.
    """
    unroll, checkpoint = check_scan_options(unroll, checkpoint)
    noise, sigmas = check_inputs(noise, sigmas)
    denoiser = checked_denoiser(denoiser)
    x_start = noise * sigmas[0]
    carry = (x_start,) + tuple(part(x_start, sigmas) for part in carry_rest)
    num_interior = sigmas.shape[0] - 2
    first, before = 0, ()
    if warmup is not None and num_interior >= 1:
        carry, x0_hat = warmup(denoiser, carry, sigmas, cond)
        report(callback, 0, sigmas[0], sigmas[1], x_start, x0_hat)
        first, before = 1, (carry[0],)
    return integrate(
        lambda carry, inputs: step(denoiser, carry, inputs, cond),
        carry,
        sigmas,
        lambda carry, sigma, index: final(denoiser, carry, sigma, index, cond),
        per_step=tuple(values(num_interior) for values in per_step),
        first=first,
        before=before,
        x_start=x_start,
        callback=callback,
        return_trajectory=return_trajectory,
        unroll=unroll,
        checkpoint=checkpoint,
    )


def integrate(
    step,
    carry,
    sigmas,
    final,
    *,
    per_step=(),
    first=0,
    before=(),
    x_start=None,
    callback=None,
    return_trajectory=False,
    unroll=None,
    checkpoint=False,
):
    """The one scan driver: run ``step`` over the steps that end above 0, then ``final`` for the
    step to 0, and assemble the result.

    * ``carry`` is a tuple whose first element is the state ``x``.
    * ``step(carry, (sigma, sigma_next, index, *per_step)) -> (carry, x0_hat)`` for the steps
      ``index = first .. N - 2``; ``per_step`` are arrays of length ``N - 1`` indexed by step.
    * ``final(carry, sigma_{N-1}, N - 1) -> (x0, x0_hat)``.
    * ``before``: the states of the ``first`` steps taken before the scan (warm-up), for the
      trajectory.
    * ``unroll``: steps per scan iteration (``jax.lax.scan``'s ``unroll``; ``True`` unrolls all);
      ``None`` is :data:`DEFAULT_UNROLL` (rolled; for gradients on CPU see the comment above
      it). Only speed changes, not the result.
    * ``checkpoint``: rematerialise each step under reverse-mode differentiation
      (``jax.checkpoint`` around the step body; Griewank & Walther 2000, "Revolve"; Chen et al.
      2016): the backward pass keeps only the carry of every step and recomputes the step's
      activations, so gradient memory stays bounded as the number of steps grows, for one extra
      forward pass of the step. ``True`` saves nothing inside the step; a
      ``jax.checkpoint_policies`` policy chooses what to keep. No effect without ``grad``.

    Returns ``x0`` or ``(x0, trajectory)`` with ``trajectory`` of shape ``(N + 1, *x.shape)``.
    """
    num_steps = sigmas.shape[0] - 1
    inputs = (sigmas[first:-2], sigmas[first + 1 : -1], jnp.arange(first, num_steps - 1))
    inputs = inputs + tuple(values[first:] for values in per_step)

    unroll, checkpoint = check_scan_options(unroll, checkpoint)
    unroll = DEFAULT_UNROLL if unroll is None else unroll
    if checkpoint is not False:
        # A rolled scan already keeps XLA from merging the recomputation with the forward pass;
        # unrolled steps may be inlined, so then the barrier is needed. (``unroll is True``
        # must be tested by identity: ``True == 1``.)
        rolled = unroll is not True and unroll == 1
        step = jax.checkpoint(step, prevent_cse=not rolled,
                              policy=None if checkpoint is True else checkpoint)

    def body(carry, inputs):
        new_carry, x0_hat = step(carry, inputs)
        report(callback, inputs[2], inputs[0], inputs[1], carry[0], x0_hat)
        return new_carry, new_carry[0] if return_trajectory else None

    carry, states = jax.lax.scan(body, carry, inputs, unroll=unroll)
    x0, x0_hat = final(carry, sigmas[-2], num_steps - 1)
    report(callback, num_steps - 1, sigmas[-2], sigmas[-1], carry[0], x0_hat)
    if not return_trajectory:
        return x0
    pieces = [x_start[None], *(state[None] for state in before), states, x0[None]]
    return x0, jnp.concatenate(pieces, axis=0)
