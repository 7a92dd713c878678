"""Categorical forward processes on ``K`` data classes, each a frozen pytree with closed-form
marginals and posteriors.

**Matrix convention (every matrix in this module): row-stochastic.** ``Q[i, j] = q(x_t = j |
x_{t-1} = i)``, so rows sum to 1, ``q(x_t | x_{t-1}) = onehot(x_{t-1}) @ Q_t`` and
``Qbar_t = Q_1 @ Q_2 @ ... @ Q_t`` with ``q(x_t | x_0) = onehot(x_0) @ Qbar_t`` and ``Qbar_0 = I``.
This is the D3PM *image* code's convention (Austin et al. 2021); their text code stores the
transpose (columns sum to 1).

**State space.** Data classes are ``0..K-1``. Processes with a mask (absorbing D3PM, masked
diffusion, discrete flow matching from a mask source) add one state, the mask, at index ``K``, so
``num_states = K + 1``; otherwise ``num_states = K``. Networks always return ``K`` logits (the
mask is never a clean token: MDLM's SUBS "zero mask probability").

**Time.** ``D3PM``: integer steps ``t = 1..T`` with ``x_0`` data and ``x_T`` noise (the paper's
labels; the D3PM code calls the noisy states ``x_0..x_{T-1}``). ``MaskedDiffusion``: continuous
``t in [0, 1]``, ``t = 0`` data, ``t = 1`` all masked, ``P(mask) = 1 - alpha_t`` (MDLM / MD4).
``MixturePath``: continuous ``t in [0, 1]``, ``t = 0`` source (mask or uniform), ``t = 1`` data,
``P(x_t = x_1) = kappa_t`` (Gat et al. 2024).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.discrete.categorical import categorical, pad_to_states
from diffusion_jax.pytrees import frozen_pytree as _pytree

__all__ = [
    "BETA_SCHEDULES",
    "D3PM",
    "D3PM_KINDS",
    "KAPPA_SCHEDULES",
    "MASK_SCHEDULES",
    "MaskedDiffusion",
    "MixturePath",
    "SOURCES",
    "beta_schedule",
    "d3pm",
]

D3PM_KINDS = ("uniform", "absorbing", "gaussian")
BETA_SCHEDULES = ("linear", "cosine", "jsd")
MASK_SCHEDULES = ("linear", "cosine", "polynomial")
KAPPA_SCHEDULES = ("linear", "cosine", "polynomial")
SOURCES = ("mask", "uniform")





def _check_classes(num_classes):
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2; got {num_classes!r}")
    return int(num_classes)


def _check_name(value, allowed, what):
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(allowed)}")


# -- D3PM (discrete time) ------------------------------------------------------------------------


def beta_schedule(name, num_steps, *, beta_start=0.02, beta_end=1.0):
    """``beta_t`` for ``t = 1..T`` as a float64 numpy array (Austin et al. 2021, Sec. 4 / App. A).

    ``linear``: ``linspace(beta_start, beta_end, T)``. ``cosine``: ``beta_t = 1 - f(t)/f(t-1)``,
    ``f(t) = cos((t/T + 0.008)/1.008 * pi/2)`` (Nichol & Dhariwal 2021's cumulative form, as D3PM
    uses it for uniform noise), clipped to ``[0, 0.999]``. ``jsd``: ``beta_t = 1/(T - t + 1)``
    (Sohl-Dickstein et al. 2015), so ``beta_T = 1`` and the absorbing chain is all-mask exactly at T.
    """
    _check_name(name, BETA_SCHEDULES, "beta schedule")
    if not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer; got {num_steps!r}")
    steps = np.arange(1, num_steps + 1, dtype=np.float64)
    if name == "linear":
        if not 0.0 < beta_start <= 1.0 or not 0.0 < beta_end <= 1.0:
            raise ValueError(f"linear betas must lie in (0, 1]; got {beta_start}, {beta_end}")
        return np.linspace(beta_start, beta_end, num_steps, dtype=np.float64)
    if name == "cosine":
        f = lambda s: np.cos((s / num_steps + 0.008) / 1.008 * np.pi / 2)  # noqa: E731
        return np.clip(1.0 - f(steps) / f(steps - 1.0), 0.0, 0.999)
    return 1.0 / (num_steps - steps + 1.0)


def _gaussian_matrix(beta, num_classes):
    """D3PM's discretised-Gaussian banded matrix (Austin et al. 2021, App. A.2.1): off-diagonal
    ``Q[i, j] ∝ exp(-4 (i - j)^2 / ((K - 1)^2 beta))`` normalised over offsets ``-(K-1)..K-1``,
    diagonal ``1 - sum`` of the row. Symmetric and row-stochastic, so it converges to uniform."""
    offsets = np.arange(-(num_classes - 1), num_classes, dtype=np.float64)
    weights = np.exp(-4.0 * offsets**2 / ((num_classes - 1) ** 2 * beta))
    weights /= weights.sum()
    index = np.arange(num_classes)
    distance = index[:, None] - index[None, :]
    matrix = weights[distance + num_classes - 1]
    np.fill_diagonal(matrix, 0.0)
    np.fill_diagonal(matrix, 1.0 - matrix.sum(axis=1))
    return matrix


def _jump_target(kind, num_classes):
    """``1 m^T``: every row jumps to ``m`` (uniform ``1/K``; absorbing ``e_mask``, mask = ``K``)."""
    states = num_classes + (kind == "absorbing")
    if kind == "uniform":
        return np.full((states, states), 1.0 / states)
    target = np.zeros((states, states))
    target[:, num_classes] = 1.0
    return target


def _one_step_matrices(kind, betas, num_classes):
    """``(T, S, S)`` one-step matrices ``Q_t = (1 - beta_t) I + beta_t 1 m^T`` (row-stochastic;
    banded for gaussian), float64."""
    if kind == "gaussian":
        return np.stack([_gaussian_matrix(b, num_classes) for b in betas])
    target = _jump_target(kind, num_classes)
    eye = np.eye(target.shape[0])
    return (1.0 - betas)[:, None, None] * eye + betas[:, None, None] * target


def _cumulative_matrices(kind, betas, onestep, num_classes):
    """``(T + 1, S, S)`` with ``Qbar_0 = I``: closed form ``abar_t I + (1 - abar_t) 1 m^T``,
    ``abar_t = prod_s (1 - beta_s)``, for uniform and absorbing; the running product for
    gaussian."""
    states = onestep.shape[-1]
    if kind == "gaussian":
        out = [np.eye(states)]
        for matrix in onestep:
            out.append(out[-1] @ matrix)
        return np.stack(out)
    alpha_bar = np.concatenate([[1.0], np.cumprod(1.0 - betas)])
    target = _jump_target(kind, num_classes)
    return alpha_bar[:, None, None] * np.eye(states) + (1.0 - alpha_bar)[:, None, None] * target


@_pytree(meta=("kind", "num_classes"))
class D3PM:
    """Discrete-time D3PM forward process (Austin et al. 2021) with stored one-step matrices
    ``onestep[t - 1] = Q_t`` ``(T, S, S)`` and cumulative ``cumulative[t] = Qbar_t``
    ``(T + 1, S, S)``; row-stochastic (``Q[i, j] = q(x_t = j | x_{t-1} = i)``, rows sum to 1).

    ``kind``: ``uniform`` (``Q_t = (1 - beta) I + beta/K 11^T``, stationary ``1/K``),
    ``absorbing`` (``Q_t = (1 - beta) I + beta 1 e_mask^T``, mask state ``K``, stationary
    ``e_mask``) or ``gaussian`` (banded, App. A.2.1, stationary ``1/K``). Build with ``d3pm``.
    """

    onestep: jax.Array
    cumulative: jax.Array
    kind: str
    num_classes: int

    @property
    def num_steps(self):
        return self.onestep.shape[0]

    @property
    def num_states(self):
        return self.num_classes + (self.kind == "absorbing")

    @property
    def mask_index(self):
        return self.num_classes if self.kind == "absorbing" else None

    def prior_probs(self):
        """The stationary distribution ``p(x_T)`` ``(S,)``: uniform over ``K`` or the mask."""
        if self.kind == "absorbing":
            return jax.nn.one_hot(self.num_classes, self.num_states, dtype=self.onestep.dtype)
        return jnp.full((self.num_states,), 1.0 / self.num_states, self.onestep.dtype)

    def marginal_probs(self, x0, t):
        """``q(x_t | x_0)`` ``(B, ..., S)`` for tokens ``x0 (B, ...)`` and steps ``t (B,)`` in
        ``0..T`` (row ``x_0`` of ``Qbar_t``)."""
        t = _per_example(t, x0)
        return self.cumulative[t, x0]

    def sample_marginal(self, key, x0, t):
        """Draw ``x_t ~ q(x_t | x_0)`` (tail-keeping Gumbel-max, ``categorical``)."""
        return categorical(key, jnp.log(self.marginal_probs(x0, t)))

    def posterior_probs(self, x0_probs, x_t, t):
        """``sum_{x_0} q(x_{t-1} | x_t, x_0) x0_probs(x_0)`` ``(B, ..., S)`` for ``x0_probs
        (B, ..., S)``, ``x_t (B, ...)`` and ``t (B,)`` in ``1..T``, where the true posterior is
        ``q(x_{t-1} | x_t, x_0) = Q_t[x_{t-1}, x_t] Qbar_{t-1}[x_0, x_{t-1}] / Qbar_t[x_0, x_t]``
        (Austin et al. 2021, Eq. 3). With a one-hot ``x0_probs`` it is the true posterior; with
        a network's ``p(x_0 | x_t)`` it is the x0-parameterised reverse step as a *mixture of
        posteriors*, so the exact ``q(x_0 | x_t)`` gives the exact reverse ``q(x_{t-1} | x_t)``.
        (D3PM's Eq. 4 instead normalises ``Q_t[:, x_t] ⊙ (p @ Qbar_{t-1})`` once, which differs
        unless ``Qbar_t[x_0, x_t]`` is constant in ``x_0``, e.g. absorbing at the mask.) Classes
        ``x_0`` that cannot reach ``x_t`` get no weight."""
        t_per_position = _per_example(t, x_t)
        columns = jnp.swapaxes(self.onestep, -1, -2)[t_per_position - 1, x_t]  # Q_t[:, x_t]
        evidence = jnp.swapaxes(self.cumulative, -1, -2)[t_per_position, x_t]  # Qbar_t[:, x_t]
        x0_probs = x0_probs.astype(self.cumulative.dtype)
        weights = jnp.where(evidence > 0, x0_probs / jnp.where(evidence > 0, evidence, 1.0), 0.0)
        previous = self.cumulative[t_per_position.reshape(-1) - 1]  # (B, S, S)
        unnormalised = columns * jnp.einsum("b...i,bij->b...j", weights, previous)
        return unnormalised / jnp.sum(unnormalised, axis=-1, keepdims=True)


def _per_example(t, x):
    """``t (B,)`` broadcast against ``x (B, ...)``; a scalar ``t`` applies to every example."""
    t = jnp.asarray(t)
    if t.ndim == 0:
        t = jnp.broadcast_to(t, x.shape[:1])
    return t.reshape(t.shape + (1,) * (x.ndim - 1))


def d3pm(kind, num_classes, *, num_steps=1000, schedule=None, beta_start=None, beta_end=None,
         dtype=jnp.float32):
    """A ``D3PM`` process with ``K = num_classes`` data classes and ``T = num_steps`` steps.

    Defaults per kind follow Austin et al. 2021: uniform ``cosine``, absorbing ``jsd``, gaussian
    ``linear`` with ``beta`` from 0.02 to 1 (their images: 1e-4..0.02 over 1000 steps with 256
    levels; a bandwidth ``beta`` relative to ``(K-1)^2`` needs larger values for few classes).
    The matrices are built in float64 and stored in ``dtype``.
    """
    _check_name(kind, D3PM_KINDS, "D3PM kind")
    num_classes = _check_classes(num_classes)
    if schedule is None:
        schedule = {"uniform": "cosine", "absorbing": "jsd", "gaussian": "linear"}[kind]
    kwargs = {}
    if beta_start is not None:
        kwargs["beta_start"] = beta_start
    if beta_end is not None:
        kwargs["beta_end"] = beta_end
    betas = beta_schedule(schedule, num_steps, **kwargs)
    onestep = _one_step_matrices(kind, betas, num_classes)
    cumulative = _cumulative_matrices(kind, betas, onestep, num_classes)
    return D3PM(onestep=jnp.asarray(onestep, dtype), cumulative=jnp.asarray(cumulative, dtype),
                kind=kind, num_classes=num_classes)


# -- masked diffusion (continuous time) ----------------------------------------------------------


def _mask_alpha(schedule, t, exponent):
    if schedule == "linear":
        return 1.0 - t
    if schedule == "cosine":
        return 1.0 - jnp.sin(0.5 * math.pi * t)  # = 1 - cos(pi/2 (1 - t)), exact at both ends
    return 1.0 - t**exponent


def _mask_time_of_alpha(schedule, alpha, exponent):
    if schedule == "linear":
        return 1.0 - alpha
    if schedule == "cosine":
        return jnp.arcsin(jnp.clip(1.0 - alpha, 0.0, 1.0)) / (0.5 * math.pi)
    return jnp.clip(1.0 - alpha, 0.0, 1.0) ** (1.0 / exponent)


def _mask_alpha_prime(schedule, t, exponent):
    if schedule == "linear":
        return -jnp.ones_like(t)
    if schedule == "cosine":
        return -0.5 * math.pi * jnp.cos(0.5 * math.pi * t)
    return -exponent * t ** (exponent - 1.0)


def _mask_weight(schedule, t, exponent):
    if schedule == "linear":
        return 1.0 / t
    if schedule == "cosine":
        return 0.5 * math.pi / jnp.tan(0.5 * math.pi * t)
    return exponent / t


@_pytree(meta=("num_classes", "schedule", "exponent"))
class MaskedDiffusion:
    """Continuous-time masked (absorbing) diffusion, MDLM (Sahoo et al. 2024) / MD4 (Shi et al.
    2024): ``q(x_t | x_0) = alpha_t onehot(x_0) + (1 - alpha_t) e_mask``, ``t = 0`` data,
    ``t = 1`` all masked, mask state ``K``. Schedules (MD4, Table 1): ``linear``
    ``alpha = 1 - t``; ``cosine`` ``alpha = 1 - cos(pi/2 (1 - t))``; ``polynomial``
    ``alpha = 1 - t^exponent``. The ELBO weight is ``-alpha'_t / (1 - alpha_t)``.
    """

    num_classes: int
    schedule: str = "linear"
    exponent: float = 1.0

    def __post_init__(self):
        _check_name(self.schedule, MASK_SCHEDULES, "masking schedule")
        _check_classes(self.num_classes)
        if not float(self.exponent) > 0:
            raise ValueError(f"exponent must be positive; got {self.exponent}")

    @property
    def num_states(self):
        return self.num_classes + 1

    @property
    def mask_index(self):
        return self.num_classes

    def alpha(self, t):
        """Probability that a token is still clean at time ``t``."""
        return _mask_alpha(self.schedule, jnp.asarray(t), self.exponent)

    def alpha_prime(self, t):
        """``d alpha / dt`` (analytic)."""
        return _mask_alpha_prime(self.schedule, jnp.asarray(t), self.exponent)

    def time_of_alpha(self, alpha):
        """The inverse of :meth:`alpha` (closed form for every schedule): the ``t`` with
        ``alpha_t = alpha``."""
        return _mask_time_of_alpha(self.schedule, jnp.asarray(alpha), self.exponent)

    def next_unmask_time(self, t, num_masked, uniform):
        """The next time ``s < t`` (going backwards) at which one of ``num_masked`` masked tokens
        becomes clean: each masked token's masking time has CDF ``(1 - alpha_s)/(1 - alpha_t)``
        on ``[0, t]``, so their maximum is drawn by inversion,
        ``1 - alpha_s = (1 - alpha_t) u^(1/n)`` (Zheng et al. 2024, arXiv 2409.02908, Sec. 4.1)."""
        one_minus = (1.0 - self.alpha(t)) * uniform ** (1.0 / num_masked)
        return self.time_of_alpha(1.0 - one_minus)

    def weight(self, t):
        """The ELBO weight ``-alpha'_t / (1 - alpha_t)`` (``1/t`` for the linear schedule)."""
        return _mask_weight(self.schedule, jnp.asarray(t), self.exponent)

    def marginal_probs(self, x0, t):
        """``q(x_t | x_0)`` ``(B, ..., K + 1)`` for ``t (B,)``."""
        alpha = _per_example(self.alpha(t), x0)[..., None]
        clean = jax.nn.one_hot(x0, self.num_states, dtype=alpha.dtype)
        return alpha * clean + (1.0 - alpha) * jax.nn.one_hot(self.mask_index, self.num_states,
                                                              dtype=alpha.dtype)

    def sample_marginal(self, key, x0, t):
        """Mask each token of ``x0 (B, ...)`` independently with probability ``1 - alpha_t``."""
        alpha = _per_example(self.alpha(t), x0)
        keep = jax.random.uniform(key, x0.shape, dtype=alpha.dtype) < alpha
        return jnp.where(keep, x0, self.mask_index).astype(x0.dtype)

    def unmask_probability(self, t, s):
        """``q(x_s != mask | x_t = mask, x_0)`` for ``s < t``: ``(alpha_s - alpha_t)/(1 - alpha_t)``."""
        alpha_t, alpha_s = self.alpha(t), self.alpha(s)
        return (alpha_s - alpha_t) / (1.0 - alpha_t)

    def posterior_probs(self, x0_probs, x_t, t, s):
        """``q(x_s | x_t, x_0)`` ``(B, ..., K + 1)``, ``s < t``, averaged over
        ``x_0 ~ x0_probs (B, ..., K)``: a masked token unmasks to ``x_0`` with probability
        ``(alpha_s - alpha_t)/(1 - alpha_t)``; a clean token stays (carry-over)."""
        unmask = _per_example(self.unmask_probability(t, s), x_t)[..., None]
        mask = jax.nn.one_hot(self.mask_index, self.num_states, dtype=unmask.dtype)
        padded = pad_to_states(x0_probs, self.num_states).astype(unmask.dtype)
        from_mask = unmask * padded + (1.0 - unmask) * mask
        stay = jax.nn.one_hot(x_t, self.num_states, dtype=unmask.dtype)
        return jnp.where((x_t == self.mask_index)[..., None], from_mask, stay)


