"""Exact log-likelihood of a diffusion model along the probability-flow ODE, and bits/dim.

Instantaneous change of variables (Chen et al. 2018, "Neural ODEs", Thm. 1; Song et al. 2021,
"Score-based generative modeling through SDEs", eq. 39 / App. D.2): along the ODE
``dx/du = f(x, u)``, ``d/du log p_u(x(u)) = -div f(x(u), u)``, hence

    log p_{sigma_min}(x) = log p_{sigma_max}(x(sigma_max)) + int div f du.

We work in the VE frame ``x = x0 + sigma * noise`` of the denoiser contract and integrate in
``u = log sigma`` from ``log sigma_min`` to ``log sigma_max``. The vector field is
``dx/du = sigma * dx/dsigma`` with ``dx/dsigma`` the one definition
:func:`diffusion_jax.denoisers.probability_flow_derivative` (Karras et al. 2022, eq. 4); its
divergence comes from ``jax.linearize`` of that same function:

* ``divergence="exact"``: the trace of the full Jacobian (``D`` Jacobian-vector products; small
  ``D`` only);
* ``divergence="hutchinson"``: ``E[eps^T J eps]`` with Rademacher or Gaussian probes
  (Hutchinson 1989; Grathwohl et al. 2019, "FFJORD", eq. 7), drawn **once per example per solve**
  (resampling them inside an adaptive solve would break step-size control).

The number of function evaluations is counted from Diffrax's attempted steps by the one counter
:func:`diffusion_jax.samplers.diffrax_solvers.num_function_evaluations` (equal to the denoiser
calls made). Every example is its own ODE solve (``vmap`` of one Diffrax solve), so step control
and the number of function evaluations are per example; under ``vmap`` all lanes run until the
longest finishes.

Prior: by default ``N(0, sigma_max^2 I)``. The true marginal at ``sigma_max`` is the data convolved
with ``N(0, sigma_max^2 I)``, so each log-density is off by ``log N(x_T; 0, sigma_max^2) -
log p(x_T; sigma_max)``. Per example this is ``O(|mean| / sigma_max)`` (the cross term
``mean . x_T / sigma_max^2`` with ``|x_T| ~ sigma_max sqrt(D)``); its average over the data is the
KL divergence ``~ (||mean||^2 + tr Cov) / (2 sigma_max^2)``. Either take ``sigma_max`` well
above the data scale (1e3 for unit-scale data gives ~1e-4 nats/dim) or pass
``prior_log_prob`` (e.g. the exact marginal ``mixture.log_prob(x, sigma_max)``) to remove it.
"""

from __future__ import annotations

import functools
import math

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.data import dequantize
from diffusion_jax.denoisers import probability_flow_derivative
from diffusion_jax.processes import EDM, Process, check_sigma
from diffusion_jax.samplers._core import check_key
from diffusion_jax.samplers.diffrax_solvers import (
    check_positive,
    check_positive_int,
    checked_denoise,
    num_function_evaluations,
    split_vector_field,
)

__all__ = [
    "SOLVERS",
    "log_likelihood",
    "process_log_likelihood",
    "bits_per_dim",
    "gaussian_prior_log_prob",
    "num_function_evaluations",
]

DIVERGENCES = ("hutchinson", "exact")
PROBES = ("rademacher", "gaussian")

# Name -> Diffrax solver constructor (a convenience for callers that hold names, e.g. CLIs).
SOLVERS = {
    "tsit5": diffrax.Tsit5,
    "dopri5": diffrax.Dopri5,
    "dopri8": diffrax.Dopri8,
    "bosh3": diffrax.Bosh3,
    "heun": diffrax.Heun,
    "midpoint": diffrax.Midpoint,
    "ralston": diffrax.Ralston,
    "euler": diffrax.Euler,
}


def _resolve_solver(solver):
    if isinstance(solver, str):
        if solver not in SOLVERS:
            raise ValueError(f"unknown solver {solver!r}; expected one of {sorted(SOLVERS)}")
        return SOLVERS[solver]()
    if not isinstance(solver, (diffrax.AbstractERK, diffrax.Euler)):
        raise ValueError(
            "solver must be an explicit Runge-Kutta diffrax solver (e.g. diffrax.Tsit5()) or a "
            f"name in {sorted(SOLVERS)}; got {type(solver).__name__}"
        )
    return solver


