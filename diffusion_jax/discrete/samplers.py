"""Samplers of the discrete family and a categorical draw that keeps the tail.

Network contract (every function here): ``network(tokens, t, cond=None) -> logits``, ``tokens``
int ``(B, ...)`` in ``0..num_states-1``, ``t`` float ``(B,)`` in the process's own time
(``D3PM``: ``t / T``; masked diffusion and flow matching: ``t`` in ``[0, 1]``), logits
``(B, ..., K)`` over the ``K`` data classes (the mask is never predicted).

Samplers are pure functions with a ``lax.scan`` body: ``sample_<name>(network, process, key,
shape, *, num_steps, cond=None, dtype=None) -> tokens``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from diffusion_jax.discrete.categorical import categorical, pad_to_states, uniform_with_tail
from diffusion_jax.discrete.checks import model_logits, resolve_dtype

__all__ = [
    "SAMPLERS",
    "categorical",
    "sample_d3pm",
    "sample_dfm_euler",
    "sample_masked",
    "sample_masked_first_hitting",
    "uniform_with_tail",
]


def _batch_keys(key, num_steps):
    return jax.random.split(key, num_steps)


def _log(probs):
    return jnp.log(jnp.maximum(probs, 0.0))


def sample_d3pm(network, process, key, shape, *, cond=None, dtype=None):
    """Ancestral D3PM sampling (Austin et al. 2021, Sec. 3.3): ``x_T ~ p(x_T)`` (uniform or all
    mask), then for ``t = T..1`` ``x_{t-1} ~ sum_x0 q(x_{t-1} | x_t, x_0) p_theta(x_0 | x_t)``;
    at ``t = 1`` (``Qbar_0 = I``) this is ``∝ Q_1[:, x_1] ⊙ p_theta(x_0 | x_1)``. ``T`` network
    evaluations; ``shape = (B, ...)``."""
    dtype = resolve_dtype(dtype)
    prior_key, key = jax.random.split(key)
    prior = jnp.broadcast_to(jnp.log(process.prior_probs()), tuple(shape) + (process.num_states,))
    x = categorical(prior_key, prior, dtype=dtype)
    num_steps = process.num_steps
    steps = jnp.arange(num_steps, 0, -1)

    def step(x, inputs):
        t, step_key = inputs
        t_batch = jnp.full((shape[0],), t)
        logits = model_logits(network, x, t_batch / num_steps, cond, process.num_classes)
        x0_probs = pad_to_states(jax.nn.softmax(logits.astype(dtype), axis=-1), process.num_states)
        probs = process.posterior_probs(x0_probs, x, t_batch)
        return categorical(step_key, _log(probs), dtype=dtype), None

    x, _ = jax.lax.scan(step, x, (steps, _batch_keys(key, num_steps)))
    return x


def sample_masked(network, process, key, shape, *, num_steps, cond=None, dtype=None,
                  cache=True, return_nfe=False):
    """Masked-diffusion ancestral sampling (MDLM, Sahoo et al. 2024, Sec. 3.3; MD4, Shi et al.
    2024, Alg. 2) on the grid ``t_i = 1 - i/N``: a masked token unmasks between ``t`` and ``s``
    with probability ``(alpha_s - alpha_t)/(1 - alpha_t)`` to a draw from
    ``p_theta(x_0 | x_t)``; clean tokens are carried over; at ``s = 0`` every token is clean.

    ``cache=True`` reuses the previous step's logits when no token changed (MDLM's caching, under
    ``lax.cond``): exact for a time-independent network, and the true posterior ``p(x_0 | x_t)``
    of masked diffusion does not depend on ``t``. ``return_nfe`` also returns the number of
    network evaluations."""
    dtype = resolve_dtype(dtype)
    x = jnp.full(tuple(shape), process.mask_index, jnp.int32)
    grid = jnp.linspace(1.0, 0.0, num_steps + 1, dtype=dtype)
    batch = shape[0]

    def evaluate(x, t):
        logits = model_logits(network, x, jnp.full((batch,), t), cond, process.num_classes)
        return logits.astype(dtype)

    def step(carry, inputs):
        x, logits, changed, nfe = carry
        t, s, step_key = inputs
        if cache:
            logits = jax.lax.cond(changed, evaluate, lambda x, t: logits, x, t)
            nfe = nfe + changed.astype(jnp.int32)
        else:
            logits = evaluate(x, t)
            nfe = nfe + 1
        probs = process.posterior_probs(jax.nn.softmax(logits, axis=-1), x,
                                        jnp.full((batch,), t), jnp.full((batch,), s))
        x_new = categorical(step_key, _log(probs), dtype=dtype)
        return (x_new, logits, jnp.any(x_new != x), nfe), None

    initial_logits = jnp.zeros(tuple(shape) + (process.num_classes,), dtype)
    carry = (x, initial_logits, jnp.asarray(True), jnp.asarray(0, jnp.int32))
    (x, _, _, nfe), _ = jax.lax.scan(
        step, carry, (grid[:-1], grid[1:], _batch_keys(key, num_steps))
    )
    return (x, nfe) if return_nfe else x


def sample_masked_first_hitting(network, process, key, shape, *, cond=None, dtype=None):
    """Exact masked-diffusion sampling by first hitting times (Zheng et al. 2024, "Masked
    diffusion models are secretly time-agnostic masked models and exploit inaccurate categorical
    sampling", arXiv 2409.02908, Sec. 4.1; a Gillespie-style simulation, Gillespie 1977): from
    ``t = 1`` with ``n`` masked tokens, draw the next unmasking time ``s``
    (:meth:`MaskedDiffusion.next_unmask_time`), unmask one masked position chosen uniformly at
    random to a draw from ``p_theta(x_0 | x_t)`` at time ``s``, and repeat until no mask is left.
    No time discretisation: with the true posterior the samples follow the data distribution
    exactly, including the joint of correlated tokens, in exactly ``L`` network evaluations (one
    per position)."""
    dtype = resolve_dtype(dtype)
    shape = tuple(shape)
    batch, positions = shape[0], math.prod(shape[1:])
    x = jnp.full(shape, process.mask_index, jnp.int32)
    t = jnp.ones((batch,), dtype)

    def step(carry, inputs):
        x, t = carry
        num_masked, step_key = inputs
        time_key, position_key, draw_key = jax.random.split(step_key, 3)
        s = process.next_unmask_time(t, num_masked.astype(dtype),
                                     uniform_with_tail(time_key, (batch,), dtype))
        masked = (x == process.mask_index).reshape(batch, positions)
        scores = jnp.where(masked, jax.random.uniform(position_key, masked.shape), -1.0)
        chosen = jax.nn.one_hot(jnp.argmax(scores, axis=1), positions, dtype=bool)
        logits = model_logits(network, x, s, cond, process.num_classes).astype(dtype)
        draw = categorical(draw_key, logits, dtype=dtype)
        x = jnp.where(chosen.reshape(shape), draw, x).astype(jnp.int32)
        return (x, s), None

    counts = jnp.arange(positions, 0, -1)
    (x, _), _ = jax.lax.scan(step, (x, t), (counts, _batch_keys(key, positions)))
    return x


def sample_dfm_euler(network, path, key, shape, *, num_steps, cond=None, dtype=None):
    """Discrete flow matching Euler sampler (Gat et al. 2024, Alg. 1) on ``t_i = i/N``: per
    token ``x_{t+h} ~ delta_{x_t} + h u_t(· | x_t)`` with the mixture-path velocity
    ``u = kappa'/(1 - kappa) (p_{1|t} - delta_{x_t})``, i.e. a jump to a draw from ``p_{1|t}``
    with probability ``min(1, h kappa'/(1 - kappa))`` (for ``kappa = t`` this equals the exact
    ``(kappa_{t+h} - kappa_t)/(1 - kappa_t)``). With a mask source, clean tokens are carried over.
    """
    dtype = resolve_dtype(dtype)
    source_key, key = jax.random.split(key)
    x = path.sample_source(source_key, tuple(shape))
    grid = jnp.linspace(0.0, 1.0, num_steps + 1, dtype=dtype)
    batch = shape[0]

    def step(x, inputs):
        t, t_next, step_key = inputs
        jump_key, draw_key = jax.random.split(step_key)
        logits = model_logits(network, x, jnp.full((batch,), t), cond, path.num_classes)
        draw = categorical(draw_key, logits, dtype=dtype)
        jump = jnp.minimum((t_next - t) * path.jump_coefficient(t), 1.0)
        jumps = jax.random.uniform(jump_key, x.shape, dtype) < jump
        if path.source == "mask":
            jumps = jumps & (x == path.mask_index)
        return jnp.where(jumps, draw, x).astype(jnp.int32), None

    x, _ = jax.lax.scan(step, x, (grid[:-1], grid[1:], _batch_keys(key, num_steps)))
    return x


#: Each sampler with the process class it needs, whether it is stochastic and its NFE.
SAMPLERS = {
    "d3pm_ancestral": {"fn": sample_d3pm, "process": "D3PM", "nfe": "T"},
    "masked_ancestral": {"fn": sample_masked, "process": "MaskedDiffusion",
                         "nfe": "<= num_steps (cached)"},
    "masked_first_hitting": {"fn": sample_masked_first_hitting, "process": "MaskedDiffusion",
                             "nfe": "L (one per position)"},
    "dfm_euler": {"fn": sample_dfm_euler, "process": "MixturePath", "nfe": "num_steps"},
}
