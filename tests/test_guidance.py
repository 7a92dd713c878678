"""The guidance family on the exact Gaussian mixture: classifier guidance against the closed-form
guided score, the limits that reduce every transform to CFG or to a plain denoiser, the interval's
exactness outside it, dynamic thresholding's fixed points, CFG++'s step, and the errors."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import callables, guidance, samplers
from diffusion_jax.analytic import GaussianMixture

MEANS = np.array([[2.0, 0.0], [-2.0, 0.5]])
VARIANCE = 0.3
WEIGHTS = np.array([0.3, 0.7])


@dataclasses.dataclass(frozen=True)
class LabelledMixture:
    """Exact denoiser of the two-class mixture: ``cond`` = class labels (batch,) gives the class's
    Gaussian posterior mean, ``cond=None`` the mixture's."""

    means: jax.Array
    weights: jax.Array

    def mixture(self):
        variances = jnp.full_like(self.means, VARIANCE)  # the fields directly: traceable
        return GaussianMixture(self.means, jnp.log(self.weights), variances)

    def __call__(self, x, sigma, cond=None):
        if cond is None:
            return self.mixture()(x, sigma)
        mean = self.means[cond]
        shrink = VARIANCE / (VARIANCE + jnp.asarray(sigma) ** 2)
        return mean + jnp.reshape(shrink, (-1, 1)) * (x - mean)


jax.tree_util.register_dataclass(LabelledMixture, data_fields=["means", "weights"], meta_fields=[])


def _model(dtype=jnp.float64):
    return LabelledMixture(jnp.asarray(MEANS, dtype), jnp.asarray(WEIGHTS, dtype))


def _exact_classifier(x, sigma):
    """Logits of the mixture's class posterior ``p(y | x, sigma)``."""
    return jnp.log(_model(x.dtype).mixture().responsibilities(x, sigma))


def _points():
    return jnp.array([[0.3, 0.1], [-0.2, 0.5], [1.5, -1.0]])


def test_classifier_guidance_equals_the_closed_form_guided_score(x64):
    """Dhariwal & Nichol 2021: D + w sigma^2 grad log p(y|x) with the exact posterior equals
    x + sigma^2 (score + w (score_y - score)), every term written out in numpy here."""
    x, labels, sigma = _points(), jnp.array([0, 1, 1]), 0.8
    xs = np.asarray(x)
    variance = VARIANCE + sigma**2
    log_joint = np.log(WEIGHTS) - 0.5 * np.sum((xs[:, None] - MEANS) ** 2, -1) / variance
    posterior = np.exp(log_joint - log_joint.max(-1, keepdims=True))
    posterior /= posterior.sum(-1, keepdims=True)
    component_scores = (MEANS[None] - xs[:, None]) / variance  # (batch, K, d)
    score = np.einsum("bk,bkd->bd", posterior, component_scores)
    class_score = component_scores[np.arange(3), np.asarray(labels)]
    for scale in (0.0, 1.0, 3.5):
        guided = guidance.classifier_guidance(_model(), _exact_classifier, scale,
                                              conditional=False)
        expected = xs + sigma**2 * (score + scale * (class_score - score))
        np.testing.assert_allclose(guided(x, sigma, labels), expected, rtol=1e-12, atol=1e-12)
    # scale 1 is the class's own posterior mean; a per-example sigma works the same way
    guided = guidance.classifier_guidance(_model(), _exact_classifier, 1.0, conditional=False)
    sigmas = jnp.array([0.2, 0.8, 3.0])
    np.testing.assert_allclose(guided(x, sigmas, labels), _model()(x, sigmas, labels), rtol=1e-10)