def _is_adaptive(solver):
    """Whether the solver carries an embedded error estimate (needed by ``PIDController``)."""
    return isinstance(solver, diffrax.AbstractAdaptiveSolver) or (
        isinstance(solver, diffrax.AbstractRungeKutta) and solver.tableau.b_error is not None
    )


def gaussian_prior_log_prob(x, sigma):
    """``log N(x; 0, sigma^2 I)`` per example (all axes but the first summed); the PF-ODE prior
    of the VE frame (Song et al. 2021, App. D.2): the prior of the VE process with
    ``sigma_max = sigma`` (:meth:`diffusion_jax.processes.Process.prior_log_prob`)."""
    return EDM(sigma_max=sigma).prior_log_prob(x)


def _draw_probes(key, shape, num_probes, probe, dtype):
    """Hutchinson probes with ``E[eps eps^T] = I`` (Hutchinson 1989; FFJORD eq. 7)."""
    full_shape = (num_probes, *shape)
    if probe == "rademacher":
        return jax.random.rademacher(key, full_shape, dtype)
    return jax.random.normal(key, full_shape, dtype)


def _velocity_and_divergence(denoiser, u, x, cond, probes, exact):
    """``sigma dx/dsigma`` at ``u = log sigma`` and its divergence (exact trace or Hutchinson)."""
    sigma = jnp.exp(u)
    checked = functools.partial(checked_denoise, denoiser)

    def velocity(x_single):
        batched_cond = jax.tree.map(lambda leaf: leaf[None], cond)
        derivative = probability_flow_derivative(checked, x_single[None], sigma, batched_cond)
        return (sigma * derivative[0]).astype(x.dtype)

    dx_du, jvp = jax.linearize(velocity, x)
    if exact:
        size = x.size
        basis = jnp.eye(size, dtype=x.dtype).reshape((size, *x.shape))
        divergence = jnp.sum(basis * jax.vmap(jvp)(basis))
    else:
        products = jax.vmap(jvp)(probes)
        divergence = jnp.mean(jnp.sum((probes * products).reshape(probes.shape[0], -1), axis=-1))
    return dx_du, divergence.astype(x.dtype)


def _exact_vector_field(denoiser, u, state, cond, probes):
    """``d/du [x, delta_log_p] = [sigma dx/dsigma, tr J]`` at ``u = log sigma``."""
    return _velocity_and_divergence(denoiser, u, state[0], cond, probes, True)


def _hutchinson_vector_field(denoiser, u, state, cond, probes):
    """``d/du [x, delta_log_p] = [sigma dx/dsigma, mean eps^T J eps]`` at ``u = log sigma``."""
    return _velocity_and_divergence(denoiser, u, state[0], cond, probes, False)


@eqx.filter_jit
def _solve_batch(
    denoiser, x, cond, probes, u0, u1, rtol, atol, *, solver, exact, num_steps, max_steps, adjoint
):
    """One Diffrax solve per example (``vmap``; adaptive steps are chosen per example) or, with
    fixed steps, one solve of the batch: ``(x(sigma_max), int div, attempted steps)``.
    ``eqx.filter_jit``: the denoiser's arrays are traced, its static rest (a plain function, a
    network graph) and the solver options are compile-time constants."""
    if num_steps is None:
        controller = diffrax.PIDController(rtol=rtol, atol=atol)
        dt0 = None
    else:
        controller = diffrax.ConstantStepSize()
        dt0 = (u1 - u0) / num_steps
    field, arrays = split_vector_field(
        _exact_vector_field if exact else _hutchinson_vector_field, denoiser
    )
    if num_steps is not None:
        # fixed steps: one solve of the whole batch with the per-example field vmapped inside is
        # the same computation as one solve per example, and keeps vmap away from the adjoint's
        # custom_vjp (jax >= 0.12 rejects its cotangent for parameters shared by the batch)
        def batched_field(u, state, args):
            arrays_, cond_, probes_ = args
            return jax.vmap(lambda y, c, p: field(u, y, (arrays_, c, p)))(state, cond_, probes_)

        solution = diffrax.diffeqsolve(
            diffrax.ODETerm(batched_field), solver, t0=u0, t1=u1, dt0=dt0,
            y0=(x, jnp.zeros(x.shape[:1], x.dtype)), args=(arrays, cond, probes),
            stepsize_controller=controller, max_steps=max_steps, adjoint=adjoint,
        )
        steps = jnp.broadcast_to(solution.stats["num_steps"], x.shape[:1])
        return solution.ys[0][-1], solution.ys[1][-1], steps
    term = diffrax.ODETerm(field)

    def solve_one(x_single, cond_single, probes_single):
        solution = diffrax.diffeqsolve(
            term,
            solver,
            t0=u0,
            t1=u1,
            dt0=dt0,
            y0=(x_single, jnp.zeros((), x.dtype)),
            args=(arrays, cond_single, probes_single),
            stepsize_controller=controller,
            max_steps=max_steps,
            adjoint=adjoint,
        )
        return solution.ys[0][-1], solution.ys[1][-1], solution.stats["num_steps"]

    return jax.vmap(solve_one)(x, cond, probes)


