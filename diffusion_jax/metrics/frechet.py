"""Frechet distance between Gaussians fitted to features (FID when the features are Inception's).

``d^2 = ||mu_1 - mu_2||^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2})`` (Frechet 1957; Dowson & Landau
1982; Heusel et al. 2017, "GANs trained by a two time-scale update rule", eq. 6).

``tr (S_1 S_2)^{1/2}`` is computed from the symmetric form ``tr (S_1^{1/2} S_2 S_1^{1/2})^{1/2}``
(the two matrices are similar, so their eigenvalues agree) with symmetric eigendecompositions,
never a general ``sqrtm`` of the non-symmetric product: no complex parts, no eps-offset hack,
and singular (rank-deficient) covariances are fine.
"""

from __future__ import annotations

import numpy as np

from diffusion_jax.metrics.statistics import FeatureStatistics

__all__ = ["sqrtm_psd", "trace_sqrt_product", "frechet_distance", "frechet_distance_from_stats"]


def _check_covariance(matrix, name):
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"{name} must be a square matrix; got shape {matrix.shape}")
    if not np.all(np.isfinite(matrix)):
        raise ValueError(f"{name} contains NaN or infinity")
    return 0.5 * (matrix + matrix.T)


def sqrtm_psd(matrix):
    """Principal square root of a symmetric positive semi-definite matrix, ``U sqrt(L) U^T``
    via ``eigh`` (Higham 2008, "Functions of Matrices", Sec. 6.1); eigenvalues below zero from
    round-off are clipped."""
    matrix = _check_covariance(matrix, "matrix")
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    roots = np.sqrt(np.clip(eigenvalues, 0.0, None))
    return (eigenvectors * roots) @ eigenvectors.T


def trace_sqrt_product(cov_1, cov_2):
    """``tr (S_1 S_2)^{1/2} = sum_i sqrt(lambda_i(S_1^{1/2} S_2 S_1^{1/2}))`` (Dowson & Landau
    1982, eq. 2, symmetric form)."""
    cov_1 = _check_covariance(cov_1, "cov_1")
    cov_2 = _check_covariance(cov_2, "cov_2")
    if cov_1.shape != cov_2.shape:
        raise ValueError(f"covariance shapes differ: {cov_1.shape} vs {cov_2.shape}")
    root = sqrtm_psd(cov_1)
    middle = root @ cov_2 @ root
    eigenvalues = np.linalg.eigvalsh(0.5 * (middle + middle.T))
    return float(np.sum(np.sqrt(np.clip(eigenvalues, 0.0, None))))


def frechet_distance(mean_1, cov_1, mean_2, cov_2):
    """Squared Frechet (2-Wasserstein) distance between ``N(mean_1, cov_1)`` and
    ``N(mean_2, cov_2)`` (Heusel et al. 2017, eq. 6)."""
    mean_1 = np.asarray(mean_1, np.float64)
    mean_2 = np.asarray(mean_2, np.float64)
    if mean_1.shape != mean_2.shape or mean_1.ndim != 1:
        raise ValueError(f"means must be vectors of equal size; got {mean_1.shape}, {mean_2.shape}")
    cov_1 = _check_covariance(cov_1, "cov_1")
    cov_2 = _check_covariance(cov_2, "cov_2")
    if cov_1.shape != (mean_1.size, mean_1.size):
        raise ValueError(f"cov_1 shape {cov_1.shape} does not match mean size {mean_1.size}")
    difference = mean_1 - mean_2
    distance = (
        difference @ difference
        + np.trace(cov_1)
        + np.trace(cov_2)
        - 2.0 * trace_sqrt_product(cov_1, cov_2)
    )
    return float(max(distance, 0.0))


def frechet_distance_from_stats(stats_1: FeatureStatistics, stats_2: FeatureStatistics):
    """:func:`frechet_distance` of two :class:`FeatureStatistics` (FID for Inception features)."""
    return frechet_distance(stats_1.mean, stats_1.covariance(), stats_2.mean, stats_2.covariance())
