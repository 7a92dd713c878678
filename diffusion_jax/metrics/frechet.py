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

__all__ = [
    "PSD_TOLERANCE",
    "sqrtm_psd",
    "trace_sqrt_product",
    "frechet_distance",
    "frechet_distance_from_stats",
]


# Smallest eigenvalue accepted, relative to the largest: float32 storage of a covariance moves
# eigenvalues by up to ~eps32 * sqrt(d) * ||S|| (~3e-6 at d = 2048); a true negative variance is
# far below this.
PSD_TOLERANCE = 1e-5


def _check_covariance(matrix, name):
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"{name} must be a square matrix; got shape {matrix.shape}")
    if not np.all(np.isfinite(matrix)):
        raise ValueError(f"{name} contains NaN or infinity")
    return 0.5 * (matrix + matrix.T)


def _check_psd(eigenvalues, name):
    """Raise unless ``min eig >= -PSD_TOLERANCE * max |eig|`` (negative only by rounding)."""
    smallest = float(eigenvalues.min(initial=0.0))
    scale = float(np.abs(eigenvalues).max(initial=0.0))
    if smallest < -PSD_TOLERANCE * scale:
        raise ValueError(
            f"{name} is not positive semi-definite: smallest eigenvalue {smallest:.3g} < "
            f"-{PSD_TOLERANCE:g} x largest {scale:.3g} (not a covariance matrix)"
        )


def sqrtm_psd(matrix, *, name="matrix"):
    """Principal square root of a symmetric positive semi-definite matrix, ``U sqrt(L) U^T``
    via ``eigh`` (Higham 2008, "Functions of Matrices", Sec. 6.1); eigenvalues below zero from
    round-off are clipped, a matrix that is not PSD beyond :data:`PSD_TOLERANCE` is a
    ``ValueError``."""
    matrix = _check_covariance(matrix, name)
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    _check_psd(eigenvalues, name)
    roots = np.sqrt(np.clip(eigenvalues, 0.0, None))
    return (eigenvectors * roots) @ eigenvectors.T


def trace_sqrt_product(cov_1, cov_2):
    """``tr (S_1 S_2)^{1/2} = sum_i sqrt(lambda_i(S_1^{1/2} S_2 S_1^{1/2}))`` (Dowson & Landau
    1982, eq. 2, symmetric form). Both covariances must be PSD up to :data:`PSD_TOLERANCE`."""
    cov_1 = _check_covariance(cov_1, "cov_1")
    cov_2 = _check_covariance(cov_2, "cov_2")
    if cov_1.shape != cov_2.shape:
        raise ValueError(f"covariance shapes differ: {cov_1.shape} vs {cov_2.shape}")
    _check_psd(np.linalg.eigvalsh(cov_2), "cov_2")
    root = sqrtm_psd(cov_1, name="cov_1")
    middle = root @ cov_2 @ root
    eigenvalues = np.linalg.eigvalsh(0.5 * (middle + middle.T))
    return float(np.sum(np.sqrt(np.clip(eigenvalues, 0.0, None))))


def frechet_distance(mean_1, cov_1, mean_2, cov_2):
    """Squared Frechet (2-Wasserstein) distance between ``N(mean_1, cov_1)`` and
    ``N(mean_2, cov_2)`` (Heusel et al. 2017, eq. 6). ``ValueError`` for a covariance that is not
    positive semi-definite beyond rounding (:data:`PSD_TOLERANCE`)."""
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
