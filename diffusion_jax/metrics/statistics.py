"""Streaming feature statistics (mean and covariance) with ``.npz`` save/load.

Batches are merged with the pairwise update of Chan, Golub & LeVeque 1979 ("Updating formulae and
a pairwise algorithm for computing sample variances", eq. 2.1), in float64 on the host, so the
result equals the statistics of the concatenated features regardless of batch boundaries.
The ``.npz`` layout uses the keys ``mu`` and ``sigma`` of pytorch-fid / TTUR reference files
(Heusel et al. 2017), plus ``count`` and, optionally, the raw ``features`` (KID and
precision/recall need them).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

__all__ = [
    "FeatureStatistics",
    "check_features",
    "compute_features",
    "compute_statistics",
    "load_reference",
]


def check_features(features, name="features"):
    """``features`` as a float64 ``(num, dim)`` array; ``ValueError`` naming ``name`` for another
    rank or for NaN / infinite entries (the one check every metric applies to its inputs)."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2:
        raise ValueError(f"{name} must have shape (num, dim); got {features.shape}")
    if not np.all(np.isfinite(features)):
        raise ValueError(f"{name} contain NaN or infinity")
    return features


@dataclasses.dataclass
class FeatureStatistics:
    """Running ``count``, ``mean`` (d,) and centred scatter matrix ``scatter`` (d, d) of features.

    Merge rule (Chan et al. 1979, eq. 2.1): ``M = M_a + M_b + delta delta^T n_a n_b / n``.
    """

    count: int = 0
    mean: np.ndarray | None = None
    scatter: np.ndarray | None = None

    def update(self, features):
        """Fold a batch ``(n, d)`` of features into the statistics (returns ``self``)."""
        features = check_features(features)
        if self.mean is not None and features.shape[1] != self.mean.shape[0]:
            raise ValueError(
                f"feature dimension {features.shape[1]} != running dimension {self.mean.shape[0]}"
            )
        num = features.shape[0]
        if num == 0:
            return self
        batch_mean = features.mean(axis=0)
        centred = features - batch_mean
        batch_scatter = centred.T @ centred
        if self.count == 0:
            self.count, self.mean, self.scatter = num, batch_mean, batch_scatter
            return self
        total = self.count + num
        delta = batch_mean - self.mean
        self.scatter = self.scatter + batch_scatter + np.outer(delta, delta) * (
            self.count * num / total
        )
        self.mean = self.mean + delta * (num / total)
        self.count = total
        return self

    def merge(self, other: FeatureStatistics):
        """Combine with statistics of disjoint data (Chan et al. 1979, eq. 2.1)."""
        if other.count == 0:
            return self
        if self.count == 0:
            self.count, self.mean, self.scatter = other.count, other.mean.copy(), other.scatter.copy()
            return self
        total = self.count + other.count
        delta = other.mean - self.mean
        self.scatter = self.scatter + other.scatter + np.outer(delta, delta) * (
            self.count * other.count / total
        )
        self.mean = self.mean + delta * (other.count / total)
        self.count = total
        return self

    def covariance(self):
        """Unbiased sample covariance ``scatter / (count - 1)`` (as ``np.cov``)."""
        if self.count < 2:
            raise ValueError(f"need at least 2 feature vectors for a covariance; have {self.count}")
        return self.scatter / (self.count - 1)

    def save(self, path, features=None):
        """Write ``mu``, ``sigma``, ``count`` (and optional ``features``) to an ``.npz`` file."""
        arrays = dict(mu=self.mean, sigma=self.covariance(), count=np.asarray(self.count))
        if features is not None:
            arrays["features"] = np.asarray(features, np.float32)
        directory = os.path.dirname(os.fspath(path))
        if directory:
            os.makedirs(directory, exist_ok=True)
        np.savez(path, **arrays)

    @classmethod
    def load(cls, path):
        """Read statistics written by :meth:`save` (or any ``.npz`` with ``mu`` and ``sigma``)."""
        reference = load_reference(path)
        count = int(reference.get("count", 2))
        return cls(count, reference["mu"], reference["sigma"] * (count - 1))


_REFERENCE_LAYOUT = (
    "a statistics .npz with arrays 'mu' (d,) and 'sigma' (d, d), optional 'count' and "
    "'features' (n, d), as written by FeatureStatistics.save or pytorch-fid"
)


def load_reference(path):
    """``dict`` of a reference ``.npz`` (keys ``mu``, ``sigma``, optional ``count``, ``features``);
    ``FileNotFoundError`` naming the path when it is missing, ``ValueError`` naming the expected
    keys for anything else (a pickle, a ``.npy``, object arrays, missing or misshapen arrays).
    Nothing is unpickled."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"reference statistics file not found: {path}")
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise ValueError(f"{path} is not {_REFERENCE_LAYOUT} ({error})") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f"{path} holds a single array, not {_REFERENCE_LAYOUT}")
    try:
        with data:
            reference = {name: np.asarray(data[name]) for name in data.files}
    except ValueError as error:
        raise ValueError(f"{path} is not {_REFERENCE_LAYOUT} ({error})") from None
    for required in ("mu", "sigma"):
        if required not in reference:
            raise ValueError(
                f"{path} has no {required!r} array (keys: {sorted(reference)}); expected "
                f"{_REFERENCE_LAYOUT}"
            )
    mu, sigma = reference["mu"], reference["sigma"]
    if mu.ndim != 1 or sigma.shape != (mu.size, mu.size):
        raise ValueError(
            f"{path}: 'mu' {mu.shape} and 'sigma' {sigma.shape} do not form a mean (d,) and a "
            "covariance (d, d)"
        )
    return reference


def compute_features(feature_fn, images, *, batch_size=256):
    """Apply ``feature_fn`` to ``images`` in batches; returns float64 ``(num, d)`` on the host."""
    images = np.asarray(images)
    outputs = [
        np.asarray(feature_fn(images[start:start + batch_size]), np.float64)
        for start in range(0, images.shape[0], batch_size)
    ]
    return np.concatenate(outputs, axis=0)


def compute_statistics(feature_fn, batches):
    """Stream ``feature_fn`` over an iterable of image batches into :class:`FeatureStatistics`."""
    statistics = FeatureStatistics()
    for batch in batches:
        statistics.update(np.asarray(feature_fn(batch)))
    return statistics
