"""FID / KID / IS / precision-recall against closed forms, feature networks, streaming statistics."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from flax import nnx

from diffusion_jax.metrics import (
    FeatureStatistics,
    compute_statistics,
    frechet_distance,
    frechet_distance_from_stats,
    inception_score,
    kernel_inception_distance,
    mmd2_unbiased,
    polynomial_kernel,
    precision_recall,
    sqrtm_psd,
    trace_sqrt_product,
)
from diffusion_jax.metrics.inception import (
    InceptionV3,
    load_inception,
    preprocess_for_inception,
)


def _random_rotation(dim, seed):
    return np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, dim)))[0]


# -- Frechet distance -----------------------------------------------------------------------------


def test_frechet_distance_closed_form_for_commuting_covariances():
    """Shared eigenbasis: d^2 = ||mu1 - mu2||^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2."""
    rotation = _random_rotation(6, 0)
    a = np.array([3.0, 1.0, 0.5, 0.2, 1e-3, 2.0])
    b = np.array([1.0, 1.5, 0.1, 0.4, 2e-3, 0.7])
    mean_1, mean_2 = np.arange(6.0), np.arange(6.0)[::-1] * 0.5
    cov_1, cov_2 = rotation @ np.diag(a) @ rotation.T, rotation @ np.diag(b) @ rotation.T
    expected = np.sum((mean_1 - mean_2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mean_1, cov_1, mean_2, cov_2) == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_matches_scipy_for_generic_covariances():
    rng = np.random.default_rng(1)
    factors = rng.standard_normal((2, 8, 8))
    cov_1, cov_2 = factors[0] @ factors[0].T, factors[1] @ factors[1].T + np.eye(8)
    mean_1, mean_2 = rng.standard_normal(8), rng.standard_normal(8)
    cross = scipy.linalg.sqrtm(cov_1 @ cov_2).real
    expected = np.sum((mean_1 - mean_2) ** 2) + np.trace(cov_1 + cov_2 - 2 * cross)
    assert frechet_distance(mean_1, cov_1, mean_2, cov_2) == pytest.approx(expected, rel=1e-9)


def test_sqrtm_accurate_for_ill_conditioned_covariances():
    """Condition number 1e12: the eigh-based root equals U sqrt(L) U^T to round-off, and the trace
    term matches sum sqrt(a_i b_i) for commuting matrices."""
    dim = 24
    rotation = _random_rotation(dim, 2)
    eigenvalues = np.logspace(-12, 0, dim)
    matrix = rotation @ np.diag(eigenvalues) @ rotation.T
    exact_root = rotation @ np.diag(np.sqrt(eigenvalues)) @ rotation.T
    root = sqrtm_psd(matrix)
    assert np.linalg.norm(root - exact_root) < 1e-7 * np.linalg.norm(exact_root)
    assert np.linalg.norm(root @ root - matrix) < 1e-13
    for other in (np.logspace(0, -12, dim), np.logspace(-12, 0, dim)):
        expected = np.sum(np.sqrt(eigenvalues * other))
        value = trace_sqrt_product(matrix, rotation @ np.diag(other) @ rotation.T)
        # Absolute accuracy on the scale of tr S1 + tr S2 (~2.2) is what FID needs.
        assert abs(value - expected) < 1e-7


def test_fid_of_a_set_with_itself_is_zero_even_when_covariance_is_singular():
    rng = np.random.default_rng(3)
    for num in (500, 40):  # 40 samples in 64-d: rank-deficient covariance
        features = rng.standard_normal((num, 64)) ** 3
        statistics = FeatureStatistics().update(features)
        scale = np.trace(statistics.covariance())
        assert frechet_distance_from_stats(statistics, statistics) < 1e-9 * scale


# -- streaming statistics -------------------------------------------------------------------------


def test_streaming_statistics_equal_batch_statistics_and_roundtrip(tmp_path):
    rng = np.random.default_rng(4)
    features = rng.standard_normal((257, 5)) * np.array([1e3, 1.0, 1e-3, 5.0, 0.1]) + 1e4
    batches = np.split(features, [1, 50, 51, 200])
    statistics = compute_statistics(lambda batch: batch, batches)
    np.testing.assert_allclose(statistics.mean, features.mean(axis=0), rtol=1e-13)
    expected = np.cov(features, rowvar=False)
    scale = np.sqrt(np.outer(np.diag(expected), np.diag(expected)))  # compare as correlations
    np.testing.assert_allclose(statistics.covariance() / scale, expected / scale, atol=1e-10)
    merged = FeatureStatistics().update(features[:100]).merge(
        FeatureStatistics().update(features[100:])
    )
    np.testing.assert_allclose(merged.covariance() / scale, expected / scale, atol=1e-10)
    path = tmp_path / "reference.npz"
    statistics.save(path, features=features)
    loaded = FeatureStatistics.load(path)
    assert loaded.count == 257
    np.testing.assert_allclose(loaded.covariance(), statistics.covariance(), rtol=1e-12)
    assert set(np.load(path).files) == {"mu", "sigma", "count", "features"}
    with pytest.raises(FileNotFoundError, match="not found"):
        FeatureStatistics.load(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match="dimension"):
        statistics.update(np.zeros((3, 4)))


# -- KID ------------------------------------------------------------------------------------------


def test_mmd_estimator_matches_definition_and_point_mass_closed_form():
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((7, 3)), rng.standard_normal((5, 3)) + 0.5
    k = lambda a, b: (a @ b / 3 + 1.0) ** 3
    brute = (
        sum(k(x[i], x[j]) for i in range(7) for j in range(7) if i != j) / 42
        + sum(k(y[i], y[j]) for i in range(5) for j in range(5) if i != j) / 20
        - 2 * sum(k(x[i], y[j]) for i in range(7) for j in range(5)) / 35
    )
    assert mmd2_unbiased(x, y) == pytest.approx(brute, rel=1e-12)
    a, b = np.array([1.0, -2.0, 0.5]), np.array([0.0, 1.0, 2.0])
    point_masses = mmd2_unbiased(np.tile(a, (4, 1)), np.tile(b, (6, 1)))
    assert point_masses == pytest.approx(k(a, a) + k(b, b) - 2 * k(a, b), rel=1e-12)


def test_kid_is_unbiased_for_equal_distributions_and_shift():
    """Independent draws: the mean of MMD_u^2 is 0 for equal distributions (the biased V-statistic
    would sit many standard errors above it) and ||shift||^2 / d for the linear kernel."""
    rng = np.random.default_rng(6)
    dim, num, repeats = 8, 200, 30
    shift = np.full(dim, 0.25)
    equal, shifted, v_statistics = [], [], []
    for _ in range(repeats):
        x, y = rng.standard_normal((2, num, dim))
        equal.append(kernel_inception_distance(x, y, num_subsets=1, subset_size=num)[0])
        shifted.append(mmd2_unbiased(x, y + shift, degree=1))
        v_statistics.append(
            polynomial_kernel(x, x).mean() + polynomial_kernel(y, y).mean()
            - 2 * polynomial_kernel(x, y).mean()
        )
    standard_error = np.std(equal, ddof=1) / np.sqrt(repeats)
    assert abs(np.mean(equal)) < 4 * standard_error
    assert np.mean(v_statistics) > 10 * standard_error
    expected = shift @ shift / dim
    assert abs(np.mean(shifted) - expected) < 4 * np.std(shifted, ddof=1) / np.sqrt(repeats)
    mean, spread = kernel_inception_distance(x, y + 3.0, num_subsets=5, subset_size=50)
    assert mean > 10 * spread > 0


# -- Inception Score ------------------------------------------------------------------------------


def test_inception_score_known_cases():
    classes, num = 10, 1000
    confident = 60.0 * np.eye(classes)[np.arange(num) % classes]
    assert inception_score(confident)[0] == pytest.approx(classes, rel=1e-6)
    assert inception_score(np.zeros((num, classes)))[0] == pytest.approx(1.0)
    two_classes = 60.0 * np.eye(classes)[np.arange(num) % 2]
    score, spread = inception_score(two_classes)
    assert score == pytest.approx(2.0, rel=1e-6) and spread < 1e-6
    # p(y|x) = (0.5, 0.5) for every x: the marginal equals each conditional, IS = 1.
    assert inception_score(np.tile([0.0, 0.0], (num, 1)), num_splits=1)[0] == pytest.approx(1.0)


# -- precision and recall -------------------------------------------------------------------------


def test_precision_recall_constructed_cases():
    rng = np.random.default_rng(7)
    cluster_a = rng.standard_normal((120, 4))
    cluster_b = rng.standard_normal((80, 4)) + 100.0
    real = np.concatenate([cluster_a, cluster_b])
    assert precision_recall(real, real.copy()) == (1.0, 1.0)
    assert precision_recall(real, real + 1000.0) == (0.0, 0.0)
    precision, recall = precision_recall(real, cluster_a.copy())
    assert precision == 1.0
    assert recall == pytest.approx(120 / 200)


# -- feature networks -----------------------------------------------------------------------------


def test_digits_classifier_asset_accuracy_and_features():
    from diffusion_jax.data.images import load_digits
    from diffusion_jax.metrics.digits_classifier import (
        FEATURE_DIM,
        digits_feature_function,
        load_digits_classifier,
    )

    classify = digits_feature_function(load_digits_classifier())
    test_images, test_labels = load_digits("test")
    train_images, _ = load_digits("train")
    noise = np.random.default_rng(8).integers(0, 256, (400, 8, 8, 1), dtype=np.uint8)
    features, logits = classify(np.concatenate([test_images, train_images, noise]))  # 1 compile
    features, logits = np.asarray(features), np.asarray(logits)[:len(test_images)]
    accuracy = float(np.mean(np.argmax(logits, axis=-1) == test_labels))
    assert accuracy > 0.95
    num_test, num_train = len(test_images), len(train_images)
    test_stats = FeatureStatistics().update(features[:num_test])
    train_stats = FeatureStatistics().update(features[num_test:num_test + num_train])
    noise_stats = FeatureStatistics().update(features[num_test + num_train:])
    assert test_stats.mean.shape == (FEATURE_DIM,)
    fid_split = frechet_distance_from_stats(test_stats, train_stats)
    assert fid_split < 0.05 * frechet_distance_from_stats(test_stats, noise_stats)
    assert inception_score(logits)[0] > 8.0


def _torch_layout_weights(model):
    """Export a model's weights in the PyTorch names/layouts :func:`load_inception` reads."""
    arrays = {}
    for path, node in nnx.iter_graph(model):
        if type(node).__name__ == "ConvBN":
            prefix = ".".join(str(p) for p in path)
            arrays[f"{prefix}.conv.weight"] = np.asarray(node.kernel[...]).transpose(3, 2, 0, 1)
            arrays[f"{prefix}.bn.weight"] = np.asarray(node.scale[...])
            arrays[f"{prefix}.bn.bias"] = np.asarray(node.bias[...])
            arrays[f"{prefix}.bn.running_mean"] = np.asarray(node.mean[...])
            arrays[f"{prefix}.bn.running_var"] = np.asarray(node.var[...])
    arrays["fc.weight"] = np.asarray(model.fc_kernel[...]).T
    # A non-zero bias, as in the real checkpoint: the Inception Score's logits must ignore it.
    arrays["fc.bias"] = np.linspace(-3.0, 3.0, model.fc_kernel[...].shape[1], dtype=np.float32)
    return arrays