def test_scale_zero_and_one_reduce_to_the_unconditional_and_conditional_denoiser(x64):
    model, x, labels, sigma = _model(), _points(), jnp.array([0, 1, 0]), 1.3
    conditional, unconditional = model(x, sigma, labels), model(x, sigma)
    weak = LabelledMixture(model.means * 0.5, model.weights)
    builders = {
        "cfg": lambda w: guidance.classifier_free(model, w),
        "rescaled": lambda w: guidance.rescaled_classifier_free(model, w, phi=0.7),
        "apg": lambda w: guidance.adaptive_projected(model, w, eta=1.0),
    }
    for name, build in builders.items():
        np.testing.assert_allclose(build(1.0)(x, sigma, labels), conditional, rtol=1e-12,
                                   err_msg=name)
    for name in ("cfg", "apg"):
        np.testing.assert_allclose(builders[name](0.0)(x, sigma, labels), unconditional,
                                   rtol=1e-12, atol=1e-12, err_msg=name)
    auto = lambda w: guidance.autoguidance(model, weak, w)  # noqa: E731
    np.testing.assert_allclose(auto(1.0)(x, sigma, labels), conditional, rtol=1e-12)
    np.testing.assert_allclose(auto(0.0)(x, sigma, labels), weak(x, sigma, labels), rtol=1e-12)
    bad = weak(x, sigma, labels)
    np.testing.assert_allclose(auto(2.5)(x, sigma, labels), bad + 2.5 * (conditional - bad),
                               rtol=1e-12)


def test_rescaled_cfg_and_apg_against_their_definitions(x64):
    model, x, labels, sigma, w = _model(), _points(), jnp.array([1, 1, 0]), 0.9, 4.0
    conditional, unconditional = model(x, sigma, labels), model(x, sigma)
    cfg = unconditional + w * (conditional - unconditional)
    rescaled = guidance.rescaled_classifier_free(model, w, phi=0.0)(x, sigma, labels)
    np.testing.assert_allclose(rescaled, cfg, rtol=1e-12)  # phi = 0 is CFG
    full = guidance.rescaled_classifier_free(model, w, phi=1.0)(x, sigma, labels)
    np.testing.assert_allclose(np.std(full, -1), np.std(conditional, -1), rtol=1e-12)
    np.testing.assert_allclose(full, cfg * np.std(conditional, -1, keepdims=True)
                               / np.std(cfg, -1, keepdims=True), rtol=1e-12)
    apg = guidance.adaptive_projected(model, w, eta=1.0)(x, sigma, labels)
    np.testing.assert_allclose(apg, cfg, rtol=1e-12)  # eta = 1, no threshold: CFG
    orthogonal = guidance.adaptive_projected(model, w, eta=0.0)(x, sigma, labels) - conditional
    np.testing.assert_allclose(np.sum(orthogonal * conditional, -1), 0.0, atol=1e-12)
    assert np.all(np.linalg.norm(orthogonal, axis=-1) > 1e-3)  # not trivially zero
    capped = guidance.adaptive_projected(model, w, eta=1.0, norm_threshold=0.1)
    update = (capped(x, sigma, labels) - conditional) / (w - 1.0)
    delta_norm = np.linalg.norm(conditional - unconditional, axis=-1)
    assert np.any(delta_norm > 0.1) and np.any(delta_norm < 0.1)  # both cases occur
    np.testing.assert_allclose(np.linalg.norm(update, axis=-1), np.minimum(delta_norm, 0.1),
                               rtol=1e-12)


@jax.jit
def _call(denoiser, x, sigma, cond):
    return denoiser(x, sigma, cond)


