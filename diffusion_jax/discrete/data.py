"""Categorical data, offline: scikit-learn's digits as 17-level token images and a
character-level corpus from the Python standard library's own documentation text."""

from __future__ import annotations

import numpy as np

from diffusion_jax.data import load_digits

__all__ = [
    "DIGIT_LEVELS",
    "build_vocabulary",
    "decode",
    "encode",
    "load_digits_tokens",
    "load_text",
    "pydoc_corpus",
    "text_windows",
]

DIGIT_LEVELS = 17


def load_digits_tokens(split="train", *, test_fraction=0.2, seed=0):
    """scikit-learn's 8x8 digits (Alpaydin & Kaynak 1998) as tokens ``(N, 8, 8)`` int32 in
    ``0..16`` (their original integer pixel values) with labels ``(N,)``; the same split as
    ``diffusion_jax.data.load_digits`` (whose ``round(v * 255 / 16)`` is inverted exactly)."""
    images, labels = load_digits(split, test_fraction=test_fraction, seed=seed)
    tokens = np.rint(images[..., 0].astype(np.float64) * (16.0 / 255.0)).astype(np.int32)
    return tokens, labels


def pydoc_corpus():
    """The text of ``pydoc_data.topics`` (Python's help topics, ~465,000 characters in 3.11),
    topics in sorted key order joined by blank lines; always installed with CPython."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


def load_text(split="train", *, test_fraction=0.1):
    """The ``pydoc`` corpus split deterministically by position: the last ``test_fraction`` of
    the characters is ``"test"``, the rest ``"train"``."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1); got {test_fraction}")
    text = pydoc_corpus()
    cut = int(round(len(text) * (1.0 - test_fraction)))
    return text[:cut] if split == "train" else text[cut:]


def build_vocabulary(text):
    """The sorted distinct characters of ``text`` as one string (index = token id)."""
    return "".join(sorted(set(text)))


def encode(text, vocabulary):
    """``text`` -> int32 token ids; ``ValueError`` naming characters missing from the vocabulary."""
    table = {c: i for i, c in enumerate(vocabulary)}
    missing = sorted(set(text) - table.keys())
    if missing:
        raise ValueError(f"characters not in the vocabulary: {missing[:10]!r}")
    return np.fromiter((table[c] for c in text), np.int32, len(text))


def decode(ids, vocabulary):
    """Token ids (any shape; the last axis is one string) -> str or nested lists of str."""
    ids = np.asarray(ids)
    if ids.ndim == 1:
        return "".join(vocabulary[i] for i in ids)
    return [decode(row, vocabulary) for row in ids]


def text_windows(ids, length):
    """Non-overlapping windows ``(N, length)`` of the id stream (the ragged tail is dropped)."""
    if length < 1:
        raise ValueError(f"length must be positive; got {length}")
    count = len(ids) // length
    if count == 0:
        raise ValueError(f"text of {len(ids)} tokens is shorter than one window of {length}")
    return np.asarray(ids[:count * length], np.int32).reshape(count, length)
