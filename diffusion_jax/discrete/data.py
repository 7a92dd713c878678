"""Categorical data: offline, scikit-learn's digits as 17-level token images and a
character-level corpus from the Python standard library's own documentation text; from a local
``data_dir``, text8 (the raw file) and LM1B (TFDS) as character / byte streams."""

from __future__ import annotations

import os
import zipfile

import numpy as np

from diffusion_jax.data import load_digits

__all__ = [
    "BYTE_VOCABULARY",
    "DIGIT_LEVELS",
    "TEXT8_VOCABULARY",
    "build_vocabulary",
    "bytes_to_text",
    "decode",
    "encode",
    "load_digits_tokens",
    "load_lm1b",
    "load_text",
    "load_text8",
    "pydoc_corpus",
    "text_windows",
]

DIGIT_LEVELS = 17
TEXT8_VOCABULARY = " abcdefghijklmnopqrstuvwxyz"  # text8's 27 symbols (Mahoney 2011)
TEXT8_SPLITS = {"train": (0.0, 0.9), "validation": (0.9, 0.95), "test": (0.95, 1.0)}
BYTE_VOCABULARY = "".join(map(chr, range(256)))  # UTF-8 bytes as latin-1 characters (LM1B)


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


def load_text8(split="train", *, data_dir):
    """text8 (Mahoney 2011: the first 10^8 characters of cleaned English Wikipedia, 27 symbols)
    read from ``data_dir/text8`` or ``data_dir/text8.zip`` (never downloaded), split by position
    90M / 5M / 5M into train / validation / test as in Austin et al. 2021 (D3PM, App. B.2) and
    the MDLM / MD4 text8 setups."""
    if split not in TEXT8_SPLITS:
        raise ValueError(f"text8 split must be one of {sorted(TEXT8_SPLITS)}; got {split!r}")
    raw = _read_text8(data_dir)
    start, stop = (int(round(len(raw) * f)) for f in TEXT8_SPLITS[split])
    text = raw[start:stop].decode("ascii", errors="replace")
    bad = sorted(set(text) - set(TEXT8_VOCABULARY))
    if bad:
        raise ValueError(f"text8 in {data_dir} holds characters outside a-z and space: {bad[:10]!r}"
                         " (is it the original text8 file?)")
    return text


def _read_text8(data_dir):
    if not data_dir:
        raise ValueError("text8 is read from a local data.data_dir holding the file text8 or "
                         "text8.zip (http://mattmahoney.net/dc/text8.zip)")
    plain, archive = os.path.join(data_dir, "text8"), os.path.join(data_dir, "text8.zip")
    if os.path.isfile(plain):
        with open(plain, "rb") as handle:
            return handle.read()
    if os.path.isfile(archive):
        with zipfile.ZipFile(archive) as bundle:
            return bundle.read("text8")
    raise FileNotFoundError(f"neither {plain} nor {archive} exists; download "
                            "http://mattmahoney.net/dc/text8.zip on a machine with network access "
                            "and copy it there")


def load_lm1b(split="train", *, data_dir, max_examples=None):
    """LM1B (Chelba et al. 2013) from a locally prepared TFDS ``lm1b`` in ``data_dir`` (never
    downloaded): the sentences of ``split`` joined by newlines, as UTF-8 bytes written with
    :data:`BYTE_VOCABULARY` (one latin-1 character per byte; :func:`bytes_to_text` inverts it).
    Byte level, not the BERT wordpieces of MDLM's LM1B runs."""
    from diffusion_jax.data.images import open_tfds_examples

    if not data_dir:
        raise ValueError("lm1b is read from a TFDS data_dir prepared beforehand (data.data_dir)")
    source, dataset = open_tfds_examples("lm1b", split, data_dir)
    if source is not None:
        count = len(source) if max_examples is None else min(max_examples, len(source))
        examples = (source[i] for i in range(count))
    else:
        import tensorflow_datasets as tfds

        examples = tfds.as_numpy(dataset if max_examples is None else dataset.take(max_examples))
    sentences = [_as_bytes(example["text"]) for example in examples]
    if not sentences:
        raise ValueError(f"TFDS lm1b split {split!r} gave no examples")
    return b"\n".join(sentences).decode("latin-1")


def _as_bytes(value):
    """A TFDS text feature (bytes from a data source, str from some readers) as UTF-8 bytes."""
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def bytes_to_text(text):
    """Byte-vocabulary text (:data:`BYTE_VOCABULARY`) back to readable UTF-8 (bad bytes replaced)."""
    return text.encode("latin-1").decode("utf-8", errors="replace")


def build_vocabulary(text):
    """The sorted distinct characters of ``text`` as one string (index = token id)."""
    return "".join(sorted(set(text)))


def encode(text, vocabulary):
    """``text`` -> int32 token ids; ``ValueError`` naming characters missing from the vocabulary."""
    table = {c: i for i, c in enumerate(vocabulary)}
    missing = sorted(set(text) - table.keys())
    if missing:
        raise ValueError(f"characters not in the vocabulary: {missing[:10]!r}")
    if all(ord(c) < 256 for c in vocabulary):  # one lookup over the bytes (text8: 10^8 chars)
        lookup = np.zeros(256, np.int32)
        lookup[[ord(c) for c in vocabulary]] = np.arange(len(vocabulary), dtype=np.int32)
        return lookup[np.frombuffer(text.encode("latin-1"), np.uint8)]
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
