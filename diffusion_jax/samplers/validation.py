"""Value checks that work inside ``jit``: :func:`checked` wraps a sampler with
``jax.experimental.checkify`` checks of its grid, noise and numeric options.

Concrete (non-traced) bad values already raise ``ValueError`` in every sampler; traced values
cannot be inspected by Python, and a grid with a 0 before its end, for example, silently gives
NaN. ``checked(sampler)`` returns ``checkify.checkify`` of the sampler with these checks, so the
caller gets an error object whose message says what was wrong::

    error, x0 = jax.jit(samplers.checked(samplers.heun))(denoiser, noise, sigmas)
    error.throw()   # raises JaxRuntimeError "sigmas must be strictly descending: ..."
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
from jax.experimental import checkify

from diffusion_jax.samplers._core import NONNEGATIVE_OPTIONS

__all__ = ["checked", "check_grid_in_jit"]


def check_grid_in_jit(sigmas, dtype):
    """``checkify.check`` that ``sigmas`` (in ``dtype``) is finite, strictly descending, ends in
    0, and has no positive value below the smallest normal number of ``dtype`` (each check's
    format arguments have their own names: checkify mixes up same-named ones)."""
    sigmas = jnp.asarray(sigmas).astype(dtype)
    finite = jnp.isfinite(sigmas)
    checkify.check(
        jnp.all(finite), "sigmas must be finite: sigmas[{bad}] = {bad_value}",
        bad=jnp.argmin(finite), bad_value=sigmas[jnp.argmin(finite)],
    )
    checkify.check(sigmas[-1] == 0, "sigmas must end in 0; the last value is {last}",
                   last=sigmas[-1])
    zero_inside = sigmas[:-1] == 0
    checkify.check(
        ~jnp.any(zero_inside),
        f"sigmas has a 0 before its end, at index {{zero}} (of {sigmas.shape[0]})",
        zero=jnp.argmax(zero_inside),
    )
    descending = sigmas[1:] < sigmas[:-1]
    i = jnp.argmin(descending)
    checkify.check(
        jnp.all(descending),
        "sigmas must be strictly descending: sigmas[{i}] = {a} then sigmas[{j}] = {b}",
        i=i, a=sigmas[i], j=i + 1, b=sigmas[i + 1],
    )
    tiny = jnp.finfo(dtype).tiny
    checkify.check(
        sigmas[-2] >= tiny, "sigmas above 0 must be normal numbers (>= {tiny}); got {smallest}",
        tiny=jnp.asarray(tiny, dtype), smallest=sigmas[-2],
    )


def checked(sampler):
    """``checkify.checkify`` of ``sampler`` with in-``jit`` checks of the grid
    (:func:`check_grid_in_jit`), of ``noise`` (finite), of the non-negative options (``eta``,
    ``s_churn``, ``s_noise``, ``s_tmin``, ``s_tmax``, ``snr``: not negative, not NaN) and of
    the result (finite). Returns ``(error, result)``; call ``error.throw()`` outside ``jit``."""

    @functools.wraps(sampler)
    def validated(denoiser, noise, sigmas, **kwargs):
        noise = jnp.asarray(noise)
        checkify.check(jnp.all(jnp.isfinite(noise)), "noise must be finite (it has NaN or inf)")
        check_grid_in_jit(sigmas, noise.dtype)
        for name in NONNEGATIVE_OPTIONS:
            if name in kwargs:
                value = jnp.asarray(kwargs[name])
                checkify.check(value >= 0, f"{name} must be >= 0 and not NaN; got {{{name}}}",
                               **{name: value})
        result = sampler(denoiser, noise, sigmas, **kwargs)
        x0 = result[0] if isinstance(result, tuple) else result
        checkify.check(
            jnp.all(jnp.isfinite(x0)),
            "the sample has NaN or inf although the grid and options passed their checks "
            "(check the denoiser)",
        )
        return result

    return checkify.checkify(validated)
