"""Sample-quality metrics from features given by an injectable feature function.

* :mod:`~diffusion_jax.metrics.statistics`: streaming mean/covariance, ``.npz`` reference files;
* :mod:`~diffusion_jax.metrics.frechet`: Frechet distance (FID) with a stable PSD square root;
* :mod:`~diffusion_jax.metrics.kid`: Kernel Inception Distance (unbiased, polynomial kernel);
* :mod:`~diffusion_jax.metrics.inception_score`: Inception Score;
* :mod:`~diffusion_jax.metrics.precision_recall`: improved precision and recall;
* :mod:`~diffusion_jax.metrics.sliced_wasserstein`: sliced Wasserstein distance (toy data);
* :mod:`~diffusion_jax.metrics.inception`: FID Inception-v3 (weights from a local file);
* :mod:`~diffusion_jax.metrics.digits_classifier`: the digits feature network (committed weights).

Feature networks are imported from their modules explicitly (they pull in Flax).
"""

from diffusion_jax.metrics.frechet import (
    PSD_TOLERANCE,
    frechet_distance,
    frechet_distance_from_stats,
    sqrtm_psd,
    trace_sqrt_product,
)
from diffusion_jax.metrics.inception_score import inception_score
from diffusion_jax.metrics.kid import kernel_inception_distance, mmd2_unbiased, polynomial_kernel
from diffusion_jax.metrics.precision_recall import knn_radii, manifold_coverage, precision_recall
from diffusion_jax.metrics.sliced_wasserstein import sliced_wasserstein
from diffusion_jax.metrics.statistics import (
    FeatureStatistics,
    compute_features,
    compute_statistics,
    load_reference,
)

__all__ = [
    "FeatureStatistics",
    "PSD_TOLERANCE",
    "compute_features",
    "compute_statistics",
    "load_reference",
    "frechet_distance",
    "frechet_distance_from_stats",
    "sqrtm_psd",
    "trace_sqrt_product",
    "inception_score",
    "kernel_inception_distance",
    "mmd2_unbiased",
    "polynomial_kernel",
    "knn_radii",
    "manifold_coverage",
    "precision_recall",
    "sliced_wasserstein",
]