# -- discrete flow matching (mixture path) -------------------------------------------------------


def _kappa(schedule, t, exponent):
    if schedule == "linear":
        return t
    if schedule == "cosine":
        return 1.0 - jnp.cos(0.5 * math.pi * t)
    return t**exponent


def _kappa_prime(schedule, t, exponent):
    if schedule == "linear":
        return jnp.ones_like(t)
    if schedule == "cosine":
        return 0.5 * math.pi * jnp.sin(0.5 * math.pi * t)
    return exponent * t ** (exponent - 1.0)


@_pytree(meta=("num_classes", "source", "schedule", "exponent"))
class MixturePath:
    """Discrete flow matching's factorised mixture path (Gat et al. 2024, Eq. 8):
    ``p_t(x^i | x_0, x_1) = kappa_t delta_{x_1^i} + (1 - kappa_t) delta_{x_0^i}``, ``x_0`` from the
    ``source`` (``mask``: every token the mask state ``K``; ``uniform``: uniform over ``K``),
    ``t = 0`` source, ``t = 1`` data. Schedules: ``linear`` ``kappa = t``; ``cosine``
    ``kappa = 1 - cos(pi t / 2)``; ``polynomial`` ``kappa = t^exponent``.

    The marginal velocity (a rate matrix row per token) is
    ``u_t(y | x_t) = kappa'/(1 - kappa) (p_{1|t}(y | x_t) - delta_{x_t}(y))`` (Gat et al. 2024,
    Eq. 12 with the mixture-path conditional velocity).
    """

    num_classes: int
    source: str = "mask"
    schedule: str = "linear"
    exponent: float = 1.0

    def __post_init__(self):
        _check_name(self.source, SOURCES, "source")
        _check_name(self.schedule, KAPPA_SCHEDULES, "kappa schedule")
        _check_classes(self.num_classes)
        if not float(self.exponent) > 0:
            raise ValueError(f"exponent must be positive; got {self.exponent}")

    @property
    def num_states(self):
        return self.num_classes + (self.source == "mask")

    @property
    def mask_index(self):
        return self.num_classes if self.source == "mask" else None

    def kappa(self, t):
        return _kappa(self.schedule, jnp.asarray(t), self.exponent)

    def kappa_prime(self, t):
        return _kappa_prime(self.schedule, jnp.asarray(t), self.exponent)

    def jump_coefficient(self, t):
        """``kappa'_t / (1 - kappa_t)``, the rate at which a token jumps to ``x_1``."""
        return self.kappa_prime(t) / (1.0 - self.kappa(t))

    def sample_source(self, key, shape, dtype=jnp.int32):
        if self.source == "mask":
            return jnp.full(shape, self.num_classes, dtype)
        return jax.random.randint(key, shape, 0, self.num_classes, dtype)

    def sample_marginal(self, key, x1, t):
        """``x_t``: each token is ``x1`` with probability ``kappa_t``, else a source draw."""
        source_key, keep_key = jax.random.split(key)
        kappa = _per_example(self.kappa(t), x1)
        keep = jax.random.uniform(keep_key, x1.shape, dtype=kappa.dtype) < kappa
        return jnp.where(keep, x1, self.sample_source(source_key, x1.shape, x1.dtype))

    def rates(self, x1_probs, x_t, t):
        """The rate matrix row ``u_t(· | x_t)`` ``(B, ..., S)`` for a posterior ``x1_probs
        (B, ..., K)``: off-diagonal entries ``>= 0``, each row sums to 0."""
        coefficient = _per_example(self.jump_coefficient(t), x_t)[..., None]
        current = jax.nn.one_hot(x_t, self.num_states, dtype=coefficient.dtype)
        padded = pad_to_states(x1_probs, self.num_states).astype(coefficient.dtype)
        return coefficient * (padded - current)
