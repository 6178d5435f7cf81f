"""The token cache (worker/engine/token_cache.py): a corpus tokenized once is read back, equal to a fresh
tokenization, by PackedTokens and calibration_batches; another text or tokenizer is another entry; a
damaged entry is tokenized again; `off` writes nothing; the oldest entries go beyond the size cap."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest

from worker.engine import data, token_cache

DOCS = ["the quick brown fox jumps over the lazy dog. " * 20, "pack my box with five dozen liquor jugs", "x"]


@pytest.fixture
def tokenizer():
    from transformers import AutoTokenizer

    from worker.demo import demo_tokenizer_path

    return AutoTokenizer.from_pretrained(str(demo_tokenizer_path()))


@pytest.fixture
def encodes(monkeypatch):
    """How many times the tokenizer really ran (data.token_ids)."""
    calls = []
    real = data.token_ids
    monkeypatch.setattr(data, "token_ids", lambda tok, docs: calls.append(len(docs)) or real(tok, docs))
    return calls


def fresh(tokenizer, monkeypatch, seq_len=16):
    monkeypatch.setenv("PRUNESCOPE_TOKEN_CACHE", "off")
    packed = data.PackedTokens(tokenizer, DOCS, seq_len)
    batches = data.calibration_batches(tokenizer, DOCS, seq_len=seq_len, num_samples=6, batch_size=4, seed=3)
    return packed, batches


def test_a_cached_corpus_is_read_back_equal_to_a_fresh_tokenization(
    tmp_path, monkeypatch, tokenizer, encodes
):
    want_packed, want_batches = fresh(tokenizer, monkeypatch)
    assert encodes == [3, 3]
    monkeypatch.setenv("PRUNESCOPE_TOKEN_CACHE", str(tmp_path))
    for round in range(2):  # the first writes the entry, the second reads it without tokenizing
        packed = data.PackedTokens(tokenizer, DOCS, 16)
        batches = data.calibration_batches(tokenizer, DOCS, seq_len=16, num_samples=6, batch_size=4, seed=3)
        np.testing.assert_array_equal(packed.blocks, want_packed.blocks)
        assert packed.blocks.dtype == np.int64
        for got, want in zip(batches, want_batches, strict=True):
            for key in ("input_ids", "attention_mask"):
                assert got[key].equal(want[key]), (round, key)
    assert encodes == [3, 3, 3]  # one tokenization for both uses and both rounds
    assert len(list(tmp_path.glob("*.npz"))) == 1


def test_another_text_or_tokenizer_is_another_entry(tmp_path, monkeypatch, tokenizer, encodes):
    monkeypatch.setenv("PRUNESCOPE_TOKEN_CACHE", str(tmp_path))
    key = token_cache.corpus_key(tokenizer, DOCS)
    assert key == token_cache.corpus_key(tokenizer, list(DOCS))
    assert key != token_cache.corpus_key(tokenizer, [*DOCS[:-1], "y"])
    assert key != token_cache.corpus_key(tokenizer, ["".join(DOCS)])  # document boundaries count
    tokenizer.add_tokens(["quick brown"])
    assert key != token_cache.corpus_key(tokenizer, DOCS)
    changed = data.PackedTokens(tokenizer, DOCS, 16)
    monkeypatch.setenv("PRUNESCOPE_TOKEN_CACHE", "off")
    np.testing.assert_array_equal(changed.blocks, data.PackedTokens(tokenizer, DOCS, 16).blocks)


def test_a_damaged_entry_is_tokenized_again(tmp_path, monkeypatch, tokenizer, encodes):
    want, _ = fresh(tokenizer, monkeypatch)
    monkeypatch.setenv("PRUNESCOPE_TOKEN_CACHE", str(tmp_path))
    data.PackedTokens(tokenizer, DOCS, 16)
    (entry,) = tmp_path.glob("*.npz")
    entry.write_bytes(entry.read_bytes()[:40])  # cut short, as by a full disk
    np.testing.assert_array_equal(data.PackedTokens(tokenizer, DOCS, 16).blocks, want.blocks)
    assert len(encodes) == 4  # fresh (2), the first write, the damaged entry's retry
    np.testing.assert_array_equal(data.PackedTokens(tokenizer, DOCS, 16).blocks, want.blocks)
    assert len(encodes) == 4  # rewritten whole


def test_off_writes_nothing(tmp_path, monkeypatch, tokenizer):
    monkeypatch.setenv("PRUNESCOPE_TOKEN_CACHE", "off")
    monkeypatch.setenv("HOME", str(tmp_path))
    data.PackedTokens(tokenizer, DOCS, 16)
    assert not any(tmp_path.rglob("*.npz"))


def test_the_oldest_entries_go_beyond_the_cap(tmp_path):
    for i, name in enumerate(("old", "mid", "new")):
        path = tmp_path / f"{name}.npz"
        path.write_bytes(b"x" * 100)
        os.utime(path, (1000 + i, 1000 + i))
    token_cache._evict(tmp_path, keep=tmp_path / "new.npz", max_bytes=250)
    assert sorted(p.name for p in tmp_path.glob("*.npz")) == ["mid.npz", "new.npz"]
    token_cache._evict(tmp_path, keep=tmp_path / "mid.npz", max_bytes=50)
    assert sorted(p.name for p in tmp_path.glob("*.npz")) == ["mid.npz"]  # never the entry just written


def test_an_entry_that_cannot_be_written_costs_nothing_but_is_logged(tmp_path, caplog):
    """Best effort: the job goes on, and a debug line says why the cache stays empty (a full disk did so
    silently, forever)."""
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the cache directory should be")
    with caplog.at_level(logging.DEBUG, logger="worker.engine.token_cache"):
        token_cache._write(blocked / "entry.npz", np.arange(4), np.array([0, 4]))
    assert "entry.npz not written" in caplog.text
