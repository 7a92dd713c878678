"""Probability paths between a coupled pair ``(x_data, x_source)`` and their regression
objectives: conditional flow matching on any affine process, Schrodinger-bridge CFM, stochastic
interpolants with a noise term ``gamma(t)``, and the score-and-flow (SF2M) option.

Time convention: library time, **t = 0 is data, t = t_max (1) is the source**. The path is

    x_t = alpha(t) x_data + sigma(t) x_source + gamma(t) z,   z ~ N(0, I),

with ``alpha, sigma`` from a :class:`~diffusion_jax.processes.Process` (rectified flow /
conditional OT ``(1 - t, t)``, VP, cosine, TrigFlow, ...) and ``gamma`` from a noise schedule
below (``None``: the deterministic path). Its conditional velocity is
``u_t = alpha' x_data + sigma' x_source + gamma' z``, the target of the velocity regression;
with noise the conditional score is ``-z / gamma``.

Sources: conditional flow matching (Lipman et al. 2023, eq. 9 and 23; Tong et al. 2023,
"Improving and generalizing flow-based generative models with minibatch OT", Sec. 3 and
Table 1); Schrodinger-bridge CFM (Tong et al. 2023, Sec. 3.4: Brownian-bridge noise
``sigma sqrt(t (1 - t))`` with the entropic OT coupling at ``epsilon = 2 sigma^2``); stochastic
interpolants (Albergo & Vanden-Eijnden 2023, "Building normalizing flows with stochastic
interpolants"; Albergo, Boffi & Vanden-Eijnden 2023, "Stochastic interpolants", eq. 2.1 and
Sec. 3.4 for ``gamma``); SF2M (Tong et al. 2024, "Simulation-free Schrodinger bridges via score
and flow matching", eq. 8-9: score loss weighted by ``lambda(t)^2 = gamma(t)^2``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffusion_jax.processes import Process, RectifiedFlow, _broadcast_like
from diffusion_jax.pytrees import frozen_pytree

__all__ = [
    "BrownianBridgeNoise",
    "QuadraticNoise",
    "interpolate",
    "check_noise_schedule",
    "interpolant_loss",
    "sde_sample",
]

_ENDPOINT_FLOOR = 1e-8  # t (1 - t) floor in the Brownian bridge's derivative


def _unit_time(t, t_max):
    return jnp.asarray(t) / t_max


@frozen_pytree
class BrownianBridgeNoise:
    """``gamma(t) = sigma sqrt(s (1 - s))`` with ``s = t / t_max`` (Brownian bridge; SB-CFM, Tong
    et al. 2023, Sec. 3.4). ``gamma'`` diverges at the endpoints; ``s (1 - s)`` is floored at
    1e-8 in it (the path itself is exact)."""

    sigma: float = 0.5
    t_max: float = 1.0

    def gamma(self, t):
        s = _unit_time(t, self.t_max)
        return self.sigma * jnp.sqrt(jnp.clip(s * (1.0 - s), 0.0))

    def d_gamma(self, t):
        s = _unit_time(t, self.t_max)
        product = jnp.maximum(s * (1.0 - s), _ENDPOINT_FLOOR)
        return self.sigma * (1.0 - 2.0 * s) / (2.0 * jnp.sqrt(product)) / self.t_max


@frozen_pytree
class QuadraticNoise:
    """``gamma(t) = scale s (1 - s)``, ``s = t / t_max``: a smooth noise term that vanishes at both
    ends (Albergo, Boffi & Vanden-Eijnden 2023, Sec. 3.4, ``gamma = sqrt(a) t (1 - t)``)."""

    scale: float = 1.0
    t_max: float = 1.0

    def gamma(self, t):
        s = _unit_time(t, self.t_max)
        return self.scale * s * (1.0 - s)

    def d_gamma(self, t):
        s = _unit_time(t, self.t_max)
        return self.scale * (1.0 - 2.0 * s) / self.t_max


def interpolate(x_data, x_source, t, *, process: Process, noise_schedule=None, z=None):
    """``(x_t, u_t)``: the point of the path at ``t`` (scalar or per example) and its conditional
    velocity ``alpha' x_data + sigma' x_source + gamma' z`` (library time, t = 0 data)."""
    coefficients = [process.alpha(t), process.sigma(t), process.d_alpha(t), process.d_sigma(t)]
    a, s, da, ds = (_broadcast_like(c, x_data) for c in coefficients)
    x_t = a * x_data + s * x_source
    u_t = da * x_data + ds * x_source
    if noise_schedule is not None:
        if z is None:
            raise ValueError("a path with a noise schedule needs the Gaussian draw z")
        x_t = x_t + _broadcast_like(noise_schedule.gamma(t), x_data) * z
        u_t = u_t + _broadcast_like(noise_schedule.d_gamma(t), x_data) * z
    return x_t, u_t


