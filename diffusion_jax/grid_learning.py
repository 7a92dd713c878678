"""Learned sampling grids: the sigma grid of a deterministic sampler optimised for a fixed NFE.

* :func:`learn_grid` (LD3, Tong et al. 2025, "Learning to discretize denoising diffusion ODEs",
  ICLR): gradient descent *through the sampler* on the grid, against a teacher endpoint from the
  same noise (the global truncation error, their eq. 6), with the soft teacher forcing of their
  eq. 7: the student starts from a point of the ball ``||noise' - noise|| <= radius * ||noise||``
  around the teacher's noise, a per-example variable optimised with the grid (projected
  gradient), which keeps the objective from overfitting a small training set.
* :func:`gits_grid` (GITS, Chen et al. 2024, "On the trajectory regularity of ODE-based diffusion
  sampling", ICML, Sec. 4 / Alg. 1): the grid with the smallest sum of local (one Euler / DDIM
  step) errors along teacher trajectories, by dynamic programming over a fine grid; cheap (one
  denoiser evaluation per fine level) and good at very low NFE.

The grid is monotone and ends in 0 by construction (:func:`grid_from_logits`): the levels are
``log sigma_max`` minus the cumulative softmax of free logits times the log range, so every
logit vector is a valid grid and gradients never leave the feasible set. ``sigma_max`` is fixed;
``sigma_{N-1}`` (the level of the final step to 0) is ``sigma_min`` or, with ``sigma_floor``,
learned in ``(sigma_floor, sigma_max)``.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from diffusion_jax.callables import filter_jit
from diffusion_jax.denoisers import probability_flow_derivative
from diffusion_jax.networks.conv import with_fast_conv_gradients
from diffusion_jax.samplers import get as get_sampler
from diffusion_jax.samplers.diffrax_solvers import (
    check_batched_float,
    checked_denoise,
    solve_probability_flow,
    split_vector_field,
)
from diffusion_jax.samplers.grids import karras_levels, karras_sigmas

__all__ = [
    "LearnedGrid",
    "grid_from_logits",
    "logits_from_grid",
    "check_grid_length",
    "deterministic_sampler",
    "adaptive_teacher",
    "sampler_teacher",
    "endpoint_rms",
    "learn_grid",
    "teacher_trajectory",
    "gits_grid",
]


@dataclasses.dataclass(frozen=True)
class LearnedGrid:
    """Result of :func:`learn_grid` / :func:`gits_grid`.

    ``sigmas``: the grid (``num_steps + 1`` values ending in 0, a NumPy array); ``method``:
    ``"ld3"`` or ``"gits"``; ``rms_before`` / ``rms_after``: RMS endpoint error against the teacher
    on the training noises with the initial and the learned grid; ``loss_history``: the training
    objective per iteration (LD3); ``num_teacher_solves``: teacher endpoints (or trajectories)
    computed; ``wall_time_s``: learning time (teacher included); ``settings``: the options.
    """

    sigmas: np.ndarray
    method: str
    sampler: str
    num_steps: int
    rms_before: float
    rms_after: float
    loss_history: tuple
    num_teacher_solves: int
    wall_time_s: float
    settings: dict


# -- the monotone parameterisation ------------------------------------------------------------


def _log_range(sigma_max, sigma_min, sigma_floor):
    low = sigma_min if sigma_floor is None else sigma_floor
    if not 0.0 < float(low) < float(sigma_max) < float("inf"):
        raise ValueError(f"need 0 < {'sigma_floor' if sigma_floor is not None else 'sigma_min'} "
                         f"< sigma_max < inf; got {low}, {sigma_max}")
    return jnp.log(jnp.asarray(sigma_max)), jnp.log(jnp.asarray(low))


def num_logits(num_steps, sigma_floor=None):
    """Free logits of a grid of ``num_steps`` steps: ``N - 1`` log-sigma increments between
    ``sigma_max`` and ``sigma_min``, plus one (the gap below ``sigma_{N-1}``) with ``sigma_floor``."""
    return num_steps - 1 + (0 if sigma_floor is None else 1)


# Share of the log range spread evenly over the increments, so every level is strictly below
# the one before (a softmax alone underflows to equal levels for logits far apart).
_EVEN_SHARE = 1e-3


def _weights(logits):
    """Increment weights: ``(1 - e) softmax(logits) + e / K`` (positive, summing to 1)."""
    count = logits.shape[0]
    return (1.0 - _EVEN_SHARE) * jax.nn.softmax(logits) + _EVEN_SHARE / max(count, 1)


def grid_from_logits(logits, sigma_max, sigma_min, sigma_floor=None):
    """The grid ``sigma_0 = sigma_max > ... > sigma_{N-1} > sigma_N = 0`` of free ``logits``
    (LD3's monotone parameterisation, Tong et al. 2025, Sec. 3.2, in log sigma):
    ``log sigma_i = log sigma_max + F_i (log low - log sigma_max)`` with ``F`` the cumulative
    sum of the weights ``(1 - e) softmax(logits) + e / K`` (``e = 1e-3``, so the levels are
    strictly descending even for logits far apart) and ``low = sigma_min`` (``sigma_{N-1} = sigma_min`` exactly, ``N - 1``
    logits) or ``low = sigma_floor`` (``sigma_{N-1}`` free above it, ``N`` logits; the last
    softmax weight is the gap below ``sigma_{N-1}``). Monotone and ending in 0 for every value.
    """
    logits = jnp.asarray(logits)
    if logits.ndim != 1:
        raise ValueError(f"logits must be 1-D; got shape {logits.shape}")
    log_high, log_low = _log_range(sigma_max, sigma_min, sigma_floor)
    dtype = jnp.result_type(logits.dtype, float)
    log_high, log_low = log_high.astype(dtype), log_low.astype(dtype)
    fractions = jnp.cumsum(_weights(logits.astype(dtype)))
    if sigma_floor is None:  # interior levels, then sigma_min exactly
        inner = log_high + fractions[:-1] * (log_low - log_high)
        ends = [log_high[None], inner] + ([log_low[None]] if logits.shape[0] else [])
    else:  # the last weight is the gap below sigma_{N-1}
        ends = [log_high[None], log_high + fractions[:-1] * (log_low - log_high)]
    levels = jnp.exp(jnp.concatenate(ends))
    return jnp.concatenate([levels, jnp.zeros((1,), dtype)])


def logits_from_grid(sigmas, sigma_floor=None):
    """Logits whose :func:`grid_from_logits` is ``sigmas`` (with ``sigma_max = sigmas[0]``,
    ``sigma_min = sigmas[-2]``): the logs of the log-sigma increments' weights less the even
    share (softmax is invariant to a shift); increments below the even share are clipped to it."""
    levels = np.asarray(sigmas, np.float64)[:-1]
    if levels.size < 1 or not np.all(np.diff(levels) < 0) or levels[-1] <= 0:
        raise ValueError(f"sigmas must descend to a positive level before the final 0; got {sigmas}")
    gaps = -np.diff(np.log(levels))
    if sigma_floor is not None:
        if not 0.0 < sigma_floor < levels[-1]:
            raise ValueError(f"sigma_floor must lie in (0, {levels[-1]}); got {sigma_floor}")
        gaps = np.append(gaps, np.log(levels[-1] / sigma_floor))
    if gaps.size == 0:
        return gaps
    shares = (gaps / gaps.sum() - _EVEN_SHARE / gaps.size) / (1.0 - _EVEN_SHARE)
    return np.log(np.maximum(shares, 1e-12))


def check_grid_length(sigmas, num_steps, where="learned grid"):
    """``sigmas`` as an array; a one-line ``ValueError`` unless it has ``num_steps + 1`` values."""
    sigmas = np.asarray(sigmas)
    if sigmas.ndim != 1 or sigmas.shape[0] != num_steps + 1:
        raise ValueError(f"{where} has {max(sigmas.size - 1, 0)} steps but the sampler is asked "
                         f"for {num_steps} (needs {num_steps + 1} sigmas)")
    return sigmas


# The samplers' scan options (``samplers.COMMON_KEYWORDS``): speed and memory, never the result.
SCAN_OPTIONS = ("unroll", "checkpoint")


def deterministic_sampler(sampler, options=None):
    """``(info, options)`` for a registry sampler (name or ``SamplerInfo``) whose ``options``
    draw no noise (its defaults or a variant with a declared order); else a ``ValueError``.
    The scan options ``unroll`` and ``checkpoint`` may be given too (they change no result)."""
    info = get_sampler(sampler) if isinstance(sampler, str) else sampler
    options = dict(options or {})
    own = {k: v for k, v in options.items() if k not in SCAN_OPTIONS}
    unknown = sorted(set(own) - set(info.options))
    if unknown:
        raise ValueError(f"sampler {info.name!r} has no option(s) {unknown}")
    orders = {(): info.order} | {
        tuple(sorted(v.options.items())): v.order for v in info.variants
    }
    key = tuple(sorted(own.items()))
    order = orders.get(key, None if info.stochastic else info.order)
    if order is None:
        raise ValueError(f"sampler {info.name!r} with options {options} draws noise; a grid can be "
                         "learned only for a deterministic sampler (e.g. eta=0, s_churn=0)")
    return info, options


# -- teachers ---------------------------------------------------------------------------------


def adaptive_teacher(rtol=1e-7, atol=1e-7, solver=None, max_steps=16384):
    """``teacher(denoiser, noise, sigma_max, sigma_min, cond) -> (x0, nfe)``: the probability-flow
    ODE by an adaptive Diffrax solve (Dopri5 by default, Kidger 2021) from ``sigma_max`` to
    ``sigma_min``, then ``D(x, sigma_min)`` (what every sampler's final step returns)."""

    def teacher(denoiser, noise, sigma_max, sigma_min, cond=None):
        return solve_probability_flow(
            denoiser, noise, sigma_max=sigma_max, sigma_min=sigma_min, cond=cond,
            solver=diffrax.Dopri5() if solver is None else solver,
            stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol), max_steps=max_steps,
        )

    return teacher


def sampler_teacher(sampler, num_steps, rho=7.0, options=None):
    """``teacher(...)`` as in :func:`adaptive_teacher`: a many-step registry sampler on the Karras
    grid (Karras et al. 2022, eq. 5) of ``num_steps`` steps between the same end points."""
    info, options = deterministic_sampler(sampler, options)

    def teacher(denoiser, noise, sigma_max, sigma_min, cond=None):
        sigmas = karras_sigmas(num_steps, sigma_min, sigma_max, rho).astype(noise.dtype)
        x0 = _jitted(info.fn)(denoiser, noise, sigmas, cond=cond, **options)
        return x0, info.nfe_function(options or None)(num_steps)

    return teacher


@functools.cache
def _jitted(fn):
    """One ``filter_jit`` wrapper per sampler function (so its compilations are reused)."""
    return filter_jit(fn)


def endpoint_rms(denoiser, sampler, sigmas, noise, targets, *, cond=None, options=None):
    """RMS over examples and dimensions of ``sampler(denoiser, noise, sigmas) - targets``."""
    info, options = deterministic_sampler(sampler, options)
    x0 = _jitted(info.fn)(denoiser, noise, jnp.asarray(sigmas, noise.dtype), cond=cond,
                          **options)
    return float(jnp.sqrt(jnp.mean((x0 - targets) ** 2)))


def _targets(denoiser, noises, targets, teacher, sigma_max, sigma_min, cond):
    if targets is not None:
        targets = jnp.asarray(targets, noises.dtype)
        if targets.shape != noises.shape:
            raise ValueError(f"targets must have the noises' shape {noises.shape}; got "
                             f"{targets.shape}")
        return targets, None
    teacher = adaptive_teacher() if teacher is None else teacher
    x0, nfe = teacher(denoiser, noises, sigma_max, sigma_min, cond)
    return jnp.asarray(x0, noises.dtype), int(nfe)


# -- LD3 --------------------------------------------------------------------------------------


def _project_to_ball(delta, noise, radius):
    """``delta`` scaled into ``||delta_i|| <= radius ||noise_i||`` per example."""
    axes = tuple(range(1, noise.ndim))
    bound = radius * jnp.sqrt(jnp.sum(noise**2, axis=axes, keepdims=True))
    norm = jnp.sqrt(jnp.sum(delta**2, axis=axes, keepdims=True))
    return delta * jnp.minimum(1.0, bound / jnp.maximum(norm, 1e-30))


def _check_learning_options(num_steps, num_iterations, learning_rate, radius, batch_size, count):
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int; got {num_steps!r}")
    if isinstance(num_iterations, bool) or not isinstance(num_iterations, int) or num_iterations < 0:
        raise ValueError(f"num_iterations must be an int >= 0; got {num_iterations!r}")
    if not float(learning_rate) > 0:
        raise ValueError(f"learning_rate must be > 0; got {learning_rate!r}")
    if not 0.0 <= float(radius) < 1.0:
        raise ValueError(f"radius must lie in [0, 1); got {radius!r}")
    if batch_size is not None and not 1 <= batch_size <= count:
        raise ValueError(f"batch_size must lie in [1, {count}] (the number of noises); got "
                         f"{batch_size!r}")


def learn_grid(
    denoiser,
    sampler,
    num_steps,
    *,
    noises,
    targets=None,
    teacher=None,
    sigma_max=80.0,
    sigma_min=0.002,
    sigma_floor=None,
    init_sigmas=None,
    options=None,
    cond=None,
    num_iterations=200,
    learning_rate=0.05,
    radius=0.0,
    batch_size=None,
    key=None,
):
    """Learn the sigma grid of ``num_steps`` steps of a deterministic registry ``sampler`` (LD3,
    Tong et al. 2025, Alg. 1): Adam on the logits of :func:`grid_from_logits` minimising the mean
    squared distance between the sampler's endpoint and the teacher's from the same unit noise.

    * ``noises``: the training noises ``(count, ...)`` (unit Gaussian, as the samplers take it);
      evaluate the result on other noises.
    * ``targets``: the teacher endpoints of ``noises`` if already known; else ``teacher(denoiser,
      noises, sigma_max, sigma_min, cond) -> (x0, nfe)`` (default :func:`adaptive_teacher`; or
      :func:`sampler_teacher`) computes them once.
    * ``radius`` > 0: LD3's soft teacher forcing (eq. 7): the student may start anywhere in the
      ball ``||noise' - noise_i|| <= radius ||noise_i||`` (per-example variables, a normalised
      projected gradient step of half the radius per iteration).
    * ``init_sigmas``: the starting grid (default Karras rho 7 between the end points; e.g. a
      :func:`gits_grid`); ``sigma_floor``: learn ``sigma_{N-1}`` above it.
    * ``batch_size``: examples per iteration (default all; cycles through a fixed permutation
      drawn with ``key``).

    Returns the best grid seen (never worse on the training noises than ``init_sigmas``).
    """
    info, options = deterministic_sampler(sampler, options)
    noises = check_batched_float(noises, "noises")
    count = noises.shape[0]
    _check_learning_options(num_steps, num_iterations, learning_rate, radius, batch_size, count)
    start = time.perf_counter()
    targets, teacher_nfe = _targets(denoiser, noises, targets, teacher, sigma_max, sigma_min, cond)
    if init_sigmas is None:
        init_sigmas = karras_sigmas(num_steps, sigma_min, sigma_max, 7.0)
    init_sigmas = check_grid_length(init_sigmas, num_steps, "init_sigmas")
    if not np.isclose(init_sigmas[0], sigma_max) or (
        sigma_floor is None and num_steps > 1 and not np.isclose(init_sigmas[-2], sigma_min)
    ):
        raise ValueError(f"init_sigmas must start at sigma_max={sigma_max} and (without "
                         f"sigma_floor) end at sigma_min={sigma_min}; got {init_sigmas}")
    logits = jnp.asarray(logits_from_grid(init_sigmas, sigma_floor), noises.dtype)

    # Differentiated through a rolled scan, with the networks' convolutions given their
    # canonical-layout VJP (fast inside loops on XLA:CPU; see ``networks.conv``).
    grad_denoiser = with_fast_conv_gradients(denoiser)

    def sample(logits, denoiser, noise, cond):
        sigmas = grid_from_logits(logits, sigma_max, sigma_min, sigma_floor)
        return info.fn(denoiser, noise, sigmas.astype(noise.dtype), cond=cond, **options)

    def loss_fn(logits, delta, denoiser, noise, target, cond):
        return jnp.mean((sample(logits, denoiser, noise + delta, cond) - target) ** 2)

    optimizer = optax.adam(learning_rate)

    @filter_jit
    def update(logits, opt_state, delta, denoiser, noise, target, cond):
        loss, (grad_logits, grad_delta) = jax.value_and_grad(loss_fn, argnums=(0, 1))(
            logits, delta, denoiser, noise, target, cond)
        updates, opt_state = optimizer.update(grad_logits, opt_state, logits)
        axes = tuple(range(1, noise.ndim))
        grad_norm = jnp.sqrt(jnp.sum(grad_delta**2, axis=axes, keepdims=True))
        noise_norm = jnp.sqrt(jnp.sum(noise**2, axis=axes, keepdims=True))
        step = 0.5 * radius * noise_norm * grad_delta / jnp.maximum(grad_norm, 1e-30)
        delta = _project_to_ball(delta - step, noise, radius)
        return optax.apply_updates(logits, updates), opt_state, delta, loss

    @filter_jit
    def full_rms(logits, denoiser, noise, target, cond):
        return jnp.sqrt(jnp.mean((sample(logits, denoiser, noise, cond) - target) ** 2))

    rms_before = float(full_rms(logits, denoiser, noises, targets, cond))
    batch = count if batch_size is None else batch_size
    order = np.asarray(jax.random.permutation(
        jax.random.key(0) if key is None else key, count))
    deltas = jnp.zeros_like(noises)
    opt_state = optimizer.init(logits)
    # The result is the best grid seen: with the full batch and no ball the loss of each
    # iteration is the objective at the logits before its update; else only the last iterate
    # competes with the start.
    exact_objective = batch == count and float(radius) == 0.0
    history, best = [], (rms_before, logits)
    for iteration in range(num_iterations):
        rows = order[(iteration * batch + np.arange(batch)) % count]
        batch_cond = None if cond is None else jax.tree.map(lambda c, r=rows: c[r], cond)
        previous = logits
        logits, opt_state, delta, loss = update(
            logits, opt_state, deltas[rows], grad_denoiser, noises[rows], targets[rows],
            batch_cond)
        deltas = deltas.at[rows].set(delta)
        history.append(float(loss))
        if exact_objective and np.sqrt(history[-1]) < best[0]:
            best = (float(np.sqrt(history[-1])), previous)
    last = float(full_rms(logits, denoiser, noises, targets, cond))
    if last < best[0]:
        best = (last, logits)
    logits = best[1]
    rms_after = float(full_rms(logits, denoiser, noises, targets, cond))
    sigmas = np.asarray(grid_from_logits(logits, sigma_max, sigma_min, sigma_floor))
    return LearnedGrid(
        sigmas=sigmas, method="ld3", sampler=info.name, num_steps=num_steps,
        rms_before=rms_before, rms_after=rms_after, loss_history=tuple(history),
        num_teacher_solves=0 if teacher_nfe is None else count,
        wall_time_s=time.perf_counter() - start,
        settings=dict(options=options, sigma_max=float(sigma_max), sigma_min=float(sigma_min),
                      sigma_floor=sigma_floor, num_iterations=num_iterations,
                      learning_rate=float(learning_rate), radius=float(radius),
                      batch_size=batch, num_noises=count, teacher_nfe=teacher_nfe),
    )


# -- GITS -------------------------------------------------------------------------------------


def _trajectory_field(denoiser, sigma, x, cond):
    return probability_flow_derivative(lambda *a: checked_denoise(denoiser, *a), x, sigma, cond)


def teacher_trajectory(denoiser, noise, levels, *, cond=None, rtol=1e-7, atol=1e-7,
                       max_steps=16384):
    """States ``x(levels)`` (shape ``(len(levels), *noise.shape)``) of the probability-flow ODE
    from ``noise * levels[0]`` by an adaptive Dopri5 solve (Kidger 2021) saved at ``levels``."""
    noise = check_batched_float(noise)
    levels = jnp.asarray(levels, noise.dtype)
    vector_field, arrays = split_vector_field(_trajectory_field, denoiser)
    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(vector_field), diffrax.Dopri5(), t0=levels[0], t1=levels[-1], dt0=None,
        y0=noise * levels[0], args=(arrays, cond), saveat=diffrax.SaveAt(ts=levels),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol), max_steps=max_steps,
    )
    return solution.ys


