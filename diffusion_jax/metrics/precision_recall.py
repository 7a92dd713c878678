"""Improved precision and recall of generative models (Kynkaanniemi et al. 2019, Sec. 3, eq. 1-2).

Each set's manifold is the union of balls around its points with radius the distance to the
``k``-th nearest neighbour within the set (``k = 3``; the point itself excluded). Precision is the
fraction of generated points inside the real manifold, recall the fraction of real points inside
the generated manifold. Distances are computed in blocks on the host in float64.
"""

from __future__ import annotations

import numpy as np

from diffusion_jax.metrics.statistics import check_features

__all__ = ["knn_radii", "manifold_coverage", "precision_recall"]


def _squared_distances(a, b):
    squared = (a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(squared, 0.0)


def knn_radii(features, *, k=3, block_size=1024):
    """Distance of every point to its ``k``-th nearest other point (Kynkaanniemi et al. 2019,
    eq. 1)."""
    features = check_features(features, "features")
    if not 1 <= k < features.shape[0]:
        raise ValueError(f"k must be in [1, {features.shape[0] - 1}]; got {k}")
    radii = np.empty(features.shape[0])
    for start in range(0, features.shape[0], block_size):
        block = _squared_distances(features[start:start + block_size], features)
        # Index k (not k - 1): the smallest distance is the point to itself.
        radii[start:start + block_size] = np.sqrt(np.partition(block, k, axis=1)[:, k])
    return radii


def manifold_coverage(support, radii, queries, *, block_size=1024):
    """Fraction of ``queries`` within ``radii[i]`` of some ``support[i]`` (Kynkaanniemi et al.
    2019, eq. 2)."""
    support = check_features(support, "support")
    queries = check_features(queries, "queries")
    inside = np.empty(queries.shape[0], dtype=bool)
    for start in range(0, queries.shape[0], block_size):
        distances = np.sqrt(_squared_distances(queries[start:start + block_size], support))
        inside[start:start + block_size] = np.any(distances <= radii[None, :], axis=1)
    return float(inside.mean())


def precision_recall(real_features, fake_features, *, k=3):
    """``(precision, recall)`` of generated ``fake_features`` against ``real_features``
    (Kynkaanniemi et al. 2019, eq. 1-2). NaN or infinite features are a ``ValueError`` (every
    comparison with NaN is false, which would silently give ``(0, 0)``)."""
    real = check_features(real_features, "real_features")
    fake = check_features(fake_features, "fake_features")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"features must be (num, dim) with equal dim; got {real.shape}, {fake.shape}")
    precision = manifold_coverage(real, knn_radii(real, k=k), fake)
    recall = manifold_coverage(fake, knn_radii(fake, k=k), real)
    return precision, recall