def check_noise_schedule(noise_schedule, process):
    """Raise ``ValueError`` if a noise schedule's ``t_max`` differs from the process's."""
    if noise_schedule is None:
        return
    try:
        mismatch = float(noise_schedule.t_max) != float(process.t_max)
    except (TypeError, jax.errors.ConcretizationTypeError):  # traced: cannot check
        return
    if mismatch:
        raise ValueError(f"noise schedule t_max={float(noise_schedule.t_max)} differs from the "
                         f"process's t_max={float(process.t_max)}")


def _mean_over_data(squared):
    return jnp.mean(jnp.reshape(squared, (squared.shape[0], -1)), axis=-1)


def interpolant_loss(
    velocity_model, x_data, x_source, key, *, process: Process | None = None,
    noise_schedule=None, score_model=None, cond=None, t_min=0.0,
):
    """Per-example regression loss of a (stochastic) interpolant, shape ``(batch,)``:
    ``mean ||v(x_t, t, cond) - u_t||^2`` with ``t ~ U[t_min, t_max - t_min]`` (library time) on
    a coupled batch ``(x_data[i], x_source[i])`` (pair it first with a coupling of
    :mod:`diffusion_jax.flows.couplings`), plus the SF2M score term ``mean ||gamma s(x_t, t,
    cond) + z||^2`` if ``score_model`` is given (it needs a noise schedule).

    ``process=None`` is rectified flow / conditional OT; with ``noise_schedule=None`` this is
    conditional flow matching (Lipman et al. 2023; Tong et al. 2023), equal for the same ``t``
    to :func:`diffusion_jax.losses.flow_matching_loss` with ``noise = x_source``.
    """
    process = RectifiedFlow() if process is None else process
    x_data, x_source = jnp.asarray(x_data), jnp.asarray(x_source)
    if x_data.shape != x_source.shape or x_data.ndim < 2:
        raise ValueError(
            f"x_data and x_source must be paired batches of one shape (batch, ...); got "
            f"{x_data.shape} and {x_source.shape}"
        )
    if score_model is not None and noise_schedule is None:
        raise ValueError("the SF2M score term needs a path with noise (noise_schedule)")
    check_noise_schedule(noise_schedule, process)
    time_key, noise_key = jax.random.split(key)
    t_max = process.t_max
    t = jax.random.uniform(
        time_key, (x_data.shape[0],), x_data.dtype, minval=t_min, maxval=t_max - t_min
    )
    z = None
    if noise_schedule is not None:
        z = jax.random.normal(noise_key, x_data.shape, x_data.dtype)
    x_t, u_t = interpolate(x_data, x_source, t, process=process, noise_schedule=noise_schedule, z=z)
    v = velocity_model(x_t, t, cond)
    if v.shape != x_data.shape:
        raise ValueError(f"velocity model output shape {v.shape} != data shape {x_data.shape}")
    loss = _mean_over_data((v.astype(x_data.dtype) - u_t) ** 2)
    if score_model is not None:
        score = score_model(x_t, t, cond)
        gamma = _broadcast_like(noise_schedule.gamma(t), x_data)
        loss = loss + _mean_over_data((gamma * score.astype(x_data.dtype) + z) ** 2)
    return loss


def sde_sample(velocity, score, x, times, *, diffusion, key, cond=None):
    """Euler-Maruyama for the SDE with the marginals of a flow, from the source (``times[0] =
    1``) to the data (``times[-1] = 0``), library time:

        dx = (v(x, t) - g^2 / 2 score(x, t)) dt + g dW,  dt < 0

    (the reverse-time SDE whose Fokker-Planck equation is the flow's continuity equation;
    Song et al. 2021, eq. 6 and 13; SF2M, Tong et al. 2024, eq. 4 with ``g = sigma``). ``score``
    is ``grad log p_t``; ``diffusion`` is the constant ``g``.
    """
    x = jnp.asarray(x)
    times = jnp.asarray(times, x.dtype)

    def step(x, inputs):
        t, t_next, index = inputs
        h = t_next - t
        drift = velocity(x, t, cond) - 0.5 * diffusion**2 * score(x, t, cond)
        xi = jax.random.normal(jax.random.fold_in(key, index), x.shape, x.dtype)
        return x + h * drift + diffusion * jnp.sqrt(jnp.abs(h)) * xi, None

    x, _ = jax.lax.scan(step, x, (times[:-1], times[1:], jnp.arange(times.shape[0] - 1)))
    return x