def _check_options(divergence, probe, num_probes, key):
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; expected one of {DIVERGENCES}")
    if probe not in PROBES:
        raise ValueError(f"unknown probe {probe!r}; expected one of {PROBES}")
    check_positive_int(num_probes, "num_probes")
    if divergence == "hutchinson" and key is None:
        raise ValueError("divergence='hutchinson' needs a key (jax.random.key) for the probes")


def _check_sigma_range(sigma_min, sigma_max):
    check_sigma(sigma_min, "sigma_min")
    check_sigma(sigma_max, "sigma_max")
    concrete = not any(isinstance(s, jax.core.Tracer) for s in (sigma_min, sigma_max))
    if concrete:
        lo, hi = float(np.asarray(sigma_min)), float(np.asarray(sigma_max))
        if not 0.0 < lo < hi:
            raise ValueError(f"need 0 < sigma_min < sigma_max; got sigma_min={lo}, sigma_max={hi}")


def log_likelihood(
    denoiser,
    x,
    *,
    sigma_min,
    sigma_max,
    key=None,
    divergence="hutchinson",
    num_probes=1,
    probe="rademacher",
    solver="tsit5",
    rtol=1e-5,
    atol=1e-5,
    num_steps=None,
    max_steps=4096,
    prior_log_prob=None,
    cond=None,
    adjoint=None,
):
    """Log-density ``log p(x; sigma_min)`` (nats per example) of the model's probability-flow ODE,
    and the number of function evaluations per example (Song et al. 2021, App. D.2, eq. 39;
    Chen et al. 2018, Thm. 1).

    Args:
      denoiser: ``denoiser(x, sigma, cond) -> x0_hat`` in the VE frame: a plain function or a
        pytree (NNX / Equinox module, registered dataclass). Its array leaves are passed to
        Diffrax as ``args``, so gradients wrt them flow through the solve; its output shape is
        checked, and NaN or inf from it raises ("the denoiser returned NaN or inf").
      x: data of shape ``(batch, ...)`` (VE frame, floating point).
      sigma_min, sigma_max: integration range ``sigma_min -> sigma_max``; the result is the
        density of the data smoothed by ``N(0, sigma_min^2 I)``.
      key: typed key for the Hutchinson probes (one probe set per example per solve).
      divergence: ``"exact"`` (full trace, small dims) or ``"hutchinson"``.
      num_probes: Hutchinson probes averaged per evaluation.
      probe: ``"rademacher"`` or ``"gaussian"``.
      solver: an explicit Runge-Kutta Diffrax solver or a name in :data:`SOLVERS`.
      rtol, atol: ``PIDController`` tolerances (adaptive solvers, ``num_steps=None``).
      num_steps: fixed number of equal steps in ``log sigma`` instead of adaptive control.
      max_steps: step budget of one adaptive solve (finite, as reverse-mode differentiation
        needs); fixed grids use exactly ``num_steps``.
      prior_log_prob: ``f(x_at_sigma_max) -> (batch,)``; default ``N(0, sigma_max^2 I)``.
      cond: optional conditioning pytree with leading batch axis.
      adjoint: Diffrax adjoint; default ``RecursiveCheckpointAdjoint`` (exact gradients).

    Returns:
      ``(log_p, nfe)`` with shapes ``(batch,)``.
    """
    _check_options(divergence, probe, num_probes, key)
    _check_sigma_range(sigma_min, sigma_max)
    check_positive(rtol, "rtol")
    check_positive(atol, "atol")
    check_positive_int(max_steps, "max_steps")
    x = jnp.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"x must have a batch axis and at least one data axis; got {x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"x must be floating point; got {x.dtype} (use bits_per_dim for integers)")
    if not isinstance(x, jax.core.Tracer) and not np.all(np.isfinite(np.asarray(x))):
        raise ValueError("x contains NaN or infinity")
    solver = _resolve_solver(solver)
    if num_steps is None:
        if not _is_adaptive(solver):
            raise ValueError(
                f"{type(solver).__name__} has no error estimate: give num_steps for a fixed grid"
            )
    else:
        check_positive_int(num_steps, "num_steps")
        max_steps = num_steps  # exact budget: keeps the checkpointed backward pass small
    adjoint = diffrax.RecursiveCheckpointAdjoint() if adjoint is None else adjoint
    batch = x.shape[0]
    exact = divergence == "exact"
    if exact:
        probes = jnp.zeros((batch, 0, *x.shape[1:]), x.dtype)
    else:
        keys = jax.random.split(key, batch)
        probes = jax.vmap(lambda k: _draw_probes(k, x.shape[1:], num_probes, probe, x.dtype))(keys)
    u0 = jnp.log(jnp.asarray(sigma_min, x.dtype))
    u1 = jnp.log(jnp.asarray(sigma_max, x.dtype))
    x_end, delta_log_p, steps = _solve_batch(
        denoiser,
        x,
        cond,
        probes,
        u0,
        u1,
        jnp.asarray(rtol, x.dtype),
        jnp.asarray(atol, x.dtype),
        solver=solver,
        exact=exact,
        num_steps=num_steps,
        max_steps=max_steps,
        adjoint=adjoint,
    )
    if prior_log_prob is None:
        prior = gaussian_prior_log_prob(x_end, jnp.exp(u1))
    else:
        prior = prior_log_prob(x_end)
        if jnp.shape(prior) != (batch,):
            raise ValueError(f"prior_log_prob must return shape ({batch},); got {jnp.shape(prior)}")
    nfe = num_function_evaluations(solver, steps)
    return prior + delta_log_p, nfe