def _local_costs(denoiser, states, levels, cond):
    """``cost[i, j]`` (``i < j``): RMS of one Euler (DDIM) step from the teacher state at level
    ``i`` to level ``j`` minus the teacher state there (Chen et al. 2024, Sec. 4); ``final[j]``:
    RMS of the step to 0 from level ``j``, ``D(x_j, s_j)``, minus the teacher endpoint."""

    @filter_jit
    def costs(denoiser, states, levels, cond):
        x0_hats = jax.vmap(lambda x, s: checked_denoise(denoiser, x, s, cond))(states, levels)
        axes = tuple(range(1, states.ndim))

        def row(x, x0_hat, sigma):
            ratio = (levels / sigma).reshape((-1,) + (1,) * (states.ndim - 1))
            predicted = x0_hat + ratio * (x - x0_hat)  # Euler: x + (s_j - s) (x - D) / s
            return jnp.sqrt(jnp.mean((predicted - states) ** 2, axis=axes))

        cost = jax.lax.map(lambda a: row(*a), (states, x0_hats, levels))
        final = jnp.sqrt(jnp.mean((x0_hats - x0_hats[-1]) ** 2, axis=axes))
        return cost, final

    cost, final = costs(denoiser, states, levels, cond)
    return np.asarray(cost, np.float64), np.asarray(final, np.float64)


