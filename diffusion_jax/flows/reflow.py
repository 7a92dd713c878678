"""Reflow (k-rectified flow, Liu et al. 2023, "Flow straight and fast", Sec. 2.2-2.3):
(source, sample) pairs from a frozen teacher flow, a coupling that draws them online, and the
one-step distillation objective.

Library time: data at ``t = 0``, source at ``t = 1``; the teacher is integrated from 1 to 0.
Source points are drawn per global index, ``source_sample(fold_in(key, i))``, so a pair depends
only on its index (not on the batch size, the shard size or the device count) and an offline
generation can resume at any shard (``diffusion_jax.recipes.flows.write_reflow_pairs``).
Rectification never increases a convex transport cost: the coupling ``(X_1, Phi(X_1))`` of a
rectified flow has ``E c(Phi(X_1) - X_1) <= E c(X_0 - X_1)`` (Liu et al. 2023, Thm. 3.5).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffusion_jax.flows import ode
from diffusion_jax.flows.couplings import check_pair_batches

__all__ = [
    "source_by_index",
    "teacher_samples",
    "teacher_coupling",
    "distillation_loss",
]


def source_by_index(source_sample, key, indices):
    """Source points ``source_sample(fold_in(key, i))`` for each global index ``i`` (one point
    each; ``source_sample(key) -> (*shape)``), stacked ``(len(indices), *shape)``."""
    return jax.vmap(lambda i: source_sample(jax.random.fold_in(key, i)))(jnp.asarray(indices))


def teacher_samples(velocity, x_source, *, method="rk4", num_steps=32, cond=None,
                    adaptive=False, rtol=1e-5, atol=1e-5):
    """The teacher's endpoints ``Phi(x_source)`` at ``t = 0``: a fixed-grid solve of
    ``num_steps`` with ``method`` or (``adaptive``) a Dopri5 solve."""
    if adaptive:
        return ode.solve_adaptive(velocity, x_source, cond=cond, rtol=rtol, atol=atol)[0]
    return ode.integrate(velocity, x_source, ode.time_grid(num_steps, dtype=x_source.dtype),
                         method=method, cond=cond)


def teacher_coupling(velocity, *, method="rk4", num_steps=32, adaptive=False):
    """A coupling ``(x_data, x_source, key, cond) -> (Phi(x_source), x_source, cond)`` for
    online reflow from a frozen teacher ``velocity`` (the data batch only fixes the shape; the
    teacher's gradient is stopped)."""

    def coupling(x_data, x_source, key=None, cond=None):
        del key
        x_data, x_source, cond = check_pair_batches(x_data, x_source, cond)
        samples = teacher_samples(velocity, x_source, method=method, num_steps=num_steps,
                                  cond=cond, adaptive=adaptive)
        return jax.lax.stop_gradient(samples), x_source, cond

    return coupling


def distillation_loss(velocity_model, x_data, x_source, cond=None):
    """One-step distillation of a rectified flow (Liu et al. 2023, Sec. 2.3, eq. 8 with one
    Euler step): ``mean ||x_source - v(x_source, 1) - x_data||^2`` per example, on teacher pairs
    ``(x_data, x_source) = (Phi(x_source), x_source)``; the student's one Euler step from ``t = 1``
    lands on the teacher's sample."""
    x_data, x_source, cond = check_pair_batches(x_data, x_source, cond)
    one_step = x_source - velocity_model(x_source, jnp.ones(x_source.shape[:1], x_source.dtype),
                                         cond)
    squared = (one_step - x_data) ** 2
    return jnp.mean(jnp.reshape(squared, (squared.shape[0], -1)), axis=-1)