def process_log_likelihood(
    denoiser, x, *, process: Process, t_eps=1e-5, t_max=None, prior_log_prob=None, **options
):
    """``log p_{t_eps}(x)`` of a process-frame marginal, computed in the VE frame (Song et al.
    2021, App. D.2; Karras et al. 2022, eq. 2 with ``s(t) = alpha(t)``).

    With ``x_t = alpha(t) y`` and ``y`` in the VE frame at ``s(t) = sigma(t) / alpha(t)``, the
    densities are related by the Jacobian of ``x -> x / alpha``:
    ``log p_t(x) = log p^VE(x / alpha(t); s(t)) - D log alpha(t)``. As in score_sde the data point
    itself is evaluated at time ``t_eps``. ``prior_log_prob`` acts on process-frame ``x_T`` and
    defaults to ``process.prior_log_prob``; in the VE frame it becomes
    ``log p_T(alpha_T y) + D log alpha_T`` (so the default is exactly ``N(0, s(t_max)^2 I)``).
    ``options`` are passed to :func:`log_likelihood`. Returns ``(log_p, nfe)``.
    """
    x = jnp.asarray(x)
    t_max = process.t_max if t_max is None else t_max
    dims = math.prod(x.shape[1:])
    alpha_eps = process.alpha(t_eps)
    alpha_max = process.alpha(t_max)
    sigma_min, sigma_max = process.ve_sigma(t_eps), process.ve_sigma(t_max)
    if not isinstance(sigma_max, jax.core.Tracer) and not bool(np.isfinite(np.asarray(sigma_max))):
        raise ValueError(f"the VE noise level at t_max={t_max} is infinite: pass a smaller t_max")
    prior_process = process.prior_log_prob if prior_log_prob is None else prior_log_prob

    def prior_ve(y):
        return prior_process(alpha_max * y) + dims * jnp.log(alpha_max)

    log_p_ve, nfe = log_likelihood(
        denoiser,
        x / alpha_eps,
        sigma_min=sigma_min,
        sigma_max=sigma_max,
        prior_log_prob=prior_ve,
        **options,
    )
    return log_p_ve - dims * jnp.log(alpha_eps), nfe