def test_interval_is_exactly_the_plain_denoiser_outside_it(x64):
    model, x, labels = _model(), _points(), jnp.array([0, 1, 0])
    guided = guidance.classifier_free(model, 3.0)
    limited = guidance.guidance_interval(guided, 0.5, 2.0)
    for sigma in (0.1, 0.5, 2.5, 10.0):  # outside (0.5, 2.0]: bit for bit the conditional
        np.testing.assert_array_equal(_call(limited, x, sigma, labels),
                                      _call(model, x, sigma, labels))
    for sigma in (0.51, 1.0, 2.0):
        np.testing.assert_allclose(limited(x, sigma, labels), guided(x, sigma, labels),
                                   rtol=1e-12)
    per_example = jnp.array([0.1, 1.0, 5.0])
    expected = np.where(np.array([[False], [True], [False]]), guided(x, per_example, labels),
                        model(x, per_example, labels))
    np.testing.assert_allclose(limited(x, per_example, labels), expected, rtol=1e-12)
    # through a sampler: an interval holding no grid level leaves the sampler's output untouched
    noise = jax.random.normal(jax.random.key(0), (16, 2), jnp.float64)
    sigmas = samplers.karras_sigmas(5, 0.02, 20.0)
    cond = jnp.arange(16) % 2
    between = (float(sigmas[3]) + 1e-6, float(sigmas[2]) - 1e-6)
    empty = guidance.guidance_interval(guided, between[1] - 1e-9, between[1])
    np.testing.assert_allclose(samplers.heun(empty, noise, sigmas, cond=cond),
                               samplers.heun(model, noise, sigmas, cond=cond), rtol=1e-12)
    whole = guidance.guidance_interval(guided, 0.0, float("inf"))
    np.testing.assert_allclose(samplers.heun(whole, noise, sigmas, cond=cond),
                               samplers.heun(guided, noise, sigmas, cond=cond), rtol=1e-12)


def test_dynamic_threshold_keeps_in_range_x0_and_clips_by_the_percentile(x64):
    values = jnp.array([[0.9, -0.4, 0.0, 1.0], [3.0, -2.0, 0.5, 0.1]])

    def constant(x, sigma, cond=None):
        return values

    thresholded = guidance.dynamic_threshold(constant, 0.75)(values, 1.0)
    np.testing.assert_array_equal(thresholded[0], values[0])  # in range: unchanged
    scale = np.quantile(np.abs(np.asarray(values[1])), 0.75)
    np.testing.assert_allclose(thresholded[1], np.clip(values[1], -scale, scale) / scale)
    assert scale > 1.0 and float(jnp.max(jnp.abs(thresholded[1]))) == pytest.approx(1.0)


def test_cfg_pp_is_euler_with_the_unconditional_renoising(x64):
    model = _model()
    noise = jax.random.normal(jax.random.key(2), (5, 2), jnp.float64)
    labels = jnp.array([0, 1, 0, 1, 1])
    sigmas = jnp.array([4.0, 1.5, 0.0])
    guided = guidance.classifier_free(model, 0.6)
    x = noise * sigmas[0]
    unconditional = model(x, sigmas[0])
    x_next = guided(x, sigmas[0], labels) + (sigmas[1] / sigmas[0]) * (x - unconditional)
    np.testing.assert_allclose(guidance.cfg_pp_euler(guided, noise, sigmas, cond=labels),
                               guided(x_next, sigmas[1], labels), rtol=1e-12)
    # differs from Euler on the CFG denoiser (the renoising is the change) ...
    euler = samplers.euler(guided, noise, sigmas, cond=labels)
    assert float(jnp.max(jnp.abs(euler - guidance.cfg_pp_euler(guided, noise, sigmas,
                                                                  cond=labels)))) > 1e-3
    # ... but not for a model that ignores the condition
    unconditional_only = guidance.classifier_free(lambda x, s, c=None: model(x, s), 0.6)
    np.testing.assert_allclose(guidance.cfg_pp_euler(unconditional_only, noise, sigmas,
                                                     cond=labels),
                               samplers.euler(model, noise, sigmas), rtol=1e-12)


def test_transforms_compose_under_jit_and_grad_through_a_sampler():
    model = _model(jnp.float32)
    noise = jax.random.normal(jax.random.key(3), (32, 2))
    labels = jnp.arange(32) % 2
    sigmas = samplers.karras_sigmas(6, 0.02, 20.0)

    @jax.jit
    def mean_first_coordinate(scale):
        guided = guidance.rescaled_classifier_free(model, scale, phi=0.5)
        composed = guidance.dynamic_threshold(guidance.guidance_interval(guided, 0.1, 5.0))
        return jnp.mean(samplers.dpmpp_2m(composed, noise, sigmas, cond=labels)[:, 0])

    value, gradient = jax.value_and_grad(mean_first_coordinate)(2.0)
    assert np.isfinite(value) and np.isfinite(gradient) and abs(float(gradient)) > 0
    # the unconditional mixture guided toward class 0 (mean x = 2): from mostly class 1 to class 0
    toward_zero = jnp.zeros(32, jnp.int32)
    heun = callables.filter_jit(samplers.heun)
    plain = heun(model, noise, sigmas)
    strong = heun(guidance.classifier_guidance(model, _exact_classifier, 4.0, conditional=False),
                  noise, sigmas, cond=toward_zero)
    assert float(jnp.mean(plain[:, 0] > 0)) < 0.5 < float(jnp.mean(strong[:, 0] > 0))