def test_inception_reference_architecture_shapes_and_weight_loading(tmp_path):
    model = InceptionV3(rngs=nnx.Rngs(0))
    # torchvision inception_v3 has 27,161,264 parameters; without its auxiliary head (3,326,696)
    # and with 1008 instead of 1000 logits (+16,392) that is 23,850,960; the unused final bias
    # (the Inception Score takes unbiased logits) is not stored: 23,849,952.
    num_params = sum(np.size(leaf) for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert num_params == 23_849_952
    shapes = {name: value.shape for name, value in
              jax.eval_shape(model.blocks, jnp.zeros((1, 299, 299, 3))).items()}
    assert shapes["stem"] == (1, 35, 35, 192)
    assert shapes["Mixed_5b"] == (1, 35, 35, 256)
    assert shapes["Mixed_6a"] == (1, 17, 17, 768)
    assert shapes["Mixed_7a"] == (1, 8, 8, 1280)
    assert shapes["Mixed_7c"] == (1, 8, 8, 2048)
    # Perturb the batch-norm statistics so the loader's mapping of every array is exercised.
    for _, node in nnx.iter_graph(model):
        if type(node).__name__ == "ConvBN":
            node.mean[...] = node.mean[...] + 0.01
            node.var[...] = node.var[...] * 1.5
    path = tmp_path / "fid_inception.npz"
    np.savez(path, **_torch_layout_weights(model))
    loaded = load_inception(str(path))
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
    images = np.random.default_rng(9).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    x = preprocess_for_inception(images)
    assert x.shape == (1, 299, 299, 3)
    pool3, logits = forward(state, x)
    assert pool3.shape == (1, 2048) and logits.shape == (1, 1008)
    assert bool(jnp.all(jnp.isfinite(logits))) and bool(jnp.all(pool3 >= 0))
    pool3_loaded, logits_loaded = forward(nnx.state(loaded), x)
    np.testing.assert_allclose(pool3_loaded, pool3, rtol=1e-5, atol=1e-6)
    # Unbiased logits (original IS code, torch-fidelity, torchmetrics): pool3 @ W^T, no fc.bias.
    weights = np.load(path)
    np.testing.assert_allclose(logits_loaded, np.asarray(pool3_loaded) @ weights["fc.weight"].T,
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(FileNotFoundError, match="no download|not found"):
        load_inception(str(tmp_path / "missing.npz"))


def _precisions(jaxpr, primitives=("conv_general_dilated", "dot_general")):
    """``precision`` of every convolution / matmul in a jaxpr and its sub-jaxprs."""
    found = []
    for equation in jaxpr.eqns:
        if equation.primitive.name in primitives:
            found.append(equation.params["precision"])
        for value in equation.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", None)
                if inner is not None:
                    found += _precisions(getattr(inner, "jaxpr", inner), primitives)
    return found


def test_inception_features_run_at_highest_precision():
    """Every convolution and matmul of the feature extractor is pinned to HIGHEST (the backend
    default may be TF32 / bf16 on GPU and TPU): 94 convolutions + the logits matmul."""
    model = InceptionV3(rngs=nnx.Rngs(0))
    images = jnp.zeros((1, 299, 299, 3))
    precisions = _precisions(jax.make_jaxpr(model)(images).jaxpr)
    assert len(precisions) == 95
    highest = jax.lax.Precision.HIGHEST
    assert all(p is not None and all(q == highest for q in p) for p in precisions), precisions


def test_preprocess_uint8_and_model_range_agree():
    images = np.random.default_rng(10).integers(0, 256, (2, 8, 8, 1), dtype=np.uint8)
    from_uint8 = preprocess_for_inception(images, size=16)
    from_float = preprocess_for_inception(images / 127.5 - 1.0, size=16)
    np.testing.assert_allclose(from_uint8, from_float, atol=1e-6)
    assert from_uint8.shape == (2, 16, 16, 3)


@pytest.mark.skipif(
    not os.environ.get("DIFFUSION_JAX_INCEPTION_WEIGHTS"),
    reason="set DIFFUSION_JAX_INCEPTION_WEIGHTS to a converted FID Inception .npz",
)
def test_inception_features_match_pytorch_reference():
    """Needs the real weights (not available in CI): pool3 of the fixed input stored by
    scripts/convert_inception_weights.py (computed with pytorch-fid) is reproduced."""
    path = os.environ["DIFFUSION_JAX_INCEPTION_WEIGHTS"]
    reference = np.load(path)
    if "reference.pool3" not in reference.files:
        pytest.skip("weight file has no stored PyTorch reference features")
    pool3, logits = load_inception(path)(jnp.asarray(reference["reference.input"]))
    np.testing.assert_allclose(pool3, reference["reference.pool3"], rtol=1e-3, atol=1e-3)
    if "reference.logits_unbiased" in reference.files:
        expected = reference["reference.logits_unbiased"]
    else:  # files converted before the unbiased convention stored fc(pool3) with the bias
        expected = reference["reference.logits"] - reference["fc.bias"]
    np.testing.assert_allclose(logits, expected, rtol=1e-3, atol=1e-2)


# -- bad input ------------------------------------------------------------------------------------


def test_frechet_distance_rejects_non_psd_covariance_but_tolerates_rounding():
    """A covariance with a negative eigenvalue gave a number; now a ValueError. float32 rounding
    of a rank-deficient 256-d covariance (eigenvalues ~ -1e-8 relative) is still accepted."""
    rng = np.random.default_rng(11)
    features = rng.standard_normal((64, 256))  # 64 samples in 256-d: rank 63
    covariance = np.cov(features, rowvar=False)
    rounded = covariance.astype(np.float32).astype(np.float64)
    assert np.linalg.eigvalsh(rounded).min() < 0  # rounding made it indefinite
    mean = features.mean(axis=0)
    assert frechet_distance(mean, rounded, mean, covariance) < 1e-4 * np.trace(covariance)
    bad = covariance.copy()
    bad[0, 0] = -1.0
    with pytest.raises(ValueError, match="cov_2 is not positive semi-definite"):
        frechet_distance(mean, covariance, mean, bad)
    with pytest.raises(ValueError, match="cov_1 is not positive semi-definite"):
        frechet_distance(mean, bad, mean, covariance)
    with pytest.raises(ValueError, match="not positive semi-definite"):
        sqrtm_psd(np.diag([1.0, -0.5]))


def test_precision_recall_rejects_nan_features():
    """NaN features gave (0.0, 0.0) (every comparison with NaN is false)."""
    real = np.random.default_rng(12).standard_normal((20, 3))
    fake = real.copy()
    fake[3, 1] = np.nan
    with pytest.raises(ValueError, match="fake_features contain NaN"):
        precision_recall(real, fake)
    with pytest.raises(ValueError, match="real_features contain NaN"):
        precision_recall(fake, real)


def test_load_reference_names_the_expected_keys_for_files_that_are_not_statistics(tmp_path):
    import pickle

    from diffusion_jax.metrics import load_reference

    pickled = tmp_path / "pickled.npz"
    pickled.write_bytes(pickle.dumps({"mu": [0.0]}))
    with pytest.raises(ValueError, match="'mu' \\(d,\\) and 'sigma' \\(d, d\\)"):
        load_reference(pickled)
    objects = tmp_path / "objects.npz"
    np.savez(objects, mu=np.array([{"a": 1}], dtype=object), sigma=np.eye(1))
    with pytest.raises(ValueError, match="is not a statistics .npz"):
        load_reference(objects)
    single = tmp_path / "single.npy"
    np.save(single, np.zeros(3))
    with pytest.raises(ValueError, match="single array"):
        load_reference(single)
    misshapen = tmp_path / "misshapen.npz"
    np.savez(misshapen, mu=np.zeros(3), sigma=np.eye(2))
    with pytest.raises(ValueError, match="do not form"):
        load_reference(misshapen)
    missing = tmp_path / "missing_sigma.npz"
    np.savez(missing, mu=np.zeros(3))
    with pytest.raises(ValueError, match="no 'sigma'"):
        load_reference(missing)


# -- sliced Wasserstein ---------------------------------------------------------------------------


def test_sliced_wasserstein_closed_forms():
    """Zero for a permutation of the same set; for a shift c of any set SW_1 -> E|c.theta| =
    2|c|/pi and SW_2 -> |c|/sqrt(2) over unit directions in 2-D; in 1-D it is the exact W_p."""
    from diffusion_jax.metrics import sliced_wasserstein

    points = np.random.default_rng(13).standard_normal((500, 2))
    assert sliced_wasserstein(points, points[::-1]) == pytest.approx(0.0, abs=1e-6)
    shift = np.array([0.6, -0.8])  # |c| = 1
    w1 = sliced_wasserstein(points, points + shift, num_projections=4096)
    w2 = sliced_wasserstein(points, points + shift, num_projections=4096, p=2)
    assert w1 == pytest.approx(2 / np.pi, rel=0.03)
    assert w2 == pytest.approx(1 / np.sqrt(2), rel=0.03)
    line_a, line_b = np.array([[0.0], [1.0], [5.0]]), np.array([[4.0], [-1.0], [1.5]])
    # sorted: (0, 1, 5) vs (-1, 1.5, 4): |1| + |0.5| + |1| over 3.
    assert sliced_wasserstein(line_a, line_b, num_projections=3) == pytest.approx(2.5 / 3, rel=1e-6)
    with pytest.raises(ValueError, match="equal shapes"):
        sliced_wasserstein(points, points[:10])
    with pytest.raises(ValueError, match="NaN"):
        sliced_wasserstein(points, np.full_like(points, np.nan))
    with pytest.raises(ValueError, match="num_projections"):
        sliced_wasserstein(points, points, num_projections=0)