def _check_integer_data(x_int, num_bits):
    if isinstance(x_int, jax.core.Tracer):
        return
    values = np.asarray(x_int)
    if values.ndim < 2:
        raise ValueError(f"x_int must have a batch axis; got shape {values.shape}")
    if not np.issubdtype(values.dtype, np.integer):
        if not np.all(values == np.round(values)):
            raise ValueError("x_int must hold integer pixel values (got non-integers)")
    if values.min() < 0 or values.max() > 2**num_bits - 1:
        raise ValueError(
            f"x_int values must lie in [0, {2**num_bits - 1}] for {num_bits}-bit data; "
            f"got range [{values.min()}, {values.max()}]"
        )


def bits_per_dim(
    denoiser,
    x_int,
    *,
    key,
    num_bits=8,
    data_range=(-1.0, 1.0),
    num_dequantization_samples=1,
    process=None,
    dtype=None,
    **likelihood_options,
):
    """Bits per dimension of integer images under uniform (or importance-weighted) dequantisation
    (Theis et al. 2016, Sec. 3.1; Ho et al. 2019, "Flow++", eq. 11-12; Song et al. 2021, Table 2).

    ``x_int`` (batch, ...) holds integers in ``[0, 2^bits)``; the model sees
    ``x = lo + (hi - lo) (x_int + U) / 2^bits``. The change of variables to the ``[0, 2^bits)``
    integer grid gives

        bpd = -log p(x) / (D ln 2) - log2(hi - lo) + num_bits,

    i.e. score_sde's "+7" for 8-bit data in ``[-1, 1]`` (``+8`` for data in ``[0, 1]``); the rule
    holds only for that bit depth and scaling. With ``K = num_dequantization_samples > 1`` the
    bound is the importance-weighted one, ``-log2 mean_k p(x_int + U_k)`` per image (tighter,
    still an upper bound on the discrete NLL up to estimator noise).

    With ``process`` the likelihood is :func:`process_log_likelihood` (pass ``t_eps``), otherwise
    :func:`log_likelihood` (pass ``sigma_min, sigma_max``); ``likelihood_options`` go there.
    Returns ``(bpd, nfe)`` per image (nfe summed over the dequantisation samples).
    """
    check_key(key, "bits_per_dim (dequantisation noise)")
    _check_integer_data(x_int, num_bits)
    dtype = jnp.result_type(float) if dtype is None else dtype
    check_positive_int(num_dequantization_samples, "num_dequantization_samples")
    lo, hi = data_range
    if not hi > lo:
        raise ValueError(f"data_range must be increasing; got {data_range}")
    x_int = jnp.asarray(x_int)
    if not jnp.issubdtype(x_int.dtype, jnp.integer):  # integer-valued floats (checked above)
        x_int = x_int.astype(jnp.int32)
    dims = math.prod(x_int.shape[1:])
    batch = x_int.shape[0]
    num = num_dequantization_samples
    dequantization_key, likelihood_key = jax.random.split(key)
    x_model = jax.vmap(
        lambda k: lo + (hi - lo) * dequantize(x_int, k, num_bits=num_bits, dtype=dtype)
    )(jax.random.split(dequantization_key, num))
    x_model = x_model.reshape((num * batch, *x_int.shape[1:]))
    cond = likelihood_options.pop("cond", None)
    if cond is not None:
        cond = jax.tree.map(lambda leaf: jnp.concatenate([leaf] * num, axis=0), cond)
    if process is None:
        log_p, nfe = log_likelihood(
            denoiser, x_model, key=likelihood_key, cond=cond, **likelihood_options
        )
    else:
        log_p, nfe = process_log_likelihood(
            denoiser,
            x_model,
            process=process,
            key=likelihood_key,
            cond=cond,
            **likelihood_options,
        )
    log_p = log_p.reshape(num, batch)
    log_p = jax.nn.logsumexp(log_p, axis=0) - math.log(num)
    bpd = -log_p / (dims * math.log(2.0)) - math.log2(hi - lo) + num_bits
    return bpd, jnp.sum(nfe.reshape(num, batch), axis=0)