def test_bad_input_is_a_one_line_error():
    model = _model(jnp.float32)
    x = _points().astype(jnp.float32)
    with pytest.raises(ValueError, match="classifier guidance needs class labels"):
        guidance.classifier_guidance(model, _exact_classifier, 2.0)(x, 1.0)
    cases = [
        (lambda: guidance.rescaled_classifier_free(model, 2.0, phi=1.5), "phi must lie in"),
        (lambda: guidance.adaptive_projected(model, 2.0, norm_threshold=0.0), "norm_threshold"),
        (lambda: guidance.dynamic_threshold(model, 0.0), "percentile must lie in"),
        (lambda: guidance.guidance_interval(guidance.classifier_free(model, 2.0), 2.0, 1.0),
         "sigma_lo must be < sigma_hi"),
        (lambda: guidance.guidance_interval(model, 0.1, 1.0), "needs plain="),
        (lambda: guidance.autoguidance(model, model, float("nan")), "guidance_scale must be"),
        (lambda: guidance.cfg_pp_euler(model, x, jnp.array([1.0, 0.0])),
         "needs a ClassifierFreeGuidance"),
    ]
    for make, message in cases:
        with pytest.raises(ValueError, match=message):
            make()
    with pytest.raises(ValueError, match="logits"):
        guidance.classifier_guidance(model, lambda x, s: x[:, 0], 2.0)(x, 1.0, jnp.array([0, 1, 0]))


def _digits_model(**overrides):
    import os

    from flax import nnx

    from diffusion_jax import recipes

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config = recipes.load_config(os.path.join(root, "configs", "digits_edm.py"),
                                 {"model.base_channels": 8, **overrides})
    network, wrap = recipes.build_model(config)
    params = nnx.state(network, nnx.Param)  # leave the zero-initialised output: labels matter
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(0), len(leaves))
    nnx.update(network, jax.tree.unflatten(tree, [
        leaf + 0.05 * jax.random.normal(k, leaf.shape)
        for leaf, k in zip(leaves, keys, strict=True)]))
    return wrap(network), config


def test_recipe_guidance_matches_the_library_transforms():
    from diffusion_jax import recipes
    from diffusion_jax.recipes import guided

    denoiser, config = _digits_model()
    common = dict(num_samples=2, seed=0, num_steps=2, labels=4)
    plain, _ = recipes.generate(denoiser, config, guidance_scale=0.0, **common)
    legacy, _ = recipes.generate(denoiser, config, guidance_scale=2.5, **common)
    assert float(np.max(np.abs(legacy - plain))) > 1e-1  # guidance changes the samples
    spec = guided.Guidance("cfg", 2.5)
    np.testing.assert_allclose(recipes.generate(denoiser, config, guidance_spec=spec, **common)[0],
                               legacy, rtol=1e-3, atol=1e-3)
    outside = guided.Guidance("apg", 2.5, interval=(500.0, 1000.0))  # above every grid level
    np.testing.assert_allclose(
        recipes.generate(denoiser, config, guidance_spec=outside, **common)[0], plain,
        rtol=1e-3, atol=1e-3)
    itself = guided.Guidance("autoguidance", 3.0)  # guided by itself: the plain model
    np.testing.assert_allclose(
        recipes.generate(denoiser, config, guidance_spec=itself, guide=denoiser, **common)[0],
        plain, rtol=1e-3, atol=1e-3)
    unconditional, config = _digits_model(**{"train.class_conditional": False})
    with pytest.raises(ValueError, match="needs class labels but the model is not class"):
        recipes.generate(unconditional, config, guidance_spec=spec, num_samples=2, seed=0,
                         num_steps=2)
