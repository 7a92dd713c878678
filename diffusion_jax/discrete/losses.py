"""Objectives of the discrete family, per example, in nats.

Network contract: ``network(tokens, t, cond=None) -> logits (B, ..., K)`` (see ``samplers``).
Each ``*_loss`` returns a per-example ``(B,)`` array for ``training.make_train_step``; the
``*_terms`` functions take ``x_t`` and ``t`` explicitly so that tests can enumerate them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffusion_jax.discrete.categorical import pad_to_states
from diffusion_jax.discrete.checks import check_tokens, model_logits

__all__ = [
    "DFM_LOSSES",
    "d3pm_loss",
    "d3pm_nelbo",
    "d3pm_prior_kl",
    "d3pm_terms",
    "dfm_loss",
    "dfm_terms",
    "masked_diffusion_loss",
    "masked_terms",
]

DFM_LOSSES = ("generalized_kl", "cross_entropy")


def _safe_log(probs):
    return jnp.log(jnp.maximum(probs, jnp.finfo(probs.dtype).tiny))


def _positions_sum(values):
    return jnp.sum(values.reshape(values.shape[0], -1), axis=1)


def _pick(log_probs, tokens):
    return jnp.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0]


# -- D3PM ----------------------------------------------------------------------------------------


def d3pm_terms(network, process, x0, x_t, t, *, cond=None):
    """Per-position ``(vb, ce)`` at steps ``t (B,)`` in ``1..T`` (Austin et al. 2021, Eq. 1 & 5):
    ``vb = KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t))`` for ``t > 1`` and the
    reconstruction ``-log p_theta(x_0 | x_1)`` at ``t = 1``; ``ce = -log p~_theta(x_0 | x_t)``,
    the direct prediction (the hybrid loss's auxiliary term)."""
    dtype = process.cumulative.dtype
    logits = model_logits(network, x_t, t / process.num_steps, cond, process.num_classes)
    log_x0 = jax.nn.log_softmax(logits.astype(dtype), axis=-1)
    model = process.posterior_probs(pad_to_states(jnp.exp(log_x0), process.num_states), x_t, t)
    true = process.posterior_probs(jax.nn.one_hot(x0, process.num_states, dtype=dtype), x_t, t)
    kl = jnp.sum(jax.scipy.special.xlogy(true, true) - true * _safe_log(model), axis=-1)
    reconstruction = -_pick(_safe_log(model), x0)
    first = (t == 1).reshape(t.shape + (1,) * (x0.ndim - 1))
    return jnp.where(first, reconstruction, kl), -_pick(log_x0, x0)


def d3pm_prior_kl(process, x0):
    """``sum_i KL(q(x_T^i | x_0^i) || p(x_T))`` per example (``(B,)``, nats; ``0`` for absorbing
    with the ``jsd`` schedule, large where ``p(x_T)`` has no mass the marginal has)."""
    marginal = process.marginal_probs(x0, jnp.full(x0.shape[:1], process.num_steps))
    prior = process.prior_probs()
    kl = jnp.sum(jax.scipy.special.xlogy(marginal, marginal) - marginal * _safe_log(prior), -1)
    return _positions_sum(kl)


def _d3pm_draw(process, x0, key):
    t_key, x_key = jax.random.split(key)
    t = jax.random.randint(t_key, x0.shape[:1], 1, process.num_steps + 1)
    return t, process.sample_marginal(x_key, x0, t)


def d3pm_loss(network, process, x0, key, *, hybrid_coeff=0.001, cond=None):
    """D3PM hybrid loss ``L_{t-1} + lambda * CE`` per example (Austin et al. 2021, Eq. 5;
    ``lambda = 0.001`` for images; ``0`` gives the pure variational term), ``t ~ U{1..T}``,
    averaged over positions (nats per position)."""
    x0 = check_tokens(x0, process.num_classes, "x0")
    t, x_t = _d3pm_draw(process, x0, key)
    vb, ce = d3pm_terms(network, process, x0, x_t, t, cond=cond)
    per_position = vb + hybrid_coeff * ce
    return jnp.mean(per_position.reshape(per_position.shape[0], -1), axis=1)


def d3pm_nelbo(network, process, x0, key, *, cond=None):
    """Unbiased one-draw estimate of the negative ELBO per example (``(B,)``, nats, summed over
    positions): ``KL(q(x_T | x_0) || p(x_T)) + T * L_{t-1}`` with ``t ~ U{1..T}``."""
    x0 = check_tokens(x0, process.num_classes, "x0")
    t, x_t = _d3pm_draw(process, x0, key)
    vb, _ = d3pm_terms(network, process, x0, x_t, t, cond=cond)
    return d3pm_prior_kl(process, x0) + process.num_steps * _positions_sum(vb)


# -- masked diffusion ----------------------------------------------------------------------------


def masked_terms(network, process, x0, x_t, t, *, cond=None):
    """Per-position integrand of the continuous-time masked-diffusion NELBO (MDLM, Sahoo et al.
    2024, Eq. 10; MD4, Shi et al. 2024, Eq. 5): ``-alpha'_t/(1 - alpha_t) * -log p_theta(x_0 |
    x_t)`` on masked positions, ``0`` on clean ones. SUBS parameterisation: the logits cover the
    ``K`` data classes only (zero mask probability) and clean tokens are carried over, so they
    cost nothing."""
    logits = model_logits(network, x_t, t, cond, process.num_classes)
    nll = -_pick(jax.nn.log_softmax(logits, axis=-1), x0)
    weight = process.weight(t).reshape(t.shape + (1,) * (x0.ndim - 1))
    return jnp.where(x_t == process.mask_index, weight * nll, 0.0)


def _unit_times(key, batch, dtype=jnp.float32):
    """``t ~ U(0, 1]`` (``1 - U[0, 1)``, so the weight ``1/t`` never sees ``t = 0``)."""
    return 1.0 - jax.random.uniform(key, (batch,), dtype)


def masked_diffusion_loss(network, process, x0, key, *, cond=None):
    """Unbiased one-draw estimate of the masked-diffusion NELBO per example (``(B,)``, nats,
    summed over positions), ``t ~ U(0, 1]``. Its expectation does not depend on the schedule."""
    x0 = check_tokens(x0, process.num_classes, "x0")
    t_key, x_key = jax.random.split(key)
    t = _unit_times(t_key, x0.shape[0])
    x_t = process.sample_marginal(x_key, x0, t)
    return _positions_sum(masked_terms(network, process, x0, x_t, t, cond=cond))


# -- discrete flow matching ----------------------------------------------------------------------


def dfm_terms(network, path, x1, x_t, t, *, kind="generalized_kl", cond=None):
    """Per-position discrete flow matching loss at ``t (B,)`` (Gat et al. 2024; Shaul et al.
    2024, "Flow matching with general discrete paths", for the ELBO).

    ``generalized_kl``: the Bregman (generalised KL) divergence between the conditional rates
    ``u = lambda (delta_{x_1} - delta_{x_t})`` and the model's ``v = lambda (p_{1|t} -
    delta_{x_t})``, ``lambda = kappa'/(1 - kappa)``, summed over ``y != x_t``:
    ``lambda [(1 - delta) (-log p(x_1) - 1) + 1 - p(x_t)]``, ``delta = [x_t = x_1]``. Its time
    integral is a negative ELBO; with the mask source it is the masked-diffusion NELBO.
    ``cross_entropy``: ``-log p_{1|t}(x_1 | x_t)`` (Gat et al. 2024, Eq. 26), on masked positions
    only for the mask source. Clean tokens of the mask source are carried over (SUBS)."""
    if kind not in DFM_LOSSES:
        raise ValueError(f"unknown DFM loss {kind!r}; expected one of {', '.join(DFM_LOSSES)}")
    logits = model_logits(network, x_t, t, cond, path.num_classes)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    masked = (x_t == path.mask_index) if path.source == "mask" else jnp.ones(x_t.shape, bool)
    nll = -_pick(log_probs, x1)
    if kind == "cross_entropy":
        return jnp.where(masked, nll, 0.0)
    probs = pad_to_states(jnp.exp(log_probs), path.num_states)
    stay = jnp.where(masked, _pick(probs, x_t), 1.0)  # carry-over: p(x_t) = 1 for clean tokens
    nll = jnp.where(masked, nll, 0.0)
    moved = (x_t != x1).astype(logits.dtype)
    coefficient = path.jump_coefficient(t).reshape(t.shape + (1,) * (x1.ndim - 1))
    return coefficient * (moved * (nll - 1.0) + 1.0 - stay)


def dfm_loss(network, path, x1, key, *, kind="generalized_kl", cond=None):
    """One-draw discrete flow matching loss per example (``(B,)``, summed over positions),
    ``t ~ U[0, 1)``, ``x_t`` from the mixture path. With ``generalized_kl`` it is an unbiased
    estimate of a negative ELBO in nats."""
    x1 = check_tokens(x1, path.num_classes, "x1")
    t_key, x_key = jax.random.split(key)
    t = jax.random.uniform(t_key, x1.shape[:1])
    x_t = path.sample_marginal(x_key, x1, t)
    return _positions_sum(dfm_terms(network, path, x1, x_t, t, kind=kind, cond=cond))
