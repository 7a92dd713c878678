"""Token distributions small enough to enumerate (``K^L`` sequences), with their exact entropy
and the exact posterior ``p(x_0^i | x_t)`` of every forward process here: the "perfect network"
against which losses, samplers and likelihoods are proven, and the reference a trained model's
NELBO is compared to."""

from __future__ import annotations

import dataclasses
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.discrete.processes import D3PM, MaskedDiffusion, MixturePath

__all__ = ["Tabular", "markov_chain", "product_of_categoricals"]


@dataclasses.dataclass(frozen=True)
class Tabular:
    """A distribution over token sequences of length ``L`` on ``K`` classes, by its full table:
    ``sequences (K^L, L)`` int and ``log_probs (K^L,)`` (float64 numpy)."""

    sequences: np.ndarray
    log_probs: np.ndarray
    num_classes: int

    @property
    def length(self):
        return self.sequences.shape[1]

    def entropy(self):
        """Exact entropy in nats (per sequence)."""
        probs = np.exp(self.log_probs)
        return float(-np.sum(np.where(probs > 0, probs * self.log_probs, 0.0)))

    def sample(self, seed, num):
        """``num`` exact draws ``(num, L)`` int32 (numpy, seeded)."""
        rng = np.random.default_rng(seed)
        index = rng.choice(len(self.log_probs), size=num, p=np.exp(self.log_probs))
        return self.sequences[index].astype(np.int32)

    def histogram(self, tokens):
        """Empirical frequencies of ``tokens (N, L)`` over the table's sequences."""
        codes = np.asarray(tokens) @ (self.num_classes ** np.arange(self.length)[::-1])
        return np.bincount(codes, minlength=len(self.log_probs)) / len(codes)

    def posterior_network(self, process):
        """``network(tokens, t, cond=None) -> logits (B, L, K)``: the exact marginal posterior
        ``log p(x_0^i | x_t)`` under ``process`` (D3PM: ``t`` is ``step / T``; masked diffusion
        and mixture paths: continuous ``t``), by enumeration of the table."""
        sequences = jnp.asarray(self.sequences)
        log_prior = jnp.asarray(self.log_probs)
        one_hot = jax.nn.one_hot(sequences, self.num_classes)  # (S, L, K)
        num_classes = self.num_classes

        def log_likelihood(tokens, t):  # log q(x_t | x_0 = each sequence), (B, S)
            states = tokens[:, None, :]
            table = sequences[None, :, :]
            if isinstance(process, D3PM):
                step = jnp.rint(t * process.num_steps).astype(jnp.int32)
                cumulative = process.cumulative[step]  # (B, S_states, S_states)
                per = cumulative[jnp.arange(tokens.shape[0])[:, None, None], table, states]
                return jnp.sum(jnp.log(per), axis=-1)
            if isinstance(process, MaskedDiffusion) or process.source == "mask":
                agree = (states == table) | (states == num_classes)
                return jnp.sum(jnp.where(agree, 0.0, -jnp.inf), axis=-1)
            kappa = process.kappa(t)[:, None, None]
            per = kappa * (states == table) + (1.0 - kappa) / num_classes
            return jnp.sum(jnp.log(per), axis=-1)

        def network(tokens, t, cond=None):
            del cond
            weights = jax.nn.softmax(log_prior[None, :] + log_likelihood(tokens, t), axis=-1)
            marginals = jnp.einsum("bs,slk->blk", weights, one_hot)
            return jnp.log(marginals)

        if not isinstance(process, (D3PM, MaskedDiffusion, MixturePath)):
            raise ValueError(f"no exact posterior for process {type(process).__name__}")
        return network


def _all_sequences(num_classes, length):
    return np.array(list(itertools.product(range(num_classes), repeat=length)), np.int64)


def markov_chain(initial, transition, length):
    """The table of a Markov chain ``p(x_1) = initial``, ``p(x_{i+1} | x_i) = transition[x_i]``."""
    initial, transition = np.asarray(initial, np.float64), np.asarray(transition, np.float64)
    num_classes = initial.shape[0]
    if transition.shape != (num_classes, num_classes):
        raise ValueError(f"transition must be ({num_classes}, {num_classes}); got {transition.shape}")
    sequences = _all_sequences(num_classes, length)
    with np.errstate(divide="ignore"):
        log_probs = np.log(initial[sequences[:, 0]])
        for i in range(1, length):
            log_probs = log_probs + np.log(transition[sequences[:, i - 1], sequences[:, i]])
    return Tabular(sequences, log_probs, num_classes)


def product_of_categoricals(marginals):
    """The table of independent tokens, ``marginals (L, K)`` (row i is token i's distribution)."""
    marginals = np.asarray(marginals, np.float64)
    length, num_classes = marginals.shape
    sequences = _all_sequences(num_classes, length)
    with np.errstate(divide="ignore"):
        log_probs = np.sum(np.log(marginals[np.arange(length), sequences]), axis=1)
    return Tabular(sequences, log_probs, num_classes)


def bits(nats, num_dims=1):
    """Nats per example -> bits per dimension."""
    return nats / (num_dims * math.log(2.0))
