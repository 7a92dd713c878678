"""Noise-level grids for sampling: descending VE-frame sigmas that end in 0.

The number of steps fixes the grid's shape (a Python int); every float stays traced, so a grid can
be built inside ``jit`` and differentiated with respect to its end points.
"""

from __future__ import annotations

import jax.numpy as jnp

from diffusion_jax.processes import VP, Process

__all__ = [
    "karras_levels",
    "karras_interpolate",
    "karras_sigmas",
    "log_uniform_sigmas",
    "time_uniform_sigmas",
    "time_quadratic_sigmas",
    "edm_vp_sigmas",
]


def _check_num_steps(num_steps, name="num_steps"):
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
        raise ValueError(f"{name} must be a positive Python int; got {num_steps!r}")


def _check_range(low, high, low_name, high_name):
    """Raise ``ValueError`` if concrete end points are not ``0 < low < high`` (or not finite)."""
    try:
        low_value, high_value = float(low), float(high)
    except (TypeError, ValueError):  # traced values cannot be checked
        return
    if not (0.0 < low_value < high_value < float("inf")):
        raise ValueError(
            f"need 0 < {low_name} < {high_name} < inf; got {low_name}={low_value}, "
            f"{high_name}={high_value}"
        )


def _fractions(num_steps, dtype):
    """``i / (N - 1)`` for ``i = 0..N-1`` (a single step sits at the first end point)."""
    if num_steps == 1:
        return jnp.zeros((1,), dtype)
    return jnp.arange(num_steps, dtype=dtype) / (num_steps - 1)


def _append_zero(sigmas):
    return jnp.concatenate([sigmas, jnp.zeros((1,), sigmas.dtype)])


def _float_dtype(*values):
    return jnp.result_type(float, *[jnp.asarray(v).dtype for v in values])


def _check_rho(rho):
    """Raise ``ValueError`` unless a concrete ``rho`` is a finite number > 0."""
    try:
        value = float(rho)
    except (TypeError, ValueError):  # traced values cannot be checked
        return
    if not 0.0 < value < float("inf"):
        raise ValueError(f"rho must be a finite number > 0; got {value}")


def karras_levels(num_levels, sigma_min=0.002, sigma_max=80.0, rho=7.0):
    """The ``num_levels`` Karras noise levels ``(s_max^(1/rho) + i/(N-1) (s_min^(1/rho) -
    s_max^(1/rho)))^rho``, descending, no trailing 0 (Karras et al. 2022, eq. 5); the one home of
    the formula (:func:`karras_sigmas` and :class:`diffusion_jax.schedules.KarrasLevels` use it).
    """
    _check_num_steps(num_levels, "num_levels")
    _check_range(sigma_min, sigma_max, "sigma_min", "sigma_max")
    _check_rho(rho)
    dtype = _float_dtype(sigma_min, sigma_max, rho)
    return karras_interpolate(_fractions(num_levels, dtype), sigma_min, sigma_max, rho)


def karras_interpolate(fraction, sigma_min=0.002, sigma_max=80.0, rho=7.0):
    """``(s_max^(1/rho) + fraction (s_min^(1/rho) - s_max^(1/rho)))^rho`` for any (traced)
    ``fraction`` in ``[0, 1]``: the level a fraction of the way down a Karras grid (Karras et al.
    2022, eq. 5), also for a traced number of levels (consistency-training curricula)."""
    fraction = jnp.asarray(fraction)
    dtype = _float_dtype(fraction, sigma_min, sigma_max, rho)
    low = jnp.asarray(sigma_min, dtype) ** (1.0 / rho)
    high = jnp.asarray(sigma_max, dtype) ** (1.0 / rho)
    return (high + fraction.astype(dtype) * (low - high)) ** rho


def karras_sigmas(num_steps, sigma_min=0.002, sigma_max=80.0, rho=7.0):
    """EDM grid: :func:`karras_levels` plus a final 0 (Karras et al. 2022, eq. 5). Returns
    ``num_steps + 1`` values.
    """
    _check_num_steps(num_steps)
    return _append_zero(karras_levels(num_steps, sigma_min, sigma_max, rho))


def log_uniform_sigmas(num_steps, sigma_min=0.002, sigma_max=80.0):
    """Grid uniform in ``log sigma`` (= uniform in logSNR for every process; Lu et al. 2022,
    "DPM-Solver", Sec. 3.3 "logSNR" spacing; the ``rho -> inf`` limit of eq. 5 of Karras et al.
    2022), plus a final 0. Returns ``num_steps + 1`` values.
    """
    _check_num_steps(num_steps)
    _check_range(sigma_min, sigma_max, "sigma_min", "sigma_max")
    dtype = _float_dtype(sigma_min, sigma_max)
    fractions = _fractions(num_steps, dtype)
    log_high = jnp.log(jnp.asarray(sigma_max, dtype))
    log_low = jnp.log(jnp.asarray(sigma_min, dtype))
    return _append_zero(jnp.exp(log_high + fractions * (log_low - log_high)))


def _time_grid(process, num_steps, t_min, t_max, power):
    _check_num_steps(num_steps)
    if not isinstance(process, Process):
        raise ValueError(f"process must be a diffusion_jax.processes.Process; got {process!r}")
    t_max = process.t_max if t_max is None else t_max
    _check_range(t_min, t_max, "t_min", "t_max")
    dtype = _float_dtype(t_min, t_max)
    fractions = _fractions(num_steps, dtype)
    high = jnp.asarray(t_max, dtype) ** (1.0 / power)
    low = jnp.asarray(t_min, dtype) ** (1.0 / power)
    times = (high + fractions * (low - high)) ** power
    return _append_zero(process.ve_sigma(times).astype(dtype))


def time_uniform_sigmas(process, num_steps, t_min=1e-3, t_max=None):
    """VE sigmas of a process at times uniform in ``[t_min, t_max]`` (Song et al. 2021; Lu et al.
    2022, "DPM-Solver", Sec. 3.3 "time uniform"), plus a final 0. ``t_max`` defaults to the
    process's ``t_max``. Returns ``num_steps + 1`` values.
    """
    return _time_grid(process, num_steps, t_min, t_max, 1.0)


def time_quadratic_sigmas(process, num_steps, t_min=1e-3, t_max=None):
    """VE sigmas at times uniform in ``sqrt(t)`` between ``t_min`` and ``t_max`` (Song et al. 2021
    DDIM "quadratic" skip; Lu et al. 2022, "DPM-Solver", App. D.1 "time quadratic"), plus a 0.
    """
    return _time_grid(process, num_steps, t_min, t_max, 2.0)


def edm_vp_sigmas(num_steps, epsilon_s=1e-3, beta_min=0.1, beta_max=20.0):
    """EDM's VP discretisation: ``t_i = 1 + i/(N-1) (eps_s - 1)``, ``sigma_i = VP.ve_sigma(t_i)``
    (Karras et al. 2022, Table 1 "VP" time steps; Song et al. 2021), plus a final 0. With the
    defaults ``sigma_0 = 152.17`` and ``sigma_{N-1} = 0.010486``.
    """
    return time_uniform_sigmas(VP(beta_min=beta_min, beta_max=beta_max), num_steps, epsilon_s, 1.0)
