"""Guidance as denoiser transforms: the result is again a denoiser ``D(x, sigma, cond) -> x0_hat``
in the VE frame (a registered pytree), usable by every sampler and solver, with ``cond`` plumbed
through. The wrapped denoisers may be plain functions or pytrees: the entry points split them into
array leaves and a static rest (:mod:`diffusion_jax.callables`).

Guidance scales follow one convention: ``guidance_scale = 1`` is the plain (conditional / good)
denoiser and ``0`` the unconditional (or guide) one, so ``w`` here is Ho & Salimans' ``1 + w``.

* :func:`classifier_free` (Ho & Salimans 2022), :func:`rescaled_classifier_free` (Lin et al.
  2024), :func:`adaptive_projected` (Sadat et al. 2024): two branches of one model.
* :func:`autoguidance` (Karras et al. 2024): the negative branch is a weaker model of the task.
* :func:`classifier_guidance` (Dhariwal & Nichol 2021): the gradient of a noise-conditional
  classifier's ``log p(y | x, sigma)`` through ``jax.grad``.
* :func:`guidance_interval` (Kynkaanniemi et al. 2024): any of the above on a range of noise levels
  only, exactly the plain denoiser elsewhere.
* :func:`dynamic_threshold` (Saharia et al. 2022): percentile clipping of ``x0_hat``.
* :func:`cfg_pp_euler` (Chung et al. 2024, CFG++): a sampler, since CFG++ changes the renoising
  step and so is no transform of ``D`` alone.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.callables import merge, split
from diffusion_jax.pytrees import frozen_pytree

__all__ = [
    "ClassifierFreeGuidance",
    "RescaledClassifierFree",
    "AdaptiveProjectedGuidance",
    "Autoguidance",
    "NoiseConditionalClassifier",
    "ClassifierGuidance",
    "GuidanceInterval",
    "DynamicThreshold",
    "classifier_free",
    "rescaled_classifier_free",
    "adaptive_projected",
    "autoguidance",
    "classifier_guidance",
    "guidance_interval",
    "dynamic_threshold",
    "cfg_pp_euler",
]


# -- helpers ------------------------------------------------------------------------------------


def _check_number(value, name, *, low=-math.inf, high=math.inf, low_open=False, finite=True):
    """One-line ``ValueError`` unless concrete ``value`` is a number in range (tracers pass)."""
    if isinstance(value, jax.core.Tracer):
        return value
    values = np.asarray(value)
    if not np.issubdtype(values.dtype, np.number) or np.any(np.isnan(values)):
        raise ValueError(f"{name} must be a finite number; got {value!r}")
    if finite and not np.all(np.isfinite(values)):
        raise ValueError(f"{name} must be a finite number; got {value!r}")
    below = np.any(values <= low) if low_open else np.any(values < low)
    if below or np.any(values > high):
        bracket = "(" if low_open else "["
        raise ValueError(f"{name} must lie in {bracket}{low}, {high}]; got {value!r}")
    return value


def _per_example(value, x):
    """A scalar or ``(batch,)`` value reshaped to broadcast against ``x``."""
    value = jnp.asarray(value, x.dtype)
    return value.reshape(value.shape + (1,) * (x.ndim - value.ndim))


def _dot(a, b):
    """Per-example inner product over all axes but the first, shaped to broadcast against ``a``."""
    return jnp.sum(a * b, axis=tuple(range(1, a.ndim)), keepdims=True)


def _std(a):
    return jnp.std(a, axis=tuple(range(1, a.ndim)), keepdims=True)


def _needs_labels(cond, name):
    if cond is None:
        raise ValueError(f"{name} needs class labels (cond); the model is called without them")


# -- two branches of one model ------------------------------------------------------------------


@frozen_pytree
class ClassifierFreeGuidance:
    """``D_w(x, s, c) = D(x, s, null) + w (D(x, s, c) - D(x, s, null))`` (Ho & Salimans 2022,
    "Classifier-free diffusion guidance", eq. 6 written for x0-predictions; their ``1 + w`` is
    ``guidance_scale`` here, so ``1`` is the conditional and ``0`` the unconditional denoiser).
    """

    denoiser: Any
    guidance_scale: Any
    null_cond: Any = None

    def __call__(self, x, sigma, cond=None):
        conditional = self.denoiser(x, sigma, cond)
        unconditional = self.denoiser(x, sigma, self.null_cond)
        return unconditional + self.guidance_scale * (conditional - unconditional)


def classifier_free(denoiser, guidance_scale, null_cond=None):
    """Wrap ``denoiser`` with classifier-free guidance (Ho & Salimans 2022, eq. 6);
    ``null_cond`` is the condition of the unconditional branch (``None`` by default)."""
    _check_number(guidance_scale, "guidance_scale")
    return ClassifierFreeGuidance(denoiser, guidance_scale, null_cond)


@frozen_pytree
class RescaledClassifierFree:
    """Rescaled CFG (Lin et al. 2024, "Common diffusion noise schedules and sample steps are
    flawed", Sec. 3.4, eq. 15-17): ``x_cfg`` of :class:`ClassifierFreeGuidance`, then
    ``x_rescaled = x_cfg std(x_pos) / std(x_cfg)`` and ``phi x_rescaled + (1 - phi) x_cfg``
    (std per example over all non-batch axes).

    Applied here to the x0 prediction, the output of the library's denoiser contract; the paper
    applies it to its networks' v-prediction output, which in the VE frame is not the same map
    (``phi = 0`` is CFG in both).
    """

    denoiser: Any
    guidance_scale: Any
    phi: Any
    null_cond: Any = None

    def __call__(self, x, sigma, cond=None):
        conditional = self.denoiser(x, sigma, cond)
        unconditional = self.denoiser(x, sigma, self.null_cond)
        guided = unconditional + self.guidance_scale * (conditional - unconditional)
        tiny = jnp.finfo(guided.dtype).tiny
        rescaled = guided * _std(conditional) / jnp.maximum(_std(guided), tiny)
        return self.phi * rescaled + (1.0 - self.phi) * guided


def rescaled_classifier_free(denoiser, guidance_scale, phi=0.7, null_cond=None):
    """Classifier-free guidance with Lin et al.'s (2024, Sec. 3.4) std rescaling, ``phi`` in
    [0, 1] (their recommendation 0.7; ``0`` is plain CFG)."""
    _check_number(guidance_scale, "guidance_scale")
    _check_number(phi, "phi", low=0.0, high=1.0)
    return RescaledClassifierFree(denoiser, guidance_scale, phi, null_cond)


@frozen_pytree
class AdaptiveProjectedGuidance:
    """Adaptive projected guidance (Sadat et al. 2024, "Eliminating oversaturation and artifacts
    of high guidance scales in diffusion models", Sec. 4, Alg. 1) on x0-predictions:
    ``delta = D(c) - D(null)``, rescaled to norm at most ``norm_threshold`` (``r``, eq. 11), split
    into the part parallel to ``D(c)`` and the orthogonal rest (eq. 8), and
    ``D(c) + (w - 1) (delta_orth + eta delta_par)`` (eq. 9). ``eta = 1`` without threshold is CFG.

    The paper's reverse momentum (``beta``, eq. 12) averages ``delta`` over sampler steps, a state
    the stateless denoiser contract cannot carry across every sampler; it is omitted (the paper's
    ablation, Table 3, gives most of the gain to the projection and the rescaling).
    """

    denoiser: Any
    guidance_scale: Any
    eta: Any = 0.0
    norm_threshold: Any = math.inf
    null_cond: Any = None

    def __call__(self, x, sigma, cond=None):
        conditional = self.denoiser(x, sigma, cond)
        delta = conditional - self.denoiser(x, sigma, self.null_cond)
        tiny = jnp.finfo(delta.dtype).tiny
        norm = jnp.sqrt(_dot(delta, delta))
        delta = delta * jnp.minimum(1.0, self.norm_threshold / jnp.maximum(norm, tiny))
        parallel = _dot(delta, conditional) / jnp.maximum(_dot(conditional, conditional), tiny)
        delta_parallel = parallel * conditional
        delta_orthogonal = delta - delta_parallel
        update = delta_orthogonal + self.eta * delta_parallel
        return conditional + (self.guidance_scale - 1.0) * update


def adaptive_projected(denoiser, guidance_scale, *, eta=0.0, norm_threshold=math.inf,
                       null_cond=None):
    """Adaptive projected guidance (Sadat et al. 2024, Alg. 1 without momentum): ``eta`` weighs
    the update's component parallel to ``D(c)`` (paper: 0), ``norm_threshold`` caps its norm
    (``inf``: no cap)."""
    _check_number(guidance_scale, "guidance_scale")
    _check_number(eta, "eta")
    _check_number(norm_threshold, "norm_threshold", low=0.0, low_open=True, finite=False)
    return AdaptiveProjectedGuidance(denoiser, guidance_scale, eta, norm_threshold, null_cond)


# -- a weaker model as the guide ----------------------------------------------------------------


@frozen_pytree
class Autoguidance:
    """Autoguidance (Karras et al. 2024, "Guiding a diffusion model with a bad version of itself",
    eq. 2 in x0 form): ``D_w = D_guide(x, s, c) + w (D(x, s, c) - D_guide(x, s, c))`` with the
    guide a weaker model of the same task and condition (an earlier or smaller run)."""

    denoiser: Any
    guide: Any
    guidance_scale: Any

    def __call__(self, x, sigma, cond=None):
        bad = self.guide(x, sigma, cond)
        return bad + self.guidance_scale * (self.denoiser(x, sigma, cond) - bad)


def autoguidance(denoiser, guide, guidance_scale):
    """Guide ``denoiser`` with the weaker ``guide`` (Karras et al. 2024, eq. 2)."""
    _check_number(guidance_scale, "guidance_scale")
    return Autoguidance(denoiser, guide, guidance_scale)


# -- classifier guidance ------------------------------------------------------------------------


@frozen_pytree
class NoiseConditionalClassifier:
    """``logits(x, sigma) = network(c_in x, c_noise)`` with a preconditioning's input scaling and
    noise embedding (e.g. :class:`~diffusion_jax.denoisers.EDMPreconditioning`: ``c_in =
    1/sqrt(sigma^2 + sigma_data^2)``, ``c_noise = ln(sigma)/4``; Karras et al. 2022, Table 1), the
    classifier ``p(y | x, sigma)`` on noisy inputs of Dhariwal & Nichol 2021, Sec. 4."""

    network: Any
    preconditioning: Any

    def __call__(self, x, sigma):
        sigma = jnp.broadcast_to(jnp.asarray(sigma, x.dtype), x.shape[:1])
        _, _, c_in, c_noise = self.preconditioning.coefficients(sigma)
        return self.network(_per_example(c_in, x) * x, c_noise)


@frozen_pytree(meta=("conditional",))
class ClassifierGuidance:
    """Classifier guidance (Dhariwal & Nichol 2021, "Diffusion models beat GANs", Sec. 4, Alg. 1):
    the guided score ``score(x) + w grad_x log p(y | x, sigma)`` as an x0 prediction through
    Tweedie (``D = x + sigma^2 score``): ``D_w = D + w sigma^2 grad_x log p(y | x, sigma)``.

    ``classifier(x, sigma) -> logits (batch, num_classes)``; the gradient is ``jax.grad`` of the
    summed per-example log-softmax at the labels ``cond``. ``conditional``: the denoiser receives
    the labels too (Dhariwal & Nichol's conditional model + classifier), else ``cond=None``.
    """

    denoiser: Any
    classifier: Any
    guidance_scale: Any
    conditional: bool = True

    def __call__(self, x, sigma, cond=None):
        _needs_labels(cond, "classifier guidance")
        labels = jnp.asarray(cond)

        def log_likelihood(x):
            logits = self.classifier(x, sigma)
            if logits.ndim != 2 or logits.shape[0] != x.shape[0]:
                raise ValueError(f"classifier must return logits (batch, num_classes); got shape "
                                 f"{logits.shape} for batch {x.shape[0]}")
            log_probs = jax.nn.log_softmax(logits.astype(x.dtype), axis=-1)
            return jnp.sum(jnp.take_along_axis(log_probs, labels[:, None], axis=-1))

        gradient = jax.grad(log_likelihood)(x)
        x0_hat = self.denoiser(x, sigma, cond if self.conditional else None)
        return x0_hat + self.guidance_scale * _per_example(sigma, x) ** 2 * gradient


def classifier_guidance(denoiser, classifier, guidance_scale, *, conditional=True):
    """Guide ``denoiser`` by ``jax.grad`` of ``classifier``'s ``log p(y | x, sigma)``
    (Dhariwal & Nichol 2021, Alg. 1; ``guidance_scale`` is their ``s``)."""
    _check_number(guidance_scale, "guidance_scale")
    return ClassifierGuidance(denoiser, classifier, guidance_scale, bool(conditional))


# -- where to guide and what to keep ------------------------------------------------------------


@frozen_pytree
class GuidanceInterval:
    """Guidance limited to an interval (Kynkaanniemi et al. 2024, "Applying guidance in a limited
    interval improves sample and distribution quality in diffusion models", eq. 5): ``guided``
    for ``sigma`` in ``(sigma_lo, sigma_hi]``, exactly ``plain`` elsewhere. A scalar ``sigma``
    (every sampler's) evaluates only the branch it takes (``lax.cond``), so steps outside the
    interval cost the plain denoiser's NFE."""

    guided: Any
    plain: Any
    sigma_lo: Any
    sigma_hi: Any

    def __call__(self, x, sigma, cond=None):
        sigma_array = jnp.asarray(sigma)
        inside = (sigma_array > self.sigma_lo) & (sigma_array <= self.sigma_hi)
        if sigma_array.ndim == 0:  # the denoisers' arrays are operands, never closure constants
            (guided, plain), static = split((self.guided, self.plain))

            def branch(index):
                def run(arrays, x, sigma, cond):
                    return merge(arrays, static)[index](x, sigma, cond).astype(x.dtype)

                return run

            return jax.lax.cond(inside, branch(0), branch(1), (guided, plain), x, sigma, cond)
        guided, plain = self.guided(x, sigma, cond), self.plain(x, sigma, cond)
        return jnp.where(_per_example(inside, x), guided, plain)


def guidance_interval(guided, sigma_lo, sigma_hi, plain=None):
    """Apply ``guided`` only for ``sigma`` in ``(sigma_lo, sigma_hi]`` (Kynkaanniemi et al. 2024);
    ``plain`` defaults to ``guided.denoiser`` (the conditional / good model)."""
    if plain is None:
        plain = getattr(guided, "denoiser", None)
        if plain is None:
            raise ValueError("guidance_interval needs plain= for a guided denoiser without a "
                             ".denoiser field")
    _check_number(sigma_lo, "sigma_lo", low=0.0)
    _check_number(sigma_hi, "sigma_hi", low=0.0, finite=False)
    if not isinstance(sigma_lo, jax.core.Tracer) and not isinstance(sigma_hi, jax.core.Tracer):
        if not float(sigma_lo) < float(sigma_hi):
            raise ValueError(f"sigma_lo must be < sigma_hi; got ({sigma_lo}, {sigma_hi}]")
    return GuidanceInterval(guided, plain, sigma_lo, sigma_hi)


@frozen_pytree
class DynamicThreshold:
    """Dynamic thresholding (Saharia et al. 2022, "Imagen", Sec. 2.3): ``s`` is the
    ``percentile``-quantile of ``|x0_hat|`` per example, ``s <- max(s, 1)``, and ``x0_hat`` is
    clipped to ``[-s, s]`` and divided by ``s``. For data in [-1, 1]; an ``x0_hat`` already in
    [-1, 1] is returned unchanged."""

    denoiser: Any
    percentile: Any = 0.995

    def __call__(self, x, sigma, cond=None):
        x0_hat = self.denoiser(x, sigma, cond)
        flat = jnp.abs(x0_hat).reshape(x0_hat.shape[0], -1)
        scale = jnp.maximum(jnp.quantile(flat, self.percentile, axis=-1), 1.0)
        scale = _per_example(scale, x0_hat)
        return jnp.clip(x0_hat, -scale, scale) / scale


def dynamic_threshold(denoiser, percentile=0.995):
    """Wrap ``denoiser`` with Imagen's dynamic thresholding (Saharia et al. 2022, Sec. 2.3);
    ``percentile`` in (0, 1] (Imagen: 0.995)."""
    _check_number(percentile, "percentile", low=0.0, high=1.0, low_open=True)
    return DynamicThreshold(denoiser, percentile)


# -- CFG++: a sampler ---------------------------------------------------------------------------


def cfg_pp_euler(guided, noise, sigmas, *, key=None, cond=None, return_trajectory=False,
                 callback=None):
    """CFG++ (Chung et al. 2024, "CFG++: manifold-constrained classifier free guidance", Alg. 1)
    in the VE frame: DDIM (= Euler) whose x0 is the guided ``D_lambda`` but whose renoising uses
    the unconditional prediction, ``x_next = D_lambda(x) + (sigma_next / sigma)(x - D_null(x))``.

    ``guided`` is a :class:`ClassifierFreeGuidance` whose ``guidance_scale`` is CFG++'s
    ``lambda`` (the paper's range [0, 1]; ``lambda = 1`` with the conditional renoising is
    ordinary DDIM on the conditional model). The renoising direction depends on ``sigma_next``,
    so CFG++ is no transform of the denoiser alone: it is this sampler (deterministic, NFE 2 per
    step), not a wrapper that other samplers could use.
    """
    del key
    if not isinstance(guided, ClassifierFreeGuidance):
        raise ValueError("cfg_pp_euler needs a ClassifierFreeGuidance denoiser "
                         f"(guidance.classifier_free(...)); got {type(guided).__name__}")
    from diffusion_jax.samplers._core import sample

    def step(denoiser, carry, inputs, cond):
        (x,), (sigma, sigma_next, _) = carry, inputs
        unconditional = denoiser.denoiser(x, sigma, denoiser.null_cond)
        conditional = denoiser.denoiser(x, sigma, cond)
        x0_hat = unconditional + denoiser.guidance_scale * (conditional - unconditional)
        x_next = x0_hat + _per_example(sigma_next / sigma, x) * (x - unconditional)
        return (x_next.astype(x.dtype),), x0_hat

    return sample(lambda d, c, i, y: step(guided, c, i, y), guided, noise, sigmas, cond=cond,
                  callback=callback, return_trajectory=return_trajectory)
