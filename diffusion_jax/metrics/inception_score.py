"""Inception Score ``exp(E_x KL(p(y|x) || p(y)))`` over splits (Salimans et al. 2016, "Improved
techniques for training GANs", Sec. 4; 10 splits as in their code)."""

from __future__ import annotations

import numpy as np
from scipy.special import log_softmax

__all__ = ["inception_score"]


def inception_score(logits, *, num_splits=10):
    """Mean and standard deviation over ``num_splits`` of ``exp(mean_x KL(p(y|x) || p_split(y)))``
    from class ``logits (num, classes)`` (Salimans et al. 2016, Sec. 4). Ranges from 1 (every
    prediction identical) to the number of classes (confident and balanced)."""
    logits = np.asarray(logits, np.float64)
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape (num, classes); got {logits.shape}")
    if not 1 <= num_splits <= logits.shape[0]:
        raise ValueError(f"num_splits must be in [1, {logits.shape[0]}]; got {num_splits}")
    log_probs = log_softmax(logits, axis=1)
    scores = []
    for part in np.array_split(log_probs, num_splits):
        log_marginal = np.log(np.mean(np.exp(part), axis=0))
        probs = np.exp(part)
        kl = np.sum(probs * (part - log_marginal), axis=1)
        scores.append(np.exp(np.mean(kl)))
    return float(np.mean(scores)), float(np.std(scores))
