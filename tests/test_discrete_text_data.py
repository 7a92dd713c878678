"""text8 and LM1B from a local data_dir: splits by position, the byte vocabulary's round trip,
the discrete recipe reading them, and one-line errors for missing or foreign files."""

import os
import zipfile

import numpy as np
import pytest

from diffusion_jax.discrete import data as discrete_data
from diffusion_jax.recipes import discrete
from diffusion_jax.recipes.defaults import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fake_text8(directory, length=20_000, *, archive=False):
    rng = np.random.default_rng(0)
    letters = np.frombuffer(discrete_data.TEXT8_VOCABULARY.encode(), np.uint8)
    raw = letters[rng.integers(0, len(letters), length)].tobytes()
    if archive:
        with zipfile.ZipFile(os.path.join(directory, "text8.zip"), "w") as bundle:
            bundle.writestr("text8", raw)
    else:
        with open(os.path.join(directory, "text8"), "wb") as handle:
            handle.write(raw)
    return raw.decode()


@pytest.mark.parametrize("archive", [False, True])
def test_text8_splits_by_position_90_5_5(tmp_path, archive):
    raw = _fake_text8(str(tmp_path), archive=archive)
    parts = [discrete_data.load_text8(split, data_dir=str(tmp_path))
             for split in ("train", "validation", "test")]
    assert [len(p) for p in parts] == [18_000, 1_000, 1_000]
    assert "".join(parts) == raw
    ids = discrete_data.encode(parts[0], discrete_data.TEXT8_VOCABULARY)
    assert discrete_data.decode(ids, discrete_data.TEXT8_VOCABULARY) == parts[0]


def test_text8_errors_are_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="text8.zip"):
        discrete_data.load_text8("train", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="split"):
        discrete_data.load_text8("dev", data_dir=str(tmp_path))
    (tmp_path / "text8").write_bytes(b"Hello, World")
    with pytest.raises(ValueError, match="outside a-z"):
        discrete_data.load_text8("train", data_dir=str(tmp_path))


def test_byte_vocabulary_round_trips_utf8():
    sentence = "naïve café — 東京\n"
    as_bytes = sentence.encode("utf-8").decode("latin-1")
    ids = discrete_data.encode(as_bytes, discrete_data.BYTE_VOCABULARY)
    assert ids.max() < 256 and len(ids) == len(sentence.encode("utf-8"))
    decoded = discrete_data.decode(ids, discrete_data.BYTE_VOCABULARY)
    assert discrete_data.bytes_to_text(decoded) == sentence


def test_lm1b_reads_a_local_tfds_dir(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=6):
        text = discrete_data.load_lm1b("train", data_dir=str(tmp_path))
        ids = discrete_data.encode(text, discrete_data.BYTE_VOCABULARY)
        assert text.count("\n") == 5 and ids.dtype == np.int32 and ids.max() < 256
        assert discrete_data.load_lm1b("train", data_dir=str(tmp_path), max_examples=2).count(
            "\n") == 1


def _text8_config(data_dir):
    return load_config(os.path.join(ROOT, "configs", "text_masked.py"),
                       {"data.name": "text8", "data.shape": "(100,)",
                        "data.data_dir": str(data_dir)})


def test_recipe_trains_on_text8_windows_and_checks_the_data_dir(tmp_path):
    raw = _fake_text8(str(tmp_path))
    config = _text8_config(tmp_path)
    tokens = discrete.load_arrays(config)["tokens"]
    assert tokens.shape == (180, 100)
    assert discrete_data.decode(tokens[0], discrete_data.TEXT8_VOCABULARY) == raw[:100]
    reference = discrete.reference_bits(config)
    # uniform letters: unigram and bigram are both near log2(27) = 4.755
    assert abs(reference["unigram_bits"] - np.log2(27)) < 0.02
    assert reference["bigram_bits"] > reference["unigram_bits"] - 0.2
    with pytest.raises(ValueError, match="data.data_dir"):
        discrete.validate(_text8_config(""))


def test_bigram_reference_counts_pairs_exactly():
    config = load_config(os.path.join(ROOT, "configs", "text_masked.py"), {})
    train = discrete._split_arrays(config, "train")["tokens"].reshape(-1)
    test = discrete._split_arrays(config, "test")["tokens"].reshape(-1)
    k = len(discrete._vocabulary(config))
    pairs = np.ones((k, k))
    for a, b in zip(train[:-1], train[1:], strict=True):
        pairs[a, b] += 1.0
    unigram = np.bincount(train, minlength=k) + 1.0
    bits = np.concatenate([[np.log2(unigram[test[0]] / unigram.sum())],
                           np.log2(pairs / pairs.sum(1, keepdims=True))[test[:-1], test[1:]]])
    assert discrete.reference_bits(config)["bigram_bits"] == pytest.approx(-bits.mean(), rel=1e-12)