def _shortest_path(cost, final, num_steps, free_end):
    """Levels ``0 = i_0 < ... < i_{N-1}`` minimising ``sum cost[i_k, i_{k+1}] + final[i_{N-1}]``
    (dynamic programming, Chen et al. 2024, Alg. 1); ``i_{N-1} = M - 1`` unless ``free_end``."""
    size = cost.shape[0]
    upper = np.triu(np.ones((size, size), bool), 1)
    cost = np.where(upper, cost, np.inf)
    best = np.full(size, np.inf)
    best[0] = 0.0
    parents = []
    for _ in range(num_steps - 1):
        totals = best[:, None] + cost
        parents.append(np.argmin(totals, axis=0))
        best = np.min(totals, axis=0)
    ends = best + final if free_end else np.where(np.arange(size) == size - 1, best, np.inf)
    path = [int(np.argmin(ends))]
    if not np.isfinite(ends[path[0]]):
        raise ValueError(f"no path of {num_steps} steps over {size} fine levels; use more levels")
    for parent in reversed(parents):
        path.append(int(parent[path[-1]]))
    return path[::-1]


def gits_grid(
    denoiser,
    num_steps,
    *,
    noises,
    sigma_max=80.0,
    sigma_min=0.002,
    num_levels=128,
    rho=7.0,
    free_end=True,
    cond=None,
    sampler="euler",
    options=None,
    states=None,
    rtol=1e-7,
):
    """GITS (Chen et al. 2024, Alg. 1): the grid of ``num_steps`` steps through ``num_levels``
    fine Karras levels (Karras et al. 2022, eq. 5) that minimises the summed RMS local errors of
    one Euler (DDIM) step between teacher states, plus (``free_end``) the error of the final
    step to 0 from the last chosen level (so ``sigma_{N-1}`` is chosen too). One adaptive teacher
    trajectory per noise and one denoiser evaluation per fine level. ``sampler`` only names the
    sampler the grid is reported for (``rms_before`` / ``rms_after``: its endpoint RMS against
    the teacher on the Karras grid / on the GITS grid, training noises). ``states``: the
    :func:`teacher_trajectory` of ``noises`` at the fine levels, if already computed (one
    trajectory serves every ``num_steps``); ``rtol``: its tolerance (``rtol = atol``; about 1e-5
    for a float32 network)."""
    info, options = deterministic_sampler(sampler, options)
    noises = check_batched_float(noises, "noises")
    _check_learning_options(num_steps, 0, 1.0, 0.0, None, noises.shape[0])
    if isinstance(num_levels, bool) or not isinstance(num_levels, int) or num_levels < num_steps:
        raise ValueError(f"num_levels must be an int >= num_steps={num_steps}; got {num_levels!r}")
    start = time.perf_counter()
    levels = karras_levels(num_levels, sigma_min, sigma_max, rho).astype(noises.dtype)
    solves = 0 if states is not None else noises.shape[0]
    if states is None:
        states = teacher_trajectory(denoiser, noises, levels, cond=cond, rtol=rtol, atol=rtol)
    elif jnp.shape(states) != (num_levels, *noises.shape):
        raise ValueError(f"states must have shape {(num_levels, *noises.shape)} (fine levels, "
                         f"noises); got {jnp.shape(states)}")
    cost, final = _local_costs(denoiser, states, levels, cond)
    path = _shortest_path(cost, final, num_steps, free_end)
    sigmas = np.append(np.asarray(levels)[path], 0.0)
    targets = checked_denoise(denoiser, states[-1], levels[-1], cond)
    karras = karras_sigmas(num_steps, sigma_min, sigma_max, rho)
    return LearnedGrid(
        sigmas=sigmas, method="gits", sampler=info.name, num_steps=num_steps,
        rms_before=endpoint_rms(denoiser, info, karras, noises, targets, cond=cond, options=options),
        rms_after=endpoint_rms(denoiser, info, sigmas, noises, targets, cond=cond, options=options),
        loss_history=(), num_teacher_solves=solves,
        wall_time_s=time.perf_counter() - start,
        settings=dict(options=options, sigma_max=float(sigma_max), sigma_min=float(sigma_min),
                      num_levels=num_levels, rho=float(rho), free_end=free_end,
                      num_noises=noises.shape[0], rtol=rtol, path=path),
    )
